#include "core/quant/rtn.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "core/common/error.h"
#include "core/quant/grid.h"
#include "core/quant/method.h"

namespace lrq::quant {

namespace {

struct Target {
  int64_t block;
  std::string layer;
  at::Tensor *weight;
};

std::string where(const Target &t) {
  return t.block >= 0 ? "block " + std::to_string(t.block) + " " + t.layer : t.layer;
}

} // namespace

LayerErrorStats weightErrorStats(const at::Tensor &weight, const at::Tensor &approx) {
  at::NoGradGuard noGrad;
  const at::Tensor w = weight.detach().to(at::kDouble);
  const at::Tensor e = w - approx.detach().to(at::kDouble);
  LayerErrorStats s;
  if (weight.dim() == 2) {
    s.rows = weight.size(0);
    s.cols = weight.size(1);
  }
  const double errorEnergy = e.pow(2).sum().item<double>();
  const double signalEnergy = w.pow(2).sum().item<double>();
  s.mse = weight.numel() > 0 ? errorEnergy / double(weight.numel()) : 0.0;
  s.sqnrDb = errorEnergy > 0.0 ? 10.0 * std::log10(signalEnergy / errorEnergy)
                               : std::numeric_limits<double>::infinity();
  return s;
}

std::vector<LayerErrorStats> quantizeModelRtn(ModelWeights &weights, const ModelConfig &config,
                                              const QuantScheme &scheme, ProgressObserver *observer,
                                              const CancelToken *cancel,
                                              std::map<std::string, GridParams> *grids,
                                              WeightArena *arena) {
  scheme.validate();
  const LayerSelection &sel = scheme.layers;
  const int64_t blockCount = int64_t(weights.blocks.size());
  for (int64_t b : sel.blocks)
    if (b >= blockCount)
      throw Error("scheme selects block " + std::to_string(b) + " but the model has " +
                  std::to_string(blockCount) + " blocks");
  if (!weights.blocks.empty()) {
    std::set<std::string> roles;
    for (const auto &[role, linear] : blockLinears(config, weights.blocks.front())) {
      (void)linear;
      roles.insert(role);
    }
    for (const std::string &name : sel.linears)
      if (!roles.count(name))
        throw Error("scheme selects linear " + name + ", which this model's blocks do not have");
  }

  // Collect first and check every weight against the grid, so that a scheme
  // that does not fit leaves the model untouched.
  std::vector<Target> targets;
  if (sel.embeddings && weights.tokenEmbedding.defined())
    targets.push_back({-1, "embeddings", &weights.tokenEmbedding});
  for (int64_t b = 0; b < blockCount; ++b) {
    if (!sel.selectsBlock(b))
      continue;
    for (auto &[role, linear] : blockLinears(config, weights.blocks[size_t(b)]))
      if (sel.selectsLinear(role) && linear->weight.defined())
        targets.push_back({b, role, &linear->weight});
  }
  const bool tied = weights.lmHead.defined() && weights.tokenEmbedding.defined() &&
                    weights.lmHead.is_same(weights.tokenEmbedding);
  bool lmHeadFollowsEmbeddings = false;
  if (sel.lmHead && weights.lmHead.defined()) {
    if (tied && sel.embeddings)
      lmHeadFollowsEmbeddings = true; // same tensor: quantized once with the embeddings
    else
      targets.push_back({-1, "lm_head", &weights.lmHead});
  }
  for (const Target &t : targets) {
    try {
      checkWeightForGrid(*t.weight, scheme.weightFor(t.weight->size(-1)));
    } catch (const Error &e) {
      throw Error(where(t) + ": " + e.what());
    }
  }

  at::NoGradGuard noGrad;
  if (observer)
    observer->started("rtn", int64_t(targets.size()));
  std::vector<LayerErrorStats> stats;
  stats.reserve(targets.size());
  for (size_t i = 0; i < targets.size(); ++i) {
    if (cancel)
      cancel->throwIfCancelled();
    const Target &t = targets[i];
    const at::Tensor original = t.weight->to(at::kFloat);
    const GridSpec &grid = scheme.weightFor(original.size(1));
    // roundToNearest, keeping the grid.
    GridParams params;
    try { // a step its step format cannot store is refused here
      params = computeGridParams(original, grid);
    } catch (const Error &e) {
      throw Error(where(t) + ": " + e.what());
    }
    const at::Tensor quantized = fakeQuantizeWeight(original, params, grid).contiguous();
    if (grids)
      (*grids)[gridKey(config, t.block, t.layer)] = params;
    LayerErrorStats s = weightErrorStats(original, quantized);
    s.block = t.block;
    s.layer = t.layer;
    stats.push_back(s);
    reportLayer(observer, s);
    *t.weight = placeWeight(arena, quantized); // a new tensor: a tied LM head keeps the original
    if (observer)
      observer->progress(int64_t(i + 1), int64_t(targets.size()), where(t));
  }
  if (lmHeadFollowsEmbeddings)
    weights.lmHead = weights.tokenEmbedding;
  if (observer)
    observer->finished();
  return stats;
}

} // namespace lrq::quant
