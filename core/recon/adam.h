#pragma once
// Adam as the engine trains with it: PyTorch's update rule (bias-corrected
// moments, eps added to the corrected root of the second moment). Shared by the
// block reconstructor and the Learn playground's one-layer fits.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace lrq::recon {

class Adam {
public:
  explicit Adam(std::vector<at::Tensor> params) : params_(std::move(params)) {
    for (const at::Tensor &p : params_) {
      m_.push_back(at::zeros_like(p));
      v_.push_back(at::zeros_like(p));
    }
  }
  void zeroGrad() {
    for (const at::Tensor &p : params_)
      if (p.grad().defined())
        p.mutable_grad().zero_();
  }
  void step(double lr) {
    at::NoGradGuard noGrad;
    ++t_;
    const double bc1 = 1.0 - std::pow(kBeta1, double(t_));
    const double bc2 = 1.0 - std::pow(kBeta2, double(t_));
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor &g = params_[i].grad();
      if (!g.defined())
        continue;
      m_[i].mul_(kBeta1).add_(g, 1.0 - kBeta1);
      v_[i].mul_(kBeta2).addcmul_(g, g, 1.0 - kBeta2);
      const at::Tensor denom = (v_[i].sqrt() / std::sqrt(bc2)).add_(kEps);
      params_[i].addcdiv_(m_[i], denom, -lr / bc1);
    }
  }

private:
  static constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
  std::vector<at::Tensor> params_, m_, v_;
  int64_t t_ = 0;
};

} // namespace lrq::recon
