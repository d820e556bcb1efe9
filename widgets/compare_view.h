#pragma once
// Compares two or more recorded quantization runs (typically LRQ, FlexRound
// and L²QER at one scheme). Five tabs over one CompareModel:
//   Accuracy       the table, and bars of perplexity, KL and top-1 per run
//   Depth profile  per-layer error by block (SQNR or relative MSE), one line per run
//   Loss curves    one block's reconstruction loss curves overlaid across runs, and
//                  per block the final loss on the training samples against the
//                  held-out samples (never trained on), one colour per run
//   Spectra        singular values of W, of each run's E = W − Ŵ, L²QER's scaled E and
//                  the learned scale exponents, with the energy captured at rank k
//   Pareto         every finished run of the store: bits per weight vs perplexity or KL
// Runs without the data a tab needs are named in a note under its plot.
#include <QList>
#include <QString>
#include <QStringList>
#include <QWidget>

#include "widgets/run_metrics.h"

class QCheckBox;
class QComboBox;
class QCustomPlot;
class QLabel;
class QRadioButton;
class QSpinBox;
class QTabWidget;
class QTableView;

namespace lrq::ui {

class CompareModel;

class CompareView : public QWidget {
  Q_OBJECT
public:
  enum class DepthMetric { SqnrDb, RelativeMse };
  enum class ParetoMetric { Perplexity, Kl };
  enum Tab { AccuracyTab, DepthTab, CurvesTab, SpectraTab, ParetoTab };

  explicit CompareView(QWidget *parent = nullptr);

  // Loads the runs (see CompareModel::setRuns) and redraws every tab.
  void setRuns(const QString &storePath, const QStringList &ids);
  // Reads the same runs again (after the store changed: a run finished, a
  // metric was added); the controls keep their choices.
  void reload();
  // Shapes of the model's block linears, for bits per weight (default: the
  // default model's).
  void setLayerShapes(const QList<LinearShape> &shapes);

  CompareModel *model() const { return model_; }
  // Every plot: perplexity, KL, top-1 bars; depth profile; loss curves;
  // training vs held-out loss by block; spectra; energy at rank k; Pareto.
  QList<QCustomPlot *> plots() const;
  // A self-contained HTML page: the table as shown, then each plot as an
  // embedded PNG with its notes.
  QString toHtmlReport() const;

  QTabWidget *tabs() const { return tabs_; }
  QTableView *table() const { return table_; }
  QCustomPlot *perplexityPlot() const { return pplPlot_; }
  QCustomPlot *klPlot() const { return klPlot_; }
  QCustomPlot *top1Plot() const { return top1Plot_; }
  QCustomPlot *depthPlot() const { return depthPlot_; }
  QCustomPlot *curvesPlot() const { return curvesPlot_; }
  QCustomPlot *heldoutPlot() const { return heldoutPlot_; }
  QCustomPlot *spectraPlot() const { return spectraPlot_; }
  QCustomPlot *energyPlot() const { return energyPlot_; }
  QCustomPlot *paretoPlot() const { return paretoPlot_; }

  // The controls, for scripted use and tests. Role "" = mean of all layers.
  void setDifferencesOnly(bool on);
  void setDepthLayer(const QString &role);
  void setDepthMetric(DepthMetric metric);
  void setCurveBlock(int block);
  void setSpectrumLayer(int block, const QString &role);
  void setEnergyRank(int k);
  void setParetoMetric(ParetoMetric metric);

  // The note under each tab's plot ("" when every run had what it needs).
  QString noteText(Tab tab) const;
  // The note under the training vs held-out plot (runs without held-out losses).
  QString heldoutNoteText() const;
  // Tooltip text of the Pareto point nearest to a pixel of the Pareto plot,
  // "" when none is within a few pixels.
  QString paretoToolTipAt(const QPointF &pixel) const;

  // Curve property names on the graphs ("runId", "kind"), so that callers
  // can find a run's series: kind is "bar", "reference", "depth", "curve",
  // "train_final", "heldout_final",
  // "W", "E", "scaled_E", "scale_exponent", "energy:<kind>", "pareto".

signals:
  void errorOccurred(const QString &message);

private:
  QWidget *buildAccuracyTab();
  QWidget *buildDepthTab();
  QWidget *buildCurvesTab();
  QWidget *buildSpectraTab();
  QWidget *buildParetoTab();
  void onRunsChanged();
  void updateAccuracy();
  void updateDepth();
  void updateCurves();
  void updateHeldout();
  // Roles recorded in the chosen block; keeps preferred when it is one.
  void fillSpectrumRoles(const QString &preferred);
  void updateSpectra();
  void updateEnergyMarkers();
  void updatePareto();
  QString referenceLabel() const;

  CompareModel *model_ = nullptr;
  QTabWidget *tabs_ = nullptr;
  QLabel *error_ = nullptr;

  QTableView *table_ = nullptr;
  QCheckBox *differencesOnly_ = nullptr;
  QCustomPlot *pplPlot_ = nullptr;
  QCustomPlot *klPlot_ = nullptr;
  QCustomPlot *top1Plot_ = nullptr;
  QLabel *accuracyNote_ = nullptr;

  QComboBox *depthLayer_ = nullptr;
  QRadioButton *depthSqnr_ = nullptr;
  QRadioButton *depthMse_ = nullptr;
  QCustomPlot *depthPlot_ = nullptr;
  QLabel *depthNote_ = nullptr;

  QComboBox *curveBlock_ = nullptr;
  QCustomPlot *curvesPlot_ = nullptr;
  QLabel *curvesNote_ = nullptr;
  QCustomPlot *heldoutPlot_ = nullptr;
  QLabel *heldoutNote_ = nullptr;

  QComboBox *spectrumBlock_ = nullptr;
  QComboBox *spectrumRole_ = nullptr;
  QSpinBox *energyRank_ = nullptr;
  QCustomPlot *spectraPlot_ = nullptr;
  QCustomPlot *energyPlot_ = nullptr;
  QLabel *spectraNote_ = nullptr;

  QRadioButton *paretoPpl_ = nullptr;
  QRadioButton *paretoKl_ = nullptr;
  QCustomPlot *paretoPlot_ = nullptr;
  QLabel *paretoNote_ = nullptr;
  struct ParetoPoint {
    double x = 0, y = 0;
    QString text;
  };
  QList<ParetoPoint> paretoPoints_;
  QStringList shownIds_;
  bool updating_ = false;
};

} // namespace lrq::ui
