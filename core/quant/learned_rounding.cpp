// Conventions: see learned_rounding.h.
#include "core/quant/learned_rounding.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "core/analysis/tensor_analysis.h"
#include "core/common/error.h"
#include "core/quant/embedding_rounding.h"
#include "core/quant/rtn.h"
#include "core/recon/elementwise_kernels.h"

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

// Ŵ = s (clamp(round(W / (s · e^E)) + z, qmin, qmax) − z) in one pass over
// float32 CPU tensors: W and E [out, in], s and z [rows, groups] as grid.h lays
// them out. The forward takes e^E from at::exp and then does the tensor path's
// float operations in its order (s · e^E, W / that, round, + z, clamp, − z, · s),
// so Ŵ is the same bits. The backward is the straight-through gradient in closed
// form: with t = W / (s · e^E) and inside = (round(t) + z within [qmin, qmax]),
//   dŴ/dE = −inside · s · t,   dŴ/ds = (q − z) − inside · t,
// summed over each unit for s (in double). It recomputes t from the saved e^E
// instead of keeping autograd's chain of [out, in] intermediates; the results
// agree with autograd's to float rounding.
class ScaledRoundingFunction : public torch::autograd::Function<ScaledRoundingFunction> {
public:
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &w,
                            const at::Tensor &step, const at::Tensor &zero,
                            const at::Tensor &exponent, int64_t granularity, int64_t groupSize,
                            int64_t qmin, int64_t qmax) {
    const at::Tensor scale = at::exp(exponent).contiguous();
    const Loop loop(w, step, zero, scale, granularity, groupSize, qmin, qmax);
    at::Tensor out = at::empty_like(loop.w);
    float *o = out.data_ptr<float>();
    loop.units([&](int64_t, int64_t, int64_t begin, int64_t end, float s, float z) {
      recon::scaledRoundingForward(loop.wp + begin, loop.ep + begin, s, z, loop.lo, loop.hi,
                                   o + begin, end - begin);
    });
    ctx->save_for_backward({loop.w, loop.step, loop.zero, scale});
    ctx->saved_data["granularity"] = granularity;
    ctx->saved_data["group_size"] = groupSize;
    ctx->saved_data["qmin"] = qmin;
    ctx->saved_data["qmax"] = qmax;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list gradOutputs) {
    const std::vector<at::Tensor> saved = ctx->get_saved_variables();
    const Loop loop(saved[0], saved[1], saved[2], saved[3], ctx->saved_data["granularity"].toInt(),
                    ctx->saved_data["group_size"].toInt(), ctx->saved_data["qmin"].toInt(),
                    ctx->saved_data["qmax"].toInt());
    const at::Tensor grad = gradOutputs[0].to(at::kFloat).contiguous();
    const float *g = grad.data_ptr<float>();
    at::Tensor gradExponent = at::empty_like(loop.w);
    float *ge = gradExponent.data_ptr<float>();
    // Per-unit sums of dL/ds; per-tensor grids sum per row here and over rows below.
    const bool perTensor = loop.unit.granularity == Granularity::PerTensor;
    at::Tensor partial =
        at::zeros({perTensor ? loop.w.size(0) : loop.step.size(0), loop.step.size(1)},
                  loop.w.options().dtype(at::kDouble));
    double *pp = partial.data_ptr<double>();
    loop.units([&](int64_t row, int64_t unit, int64_t begin, int64_t end, float s, float z) {
      pp[perTensor ? row : unit] +=
          recon::scaledRoundingBackward(loop.wp + begin, loop.ep + begin, g + begin, s, z, loop.lo,
                                        loop.hi, ge + begin, end - begin);
    });
    at::Tensor gradStep = (perTensor ? partial.sum().view({1, 1}) : partial).to(at::kFloat);
    return {at::Tensor(), gradStep,     at::Tensor(), gradExponent,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }

private:
  // The tensors as float pointers, and the walk over rows in parallel.
  struct Loop {
    at::Tensor w, step, zero, scale;
    const float *wp, *sp, *zp, *ep;
    UnitIndex unit;
    int64_t out, in;
    float lo, hi;
    Loop(const at::Tensor &w_, const at::Tensor &step_, const at::Tensor &zero_,
         const at::Tensor &scale_, int64_t granularity, int64_t groupSize, int64_t qmin,
         int64_t qmax)
        : w(w_.contiguous()), step(step_.contiguous()), zero(zero_.contiguous()),
          scale(scale_.contiguous()), wp(w.data_ptr<float>()), sp(step.data_ptr<float>()),
          zp(zero.data_ptr<float>()),
          ep(scale.data_ptr<float>()), unit{Granularity(granularity), step.size(1), groupSize},
          out(w.size(0)), in(w.size(1)), lo(float(qmin)), hi(float(qmax)) {}
    // f(row, unit, begin, end, s, z) for each run of elements sharing a unit.
    template <typename F> void units(const F &f) const {
      forEachUnitRun(unit, out, in, [&](int64_t r, int64_t u, int64_t begin, int64_t end) {
        f(r, u, begin, end, sp[u], zp[u]);
      });
    }
  };
};

