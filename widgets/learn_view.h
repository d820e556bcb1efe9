#pragma once
// "Learn": a teaching playground on one linear layer (a layer of the open
// model or a synthetic matrix with outlier columns). Sliders for bits, groups,
// symmetry, clipping and LQER rank update the histogram with the grid's levels,
// heat maps of W, Ŵ and E, the spectrum of E and the error left after a rank-k
// LQER / L²QER correction; a second tab fits FlexRound and LRQ on the layer.
// Short guided lessons sit beside the plots. All numbers come from
// core/lesson (lesson.h) on worker threads; a slider change never blocks the
// UI, and results of superseded requests are dropped.
#include <QFutureWatcher>
#include <QList>
#include <QString>
#include <QThreadPool>
#include <QWidget>

#include <future>
#include <memory>

#include "core/lesson/lesson.h"

class QCheckBox;
class QComboBox;
class QCustomPlot;
class QCPColorMap;
class QCPColorScale;
class QCPGraph;
class QCPBars;
class QCPItemStraightLine;
class QCPItemText;
class QLabel;
class QProgressBar;
class QPushButton;
class QSlider;
class QSpinBox;
class QTabWidget;
class QTextBrowser;
class QListWidget;
class QTimer;

namespace lrq::ui {

class LearnView : public QWidget {
  Q_OBJECT
public:
  explicit LearnView(QWidget *parent = nullptr);
  ~LearnView() override;

  // The model whose layers can be chosen ("default" or a path); "" disables
  // the model source. The model is opened when a model layer is first chosen.
  void setModelPath(const QString &pathOrDefault);
  // The model the desktop already has open: lessons use it, no second copy.
  void setSession(std::shared_ptr<const lrq::ModelSession> session, const QString &path);
  QString modelPath() const { return modelPath_; }

  // Source: the synthetic matrix, or linear `role` of `block` of the model.
  void showSynthetic();
  void showModelLayer(int block, const QString &role);

  // Settings (also reachable through the controls).
  void setBits(int bits);
  void setGroupSize(int groupSize); // 0 = per channel, 32, 64, 128
  void setSymmetric(bool symmetric);
  void setClipRatio(double ratio); // 0.5 .. 1.0
  void setRank(int k);             // 0 .. 64
  void setFitSteps(int steps);
  void showLesson(int index); // 0 .. lessonCount() - 1
  // Shows a lesson and applies its starting settings (the "Set up" button);
  // the FlexRound and LRQ lessons also start the fit.
  void setUpLesson(int index);
  int lessonCount() const;
  void showTab(int index);     // 0 = rounding and LQER, 1 = FlexRound vs LRQ, 2 = activations
  void setAlpha(double alpha); // SmoothQuant's α, 0 .. 1

  // Starts / cancels the FlexRound vs LRQ fit on the current layer.
  void runFit();
  void cancelFit();
  bool fitRunning() const { return fitRunning_; }

  QList<QCustomPlot *> plots() const;
  // What is shown now (null before the first result).
  const lrq::lesson::GridLessonResult *gridResult() const { return grid_.get(); }
  const lrq::lesson::FitLessonResult *fitResult() const { return fit_.get(); }
  const lrq::lesson::ActivationLessonResult *activationResult() const { return act_.get(); }
  const lrq::lesson::LessonLayer *layer() const { return layer_.get(); }
  QString statusText() const;
  QString figuresText() const;
  // Grid requests started on a worker (coalesced ones are not counted).
  int gridComputations() const { return gridComputations_; }

signals:
  void layerShown(const QString &name);
  void gridShown();
  void activationsShown();
  void fitFinished(bool ok);
  void failed(const QString &message);

private:
  struct GridJob;
  void buildUi();
  QWidget *buildControls();
  QWidget *buildGridTab();
  QWidget *buildFitTab();
  QWidget *buildActivationTab();
  void requestActivations();
  void startActivations();
  void onActivationsDone();
  void showActivations(const lrq::lesson::ActivationLessonResult &r);
  QWidget *buildLessonPanel();
  void sourceChanged();
  void loadLayer();
  void requestGrid();
  void startGrid();
  void onGridDone();
  void showGrid(const lrq::lesson::GridLessonResult &r);
  void showSweep(const lrq::lesson::ErrorSweep &s);
  void updateRankReadout();
  void updateLabels();
  void onFitDone();
  void replotFitLive();
  void showFit(const lrq::lesson::FitLessonResult &r);
  void setStatus(const QString &text);
  lrq::lesson::GridOptions gridOptions() const;

