#pragma once
// Records a run as it happens: an observer that turns the engine's progress
// events into run-store rows (block curves, metrics, final status) and passes
// every event on to another observer (the terminal or the desktop). Every event
// also refreshes the run's heartbeat (at most every heartbeatInterval seconds;
// always at a block's end), which tells readers on other hosts that the run
// is alive.
#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/common/progress.h"
#include "core/runs/run_store.h"

namespace lrq {

class RunRecorder : public ProgressObserver {
public:
  // runId must exist in store (createRun). forward may be null.
  RunRecorder(RunStore &store, std::string runId, ProgressObserver *forward = nullptr);

  const std::string &runId() const { return runId_; }
  // The last storage failure, empty if none. A failing store never stops the
  // run: the failure is logged (Warning) to the forwarded observer instead.
  const std::string &storageError() const { return storageError_; }

  // Whether layerFinished already passed this layer on.
  bool layerReported(int block, const std::string &role) const {
    return reportedLayers_.count({block, role}) > 0;
  }

  // Marks the run cancelled (there is no observer event for it).
  void cancelled();

  // Seconds between two heartbeats at most (default 2; 0 = at every event).
  void setHeartbeatInterval(double seconds) { heartbeatInterval_ = seconds; }
  // Refreshes the heartbeat now, or when the interval has passed (throttled).
  void heartbeat(bool now = false);

  void started(const std::string &task, int64_t total) override;
  void progress(int64_t done, int64_t total, const std::string &detail) override;
  void blockStarted(int block, int blockCount) override;
  void iterationLoss(int block, int iteration, double loss) override;
  void blockFinished(int block, double initialLoss, double finalLoss, double seconds) override;
  void blockHeldOut(int block, double initialLoss, double finalLoss) override;
  void layerFinished(int block, const std::string &role, double mse, double sqnrDb) override;
  void metric(const std::string &name, double value) override;
  void log(LogLevel level, const std::string &message) override;
  void finished() override;
  void failed(const std::string &message) override;

private:
  template <typename Fn> void store(Fn &&fn);
  double elapsedSeconds() const;

  RunStore &store_;
  std::string runId_;
  ProgressObserver *forward_;
  std::chrono::steady_clock::time_point start_;
  int curveBlock_ = -1;
  std::vector<LossPoint> curve_;
  int heldoutBlock_ = -1; // the held-out figures waiting for their blockFinished
  double heldoutInitial_ = 0, heldoutFinal_ = 0;
  std::string storageError_;
  std::set<std::pair<int, std::string>> reportedLayers_;
  double heartbeatInterval_ = 2.0;
  std::chrono::steady_clock::time_point lastBeat_;
  std::string heartbeatError_; // said once, not at every beat
  std::mutex beatMutex_;       // events may come from several threads
};

} // namespace lrq
