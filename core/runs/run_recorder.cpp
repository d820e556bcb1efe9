#include "core/runs/run_recorder.h"

namespace lrq {

RunRecorder::RunRecorder(RunStore &store, std::string runId, ProgressObserver *forward)
    : store_(store), runId_(std::move(runId)), forward_(forward),
      start_(std::chrono::steady_clock::now()), lastBeat_(start_) {}

void RunRecorder::heartbeat(bool now) {
  std::unique_lock<std::mutex> lock(beatMutex_, std::defer_lock);
  if (now)
    lock.lock();
  else if (!lock.try_lock()) // another thread is beating right now
    return;
  const auto t = std::chrono::steady_clock::now();
  if (!now && std::chrono::duration<double>(t - lastBeat_).count() < heartbeatInterval_)
    return;
  lastBeat_ = t;
  try {
    store_.heartbeat(runId_);
    heartbeatError_.clear();
  } catch (const Error &e) {
    // Said once, and not again when a record just failed the same way.
    if (heartbeatError_ == e.what() || storageError_ == e.what())
      return;
    heartbeatError_ = e.what();
    storageError_ = e.what();
    if (forward_)
      forward_->log(LogLevel::Warning, std::string("run heartbeat not saved: ") + e.what());
  }
}

double RunRecorder::elapsedSeconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

template <typename Fn> void RunRecorder::store(Fn &&fn) {
  try {
    fn();
  } catch (const Error &e) {
    storageError_ = e.what();
    if (forward_)
      forward_->log(LogLevel::Warning, std::string("run record not saved: ") + e.what());
  }
}

void RunRecorder::started(const std::string &task, int64_t total) {
  heartbeat();
  if (forward_)
    forward_->started(task, total);
}

void RunRecorder::progress(int64_t done, int64_t total, const std::string &detail) {
  heartbeat();
  if (forward_)
    forward_->progress(done, total, detail);
}

void RunRecorder::blockStarted(int block, int blockCount) {
  heartbeat();
  curveBlock_ = block;
  curve_.clear();
  if (forward_)
    forward_->blockStarted(block, blockCount);
}

void RunRecorder::iterationLoss(int block, int iteration, double loss) {
  if (block != curveBlock_) { // no blockStarted: start the curve here
    curveBlock_ = block;
    curve_.clear();
  }
  curve_.push_back({iteration, static_cast<float>(loss)});
  heartbeat();
  if (forward_)
    forward_->iterationLoss(block, iteration, loss);
}

void RunRecorder::blockFinished(int block, double initialLoss, double finalLoss, double seconds) {
  BlockRecord record{block, initialLoss, finalLoss, seconds, {}};
  if (block == curveBlock_)
    record.curve.swap(curve_);
  curveBlock_ = -1;
  curve_.clear();
  if (block == heldoutBlock_) {
    record.heldoutInitialLoss = heldoutInitial_;
    record.heldoutFinalLoss = heldoutFinal_;
  }
  heldoutBlock_ = -1;
  store([&] { store_.appendBlock(runId_, record); });
  heartbeat(true);
  if (forward_)
    forward_->blockFinished(block, initialLoss, finalLoss, seconds);
}

void RunRecorder::blockHeldOut(int block, double initialLoss, double finalLoss) {
  heldoutBlock_ = block;
  heldoutInitial_ = initialLoss;
  heldoutFinal_ = finalLoss;
  if (forward_)
    forward_->blockHeldOut(block, initialLoss, finalLoss);
}

void RunRecorder::layerFinished(int block, const std::string &role, double mse, double sqnrDb) {
  heartbeat();
  reportedLayers_.insert({block, role});
  if (forward_)
    forward_->layerFinished(block, role, mse, sqnrDb);
}

void RunRecorder::metric(const std::string &name, double value) {
  store([&] { store_.setMetric(runId_, name, value); });
  if (forward_)
    forward_->metric(name, value);
}

void RunRecorder::log(LogLevel level, const std::string &message) {
  heartbeat();
  if (forward_)
    forward_->log(level, message);
}

void RunRecorder::finished() {
  // A stage (the method, a calibration pass) ended, not the run: evaluation and
  // export may follow. The quantization job records the run finished at its end.
  if (forward_)
    forward_->finished();
}

void RunRecorder::failed(const std::string &message) {
  store([&] { store_.finishRun(runId_, RunStatus::Failed, message, elapsedSeconds()); });
  if (forward_)
    forward_->failed(message);
}

void RunRecorder::cancelled() {
  store([&] { store_.finishRun(runId_, RunStatus::Cancelled, "cancelled", elapsedSeconds()); });
}

} // namespace lrq
