// SmoothQuant, written from the paper and ALGORITHMS.md.
//
// Which layers are smoothed (SmoothGroups): by default only the linears fed
// by a norm (q/k/v after input_layernorm, gate/up after
// post_attention_layernorm; OPT: q/k/v and fc1), as the authors' reference
// code does for LLaMA-family models. With SmoothGroups::All the two inputs fed
// by a previous linear are smoothed too, the scale folded into that linear's
// output rows (ALGORITHMS.md allows either):
//  - down_proj reads SiLU(gate(x)) * up(x), linear in up's output channel by
//    channel: up's rows (and bias) / s, down's columns * s is exact. (OPT:
//    fc2 reads ReLU(fc1(x)), and ReLU(y / s) = ReLU(y) / s for s > 0.)
//  - o_proj reads softmax(QK^T) V, linear in v's output channel by channel:
//    v's rows (and bias) / s, o's columns * s is exact. With grouped-query
//    attention, v channel (kvHead, e) is read by the o_proj column
//    (kvHead * groups + g) * headDim + e of every query head g of its group
//    (the decoder's head layout), so those columns share one s: the
//    statistics (activation and weight maxima) are maxed over them.
#include "core/quant/smoothquant.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/common/error.h"
#include "core/common/memory.h"
#include "core/quant/calibration_runner.h"
#include "core/quant/transform_capture.h"

