#pragma once
// LLaMA-family and OPT decoders on ATen. Blocks are exposed one at a time
// because quantization works block by block.
#include <ATen/ATen.h>

#include <vector>

#include "core/model/config.h"
#include "core/model/weights.h"

namespace lrq {

// Keys/values of every block for incremental decoding.
class KvCache {
public:
  explicit KvCache(int64_t numLayers) : keys_(numLayers), values_(numLayers) {}
  int64_t length() const { return keys_.empty() || !keys_[0].defined() ? 0 : keys_[0].size(2); }
  // Appends [B, kvHeads, T, headDim] for block i and returns the full tensors.
  std::pair<at::Tensor, at::Tensor> append(int64_t block, const at::Tensor &k, const at::Tensor &v);
  void clear();

private:
  std::vector<at::Tensor> keys_, values_;
};

class DecoderModel {
public:
  DecoderModel(ModelConfig config, ModelWeights weights);

  const ModelConfig &config() const { return config_; }
  ModelWeights &weights() { return weights_; }
  const ModelWeights &weights() const { return weights_; }
  int64_t numBlocks() const { return config_.numLayers; }

  // Moves all weights (and future computation) to a device and dtype.
  void to(at::Device device, at::ScalarType dtype = at::kFloat);
  at::Device device() const;

  // tokens [B, T] int64 -> hidden [B, T, hidden]. startPos matters for OPT's
  // learned positions.
  at::Tensor embed(const at::Tensor &tokens, int64_t startPos = 0) const;
  // One decoder block on hidden states [B, T, hidden] at positions startPos..startPos+T-1.
  // With a cache, keys/values are appended and attention covers the cached prefix.
  at::Tensor runBlock(int64_t block, const at::Tensor &hidden, int64_t startPos = 0,
                      KvCache *cache = nullptr) const;
  // Final norm + LM head: hidden [B, T, hidden] -> logits [B, T, vocab].
  at::Tensor head(const at::Tensor &hidden) const;
  // Every block, no head: tokens [B, T] -> the last block's hidden states [B, T, hidden].
  at::Tensor lastHidden(const at::Tensor &tokens, KvCache *cache = nullptr) const;
  // Whole model: tokens [B, T] -> logits [B, T, vocab].
  at::Tensor forward(const at::Tensor &tokens, KvCache *cache = nullptr) const;

private:
  ModelConfig config_;
  ModelWeights weights_;
  at::Tensor ropeCos_, ropeSin_; // [maxPositions, headDim/2], LLaMA only
  void buildRope(int64_t positions);
};

} // namespace lrq
