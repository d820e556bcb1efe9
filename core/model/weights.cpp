#include "core/model/weights.h"

#include <sstream>

#include "core/common/error.h"

namespace lrq {
namespace {

std::string shapeString(at::IntArrayRef shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i)
    out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

// Looks tensors up by HF name and checks their shapes, so that a wrong file
// fails here with a message instead of deep inside a matmul.
class TensorTable {
public:
  explicit TensorTable(const std::map<std::string, at::Tensor> &tensors) : tensors_(tensors) {}

  bool has(const std::string &name) const { return tensors_.count(name) != 0; }

  at::Tensor require(const std::string &name, std::vector<int64_t> shape) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end())
      throw Error("model weights: missing tensor " + name + " (expected shape " +
                  shapeString(shape) + ")");
    return checked(name, it->second, shape);
  }

  // Undefined when absent; checked when present.
  at::Tensor optional(const std::string &name, std::vector<int64_t> shape) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? at::Tensor() : checked(name, it->second, shape);
  }

private:
  static at::Tensor checked(const std::string &name, const at::Tensor &t,
                            const std::vector<int64_t> &shape) {
    if (!t.defined() || t.sizes() != at::IntArrayRef(shape))
      throw Error("model weights: tensor " + name + " has shape " +
                  (t.defined() ? shapeString(t.sizes()) : std::string("(undefined)")) +
                  ", expected " + shapeString(shape));
    if (!t.is_floating_point())
      throw Error("model weights: tensor " + name + " is not floating point");
    return t;
  }

  const std::map<std::string, at::Tensor> &tensors_;
};

void checkConfig(const ModelConfig &c) {
  auto positive = [](int64_t v, const char *what) {
    if (v <= 0)
      throw Error(std::string("model config: ") + what + " must be positive, got " +
                  std::to_string(v));
  };
  positive(c.vocabSize, "vocab_size");
  positive(c.hiddenSize, "hidden_size");
  positive(c.intermediateSize, "intermediate_size");
  positive(c.numLayers, "num_hidden_layers");
  positive(c.numHeads, "num_attention_heads");
  if (c.numKvHeads != 0 && c.numHeads % c.numKvHeads != 0)
    throw Error("model config: num_attention_heads (" + std::to_string(c.numHeads) +
                ") is not a multiple of num_key_value_heads (" + std::to_string(c.numKvHeads) +
                ")");
  if (c.headDim == 0 && c.hiddenSize % c.numHeads != 0)
    throw Error("model config: hidden_size is not a multiple of num_attention_heads");
}

Linear linear(const TensorTable &t, const std::string &prefix, int64_t out, int64_t in,
              bool requireBias) {
  Linear l;
  l.weight = t.require(prefix + ".weight", {out, in});
  l.bias = requireBias ? t.require(prefix + ".bias", {out}) : t.optional(prefix + ".bias", {out});
  return l;
}

NormWeights norm(const TensorTable &t, const std::string &prefix, int64_t dim, bool withBias) {
  NormWeights n;
  n.weight = t.require(prefix + ".weight", {dim});
  if (withBias)
    n.bias = t.require(prefix + ".bias", {dim});
  return n;
}

ModelWeights llamaWeights(const ModelConfig &c, const TensorTable &t) {
  const int64_t hidden = c.hiddenSize;
  const int64_t headDim = c.headDim > 0 ? c.headDim : hidden / c.numHeads;
  const int64_t kvHeads = c.numKvHeads > 0 ? c.numKvHeads : c.numHeads;
  const int64_t qDim = c.numHeads * headDim, kvDim = kvHeads * headDim;

  ModelWeights w;
  w.tokenEmbedding = t.require("model.embed_tokens.weight", {c.vocabSize, hidden});
  for (int64_t i = 0; i < c.numLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i);
    BlockWeights b;
    b.attnNorm = norm(t, p + ".input_layernorm", hidden, false);
    b.mlpNorm = norm(t, p + ".post_attention_layernorm", hidden, false);
    b.q = linear(t, p + ".self_attn.q_proj", qDim, hidden, c.attentionBias);
    b.k = linear(t, p + ".self_attn.k_proj", kvDim, hidden, c.attentionBias);
    b.v = linear(t, p + ".self_attn.v_proj", kvDim, hidden, c.attentionBias);
    b.o = linear(t, p + ".self_attn.o_proj", hidden, qDim, c.attentionOutBias);
    b.gate = linear(t, p + ".mlp.gate_proj", c.intermediateSize, hidden, c.mlpBias);
    b.up = linear(t, p + ".mlp.up_proj", c.intermediateSize, hidden, c.mlpBias);
    b.down = linear(t, p + ".mlp.down_proj", hidden, c.intermediateSize, c.mlpBias);
    w.blocks.push_back(std::move(b));
  }
  w.finalNorm = norm(t, "model.norm", hidden, false);
  // HF ties by default (tie_word_embeddings = true); tied checkpoints, GGUF
  // files included, simply have no separate head.
  w.lmHead = t.optional("lm_head.weight", {c.vocabSize, hidden});
  if (!w.lmHead.defined())
    w.lmHead = w.tokenEmbedding;
  return w;
}

