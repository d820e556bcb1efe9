#pragma once
#include <cstdint>
#include <vector>

#include "core/common/progress.h"
#include "core/eval/block_stream.h"
#include "core/model/decoder.h"

namespace lrq {

// Which positions of each window are scored.
//  - all (default): every position but the last, i.e. seqLen - 1 predictions.
//  - from firstScored: only positions firstScored .. seqLen - 2; the earlier ones
//    are context. llama.cpp's llama-perplexity scores from seqLen / 2.
// windowBos >= 0 replaces each window's first token with that id (llama-perplexity
// does this for models whose tokenizer adds BOS); the first token is never a
// target, so only the context changes.
struct PerplexityScoring {
  int64_t firstScored = 0;
  int32_t windowBos = -1;
};

struct PerplexityResult {
  double perplexity = 0;
  double meanNll = 0;  // natural log
  int64_t tokens = 0;  // tokens whose NLL was averaged (predicted tokens)
  int64_t windows = 0; // non-overlapping windows of seqLen tokens
  int64_t seqLen = 0;
  int64_t firstScored = 0; // first scored position of each window
  double seconds = 0;
  double tokensPerSecond = 0; // input tokens processed per second
};

// shared/ALGORITHMS.md: split the token stream into non-overlapping windows of
// seqLen tokens (a trailing partial window is dropped), average the next-token
// NLL over all predicted positions of all windows (or those scoring selects),
// ppl = exp(mean). Throws lrq::Error if there is not a single full window, or if
// scoring leaves no position of a window to score.
// With a loader, the model runs block by block (block_stream.h) over a group of
// windows at a time, each block loaded once per group; same figures to the bit.
PerplexityResult evaluatePerplexity(const DecoderModel &model, const std::vector<int32_t> &tokens,
                                    int64_t seqLen, ProgressObserver *observer = nullptr,
                                    const CancelToken *cancel = nullptr, int64_t maxWindows = 0,
                                    const PerplexityScoring &scoring = {},
                                    BlockLoader *loader = nullptr);

} // namespace lrq
