#pragma once
// Per-input-channel activation statistics of a model's linears on the
// calibration set: the activation scale s of L²QER (ALGORITHMS.md, "LQER /
// L²QER"). For each calibration batch, the mean |x| over the batch's tokens of
// every input channel; a running max of that across batches; clamped to at
// least 1e-4; divided by sqrt(min(s) max(s)). Internal to core: includes ATen.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/common/progress.h"
#include "core/model/decoder.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"

namespace lrq::quant {

struct LinearActivationStats {
  int64_t block = -1;
  std::string layer;   // HF role name ("q_proj", ...)
  at::Tensor batchMax; // [in] float64 CPU: max over batches of the per-batch mean |x|
  at::Tensor scale;    // [in] float64 CPU: normaliseActivationScale(batchMax)
  int64_t batches = 0; // calibration batches seen
  int64_t tokens = 0;  // tokens seen over all batches
};

// clamp(raw, >= clampMin) / sqrt(min(clamped) * max(clamped)), in float64.
at::Tensor normaliseActivationScale(const at::Tensor &raw, double clampMin = 1e-4);

// Runs the model as it is now (normally full precision) over the calibration
// windows, batchSize windows at a time, through the blocks up to the last one
// the selection holds, and returns the statistic of every selected block
// linear, in block order then blockLinears order. The statistic is of the
// input the weight sees: after any input transform already installed on the
// linear. Memory is one batch's activations. The model is left as it was
// (transforms restored, also on exceptions). Reports one progress step per
// batch and checks cancel between batches (throws lrq::Cancelled).
std::vector<LinearActivationStats>
collectActivationStats(DecoderModel &model, const CalibrationSet &calibration,
                       const LayerSelection &selection, int64_t batchSize,
                       ProgressObserver *observer = nullptr, const CancelToken *cancel = nullptr);

} // namespace lrq::quant