std::atomic<bool> onePassEnabled{true};

// Whether weight() may take ScaledRoundingFunction: float32 CPU tensors, an
// integer zero point (not the offset form) and a full [out, in] exponent.
bool scaledRoundingApplies(const at::Tensor &w, const at::Tensor &step, const at::Tensor &zero,
                           const at::Tensor &exponent, const GridSpec &spec) {
  if (!onePassEnabled.load() || spec.offsetForm() || !exponent.defined() ||
      exponent.sizes() != w.sizes())
    return false;
  for (const at::Tensor *t : {&w, &step, &zero, &exponent})
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat)
      return false;
  return true;
}

} // namespace

bool setLearnedRoundingOnePass(bool enabled) {
  return onePassEnabled.exchange(enabled);
}

LearnedRoundingLayer::LearnedRoundingLayer(const at::Tensor &weight, const GridSpec &spec)
    : spec_(spec) {
  at::NoGradGuard noGrad;
  w_ = weight.detach().to(at::kFloat).contiguous();
  const GridParams p = computeGridParams(w_, spec_);
  step0_ = p.scale;
  zeroParam_ = p.zeroPoint;
  zero_ = expandToWeight(p.zeroPoint, spec_, w_.size(1)).contiguous();
  logStep_ = at::zeros_like(step0_).requires_grad_(true);
}

std::vector<std::pair<std::string, at::Tensor>> LearnedRoundingLayer::parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> all{{"log_s1", logStep_}};
  for (auto &entry : exponentParameters())
    all.push_back(std::move(entry));
  return all;
}

std::vector<std::pair<std::string, at::Tensor>> LearnedRoundingLayer::checkpointExtras() const {
  try {
    GridParams g = grid();
    return {{"grid.scale", g.scale}, {"grid.zero_point", g.zeroPoint}};
  } catch (const Error &) {
    return {};
  }
}

GridParams LearnedRoundingLayer::grid() const {
  at::NoGradGuard noGrad;
  GridParams p;
  p.scale = applyStepFormat((step0_ * at::exp(logStep_)).detach(), spec_).clone();
  p.zeroPoint = spec_.offsetForm()
                    ? applyOffsetFormat((zeroParam_ * at::exp(logStep_)).detach(), spec_).clone()
                    : zeroParam_.clone();
  return p;
}

at::Tensor LearnedRoundingLayer::weight() const {
  // Straight through the step format: training sees the steps the grid will store.
  const at::Tensor step = applyStepFormat(step0_ * at::exp(logStep_), spec_);
  const at::Tensor e = exponent();
  if (scaledRoundingApplies(w_, step, zeroParam_, e, spec_))
    return ScaledRoundingFunction::apply(w_, step, zeroParam_, e, int64_t(spec_.granularity),
                                         spec_.groupSize, spec_.qmin(), spec_.qmax());
  const at::Tensor s1 = expandToWeight(step, spec_, w_.size(1));
  const at::Tensor divisor = e.defined() ? s1 * at::exp(e) : s1;
  if (spec_.offsetForm()) {
    // The offset follows the step (M1 = M0 s1 / s0, as a frozen integer zero
    // point does), straight through its super-block rounding. With E = 0 and
    // δ = 0 the divisor is s0 and M1 is M0 exactly: RTN's codes and values.
    const at::Tensor m1 =
        expandToWeight(applyOffsetFormat(zeroParam_ * at::exp(logStep_), spec_), spec_, w_.size(1));
    const at::Tensor q =
        roundSte((w_ + m1) / divisor).clamp(double(spec_.qmin()), double(spec_.qmax()));
    return dequantizeOffset(q, s1, m1);
  }
  const at::Tensor q =
      (roundSte(w_ / divisor) + zero_).clamp(double(spec_.qmin()), double(spec_.qmax()));
  return (q - zero_) * s1;
}

