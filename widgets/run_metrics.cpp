#include "widgets/run_metrics.h"

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QSet>

#include <algorithm>

#include "core/common/error.h"
#include "core/quant/scheme.h"
#include "core/quant/storage_bits.h"

namespace lrq::ui {

namespace {

QJsonObject parseObject(const QString &json) {
  const QJsonDocument doc = QJsonDocument::fromJson(json.toUtf8());
  return doc.isObject() ? doc.object() : QJsonObject();
}

} // namespace

QList<LinearShape> defaultModelBlockShapes() {
  return {{QStringLiteral("q_proj"), 576, 576},     {QStringLiteral("k_proj"), 192, 576},
          {QStringLiteral("v_proj"), 192, 576},     {QStringLiteral("o_proj"), 576, 576},
          {QStringLiteral("gate_proj"), 1536, 576}, {QStringLiteral("up_proj"), 1536, 576},
          {QStringLiteral("down_proj"), 576, 1536}};
}

BitsPerWeight estimateBitsPerWeight(const QString &method, const QString &schemeJson,
                                    const QString &hyperparametersJson,
                                    const QList<LinearShape> &shapes) {
  BitsPerWeight out;
  const QJsonObject scheme = parseObject(schemeJson);
  const QJsonObject weight = scheme.value(QStringLiteral("weight")).toObject();
  const int bits = weight.value(QStringLiteral("bits")).toInt(0);
  if (bits <= 0) {
    out.error = QStringLiteral("the scheme has no weight bits");
    return out;
  }
  const bool symmetric = weight.value(QStringLiteral("symmetric")).toBool(false);
  const QString granularity = weight.value(QStringLiteral("granularity")).toString();
  const qint64 groupSize = weight.value(QStringLiteral("group_size")).toInteger(0);
  if (granularity == QLatin1String("per-group") && groupSize < 1) {
    out.error = QStringLiteral("per-group scheme without a group size");
    return out;
  }

  // Selected roles: "all" (a string) or a list of names.
  QSet<QString> selected;
  const QJsonValue linears =
      scheme.value(QStringLiteral("layers")).toObject().value(QStringLiteral("linears"));
  if (linears.isArray())
    for (const QJsonValue &v : linears.toArray())
      selected.insert(v.toString());
  QList<LinearShape> used;
  for (const LinearShape &s : shapes.isEmpty() ? defaultModelBlockShapes() : shapes)
    if ((selected.isEmpty() || selected.contains(s.role)) && s.outFeatures > 0 && s.inFeatures > 0)
      used.append(s);
  if (used.isEmpty()) {
    out.error = QStringLiteral("no linear shapes for the selected layers");
    return out;
  }

  const QJsonObject hyper = parseObject(hyperparametersJson);
  const QString m = method.toLower();
  const bool keepsFactors = m == QLatin1String("lqer") || m == QLatin1String("l2qer");
  const qint64 rank = hyper.value(QStringLiteral("rank")).toInteger(0);
  const int factorBits = hyper.value(QStringLiteral("factor_bits")).toInt(0);
  // The engine's storage formula (core/quant/storage_bits.h), per linear.
  lrq::quant::GridSpec fallbackGrid;
  fallbackGrid.bits = bits;
  fallbackGrid.symmetric = symmetric;
  fallbackGrid.granularity =
      granularity == QLatin1String("per-group")     ? lrq::quant::Granularity::PerGroup
      : granularity == QLatin1String("per-channel") ? lrq::quant::Granularity::PerChannel
                                                    : lrq::quant::Granularity::PerTensor;
  fallbackGrid.groupSize = groupSize;
  // A scheme the engine reads gives each linear its own grid (step formats,
  // gguf-q6_k's fallback for rows that are not whole super-blocks).
  std::optional<lrq::quant::QuantScheme> parsed;
  try {
    parsed = lrq::quant::QuantScheme::fromJson(schemeJson.toStdString());
  } catch (const lrq::Error &) {
  }
  double weights = 0, codeBits = 0, scaleBits = 0, factorBitsTotal = 0;
  for (const LinearShape &s : used) {
    const lrq::quant::GridSpec &grid = parsed ? parsed->weightFor(s.inFeatures) : fallbackGrid;
    const double mn = double(s.outFeatures) * double(s.inFeatures);
    weights += mn;
    const double plain = lrq::quant::effectiveBitsPerWeight(grid, s.outFeatures, s.inFeatures);
    codeBits += double(grid.bits) * mn;
    scaleBits += (plain - grid.bits) * mn;
    if (keepsFactors && rank > 0) {
      const qint64 r = std::min({rank, s.outFeatures, s.inFeatures});
      factorBitsTotal +=
          (lrq::quant::effectiveBitsPerWeight(grid, s.outFeatures, s.inFeatures, r, factorBits) -
           plain) *
          mn;
    }
  }
  out.valid = true;
  out.weightBits = codeBits / weights;
  out.scaleBits = scaleBits / weights;
  out.lowRankBits = factorBitsTotal / weights;
  return out;
}

QString schemeLabel(const QString &schemeJson) {
  const QJsonObject scheme = parseObject(schemeJson);
  const QString name = scheme.value(QStringLiteral("name")).toString();
  if (!name.isEmpty() && name != QLatin1String("custom"))
    return name;
  const QJsonObject weight = scheme.value(QStringLiteral("weight")).toObject();
  if (weight.isEmpty())
    return name.isEmpty() ? QStringLiteral("?") : name;
  QString label = QStringLiteral("W%1").arg(weight.value(QStringLiteral("bits")).toInt());
  const QJsonObject act = scheme.value(QStringLiteral("activation")).toObject();
  const QString mode = act.value(QStringLiteral("mode")).toString();
  if (!mode.isEmpty() && mode != QLatin1String("none"))
    label += QStringLiteral("A%1").arg(act.value(QStringLiteral("bits")).toInt(8));
  else
    label += QStringLiteral("A16");
  const QString g = weight.value(QStringLiteral("granularity")).toString();
  if (g == QLatin1String("per-group"))
    label += QStringLiteral("-g%1").arg(weight.value(QStringLiteral("group_size")).toInt());
  else if (g == QLatin1String("per-tensor"))
    label += QStringLiteral("-tensor");
  if (scheme.value(QStringLiteral("kv8")).toBool())
    label += QStringLiteral("-KV8");
  return label + QStringLiteral(" (custom)");
}

} // namespace lrq::ui
