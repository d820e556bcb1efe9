#pragma once
// SmoothQuant (Xiao et al., ICML 2023; ALGORITHMS.md "SmoothQuant"): a
// pre-transform that is the identity in full precision and moves activation
// outliers into the weights before W8A8 quantization. Combinable with any
// method: apply it to the full-precision model first.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/common/progress.h"
#include "core/model/decoder.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"

namespace lrq::quant {

// Per block, max |x| of every input channel over the calibration set for the
// two norm-fed inputs: the attention input (input_layernorm output, shared by
// q/k/v) and the MLP input (post_attention_layernorm output, shared by gate/up;
// OPT: fc1), float32 [hidden]; and for the two linear-fed inputs: o_proj's
// (the attention output, [numHeads * headDim]) and down_proj's (the SwiGLU
// product; OPT: fc2's, the activated fc1 output), [intermediate]. On the CPU.
// The inputs are those of the model as it is (raw, before any input
// transform); the model is left unchanged.
struct NormInputMax {
  at::Tensor attention, mlp;
  at::Tensor attentionOutput, mlpProduct;
};
std::vector<NormInputMax> collectNormInputAbsMax(DecoderModel &model,
                                                 const CalibrationSet &calibration,
                                                 int64_t batchSize = 4,
                                                 const CancelToken *cancel = nullptr);

// Which groups SmoothQuant smooths.
//  Norm: the norm-fed groups only (q/k/v, gate/up; OPT: q/k/v, fc1), as the
//        authors' reference code does.
//  All:  also the two linear-fed pairs, where the scale is folded into the
//        previous linear's output rows (ALGORITHMS.md: "or previous linear's
//        output rows"): v_proj -> o_proj (with grouped-query attention one v
//        channel feeds one o_proj column per query head of its group, so the
//        scale is shared by them: the statistics are maxed over the group) and
//        up_proj -> down_proj (the SwiGLU product is linear in up's output;
//        OPT: fc1 -> fc2 when the activation is ReLU, which commutes with a
//        positive scale; skipped for GELU). Both are exact in full precision.
enum class SmoothGroups { Norm, All };
const char *smoothGroupsName(SmoothGroups g); // "norm", "all"
bool parseSmoothGroups(const std::string &name, SmoothGroups *out);

struct SmoothQuantOptions {
  double alpha = 0.5;
  SmoothGroups groups = SmoothGroups::Norm;
  int64_t batchSize = 4;
};

struct SmoothQuantReport {
  double alpha = 0.5;
  int64_t calibrationSamples = 0;
  double seconds = 0;
  struct Group {
    int64_t block = 0;
    // What absorbs 1/s: "input_layernorm" / "post_attention_layernorm", or
    // for the linear-fed pairs the previous linear ("v_proj", "up_proj"/"fc1").
    std::string norm;
    std::vector<std::string> linears; // the linears reading its output
    double scaleMin = 0, scaleMax = 0;
    // max / median over channels of max|X_j|, before and after smoothing
    // (after = max|X_j| / s_j, what the smoothed model's input holds).
    double activationRatioBefore = 0, activationRatioAfter = 0;
  };
  std::vector<Group> groups;
};

// For every selected block (selection.blocks; its linears and flags are not
// consulted: every linear reading a smoothed norm must be rescaled) and each
// norm-fed group: s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha), the weight max
// over all linears of the group, clamped >= 1e-5, s clamped >= 1e-5; the
// norm's weight (and bias) is divided by s, the linears' columns multiplied by
// s. Statistics come from the model before smoothing (all blocks at once, as
// the reference code does). Needs pre-norm blocks (LLaMA, pre-LN OPT); throws
// lrq::Error otherwise, or for alpha outside [0, 1] or an empty calibration set.
SmoothQuantReport applySmoothQuant(DecoderModel &model, const CalibrationSet &calibration,
                                   double alpha = 0.5, const LayerSelection &selection = {},
                                   ProgressObserver *observer = nullptr,
                                   const CancelToken *cancel = nullptr, int64_t batchSize = 4);
// The same with options.groups choosing the groups (see SmoothGroups); the
// linear-fed pairs use the same formula, with the scale of a v_proj channel
// shared by the o_proj columns it feeds.
SmoothQuantReport applySmoothQuant(DecoderModel &model, const CalibrationSet &calibration,
                                   const SmoothQuantOptions &options,
                                   const LayerSelection &selection = {},
                                   ProgressObserver *observer = nullptr,
                                   const CancelToken *cancel = nullptr);

} // namespace lrq::quant
