// HF tokenizer.json and tokenizer_config.json (core/tokenizer/tokenizer_json.cpp):
// read, build the tokenizer they describe and encode a sample text with it.
// Input: tokenizer.json, then optionally a NUL byte and tokenizer_config.json.
#include <cstdint>
#include <cstring>
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
  static lrq_fuzz::MemoryFile configFile("tokenizer_config.json");
  const auto *nul = static_cast<const uint8_t *>(std::memchr(data, 0, size));
  const size_t jsonSize = nul ? static_cast<size_t>(nul - data) : size;
  const std::string &path = file.write(data, jsonSize);
  std::string configPath;
  if (nul)
    configPath = configFile.write(nul + 1, size - jsonSize - 1);
  try {
    const lrq::TokenizerSpec spec = lrq::tokenizerSpecFromJsonFiles(path, configPath);
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
