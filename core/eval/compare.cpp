#include "core/eval/compare.h"
#include "core/eval/token_windows.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/common/error.h"

namespace lrq {
namespace {

// Positions whose logits are materialised at once. Both models' logits and
// their log-softmaxes live together, about 7 tensors of [chunk, vocab] float32:
// 32 positions keep that near 45 MB for a 49k vocabulary (128 took ~175 MB of
// the desktop's peak while it holds two models).
constexpr int64_t kHeadChunk = 32;

struct WindowSums {
  double nll = 0, refNll = 0, kl = 0, maxKl = 0;
  int64_t agree = 0;
};

// hModelAll / hRefAll: the model's / the reference's final hidden states of
// this window when already computed (block by block), else undefined.
WindowSums compareWindow(const DecoderModel &model, const DecoderModel &reference,
                         const at::Tensor &ids, const at::Tensor &hModelAll,
                         const at::Tensor &hRefAll) {
  const int64_t predicted = ids.size(0) - 1;
  const at::Tensor h =
      (hModelAll.defined() ? hModelAll : finalHidden(model, ids)).narrow(1, 0, predicted);
  const at::Tensor hRef =
      (hRefAll.defined() ? hRefAll : finalHidden(reference, ids)).narrow(1, 0, predicted);
  const at::Tensor targets = ids.narrow(0, 1, predicted);
  const auto dopt = h.options().dtype(at::kDouble);
  at::Tensor nll = at::zeros({}, dopt), refNll = at::zeros({}, dopt), kl = at::zeros({}, dopt);
  at::Tensor maxKl = at::zeros({}, dopt);
  at::Tensor agree = at::zeros({}, h.options().dtype(at::kLong));
  for (int64_t s = 0; s < predicted; s += kHeadChunk) {
    const int64_t n = std::min(kHeadChunk, predicted - s);
    const at::Tensor logits = model.head(h.narrow(1, s, n)).reshape({n, -1});
    const at::Tensor refLogits = reference.head(hRef.narrow(1, s, n)).reshape({n, -1});
    const at::Tensor lp = at::log_softmax(logits, -1, at::kFloat);
    const at::Tensor lpRef = at::log_softmax(refLogits, -1, at::kFloat);
    const at::Tensor t = targets.narrow(0, s, n).unsqueeze(1);
    nll.sub_(lp.gather(1, t).sum(at::kDouble));
    refNll.sub_(lpRef.gather(1, t).sum(at::kDouble));
    // KL per position: sum_v p_ref (log p_ref - log p), summed over the vocab in float64.
    const at::Tensor klRows = (lpRef.exp() * (lpRef - lp)).sum(-1, false, at::kDouble);
    kl.add_(klRows.sum());
    maxKl = at::maximum(maxKl, klRows.max());
    agree.add_(logits.argmax(-1).eq(refLogits.argmax(-1)).sum());
  }
  WindowSums w;
  w.nll = nll.item<double>();
  w.refNll = refNll.item<double>();
  w.kl = kl.item<double>();
  w.maxKl = maxKl.item<double>();
  w.agree = agree.item<int64_t>();
  return w;
}

} // namespace

CompareResult compareToReference(const DecoderModel &model, const DecoderModel &reference,
                                 const std::vector<int32_t> &tokens, int64_t seqLen,
                                 ProgressObserver *observer, const CancelToken *cancel,
                                 int64_t maxWindows, BlockLoader *referenceLoader,
                                 BlockLoader *modelLoader) {
  if (seqLen < 2)
    throw Error("comparison: window length must be at least 2 tokens, got " +
                std::to_string(seqLen));
  if (model.config().vocabSize != reference.config().vocabSize)
    throw Error("comparison: the model has " + std::to_string(model.config().vocabSize) +
                " tokens but the reference has " + std::to_string(reference.config().vocabSize));
  if (model.device() != reference.device())
    throw Error("comparison: the model and the reference are on different devices");
  c10::InferenceMode guard;
  const auto t0 = std::chrono::steady_clock::now();
  const TokenWindows split = tokenWindows(tokens, seqLen, maxWindows, model.device(), "comparison");
  const int64_t windows = split.count;
  const at::Tensor &all = split.tokens;
  if (observer)
    observer->started("compare", windows * seqLen);

  // Streamed models run block by block over a group of windows at a time,
  // then the heads compare that group's windows one by one. Progress counts
  // passes: each streamed model's is one per window, the heads' (with any
  // model not streamed) another.
  const int64_t streams = (referenceLoader ? 1 : 0) + (modelLoader ? 1 : 0);
  // Sized by the wider of the two hidden states (the models may differ in
  // size; only the vocabulary must match).
  const int64_t group =
      streams == 0
          ? windows
          : windowsPerGroup(referenceLoader ? *referenceLoader : *modelLoader, seqLen,
                            std::max(model.config().hiddenSize, reference.config().hiddenSize),
                            streams);
  const auto report = [&](double windowPasses, const std::string &detail) {
    if (observer)
      observer->progress(int64_t(windowPasses * double(seqLen) / double(streams + 1)),
                         windows * seqLen, detail);
  };
  double nll = 0, refNll = 0, kl = 0, maxKl = 0;
  int64_t agree = 0;
  const int64_t predictedPerWindow = seqLen - 1;
  for (int64_t g0 = 0; g0 < windows; g0 += group) {
    const int64_t n = std::min(group, windows - g0);
    std::vector<at::Tensor> ids;
    for (int64_t w = g0; w < g0 + n; ++w)
      ids.push_back(all.narrow(0, w * seqLen, seqLen));
    const auto stream = [&](const DecoderModel &m, BlockLoader *loader, int64_t pass,
                            const char *who) {
      if (!loader)
        return std::vector<at::Tensor>(size_t(n));
      const int64_t blocks = m.numBlocks();
      return finalHiddenBlockByBlock(m, ids, *loader, cancel, [&](int64_t b) {
        report(double(g0 * (streams + 1) + pass * n) + double(n * (b + 1)) / double(blocks),
               std::string(who) + ", block " + std::to_string(b + 1) + "/" +
                   std::to_string(blocks) + " over windows " + std::to_string(g0 + 1) + ".." +
                   std::to_string(g0 + n));
      });
    };
    std::vector<at::Tensor> refHidden = stream(reference, referenceLoader, 0, "reference");
    std::vector<at::Tensor> modelHidden =
        stream(model, modelLoader, referenceLoader ? 1 : 0, "model");
    for (int64_t i = 0; i < n; ++i) {
      if (cancel)
        cancel->throwIfCancelled();
      const WindowSums s = compareWindow(model, reference, ids[size_t(i)], modelHidden[size_t(i)],
                                         refHidden[size_t(i)]);
      modelHidden[size_t(i)] = refHidden[size_t(i)] = at::Tensor();
      nll += s.nll;
      refNll += s.refNll;
      kl += s.kl;
      maxKl = std::max(maxKl, s.maxKl);
      agree += s.agree;
      const int64_t w = g0 + i;
      const double done = double((w + 1) * predictedPerWindow);
      char detail[128];
      std::snprintf(detail, sizeof detail, "window %lld/%lld, KL so far %.4g, top-1 %.4f",
                    static_cast<long long>(w + 1), static_cast<long long>(windows), kl / done,
                    double(agree) / done);
      report(double(g0 * (streams + 1) + streams * n + i + 1), detail);
    }
  }

  CompareResult r;
  r.windows = windows;
  r.seqLen = seqLen;
  r.tokens = windows * predictedPerWindow;
  r.meanNll = nll / double(r.tokens);
  r.referenceMeanNll = refNll / double(r.tokens);
  r.perplexity = std::exp(r.meanNll);
  r.referencePerplexity = std::exp(r.referenceMeanNll);
  // Rounding can make a per-position sum a hair negative for identical models.
  r.meanKl = kl / double(r.tokens);
  r.maxKl = maxKl;
  r.top1Agreement = double(agree) / double(r.tokens);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (observer) {
    observer->metric("perplexity", r.perplexity);
    observer->metric("reference_perplexity", r.referencePerplexity);
    observer->metric("mean_kl", r.meanKl);
    observer->metric("top1_agreement", r.top1Agreement);
    observer->finished();
  }
  return r;
}

} // namespace lrq
