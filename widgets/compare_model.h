#pragma once
// Runs side by side: one column per run, one row per property. The first rows
// are the figures a reader compares first (method, scheme, bits per weight,
// perplexity, KL, top-1 agreement, seconds, peak RSS); then every row of
// RunStore::compareRuns (metrics, reconstruction totals, hyperparameters,
// scheme fields), bold where the runs differ.
#include <QAbstractTableModel>
#include <QString>
#include <QStringList>

#include <vector>

#include "core/runs/run_record.h"
#include "widgets/run_metrics.h"

namespace lrq::ui {

class CompareModel : public QAbstractTableModel {
  Q_OBJECT
public:
  // The number behind a cell (double), where there is one.
  static constexpr int ValueRole = Qt::UserRole + 1;
  // True on rows whose cells are not all equal.
  static constexpr int DiffersRole = Qt::UserRole + 2;
  // The row's key: "summary:<name>" for the first rows, "<group>:<name>" after.
  static constexpr int KeyRole = Qt::UserRole + 3;

  explicit CompareModel(QObject *parent = nullptr);

  // Reads the runs from the store at storePath (and the list of all its runs,
  // for the views that place the selection among them). Unknown ids are left
  // out and reported; a store that cannot be opened leaves the model empty.
  // Returns false when anything was reported (lastError()).
  bool setRuns(const QString &storePath, const QStringList &ids);
  void clear();

  // Shapes of one decoder block's linears, for bits per weight (default:
  // defaultModelBlockShapes()). Recomputes the bits rows.
  void setLayerShapes(const QList<LinearShape> &shapes);
  const QList<LinearShape> &layerShapes() const { return shapes_; }

  void setDifferencesOnly(bool on);
  bool differencesOnly() const { return differencesOnly_; }

  QString lastError() const { return lastError_; }
  QString storePath() const { return storePath_; }

  // The loaded runs, in column order, with everything recorded for them.
  const std::vector<lrq::RunRecord> &runs() const { return runs_; }
  // Every run in the store (newest first), without blocks, layers or spectra.
  const std::vector<lrq::RunInfo> &allRuns() const { return allRuns_; }
  // A short label per run for legends: the method, with the id's tail when
  // two selected runs share a method.
  QString runLabel(int column) const;
  BitsPerWeight bitsPerWeight(const lrq::RunInfo &run) const;

  // Row lookup by key (see KeyRole); -1 when absent or filtered out.
  int rowOf(const QString &key) const;

  int rowCount(const QModelIndex &parent = {}) const override;
  int columnCount(const QModelIndex &parent = {}) const override;
  QVariant data(const QModelIndex &index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation orientation,
                      int role = Qt::DisplayRole) const override;

signals:
  void errorOccurred(const QString &message);
  // After every setRuns / clear (also after one that reported an error).
  void runsChanged();

private:
  struct Row {
    QString key;
    QString label;
    QString tooltip;
    QStringList cells;
    std::vector<std::optional<double>> values;
    bool differs = false;
    bool summary = false;
    int best = -1; // column of the best value (lower or higher is better), -1: none
  };
  void rebuild();
  void report(const QString &message);

  QString storePath_;
  QString lastError_;
  bool differencesOnly_ = false;
  QList<LinearShape> shapes_;
  std::vector<lrq::RunRecord> runs_;
  std::vector<lrq::RunInfo> allRuns_;
  lrq::RunComparison comparison_;
  std::vector<Row> rows_;    // all rows
  std::vector<int> visible_; // indices into rows_
};

} // namespace lrq::ui
