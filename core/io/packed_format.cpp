#include "core/io/packed_format.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>

#include <nlohmann/json.hpp>

#include "core/common/c_number.h"
#include "core/common/error.h"
#include "core/common/json_limits.h"
#include "core/common/text_escape.h"

namespace lrq {

namespace {

using json = nlohmann::json;

// Rows of at most 2^40 elements keep in * bits and out * rowBytes far from
// overflow; the file's own size bounds them much further below.
constexpr int64_t kMaxDim = int64_t(1) << 40;

bool isFloatDtype(const std::string &dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

// The scheme says whether the grids are symmetric; the layers must agree
// (unless a fallback grid may give some of them another one).
std::optional<bool> schemeSymmetry(const std::string &schemeJson) {
  if (!jsonLimitProblem(schemeJson, defaultJsonLimits()).empty())
    return std::nullopt; // the scheme's own reader reports it
  const json scheme = json::parse(schemeJson, nullptr, false);
  if (scheme.is_object() && !scheme.contains("fallback_weight") && scheme.contains("weight") &&
      scheme["weight"].is_object() && scheme["weight"].contains("symmetric") &&
      scheme["weight"]["symmetric"].is_boolean())
    return scheme["weight"]["symmetric"].get<bool>();
  return std::nullopt;
}

std::string dims(int64_t a, int64_t b) {
  return "[" + std::to_string(a) + ", " + std::to_string(b) + "]";
}

} // namespace

PackedHeader readPackedHeader(const SafetensorsReader &reader) {
  const std::string &path = reader.path();
  const auto &meta = reader.metadata();
  auto metaValue = [&](const std::string &key) -> const std::string & {
    auto it = meta.find(key);
    if (it == meta.end())
      throw FileError(path, "__metadata__ has no '" + key + "' (not an LRQ packed export)");
    return it->second;
  };
  if (metaValue("format") != kPackedFormatName)
    throw FileError(path, "__metadata__ format is '" + printableText(metaValue("format")) +
                              "', not '" + kPackedFormatName + "'");
  PackedHeader h;
  {
    // Digits only, as the writer writes it: "1abc", " 1" or "+1" are not versions.
    const std::string &text = metaValue("format_version");
    const bool digits =
        !text.empty() && text.size() <= 9 &&
        std::all_of(text.begin(), text.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    if (!digits)
      throw FileError(path, "format_version '" + printableText(text) + "' is not a number");
    h.formatVersion = std::stoi(text);
  }
  if (h.formatVersion < 1 || h.formatVersion > kPackedFormatVersion)
    throw FileError(path, "packed format version " + std::to_string(h.formatVersion) +
                              " is not supported (this program reads 1.." +
                              std::to_string(kPackedFormatVersion) + ")");
  h.schemeJson = metaValue("scheme");
  h.method = metaValue("method");
  h.configJson = metaValue("config");
  if (auto it = meta.find("metadata"); it != meta.end())
    h.extraMetadataJson = it->second;
  const std::optional<bool> symmetric = schemeSymmetry(h.schemeJson);

  const std::string &layersText = metaValue("layers");
  if (const std::string problem = jsonLimitProblem(layersText, defaultJsonLimits());
      !problem.empty())
    throw FileError(path, "__metadata__ layers " + problem); // copies below recurse
  const json layers = json::parse(layersText, nullptr, false);
  if (!layers.is_object())
    throw FileError(path, "__metadata__ layers is not a JSON object");

  for (auto it = layers.begin(); it != layers.end(); ++it) {
    const std::string &name = it.key();
    const json &layer = it.value();
    const std::string entry = "__metadata__ layers entry of " + printableText(name);
    for (const char *suffix : {".qweight", ".scales", ".zero_points", ".low_rank_a", ".low_rank_b"})
      h.layerTensorNames.insert(name + suffix);
    auto need = [&](const std::string &suffix) -> const SafetensorsTensorInfo & {
      const SafetensorsTensorInfo *info = reader.find(name + suffix);
      if (!info)
        throw FileError(path, "missing tensor " + printableText(name + suffix));
      return *info;
    };
    // Integers only (2^32 + 4 or 4.7 bits are not 4 bits), then the writer's ranges.
    auto integer = [&](const json &v, const char *key) -> int64_t {
      if (!v.is_number_integer() ||
          (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)))
        throw FileError(path, entry + ": " + key + " is not an integer");
      return v.get<int64_t>();
    };
    if (!layer.is_object() || !layer.contains("bits") || !layer.contains("qmin") ||
        !layer.contains("group_size") || !layer.contains("shape") || !layer["shape"].is_array() ||
        layer["shape"].size() != 2)
      throw FileError(path, entry + " lacks bits/qmin/group_size/shape");
    PackedLayerLayout l;
    l.name = name;
    const int64_t bits = integer(layer["bits"], "bits");
    l.qmin = integer(layer["qmin"], "qmin");
    l.groupSize = integer(layer["group_size"], "group_size");
    l.out = integer(layer["shape"][0], "shape");
    l.in = integer(layer["shape"][1], "shape");
    if (bits < 1 || bits > 8 || l.out <= 0 || l.in <= 0 || l.out > kMaxDim || l.in > kMaxDim ||
        l.groupSize < 0 || l.groupSize > l.in)
      throw FileError(path, entry + " is out of range");
    l.bits = int(bits);
    const int64_t symmetricQmin = -(int64_t(1) << (bits - 1));
    if (l.qmin != 0 && l.qmin != symmetricQmin)
      throw FileError(path, entry + ": qmin " + std::to_string(l.qmin) +
                                " is neither 0 (asymmetric) nor " + std::to_string(symmetricQmin) +
                                " (symmetric " + std::to_string(bits) + "-bit)");
    if (symmetric && (l.qmin != 0) != *symmetric)
      throw FileError(path, entry + ": qmin " + std::to_string(l.qmin) +
                                " contradicts the scheme's " +
                                (*symmetric ? "symmetric" : "asymmetric") + " grid");
    l.qmax = l.qmin + (int64_t(1) << bits) - 1;
    if (layer.contains("value_dtype")) {
      // Optional: the type the writer rounded Ŵ to (older files have none).
      const json &v = layer["value_dtype"];
      const std::string text = v.is_string() ? v.get<std::string>() : v.dump();
      if (text != "F16" && text != "BF16")
        throw FileError(path, entry + ": value_dtype " + printableText(text.substr(0, 32)) +
                                  " is neither F16 nor BF16");
      l.valueDtype = text;
    }

    l.rowBytes = (l.in * l.bits + 7) / 8;
    const SafetensorsTensorInfo &q = need(".qweight");
    uint64_t packedBytes = 0;
    if (q.dtype != "U8" || q.shape != std::vector<int64_t>{l.out, l.rowBytes} ||
        __builtin_mul_overflow(uint64_t(l.out), uint64_t(l.rowBytes), &packedBytes) ||
        q.end - q.begin != packedBytes)
      throw FileError(path, "tensor " + printableText(name) + ".qweight is not U8 " +
                                dims(l.out, l.rowBytes));
    l.qweight = &q;

    // [1, 1] per tensor, [out, 1] per channel, [out, ceil(in / group_size)] per group.
    const SafetensorsTensorInfo &s = need(".scales");
    const SafetensorsTensorInfo &z = need(".zero_points");
    l.groups = l.groupSize > 0 ? (l.in + l.groupSize - 1) / l.groupSize : 1;
    const bool rowsFit =
        s.shape.size() == 2 && (s.shape[0] == l.out || (s.shape[0] == 1 && l.groups == 1));
    if (!isFloatDtype(s.dtype) || !rowsFit || s.shape[1] != l.groups)
      throw FileError(path, "tensor " + printableText(name) + ".scales of " + s.dtype +
                                " does not fit " + std::to_string(l.groups) + " group(s) of " +
                                dims(l.out, l.in) + " (group_size " + std::to_string(l.groupSize) +
                                ")");
    if (!isFloatDtype(z.dtype) || z.shape != s.shape)
      throw FileError(path, "tensor " + printableText(name) +
                                ".zero_points does not have the shape of its scales");
    l.scaleRows = s.shape[0];
    l.scales = &s;
    l.zeroPoints = &z;

    l.lowRankA = reader.find(name + ".low_rank_a");
    l.lowRankB = reader.find(name + ".low_rank_b");
    if ((l.lowRankA == nullptr) != (l.lowRankB == nullptr))
      throw FileError(path, printableText(name) + " has only one of low_rank_a / low_rank_b");
    if (l.lowRankA) {
      const auto &a = l.lowRankA->shape, &b = l.lowRankB->shape;
      if (!isFloatDtype(l.lowRankA->dtype) || !isFloatDtype(l.lowRankB->dtype) || a.size() != 2 ||
          b.size() != 2 || a[0] != l.in || b[1] != l.out || a[1] != b[0])
        throw FileError(path,
                        "low-rank factors of " + printableText(name) + " do not fit its weight");
    }
    h.layers.push_back(std::move(l));
  }
  return h;
}

bool isPackedModelFile(const std::string &path) {
  // The whole header is checked as the loader will check it (size, depth,
  // entries), so a hostile header costs no more here than there.
  try {
    const SafetensorsReader reader(path);
    auto it = reader.metadata().find("format");
    return it != reader.metadata().end() && it->second == kPackedFormatName;
  } catch (const Error &) {
    return false;
  }
}

void unpackCodeRows(const uint8_t *packed, int64_t rowBytes, int64_t rowBegin, int64_t rowEnd,
                    int64_t cols, int bits, int64_t qmin, int32_t *codes) {
  const uint32_t mask = (uint32_t(1) << bits) - 1;
  for (int64_t r = rowBegin; r < rowEnd; ++r) {
    const uint8_t *in = packed + r * rowBytes;
    int32_t *o = codes + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t bit = j * bits;
      const int64_t byte = bit >> 3;
      const int off = int(bit & 7);
      uint32_t v = uint32_t(in[byte]) >> off;
      if (off + bits > 8)
        v |= uint32_t(in[byte + 1]) << (8 - off);
      o[j] = int32_t(v & mask) + int32_t(qmin);
    }
  }
}

std::string packedGridProblem(const float *scales, const float *zeroPoints, size_t n, int64_t qmin,
                              int64_t qmax, const std::string &valueDtype) {
  // Largest magnitude that stays finite once rounded (to nearest even) to the
  // value type: halfway between its largest finite value and 2^(emax+1).
  const double limit = valueDtype == "F16"    ? 65520.0
                       : valueDtype == "BF16" ? std::ldexp(2.0 - std::ldexp(1.0, -8), 127)
                                              : HUGE_VAL;
  for (size_t i = 0; i < n; ++i) {
    const float s = scales[i], z = zeroPoints[i];
    if (!std::isfinite(s) || s == 0)
      return "a step is zero or not finite";
    if (!(z == std::nearbyint(z)) || z < float(qmin) || z > float(qmax))
      return "a zero point is not an integer within [" + std::to_string(qmin) + ", " +
             std::to_string(qmax) + "]";
    // s (q - z) grows with |q - z|; the grid's ends give the largest values.
    // q - z is exact in float (|q|, |z| <= 255), as the reader computes it.
    const float reach = std::max(std::fabs(float(qmin) - z), std::fabs(float(qmax) - z));
    const float largest = std::fabs(s) * reach;
    if (!std::isfinite(largest) || double(largest) >= limit) {
      return "a step of " + formatNumberC("%g", double(s)) + " makes dequantized values overflow " +
             (valueDtype.empty() ? std::string("float32") : valueDtype);
    }
  }
  return {};
}

} // namespace lrq
