#include "core/quant/activation_quantizer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
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

void ActivationQuantizer::freeze() {
  if (spec_.mode != ActivationMode::PerTensorStatic)
    return;
  if (!observed_)
    throw Error("activation quantizer: freeze() before any calibration batch was observed");
  const at::Tensor lo = at::scalar_tensor(std::min(min_, 0.0), at::kFloat);
  const at::Tensor hi = at::scalar_tensor(std::max(max_, 0.0), at::kFloat);
  std::tie(scale_, zero_) = asymmetricStep(lo, hi, levels(spec_.bits));
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
