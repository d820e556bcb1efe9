#pragma once
// Installs a scheme's activation quantizers on a model (ALGORITHMS.md,
// "Uniform grid", activations): the input of every selected linear is
// fake-quantized per token (dynamic) or per tensor (static, calibrated), and
// with KV8 the outputs of k_proj and v_proj are quantized per token to 8 bits.
// The decoder applies them through Linear::inputTransform / outputTransform.
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/common/progress.h"
#include "core/model/decoder.h"
#include "core/model/weights.h"
#include "core/quant/activation_quantizer.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"

namespace lrq::quant {

// ActivationQuantizer as a TensorTransform (a linear's input).
class ActivationTransform : public TensorTransform {
public:
  // quantizer: per-token dynamic, or per-tensor static and frozen.
  explicit ActivationTransform(ActivationQuantizer quantizer);
  at::Tensor apply(const at::Tensor &x) const override;
  std::string describe() const override; // "A8 per-token-dynamic", "A8 per-tensor-static s=..."
  const ActivationQuantizer &quantizer() const { return quantizer_; }

private:
  ActivationQuantizer quantizer_;
};

// KV8: a k_proj / v_proj output quantized per token (over all its heads).
class KvQuantTransform : public TensorTransform {
public:
  explicit KvQuantTransform(int bits = 8) : bits_(bits) {}
  at::Tensor apply(const at::Tensor &y) const override;
  std::string describe() const override; // "KV8 per-token"
  int bits() const { return bits_; }

private:
  int bits_;
};

struct ActivationInstallReport {
  int64_t inputTransforms = 0;  // linears whose input is quantized
  int64_t outputTransforms = 0; // KV8: k_proj / v_proj outputs
  int64_t calibrationSamples = 0;
  double seconds = 0;
  struct StaticStep {
    int64_t block = 0;
    std::string layer;
    double observedMin = 0, observedMax = 0, scale = 0, zeroPoint = 0;
  };
  std::vector<StaticStep> staticSteps; // per-tensor static only, in block order
};

// For scheme.activation.mode: per-token dynamic (asymmetric, scheme bits), or
// per-tensor static: each selected linear's step is calibrated on the inputs it
// sees in the model as it is (weights already quantized, earlier blocks'
// activation quantizers installed and frozen): block by block, the block's
// inputs are observed over the whole calibration set (min/max) and frozen
// before the next block is calibrated. Calibration runs batchSize samples at a
// time. scheme.kv8 adds output quantizers on k_proj and v_proj of the selected
// blocks. Replaces earlier activation transforms; the calibration set is
// needed only for per-tensor static. Throws lrq::Error for an empty
// calibration set when one is needed; lrq::Cancelled between blocks.
ActivationInstallReport installActivationQuantizers(DecoderModel &model, const QuantScheme &scheme,
                                                    const CalibrationSet &calibration,
                                                    ProgressObserver *observer = nullptr,
                                                    const CancelToken *cancel = nullptr,
                                                    int64_t batchSize = 4);

// Removes the transforms installed above (others are left in place).
void removeActivationQuantizers(DecoderModel &model);

} // namespace lrq::quant
