#pragma once
// One row per run of a run store (SQLite, core/runs), kept current while other
// processes (the command line, another window) write to the same file: a
// timer compares the sizes and modification times of the store and its WAL
// and reloads only when they moved. Reloading keeps rows by run id (rows
// changed in place, new runs inserted, deleted runs removed), so views keep
// their selection. While a run shows running, the list is also reread every
// 2 s, so a run whose process was killed turns "interrupted". Store errors (locked, damaged,
// unreadable) never throw out of the model: they are kept in lastError() and signalled.
#include <QAbstractTableModel>
#include <QElapsedTimer>
#include <QHash>
#include <QString>
#include <QStringList>
#include <QVector>

#include <memory>
#include <optional>

#include "core/runs/run_record.h"
#include "widgets/run_bits.h"

class QTimer;

namespace lrq {
class RunStore;
}

namespace lrq::ui {

class RunsTableModel : public QAbstractTableModel {
  Q_OBJECT
public:
  enum Column {
    StatusColumn,
    MethodColumn,
    SchemeColumn,
    BitsColumn,
    RankColumn,
    PerplexityColumn,
    KlColumn,
    Top1Column,
    SecondsColumn,
    PeakRssColumn,
    CreatedColumn,
    ColumnCount
  };
  enum Role {
    // The run id, on every column.
    RunIdRole = Qt::UserRole + 1,
    // What the column sorts by: numbers for numeric columns (an invalid
    // QVariant where the run lacks the value, which sorts last), the ISO time
    // for the date, text otherwise. Qt::EditRole returns the same.
    SortRole,
    // The run's status name ("running", "finished", ...), on every column.
    StatusRole,
  };

  explicit RunsTableModel(QObject *parent = nullptr);
  ~RunsTableModel() override;

  // Opens the store at path (creating an empty one if there is none) and
  // loads it; an empty path empties the model. Polling starts (or continues).
  void setStorePath(const QString &path);
  QString storePath() const { return path_; }

  // How often the store file is checked for changes (ms); 0 stops polling.
  void setPollInterval(int ms);
  int pollInterval() const;

  // The last store error ("" when the last access succeeded).
  QString lastError() const { return lastError_; }
  // Milliseconds the last reload of the run list took (listRuns and diff).
  double lastRefreshMs() const { return lastRefreshMs_; }

  int rowCount(const QModelIndex &parent = {}) const override;
  int columnCount(const QModelIndex &parent = {}) const override;
  QVariant data(const QModelIndex &index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation orientation,
                      int role = Qt::DisplayRole) const override;

  QString runId(int row) const;
  int rowOfRun(const QString &id) const; // -1 when not shown
  const RunInfo *runInfo(int row) const;

  // Reads one run with its blocks, layers and spectra; nullopt (and
  // storeError) when it cannot.
  std::optional<RunRecord> loadRun(const QString &id);
  // Deletes runs from the store, then refreshes. Returns false (and the
  // error) if any deletion failed.
  bool deleteRuns(const QStringList &ids, QString *error = nullptr);

  // The estimate shown in the bits column (see estimateBitsPerWeight).
  std::optional<double> bitsPerWeight(int row) const;

public slots:
  // Reloads the run list now, whatever the file looks like.
  void refresh();

signals:
  // A store access failed (message names the file); emitted once per
  // distinct error, until an access succeeds again.
  void storeError(const QString &message);
  // An access succeeded after an error.
  void storeRecovered();
  // A reload finished (whether or not anything changed).
  void refreshed();

private:
  struct Row {
    RunInfo info;
    QString schemeName;
    std::optional<double> bits;
    std::optional<qint64> rank;
  };
  // Sizes and modification times (file clock ticks, ns on Linux) of the
  // store and its WAL; -1 where a file is missing.
  struct FileStamp {
    qint64 size = -1;
    qint64 modified = -1;
    qint64 walSize = -1;
    qint64 walModified = -1;
    bool operator==(const FileStamp &o) const {
      return size == o.size && modified == o.modified && walSize == o.walSize &&
             walModified == o.walModified;
    }
  };

  void poll();
  FileStamp stamp() const;
  bool ensureOpen();
  void setError(const QString &message);
  void clearError();
  Row makeRow(const RunInfo &info);
  const ModelShape *shapeFor(const std::string &modelPath);
  QVariant displayValue(const Row &row, int column) const;
  QVariant sortValue(const Row &row, int column) const;

  QString path_;
  std::unique_ptr<RunStore> store_;
  QVector<Row> rows_;
  QTimer *timer_ = nullptr;
  FileStamp lastStamp_;
  QElapsedTimer sinceRefresh_;
  QString lastError_;
  double lastRefreshMs_ = 0;
  // Model shapes by model path, read once (nullopt: not readable).
  QHash<QString, std::optional<ModelShape>> shapes_;
};

// Same-run comparison used by refresh(): true when anything a row shows changed.
bool runInfoDiffers(const RunInfo &a, const RunInfo &b);

} // namespace lrq::ui
