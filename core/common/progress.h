#pragma once
// The seam between the engine and its front ends (CLI, desktop). Plain C++,
// no Qt: the engine calls these hooks from whatever thread it runs on; front
// ends marshal them to their own thread.
#include <atomic>
#include <cstdint>
#include <string>

#include "core/common/error.h"

namespace lrq {

enum class LogLevel { Debug, Info, Warning, Error };

class ProgressObserver {
public:
  virtual ~ProgressObserver() = default;
  // A task (e.g. "perplexity", "load") started; total is in its own units
  // (tokens, bytes, blocks), 0 when unknown.
  virtual void started(const std::string & /*task*/, int64_t /*total*/) {}
  virtual void progress(int64_t /*done*/, int64_t /*total*/, const std::string & /*detail*/) {}
  // A run was recorded (or reopened, on resume) in the run store at storePath.
  virtual void runStarted(const std::string & /*runId*/, const std::string & /*storePath*/) {}
  virtual void blockStarted(int /*block*/, int /*blockCount*/) {}
  virtual void iterationLoss(int /*block*/, int /*iteration*/, double /*loss*/) {}
  virtual void blockFinished(int /*block*/, double /*initialLoss*/, double /*finalLoss*/,
                             double /*seconds*/) {}
  // The block's reconstruction loss on calibration samples never trained on,
  // before and after training; sent just before its blockFinished, only by
  // runs that have held-out samples.
  virtual void blockHeldOut(int /*block*/, double /*initialLoss*/, double /*finalLoss*/) {}
  // A layer's quantization error, once its Ŵ is final (role: "q_proj", ...).
  virtual void layerFinished(int /*block*/, const std::string & /*role*/, double /*mse*/,
                             double /*sqnrDb*/) {}
  virtual void metric(const std::string & /*name*/, double /*value*/) {}
  virtual void log(LogLevel /*level*/, const std::string & /*message*/) {}
  virtual void finished() {}
  virtual void failed(const std::string & /*message*/) {}
};

// Passes every event on to another observer (or none); decorators override
// the events they act on and call through.
class ForwardingObserver : public ProgressObserver {
public:
  explicit ForwardingObserver(ProgressObserver *forward) : forward_(forward) {}
  void started(const std::string &task, int64_t total) override {
    if (forward_)
      forward_->started(task, total);
  }
  void progress(int64_t done, int64_t total, const std::string &detail) override {
    if (forward_)
      forward_->progress(done, total, detail);
  }
  void runStarted(const std::string &runId, const std::string &storePath) override {
    if (forward_)
      forward_->runStarted(runId, storePath);
  }
  void blockStarted(int block, int blockCount) override {
    if (forward_)
      forward_->blockStarted(block, blockCount);
  }
  void iterationLoss(int block, int iteration, double loss) override {
    if (forward_)
      forward_->iterationLoss(block, iteration, loss);
  }
  void blockFinished(int block, double initialLoss, double finalLoss, double seconds) override {
    if (forward_)
      forward_->blockFinished(block, initialLoss, finalLoss, seconds);
  }
  void blockHeldOut(int block, double initialLoss, double finalLoss) override {
    if (forward_)
      forward_->blockHeldOut(block, initialLoss, finalLoss);
  }
  void layerFinished(int block, const std::string &role, double mse, double sqnrDb) override {
    if (forward_)
      forward_->layerFinished(block, role, mse, sqnrDb);
  }
  void metric(const std::string &name, double value) override {
    if (forward_)
      forward_->metric(name, value);
  }
  void log(LogLevel level, const std::string &message) override {
    if (forward_)
      forward_->log(level, message);
  }
  void finished() override {
    if (forward_)
      forward_->finished();
  }
  void failed(const std::string &message) override {
    if (forward_)
      forward_->failed(message);
  }

private:
  ProgressObserver *forward_;
};

// Shared flag checked by long loops between units of work.
class CancelToken {
public:
  void cancel() { flag_.store(true, std::memory_order_relaxed); }
  void reset() { flag_.store(false, std::memory_order_relaxed); }
  bool cancelled() const { return flag_.load(std::memory_order_relaxed); }
  void throwIfCancelled() const {
    if (cancelled())
      throw Cancelled();
  }

private:
  std::atomic<bool> flag_{false};
};

} // namespace lrq
