// Conventions: see learned_rounding.h.
#include "core/quant/learned_rounding.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <set>

#include "core/common/error.h"
#include "core/quant/rtn.h"

namespace lrq::quant {

namespace {

uint64_t mixSeed(uint64_t seed, int64_t block, const std::string &role) {
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : role) {
    h ^= c;
    h *= 1099511628211ull;
  }
  h ^= uint64_t(block) + 0x632BE59BD9B4E019ull;
  h *= 1099511628211ull;
  return h;
}

std::string where(int64_t block, const std::string &layer) {
  return block >= 0 ? "block " + std::to_string(block) + " " + layer : layer;
}

} // namespace

LearnedRoundingLayer::LearnedRoundingLayer(const at::Tensor &weight, const GridSpec &spec)
    : spec_(spec) {
  at::NoGradGuard noGrad;
  w_ = weight.detach().to(at::kFloat).contiguous();
  const GridParams p = computeGridParams(w_, spec_);
  step0_ = p.scale;
  zero_ = expandToWeight(p.zeroPoint, spec_, w_.size(1)).contiguous();
  logStep_ = at::zeros_like(step0_).requires_grad_(true);
}

std::vector<std::pair<std::string, at::Tensor>> LearnedRoundingLayer::parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> all{{"log_s1", logStep_}};
  for (auto &entry : exponentParameters())
    all.push_back(std::move(entry));
  return all;
}

at::Tensor LearnedRoundingLayer::weight() const {
  const at::Tensor s1 = expandToWeight(step0_ * at::exp(logStep_), spec_, w_.size(1));
  const at::Tensor e = exponent();
  const at::Tensor divisor = e.defined() ? s1 * at::exp(e) : s1;
  const at::Tensor q =
      (roundSte(w_ / divisor) + zero_).clamp(double(spec_.qmin()), double(spec_.qmax()));
  return (q - zero_) * s1;
}

int64_t defaultLrqRank(int64_t rows, int64_t cols) {
  return std::max<int64_t>(1, std::min(rows, cols) / 4);
}

nlohmann::json reconstructionDefaults(double lr) {
  return {{"iters", 200}, {"lr", lr}, {"batch_size", 2}, {"cache_mb", 2048}, {"resume", false}};
}

