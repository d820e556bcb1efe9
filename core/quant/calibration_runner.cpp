#include "core/quant/calibration_runner.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "core/common/error.h"

namespace lrq::quant {

void checkCalibration(const CalibrationSet &calibration, const char *who) {
  const at::Tensor &t = calibration.tokens;
  if (!t.defined() || t.dim() != 2 || t.size(0) < 1 || t.size(1) < 1)
    throw Error(std::string(who) + ": the calibration set is empty (expected tokens [samples, "
                                   "seqLen])");
}

CalibrationStates::CalibrationStates(const DecoderModel &model, const CalibrationSet &calibration,
                                     int64_t batchSize)
    : model_(model) {
  checkCalibration(calibration, "calibration");
  at::NoGradGuard noGrad;
  const at::Tensor &tokens = calibration.tokens;
  samples_ = tokens.size(0);
  const int64_t step = std::max<int64_t>(1, batchSize);
  for (int64_t s = 0; s < samples_; s += step)
    batches_.push_back(model.embed(tokens.narrow(0, s, std::min(step, samples_ - s))));
}

void CalibrationStates::runBlock(int64_t block, bool advance, const CancelToken *cancel) {
  at::NoGradGuard noGrad;
  for (at::Tensor &h : batches_) {
    if (cancel)
      cancel->throwIfCancelled();
    at::Tensor out = model_.runBlock(block, h);
    if (advance)
      h = out;
  }
}

} // namespace lrq::quant
