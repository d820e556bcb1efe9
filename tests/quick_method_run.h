#pragma once
// Every method run briefly on a fresh copy of a tiny model's weights: the GGUF
// grid tests check where the weights land, not how well they are trained.
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "core/model/decoder.h"
#include "core/model/weight_arena.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"

namespace lrq::test {

// A few iterations of every method: enough to move the grid, seconds to run.
inline std::map<std::string, nlohmann::json> quickHyperparameters(int64_t gptqBlockSize) {
  return {{"gptq", {{"block_size", gptqBlockSize}}},
          {"flexround", {{"iters", 3}, {"batch_size", 1}, {"lr", 2e-2}}},
          {"lrq", {{"iters", 3}, {"batch_size", 1}, {"lr", 2e-2}}},
          {"rtn-learned-step", {{"iters", 3}, {"batch_size", 1}, {"lr", 2e-2}}},
          {"lrqat", {{"steps", 3}, {"rank", 4}, {"lr", 1e-2}, {"lr_scale", 1e-4}}},
          {"lqer", {{"rank", 4}}},
          {"l2qer", {{"rank", 4}, {"batch_size", 2}}}};
}

struct QuickRun {
  std::unique_ptr<DecoderModel> model; // holds the method's Ŵ
  quant::MethodReport report;
};

// Runs `method` (its scheme already checked) with `quick`'s hyperparameters for
// it, seed 5, no spectra, on a model built from clones of `fp`, placing Ŵ in
// `arena` where one is given.
inline QuickRun runQuick(const ModelConfig &config, const std::map<std::string, at::Tensor> &fp,
                         quant::QuantMethod &method, const std::string &methodName,
                         const quant::QuantScheme &scheme, const quant::CalibrationSet &calibration,
                         const std::map<std::string, nlohmann::json> &quick,
                         WeightArena *arena = nullptr) {
  std::map<std::string, at::Tensor> copy;
  for (const auto &[name, t] : fp)
    copy[name] = t.clone();
  QuickRun out;
  out.model = std::make_unique<DecoderModel>(config, ModelWeights::fromHfTensors(config, copy));
  const auto it = quick.find(methodName);
  quant::MethodContext ctx{*out.model,
                           scheme,
                           calibration,
                           quant::mergeHyperparameters(
                               method, it == quick.end() ? nlohmann::json::object() : it->second),
                           5,
                           nullptr,
                           nullptr,
                           ""};
  ctx.spectra = false;
  ctx.arena = arena;
  out.report = method.run(ctx);
  return out;
}

} // namespace lrq::test
