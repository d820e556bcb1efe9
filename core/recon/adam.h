#pragma once
// Adam as the engine trains with it: PyTorch's update rule (bias-corrected
// moments, eps added to the corrected root of the second moment). Shared by the
// block reconstructor and the Learn playground's one-layer fits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/recon/elementwise_kernels.h"

namespace lrq::recon {

// Whether Adam updates float32 CPU parameters in one fused pass (the default)
// or with tensor ops (benches compare the two). Returns the previous value.
inline std::atomic<bool> &adamFusedFlag() {
  static std::atomic<bool> enabled{true};
  return enabled;
}
inline bool setAdamFused(bool enabled) {
  return adamFusedFlag().exchange(enabled);
}

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
      if (fusable(params_[i], g, m_[i], v_[i])) {
        fusedStep(params_[i], g, m_[i], v_[i], float(lr / bc1), float(std::sqrt(bc2)));
        continue;
      }
      m_[i].mul_(kBeta1).add_(g, 1.0 - kBeta1);
      v_[i].mul_(kBeta2).addcmul_(g, g, 1.0 - kBeta2);
      const at::Tensor denom = (v_[i].sqrt() / std::sqrt(bc2)).add_(kEps);
      params_[i].addcdiv_(m_[i], denom, -lr / bc1);
    }
  }

private:
  static constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;

  static bool fusable(const at::Tensor &p, const at::Tensor &g, const at::Tensor &m,
                      const at::Tensor &v) {
    if (!adamFusedFlag().load())
      return false;
    for (const at::Tensor *t : {&p, &g, &m, &v})
      if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || !t->is_contiguous())
        return false;
    return true;
  }
  // The update of the tensor path below in one pass over float32 CPU tensors
  // (the tensor path makes eight passes and two temporaries): the same
  // formula in float, equal to it up to rounding.
  static void fusedStep(const at::Tensor &p, const at::Tensor &g, const at::Tensor &m,
                        const at::Tensor &v, float stepSize, float sqrtBc2) {
    float *pp = p.data_ptr<float>(), *mp = m.data_ptr<float>(), *vp = v.data_ptr<float>();
    const float *gp = g.data_ptr<float>();
    at::parallel_for(0, p.numel(), 32768, [&](int64_t begin, int64_t end) {
      adamUpdate(pp + begin, mp + begin, vp + begin, gp + begin, kBeta1, kBeta2, stepSize, sqrtBc2,
                 float(kEps), end - begin);
    });
  }
  std::vector<at::Tensor> params_, m_, v_;
  int64_t t_ = 0;
};

} // namespace lrq::recon
