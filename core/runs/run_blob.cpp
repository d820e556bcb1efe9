#include "core/runs/run_blob.h"

#include <cstdint>
#include <cstring>

#include "core/common/error.h"

namespace lrq::runs_detail {

namespace {

template <typename UInt> void putLe(unsigned char *out, UInt v) {
  for (size_t i = 0; i < sizeof(UInt); ++i)
    out[i] = static_cast<unsigned char>(v >> (8 * i));
}

template <typename UInt> UInt getLe(const unsigned char *in) {
  UInt v = 0;
  for (size_t i = 0; i < sizeof(UInt); ++i)
    v |= static_cast<UInt>(in[i]) << (8 * i);
  return v;
}

template <typename To, typename From> To bitsOf(From value) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To out;
  std::memcpy(&out, &value, sizeof out);
  return out;
}

void checkSize(size_t size, size_t unit, const char *what) {
  if (size % unit != 0)
    throw Error(std::string("damaged ") + what + " in run store: " + std::to_string(size) +
                " bytes is not a multiple of " + std::to_string(unit));
}

} // namespace

std::vector<unsigned char> encodeCurve(const std::vector<LossPoint> &curve) {
  std::vector<unsigned char> bytes(curve.size() * 8);
  for (size_t i = 0; i < curve.size(); ++i) {
    putLe(&bytes[8 * i], static_cast<uint32_t>(curve[i].iteration));
    putLe(&bytes[8 * i + 4], bitsOf<uint32_t>(curve[i].loss));
  }
  return bytes;
}

std::vector<LossPoint> decodeCurve(const std::vector<unsigned char> &bytes) {
  checkSize(bytes.size(), 8, "loss curve");
  std::vector<LossPoint> curve(bytes.size() / 8);
  for (size_t i = 0; i < curve.size(); ++i) {
    curve[i].iteration = static_cast<int32_t>(getLe<uint32_t>(&bytes[8 * i]));
    curve[i].loss = bitsOf<float>(getLe<uint32_t>(&bytes[8 * i + 4]));
  }
  return curve;
}

std::vector<unsigned char> encodeDoubles(const std::vector<double> &values) {
  std::vector<unsigned char> bytes(values.size() * 8);
  for (size_t i = 0; i < values.size(); ++i)
    putLe(&bytes[8 * i], bitsOf<uint64_t>(values[i]));
  return bytes;
}

std::vector<double> decodeDoubles(const std::vector<unsigned char> &bytes) {
  checkSize(bytes.size(), 8, "spectrum");
  std::vector<double> values(bytes.size() / 8);
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = bitsOf<double>(getLe<uint64_t>(&bytes[8 * i]));
  return values;
}

} // namespace lrq::runs_detail