namespace lrq::quant {

namespace {

double maxOverMedian(const at::Tensor &v) {
  const at::Tensor d = v.to(at::kDouble);
  const double median = d.median().item<double>();
  return median > 0 ? d.max().item<double>() / median : std::numeric_limits<double>::infinity();
}

// [heads * d] per o_proj column -> [kvHeads * d] per v channel: the max over
// the query heads sharing each kv head.
at::Tensor perKvChannel(const at::Tensor &perColumn, const ModelConfig &c) {
  const int64_t kvH = c.numKvHeads, groups = c.numHeads / c.numKvHeads, d = c.headDim;
  return perColumn.reshape({kvH, groups, d}).amax(1).reshape({kvH * d});
}

// [kvHeads * d] per v channel -> [heads * d] per o_proj column.
at::Tensor perOColumn(const at::Tensor &perKv, const ModelConfig &c) {
  const int64_t kvH = c.numKvHeads, groups = c.numHeads / c.numKvHeads, d = c.headDim;
  return perKv.reshape({kvH, 1, d}).expand({kvH, groups, d}).reshape({kvH * groups * d});
}

at::Tensor smoothingScale(const at::Tensor &actMax, const at::Tensor &weightMax, double alpha) {
  return (actMax.to(at::kDouble).pow(alpha) /
          weightMax.to(at::kDouble).clamp_min(1e-5).pow(1.0 - alpha))
      .clamp_min(1e-5);
}

at::Tensor like(const at::Tensor &scale, const at::Tensor &t) {
  return scale.to(t.device(), t.scalar_type());
}

void checkPreNorm(const ModelConfig &config) {
  if (config.arch == Architecture::Opt && !config.doLayerNormBefore)
    throw Error("SmoothQuant: post-LayerNorm OPT blocks have no norm in front of their linears to "
                "absorb the smoothing scales");
}

// The linear-fed pairs of block b (SmoothGroups::All): v -> o, up -> down.
void smoothLinearPairs(DecoderModel &model, int64_t b, const NormInputMax &stats, double alpha,
                       SmoothQuantReport &report) {
  const ModelConfig &c = model.config();
  const bool llama = c.arch == Architecture::Llama;
  BlockWeights &w = model.weights().blocks[size_t(b)];
  auto divideRows = [](Linear &producer, const at::Tensor &scale) {
    producer.weight = producer.weight / like(scale, producer.weight).unsqueeze(1);
    if (producer.bias.defined())
      producer.bias = producer.bias / like(scale, producer.bias);
  };
  auto multiplyColumns = [](Linear &consumer, const at::Tensor &scale) {
    consumer.weight = consumer.weight * like(scale, consumer.weight).unsqueeze(0);
  };
  auto record = [&](const char *producer, const char *consumer, const at::Tensor &scale,
                    const at::Tensor &act, const at::Tensor &columnScale) {
    SmoothQuantReport::Group g;
    g.block = b;
    g.norm = producer;
    g.linears = {consumer};
    g.scaleMin = scale.min().item<double>();
    g.scaleMax = scale.max().item<double>();
    g.activationRatioBefore = maxOverMedian(act);
    g.activationRatioAfter = maxOverMedian(act.to(at::kDouble) / columnScale);
    report.groups.push_back(g);
  };

  // v_proj -> o_proj: one scale per v channel, shared by the o columns it feeds.
  {
    const at::Tensor act = stats.attentionOutput;
    const at::Tensor weightMax = w.o.weight.detach().abs().amax(0).to(at::kCPU, at::kDouble);
    const at::Tensor scale =
        smoothingScale(perKvChannel(act.to(at::kDouble), c), perKvChannel(weightMax, c), alpha);
    const at::Tensor columnScale = perOColumn(scale, c);
    divideRows(w.v, scale);
    multiplyColumns(w.o, columnScale);
    record("v_proj", llama ? "o_proj" : "out_proj", scale, act, columnScale);
  }
  // up_proj -> down_proj (OPT: fc1 -> fc2 under ReLU only).
  if (llama || c.activation != "gelu") {
    const at::Tensor act = stats.mlpProduct;
    const at::Tensor weightMax = w.down.weight.detach().abs().amax(0).to(at::kCPU, at::kDouble);
    const at::Tensor scale = smoothingScale(act, weightMax, alpha);
    divideRows(w.up, scale);
    multiplyColumns(w.down, scale);
    record(llama ? "up_proj" : "fc1", llama ? "down_proj" : "fc2", scale, act, scale);
  }
}

} // namespace

std::vector<NormInputMax> collectNormInputAbsMax(DecoderModel &model,
                                                 const CalibrationSet &calibration,
                                                 int64_t batchSize, const CancelToken *cancel) {
  checkCalibration(calibration, "SmoothQuant statistics");
  at::NoGradGuard noGrad;
  const int64_t blocks = model.numBlocks();
  std::vector<NormInputMax> out(static_cast<size_t>(blocks));
  CalibrationStates states(model, calibration, batchSize);
  auto observeInto = [](at::Tensor *acc) {
    return [acc](const at::Tensor &x) {
      const at::Tensor m =
          x.detach().abs().reshape({-1, x.size(-1)}).amax(0).to(at::kCPU, at::kFloat);
      *acc = acc->defined() ? at::maximum(*acc, m) : m;
    };
  };
  for (int64_t b = 0; b < blocks; ++b) {
    BlockWeights &w = model.weights().blocks[size_t(b)];
    {
      // q_proj sees the attention norm's output, up_proj (fc1) the MLP norm's.
      ScopedCapture attention(w.q, observeInto(&out[size_t(b)].attention), false);
      ScopedCapture mlp(w.up, observeInto(&out[size_t(b)].mlp), false);
      ScopedCapture attentionOutput(w.o, observeInto(&out[size_t(b)].attentionOutput), false);
      ScopedCapture mlpProduct(w.down, observeInto(&out[size_t(b)].mlpProduct), false);
      states.runBlock(b, b + 1 < blocks, cancel);
    }
  }
  return out;
}

const char *smoothGroupsName(SmoothGroups g) {
  return g == SmoothGroups::All ? "all" : "norm";
}

bool parseSmoothGroups(const std::string &name, SmoothGroups *out) {
  if (name == "norm")
    *out = SmoothGroups::Norm;
  else if (name == "all")
    *out = SmoothGroups::All;
  else
    return false;
  return true;
}

SmoothQuantReport applySmoothQuant(DecoderModel &model, const CalibrationSet &calibration,
                                   double alpha, const LayerSelection &selection,
                                   ProgressObserver *observer, const CancelToken *cancel,
                                   int64_t batchSize) {
  SmoothQuantOptions options;
  options.alpha = alpha;
  options.batchSize = batchSize;
  return applySmoothQuant(model, calibration, options, selection, observer, cancel);
}

SmoothQuantReport applySmoothQuant(DecoderModel &model, const CalibrationSet &calibration,
                                   const SmoothQuantOptions &options,
                                   const LayerSelection &selection, ProgressObserver *observer,
                                   const CancelToken *cancel) {
  const double alpha = options.alpha;
  const int64_t batchSize = options.batchSize;
  if (!(alpha >= 0.0 && alpha <= 1.0))
    throw Error("SmoothQuant: alpha must be in [0, 1], got " + std::to_string(alpha));
  const ModelConfig &config = model.config();
  checkPreNorm(config);
  for (int64_t b : selection.blocks)
    if (b < 0 || b >= model.numBlocks())
      throw Error("SmoothQuant: block " + std::to_string(b) + " out of range (the model has " +
                  std::to_string(model.numBlocks()) + " blocks)");
  const auto start = std::chrono::steady_clock::now();
  if (observer)
    observer->started("smoothquant", model.numBlocks());
  const std::vector<NormInputMax> stats =
      collectNormInputAbsMax(model, calibration, batchSize, cancel);

  at::NoGradGuard noGrad;
  SmoothQuantReport report;
  report.alpha = alpha;
  report.calibrationSamples = calibration.tokens.size(0);
  const bool llama = config.arch == Architecture::Llama;
  for (int64_t b = 0; b < model.numBlocks(); ++b) {
    if (!selection.selectsBlock(b))
      continue;
    if (cancel)
      cancel->throwIfCancelled();
    BlockWeights &w = model.weights().blocks[size_t(b)];
    struct Spec {
      NormWeights *norm;
      const char *normName;
      std::vector<std::pair<std::string, Linear *>> linears;
      at::Tensor actMax;
    };
    std::vector<Spec> specs;
    specs.push_back({&w.attnNorm,
                     llama ? "input_layernorm" : "self_attn_layer_norm",
                     {{"q_proj", &w.q}, {"k_proj", &w.k}, {"v_proj", &w.v}},
                     stats[size_t(b)].attention});
    if (llama)
      specs.push_back({&w.mlpNorm,
                       "post_attention_layernorm",
                       {{"gate_proj", &w.gate}, {"up_proj", &w.up}},
                       stats[size_t(b)].mlp});
    else
      specs.push_back({&w.mlpNorm, "final_layer_norm", {{"fc1", &w.up}}, stats[size_t(b)].mlp});

    for (Spec &s : specs) {
      // max over the group's linears of max_i |W_ij|, per column j.
      at::Tensor weightMax;
      for (auto &[name, linear] : s.linears) {
        (void)name;
        const at::Tensor m = linear->weight.detach().abs().amax(0).to(at::kCPU, at::kDouble);
        weightMax = weightMax.defined() ? at::maximum(weightMax, m) : m;
      }
      weightMax = weightMax.clamp_min(1e-5);
      const at::Tensor act = s.actMax.to(at::kDouble);
      const at::Tensor scale = (act.pow(alpha) / weightMax.pow(1.0 - alpha)).clamp_min(1e-5);

      NormWeights &norm = *s.norm;
      const at::Tensor sDev = scale.to(norm.weight.device(), norm.weight.scalar_type());
      norm.weight = norm.weight / sDev; // new tensors: nothing else shares the old ones
      if (norm.bias.defined())
        norm.bias = norm.bias / sDev;
      SmoothQuantReport::Group g;
      g.block = b;
      g.norm = s.normName;
      for (auto &[name, linear] : s.linears) {
        linear->weight =
            linear->weight *
            scale.to(linear->weight.device(), linear->weight.scalar_type()).unsqueeze(0);
        g.linears.push_back(name);
      }
      g.scaleMin = scale.min().item<double>();
      g.scaleMax = scale.max().item<double>();
      g.activationRatioBefore = maxOverMedian(act);
      g.activationRatioAfter = maxOverMedian(act / scale);
      report.groups.push_back(g);
    }
    if (options.groups == SmoothGroups::All)
      smoothLinearPairs(model, b, stats[size_t(b)], alpha, report);
    // The block's old weights, where nothing else holds them (a reference set
    // aside), go back to the system before the next block's new ones are made.
    releaseFreeMemory();
    if (observer)
      observer->progress(b + 1, model.numBlocks(), "block " + std::to_string(b));
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (observer)
    observer->finished();
  return report;
}

} // namespace lrq::quant
