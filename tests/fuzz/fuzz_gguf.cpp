// GGUF header, metadata, tensor infos and dequantization (core/io/gguf.cpp,
// core/io/ggml_quants.cpp) on arbitrary bytes.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/io/ggml_quants.h"
#include "core/io/gguf.h"
#include "fuzz_common.h"

namespace {

// Dequantized copies beyond this many values add nothing but time.
constexpr int64_t kMaxDequantizedValues = int64_t(1) << 20;

void exerciseValue(const lrq::GgufValue &v) {
  (void)v.describe();
  int64_t i = 0;
  uint64_t u = 0;
  double d = 0;
  bool b = false;
  (void)v.toInt64(&i);
  (void)v.toUInt64(&u);
  (void)v.toDouble(&d);
  (void)v.toBool(&b);
  if (v.isArray()) {
    const size_t n = std::min<size_t>(v.arraySize(), 64);
    for (size_t k = 0; k < n; ++k)
      exerciseValue(v.item(k));
    if (v.elementType() == lrq::GgufValueType::String)
      FUZZ_CHECK(v.strings().size() == v.arraySize());
  }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lrq_fuzz::MemoryFile file("fuzz.gguf");
  const std::string &path = file.write(data, size);
  try {
    const lrq::GgufReader reader(path);
    FUZZ_CHECK(reader.fileSize() == size);
    FUZZ_CHECK(reader.alignment() > 0 && (reader.alignment() & (reader.alignment() - 1)) == 0);
    for (const auto &[key, value] : reader.metadata()) {
      FUZZ_CHECK(reader.find(key) == &value);
      exerciseValue(value);
    }
    // The typed getters throw lrq::FileError for the wrong type; each is tried alone.
    for (const auto &[key, value] : reader.metadata()) {
      (void)value;
      try {
        (void)reader.getInt(key);
      } catch (const lrq::Error &) {
      }
      try {
        (void)reader.getFloatArray(key);
      } catch (const lrq::Error &) {
      }
      try {
        (void)reader.getIntArray(key);
      } catch (const lrq::Error &) {
      }
      try {
        (void)reader.getStringArray(key);
      } catch (const lrq::Error &) {
      }
    }
    std::vector<float> values;
    for (const lrq::GgufTensorInfo &t : reader.tensors()) {
      FUZZ_CHECK(reader.findTensor(t.name) == &t);
      // The parser promises every tensor's bytes lie inside the file.
      FUZZ_CHECK(reader.dataOffset() + t.offset + t.nbytes <= size);
      FUZZ_CHECK(t.numel >= 0 && t.shape().size() == t.dims.size());
      const lrq::GgmlTypeTraits *traits = lrq::ggmlTypeTraits(static_cast<uint32_t>(t.type));
      FUZZ_CHECK(traits != nullptr);
      FUZZ_CHECK(static_cast<uint64_t>(t.numel / traits->blockSize * traits->typeSize) == t.nbytes);
      reader.releasePages(t);
      if (!traits->dequantizable || t.numel > kMaxDequantizedValues)
        continue;
      values.assign(static_cast<size_t>(t.numel), 0.0f);
      lrq::dequantizeGgml(t.type, reader.tensorData(t), values.data(), t.numel);
    }
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
    // A precise refusal is the expected outcome for most inputs.
  }
  return 0;
}
