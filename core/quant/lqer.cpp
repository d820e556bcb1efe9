// LQER and L²QER as methods (arXiv 2402.02446, Zhang et al., "LQER: Low-Rank
// Quantization Error Reconstruction for LLMs"): round-to-nearest weights plus a
// rank-k correction of the quantization error found by SVD, plain (s = 1) or
// weighted by calibration activation magnitudes (L²QER). Nothing is trained.
#include "core/quant/lqer.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/quant/activation_stats.h"
#include "core/quant/embedding_rounding.h"
#include "core/quant/grid.h"
#include "core/quant/method.h"

namespace lrq::quant {

at::Tensor fakeQuantizeFactorColumns(const at::Tensor &m, int bits) {
  GridSpec spec;
  spec.bits = bits;
  spec.symmetric = true;
  spec.granularity = Granularity::PerChannel;
  spec.init = StepInit::MinMax;
  // The grid works on rows of [out, in]: a column of m is a row of mᵀ.
  const at::Tensor t = m.t().to(at::kFloat).contiguous();
  return roundToNearest(t, spec).t().to(m.scalar_type()).contiguous();
}

LqerFactors lqerFactorize(const at::Tensor &error, const at::Tensor &scale, int64_t rank,
                          int factorBits) {
  if (!error.defined() || error.dim() != 2 || error.numel() == 0)
    throw Error("LQER: the quantization error must be a non-empty [out, in] matrix");
  const int64_t out = error.size(0), in = error.size(1);
  if (rank < 1)
    throw Error("LQER: rank must be at least 1, got " + std::to_string(rank));
  if (factorBits != 0 && (factorBits < 2 || factorBits > 8))
    throw Error("LQER: factor_bits must be 0 (full precision) or 2..8, got " +
                std::to_string(factorBits));
  at::NoGradGuard noGrad;
  const bool cuda = error.is_cuda();
  const at::ScalarType type = cuda ? at::kFloat : at::kDouble;
  const at::Tensor et = error.detach().to(type).t(); // [in, out]
  at::Tensor s;
  if (scale.defined()) {
    if (scale.dim() != 1 || scale.size(0) != in)
      throw Error("LQER: activation scale has " + std::to_string(scale.numel()) +
                  " entries for a weight with " + std::to_string(in) + " input channels");
    s = scale.detach().to(error.device(), type);
    if (!(s.min().item<double>() > 0.0))
      throw Error("LQER: activation scale must be positive");
  }
  const at::Tensor m = s.defined() ? et * s.unsqueeze(1) : et;
  at::Tensor u, sigma, vh;
  std::tie(u, sigma, vh) = at::linalg_svd(m, false);
  LqerFactors f;
  f.rank = std::min<int64_t>(rank, std::min(in, out));
  f.singularValues = sigma.to(at::kCPU, at::kDouble);
  const at::Tensor uk = u.slice(1, 0, f.rank);
  f.a = (s.defined() ? uk / s.unsqueeze(1) : uk).contiguous();
  f.b = (sigma.slice(0, 0, f.rank).unsqueeze(1) * vh.slice(0, 0, f.rank)).contiguous();
  if (factorBits != 0) {
    f.a = fakeQuantizeFactorColumns(f.a, factorBits);
    f.b = fakeQuantizeFactorColumns(f.b, factorBits);
  }
  return f;
}

namespace {

struct Target {
  int64_t block;
  std::string layer;
  Linear *linear;
};

double squaredNorm(const at::Tensor &t) {
  return t.to(at::kDouble).pow(2).sum().item<double>();
}

class LqerMethod : public QuantMethod {
public:
  explicit LqerMethod(bool activationScaled) : scaled_(activationScaled) {}

  std::string name() const override { return scaled_ ? "l2qer" : "lqer"; }
  std::string help() const override {
    if (scaled_)
      return "L²QER (Zhang et al., arXiv 2402.02446): weights rounded to nearest, plus a rank-k "
             "correction (x A) B of the quantization error E = W - Q(W) from the SVD of "
             "diag(s) Eᵀ, where s is each input channel's mean |x| on the calibration set "
             "(max over batches, normalised). Learns nothing by training; the factors cost "
             "k (in + out) parameters per linear, kept full precision or 8-bit (factor_bits).";
    return "LQER (Zhang et al., arXiv 2402.02446): weights rounded to nearest, plus a rank-k "
           "correction (x A) B = the truncated SVD of the quantization error E = W - Q(W) "
           "(s = 1, no calibration needed). Learns nothing by training; the factors cost "
           "k (in + out) parameters per linear, kept full precision or 8-bit (factor_bits).";
  }
  std::string title() const override {
    return scaled_ ? "L²QER: activation-scaled low-rank error correction"
                   : "LQER: low-rank error correction by SVD";
  }
  std::vector<HyperparameterSpec> hyperparameters() const override {
    std::vector<HyperparameterSpec> h = {
        {"rank", ValueType::Integer, int64_t(32), 1, 1 << 20, "rank k of the correction A·B"},
        {"factor_bits", ValueType::Integer, int64_t(8), 0, 8,
         "bits of the factors A and B: 8 as in the paper (one step per column), 2..7 "
         "smaller still, 0 = full precision (16-bit storage)"}};
    if (scaled_)
      h.push_back({"batch_size", ValueType::Integer, int64_t(4), 1, 4096,
                   "calibration windows per statistics batch"});
    return h;
  }
  bool needsCalibration() const override { return scaled_; }

