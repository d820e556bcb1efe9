#include "core/eval/perplexity.h"
#include "core/eval/token_windows.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>

#include "core/common/error.h"

namespace lrq {
namespace {

// Rows of logits materialised at once: the LM head is applied to this many
// positions, their log-probabilities taken and reduced, so a window never
// holds [seqLen, vocab] log-probabilities (nor logits) in full.
constexpr int64_t kHeadChunk = 128;

// Summed NLL (natural log) of targets[i] given hidden state i, on the model's
// device; the caller reads it back once per window.
at::Tensor summedNll(const DecoderModel &model, const at::Tensor &hidden,
                     const at::Tensor &targets) {
  const int64_t positions = targets.size(0);
  at::Tensor total = at::zeros({}, hidden.options().dtype(at::kDouble));
  for (int64_t s = 0; s < positions; s += kHeadChunk) {
    const int64_t n = std::min(kHeadChunk, positions - s);
    at::Tensor logits = model.head(hidden.narrow(1, s, n)).reshape({n, -1});
    at::Tensor logProbs = at::log_softmax(logits, -1, at::kFloat);
    at::Tensor picked = logProbs.gather(1, targets.narrow(0, s, n).unsqueeze(1));
    total.sub_(picked.sum(at::kDouble));
  }
  return total;
}

} // namespace

PerplexityResult evaluatePerplexity(const DecoderModel &model, const std::vector<int32_t> &tokens,
                                    int64_t seqLen, ProgressObserver *observer,
                                    const CancelToken *cancel, int64_t maxWindows,
                                    const PerplexityScoring &scoring, BlockLoader *loader) {
  c10::InferenceMode guard;
  const int64_t first = scoring.firstScored;
  if (first < 0 || first > seqLen - 2)
    throw Error("perplexity: the first scored position " + std::to_string(first) +
                " leaves nothing to score in windows of " + std::to_string(seqLen) + " tokens");
  if (scoring.windowBos >= model.config().vocabSize)
    throw Error("perplexity: BOS id " + std::to_string(scoring.windowBos) +
                " is outside the vocabulary");
  const auto t0 = std::chrono::steady_clock::now();
  const TokenWindows split = tokenWindows(tokens, seqLen, maxWindows, model.device(), "perplexity");
  const int64_t windows = split.count;
  const at::Tensor &all = split.tokens;
  if (observer)
    observer->started("perplexity", windows * seqLen);

  double nllSum = 0;
  const int64_t predictedPerWindow = seqLen - 1 - first;
  const int64_t blocks = model.numBlocks();
  // Without a loader one group of every window, each run through all blocks
  // on its own; with one, the group's windows go block by block together.
  const int64_t group =
      loader ? windowsPerGroup(*loader, seqLen, model.config().hiddenSize) : windows;
  for (int64_t g0 = 0; g0 < windows; g0 += group) {
    const int64_t n = std::min(group, windows - g0);
    std::vector<at::Tensor> ids;
    for (int64_t w = g0; w < g0 + n; ++w) {
      ids.push_back(all.narrow(0, w * seqLen, seqLen));
      if (scoring.windowBos >= 0) {
        ids.back() = ids.back().clone();
        ids.back().narrow(0, 0, 1).fill_(int64_t(scoring.windowBos));
      }
    }
    std::vector<at::Tensor> hidden;
    if (loader)
      hidden = finalHiddenBlockByBlock(model, ids, *loader, cancel, [&](int64_t b) {
        if (observer)
          observer->progress(g0 * seqLen + n * seqLen * (b + 1) / (2 * blocks), windows * seqLen,
                             "block " + std::to_string(b + 1) + "/" + std::to_string(blocks) +
                                 " over windows " + std::to_string(g0 + 1) + ".." +
                                 std::to_string(g0 + n));
      });
    for (int64_t i = 0; i < n; ++i) {
      if (cancel)
        cancel->throwIfCancelled();
      const at::Tensor h = loader ? std::exchange(hidden[size_t(i)], at::Tensor())
                                  : finalHidden(model, ids[size_t(i)]);
      // Position i predicts token i+1; the last position predicts nothing. Positions
      // before `first` are context only: the LM head never sees them.
      nllSum += summedNll(model, h.narrow(1, first, predictedPerWindow),
                          ids[size_t(i)].narrow(0, first + 1, predictedPerWindow))
                    .item<double>();
      const int64_t w = g0 + i;
      if (observer) {
        const double running = std::exp(nllSum / double((w + 1) * predictedPerWindow));
        char detail[96];
        std::snprintf(detail, sizeof detail, "window %lld/%lld, perplexity so far %.4g",
                      static_cast<long long>(w + 1), static_cast<long long>(windows), running);
        // With a loader the group's block pass was the first half of its share.
        observer->progress(loader ? g0 * seqLen + (n + i + 1) * seqLen / 2 : (w + 1) * seqLen,
                           windows * seqLen, detail);
      }
    }
  }

  PerplexityResult r;
  r.windows = windows;
  r.seqLen = seqLen;
  r.firstScored = first;
  r.tokens = windows * predictedPerWindow;
  r.meanNll = nllSum / double(r.tokens);
  r.perplexity = std::exp(r.meanNll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokensPerSecond = r.seconds > 0 ? double(windows * seqLen) / r.seconds : 0.0;
  if (observer) {
    observer->metric("perplexity", r.perplexity);
    observer->metric("mean_nll", r.meanNll);
    observer->metric("tokens_per_second", r.tokensPerSecond);
    observer->finished();
  }
  return r;
}

} // namespace lrq
