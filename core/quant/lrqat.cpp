// LR-QAT (Bondarenko, Del Chiaro, Nagel, arXiv 2406.06385; ALGORITHMS.md
// "LR-QAT"): low-rank adapters A B on the frozen, downcast integer-grid weights
// Φ0 of every selected linear, trained together with the steps s by next-token
// cross-entropy through the whole model, then merged into plain integer codes.
// Per-layer math in lrqat_layer.h.
//
// Memory and speed: every selected linear computes y = x Ŵᵀ through a custom
// autograd function (LrqatLinearFunction). Its forward derives Ŵ from Φ0, A, B
// and s without a graph (one fused pass, lrqatForward), multiplies, and keeps
// only x; its backward derives Ŵ and the codes again from the same state, gives
// dL/dx, and turns dL/dŴ into the straight-through gradients of A, B and s in
// closed form (lrqatBackward, checked against autograd in the tests). No Ŵ,
// codes or dL/dŴ outlive one layer's forward or backward: the resident extra is
// Φ0 (int8), A, B, s with their AdamW moments, and the activations of one
// batch. The price is computing Ŵ twice per step.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/common/memory.h"
#include "core/quant/activation_install.h"
#include "core/quant/block_checkpoint.h"
#include "core/quant/grid.h"
#include "core/quant/lrqat_layer.h"
#include "core/quant/method.h"

namespace lrq::quant {
namespace {

struct Target {
  int64_t block;
  std::string role;
  Linear *linear;
  at::Tensor original; // W0, restored if the run fails or is cancelled; undefined while stashed
  WeightStash *stash = nullptr; // holds W0 while the steps run, when set
  at::ScalarType dtype = at::kFloat;
  int64_t slotElements = 0; // WeightArena::slotElements(W0)

