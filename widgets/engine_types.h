#pragma once
// Engine value types carried through Qt signals (queued connections and
// QSignalSpy need them registered with the meta-type system).
#include <QMetaType>
#include <QString>
#include <QVector>

#include "core/session/model_session.h"

Q_DECLARE_METATYPE(lrq::TensorStatistics)
Q_DECLARE_METATYPE(lrq::Histogram)
Q_DECLARE_METATYPE(lrq::PerplexityReport)

namespace lrq::ui {

// Registers the types above; call once before queued connections use them.
void registerEngineMetaTypes();

// "134.5 M", "28.3 M", "576" — parameter counts the way people read them.
QString formatCount(int64_t count);
// "576 × 1536"
QString formatShape(const std::vector<int64_t> &shape);
// 5 significant digits, scientific for tiny or huge magnitudes.
QString formatNumber(double value);
// "3.40 s", "12.3 s", "1 min 05 s"
QString formatSeconds(double seconds);
// "Full-precision reference: dequantized from Q4_1"; empty when the file is float.
QString baselineNoteText(const lrq::ModelSummary &summary);
} // namespace lrq::ui
