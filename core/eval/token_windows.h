#pragma once
// Non-overlapping windows of seqLen tokens (shared/ALGORITHMS.md, evaluation
// conventions): the split perplexity and the comparison against a reference use.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace lrq {

struct TokenWindows {
  int64_t count = 0; // full windows (a trailing partial window is dropped)
  at::Tensor tokens; // [count * seqLen] int64 on the requested device
};

// At most maxWindows (0: all). Throws lrq::Error "<what>: N tokens do not fill
// one window of seqLen" when there is no full window.
TokenWindows tokenWindows(const std::vector<int32_t> &tokens, int64_t seqLen, int64_t maxWindows,
                          at::Device device, const char *what);

} // namespace lrq
