// HF tokenizer.json (core/tokenizer/tokenizer_json.cpp): read, build the
// tokenizer it describes and encode a sample text with it.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/tokenizer/tokenizer.h"
#include "core/tokenizer/tokenizer_json.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lrq_fuzz::MemoryFile file("tokenizer.json");
  const std::string &path = file.write(data, size);
  try {
    const lrq::TokenizerSpec spec = lrq::tokenizerSpecFromJsonFiles(path, "");
    const std::unique_ptr<lrq::Tokenizer> tokenizer = lrq::Tokenizer::create(spec);
    const std::vector<int32_t> ids = tokenizer->encode(
        "Hello world, it's 2024!\n\t <|endoftext|> caf\xC3\xA9 \xE2\x96\x81x \xF0\x9F\x98\x80",
        true, true);
    for (int32_t id : ids)
      FUZZ_CHECK(id >= 0 && id < tokenizer->vocabSize());
    (void)tokenizer->decode(ids);
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
  }
  return 0;
}
