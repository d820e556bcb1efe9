// safetensors header (core/io/safetensors.cpp) on arbitrary bytes.
#include <cstdint>
#include <cstring>
#include <string>

#include "core/common/error.h"
#include "core/io/safetensors.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lrq_fuzz::MemoryFile file("fuzz.safetensors");
  const std::string &path = file.write(data, size);
  try {
    const lrq::SafetensorsReader reader(path);
    uint64_t headerLen = 0;
    std::memcpy(&headerLen, data, sizeof headerLen);
    FUZZ_CHECK(reader.dataOffset() == 8 + headerLen && reader.dataOffset() <= size);
    uint64_t previousEnd = 0;
    for (const lrq::SafetensorsTensorInfo &t : reader.tensors()) {
      FUZZ_CHECK(reader.find(t.name) == &t);
      FUZZ_CHECK(t.begin <= t.end && reader.dataOffset() + t.end <= size);
      FUZZ_CHECK(t.numel() >= 0);
      // Tensors come in data order and, when not empty, never share bytes.
      if (t.begin != t.end) {
        FUZZ_CHECK(t.begin >= previousEnd);
        previousEnd = t.end;
      }
      reader.releasePages(t);
      // What load() would read: the tensor's bytes, inside the input.
      unsigned checksum = 0;
      for (uint64_t i = t.begin; i < t.end; ++i)
        checksum += data[reader.dataOffset() + i];
      (void)checksum;
    }
    for (const auto &[key, value] : reader.metadata())
      FUZZ_CHECK(key.size() + value.size() <= size);
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
  }
  return 0;
}
