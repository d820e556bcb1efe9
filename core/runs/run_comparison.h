#pragma once
// Internal to lrq_runs: builds the comparison table from what the store read.
#include <cstdint>
#include <vector>

#include "core/runs/run_record.h"

namespace lrq::runs_detail {

// Aggregates over a run's block and layer records.
struct RunTotals {
  int blocks = 0;
  double initialLossSum = 0;
  double finalLossSum = 0;
  double blockSeconds = 0;
  int heldoutBlocks = 0;            // blocks with a held-out loss
  double heldoutInitialLossSum = 0; // over those blocks
  double heldoutFinalLossSum = 0;
  double heldoutTrainFinalLossSum = 0; // the training final loss over the same blocks
  int layers = 0;
  int64_t learnableParams = 0;
  double meanSqnrDb = 0;
  double meanMse = 0;
};

RunComparison buildComparison(const std::vector<RunInfo> &runs,
                              const std::vector<RunTotals> &totals);

} // namespace lrq::runs_detail
