#include "widgets/runs_table_model.h"

#include <QBrush>
#include <QColor>
#include <QDateTime>
#include <QElapsedTimer>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTimer>

#include <cmath>
#include <exception>
#include <filesystem>

#include "core/runs/run_store.h"

namespace lrq::ui {
namespace {

// A reader on the UI thread must not wait long for a writer: WAL readers are
// not blocked by writers, so this only matters for deletes and checkpoints.
constexpr int kUiBusyTimeoutMs = 500;
// While a run shows running, its owner's liveness is checked this often even
// when the store file did not change.
constexpr qint64 kLivenessRecheckMs = 2000;

QString qs(const std::string &s) {
  return QString::fromStdString(s);
}

std::optional<double> metric(const RunInfo &info, const char *name) {
  const auto it = info.metrics.find(name);
  if (it == info.metrics.end() || std::isnan(it->second))
    return std::nullopt;
  return it->second;
}

const char *metricOf(int column) {
  switch (column) {
  case RunsTableModel::PerplexityColumn:
    return "perplexity";
  case RunsTableModel::KlColumn:
    return "kl";
  case RunsTableModel::Top1Column:
    return "top1";
  case RunsTableModel::PeakRssColumn:
    return "peak_rss_mib";
  default:
    return nullptr;
  }
}

bool isNumeric(int column) {
  return column == RunsTableModel::BitsColumn || column == RunsTableModel::RankColumn ||
         column == RunsTableModel::SecondsColumn || metricOf(column) != nullptr;
}

qint64 fileTicks(const std::filesystem::path &p, qint64 *size) {
  std::error_code ec;
  const auto s = std::filesystem::file_size(p, ec);
  *size = ec ? -1 : qint64(s);
  const auto t = std::filesystem::last_write_time(p, ec);
  return ec ? -1 : qint64(t.time_since_epoch().count());
}

} // namespace

bool runInfoDiffers(const RunInfo &a, const RunInfo &b) {
  return a.status != b.status || a.metrics != b.metrics || a.totalSeconds != b.totalSeconds ||
         a.error != b.error || a.notes != b.notes || a.blockCount != b.blockCount ||
         a.method != b.method || a.schemeJson != b.schemeJson ||
         a.hyperparametersJson != b.hyperparametersJson || a.created != b.created ||
         a.model.path != b.model.path || a.model.digest != b.model.digest ||
         a.engineVersion != b.engineVersion || a.owner.pid != b.owner.pid ||
         a.owner.host != b.owner.host || a.owner.start != b.owner.start ||
         a.exportDir != b.exportDir || a.packedPath != b.packedPath || a.ggufPath != b.ggufPath ||
         a.compressedTensorsDir != b.compressedTensorsDir;
}

RunsTableModel::RunsTableModel(QObject *parent) : QAbstractTableModel(parent) {
  timer_ = new QTimer(this);
  timer_->setInterval(1000);
  connect(timer_, &QTimer::timeout, this, &RunsTableModel::poll);
}

RunsTableModel::~RunsTableModel() = default;

void RunsTableModel::setStorePath(const QString &path) {
  if (!rows_.isEmpty()) {
    beginResetModel();
    rows_.clear();
    endResetModel();
  }
  store_.reset();
  path_ = path;
  lastStamp_ = {};
  clearError();
  refresh();
  if (!path_.isEmpty() && timer_->interval() > 0)
    timer_->start();
  else
    timer_->stop();
}

void RunsTableModel::setPollInterval(int ms) {
  if (ms <= 0) {
    timer_->stop();
    timer_->setInterval(0);
    return;
  }
  timer_->setInterval(ms);
  if (!path_.isEmpty())
    timer_->start();
}

int RunsTableModel::pollInterval() const {
  return timer_->isActive() ? timer_->interval() : 0;
}

RunsTableModel::FileStamp RunsTableModel::stamp() const {
  FileStamp s;
  const std::filesystem::path p = path_.toStdString();
  s.modified = fileTicks(p, &s.size);
  s.walModified = fileTicks(path_.toStdString() + "-wal", &s.walSize);
  return s;
}

void RunsTableModel::poll() {
  if (path_.isEmpty())
    return;
  // A killed process writes nothing: while a run shows running, look again
  // now and then whether its owner is still alive.
  bool running = false;
  for (const Row &row : rows_)
    running = running || row.info.status == RunStatus::Running;
  if (!(stamp() == lastStamp_) ||
      (running && (!sinceRefresh_.isValid() || sinceRefresh_.elapsed() >= kLivenessRecheckMs)))
    refresh();
}

bool RunsTableModel::ensureOpen() {
  if (store_)
    return true;
  try {
    RunStoreOptions options;
    options.busyTimeoutMs = kUiBusyTimeoutMs;
    store_ = std::make_unique<RunStore>(RunStore::open(path_.toStdString(), options));
    return true;
  } catch (const std::exception &e) {
    setError(qs(e.what()));
    return false;
  }
}

void RunsTableModel::setError(const QString &message) {
  if (message == lastError_)
    return;
  lastError_ = message;
  emit storeError(message);
}

void RunsTableModel::clearError() {
  if (lastError_.isEmpty())
    return;
  lastError_.clear();
  emit storeRecovered();
}

const ModelShape *RunsTableModel::shapeFor(const std::string &modelPath) {
  const QString key = qs(modelPath);
  auto it = shapes_.find(key);
  if (it == shapes_.end())
    it = shapes_.insert(key, readModelShape(key));
  return it->has_value() ? &**it : nullptr;
}

RunsTableModel::Row RunsTableModel::makeRow(const RunInfo &info) {
  Row row;
  row.info = info;
  const QJsonObject scheme =
      QJsonDocument::fromJson(QByteArray::fromStdString(info.schemeJson)).object();
  row.schemeName = scheme.value(QStringLiteral("name")).toString();
  row.bits = estimateBitsPerWeight(qs(info.method), qs(info.schemeJson),
                                   qs(info.hyperparametersJson), shapeFor(info.model.path));
  row.rank = rankOf(qs(info.hyperparametersJson));
  return row;
}

void RunsTableModel::refresh() {
  if (path_.isEmpty()) {
    if (!rows_.isEmpty()) {
      beginResetModel();
      rows_.clear();
      endResetModel();
    }
    emit refreshed();
    return;
  }
  // The stamp is taken before reading, so a write during the read shows up
  // as a change at the next poll.
  lastStamp_ = stamp();
  sinceRefresh_.start();
  if (!ensureOpen()) {
    emit refreshed();
    return;
  }
  QElapsedTimer timer;
  timer.start();
  std::vector<RunInfo> runs;
  try {
    runs = store_->listRuns();
  } catch (const std::exception &e) {
    // Reopen next time: the file may have been replaced or repaired.
    store_.reset();
    setError(qs(e.what()));
    emit refreshed();
    return;
  }
  clearError();

  QHash<QString, int> incoming;
  for (int i = 0; i < int(runs.size()); ++i)
    incoming.insert(qs(runs[size_t(i)].id), i);

  // Deleted runs: remove contiguous stretches, bottom up.
  for (int r = rows_.size() - 1; r >= 0; --r) {
    if (incoming.contains(qs(rows_[r].info.id)))
      continue;
    int first = r;
    while (first > 0 && !incoming.contains(qs(rows_[first - 1].info.id)))
      --first;
    beginRemoveRows({}, first, r);
    rows_.remove(first, r - first + 1);
    endRemoveRows();
    r = first;
  }
  // Changed runs: in place.
  QHash<QString, int> present;
  for (int r = 0; r < rows_.size(); ++r) {
    const QString id = qs(rows_[r].info.id);
    present.insert(id, r);
    const RunInfo &now = runs[size_t(incoming.value(id))];
    if (runInfoDiffers(rows_[r].info, now)) {
      rows_[r] = makeRow(now);
      emit dataChanged(index(r, 0), index(r, ColumnCount - 1));
    }
  }
  // New runs: at the top, newest first (the store's order).
  QVector<Row> added;
  for (const RunInfo &info : runs)
    if (!present.contains(qs(info.id)))
      added.append(makeRow(info));
  if (!added.isEmpty()) {
    beginInsertRows({}, 0, added.size() - 1);
    rows_ = added + rows_;
    endInsertRows();
  }
  lastRefreshMs_ = double(timer.nsecsElapsed()) / 1e6;
  emit refreshed();
}

int RunsTableModel::rowCount(const QModelIndex &parent) const {
  return parent.isValid() ? 0 : rows_.size();
}

int RunsTableModel::columnCount(const QModelIndex &parent) const {
  return parent.isValid() ? 0 : ColumnCount;
}

QString RunsTableModel::runId(int row) const {
  return row >= 0 && row < rows_.size() ? qs(rows_[row].info.id) : QString();
}

int RunsTableModel::rowOfRun(const QString &id) const {
  const std::string key = id.toStdString();
  for (int r = 0; r < rows_.size(); ++r)
    if (rows_[r].info.id == key)
      return r;
  return -1;
}

const RunInfo *RunsTableModel::runInfo(int row) const {
  return row >= 0 && row < rows_.size() ? &rows_[row].info : nullptr;
}

std::optional<double> RunsTableModel::bitsPerWeight(int row) const {
  return row >= 0 && row < rows_.size() ? rows_[row].bits : std::nullopt;
}

std::optional<RunRecord> RunsTableModel::loadRun(const QString &id) {
  if (!ensureOpen())
    return std::nullopt;
  try {
    return store_->getRun(id.toStdString());
  } catch (const NoSuchRun &) {
    return std::nullopt; // deleted meanwhile; the next poll removes its row
  } catch (const std::exception &e) {
    store_.reset();
    setError(qs(e.what()));
    return std::nullopt;
  }
}

bool RunsTableModel::deleteRuns(const QStringList &ids, QString *error) {
  QString failure;
  if (!ensureOpen()) {
    failure = lastError_;
  } else {
    for (const QString &id : ids) {
      try {
        store_->deleteRun(id.toStdString());
      } catch (const NoSuchRun &) {
        // Already gone: what was asked for holds.
      } catch (const std::exception &e) {
        failure = qs(e.what());
        break;
      }
    }
  }
  if (error)
    *error = failure;
  refresh();
  if (!failure.isEmpty())
    setError(failure);
  return failure.isEmpty();
}

QVariant RunsTableModel::displayValue(const Row &row, int column) const {
  const RunInfo &info = row.info;
  switch (column) {
  case StatusColumn:
    return QString::fromLatin1(runStatusName(info.status));
  case MethodColumn:
    return qs(info.method);
  case SchemeColumn:
    return row.schemeName;
  case BitsColumn:
    return row.bits ? QString::number(*row.bits, 'f', 2) : QString();
  case RankColumn:
    if (!row.rank)
      return QString();
    // LRQ's rank 0 means min(out, in) / 4 for each linear.
    return *row.rank == 0 && info.method == "lrq" ? tr("auto") : QString::number(*row.rank);
  case SecondsColumn:
    return info.totalSeconds > 0 ? QString::number(info.totalSeconds, 'f', 1) : QString();
  case CreatedColumn: {
    const QDateTime t = QDateTime::fromString(qs(info.created), Qt::ISODateWithMs);
    return t.isValid() ? t.toLocalTime().toString(QStringLiteral("yyyy-MM-dd HH:mm:ss"))
                       : qs(info.created);
  }
  default:
    break;
  }
  const char *name = metricOf(column);
  if (!name)
    return {};
  const std::optional<double> v = metric(info, name);
  if (!v)
    return QString();
  switch (column) {
  case PerplexityColumn:
    return QString::number(*v, 'f', 3);
  case KlColumn:
    return QString::number(*v, 'f', 4);
  case Top1Column:
    return QString::number(*v * 100.0, 'f', 1) + QStringLiteral(" %");
  default: // peak RSS
    return QString::number(*v, 'f', 0);
  }
}

QVariant RunsTableModel::sortValue(const Row &row, int column) const {
  const RunInfo &info = row.info;
  switch (column) {
  case BitsColumn:
    return row.bits ? QVariant(*row.bits) : QVariant();
  case RankColumn:
    return row.rank ? QVariant(double(*row.rank)) : QVariant();
  case SecondsColumn:
    return info.totalSeconds > 0 ? QVariant(info.totalSeconds) : QVariant();
  case CreatedColumn:
    return qs(info.created); // ISO-8601 UTC sorts as text
  default:
    break;
  }
  if (const char *name = metricOf(column)) {
    const std::optional<double> v = metric(info, name);
    return v ? QVariant(*v) : QVariant();
  }
  return displayValue(row, column);
}

QVariant RunsTableModel::data(const QModelIndex &index, int role) const {
  if (!checkIndex(index, CheckIndexOption::IndexIsValid | CheckIndexOption::ParentIsInvalid))
    return {};
  const Row &row = rows_[index.row()];
  const int column = index.column();
  switch (role) {
  case Qt::DisplayRole:
    return displayValue(row, column);
  case Qt::EditRole:
  case SortRole:
    return sortValue(row, column);
  case RunIdRole:
    return qs(row.info.id);
  case StatusRole:
    return QString::fromLatin1(runStatusName(row.info.status));
  case Qt::TextAlignmentRole:
    return isNumeric(column) ? QVariant(Qt::AlignRight | Qt::AlignVCenter)
                             : QVariant(Qt::AlignLeft | Qt::AlignVCenter);
  case Qt::ForegroundRole:
    if (column != StatusColumn)
      return {};
    switch (row.info.status) {
    case RunStatus::Running:
      return QBrush(QColor(0x1f, 0x5f, 0x9e));
    case RunStatus::Finished:
      return QBrush(QColor(0x2e, 0x7d, 0x32));
    case RunStatus::Failed:
      return QBrush(QColor(0xb7, 0x1c, 0x1c));
    case RunStatus::Cancelled:
      return QBrush(QColor(0x8a, 0x6d, 0x00));
    case RunStatus::Interrupted:
      return QBrush(QColor(0x6a, 0x1b, 0x9a));
    }
    return {};
  case Qt::ToolTipRole: {
    QString tip = tr("Run %1").arg(qs(row.info.id));
    if (row.info.status == RunStatus::Running && row.info.owner.known())
      tip += QLatin1Char('\n') +
             tr("Running in process %1 on %2").arg(row.info.owner.pid).arg(qs(row.info.owner.host));
    if (row.info.status == RunStatus::Interrupted)
      tip += QLatin1Char('\n') +
             tr("Interrupted: its process (%1 on %2) is gone; Resume goes on from the last "
                "finished block")
                 .arg(row.info.owner.pid)
                 .arg(qs(row.info.owner.host));
    if (!row.info.error.empty())
      tip += QLatin1Char('\n') + qs(row.info.error);
    if (column == BitsColumn)
      tip += QLatin1Char('\n') +
             (row.bits ? tr("Estimated storage per quantized weight: weight bits, one fp16 step "
                            "(and zero point) per group/channel, low-rank factors (LQER)")
                       : tr("Not estimable: the model's shapes are unknown"));
    return tip;
  }
  default:
    return {};
  }
}

QVariant RunsTableModel::headerData(int section, Qt::Orientation orientation, int role) const {
  if (orientation != Qt::Horizontal || section < 0 || section >= ColumnCount)
    return {};
  if (role == Qt::DisplayRole) {
    switch (section) {
    case StatusColumn:
      return tr("Status");
    case MethodColumn:
      return tr("Method");
    case SchemeColumn:
      return tr("Scheme");
    case BitsColumn:
      return tr("Bits/weight");
    case RankColumn:
      return tr("Rank");
    case PerplexityColumn:
      return tr("Perplexity");
    case KlColumn:
      return tr("KL (nats)");
    case Top1Column:
      return tr("Top-1");
    case SecondsColumn:
      return tr("Time (s)");
    case PeakRssColumn:
      return tr("Peak RSS (MiB)");
    case CreatedColumn:
      return tr("Created");
    }
  }
  if (role == Qt::ToolTipRole) {
    switch (section) {
    case BitsColumn:
      return tr("Estimated bits per quantized weight, including steps, zero points and "
                "low-rank factors");
    case KlColumn:
      return tr("Mean KL divergence to the full-precision model per token");
    case Top1Column:
      return tr("Tokens whose top-1 prediction matches the full-precision model");
    case PeakRssColumn:
      return tr("Peak resident memory of the process that ran it");
    default:
      return {};
    }
  }
  if (role == Qt::TextAlignmentRole)
    return isNumeric(section) ? QVariant(Qt::AlignRight | Qt::AlignVCenter)
                              : QVariant(Qt::AlignLeft | Qt::AlignVCenter);
  return {};
}

} // namespace lrq::ui
