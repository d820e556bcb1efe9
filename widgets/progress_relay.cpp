#include "widgets/progress_relay.h"

#include <spdlog/spdlog.h>

namespace lrq::ui {

ProgressRelay::ProgressRelay(QObject *parent, int minIntervalMs)
    : QObject(parent), minInterval_(minIntervalMs) {}

bool ProgressRelay::admit(bool force) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  if (!force && emittedOnce_ && now - lastEmit_ < minInterval_)
    return false;
  lastEmit_ = now;
  emittedOnce_ = true;
  ++progressSignals_;
  return true;
}

int ProgressRelay::progressSignals() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return progressSignals_;
}

void ProgressRelay::started(const std::string &task, int64_t total) {
  emit taskStarted(QString::fromStdString(task), total);
}

void ProgressRelay::progress(int64_t done, int64_t total, const std::string &detail) {
  // The last step always goes through so bars end at 100 %.
  const bool last = total > 0 && done >= total;
  if (admit(last))
    emit progressed(done, total, QString::fromStdString(detail));
}

void ProgressRelay::blockStarted(int block, int blockCount) {
  if (admit(block + 1 >= blockCount))
    emit progressed(block, blockCount,
                    QStringLiteral("block %1/%2").arg(block + 1).arg(blockCount));
}

void ProgressRelay::metric(const std::string &name, double value) {
  emit metricReported(QString::fromStdString(name), value);
}

void logToSpdlog(lrq::LogLevel level, const std::string &message) {
  // spdlog is thread-safe; the log panel's sink marshals to the UI thread.
  switch (level) {
  case lrq::LogLevel::Debug:
    spdlog::debug("{}", message);
    break;
  case lrq::LogLevel::Info:
    spdlog::info("{}", message);
    break;
  case lrq::LogLevel::Warning:
    spdlog::warn("{}", message);
    break;
  case lrq::LogLevel::Error:
    spdlog::error("{}", message);
    break;
  }
}

void ProgressRelay::log(lrq::LogLevel level, const std::string &message) {
  logToSpdlog(level, message);
}

void ProgressRelay::finished() {
  emit taskFinished();
}

void ProgressRelay::failed(const std::string &message) {
  emit taskFailed(QString::fromStdString(message));
}

} // namespace lrq::ui