  MethodReport run(MethodContext &ctx) override {
    const QuantScheme &scheme = ctx.scheme;
    scheme.validate();
    const int64_t rank = ctx.hyper.value("rank", int64_t(32));
    const int factorBits = ctx.hyper.value("factor_bits", 0);
    const int64_t batchSize = ctx.hyper.value("batch_size", int64_t(4));
    if (rank < 1)
      throw Error(name() + ": rank must be at least 1, got " + std::to_string(rank));
    if (factorBits != 0 && (factorBits < 2 || factorBits > 8))
      throw Error(name() + ": factor_bits must be 0 (full precision) or 2..8, got " +
                  std::to_string(factorBits));

    ModelWeights &weights = ctx.model.weights();
    const ModelConfig &config = ctx.model.config();
    const LayerSelection &sel = scheme.layers;
    const int64_t blockCount = int64_t(weights.blocks.size());
    for (int64_t b : sel.blocks)
      if (b < 0 || b >= blockCount)
        throw Error("scheme selects block " + std::to_string(b) + " but the model has " +
                    std::to_string(blockCount) + " blocks");
    std::vector<Target> targets;
    std::set<std::string> roles;
    for (int64_t b = 0; b < blockCount; ++b) {
      for (auto &[role, linear] : blockLinears(config, weights.blocks[size_t(b)])) {
        roles.insert(role);
        if (sel.selectsBlock(b) && sel.selectsLinear(role) && linear->weight.defined())
          targets.push_back({b, role, linear});
      }
    }
    for (const std::string &role : sel.linears)
      if (!roles.count(role))
        throw Error("scheme selects linear " + role + ", which this model's blocks do not have");
    // Check every grid before touching anything.
    for (const Target &t : targets) {
      try {
        checkWeightForGrid(t.linear->weight, scheme.weightFor(t.linear->weight.size(1)));
      } catch (const Error &e) {
        throw Error("block " + std::to_string(t.block) + " " + t.layer + ": " + e.what());
      }
    }
    if (sel.embeddings && weights.tokenEmbedding.defined())
      checkWeightForGrid(weights.tokenEmbedding, scheme.weightFor(weights.tokenEmbedding.size(-1)));
    if (sel.lmHead && weights.lmHead.defined())
      checkWeightForGrid(weights.lmHead, scheme.weightFor(weights.lmHead.size(-1)));

    using Clock = std::chrono::steady_clock;
    MethodReport report;
    nlohmann::json layersJson = nlohmann::json::array();
    nlohmann::json blocksJson = nlohmann::json::array();

    // L²QER: statistics of the model as given (full precision), before any change.
    std::vector<LinearActivationStats> stats;
    double statsSeconds = 0.0;
    if (scaled_) {
      const auto t0 = Clock::now();
      stats = collectActivationStats(ctx.model, ctx.calibration, sel, batchSize, ctx.observer,
                                     ctx.cancel);
      statsSeconds = std::chrono::duration<double>(Clock::now() - t0).count();
      if (stats.size() != targets.size())
        throw Error(name() + ": activation statistics do not cover the selected linears");
    }

    at::NoGradGuard noGrad;
    if (ctx.observer)
      ctx.observer->started(name(), int64_t(targets.size())); // progress counts linears
    int64_t factorParams = 0;
    size_t i = 0;
    while (i < targets.size()) {
      const int64_t block = targets[i].block;
      const auto blockStart = Clock::now();
      if (ctx.observer)
        ctx.observer->blockStarted(int(block), int(blockCount));
      double initialLoss = 0.0, finalLoss = 0.0;
      for (; i < targets.size() && targets[i].block == block; ++i) {
        if (ctx.cancel)
          ctx.cancel->throwIfCancelled();
        const Target &t = targets[i];
        Linear &linear = *t.linear;
        const at::ScalarType dtype = linear.weight.scalar_type();
        const at::Tensor w = linear.weight.detach().to(at::kFloat);
        GridParams grid;
        try { // a step its step format cannot store is refused here
          grid = computeGridParams(w, scheme.weightFor(w.size(1)));
        } catch (const Error &e) {
          throw Error(name() + ": block " + std::to_string(t.block) + " " + t.layer + ": " +
                      e.what());
        }
        const at::Tensor q = fakeQuantizeWeight(w, grid, scheme.weightFor(w.size(1)));
        report.grids[gridKey(ctx.model.config(), t.block, t.layer)] = grid;
        const at::Tensor e = w - q;
        if (scaled_ && (stats[i].block != t.block || stats[i].layer != t.layer))
          throw Error(name() + ": activation statistics out of order at block " +
                      std::to_string(t.block) + " " + t.layer);
        const at::Tensor s = scaled_ ? stats[i].scale : at::Tensor();
        const LqerFactors f = lqerFactorize(e, s, rank, factorBits);
        const at::Tensor ab = at::mm(f.a, f.b); // [in, out], compute precision
        const at::Tensor residual = e.to(ab.scalar_type()).t() - ab;
        const at::Tensor sDev = s.defined() ? s.to(ab.device(), ab.scalar_type()) : at::Tensor();
        const double scaledBefore =
            squaredNorm(sDev.defined() ? e.to(ab.scalar_type()).t() * sDev.unsqueeze(1)
                                       : e.to(ab.scalar_type()));
        const double scaledAfter =
            squaredNorm(sDev.defined() ? residual * sDev.unsqueeze(1) : residual);
        initialLoss += scaledBefore;
        finalLoss += scaledAfter;

        const at::Tensor effective = q + ab.t().to(at::kFloat);
        LayerErrorStats es = weightErrorStats(w, effective);
        es.block = t.block;
        es.layer = t.layer;
        const LayerErrorStats rtn = weightErrorStats(w, q);
        report.layers.push_back({es, 0});
        reportLayer(ctx.observer, es);
        if (ctx.spectra) {
          const at::Tensor sv = f.singularValues.contiguous();
          report.layers.back().spectra.emplace_back(
              "scaled_E",
              std::vector<double>(sv.data_ptr<double>(), sv.data_ptr<double>() + sv.numel()));
        }

        const int64_t params = f.a.numel() + f.b.numel();
        factorParams += params;
        nlohmann::json lj = {{"block", t.block},
                             {"layer", t.layer},
                             {"rank", f.rank},
                             {"factor_params", params},
                             {"rtn_sqnr_db", rtn.sqnrDb},
                             {"sqnr_db", es.sqnrDb},
                             {"error_fro", std::sqrt(squaredNorm(residual))},
                             {"rtn_error_fro", std::sqrt(squaredNorm(e))},
                             {"scaled_error_fro", std::sqrt(scaledAfter)},
                             {"rtn_scaled_error_fro", std::sqrt(scaledBefore)}};
        if (scaled_) {
          lj["act_stat_min"] = stats[i].batchMax.min().item<double>();
          lj["act_stat_max"] = stats[i].batchMax.max().item<double>();
        }
        layersJson.push_back(lj);

        linear.weight = placeWeight(ctx.arena, q.to(dtype).contiguous());
        linear.lowRankA = f.a.to(linear.weight.device(), dtype).contiguous();
        linear.lowRankB = f.b.to(linear.weight.device(), dtype).contiguous();
        if (ctx.observer)
          ctx.observer->progress(int64_t(i + 1), int64_t(targets.size()),
                                 "block " + std::to_string(t.block) + " " + t.layer);
      }
      const double seconds = std::chrono::duration<double>(Clock::now() - blockStart).count();
      blocksJson.push_back({{"block", block},
                            {"seconds", seconds},
                            {"scaled_error_before", initialLoss},
                            {"scaled_error_after", finalLoss}});
      if (ctx.observer)
        ctx.observer->blockFinished(int(block), initialLoss, finalLoss, seconds);
    }

    // Embeddings / LM head, when the scheme asks: plain round-to-nearest.
    roundEmbeddingsAndHead(ctx, report);

    report.extra = {{"rank", rank},
                    {"factor_bits", factorBits},
                    {"activation_scaled", scaled_},
                    {"factor_params", factorParams},
                    {"layers", layersJson},
                    {"blocks", blocksJson}};
    if (scaled_) {
      report.extra["batch_size"] = batchSize;
      report.extra["stats_seconds"] = statsSeconds;
      report.extra["calibration_windows"] = ctx.calibration.tokens.size(0);
    }
    if (ctx.observer) {
      ctx.observer->metric(name() + ".factor_params", double(factorParams));
      ctx.observer->finished();
    }
    return report;
  }

private:
  bool scaled_;
};

} // namespace

std::unique_ptr<QuantMethod> makeLqerMethod() {
  return std::make_unique<LqerMethod>(false);
}
std::unique_ptr<QuantMethod> makeL2qerMethod() {
  return std::make_unique<LqerMethod>(true);
}

} // namespace lrq::quant