  QString modelPath_;
  std::shared_ptr<const lrq::ModelSession> session_;
  std::shared_ptr<lrq::lesson::LessonModel> model_;
  QString modelOpenedFor_;
  std::shared_future<std::shared_ptr<lrq::lesson::LessonModel>> opening_; // while opening
  QString openingFor_;
  std::shared_ptr<const lrq::lesson::LessonLayer> layer_;
  std::unique_ptr<lrq::lesson::GridLessonResult> grid_;
  std::unique_ptr<lrq::lesson::FitLessonResult> fit_;
  std::unique_ptr<lrq::lesson::ErrorSweep> sweep_;
  std::unique_ptr<lrq::lesson::ActivationLessonResult> act_;
  QString sweepKey_; // symmetric/clip/layer the sweep was computed for

  // The view's own threads, one per kind of job (layer, grid, activations,
  // fit). Not Qt's global pool: the raster paint engine splits large fills
  // over that pool and waits for them on the UI thread, so a long fit there
  // (one thread on a one-CPU machine) froze painting until it ended.
  QThreadPool jobs_;
  // Layer loading (latest request wins).
  int layerTicket_ = 0;
  QFutureWatcher<void> layerWatcher_;
  // Grid: one job at a time; a request during a job is kept as "pending".
  bool gridRunning_ = false, gridPending_ = false;
  int gridComputations_ = 0;
  std::shared_ptr<GridJob> gridJob_;
  QFutureWatcher<void> gridWatcher_;
  // Activations: as the grid.
  struct ActJob;
  bool actRunning_ = false, actPending_ = false;
  std::shared_ptr<ActJob> actJob_;
  QFutureWatcher<void> actWatcher_;
  // Fit.
  bool fitRunning_ = false;
  std::shared_ptr<lrq::CancelToken> fitCancel_;
  struct FitRelay;
  std::shared_ptr<FitRelay> fitRelay_;
  QFutureWatcher<void> fitWatcher_;
  QTimer *fitTimer_ = nullptr;

  // Controls.
  QComboBox *source_ = nullptr;
  QSpinBox *block_ = nullptr;
  QComboBox *role_ = nullptr;
  QSlider *bits_ = nullptr;
  QLabel *bitsValue_ = nullptr;
  QComboBox *group_ = nullptr;
  QCheckBox *symmetric_ = nullptr;
  QSlider *clip_ = nullptr;
  QLabel *clipValue_ = nullptr;
  QSlider *rank_ = nullptr;
  QLabel *rankValue_ = nullptr;
  QLabel *status_ = nullptr;
  QLabel *figures_ = nullptr;
  QTabWidget *tabs_ = nullptr;
  QListWidget *lessons_ = nullptr;
  QTextBrowser *lessonText_ = nullptr;

  // Rounding tab.
  QCustomPlot *histPlot_ = nullptr;
  QCPBars *histBars_ = nullptr;
  QCPGraph *levelsGraph_ = nullptr;
  QCustomPlot *sweepPlot_ = nullptr;
  QCPGraph *sweepMarker_ = nullptr;
  QCustomPlot *tilePlots_[3] = {nullptr, nullptr, nullptr};
  QCPColorMap *tileMaps_[3] = {nullptr, nullptr, nullptr};
  QCustomPlot *spectrumPlot_ = nullptr;
  QCustomPlot *remainingPlot_ = nullptr;
  QCPItemStraightLine *rankLine_ = nullptr;
  QCPItemText *rankText_ = nullptr;

  // Fit tab.
  QSpinBox *fitSteps_ = nullptr;
  QSpinBox *fitRank_ = nullptr;
  QComboBox *flipMethod_ = nullptr;
  QPushButton *runFit_ = nullptr;
  QPushButton *cancelFit_ = nullptr;
  QProgressBar *fitProgress_ = nullptr;
  QLabel *fitSummary_ = nullptr;
  QCustomPlot *lossPlot_ = nullptr;
  QCustomPlot *flipPlot_ = nullptr;
  QCPColorMap *flipMap_ = nullptr;
  QCustomPlot *scaleSpectrumPlot_ = nullptr;
  QCustomPlot *scalePlots_[2] = {nullptr, nullptr};
  QCPColorMap *scaleMaps_[2] = {nullptr, nullptr};

  // Activations tab.
  QSlider *alpha_ = nullptr;
  QLabel *alphaValue_ = nullptr;
  QLabel *actSummary_ = nullptr;
  QCustomPlot *actMaxPlot_ = nullptr;
  QCustomPlot *weightMaxPlot_ = nullptr;
  QCustomPlot *actErrorPlot_ = nullptr;
};

} // namespace lrq::ui
