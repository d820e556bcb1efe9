#include "core/quant/activation_quantizer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include "core/common/error.h"
#include "core/quant/grid.h"

namespace lrq::quant {

namespace {

void checkBits(int bits) {
  if (bits < 2 || bits > 16)
    throw Error("activation quantizer: bits must be in 2..16, got " + std::to_string(bits));
}

int64_t levels(int bits) {
  return int64_t(1) << bits;
}

} // namespace

at::Tensor fakeQuantizePerToken(const at::Tensor &x, int bits) {
  checkBits(bits);
  if (!x.defined() || x.dim() < 1 || !at::isFloatingType(x.scalar_type()))
    throw Error("activation quantizer: expected a floating-point tensor [..., features]");
  if (x.numel() == 0)
    return x;
  const at::Tensor rows = x.reshape({-1, x.size(-1)});
  at::Tensor lo, hi;
  {
    at::NoGradGuard noGrad;
    const at::Tensor detached = rows.detach();
    lo = detached.amin(1, true).clamp_max(0.0);
    hi = detached.amax(1, true).clamp_min(0.0);
  }
  const auto [scale, zero] = asymmetricStep(lo, hi, levels(bits));
  return fakeQuantizeClamped(rows, scale, zero, 0, levels(bits) - 1).reshape(x.sizes());
}

at::Tensor quantizeKv(const at::Tensor &projectionOutput, int bits) {
  return fakeQuantizePerToken(projectionOutput, bits);
}

ActivationQuantizer::ActivationQuantizer(const ActivationSpec &spec) : spec_(spec) {
  spec_.validate();
}

bool ActivationQuantizer::needsCalibration() const {
  return spec_.mode == ActivationMode::PerTensorStatic && !frozen_;
}

void ActivationQuantizer::observe(const at::Tensor &x) {
  if (spec_.mode != ActivationMode::PerTensorStatic)
    return;
  if (frozen_)
    throw Error("activation quantizer: observe() after freeze()");
  if (!x.defined() || x.numel() == 0)
    return;
  at::NoGradGuard noGrad;
  const at::Tensor d = x.detach();
  const double lo = d.min().item<double>(), hi = d.max().item<double>();
  if (!std::isfinite(lo) || !std::isfinite(hi))
    throw Error("activation quantizer: calibration batch holds NaN or Inf");
  min_ = observed_ ? std::min(min_, lo) : lo;
  max_ = observed_ ? std::max(max_, hi) : hi;
  observed_ = true;
}

bool ActivationQuantizer::needsClipSearchPass() const {
  return spec_.mode == ActivationMode::PerTensorStatic && spec_.init == StepInit::ClippingSearch &&
         !frozen_;
}

void ActivationQuantizer::observeForClipSearch(const at::Tensor &x) {
  if (!needsClipSearchPass())
    return;
  if (!observed_)
    throw Error("activation quantizer: clipping-search pass before the range was observed");
  if (!x.defined() || x.numel() == 0)
    return;
  at::NoGradGuard noGrad;
  const double lo = std::min(min_, 0.0), hi = std::max(max_, 0.0);
  if (!(hi > lo))
    return; // all zeros: nothing to search
  if (!histogram_.defined())
    histogram_ = at::zeros({kClipBins}, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor v = x.detach().to(at::kCPU, at::kFloat).reshape({-1}).clamp(lo, hi);
  histogram_ += at::histc(v, kClipBins, lo, hi).to(at::kDouble);
}

namespace {

// The fraction k / steps of [lo, hi] (k = steps..1) whose asymmetric grid
// minimises sum count * |c - Q(c)|^p over the histogram's non-empty bins.
double searchClipFraction(const at::Tensor &histogram, double lo, double hi, int64_t levels,
                          int steps, double p) {
  const int64_t bins = histogram.size(0);
  const at::Tensor nonEmpty = histogram.gt(0).nonzero().reshape({-1});
  const at::Tensor counts = histogram.index_select(0, nonEmpty);
  const at::Tensor centres = (nonEmpty.to(at::kDouble) + 0.5) * ((hi - lo) / double(bins)) + lo;
  double bestFraction = 1.0, bestError = std::numeric_limits<double>::infinity();
  for (int k = steps; k >= 1; --k) {
    const double f = double(k) / double(steps);
    // The step arithmetic of freeze(): float32, as the quantizer will run.
    const auto [scale, zero] = asymmetricStep(at::scalar_tensor(f * lo, at::kFloat),
                                              at::scalar_tensor(f * hi, at::kFloat), levels);
    const double s = scale.item<double>(), z = zero.item<double>();
    const at::Tensor q = (centres / s).round_().add_(z).clamp_(0.0, double(levels - 1));
    const double error =
        (q.sub_(z).mul_(s).sub_(centres).abs_().pow_(p) * counts).sum().item<double>();
    if (error < bestError) {
      bestError = error;
      bestFraction = f;
    }
  }
  return bestFraction;
}

} // namespace

void ActivationQuantizer::freeze() {
  if (spec_.mode != ActivationMode::PerTensorStatic)
    return;
  if (!observed_)
    throw Error("activation quantizer: freeze() before any calibration batch was observed");
  const double lo = std::min(min_, 0.0), hi = std::max(max_, 0.0);
  fraction_ = 1.0;
  if (spec_.init == StepInit::ClippingSearch && hi > lo) {
    if (!histogram_.defined())
      throw Error("activation quantizer: clipping search needs the second calibration pass "
                  "(observeForClipSearch) before freeze()");
    fraction_ =
        searchClipFraction(histogram_, lo, hi, levels(spec_.bits), spec_.clipSteps, spec_.clipNorm);
    histogram_ = at::Tensor();
  }
  const at::Tensor loT = at::scalar_tensor(fraction_ * lo, at::kFloat);
  const at::Tensor hiT = at::scalar_tensor(fraction_ * hi, at::kFloat);
  std::tie(scale_, zero_) = asymmetricStep(loT, hiT, levels(spec_.bits));
  frozen_ = true;
}

void ActivationQuantizer::setStatic(double scale, double zeroPoint) {
  if (spec_.mode != ActivationMode::PerTensorStatic)
    throw Error("activation quantizer: setStatic() on a quantizer that is not per-tensor static");
  if (!(scale > 0.0) || !std::isfinite(scale) || zeroPoint < 0.0 ||
      zeroPoint > double(levels(spec_.bits) - 1) || zeroPoint != std::round(zeroPoint))
    throw Error("activation quantizer: invalid static step " + std::to_string(scale) +
                " or zero point " + std::to_string(zeroPoint));
  scale_ = at::scalar_tensor(scale, at::kFloat);
  zero_ = at::scalar_tensor(zeroPoint, at::kFloat);
  frozen_ = true;
}

double ActivationQuantizer::scale() const {
  if (!frozen_ || !scale_.defined())
    throw Error("activation quantizer: no static step (not per-tensor static, or not frozen)");
  return scale_.item<double>();
}

double ActivationQuantizer::zeroPoint() const {
  if (!frozen_ || !zero_.defined())
    throw Error(
        "activation quantizer: no static zero point (not per-tensor static, or not frozen)");
  return zero_.item<double>();
}

at::Tensor ActivationQuantizer::operator()(const at::Tensor &x) const {
  switch (spec_.mode) {
  case ActivationMode::None:
    return x;
  case ActivationMode::PerTokenDynamic:
    return fakeQuantizePerToken(x, spec_.bits);
  case ActivationMode::PerTensorStatic:
    if (!frozen_)
      throw Error("activation quantizer: per-tensor static quantizer used before calibration");
    return fakeQuantizeClamped(x, scale_.to(x.scalar_type()), zero_.to(x.scalar_type()), 0,
                               levels(spec_.bits) - 1);
  }
  return x;
}

} // namespace lrq::quant
