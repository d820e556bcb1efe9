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
  // Per-tensor static with init ClippingSearch: a second pass over the same
  // calibration batches, after all observe() calls. The first call fixes the
  // observed range; the values (clamped into it) are counted in a histogram of
  // kClipBins bins over it, and freeze() picks the fraction k / clipSteps of
  // the range minimising sum over bins of count * |c - Q_k(c)|^clipNorm (c:
  // the bin centre; bins are far narrower than the smallest step tried, so
  // this is the error over the values up to rounding within a bin), the
  // largest fraction winning ties. Does nothing for other modes and inits.
  void observeForClipSearch(const at::Tensor &x);
  // Per-tensor static with init ClippingSearch and not frozen yet.
  bool needsClipSearchPass() const;
  static constexpr int64_t kClipBins = int64_t(1) << 18;

  // Per-tensor static: fixes step and zero point from the observed range
  // (scaled by the searched fraction for ClippingSearch). Throws lrq::Error
  // when nothing was observed, or for ClippingSearch without the second pass.
  void freeze();
  // The fraction of the observed range kept (1 for MinMax); after freeze().
  double clipFraction() const { return fraction_; }
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
  double fraction_ = 1.0;
  at::Tensor histogram_;    // ClippingSearch second pass: float64 [kClipBins]
  at::Tensor scale_, zero_; // 0-dim float32 once frozen
};

} // namespace lrq::quant
