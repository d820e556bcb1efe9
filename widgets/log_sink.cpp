#include "widgets/log_sink.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace lrq::ui {

QtSignalSink::QtSignalSink() : emitter_(std::make_unique<LogEmitter>()) {
  set_formatter(std::make_unique<spdlog::pattern_formatter>(
      "%H:%M:%S.%e  %-7l %v", spdlog::pattern_time_type::local, std::string()));
}

void QtSignalSink::sink_it_(const spdlog::details::log_msg &msg) {
  spdlog::memory_buf_t formatted;
  formatter_->format(msg, formatted);
  emit emitter_->lineLogged(
      static_cast<int>(msg.level),
      QString::fromUtf8(formatted.data(), static_cast<int>(formatted.size())));
}

std::shared_ptr<QtSignalSink> installLogSink() {
  auto sink = std::make_shared<QtSignalSink>();
  spdlog::default_logger()->sinks().push_back(sink);
  return sink;
}

void uninstallLogSink(const std::shared_ptr<QtSignalSink> &sink) {
  if (!sink)
    return;
  auto &sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
}

} // namespace lrq::ui
