#pragma once
// A TensorTransform that shows each tensor passing through a linear's input to
// a callback (calibration statistics, GPTQ Hessians, SmoothQuant maxima) and
// otherwise behaves like the transform it wraps (or the identity). Internal to
// core/quant.
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "core/model/weights.h"

namespace lrq::quant {

class CaptureTransform : public TensorTransform {
public:
  using Callback = std::function<void(const at::Tensor &)>;
  // seeAfterWrapped: the callback sees the wrapped transform's output (what the
  // linear multiplies with) instead of the raw input.
  CaptureTransform(std::shared_ptr<const TensorTransform> wrapped, Callback callback,
                   bool seeAfterWrapped = true)
      : wrapped_(std::move(wrapped)), callback_(std::move(callback)), after_(seeAfterWrapped) {}

  at::Tensor apply(const at::Tensor &x) const override {
    if (!after_)
      callback_(x);
    at::Tensor y = wrapped_ ? wrapped_->apply(x) : x;
    if (after_)
      callback_(y);
    return y;
  }
  std::string describe() const override {
    return "capture" + (wrapped_ ? " + " + wrapped_->describe() : std::string());
  }
  const std::shared_ptr<const TensorTransform> &wrapped() const { return wrapped_; }

private:
  std::shared_ptr<const TensorTransform> wrapped_;
  Callback callback_;
  bool after_;
};

// Installs a CaptureTransform on a linear's input for the lifetime of the
// object, restoring the previous transform afterwards (also on exceptions).
class ScopedCapture {
public:
  ScopedCapture(Linear &linear, CaptureTransform::Callback callback, bool seeAfterWrapped = true)
      : linear_(&linear), previous_(linear.inputTransform) {
    linear.inputTransform =
        std::make_shared<CaptureTransform>(previous_, std::move(callback), seeAfterWrapped);
  }
  ~ScopedCapture() {
    if (linear_)
      linear_->inputTransform = previous_;
  }
  ScopedCapture(ScopedCapture &&other) noexcept
      : linear_(other.linear_), previous_(std::move(other.previous_)) {
    other.linear_ = nullptr;
  }
  ScopedCapture(const ScopedCapture &) = delete;
  ScopedCapture &operator=(const ScopedCapture &) = delete;
  ScopedCapture &operator=(ScopedCapture &&) = delete;

private:
  Linear *linear_;
  std::shared_ptr<const TensorTransform> previous_;
};

} // namespace lrq::quant
