#pragma once
// One tensor at a time: its statistics, a histogram of its weights and its
// singular-value spectrum (log scale, hover read-out). Analysis and SVD run
// in the controller's workers and are cached there per tensor.
#include <QVector>
#include <QWidget>

#include "widgets/engine_types.h"

class QCustomPlot;
class QCPBars;
class QCPRange;
class QCPGraph;
class QCPItemStraightLine;
class QCPItemText;
class QCPItemTracer;
class QCheckBox;
class QLabel;
class QMouseEvent;

namespace lrq::ui {

class SessionController;

class TensorInspector : public QWidget {
  Q_OBJECT
public:
  explicit TensorInspector(SessionController *controller, QWidget *parent = nullptr);

  void showTensor(const QString &tensor);
  void clear();

  QString currentTensor() const { return tensor_; }
  bool hasAnalysis() const { return analysisShown_; }
  bool hasSpectrum() const { return spectrumShown_; }
  QCustomPlot *histogramPlot() const { return histogramPlot_; }
  QCustomPlot *spectrumPlot() const { return spectrumPlot_; }
  const QVector<double> &spectrum() const { return spectrum_; }
  // What the hover read-out says now ("" when the pointer is not over the spectrum).
  QString hoverReadout() const;
  QString statisticsText() const;
  // Repaints both plots now (queued replots may still be pending).
  void replotNow();

signals:
  void analysisShown(const QString &tensor);
  void spectrumShown(const QString &tensor);

protected:
  bool eventFilter(QObject *watched, QEvent *event) override;

private:
  void onAnalysisReady(const QString &tensor, const lrq::TensorStatistics &statistics,
                       const lrq::Histogram &histogram);
  void onSpectrumReady(const QString &tensor, const QVector<double> &values);
  void onSpectrumHover(QMouseEvent *event);
  void hideHover();
  void placeEnergyLabel(const QCPRange &range);
  void setPlotMessage(QCPItemText *item, QCustomPlot *plot, const QString &message);
  void setStatistic(const QString &key, const QString &value);
  void applyHistogramScale();

  SessionController *controller_;
  QString tensor_;
  bool analysisShown_ = false;
  bool spectrumShown_ = false;
  QVector<double> spectrum_;

  QLabel *title_ = nullptr;
  QLabel *subtitle_ = nullptr;
  QHash<QString, QLabel *> statValues_;
  QCustomPlot *histogramPlot_ = nullptr;
  QCPBars *bars_ = nullptr;
  QCPItemText *histogramMessage_ = nullptr;
  QCheckBox *logCounts_ = nullptr;
  double histogramPeak_ = 0;
  int histogramBins_ = 0;
  QCustomPlot *spectrumPlot_ = nullptr;
  QCPGraph *spectrumGraph_ = nullptr;
  QCPItemTracer *tracer_ = nullptr;
  QCPItemText *tracerLabel_ = nullptr;
  QCPItemStraightLine *energyLine_ = nullptr;
  QCPItemText *energyLabel_ = nullptr;
  int rank90_ = 0;
  double homeX_[2] = {0, 1}, homeY_[2] = {0.01, 10}; // the spectrum's first framing
  QCPItemText *spectrumMessage_ = nullptr;
  QLabel *readout_ = nullptr;
  QLabel *spectrumSummary_ = nullptr;
};

} // namespace lrq::ui
