#pragma once
// Activation quantizers for the inputs of quantized linears (ALGORITHMS.md,
// "Uniform grid"): per-token dynamic asymmetric, per-tensor static asymmetric
// (calibrated: observe() over calibration batches, then freeze()), and the
// KV8 helper. Both use the asymmetric convention of the weight grid:
// [lo, hi] = [min(min x, 0), max(max x, 0)], s = (hi - lo) / (n - 1),
// z = round(-lo / s), x^ = s (clamp(round(x / s) + z, 0, n - 1) - z).
#include <ATen/ATen.h>

#include "core/quant/quant_spec.h"

namespace lrq::quant {

// Every token (row over the last dimension of x) gets its own step and zero
// point from its min and max. Differentiable (straight-through round).
at::Tensor fakeQuantizePerToken(const at::Tensor &x, int bits = 8);

// KV8: the output of k_proj or v_proj ([..., kvHeads * headDim]) quantized per
// token over all its heads.
at::Tensor quantizeKv(const at::Tensor &projectionOutput, int bits = 8);

class ActivationQuantizer {
public:
  explicit ActivationQuantizer(const ActivationSpec &spec = {});

  const ActivationSpec &spec() const { return spec_; }
  // Per-tensor static and not frozen yet.
  bool needsCalibration() const;

  // Per-tensor static: widens the observed range by x's min and max. Throws
  // lrq::Error after freeze(); does nothing for the other modes.
  void observe(const at::Tensor &x);
  // Per-tensor static: fixes step and zero point from the observed range.
  // Throws lrq::Error when nothing was observed.
  void freeze();
  // Per-tensor static: sets step and zero point directly (a saved calibration).
  void setStatic(double scale, double zeroPoint);
  bool frozen() const { return frozen_; }
  double observedMin() const { return min_; }
  double observedMax() const { return max_; }
  double scale() const;     // per-tensor static, frozen
  double zeroPoint() const; // per-tensor static, frozen

  // Fake-quantizes x (the identity for None). Throws lrq::Error for a static
  // quantizer that is not frozen.
  at::Tensor operator()(const at::Tensor &x) const;

private:
  ActivationSpec spec_;
  bool observed_ = false;
  bool frozen_ = false;
  double min_ = 0.0, max_ = 0.0;
  at::Tensor scale_, zero_; // 0-dim float32 once frozen
};

} // namespace lrq::quant
