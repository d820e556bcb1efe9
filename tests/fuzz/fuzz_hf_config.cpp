// HF config.json (core/io/hf_config.cpp): read, and what is accepted must
// survive the writer and reader again unchanged.
#include <cstdint>
#include <string>

#include "core/common/error.h"
#include "core/io/hf_config.h"
#include "fuzz_common.h"

namespace {

bool sameConfig(const lrq::ModelConfig &a, const lrq::ModelConfig &b) {
  return a.arch == b.arch && a.architectureName == b.architectureName &&
         a.vocabSize == b.vocabSize && a.hiddenSize == b.hiddenSize &&
         a.intermediateSize == b.intermediateSize && a.numLayers == b.numLayers &&
         a.numHeads == b.numHeads && a.numKvHeads == b.numKvHeads && a.headDim == b.headDim &&
         a.maxPositions == b.maxPositions && a.normEps == b.normEps && a.ropeTheta == b.ropeTheta &&
         a.tieEmbeddings == b.tieEmbeddings && a.attentionBias == b.attentionBias &&
         a.attentionOutBias == b.attentionOutBias && a.mlpBias == b.mlpBias &&
         a.doLayerNormBefore == b.doLayerNormBefore && a.wordEmbedProjDim == b.wordEmbedProjDim &&
         a.activation == b.activation && a.bosTokenId == b.bosTokenId &&
         a.eosTokenId == b.eosTokenId;
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const std::string text(reinterpret_cast<const char *>(data), size);
  lrq::ModelConfig config;
  try {
    config = lrq::modelConfigFromHfConfigJson(text, "config.json");
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
    return 0;
  }
  const std::string written = lrq::hfConfigJson(config);
  const lrq::ModelConfig again = lrq::modelConfigFromHfConfigJson(written, "written config.json");
  FUZZ_CHECK(sameConfig(config, again));
  return 0;
}