GridParams recoverLearnedGrid(const at::Tensor &fpWeight, const at::Tensor &quantized,
                              const GridSpec &spec) {
  at::NoGradGuard noGrad;
  const at::Tensor fp = fpWeight.detach().to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor wq = quantized.detach().to(at::kCPU, at::kFloat).contiguous();
  checkWeightForGrid(fp, spec);
  if (wq.sizes() != fp.sizes())
    throw Error("recover grid: the quantized weight's shape differs from the original's");
  // An offset-form grid's offset moved with each learned step through its own
  // super-block rounding: not recoverable from Ŵ by this search. The export
  // then refuses the layer (no grid reported) rather than guess one.
  if (spec.offsetForm())
    return {};
  const GridParams rtn = computeGridParams(fp, spec);
  const int64_t out = fp.size(0), in = fp.size(1);
  // A k-superblock step is not a per-unit rounding: recover each unit's step
  // in float32, then require the steps to be a super-block grid as they are.
  const bool superBlocks = spec.stepFormat == StepFormat::KSuperblock;
  GridSpec candidateSpec = spec;
  if (superBlocks)
    candidateSpec.stepFormat = StepFormat::Float32;
  // Units as [units, elements] chunks with their s0 and z as [units, 1].
  struct Chunk {
    at::Tensor w, s0, z;
  };
  std::vector<Chunk> chunks;
  if (spec.granularity == Granularity::PerTensor) {
    chunks.push_back({wq.reshape({1, out * in}), rtn.scale, rtn.zeroPoint});
  } else if (spec.granularity == Granularity::PerChannel) {
    chunks.push_back({wq, rtn.scale, rtn.zeroPoint});
  } else {
    for (int64_t g = 0; g * spec.groupSize < in; ++g)
      chunks.push_back(
          {wq.narrow(1, g * spec.groupSize, std::min(spec.groupSize, in - g * spec.groupSize)),
           rtn.scale.narrow(1, g, 1), rtn.zeroPoint.narrow(1, g, 1)});
  }
  const double qmin = double(spec.qmin()), qmax = double(spec.qmax());
  std::vector<at::Tensor> scales;
  for (const Chunk &c : chunks) {
    // |Ŵ|'s largest element is s1 |k| for an integer 1 <= |k| <= n - 1: try
    // every k, keep the step that reproduces the whole unit and lies closest
    // to s0 (an all-zero unit keeps s0).
    const at::Tensor peak = c.w.abs().amax(1, true);
    at::Tensor best = c.s0.clone();
    at::Tensor bestDistance = at::full_like(c.s0, std::numeric_limits<float>::infinity());
    bestDistance.masked_fill_(peak == 0, 0.0);
    for (int64_t k = 1; k < spec.levels(); ++k) {
      // s1 k rounded, divided by k and rounded: within two ulps of s1.
      at::Tensor down = peak / double(k), up = down.clone();
      for (int nudge = 0; nudge <= 2; ++nudge) {
        for (const at::Tensor &s :
             nudge == 0 ? std::vector<at::Tensor>{down} : std::vector<at::Tensor>{down, up}) {
          // In the step format: s1 itself is one of the candidates (peak / k
          // is s1 exactly when s1 k is), and no other step may be packed.
          const at::Tensor safe = applyStepFormat(
              at::where(s > 0, s, c.s0).clamp_max(largestStep(candidateSpec)), candidateSpec);
          const at::Tensor codes = (at::round(c.w / safe) + c.z).clamp(qmin, qmax);
          const at::Tensor fits = ((codes - c.z) * safe).eq(c.w).all(1, true);
          const at::Tensor distance = (safe / c.s0).log().abs();
          const at::Tensor better = fits.logical_and(s > 0).logical_and(distance < bestDistance);
          best = at::where(better, safe, best);
          bestDistance = at::where(better, distance, bestDistance);
        }
        down = at::nextafter(down, at::zeros_like(down));
        up = at::nextafter(up, at::full_like(up, std::numeric_limits<float>::infinity()));
      }
    }
    if (!at::isfinite(bestDistance).all().item<bool>())
      return {}; // some unit is on no grid with this zero point
    scales.push_back(best);
  }
  GridParams p;
  p.zeroPoint = rtn.zeroPoint;
  if (spec.granularity == Granularity::PerGroup)
    p.scale = at::cat(scales, 1).contiguous();
  else
    p.scale = scales.front().reshape(rtn.scale.sizes()).contiguous();
  if (superBlocks && !at::equal(applyStepFormat(p.scale, spec), p.scale))
    return {}; // steps that reproduce Ŵ, but not as d sc
  return p;
}