ModelWeights optWeights(const ModelConfig &c, const TensorTable &t) {
  const int64_t hidden = c.hiddenSize;
  const int64_t embedDim = c.wordEmbedProjDim > 0 ? c.wordEmbedProjDim : hidden;
  const std::string d = "model.decoder.";

  ModelWeights w;
  w.tokenEmbedding = t.require(d + "embed_tokens.weight", {c.vocabSize, embedDim});
  // OPT's learned positions carry an offset of 2 rows.
  w.positionEmbedding = t.require(d + "embed_positions.weight", {c.maxPositions + 2, hidden});
  if (embedDim != hidden) {
    w.projectIn.weight = t.require(d + "project_in.weight", {hidden, embedDim});
    w.projectOut.weight = t.require(d + "project_out.weight", {embedDim, hidden});
  } else {
    w.projectIn.weight = t.optional(d + "project_in.weight", {hidden, embedDim});
    w.projectOut.weight = t.optional(d + "project_out.weight", {embedDim, hidden});
  }
  for (int64_t i = 0; i < c.numLayers; ++i) {
    const std::string p = d + "layers." + std::to_string(i);
    BlockWeights b;
    b.attnNorm = norm(t, p + ".self_attn_layer_norm", hidden, true);
    b.mlpNorm = norm(t, p + ".final_layer_norm", hidden, true);
    b.q = linear(t, p + ".self_attn.q_proj", hidden, hidden, false);
    b.k = linear(t, p + ".self_attn.k_proj", hidden, hidden, false);
    b.v = linear(t, p + ".self_attn.v_proj", hidden, hidden, false);
    b.o = linear(t, p + ".self_attn.out_proj", hidden, hidden, false);
    b.up = linear(t, p + ".fc1", c.intermediateSize, hidden, false);
    b.down = linear(t, p + ".fc2", hidden, c.intermediateSize, false);
    w.blocks.push_back(std::move(b));
  }
  // OPT-350m style (post-LN) checkpoints have no final LayerNorm.
  if (c.doLayerNormBefore || t.has(d + "final_layer_norm.weight"))
    w.finalNorm = norm(t, d + "final_layer_norm", hidden, true);
  w.lmHead = t.optional("lm_head.weight", {c.vocabSize, embedDim});
  if (!w.lmHead.defined())
    w.lmHead = w.tokenEmbedding;
  return w;
}

} // namespace

ModelWeights ModelWeights::fromHfTensors(const ModelConfig &config,
                                         const std::map<std::string, at::Tensor> &tensors) {
  checkConfig(config);
  TensorTable table(tensors);
  return config.arch == Architecture::Opt ? optWeights(config, table) : llamaWeights(config, table);
}

std::vector<std::pair<std::string, Linear *>> blockLinears(const ModelConfig &config,
                                                           BlockWeights &block) {
  if (config.arch == Architecture::Opt)
    return {{"q_proj", &block.q},   {"k_proj", &block.k}, {"v_proj", &block.v},
            {"out_proj", &block.o}, {"fc1", &block.up},   {"fc2", &block.down}};
  return {{"q_proj", &block.q},      {"k_proj", &block.k},       {"v_proj", &block.v},
          {"o_proj", &block.o},      {"gate_proj", &block.gate}, {"up_proj", &block.up},
          {"down_proj", &block.down}};
}

} // namespace lrq