  // W0, from memory or from the stash.
  at::Tensor w0() const { return original.defined() ? original : stash->bringBack(block, role); }
};

std::string where(const Target &t) {
  return "block " + std::to_string(t.block) + " " + t.role;
}

// AdamW with decoupled weight decay (Loshchilov & Hutter), one tensor.
struct AdamState {
  at::Tensor m, v;
};

void adamwStep(at::Tensor &param, const at::Tensor &g, AdamState &st, double lr, double beta1,
               double beta2, double eps, double weightDecay, int64_t t) {
  at::NoGradGuard noGrad;
  if (!st.m.defined()) {
    st.m = at::zeros_like(param);
    st.v = at::zeros_like(param);
  }
  if (weightDecay != 0.0)
    param.mul_(1.0 - lr * weightDecay);
  st.m.mul_(beta1).add_(g, 1.0 - beta1);
  st.v.mul_(beta2).addcmul_(g, g, 1.0 - beta2);
  const double c1 = 1.0 - std::pow(beta1, double(t));
  const double c2 = 1.0 - std::pow(beta2, double(t));
  const at::Tensor denom = (st.v / c2).sqrt_().add_(eps);
  param.addcdiv_(st.m, denom, -lr / c1);
}

bool allFinite(const at::Tensor &t) {
  return at::isfinite(t).all().item<bool>();
}

std::string fmt(const char *format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

// The activation quantizers of training (ALGORITHMS.md: "activation
// quantization on during training for A8 schemes"): every trained linear's
// input per token on the scheme's activation bits, dynamic with the
// straight-through round (a per-tensor static scheme trains with per-token
// steps: its static steps are calibrated after training, on the trained
// weights), and with KV8 the k_proj / v_proj outputs of the selected blocks,
// as the evaluation sees them. The transforms found there are put back on
// destruction; the job installs the evaluation's own afterwards.
class TrainingActivations {
public:
  TrainingActivations(DecoderModel &model, const QuantScheme &scheme,
                      const std::vector<Linear *> &trained) {
    if (scheme.activation.mode != ActivationMode::None) {
      ActivationSpec spec = scheme.activation;
      spec.mode = ActivationMode::PerTokenDynamic;
      spec.init = StepInit::MinMax;
      const auto input = std::make_shared<ActivationTransform>(ActivationQuantizer(spec));
      for (Linear *l : trained) {
        saved_.push_back({l, l->inputTransform, l->outputTransform});
        l->inputTransform = input;
        ++inputs_;
      }
    }
    if (scheme.kv8) {
      const auto kv = std::make_shared<KvQuantTransform>(8);
      for (int64_t b = 0; b < model.numBlocks(); ++b) {
        if (!scheme.layers.selectsBlock(b))
          continue;
        for (auto &[role, linear] : blockLinears(model.config(), model.weights().blocks[size_t(b)]))
          if (role == "k_proj" || role == "v_proj") {
            saved_.push_back({linear, linear->inputTransform, linear->outputTransform});
            linear->outputTransform = kv;
            ++outputs_;
          }
      }
    }
  }
  ~TrainingActivations() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) { // first saved = original
      it->linear->inputTransform = it->input;
      it->linear->outputTransform = it->output;
    }
  }
  int64_t inputs() const { return inputs_; }
  int64_t outputs() const { return outputs_; }
  TrainingActivations(const TrainingActivations &) = delete;
  TrainingActivations &operator=(const TrainingActivations &) = delete;

private:
  struct Saved {
    Linear *linear;
    std::shared_ptr<const TensorTransform> input, output;
  };
  std::vector<Saved> saved_;
  int64_t inputs_ = 0, outputs_ = 0;
};

// Puts the original weights back unless dismissed: a failed or cancelled run
// leaves the full-precision model, never a half-trained one. Removes the
// training kernels in every case.
class RestoreGuard {
public:
  explicit RestoreGuard(std::vector<Target> &targets) : targets_(targets) {}
  ~RestoreGuard() {
    for (Target &t : targets_) {
      t.linear->kernel.reset();
      if (!armed_)
        continue;
      try {
        t.linear->weight = t.w0();
      } catch (const std::exception &) {
        // The disk failed it: the weight stays undefined, and the run has failed anyway.
      }
    }
  }
  void dismiss() { armed_ = false; }
  RestoreGuard(const RestoreGuard &) = delete;
  RestoreGuard &operator=(const RestoreGuard &) = delete;

private:
  std::vector<Target> &targets_;
  bool armed_ = true;
};

class LrqatMethod : public QuantMethod {
public:
  std::string name() const override { return "lrqat"; }
  std::string help() const override {
    return "LR-QAT (Bondarenko et al., 2024, arXiv 2406.06385): quantization-aware training "
           "with low-rank adapters. Each selected linear keeps its grid-scaled weight "
           "Phi0 = W0/s0 frozen as int8 fixed point (8 - bits fractional bits) and learns "
           "rank-r factors A (zero-initialised) and B plus the per-unit steps s, with "
           "W^ = s * clamp(round_STE(Phi0 + (alpha/r) A B)), by next-token cross-entropy "
           "through the whole model on the calibration windows (AdamW, beta2 0.95, warmup "
           "then linear decay, gradient norm clipped to grad_clip; embeddings, norms and head "
           "stay full precision; A8 schemes train with their activations quantized per "
           "token). At the end round(Phi0 + (alpha/r) A B) is merged into plain integer codes: "
           "no adapters remain at inference. Reference settings: rank 32, alpha 1 (alpha/r = "
           "1/32), grad_clip 1; init auto = symmetric grid with an Lp (p = 4) clipping search.";
  }
  std::string title() const override { return "LR-QAT: low-rank quantization-aware training"; }
  std::vector<HyperparameterSpec> hyperparameters() const override {
    return {{"rank", ValueType::Integer, int64_t(32), 1, 1 << 20,
             "rank r of the adapters A, B (reference: 32)"},
            {"alpha", ValueType::Number, 1.0, 0.0, 1e6,
             "adapter scale: A·B is multiplied by alpha/r (reference: 1, so alpha/r = 1/32)"},
            {"steps", ValueType::Integer, int64_t(40), 1, 1e8, "training steps"},
            {"batch_size", ValueType::Integer, int64_t(1), 1, 4096, "calibration windows per step"},
            {"lr", ValueType::Number, 1e-3, 0.0, 1.0, "AdamW learning rate of the adapters"},
            {"lr_scale", ValueType::Number, 1e-5, 0.0, 1.0, "AdamW learning rate of the steps s"},
            {"warmup_fraction", ValueType::Number, 0.1, 0.0, 1.0,
             "fraction of the steps with a linear warmup"},
            {"weight_decay", ValueType::Number, 0.0, 0.0, 1.0, "AdamW weight decay"},
            {"beta1", ValueType::Number, 0.9, 0.0, 0.999999, "AdamW beta1"},
            {"beta2", ValueType::Number, 0.95, 0.0, 0.999999, "AdamW beta2"},
            {"grad_clip", ValueType::Number, 1.0, 0.0, 1e6,
             "clip the gradient norm over all of A, B and s to this (as torch clip_grad_norm_); "
             "0 = off"},
            {"quantize_activations", ValueType::Flag, true, 0, 0,
             "train with the scheme's activation quantization on (per token, and KV8), as the "
             "evaluation sees it; false = full-precision activations in training"},
            {"recompute_blocks", ValueType::Flag, true, 0, 0,
             "keep only each block's input through a step and run the block again in the "
             "backward (activation memory of one block instead of all, about one more forward "
             "per step; the same gradients); false = keep every block's activations"},
            {"seed", ValueType::Integer, int64_t(-1), -1, 9.2e18,
             "seed of the adapters' initialisation; -1 = the run's seed"}};
  }
  // A (in x r), B (r x out) and the step s per row.
  int64_t learnableParameters(int64_t out, int64_t in, const nlohmann::json &hyper) const override {
    const int64_t rank = hyper.value("rank", int64_t(32));
    return rank * (out + in) + out;
  }
  // Phi0 is int8 fixed point with 8 - bits fractional bits: at 8 bits it has
  // none, so the adapters could never move a code and training would change
  // nothing; below 2 bits the grid is degenerate. The reference allows 2..7.
  // The reference's grid: symmetric, steps from an Lp (p = 4) clipping search.
  // Only for init "auto"; a scheme naming its init keeps its grid as written
  // (asymmetric included).
  GridSpec referenceGrid(const QuantScheme &scheme) const override {
    GridSpec g = scheme.weight;
    // An f16-offset grid stores a zero point (GGUF Q4_1 / Q5_1 blocks): it stays asymmetric.
    g.symmetric = g.stepFormat != StepFormat::Fp16Offset &&
                  g.stepFormat != StepFormat::KSuperblockOffset; // Q4_K: offsets M, frozen
    // LR-QAT's offsets assume z = 0 on a symmetric grid: the balanced range,
    // which a full-range format (GGUF Q4_0 / Q5_0) stores as well.
    g.fullRange = false;
    g.init = StepInit::ClippingSearch;
    g.clipSteps = 100;
    g.clipNorm = 4.0;
    return g;
  }
  // gguf-q6_k's fallback grid (Q8_0, 8 bits) is allowed: the linears it
  // covers train with an integer Φ0 (no fractional bits), so only their steps
  // and codes pushed past half a step by A·B move, and they still land on
  // their Q8_0 grid.
  void checkScheme(const QuantScheme &scheme) const override {
    if (scheme.weight.bits < 2 || scheme.weight.bits > 7)
      throw Error("lrqat trains weights of 2 to 7 bits; this scheme has " +
                  std::to_string(scheme.weight.bits) +
                  "-bit weights (LR-QAT keeps W0/s0 as int8 fixed point with 8 - bits fractional "
                  "bits: at 8 bits no code could ever change)");
    if (scheme.weight.fullRange && scheme.weight.init != StepInit::MethodDefault)
      throw Error("lrqat keeps the zero point of a symmetric grid at 0, so it cannot train a "
                  "full-range grid; set weight.full_range to false or weight.init to auto (a "
                  "GGUF Q4_0 / Q5_0 file stores the balanced grid too)");
    if (scheme.layers.embeddings || scheme.layers.lmHead)
      throw Error("lrqat: the embeddings and the LM head stay full precision in LR-QAT; use a "
                  "scheme that does not select them");
  }
  MethodReport run(MethodContext &ctx) override;
};

MethodReport LrqatMethod::run(MethodContext &ctx) {
  const nlohmann::json &h = ctx.hyper;
  auto num = [&](const char *key) {
    const nlohmann::json d = defaults();
    return h.contains(key) ? h.at(key).get<double>() : d.at(key).get<double>();
  };
  auto integer = [&](const char *key) {
    const nlohmann::json d = defaults();
    return h.contains(key) ? h.at(key).get<int64_t>() : d.at(key).get<int64_t>();
  };
  const int64_t rank = integer("rank"), steps = integer("steps"), batch = integer("batch_size");
  const double alpha = num("alpha"), lrAb = num("lr"), lrScale = num("lr_scale");
  const double warmupFraction = num("warmup_fraction"), weightDecay = num("weight_decay");
  const double beta1 = num("beta1"), beta2 = num("beta2"), gradClip = num("grad_clip");
  const bool quantizeActivations =
      h.contains("quantize_activations") ? h.at("quantize_activations").get<bool>() : true;
  const bool recomputeBlocks =
      h.contains("recompute_blocks") ? h.at("recompute_blocks").get<bool>() : true;
  const int64_t seedHyper = integer("seed");
  const uint64_t seed = seedHyper >= 0 ? uint64_t(seedHyper) : ctx.seed;
  if (rank < 1)
    throw Error("lrqat: rank must be at least 1");
  if (steps < 1)
    throw Error("lrqat: steps must be at least 1");
  if (batch < 1)
    throw Error("lrqat: batch_size must be at least 1");
  if (!(lrAb >= 0.0) || !(lrScale >= 0.0) || !(warmupFraction >= 0.0 && warmupFraction <= 1.0))
    throw Error("lrqat: lr and lr_scale must be >= 0 and warmup_fraction in [0, 1]");
  if (!(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0))
    throw Error("lrqat: beta1 and beta2 must be in [0, 1)");
  if (!(gradClip >= 0.0) || !std::isfinite(gradClip))
    throw Error("lrqat: grad_clip must be >= 0 (0 = off)");

  // "auto" init: the reference grid (the job has resolved it already).
  const QuantScheme scheme = resolveReferenceGrid(*this, ctx.scheme);
  scheme.validate();
  checkScheme(scheme);
  const LayerSelection &sel = scheme.layers;
  ModelWeights &weights = ctx.model.weights();
  const int64_t blockCount = int64_t(weights.blocks.size());
  for (int64_t b : sel.blocks)
    if (b < 0 || b >= blockCount)
      throw Error("scheme selects block " + std::to_string(b) + " but the model has " +
                  std::to_string(blockCount) + " blocks");
  if (!weights.blocks.empty()) {
    std::set<std::string> roles;
    for (const auto &entry : blockLinears(ctx.model.config(), weights.blocks.front()))
      roles.insert(entry.first);
    for (const std::string &name : sel.linears)
      if (!roles.count(name))
        throw Error("scheme selects linear " + name + ", which this model's blocks do not have");
  }

  const at::Tensor &calib = ctx.calibration.tokens;
  if (!calib.defined() || calib.dim() != 2 || calib.size(0) < 1 || calib.size(1) < 2)
    throw Error("lrqat: needs calibration windows [samples, seqLen >= 2]");
  const int64_t samples = calib.size(0);
  if (batch > samples)
    throw Error("lrqat: batch_size " + std::to_string(batch) + " exceeds the " +
                std::to_string(samples) + " calibration samples");

  std::vector<Target> targets;
  for (int64_t b = 0; b < blockCount; ++b) {
    if (!sel.selectsBlock(b))
      continue;
    for (auto &[role, linear] : blockLinears(ctx.model.config(), weights.blocks[size_t(b)]))
      if (sel.selectsLinear(role) && linear->weight.defined())
        targets.push_back({b, role, linear, linear->weight, nullptr, linear->weight.scalar_type(),
                           WeightArena::slotElements(linear->weight)});
  }
  for (const Target &t : targets) {
    try {
      checkWeightForGrid(t.original, scheme.weightFor(t.original.size(1)));
    } catch (const Error &e) {
      throw Error(where(t) + ": " + e.what());
    }
  }
  if (targets.empty())
    throw Error("lrqat: the scheme selects no linear of this model");

  ProgressObserver *obs = ctx.observer;
  auto log = [&](LogLevel level, const std::string &message) {
    if (obs)
      obs->log(level, message);
  };

  // State of every layer: Φ0 downcast, A = 0, B seeded, s = s0. The steps
  // compute from Φ0, A, B and s alone: each W0 goes to the stash as soon as its
  // state is made, until the merge measures the layer's error against it (or a
  // failure restores it).
  RestoreGuard restore(targets);
  std::vector<LrqatLayer> layers;
  layers.reserve(targets.size());
  int64_t learnable = 0, aside = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    Target &t = targets[i];
    try {
      layers.push_back(initLrqatLayer(t.original, scheme.weightFor(t.original.size(1)), rank, alpha,
                                      seed * 1000003ULL + uint64_t(i)));
    } catch (const Error &e) {
      throw Error(where(t) + ": " + e.what());
    }
    learnable += layers.back().learnableParams();
    if (ctx.stash && ctx.stash->setAside(t.block, t.role)) {
      t.original = at::Tensor();
      t.stash = ctx.stash;
      ++aside;
    }
  }
  if (aside > 0)
    log(LogLevel::Info, "lrqat: the full-precision weights of " + std::to_string(aside) +
                            " linears set aside while the steps run");
  std::vector<Linear *> trained;
  for (const Target &t : targets)
    trained.push_back(t.linear);
  std::unique_ptr<TrainingActivations> activations;
  if (quantizeActivations)
    activations = std::make_unique<TrainingActivations>(ctx.model, scheme, trained);
  std::vector<AdamState> adam(layers.size() * 3);
  // Every trained linear computes through its kernel until the guard removes it.
  std::vector<LrqatGradients> grads(layers.size());
  double secForwardWeights = 0.0, secBackward = 0.0;
  LrqatScratch scratch;
  std::vector<LrqatLinearState> states(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    states[i] = {&layers[i], targets[i].linear->bias, targets[i].dtype, &grads[i],
                 &scratch,   &secForwardWeights,      &secBackward};
    targets[i].linear->kernel = makeLrqatKernel(&states[i]);
  }
  const int64_t warmup = int64_t(std::llround(warmupFraction * double(steps)));
  auto lrFactor = [&](int64_t step) { // step counts from 0
    if (step < warmup)
      return double(step + 1) / double(warmup);
    return double(steps - step) / double(std::max<int64_t>(1, steps - warmup));
  };

