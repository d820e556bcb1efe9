#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/common/progress.h"
#include "core/model/decoder.h"

namespace lrq {

struct SamplingOptions {
  int64_t maxNewTokens = 64;
  double temperature = 0.0; // 0: greedy
  int64_t topK = 0;         // 0: off
  double topP = 1.0;        // 1: off
  uint64_t seed = 0;
  int64_t eosId = -1; // stop when produced (-1: never)
};

// Autoregressive generation with a KV cache. onToken is called for every new
// token; returns the new tokens (without the prompt).
std::vector<int32_t> generateTokens(const DecoderModel &model, const std::vector<int32_t> &prompt,
                                    const SamplingOptions &options,
                                    const std::function<void(int32_t)> &onToken = {},
                                    const CancelToken *cancel = nullptr);

} // namespace lrq
