// GGUF read as a model (core/io/gguf_model.cpp): hyper-parameters from
// {arch}.* metadata, and the tokenizer from tokenizer.ggml.*, built and run.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "core/tokenizer/tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lrq_fuzz::MemoryFile file("fuzz-model.gguf");
  const std::string &path = file.write(data, size);
  std::unique_ptr<lrq::GgufReader> reader;
  try {
    reader = std::make_unique<lrq::GgufReader>(path);
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
    return 0;
  }
  try {
    const lrq::ModelConfig c = lrq::modelConfigFromGguf(*reader);
    FUZZ_CHECK(c.numLayers > 0 && c.hiddenSize > 0 && c.numHeads > 0 && c.numKvHeads > 0);
    FUZZ_CHECK(c.numHeads % c.numKvHeads == 0 && c.headDim > 0 && c.vocabSize > 0);
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
  }
  for (const lrq::GgufTensorInfo &t : reader->tensors())
    (void)lrq::hfNameFromGgufTensor(t.name);
  if (!lrq::ggufHasTokenizer(*reader))
    return 0;
  try {
    const lrq::TokenizerSpec spec = lrq::tokenizerSpecFromGguf(*reader);
    const std::unique_ptr<lrq::Tokenizer> tokenizer = lrq::Tokenizer::create(spec);
    const std::vector<int32_t> ids =
        tokenizer->encode("Hello world, it's 2024!\n  <s> caf\xC3\xA9 \xE2\x96\x81x", true, true);
    for (int32_t id : ids)
      FUZZ_CHECK(id >= 0 && id < tokenizer->vocabSize());
    (void)tokenizer->decode(ids);
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
  }
  return 0;
}