MethodReport runReconstructionMethod(MethodContext &ctx, const std::string &methodName,
                                     const LayerMaker &makeLayer) {
  const QuantScheme &scheme = ctx.scheme;
  scheme.validate();
  DecoderModel &model = ctx.model;
  const ModelConfig &config = model.config();
  ModelWeights &weights = model.weights();
  const LayerSelection &sel = scheme.layers;
  const int64_t blockCount = model.numBlocks();
  if (!ctx.calibration.tokens.defined())
    throw Error(methodName + ": needs calibration data");

  // Everything that can be checked is checked before any work.
  for (int64_t b : sel.blocks)
    if (b >= blockCount)
      throw Error("scheme selects block " + std::to_string(b) + " but the model has " +
                  std::to_string(blockCount) + " blocks");
  if (blockCount > 0) {
    std::set<std::string> roles;
    for (const auto &entry : blockLinears(config, weights.blocks.front()))
      roles.insert(entry.first);
    for (const std::string &name : sel.linears)
      if (!roles.count(name))
        throw Error("scheme selects linear " + name + ", which this model's blocks do not have");
  }
  for (int64_t b = 0; b < blockCount; ++b) {
    if (!sel.selectsBlock(b))
      continue;
    for (const auto &[role, linear] : blockLinears(config, weights.blocks[size_t(b)])) {
      if (!sel.selectsLinear(role) || !linear->weight.defined())
        continue;
      try {
        checkWeightForGrid(linear->weight, scheme.weight);
      } catch (const Error &e) {
        throw Error(where(b, role) + ": " + e.what());
      }
    }
  }

  const nlohmann::json &hyper = ctx.hyper;
  recon::ReconOptions options;
  options.iters = hyper.at("iters").get<int64_t>();
  options.lr = hyper.at("lr").get<double>();
  options.batchSize = hyper.at("batch_size").get<int64_t>();
  options.cacheMb = hyper.at("cache_mb").get<int64_t>();
  options.resume = hyper.at("resume").get<bool>();
  options.seed = ctx.seed;
  options.blocks = sel.blocks;
  options.workDir = ctx.workDir;
  options.observer = ctx.observer;
  options.cancel = ctx.cancel;
  nlohmann::json identity = hyper;
  identity.erase("resume");
  identity.erase("cache_mb");
  options.fingerprint = methodName + "|" + identity.dump() + "|" + scheme.toJson();

  MethodReport report;
  nlohmann::json blocksJson = nlohmann::json::array();
  int64_t totalParams = 0;
  recon::LayerFactory factory =
      [&](int64_t block, const std::string &role,
          const at::Tensor &weight) -> std::unique_ptr<recon::LearnableLayer> {
    if (!sel.selectsBlock(block) || !sel.selectsLinear(role))
      return nullptr;
    return makeLayer(weight, scheme.weight, mixSeed(ctx.seed, block, role));
  };
  auto onBlock = [&](const recon::BlockOutcome &o) {
    int64_t blockParams = 0;
    for (const recon::LayerOutcome &l : o.layers) {
      LayerErrorStats s = weightErrorStats(l.fpWeight, l.weight);
      s.block = o.block;
      s.layer = l.role;
      report.layers.push_back({s, l.learnableParams});
      blockParams += l.learnableParams;
    }
    totalParams += blockParams;
    blocksJson.push_back({{"block", o.block},
                          {"initial_loss", o.initialLoss},
                          {"final_loss", o.finalLoss},
                          {"seconds", o.seconds},
                          {"learnable_params", blockParams}});
  };

  int64_t lastBlock = blockCount - 1;
  if (!sel.blocks.empty())
    lastBlock = *std::max_element(sel.blocks.begin(), sel.blocks.end());
  if (ctx.observer)
    ctx.observer->started(methodName, lastBlock + 1);
  recon::BlockReconstructor reconstructor(model, ctx.calibration.tokens, options);
  const recon::ReconSummary summary = reconstructor.run(factory, onBlock);

  // Embeddings and LM head, when the scheme asks: round-to-nearest (the
  // reconstruction keeps them full precision, as the reference does).
  at::NoGradGuard noGrad;
  const bool tied = weights.lmHead.defined() && weights.tokenEmbedding.defined() &&
                    weights.lmHead.is_same(weights.tokenEmbedding);
  auto rtn = [&](at::Tensor &t, const std::string &name) {
    try {
      checkWeightForGrid(t, scheme.weight);
    } catch (const Error &e) {
      throw Error(name + ": " + e.what());
    }
    const at::Tensor original = t.to(at::kFloat);
    const at::Tensor quantized = roundToNearest(original, scheme.weight).contiguous();
    LayerErrorStats s = weightErrorStats(original, quantized);
    s.layer = name;
    report.layers.push_back({s, 0});
    t = quantized;
  };
  if (sel.embeddings && weights.tokenEmbedding.defined()) {
    rtn(weights.tokenEmbedding, "embeddings");
    if (tied && sel.lmHead)
      weights.lmHead = weights.tokenEmbedding;
  }
  if (sel.lmHead && weights.lmHead.defined() && !(tied && sel.embeddings))
    rtn(weights.lmHead, "lm_head");

  double trainSeconds = 0;
  int64_t iterations = 0;
  for (const recon::BlockOutcome &o : summary.blocks)
    if (!o.restored) {
      trainSeconds += o.trainSeconds;
      iterations += o.iterations;
    }
  report.extra["blocks"] = blocksJson;
  report.extra["learnable_params"] = totalParams;
  report.extra["samples"] = summary.samples;
  report.extra["seq_len"] = summary.seqLen;
  report.extra["spilled_samples"] = summary.spilledSamples;
  report.extra["resumed_blocks"] = summary.resumedBlocks;
  if (iterations > 0)
    report.extra["seconds_per_iteration"] = trainSeconds / double(iterations);
  if (ctx.observer) {
    if (iterations > 0)
      ctx.observer->metric("seconds_per_iteration", trainSeconds / double(iterations));
    ctx.observer->finished();
  }
  return report;
}

} // namespace lrq::quant
