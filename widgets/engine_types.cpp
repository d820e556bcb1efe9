#include "widgets/engine_types.h"

#include <QObject>
#include <QStringList>

#include <cmath>

namespace lrq::ui {

void registerEngineMetaTypes() {
  qRegisterMetaType<lrq::TensorStatistics>("lrq::TensorStatistics");
  qRegisterMetaType<lrq::Histogram>("lrq::Histogram");
  qRegisterMetaType<lrq::PerplexityReport>("lrq::PerplexityReport");
}

QString formatCount(int64_t count) {
  const double v = static_cast<double>(count);
  if (std::abs(v) >= 1e9)
    return QStringLiteral("%1 B").arg(v / 1e9, 0, 'f', 2);
  if (std::abs(v) >= 1e6)
    return QStringLiteral("%1 M").arg(v / 1e6, 0, 'f', 1);
  if (std::abs(v) >= 1e4)
    return QStringLiteral("%1 k").arg(v / 1e3, 0, 'f', 1);
  return QString::number(count);
}

QString formatShape(const std::vector<int64_t> &shape) {
  QStringList parts;
  for (int64_t d : shape)
    parts << QString::number(d);
  return parts.join(QStringLiteral(" × "));
}

QString formatNumber(double value) {
  if (!std::isfinite(value))
    return QString::number(value);
  const double a = std::abs(value);
  if (a != 0.0 && (a < 1e-3 || a >= 1e6))
    return QString::number(value, 'e', 3);
  return QString::number(value, 'g', 5);
}

QString formatSeconds(double seconds) {
  if (seconds < 60.0)
    return QStringLiteral("%1 s").arg(seconds, 0, 'f', seconds < 10.0 ? 2 : 1);
  const int total = static_cast<int>(std::lround(seconds));
  return QStringLiteral("%1 min %2 s").arg(total / 60).arg(total % 60, 2, 10, QLatin1Char('0'));
}

QString baselineNoteText(const lrq::ModelSummary &summary) {
  if (summary.baselineNote.empty())
    return {};
  return QObject::tr("Full-precision reference: %1")
      .arg(QString::fromStdString(summary.baselineNote));
}
} // namespace lrq::ui
