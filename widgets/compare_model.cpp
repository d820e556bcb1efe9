#include "widgets/compare_model.h"

#include <QBrush>
#include <QColor>
#include <QFileInfo>
#include <QFont>

#include <algorithm>
#include <cmath>
#include <exception>
#include <iterator>
#include <optional>
#include <set>

#include "core/runs/run_store.h"

namespace lrq::ui {

namespace {

std::optional<double> metricOf(const lrq::RunInfo &run, const char *name) {
  auto it = run.metrics.find(name);
  if (it == run.metrics.end() || std::isnan(it->second))
    return std::nullopt;
  return it->second;
}

QString formatValue(double v, int precision) {
  return QString::number(v, 'f', precision);
}

// Rows of compareRuns already shown among the summary rows.
bool shownInSummary(const std::string &group, const std::string &name) {
  static const std::set<std::pair<std::string, std::string>> rows = {{"run", "method"},
                                                                     {"run", "total seconds"},
                                                                     {"metric", "perplexity"},
                                                                     {"metric", "kl"},
                                                                     {"metric", "top1"},
                                                                     {"metric", "peak_rss_mib"},
                                                                     {"metric", "ood_perplexity"},
                                                                     {"metric", "ood_kl"},
                                                                     {"metric", "ood_top1"}};
  return rows.count({group, name}) > 0;
}

} // namespace

CompareModel::CompareModel(QObject *parent) : QAbstractTableModel(parent) {
  shapes_ = defaultModelBlockShapes();
}

void CompareModel::report(const QString &message) {
  lastError_ = lastError_.isEmpty() ? message : lastError_ + QLatin1Char('\n') + message;
}

bool CompareModel::setRuns(const QString &storePath, const QStringList &ids) {
  beginResetModel();
  storePath_ = storePath;
  lastError_.clear();
  runs_.clear();
  allRuns_.clear();
  comparison_ = {};
  if (!QFileInfo(storePath).isFile()) {
    report(tr("no run store at %1").arg(storePath));
  } else {
    try {
      lrq::RunStoreOptions readOnly; // comparing writes nothing
      readOnly.readOnly = true;
      const lrq::RunStore store = lrq::RunStore::open(storePath.toStdString(), readOnly);
      std::vector<std::string> found;
      for (const QString &id : ids) {
        try {
          const std::string full = store.resolveId(id.toStdString());
          if (std::find(found.begin(), found.end(), full) != found.end())
            continue; // the same run asked for twice
          runs_.push_back(store.getRun(full));
          found.push_back(full);
        } catch (const std::exception &e) {
          report(QString::fromStdString(e.what()));
        }
      }
      allRuns_ = store.listRuns();
      if (!found.empty())
        comparison_ = store.compareRuns(found);
    } catch (const std::exception &e) {
      runs_.clear();
      allRuns_.clear();
      comparison_ = {};
      report(QString::fromStdString(e.what()));
    }
  }
  rebuild();
  endResetModel();
  if (!lastError_.isEmpty())
    emit errorOccurred(lastError_);
  emit runsChanged();
  return lastError_.isEmpty();
}

void CompareModel::clear() {
  beginResetModel();
  runs_.clear();
  allRuns_.clear();
  comparison_ = {};
  lastError_.clear();
  rebuild();
  endResetModel();
  emit runsChanged();
}

void CompareModel::setLayerShapes(const QList<LinearShape> &shapes) {
  beginResetModel();
  shapes_ = shapes.isEmpty() ? defaultModelBlockShapes() : shapes;
  rebuild();
  endResetModel();
}

void CompareModel::setDifferencesOnly(bool on) {
  if (on == differencesOnly_)
    return;
  beginResetModel();
  differencesOnly_ = on;
  visible_.clear();
  for (int i = 0; i < int(rows_.size()); ++i)
    if (!differencesOnly_ || rows_[i].summary || rows_[i].differs)
      visible_.push_back(i);
  endResetModel();
}

BitsPerWeight CompareModel::bitsPerWeight(const lrq::RunInfo &run) const {
  return estimateBitsPerWeight(QString::fromStdString(run.method),
                               QString::fromStdString(run.schemeJson),
                               QString::fromStdString(run.hyperparametersJson), shapes_);
}

QString CompareModel::runLabel(int column) const {
  if (column < 0 || column >= int(runs_.size()))
    return {};
  const lrq::RunRecord &run = runs_[column];
  int sameMethod = 0;
  for (const lrq::RunRecord &r : runs_)
    sameMethod += r.method == run.method ? 1 : 0;
  QString label = QString::fromStdString(run.method);
  if (sameMethod > 1)
    label += QStringLiteral(" ·") + QString::fromStdString(run.id).right(4);
  return label;
}

void CompareModel::rebuild() {
  rows_.clear();
  visible_.clear();
  const int n = int(runs_.size());
  if (n == 0)
    return;

  auto finish = [&](Row row, int better) {
    // better: -1 lower wins, +1 higher wins, 0 no winner.
    row.differs = false;
    for (const QString &c : row.cells)
      row.differs = row.differs || c != row.cells.front();
    if (better != 0 && n > 1) {
      for (int c = 0; c < n; ++c) {
        if (!row.values[c])
          continue;
        if (row.best < 0 || (better < 0 ? *row.values[c] < *row.values[row.best]
                                        : *row.values[c] > *row.values[row.best]))
          row.best = c;
      }
    }
    rows_.push_back(std::move(row));
  };
  auto textRow = [&](const QString &key, const QString &label, const QString &tip, auto &&textOf) {
    Row row{QStringLiteral("summary:") + key, label, tip, {}, {}, false, true, -1};
    for (const lrq::RunRecord &r : runs_) {
      row.cells << textOf(r);
      row.values.push_back(std::nullopt);
    }
    finish(std::move(row), 0);
  };
  auto numberRow = [&](const QString &key, const QString &label, const QString &tip, int better,
                       auto &&valueOf, auto &&format) {
    Row row{QStringLiteral("summary:") + key, label, tip, {}, {}, false, true, -1};
    for (const lrq::RunRecord &r : runs_) {
      const std::optional<double> v = valueOf(r);
      row.cells << (v ? format(*v) : QString());
      row.values.push_back(v);
    }
    finish(std::move(row), better);
  };

  textRow(QStringLiteral("method"), tr("method"), tr("Quantization method"),
          [](const lrq::RunRecord &r) { return QString::fromStdString(r.method); });
  textRow(
      QStringLiteral("scheme"), tr("scheme"), tr("Quantization scheme (preset name or grid)"),
      [](const lrq::RunRecord &r) { return schemeLabel(QString::fromStdString(r.schemeJson)); });
  numberRow(
      QStringLiteral("bits"), tr("bits per weight"),
      tr("Estimated storage of the quantized linears: weight bits + 16-bit scales (and zero "
         "points) per group or channel + LQER/L²QER low-rank factors r·(m+n)·16/(m·n)"),
      0,
      [this](const lrq::RunRecord &r) -> std::optional<double> {
        const BitsPerWeight b = bitsPerWeight(r);
        return b.valid ? std::optional<double>(b.total()) : std::nullopt;
      },
      [](double v) { return formatValue(v, 3); });
  // In domain (held-out paragraphs of the calibration text's document) and out
  // of domain (a text nothing calibrated on): a gain on the first alone is
  // fitting that document, not fidelity to the model.
  struct Text {
    const char *prefix;
    QString label, description;
  };
  const Text texts[] = {
      {"", QString(), tr("on the held-out part of the calibration document")},
      {"ood_", tr(" (out of domain)"), tr("on the out-of-domain text nothing calibrated on")}};
  for (const Text &t : texts) {
    const std::string kl = std::string(t.prefix) + "kl", top1 = std::string(t.prefix) + "top1",
                      ppl = std::string(t.prefix) + "perplexity";
    const bool inDomain = *t.prefix == '\0';
    if (!inDomain && std::none_of(runs_.begin(), runs_.end(), [&](const lrq::RunRecord &r) {
          return metricOf(r, kl.c_str()).has_value();
        }))
      continue; // runs from before the second text: no empty rows
    numberRow(
        QString::fromStdString(kl), tr("KL (nats/token)") + t.label,
        tr("Mean KL divergence from the full-precision reference per token, %1 (lower is "
           "better)")
            .arg(t.description),
        -1, [kl](const lrq::RunRecord &r) { return metricOf(r, kl.c_str()); },
        [](double v) { return formatValue(v, 4); });
    numberRow(
        QString::fromStdString(top1), tr("top-1 agreement") + t.label,
        tr("Fraction of positions whose most likely next token matches the reference's, %1 "
           "(higher is better)")
            .arg(t.description),
        +1, [top1](const lrq::RunRecord &r) { return metricOf(r, top1.c_str()); },
        [](double v) { return formatValue(100.0 * v, 1) + QStringLiteral(" %"); });
    numberRow(
        QString::fromStdString(ppl), tr("perplexity") + t.label,
        tr("Perplexity %1 (lower is better)").arg(t.description), -1,
        [ppl](const lrq::RunRecord &r) { return metricOf(r, ppl.c_str()); },
        [](double v) { return formatValue(v, 2); });
  }
  numberRow(
      QStringLiteral("seconds"), tr("seconds"), tr("Wall time of the whole run"), 0,
      [](const lrq::RunRecord &r) -> std::optional<double> { return r.totalSeconds; },
      [](double v) { return formatValue(v, v < 10 ? 1 : 0); });
  numberRow(
      QStringLiteral("peak_rss"), tr("peak RSS (MiB)"), tr("Peak resident memory of the run"), 0,
      [](const lrq::RunRecord &r) { return metricOf(r, "peak_rss_mib"); },
      [](double v) { return formatValue(v, 0); });

  // The settings a reader compares first (hyperparameters), the bookkeeping
  // (run properties) last.
  static const char *groupOrder[] = {"hyperparameter", "reconstruction", "layers", "metric",
                                     "scheme"};
  std::vector<const lrq::ComparisonRow *> ordered;
  for (const char *group : groupOrder)
    for (const lrq::ComparisonRow &c : comparison_.rows)
      if (c.group == group)
        ordered.push_back(&c);
  for (const lrq::ComparisonRow &c : comparison_.rows)
    if (std::find(std::begin(groupOrder), std::end(groupOrder), c.group) == std::end(groupOrder))
      ordered.push_back(&c);
  for (const lrq::ComparisonRow *source : ordered) {
    const lrq::ComparisonRow &c = *source;
    if (shownInSummary(c.group, c.name))
      continue;
    Row row;
    row.key = QString::fromStdString(c.group + ":" + c.name);
    row.label =
        QString::fromStdString(c.group) + QStringLiteral(" · ") + QString::fromStdString(c.name);
    row.tooltip = row.key;
    for (size_t i = 0; i < c.cells.size(); ++i) {
      row.cells << QString::fromStdString(c.cells[i]);
      row.values.push_back(i < c.values.size() ? c.values[i] : std::nullopt);
    }
    row.differs = c.differs;
    rows_.push_back(std::move(row));
  }
  for (int i = 0; i < int(rows_.size()); ++i)
    if (!differencesOnly_ || rows_[i].summary || rows_[i].differs)
      visible_.push_back(i);
}

int CompareModel::rowOf(const QString &key) const {
  for (int i = 0; i < int(visible_.size()); ++i)
    if (rows_[visible_[i]].key == key)
      return i;
  return -1;
}

int CompareModel::rowCount(const QModelIndex &parent) const {
  return parent.isValid() ? 0 : int(visible_.size());
}

int CompareModel::columnCount(const QModelIndex &parent) const {
  return parent.isValid() ? 0 : int(runs_.size());
}

QVariant CompareModel::data(const QModelIndex &index, int role) const {
  if (!checkIndex(index, CheckIndexOption::IndexIsValid | CheckIndexOption::ParentIsInvalid))
    return {};
  const Row &row = rows_[visible_[index.row()]];
  const int c = index.column();
  if (c >= row.cells.size())
    return {};
  switch (role) {
  case Qt::DisplayRole:
    return row.cells[c];
  case Qt::ToolTipRole:
    if (row.best == c)
      return tr("%1: best of the selected runs").arg(row.label);
    return row.tooltip;
  case Qt::FontRole:
    if (row.differs || row.best == c) {
      QFont font;
      font.setBold(true);
      return font;
    }
    return {};
  case Qt::BackgroundRole:
    if (row.best == c)
      return QBrush(QColor(0xd7, 0xf0, 0xd5));
    return {};
  case Qt::TextAlignmentRole:
    return QVariant::fromValue(Qt::Alignment(row.values[c] ? Qt::AlignRight | Qt::AlignVCenter
                                                           : Qt::AlignLeft | Qt::AlignVCenter));
  case ValueRole:
    return row.values[c] ? QVariant(*row.values[c]) : QVariant();
  case DiffersRole:
    return row.differs;
  case KeyRole:
    return row.key;
  default:
    return {};
  }
}

QVariant CompareModel::headerData(int section, Qt::Orientation orientation, int role) const {
  if (orientation == Qt::Horizontal) {
    if (section < 0 || section >= int(runs_.size()))
      return {};
    const lrq::RunRecord &r = runs_[section];
    if (role == Qt::DisplayRole)
      return runLabel(section) + QLatin1Char('\n') + QString::fromStdString(r.id);
    if (role == Qt::ToolTipRole)
      return tr("run %1\ncreated %2\nmodel %3")
          .arg(QString::fromStdString(r.id), QString::fromStdString(r.created),
               QString::fromStdString(r.model.path));
    return {};
  }
  if (section < 0 || section >= int(visible_.size()))
    return {};
  const Row &row = rows_[visible_[section]];
  if (role == Qt::DisplayRole)
    return row.label;
  if (role == Qt::ToolTipRole)
    return row.tooltip;
  if (role == Qt::FontRole && row.differs) {
    QFont font;
    font.setBold(true);
    return font;
  }
  return {};
}

} // namespace lrq::ui
