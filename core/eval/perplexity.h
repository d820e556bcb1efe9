#pragma once
#include <cstdint>
#include <vector>

#include "core/common/progress.h"
#include "core/model/decoder.h"

namespace lrq {

struct PerplexityResult {
  double perplexity = 0;
  double meanNll = 0;  // natural log
  int64_t tokens = 0;  // tokens whose NLL was averaged (predicted tokens)
  int64_t windows = 0; // non-overlapping windows of seqLen tokens
  int64_t seqLen = 0;
  double seconds = 0;
  double tokensPerSecond = 0; // input tokens processed per second
};

// shared/ALGORITHMS.md: split the token stream into non-overlapping windows of
// seqLen tokens (a trailing partial window is dropped), average the next-token
// NLL over all predicted positions of all windows, ppl = exp(mean).
// Throws lrq::Error if there is not a single full window.
PerplexityResult evaluatePerplexity(const DecoderModel &model, const std::vector<int32_t> &tokens,
                                    int64_t seqLen, ProgressObserver *observer = nullptr,
                                    const CancelToken *cancel = nullptr, int64_t maxWindows = 0);

} // namespace lrq
