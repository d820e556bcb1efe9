#pragma once
// A spdlog sink that hands formatted lines to Qt. spdlog calls sink_it_ on
// whatever thread logged; the emitter's signal reaches receivers on the UI
// thread as a queued call, so the log panel is fed safely from workers.
#include <QObject>
#include <QString>

#include <memory>
#include <mutex>

#include <spdlog/sinks/base_sink.h>

namespace lrq::ui {

class LogEmitter : public QObject {
  Q_OBJECT
signals:
  // level: spdlog::level::level_enum as int
  void lineLogged(int level, const QString &line);
};

class QtSignalSink : public spdlog::sinks::base_sink<std::mutex> {
public:
  QtSignalSink();
  LogEmitter *emitter() const { return emitter_.get(); }

protected:
  void sink_it_(const spdlog::details::log_msg &msg) override;
  void flush_() override {}

private:
  std::unique_ptr<LogEmitter> emitter_;
};

// Adds a QtSignalSink to spdlog's default logger; remove it with
// uninstallLogSink before its receivers go away.
std::shared_ptr<QtSignalSink> installLogSink();
void uninstallLogSink(const std::shared_ptr<QtSignalSink> &sink);

} // namespace lrq::ui
