#include "core/quant/activation_stats.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "core/common/error.h"

namespace lrq::quant {
namespace {

// Installed as a linear's input transform while statistics are gathered:
// applies the transform it replaced, then accumulates sum |x| per channel of
// what comes out (one calibration batch may reach it in several calls).
class StatRecorder : public TensorTransform {
public:
  explicit StatRecorder(std::shared_ptr<const TensorTransform> inner) : inner_(std::move(inner)) {}

  at::Tensor apply(const at::Tensor &x) const override {
    const at::Tensor y = inner_ ? inner_->apply(x) : x;
    const at::Tensor flat = y.detach().reshape({-1, y.size(-1)});
    const at::Tensor sum = at::sum(flat.abs(), {0}, false, at::kDouble).cpu();
    sum_ = sum_.defined() ? sum_ + sum : sum;
    count_ += flat.size(0);
    return y;
  }
  std::string describe() const override {
    return "activation statistics" + (inner_ ? " after " + inner_->describe() : std::string());
  }

  // Ends a calibration batch: its per-channel mean |x| joins the running max.
  void endBatch() {
    if (count_ == 0)
      return;
    const at::Tensor mean = sum_ / double(count_);
    max_ = max_.defined() ? at::maximum(max_, mean) : mean;
    tokens_ += count_;
    ++batches_;
    sum_ = at::Tensor();
    count_ = 0;
  }

  const std::shared_ptr<const TensorTransform> &inner() const { return inner_; }
  const at::Tensor &batchMax() const { return max_; }
  int64_t batches() const { return batches_; }
  int64_t tokens() const { return tokens_; }

private:
  std::shared_ptr<const TensorTransform> inner_;
  mutable at::Tensor sum_;
  mutable int64_t count_ = 0;
  at::Tensor max_;
  int64_t batches_ = 0, tokens_ = 0;
};

struct Hook {
  int64_t block;
  std::string layer;
  Linear *linear;
  std::shared_ptr<StatRecorder> recorder;
};

// Puts the replaced transforms back whatever happens.
class HookGuard {
public:
  explicit HookGuard(std::vector<Hook> &hooks) : hooks_(hooks) {}
  ~HookGuard() {
    for (Hook &h : hooks_)
      h.linear->inputTransform = h.recorder->inner();
  }
  HookGuard(const HookGuard &) = delete;
  HookGuard &operator=(const HookGuard &) = delete;

private:
  std::vector<Hook> &hooks_;
};

} // namespace

at::Tensor normaliseActivationScale(const at::Tensor &raw, double clampMin) {
  if (!raw.defined() || raw.dim() != 1 || raw.numel() == 0)
    throw Error("activation scale: expected a non-empty vector of channel statistics");
  const at::Tensor s = raw.to(at::kDouble).clamp_min(clampMin);
  const double norm = std::sqrt(s.min().item<double>() * s.max().item<double>());
  return s / norm;
}

std::vector<LinearActivationStats>
collectActivationStats(DecoderModel &model, const CalibrationSet &calibration,
                       const LayerSelection &selection, int64_t batchSize,
                       ProgressObserver *observer, const CancelToken *cancel) {
  const at::Tensor &tokens = calibration.tokens;
  if (!tokens.defined() || tokens.dim() != 2 || tokens.size(0) < 1 || tokens.size(1) < 1)
    throw Error("activation statistics need calibration windows [samples, seqLen]");
  if (batchSize < 1)
    throw Error("activation statistics: batch size must be at least 1, got " +
                std::to_string(batchSize));

  ModelWeights &weights = model.weights();
  const int64_t blockCount = int64_t(weights.blocks.size());
  std::vector<Hook> hooks;
  int64_t lastBlock = -1;
  for (int64_t b = 0; b < blockCount; ++b) {
    if (!selection.selectsBlock(b))
      continue;
    for (auto &[role, linear] : blockLinears(model.config(), weights.blocks[size_t(b)])) {
      if (!selection.selectsLinear(role) || !linear->weight.defined())
        continue;
      hooks.push_back({b, role, linear, std::make_shared<StatRecorder>(linear->inputTransform)});
      lastBlock = b;
    }
  }
  std::vector<LinearActivationStats> out;
  if (hooks.empty())
    return out;

  at::NoGradGuard noGrad;
  HookGuard guard(hooks);
  for (Hook &h : hooks)
    h.linear->inputTransform = h.recorder;

  const int64_t samples = tokens.size(0);
  const int64_t batches = (samples + batchSize - 1) / batchSize;
  if (observer)
    observer->started("activation statistics", batches);
  for (int64_t i = 0; i < batches; ++i) {
    if (cancel)
      cancel->throwIfCancelled();
    const int64_t begin = i * batchSize, end = std::min(samples, begin + batchSize);
    at::Tensor hidden = model.embed(tokens.slice(0, begin, end).to(model.device()));
    for (int64_t b = 0; b <= lastBlock; ++b)
      hidden = model.runBlock(b, hidden);
    for (Hook &h : hooks)
      h.recorder->endBatch();
    if (observer)
      observer->progress(i + 1, batches, "calibration batch " + std::to_string(i + 1));
  }

  for (const Hook &h : hooks) {
    LinearActivationStats s;
    s.block = h.block;
    s.layer = h.layer;
    s.batchMax = h.recorder->batchMax();
    s.batches = h.recorder->batches();
    s.tokens = h.recorder->tokens();
    if (!s.batchMax.defined())
      throw Error("activation statistics: block " + std::to_string(h.block) + " " + h.layer +
                  " saw no input");
    s.scale = normaliseActivationScale(s.batchMax);
    out.push_back(std::move(s));
  }
  return out;
}

} // namespace lrq::quant
