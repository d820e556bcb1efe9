#pragma once
// The Runs browser: every run of a run store in a sortable, filterable table
// (kept current while the command line writes to the same store) and, for the
// selected run, its settings, per-block reconstruction loss curves, per-layer
// SQNR by block and singular-value spectra. Actions on the selection: delete,
// resume (interrupted, cancelled or failed runs; a run whose process is alive
// is refused), export, open export, compare (all but delete are signals for
// the main window).
#include <QList>
#include <QString>
#include <QStringList>
#include <QWidget>

#include <optional>

#include "core/runs/run_record.h"

class QCheckBox;
class QComboBox;
class QCustomPlot;
class QCPTextElement;
class QLabel;
class QLineEdit;
class QModelIndex;
class QPushButton;
class QTabWidget;
class QTableView;
class QTextBrowser;

namespace lrq::ui {

class RunsTableModel;
class RunsFilterProxy;

class RunsView : public QWidget {
  Q_OBJECT
public:
  explicit RunsView(QWidget *parent = nullptr);

  void setStorePath(const QString &path);
  QString storePath() const;

  RunsTableModel *model() const { return model_; }
  QTableView *table() const { return table_; }
  // Run ids of the selected rows, in the order shown.
  QStringList selectedRunIds() const;
  // Reconstruction loss, per-layer SQNR, spectrum.
  QList<QCustomPlot *> plots() const;

  // Delete asks for confirmation unless this is false (tests).
  void setConfirmDeletes(bool confirm) { confirmDeletes_ = confirm; }
  // Filters: text matched against method, scheme and status; a status name
  // ("" = all).
  void setFilterText(const QString &text);
  void setStatusFilter(const QString &status);
  // Selects the row of this run (clears the selection when it is not shown).
  void selectRun(const QString &id);
  // The run whose details are shown ("" when none).
  QString shownRunId() const { return shownId_; }
  QString errorText() const;

  QPushButton *deleteButton() const { return delete_; }
  QPushButton *resumeButton() const { return resume_; }
  QPushButton *exportButton() const { return export_; }
  QPushButton *exportGgufButton() const { return exportGguf_; }
  QPushButton *compareButton() const { return compare_; }
  QPushButton *openExportButton() const { return openExport_; }

  // The export of a run that can be opened as a model: its HF folder or
  // packed file as recorded in the store (or, for a run that has not
  // finished, as its saved request names it), when it is on disk. "" and
  // *reason (why not) otherwise.
  static QString openableExport(const RunInfo &run, QString *reason = nullptr);
  QComboBox *spectrumLayerCombo() const { return spectrumLayer_; }
  QComboBox *spectrumKindCombo() const { return spectrumKind_; }
  QTabWidget *plotTabs() const { return tabs_; }

public slots:
  // Deletes the selected runs (after confirmation, when enabled).
  void deleteSelected();

signals:
  void runSelected(const QString &id);
  void resumeRequested(const QString &runId);
  void exportRequested(const QString &runId);
  // Export the run as a GGUF file for llama.cpp (gguf-* schemes).
  void exportGgufRequested(const QString &runId);
  void compareRequested(const QStringList &runIds);
  // Open this export (HF folder or packed file) as the current model.
  void openModelRequested(const QString &path);

private:
  void onSelectionChanged();
  void onRowsChanged(const QModelIndex &topLeft, const QModelIndex &bottomRight);
  void updateActions();
  void showRun(const QString &id);
  void clearDetails(const QString &message);
  void fillSettings(const RunRecord &run);
  void plotLosses(const RunRecord &run);
  void plotSqnr(const RunRecord &run);
  void fillSpectrumChoices(const RunRecord &run);
  void fillSpectrumKinds();
  void plotSpectrum();
  void showError(const QString &message);

  RunsTableModel *model_ = nullptr;
  RunsFilterProxy *proxy_ = nullptr;
  QTableView *table_ = nullptr;
  QLineEdit *filter_ = nullptr;
  QComboBox *statusFilter_ = nullptr;
  QLabel *count_ = nullptr;
  QLabel *error_ = nullptr;
  QPushButton *delete_ = nullptr;
  QPushButton *resume_ = nullptr;
  QPushButton *export_ = nullptr;
  QPushButton *exportGguf_ = nullptr;
  QPushButton *compare_ = nullptr;
  QPushButton *openExport_ = nullptr;
  QLabel *detailTitle_ = nullptr;
  QTextBrowser *settings_ = nullptr;
  QTabWidget *tabs_ = nullptr;
  QCustomPlot *lossPlot_ = nullptr;
  QCustomPlot *sqnrPlot_ = nullptr;
  QCustomPlot *spectrumPlot_ = nullptr;
  QComboBox *spectrumLayer_ = nullptr;
  QComboBox *spectrumKind_ = nullptr;
  bool confirmDeletes_ = true;
  QString shownId_;
  std::optional<RunRecord> shown_;
};

} // namespace lrq::ui
