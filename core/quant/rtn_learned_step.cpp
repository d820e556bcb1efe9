// Ablation for the reconstruction methods: RTN whose per-channel (or per-group)
// step s1 alone is learned by block-wise reconstruction, no scale exponent.
//   Ŵ = s1 · clamp(round(W / s1), grid)
#include "core/quant/learned_rounding.h"

namespace lrq::quant {
namespace {

class LearnedStepLayer : public LearnedRoundingLayer {
public:
  using LearnedRoundingLayer::LearnedRoundingLayer;
  at::Tensor exponent() const override { return at::Tensor(); }
  std::vector<std::pair<std::string, at::Tensor>> exponentParameters() const override { return {}; }
};

class LearnedStepMethod : public ReconstructionMethod {
public:
  std::string name() const override { return "rtn-learned-step"; }
  std::string help() const override {
    return "RTN with a learned step (ablation): only the grid's step s1 of every row (or group) "
           "is trained by the same block-wise reconstruction FlexRound and LRQ use; shows what "
           "their learned scale exponents add.";
  }
  std::string title() const override { return "RTN + learned step (ablation)"; }
  std::vector<HyperparameterSpec> hyperparameters() const override {
    return reconstructionHyperparameters(1e-3);
  }
  int64_t learnableParameters(int64_t out, int64_t, const nlohmann::json &) const override {
    return out; // s1 per row
  }
  MethodReport run(MethodContext &ctx) override {
    return runReconstructionMethod(ctx, *this,
                                   [](const at::Tensor &w, const GridSpec &spec, uint64_t) {
                                     return makeLearnedStepLayer(w, spec);
                                   });
  }
};

} // namespace

std::unique_ptr<LearnedRoundingLayer> makeLearnedStepLayer(const at::Tensor &weight,
                                                           const GridSpec &spec) {
  return std::make_unique<LearnedStepLayer>(weight, spec);
}

std::unique_ptr<QuantMethod> makeLearnedStepMethod() {
  return std::make_unique<LearnedStepMethod>();
}

} // namespace lrq::quant