  // Window order: a seeded shuffle, redrawn every pass over the windows.
  std::mt19937_64 rng(seed ^ 0x5eedULL);
  std::vector<int64_t> order(static_cast<size_t>(samples));
  size_t cursor = order.size();
  auto nextBatch = [&]() {
    std::vector<int64_t> picked;
    for (int64_t k = 0; k < batch; ++k) {
      if (cursor == order.size()) {
        for (int64_t i = 0; i < samples; ++i)
          order[size_t(i)] = i;
        std::shuffle(order.begin(), order.end(), rng);
        cursor = 0;
      }
      picked.push_back(order[cursor++]);
    }
    return calib.index_select(0, at::tensor(picked, at::kLong));
  };

  log(LogLevel::Info,
      "lrqat: " + std::to_string(targets.size()) + " linears, rank " + std::to_string(rank) + ", " +
          std::to_string(learnable) + " learnable parameters, Phi0 as int8 with " +
          std::to_string(lrqatFractionalBits(scheme.weight)) + " fractional bits; " +
          std::to_string(steps) + " steps of " + std::to_string(batch) + " x " +
          std::to_string(calib.size(1)) + " tokens; grid " + scheme.weight.describe() +
          (scheme.weight.init == StepInit::ClippingSearch
               ? " (p = " + fmt("%g", scheme.weight.clipNorm) + ")"
               : std::string()) +
          ", grad clip " + (gradClip > 0 ? fmt("%g", gradClip) : std::string("off")) +
          (activations && (activations->inputs() || activations->outputs())
               ? ", activations quantized in training (" + std::to_string(activations->inputs()) +
                     " inputs per token, " + std::to_string(activations->outputs()) + " KV outputs)"
               : std::string()) +
          (recomputeBlocks ? ", each block run again in the backward" : ""));
  if (obs) {
    obs->started("lrqat", steps);
    obs->blockStarted(0, 1); // the whole model is trained as one unit
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<double> losses, gradNorms;
  losses.reserve(size_t(steps));
  gradNorms.reserve(size_t(steps));
  const at::Device device = ctx.model.device();
  const int64_t logEvery = std::max<int64_t>(1, steps / 10);
  using Clock = std::chrono::steady_clock;
  auto since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  // Where a step's time goes; Ŵ in the kernels' forwards counts as weights, the
  // kernels' backwards (Ŵ again and the closed-form gradients) with the AdamW
  // updates, not the model.
  double secWeights = 0.0, secModel = 0.0, secLayers = 0.0;
  for (int64_t step = 0; step < steps; ++step) {
    if (ctx.cancel)
      ctx.cancel->throwIfCancelled();
    const double factor = lrFactor(step);
    for (LrqatGradients &g : grads)
      g = LrqatGradients();
    auto phase = Clock::now();
    const at::Tensor tokens = nextBatch().to(device);
    double lossValue = 0.0;
    {
      at::AutoGradMode grad(true);
      const at::Tensor hidden =
          recomputeBlocks
              ? hiddenRecomputingBlocks(ctx.model, tokens, layers[0].scale, targets.front().block)
              : ctx.model.lastHidden(tokens);
      lossValue = nextTokenLossBackward(ctx.model, hidden, tokens);
      if (!std::isfinite(lossValue))
        throw Error("lrqat: step " + std::to_string(step + 1) + ": the loss is " +
                    (std::isnan(lossValue) ? "NaN" : "infinite") +
                    " (try a smaller lr or lr_scale)");
    }
    secModel += since(phase) - secForwardWeights - secBackward;
    secWeights += secForwardWeights;
    secLayers += secBackward;
    secForwardWeights = secBackward = 0.0;
    phase = Clock::now();
    // The kernels' backwards made every layer's gradients (a linear the loss
    // does not reach has none); the norm over all of them clipped; then AdamW
    // on A, B, s.
    const double gradNorm = clipGradientNorm(grads, gradClip);
    gradNorms.push_back(gradNorm);
    for (size_t i = 0; i < layers.size(); ++i) {
      LrqatLayer &l = layers[i];
      const LrqatGradients &g = grads[i];
      if (!g.a.defined())
        continue;
      adamwStep(l.a, g.a, adam[3 * i], lrAb * factor, beta1, beta2, 1e-8, weightDecay, step + 1);
      adamwStep(l.b, g.b, adam[3 * i + 1], lrAb * factor, beta1, beta2, 1e-8, weightDecay,
                step + 1);
      adamwStep(l.scale, g.scale, adam[3 * i + 2], lrScale * factor, beta1, beta2, 1e-8,
                weightDecay, step + 1);
      if (!allFinite(l.a) || !allFinite(l.b) || !allFinite(l.scale))
        throw Error("lrqat: step " + std::to_string(step + 1) + ": " + where(targets[i]) +
                    ": A, B or s became NaN/Inf (try a smaller lr or lr_scale)");
    }
    secLayers += since(phase);
    losses.push_back(lossValue);
    if (obs) {
      obs->iterationLoss(0, int(step), lossValue);
      obs->progress(step + 1, steps, "step " + std::to_string(step + 1));
    }
    if ((step + 1) % logEvery == 0 || step + 1 == steps)
      log(LogLevel::Info, "lrqat: step " + std::to_string(step + 1) + "/" + std::to_string(steps) +
                              ": loss " + fmt("%.4f", lossValue) + ", lr " +
                              fmt("%.3g", lrAb * factor));
  }
  for (Target &t : targets) // the states the kernels point to end with this function
    t.linear->kernel.reset();
  scratch = LrqatScratch();
  releaseFreeMemory(); // the steps' activations and temporaries, before the merged weights
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t clippedSteps = std::count_if(
      gradNorms.begin(), gradNorms.end(), [&](double n) { return gradClip > 0 && n > gradClip; });
  const bool trainedQuantizedActivations =
      activations && (activations->inputs() > 0 || activations->outputs() > 0);
  activations.reset(); // the evaluation installs its own quantizers

  // Merge: plain integer codes and steps, dequantized into Linear::weight.
  MethodReport report;
  int64_t moved = 0, total = 0;
  {
    at::NoGradGuard noGrad;
    // Every merged weight is placed in one block reserved up front (the run's
    // arena, or one of its own): made one by one between the merge's
    // temporaries, the weights pinned the freed temporaries' memory (776 MiB
    // resident for 405 MiB of weights on the default model).
    std::optional<WeightArena> ownArena;
    if (!ctx.arena) {
      int64_t elements = 0;
      for (const Target &t : targets)
        elements += t.slotElements;
      ownArena.emplace(elements, layers.front().a.options().dtype(targets.front().dtype));
    }
    WeightArena &arena = ctx.arena ? *ctx.arena : *ownArena;
    for (size_t i = 0; i < layers.size(); ++i) {
      const LrqatLayer &l = layers[i];
      const at::Tensor codes = lrqatMergedCodes(l);
      // The initial codes (RTN on the downcast grid): A started at zero, and
      // (α/r)·0·B adds zero to Φ0_d exactly, so they are the codes of A = 0.
      LrqatLayer start = l;
      start.a = at::zeros_like(l.a);
      moved += (codes != lrqatMergedCodes(start)).sum().item<int64_t>();
      total += codes.numel();
      const at::Tensor merged = arena.place(lrqatMergedWeight(l).to(targets[i].dtype));
      Linear &lin = *targets[i].linear;
      lin.weight = merged;
      lin.lowRankA = at::Tensor();
      lin.lowRankB = at::Tensor();
      // Ŵ = s (codes − z), or s codes − M, on the trained steps: the grid of the exports.
      GridParams grid;
      try { // the trained step in the step format; refused when the format cannot store it
        grid.scale = applyStepFormat(l.scale.detach(), l.spec).clone();
      } catch (const Error &e) {
        throw Error("lrqat: " + where(targets[i]) + ": " + e.what());
      }
      grid.zeroPoint = l.zeroPoint.detach().clone();
      report.grids[gridKey(ctx.model.config(), targets[i].block, targets[i].role)] = grid;
      LayerReport lr;
      lr.error = weightErrorStats(targets[i].w0(), merged);
      lr.error.block = targets[i].block;
      lr.error.layer = targets[i].role;
      lr.learnableParams = l.learnableParams();
      report.layers.push_back(lr);
      reportLayer(ctx.observer, lr.error);
      // Its training state is spent: freed as the merged weights take its place,
      // and handed back, so Φ0 and the merged weights are not resident together.
      adam[3 * i] = adam[3 * i + 1] = adam[3 * i + 2] = AdamState();
      layers[i] = LrqatLayer();
      releaseFreeMemory();
    }
  }
  restore.dismiss();

  const double perStep = seconds / double(steps);
  report.extra = {{"steps", steps},
                  {"seconds", seconds},
                  {"seconds_per_step", perStep},
                  {"loss_start", losses.front()},
                  {"loss_end", losses.back()},
                  {"losses", losses},
                  {"learnable_params", learnable},
                  {"rank", rank},
                  {"alpha", alpha},
                  {"alpha_over_rank", alpha / double(rank)},
                  {"grad_clip", gradClip},
                  {"grad_norm_first", gradNorms.front()},
                  {"grad_norm_last", gradNorms.back()},
                  {"steps_clipped", clippedSteps},
                  {"weight_grid", scheme.weight.describe()},
                  {"weight_init", stepInitName(scheme.weight.init)},
                  {"weight_init_clip_norm", scheme.weight.clipNorm},
                  {"activations_quantized_in_training", trainedQuantizedActivations},
                  {"codes_changed_fraction", total ? double(moved) / double(total) : 0.0},
                  {"phi0_storage", "int8 fixed point, " +
                                       std::to_string(lrqatFractionalBits(scheme.weight)) +
                                       " fractional bits"},
                  {"peak_rss_mb", peakRssMiB()},
                  {"seconds_per_step_weights", secWeights / double(steps)},
                  {"seconds_per_step_model", secModel / double(steps)},
                  {"seconds_per_step_layer_backward", secLayers / double(steps)}};
  if (obs) {
    obs->blockFinished(0, losses.front(), losses.back(), seconds);
    obs->metric("lrqat_seconds_per_step", perStep);
    obs->metric("lrqat_codes_changed_fraction",
                report.extra["codes_changed_fraction"].get<double>());
    obs->finished();
  }
  log(LogLevel::Info,
      "lrqat: loss " + fmt("%.4f", losses.front()) + " -> " + fmt("%.4f", losses.back()) + " in " +
          fmt("%.1f", seconds) + " s (" + fmt("%.2f", perStep) + " s/step: Phi0 + AB to W^ " +
          fmt("%.2f", secWeights / double(steps)) + " s, model forward/backward " +
          fmt("%.2f", secModel / double(steps)) + " s, A/B/s gradients and AdamW " +
          fmt("%.2f", secLayers / double(steps)) + " s); " +
          fmt("%.3f", 100.0 * report.extra["codes_changed_fraction"].get<double>()) +
          "% of codes moved from their initial rounding");
  return report;
}

} // namespace

std::unique_ptr<QuantMethod> makeLrqatMethod() {
  return std::make_unique<LrqatMethod>();
}

} // namespace lrq::quant
