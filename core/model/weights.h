#pragma once
// Full-precision weights of a decoder in HF layout: every linear's weight is
// [out, in] and y = x W^T + b. Quantization methods replace Linear::weight.
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/model/config.h"

namespace lrq {

// An activation transform a quantization scheme installs on a linear: fake
// quantization of its input (A8) or of its output (KV8 on k_proj / v_proj).
// Implementations live in core/quant; the decoder only calls apply().
class TensorTransform {
public:
  virtual ~TensorTransform() = default;
  virtual at::Tensor apply(const at::Tensor &x) const = 0;
  virtual std::string describe() const = 0;
};

// Stands in for x W^T + b where the weight is computed rather than stored:
// LR-QAT training derives each linear's Ŵ from its state in the forward and
// again in the backward, so no Ŵ stays in memory between the two.
class LinearKernel {
public:
  virtual ~LinearKernel() = default;
  virtual at::Tensor apply(const at::Tensor &x2d) const = 0; // x2d [tokens, in] -> [tokens, out]
};

struct Linear {
  at::Tensor weight; // [out, in]
  at::Tensor bias;   // [out] or undefined
  // Installed by quantization methods; empty for a full-precision model.
  // y = T_out( T_in(x) W^T + b + (T_in(x) A) B )
  std::shared_ptr<const TensorTransform> inputTransform;
  std::shared_ptr<const TensorTransform> outputTransform;
  at::Tensor lowRankA; // [in, k] (LQER error reconstruction), or undefined
  at::Tensor lowRankB; // [k, out]
  // While set (during LR-QAT training only), T_in(x) W^T + b is kernel->apply(T_in(x)).
  std::shared_ptr<const LinearKernel> kernel;
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
