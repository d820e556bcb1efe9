// model.safetensors.index.json (readSafetensorsIndex in core/io/safetensors.cpp).
#include <algorithm>
#include <cstdint>
#include <string>

#include "core/common/error.h"
#include "core/io/safetensors.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lrq_fuzz::MemoryFile file("model.safetensors.index.json");
  const std::string &path = file.write(data, size);
  try {
    const lrq::SafetensorsIndex index = lrq::readSafetensorsIndex(path);
    FUZZ_CHECK(!index.weightMap.empty() && !index.shards.empty());
    FUZZ_CHECK(std::is_sorted(index.shards.begin(), index.shards.end()));
    FUZZ_CHECK(std::adjacent_find(index.shards.begin(), index.shards.end()) == index.shards.end());
    // No shard name may leave the index's directory.
    for (const auto &[tensor, shard] : index.weightMap) {
      (void)tensor;
      FUZZ_CHECK(!shard.empty() && shard.find('/') == std::string::npos);
      FUZZ_CHECK(shard != "." && shard != "..");
      FUZZ_CHECK(shard.find('\0') == std::string::npos); // a NUL would end the name early
      FUZZ_CHECK(std::binary_search(index.shards.begin(), index.shards.end(), shard));
    }
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
  }
  return 0;
}
