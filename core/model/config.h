#pragma once
// Architecture hyper-parameters of a decoder-only causal LM, independent of
// the file format they were read from (HF config.json or GGUF metadata).
#include <cstdint>
#include <string>

namespace lrq {

enum class Architecture { Llama, Opt };

// The rotary base (rope_theta / rope.freq_base) a file may give: real models
// use 10^4..10^8; below 1 or past 10^12 (or not finite) the rotary angles are
// meaningless and perplexity silently degrades.
constexpr double kMinRopeTheta = 1.0;
constexpr double kMaxRopeTheta = 1e12;

struct ModelConfig {
  Architecture arch = Architecture::Llama;
  std::string architectureName; // e.g. "LlamaForCausalLM", "OPTForCausalLM"
  int64_t vocabSize = 0;
  int64_t hiddenSize = 0;
  int64_t intermediateSize = 0; // OPT: ffn_dim
  int64_t numLayers = 0;
  int64_t numHeads = 0;
  int64_t numKvHeads = 0; // == numHeads without grouped-query attention
  int64_t headDim = 0;    // usually hiddenSize / numHeads
  int64_t maxPositions = 2048;
  double normEps = 1e-5;      // RMSNorm eps (LLaMA) or LayerNorm eps (OPT)
  double ropeTheta = 10000.0; // LLaMA only
  bool tieEmbeddings = false; // LM head shares the token embedding matrix
  bool attentionBias = false; // q/k/v(/o) biases (Qwen2-style: q,k,v only)
  bool attentionOutBias = false;
  bool mlpBias = false;
  // OPT specifics.
  bool doLayerNormBefore = true;
  int64_t wordEmbedProjDim = 0;    // 0: same as hiddenSize (no project_in/out)
  std::string activation = "silu"; // "silu" (SwiGLU) or "relu"
  int64_t bosTokenId = -1;
  int64_t eosTokenId = -1;
};

} // namespace lrq
