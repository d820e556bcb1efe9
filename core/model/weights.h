#pragma once
// Full-precision weights of a decoder in HF layout: every linear's weight is
// [out, in] and y = x W^T + b. Quantization methods replace Linear::weight.
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include "core/model/config.h"

namespace lrq {

struct Linear {
  at::Tensor weight; // [out, in]
  at::Tensor bias;   // [out] or undefined
};

struct NormWeights {
  at::Tensor weight;
  at::Tensor bias; // LayerNorm only
};

// LLaMA: q,k,v,o, gate,up,down. OPT: q,k,v,o, up=fc1, down=fc2 (gate unused).
struct BlockWeights {
  NormWeights attnNorm; // input_layernorm / self_attn_layer_norm
  NormWeights mlpNorm;  // post_attention_layernorm / final_layer_norm
  Linear q, k, v, o;
  Linear gate, up, down;
};

struct ModelWeights {
  at::Tensor tokenEmbedding;    // [vocab, hidden or wordEmbedProjDim]
  at::Tensor positionEmbedding; // OPT learned positions [max+2, hidden]
  Linear projectIn, projectOut; // OPT-350m style, undefined otherwise
  std::vector<BlockWeights> blocks;
  NormWeights finalNorm;
  at::Tensor lmHead; // [vocab, hidden]; same storage as tokenEmbedding when tied

  // Builds from tensors named as in HF checkpoints ("model.layers.0.self_attn.q_proj.weight",
  // OPT: "model.decoder.layers.0.fc1.weight", ...). Throws lrq::Error naming the
  // missing tensor or the wrong shape.
  static ModelWeights fromHfTensors(const ModelConfig &config,
                                    const std::map<std::string, at::Tensor> &tensors);
};

// The seven (LLaMA) or six (OPT) quantizable linears of a block, with their HF role names.
std::vector<std::pair<std::string, Linear *>> blockLinears(const ModelConfig &config,
                                                           BlockWeights &block);

} // namespace lrq