int64_t defaultLrqRank(int64_t rows, int64_t cols) {
  return std::max<int64_t>(1, std::min(rows, cols) / 4);
}

std::vector<HyperparameterSpec> reconstructionHyperparameters(double lr) {
  return {
      {"iters", ValueType::Integer, int64_t(200), 1, 1e7, "Adam iterations per block"},
      {"lr", ValueType::Number, lr, 1e-8, 1.0, "Adam learning rate (cosine decay to 0)"},
      {"batch_size", ValueType::Integer, int64_t(2), 1, 4096, "calibration windows per iteration"},
      {"cache_mb", ValueType::Integer, int64_t(-1), -1, 1 << 24,
       "MiB of block inputs and targets kept in memory, the rest spilled to the work folder "
       "(read back from the page cache); -1 = spill them all when the run has a work folder, "
       "else keep them all"},
  };
}

bool isReferenceSetting(const QuantScheme &scheme, int bits, bool a8) {
  const GridSpec &g = scheme.weight;
  const bool activationsMatch =
      a8 ? scheme.activation.mode != ActivationMode::None && scheme.activation.bits == 8
         : scheme.activation.mode == ActivationMode::None;
  return g.bits == bits && !g.symmetric && g.granularity == Granularity::PerChannel &&
         activationsMatch;
}

