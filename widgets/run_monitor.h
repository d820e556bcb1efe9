#pragma once
// The live reconstruction monitor: what a quantization run is doing, block by
// block. Loss against iteration for every block (log axis; the current block
// highlighted, finished ones faded), each block's initial and final loss, a
// strip of block states, the learning-rate schedule with the current iteration
// and seconds per iteration, and each layer's error (MSE, SQNR) as it is final.
// Fed with QuantizeController's event batches; it draws only.
#include <QPointF>
#include <QString>
#include <QVector>
#include <QWidget>

#include "widgets/quantize_controller.h"

class QCustomPlot;
class QCPGraph;
class QCPBars;
class QCPItemStraightLine;
class QCPLayer;
class QCPItemText;
class QLabel;
class QTableWidget;

namespace lrq::ui {
class LiveLabel;

class BlockStrip;

class RunMonitor : public QWidget {
  Q_OBJECT
public:
  enum class BlockState { Waiting, Training, Done, Restored };
  struct LayerRow {
    int block = -1;
    QString role;
    double mse = 0, sqnrDb = 0;
  };

  explicit RunMonitor(QWidget *parent = nullptr);

  // Clears everything for a new run. trainsBlocks: the method reports a loss
  // curve per block (else per-layer progress is the main view); iterations and
  // learningRate draw the cosine schedule (0: not shown).
  void reset(const QString &title, bool trainsBlocks, int blockCount, int iterations,
             double learningRate);
  void addEvents(const QVector<lrq::ui::MonitorEvent> &events);

  // What is on screen, for tests and the status bar.
  QVector<QPointF> curve(int block) const;
  int blockCount() const { return int(states_.size()); }
  BlockState blockState(int block) const;
  double initialLoss(int block) const;
  double finalLoss(int block) const;
  // The final loss on the held-out samples (NaN when the run has none).
  double heldoutFinalLoss(int block) const;
  const QVector<LayerRow> &layers() const { return layers_; }
  QString statusText() const;
  QList<QCustomPlot *> plots() const;

private:
  void ensureBlocks(int count);
  void styleCurves();
  void refreshBars();
  void refreshLayers(int firstNewRow);
  void refreshSchedule();
  void refreshStatus();
  void rescaleLoss();

  QString title_;
  bool trainsBlocks_ = true;
  int iterations_ = 0;
  double learningRate_ = 0;
  int current_ = -1;
  int currentIteration_ = -1;
  QVector<BlockState> states_;
  QVector<QVector<QPointF>> curves_;
  QVector<double> initial_, final_, heldoutFinal_, seconds_;
  QVector<LayerRow> layers_;
  QString lastLog_;
  qint64 done_ = 0, total_ = 0;
  double lossMin_ = 0, lossMax_ = 0;

  LiveLabel *status_ = nullptr;
  BlockStrip *strip_ = nullptr;
  QCustomPlot *lossPlot_ = nullptr, *barsPlot_ = nullptr, *schedulePlot_ = nullptr,
              *layerPlot_ = nullptr;
  QVector<QCPGraph *> graphs_;
  QCPBars *initialBars_ = nullptr, *finalBars_ = nullptr, *heldoutBars_ = nullptr;
  QCPGraph *scheduleGraph_ = nullptr;
  QCPItemStraightLine *scheduleMarker_ = nullptr;
  // Own paint buffers: a new loss point or a moved marker redraws only these.
  QCPLayer *currentLayer_ = nullptr;
  QCPLayer *markerLayer_ = nullptr;
  bool scheduleShown_ = false;
  QCPItemText *lossMessage_ = nullptr, *layerMessage_ = nullptr, *scheduleMessage_ = nullptr;
  QTableWidget *layerTable_ = nullptr;
  QStringList roles_; // layer roles in order of first appearance (one layer-plot series each)
};

} // namespace lrq::ui
