// RTN as a method: round-to-nearest on the scheme's weight grid, nothing learned.
#include "core/quant/method.h"

namespace lrq::quant {
namespace {

class RtnMethod : public QuantMethod {
public:
  std::string name() const override { return "rtn"; }
  std::string help() const override {
    return "Round-to-nearest: every selected weight is rounded to the nearest level of the "
           "scheme's grid (steps by min/max or clipping search). Learns nothing; the baseline "
           "every comparison starts from.";
  }
  std::string title() const override { return "RTN: round to nearest (baseline)"; }
  std::vector<HyperparameterSpec> hyperparameters() const override { return {}; }
  bool needsCalibration() const override { return false; }
  MethodReport run(MethodContext &ctx) override {
    MethodReport report;
    for (const LayerErrorStats &s :
         quantizeModelRtn(ctx.model.weights(), ctx.model.config(), ctx.scheme, ctx.observer,
                          ctx.cancel, &report.grids, ctx.arena))
      report.layers.push_back({s, 0});
    return report;
  }
};

} // namespace

std::unique_ptr<QuantMethod> makeRtnMethod() {
  return std::make_unique<RtnMethod>();
}

} // namespace lrq::quant
