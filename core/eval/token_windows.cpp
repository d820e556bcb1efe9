#include "core/eval/token_windows.h"

#include <algorithm>
#include <string>

#include "core/common/error.h"

namespace lrq {

TokenWindows tokenWindows(const std::vector<int32_t> &tokens, int64_t seqLen, int64_t maxWindows,
                          at::Device device, const char *what) {
  if (seqLen < 2)
    throw Error(std::string(what) + ": windows need at least 2 tokens, got " +
                std::to_string(seqLen));
  TokenWindows w;
  w.count = int64_t(tokens.size()) / seqLen;
  if (maxWindows > 0)
    w.count = std::min(w.count, maxWindows);
  if (w.count == 0)
    throw Error(std::string(what) + ": " + std::to_string(tokens.size()) +
                " tokens do not fill one window of " + std::to_string(seqLen));
  w.tokens = at::from_blob(const_cast<int32_t *>(tokens.data()), {w.count * seqLen}, at::kInt)
                 .to(device, at::kLong);
  return w;
}

} // namespace lrq
