#pragma once
// A quantized model against its full-precision reference on the windows
// perplexity uses: both perplexities, the mean KL divergence of the model's
// next-token distribution from the reference's, and how often their top-1
// predictions agree.
#include <cstdint>
#include <vector>

#include "core/common/progress.h"
#include "core/eval/block_stream.h"
#include "core/model/decoder.h"

namespace lrq {

struct CompareResult {
  double perplexity = 0;          // the model's
  double referencePerplexity = 0; // the reference's
  double meanNll = 0;             // natural log, the model's
  double referenceMeanNll = 0;
  // Mean over predicted positions of KL(P_ref || P_model) =
  // sum_v p_ref(v) (log p_ref(v) - log p_model(v)), natural log.
  double meanKl = 0;
  double maxKl = 0; // largest KL of a single position
  // Fraction of predicted positions where argmax logits agree.
  double top1Agreement = 0;
  int64_t tokens = 0;  // predicted positions averaged over
  int64_t windows = 0; // non-overlapping windows of seqLen tokens
  int64_t seqLen = 0;
  double seconds = 0;
};

// Same windows as evaluatePerplexity (non-overlapping, trailing partial window
// dropped, at most maxWindows when > 0). The LM heads are applied to a slice of
// positions at a time, log-softmax in float32 and sums in float64, so a window
// never holds [seqLen, vocab] logits in full. Both models must share the vocab
// size and device. Throws lrq::Error when there is no full window or the
// models do not match; lrq::Cancelled between windows.
// With a loader, that model runs block by block (block_stream.h) over a group
// of windows at a time before the heads compare the group's windows; the
// figures are the same to the bit, as every window goes through the same
// operations either way.
CompareResult compareToReference(const DecoderModel &model, const DecoderModel &reference,
                                 const std::vector<int32_t> &tokens, int64_t seqLen,
                                 ProgressObserver *observer = nullptr,
                                 const CancelToken *cancel = nullptr, int64_t maxWindows = 0,
                                 BlockLoader *referenceLoader = nullptr,
                                 BlockLoader *modelLoader = nullptr);

} // namespace lrq
