// FlexRound (Lee et al., ICML 2023; ALGORITHMS.md "FlexRound"): learned
// element-wise division before rounding, by block-wise reconstruction.
//   Ŵ = s1 · clamp(round(W / (s1 · exp(S2 + r3))), grid)
#include "core/quant/learned_rounding.h"

namespace lrq::quant {
namespace {

class FlexRoundLayer : public LearnedRoundingLayer {
public:
  FlexRoundLayer(const at::Tensor &weight, const GridSpec &spec)
      : LearnedRoundingLayer(weight, spec) {
    s2_ = at::zeros_like(w_).requires_grad_(true);
    r3_ = at::zeros({w_.size(0), 1}, w_.options()).requires_grad_(true);
  }
  at::Tensor exponent() const override { return s2_ + r3_; }
  std::vector<std::pair<std::string, at::Tensor>> exponentParameters() const override {
    return {{"S2", s2_}, {"r3", r3_}};
  }
  at::Tensor scaleExponentMatrix() const override { return s2_.detach().clone(); }

private:
  at::Tensor s2_; // [out, in]: one learned scale per weight
  at::Tensor r3_; // [out, 1]
};

class FlexRoundMethod : public ReconstructionMethod {
public:
  std::string name() const override { return "flexround"; }
  std::string help() const override {
    return "FlexRound (Lee et al., ICML 2023): learns, block by block, a per-channel step s1 and "
           "an element-wise division exp(S2 + r3) applied before rounding, one scale S2 per "
           "weight; trained with Adam to reproduce each full-precision block's output on the "
           "calibration set. Starts from RTN.";
  }
  std::string title() const override { return "FlexRound: learned element-wise division"; }
  std::vector<HyperparameterSpec> hyperparameters() const override {
    return reconstructionHyperparameters(3e-3);
  }
  // The reference runs its 2-D clipping search (ClippingSearch2D) at W4A8 only;
  // W3A16 and W4A16 start from min/max.
  GridSpec referenceGrid(const QuantScheme &scheme) const override {
    if (isReferenceSetting(scheme, 4, true))
      return referenceClippingGrid(scheme);
    return QuantMethod::referenceGrid(scheme);
  }
  // s1 and r3 per row, S2 per weight.
  int64_t learnableParameters(int64_t out, int64_t in, const nlohmann::json &) const override {
    return out * in + 2 * out;
  }
  MethodReport run(MethodContext &ctx) override {
    return runReconstructionMethod(ctx, *this,
                                   [](const at::Tensor &w, const GridSpec &spec, uint64_t) {
                                     return makeFlexRoundLayer(w, spec);
                                   });
  }
};

} // namespace

std::unique_ptr<LearnedRoundingLayer> makeFlexRoundLayer(const at::Tensor &weight,
                                                         const GridSpec &spec) {
  return std::make_unique<FlexRoundLayer>(weight, spec);
}

std::unique_ptr<QuantMethod> makeFlexRoundMethod() {
  return std::make_unique<FlexRoundMethod>();
}

} // namespace lrq::quant
