// SmoothQuant, written from the paper and ALGORITHMS.md.
//
// Which layers are smoothed: only the linears fed by a norm (q/k/v after
// input_layernorm, gate/up after post_attention_layernorm; OPT: q/k/v and
// fc1). The authors' reference code for LLaMA-family models does the same:
// o_proj (its input is the attention output, mixed over heads by softmax
// weights) and down_proj (its input is the SwiGLU product) have no per-channel
// scale in front of them that could absorb 1/s exactly, so they are left as
// they are. (For v_proj -> o_proj a per-head scale could be folded into v's
// rows, but the reference does not do it, and neither do we.)
#include "core/quant/smoothquant.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/common/error.h"
#include "core/quant/calibration_runner.h"
#include "core/quant/transform_capture.h"

namespace lrq::quant {

namespace {

double maxOverMedian(const at::Tensor &v) {
  const at::Tensor d = v.to(at::kDouble);
  const double median = d.median().item<double>();
  return median > 0 ? d.max().item<double>() / median : std::numeric_limits<double>::infinity();
}

void checkPreNorm(const ModelConfig &config) {
  if (config.arch == Architecture::Opt && !config.doLayerNormBefore)
    throw Error("SmoothQuant: post-LayerNorm OPT blocks have no norm in front of their linears to "
                "absorb the smoothing scales");
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
      states.runBlock(b, b + 1 < blocks, cancel);
    }
  }
  return out;
}

SmoothQuantReport applySmoothQuant(DecoderModel &model, const CalibrationSet &calibration,
                                   double alpha, const LayerSelection &selection,
                                   ProgressObserver *observer, const CancelToken *cancel,
                                   int64_t batchSize) {
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
    if (observer)
      observer->progress(b + 1, model.numBlocks(), "block " + std::to_string(b));
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (observer)
    observer->finished();
  return report;
}

} // namespace lrq::quant
