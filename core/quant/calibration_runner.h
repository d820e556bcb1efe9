#pragma once
// Runs a calibration set through a decoder block by block, keeping the hidden
// states of every sample between blocks (samples x seqLen x hidden floats) and
// computing in batches of a few samples, so the working memory of attention
// and MLP stays bounded whatever the calibration size. Used by the activation
// calibration, SmoothQuant and GPTQ. Internal to core/quant.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "core/common/progress.h"
#include "core/model/decoder.h"
#include "core/quant/method.h"

namespace lrq::quant {

class CalibrationStates {
public:
  // Embeds the calibration windows, batchSize samples per batch.
  CalibrationStates(const DecoderModel &model, const CalibrationSet &calibration,
                    int64_t batchSize);

  // Runs block over every batch; with advance, the states become its outputs
  // (the next block's inputs), otherwise they are kept (a pass to let input
  // captures see the block's linears). Checks cancel between batches.
  void runBlock(int64_t block, bool advance, const CancelToken *cancel = nullptr);

  const std::vector<at::Tensor> &batches() const { return batches_; }
  int64_t samples() const { return samples_; }

private:
  const DecoderModel &model_;
  std::vector<at::Tensor> batches_; // [b, T, hidden]
  int64_t samples_ = 0;
};

// Checks that the calibration set holds tokens [samples, seqLen]; throws
// lrq::Error naming `who` otherwise.
void checkCalibration(const CalibrationSet &calibration, const char *who);

} // namespace lrq::quant