MethodReport runReconstructionMethod(MethodContext &ctx, const QuantMethod &method,
                                     const LayerMaker &makeLayer) {
  const std::string methodName = method.name();
  // The job resolves "auto" before recording; callers that run a method
  // directly get the same reference grid.
  const QuantScheme scheme = resolveReferenceGrid(method, ctx.scheme);
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
        checkWeightForGrid(linear->weight, scheme.weightFor(linear->weight.size(1)));
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
  options.resume = hyper.value("resume", false);
  options.seed = ctx.seed;
  options.blocks = sel.blocks;
  options.workDir = ctx.workDir;
  options.keepCheckpoint = ctx.keepCheckpoint;
  options.observer = ctx.observer;
  options.cancel = ctx.cancel;
  options.arena = ctx.arena;
  nlohmann::json identity = hyper;
  identity.erase("resume");
  identity.erase("cache_mb");
  options.fingerprint = methodName + "|" + identity.dump() + "|" + scheme.toJson();

  MethodReport report;
  nlohmann::json blocksJson = nlohmann::json::array();
  int64_t totalParams = 0;
  // The current block's layers (alive until its onBlock returns): their grids.
  std::map<std::string, const LearnedRoundingLayer *> live;
  recon::LayerFactory factory =
      [&](int64_t block, const std::string &role,
          const at::Tensor &weight) -> std::unique_ptr<recon::LearnableLayer> {
    if (!sel.selectsBlock(block) || !sel.selectsLinear(role))
      return nullptr;
    std::unique_ptr<LearnedRoundingLayer> layer;
    try { // a step its step format cannot store is refused here
      layer = makeLayer(weight, scheme.weightFor(weight.size(1)), mixSeed(ctx.seed, block, role));
    } catch (const Error &e) {
      throw Error(where(block, role) + ": " + e.what());
    }
    live[role] = layer.get();
    return layer;
  };
  auto onBlock = [&](const recon::BlockOutcome &o) {
    int64_t blockParams = 0;
    for (const recon::LayerOutcome &l : o.layers) {
      LayerErrorStats s = weightErrorStats(l.fpWeight, l.weight);
      s.block = o.block;
      s.layer = l.role;
      report.layers.push_back({s, l.learnableParams});
      reportLayer(ctx.observer, s);
      blockParams += l.learnableParams;
      const auto it = live.find(l.role);
      if (!o.restored && it != live.end()) {
        try { // the learned steps in the step format
          report.grids[gridKey(config, o.block, l.role)] = it->second->grid();
        } catch (const Error &e) {
          throw Error(methodName + ": " + where(o.block, l.role) + ": " + e.what());
        }
      } else if (o.restored) {
        // Restored from a checkpoint: no layer to ask. The grid it saved, or for
        // checkpoints written without one, the steps searched back from Ŵ.
        GridParams g;
        for (const auto &[name, t] : l.extras) {
          if (name == "grid.scale")
            g.scale = t;
          else if (name == "grid.zero_point")
            g.zeroPoint = t;
        }
        if (!g.scale.defined() || !g.zeroPoint.defined())
          g = recoverLearnedGrid(l.fpWeight, l.weight, scheme.weightFor(l.fpWeight.size(1)));
        if (g.scale.defined())
          report.grids[gridKey(config, o.block, l.role)] = std::move(g);
      }
      if (ctx.spectra && !o.restored && it != live.end()) {
        const at::Tensor exponent = it->second->scaleExponentMatrix();
        if (exponent.defined())
          report.layers.back().spectra.emplace_back("scale_exponent",
                                                    analysis::gramSingularValues(exponent).values);
      }
    }
    live.clear();
    totalParams += blockParams;
    nlohmann::json blockJson = {{"block", o.block},
                                {"initial_loss", o.initialLoss},
                                {"final_loss", o.finalLoss},
                                {"seconds", o.seconds},
                                {"learnable_params", blockParams}};
    if (o.heldoutInitialLoss && o.heldoutFinalLoss) {
      blockJson["heldout_initial_loss"] = *o.heldoutInitialLoss;
      blockJson["heldout_final_loss"] = *o.heldoutFinalLoss;
    }
    blocksJson.push_back(std::move(blockJson));
  };

  int64_t lastBlock = blockCount - 1;
  if (!sel.blocks.empty())
    lastBlock = *std::max_element(sel.blocks.begin(), sel.blocks.end());
  if (ctx.observer)
    ctx.observer->started(methodName, lastBlock + 1);
  recon::BlockReconstructor reconstructor(model, ctx.calibration.tokens, options,
                                          ctx.calibration.heldoutTokens);
  const recon::ReconSummary summary = reconstructor.run(factory, onBlock);

  // Embeddings and LM head, when the scheme asks: round-to-nearest (the
  // reconstruction keeps them full precision, as the reference does).
  roundEmbeddingsAndHead(ctx, report);

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
  report.extra["heldout_samples"] = summary.heldoutSamples;
  if (iterations > 0)
    report.extra["seconds_per_iteration"] = trainSeconds / double(iterations);
  // Final losses averaged over the blocks that were quantized: training set
  // and held-out samples side by side (their ratio shows overfitting).
  double trainSum = 0, heldoutSum = 0;
  int64_t trainBlocks = 0, heldoutBlocks = 0;
  for (const recon::BlockOutcome &o : summary.blocks) {
    if (o.layers.empty())
      continue;
    trainSum += o.finalLoss;
    ++trainBlocks;
    if (o.heldoutFinalLoss) {
      heldoutSum += *o.heldoutFinalLoss;
      ++heldoutBlocks;
    }
  }
  std::map<std::string, double> lossMetrics;
  if (trainBlocks > 0)
    lossMetrics["recon_train_loss_mean"] = trainSum / double(trainBlocks);
  // Only when every quantized block has one: a mean over some blocks would
  // not compare with the training mean.
  if (heldoutBlocks > 0 && heldoutBlocks == trainBlocks)
    lossMetrics["recon_heldout_loss_mean"] = heldoutSum / double(heldoutBlocks);
  for (const auto &[name, value] : lossMetrics)
    report.extra[name] = value;
  if (ctx.observer) {
    for (const auto &[name, value] : lossMetrics)
      ctx.observer->metric(name, value);
    if (iterations > 0)
      ctx.observer->metric("seconds_per_iteration", trainSeconds / double(iterations));
    ctx.observer->finished();
  }
  return report;
}

} // namespace lrq::quant
