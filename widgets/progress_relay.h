#pragma once
// Adapts the engine's ProgressObserver (called on a worker thread) to Qt
// signals. Receivers on the UI thread get them as queued calls; per-step
// progress is throttled so the UI repaints at most ~30 times a second
// however fast the engine's loop runs.
#include <QObject>
#include <QString>

#include <chrono>
#include <mutex>

#include "core/common/progress.h"

namespace lrq::ui {

// Writes an engine log line to spdlog at its level (the log panel shows it).
void logToSpdlog(lrq::LogLevel level, const std::string &message);

class ProgressRelay : public QObject, public lrq::ProgressObserver {
  Q_OBJECT
public:
  explicit ProgressRelay(QObject *parent = nullptr, int minIntervalMs = 33);

  void started(const std::string &task, int64_t total) override;
  void progress(int64_t done, int64_t total, const std::string &detail) override;
  void blockStarted(int block, int blockCount) override;
  void metric(const std::string &name, double value) override;
  void log(lrq::LogLevel level, const std::string &message) override;
  void finished() override;
  void failed(const std::string &message) override;

  // How many progress signals were let through (for tests of the throttle).
  int progressSignals() const;

signals:
  void taskStarted(const QString &task, qint64 total);
  void progressed(qint64 done, qint64 total, const QString &detail);
  void metricReported(const QString &name, double value);
  void taskFinished();
  void taskFailed(const QString &message);

private:
  bool admit(bool force);

  const std::chrono::milliseconds minInterval_;
  mutable std::mutex mutex_;
  std::chrono::steady_clock::time_point lastEmit_{};
  bool emittedOnce_ = false;
  int progressSignals_ = 0;
};

} // namespace lrq::ui
