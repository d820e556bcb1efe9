#include "widgets/tensor_inspector.h"

#include <QCheckBox>
#include <QEvent>
#include <QGridLayout>
#include <QLabel>
#include <QMouseEvent>
#include <QSplitter>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>

#include "widgets/plot_style.h"
#include "widgets/session_controller.h"

namespace lrq::ui {

TensorInspector::TensorInspector(SessionController *controller, QWidget *parent)
    : QWidget(parent), controller_(controller) {
  title_ = new QLabel(tr("No tensor selected"), this);
  title_->setObjectName(QStringLiteral("tensorTitle"));
  title_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  subtitle_ = new QLabel(tr("Pick a linear layer (or any tensor) in the architecture tree."), this);
  subtitle_->setObjectName(QStringLiteral("tensorSubtitle"));
  subtitle_->setWordWrap(true);

  auto *statsGrid = new QGridLayout;
  statsGrid->setHorizontalSpacing(14);
  statsGrid->setVerticalSpacing(2);
  const QList<QPair<QString, QString>> stats{{QStringLiteral("numel"), tr("Elements")},
                                             {QStringLiteral("mean"), tr("Mean")},
                                             {QStringLiteral("std"), tr("Std")},
                                             {QStringLiteral("kurtosis"), tr("Excess kurtosis")},
                                             {QStringLiteral("min"), tr("Min")},
                                             {QStringLiteral("max"), tr("Max")},
                                             {QStringLiteral("absmax"), tr("|Max|")},
                                             {QStringLiteral("ratio"), tr("|Max| / std")}};
  for (int i = 0; i < stats.size(); ++i) {
    auto *key = new QLabel(stats[i].second + QLatin1Char(':'), this);
    key->setObjectName(QStringLiteral("statKey"));
    auto *value = new QLabel(QStringLiteral("–"), this);
    value->setObjectName(QStringLiteral("statValue"));
    value->setTextInteractionFlags(Qt::TextSelectableByMouse);
    statsGrid->addWidget(key, i / 4, (i % 4) * 2, Qt::AlignRight);
    statsGrid->addWidget(value, i / 4, (i % 4) * 2 + 1, Qt::AlignLeft);
    statValues_.insert(stats[i].first, value);
  }
  statsGrid->setColumnStretch(7, 1);
  // Weights are heavy-tailed; a log count axis shows the outliers that
  // decide a quantization grid's range.
  logCounts_ = new QCheckBox(tr("Log count axis"), this);
  logCounts_->setChecked(true);

  histogramPlot_ = new QCustomPlot(this);
  histogramPlot_->setObjectName(QStringLiteral("histogramPlot"));
  stylePlot(histogramPlot_, tr("Weight histogram"));
  histogramPlot_->xAxis->setLabel(tr("weight value"));
  histogramPlot_->yAxis->setLabel(tr("count"));
  bars_ = new QCPBars(histogramPlot_->xAxis, histogramPlot_->yAxis);
  bars_->setPen(Qt::NoPen);
  bars_->setBrush(kBarColor);
  bars_->setWidthType(QCPBars::wtPlotCoords);
  histogramMessage_ = addMessage(histogramPlot_);
  histogramPlot_->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
  histogramPlot_->axisRect()->setRangeZoom(Qt::Horizontal);
  histogramPlot_->axisRect()->setRangeDrag(Qt::Horizontal);

  spectrumPlot_ = new QCustomPlot(this);
  spectrumPlot_->setObjectName(QStringLiteral("spectrumPlot"));
  stylePlot(spectrumPlot_, tr("Singular-value spectrum"));
  spectrumPlot_->xAxis->setLabel(tr("index i"));
  spectrumPlot_->yAxis->setLabel(QStringLiteral("σᵢ (log scale)"));
  spectrumPlot_->yAxis->setScaleType(QCPAxis::stLogarithmic);
  spectrumPlot_->yAxis->setTicker(QSharedPointer<QCPAxisTickerLog>(new QCPAxisTickerLog));
  spectrumPlot_->yAxis->setNumberFormat(QStringLiteral("gb"));
  spectrumPlot_->yAxis->setNumberPrecision(3);
  spectrumGraph_ = spectrumPlot_->addGraph();
  spectrumGraph_->setPen(QPen(kLineColor, 2.0));
  spectrumGraph_->setLineStyle(QCPGraph::lsLine);
  energyLine_ = new QCPItemStraightLine(spectrumPlot_);
  energyLine_->setPen(QPen(kAccent, 1.2, Qt::DashLine));
  energyLine_->setVisible(false);
  energyLabel_ = new QCPItemText(spectrumPlot_);
  energyLabel_->setColor(kAccent.darker(130));
  energyLabel_->position->setTypeY(QCPItemPosition::ptAxisRectRatio);
  energyLabel_->setPositionAlignment(Qt::AlignLeft | Qt::AlignTop);
  energyLabel_->setPadding(QMargins(4, 2, 4, 2));
  energyLabel_->setVisible(false);
  tracer_ = new QCPItemTracer(spectrumPlot_);
  tracer_->setInterpolating(false);
  tracer_->setStyle(QCPItemTracer::tsCircle);
  tracer_->setSize(9);
  tracer_->setPen(QPen(kAccent, 2));
  tracer_->setBrush(Qt::white);
  tracer_->setVisible(false);
  tracerLabel_ = new QCPItemText(spectrumPlot_);
  tracerLabel_->position->setParentAnchor(tracer_->position);
  tracerLabel_->position->setCoords(10, -10);
  tracerLabel_->setPositionAlignment(Qt::AlignLeft | Qt::AlignBottom);
  tracerLabel_->setBrush(QColor(255, 255, 255, 230));
  tracerLabel_->setPen(QPen(QColor(0xb0, 0xb0, 0xb0)));
  tracerLabel_->setPadding(QMargins(5, 3, 5, 3));
  tracerLabel_->setVisible(false);
  spectrumMessage_ = addMessage(spectrumPlot_);
  spectrumPlot_->setMouseTracking(true);
  spectrumPlot_->installEventFilter(this);
  spectrumPlot_->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
  spectrumPlot_->axisRect()->setRangeZoom(Qt::Horizontal);
  spectrumPlot_->axisRect()->setRangeDrag(Qt::Horizontal);
  connect(spectrumPlot_, &QCustomPlot::mouseMove, this, &TensorInspector::onSpectrumHover);
  connect(spectrumPlot_, &QCustomPlot::mouseDoubleClick, this, [this] {
    // Back to the framing the spectrum first appeared with.
    spectrumPlot_->xAxis->setRange(homeX_[0], homeX_[1]);
    spectrumPlot_->yAxis->setRange(homeY_[0], homeY_[1]);
    spectrumPlot_->replot();
  });
  spectrumPlot_->setToolTip(tr("Wheel: zoom · drag: pan · double-click: reset the view"));
  connect(spectrumPlot_->xAxis, qOverload<const QCPRange &>(&QCPAxis::rangeChanged), this,
          [this](const QCPRange &range) { placeEnergyLabel(range); });

  readout_ = new QLabel(this);
  readout_->setObjectName(QStringLiteral("spectrumReadout"));
  readout_->setMinimumWidth(170);
  spectrumSummary_ = new QLabel(this);
  spectrumSummary_->setObjectName(QStringLiteral("spectrumSummary"));
  spectrumSummary_->setWordWrap(true);
  auto *spectrumInfo = new QHBoxLayout;
  spectrumInfo->setContentsMargins(4, 0, 4, 0);
  spectrumInfo->addWidget(spectrumSummary_, 1);
  spectrumInfo->addWidget(readout_, 0, Qt::AlignRight);

  auto *spectrumBox = new QWidget(this);
  auto *spectrumLayout = new QVBoxLayout(spectrumBox);
  spectrumLayout->setContentsMargins(0, 0, 0, 0);
  spectrumLayout->setSpacing(2);
  spectrumLayout->addWidget(spectrumPlot_, 1);
  spectrumLayout->addLayout(spectrumInfo);

  auto *splitter = new QSplitter(Qt::Vertical, this);
  splitter->addWidget(histogramPlot_);
  splitter->addWidget(spectrumBox);
  splitter->setChildrenCollapsible(false);
  splitter->setStretchFactor(0, 1);
  splitter->setStretchFactor(1, 1);
  splitter->setSizes({420, 480});

  auto *layout = new QVBoxLayout(this);
  layout->setContentsMargins(8, 8, 8, 4);
  layout->setSpacing(4);
  layout->addWidget(title_);
  auto *subtitleRow = new QHBoxLayout;
  subtitleRow->addWidget(subtitle_, 1);
  subtitleRow->addWidget(logCounts_);
  layout->addLayout(subtitleRow);
  layout->addSpacing(4);
  layout->addLayout(statsGrid);
  layout->addSpacing(4);
  layout->addWidget(splitter, 1);

  connect(logCounts_, &QCheckBox::toggled, this, [this] {
    applyHistogramScale();
    histogramPlot_->replot(QCustomPlot::rpQueuedReplot);
  });
  connect(controller_, &SessionController::analysisReady, this, &TensorInspector::onAnalysisReady);
  connect(controller_, &SessionController::spectrumReady, this, &TensorInspector::onSpectrumReady);
  connect(controller_, &SessionController::analysisFailed, this,
          [this](const QString &tensor, const QString &message) {
            if (tensor == tensor_)
              setPlotMessage(histogramMessage_, histogramPlot_, message);
          });
  connect(controller_, &SessionController::spectrumFailed, this,
          [this](const QString &tensor, const QString &message) {
            if (tensor == tensor_)
              setPlotMessage(spectrumMessage_, spectrumPlot_, message);
          });
  clear();
}

void TensorInspector::setPlotMessage(QCPItemText *item, QCustomPlot *plot, const QString &message) {
  item->setText(message);
  item->setVisible(!message.isEmpty());
  plot->replot(QCustomPlot::rpQueuedReplot);
}

void TensorInspector::applyHistogramScale() {
  QCPAxis *y = histogramPlot_->yAxis;
  const double peak = histogramPeak_ > 0 ? histogramPeak_ : 1.0;
  if (logCounts_->isChecked()) {
    // Empty bins have no place on a log axis; QCustomPlot draws them off-rect.
    setLogAxis(y);
    // At least two decades: on a shorter range (an empty or loading histogram)
    // the log ticker repeats labels such as 3·10⁰.
    y->setRange(0.5, std::max(peak * 3.0, 50.0));
  } else {
    setLinearAxis(y);
    y->setRange(0, peak * 1.08);
  }
  QString title = histogramBins_ > 0 ? tr("Weight histogram (%1 bins)").arg(histogramBins_)
                                     : tr("Weight histogram");
  if (logCounts_->isChecked())
    title += tr(", log count");
  plotTitle(histogramPlot_)->setText(title);
}

void TensorInspector::setStatistic(const QString &key, const QString &value) {
  if (QLabel *label = statValues_.value(key))
    label->setText(value);
}

void TensorInspector::clear() {
  tensor_.clear();
  analysisShown_ = spectrumShown_ = false;
  spectrum_.clear();
  title_->setText(tr("No tensor selected"));
  subtitle_->setText(tr("Pick a linear layer (or any tensor) in the architecture tree."));
  for (QLabel *label : std::as_const(statValues_))
    label->setText(QStringLiteral("–"));
  bars_->data()->clear();
  spectrumGraph_->data()->clear();
  tracer_->setGraph(nullptr); // a tracer on an empty graph complains at every replot
  energyLine_->setVisible(false);
  energyLabel_->setVisible(false);
  hideHover();
  histogramPeak_ = 0;
  histogramBins_ = 0;
  plotTitle(spectrumPlot_)->setText(tr("Singular-value spectrum"));
  spectrumSummary_->clear();
  histogramPlot_->xAxis->setRange(-1, 1);
  applyHistogramScale();
  spectrumPlot_->xAxis->setRange(0, 1);
  spectrumPlot_->yAxis->setRange(0.01, 10);
  setPlotMessage(histogramMessage_, histogramPlot_, tr("No tensor selected"));
  setPlotMessage(spectrumMessage_, spectrumPlot_, tr("No tensor selected"));
}

void TensorInspector::showTensor(const QString &tensor) {
  const lrq::TensorSummary *info = controller_->tensor(tensor);
  if (!info)
    return;
  clear();
  tensor_ = tensor;
  title_->setText(tensor);
  QString subtitle = tr("%1 · %2 · %3 elements")
                         .arg(formatShape(info->shape), QString::fromStdString(info->dtype),
                              formatCount(info->numel));
  if (info->sourceName != info->name)
    subtitle += tr(" · in file: %1").arg(QString::fromStdString(info->sourceName));
  subtitle_->setText(subtitle);
  setPlotMessage(histogramMessage_, histogramPlot_, tr("Computing statistics…"));
  const bool matrix = info->shape.size() == 2;
  setPlotMessage(spectrumMessage_, spectrumPlot_,
                 matrix ? tr("Computing singular values…")
                        : tr("No spectrum: %1-D tensor").arg(info->shape.size()));
  controller_->requestAnalysis(tensor);
  if (matrix)
    controller_->requestSpectrum(tensor);
}

void TensorInspector::onAnalysisReady(const QString &tensor, const lrq::TensorStatistics &s,
                                      const lrq::Histogram &h) {
  if (tensor != tensor_)
    return;
  setStatistic(QStringLiteral("numel"), QString::number(s.numel));
  setStatistic(QStringLiteral("mean"), formatNumber(s.mean));
  setStatistic(QStringLiteral("std"), formatNumber(s.std));
  setStatistic(QStringLiteral("kurtosis"), formatNumber(s.kurtosis));
  setStatistic(QStringLiteral("min"), formatNumber(s.min));
  setStatistic(QStringLiteral("max"), formatNumber(s.max));
  setStatistic(QStringLiteral("absmax"), formatNumber(s.absMax));
  setStatistic(QStringLiteral("ratio"),
               s.std > 0 ? formatNumber(s.absMax / s.std) : QStringLiteral("–"));

  const int n = static_cast<int>(h.counts.size());
  const double width = n > 0 ? (h.hi - h.lo) / n : 0.0;
  QVector<double> keys(n), values(n);
  double peak = 0;
  for (int i = 0; i < n; ++i) {
    keys[i] = h.lo + (i + 0.5) * width;
    values[i] = h.counts[static_cast<size_t>(i)];
    peak = std::max(peak, values[i]);
  }
  bars_->setWidth(width > 0 ? width : 1.0);
  bars_->setData(keys, values, true);
  const double pad = width > 0 ? width : 0.5;
  histogramPlot_->xAxis->setRange(h.lo - pad, h.hi + pad);
  histogramPeak_ = peak;
  histogramBins_ = n;
  applyHistogramScale();
  analysisShown_ = true;
  setPlotMessage(histogramMessage_, histogramPlot_, QString());
  emit analysisShown(tensor);
}

void TensorInspector::onSpectrumReady(const QString &tensor, const QVector<double> &values) {
  if (tensor != tensor_)
    return;
  spectrum_ = values;
  const int n = values.size();
  double top = 0, floorPositive = 0;
  for (double v : values) {
    top = std::max(top, v);
    if (v > 0 && (floorPositive == 0 || v < floorPositive))
      floorPositive = v;
  }
  // Exact zeros have no place on a log axis: draw them at the floor of the rest.
  const double drawFloor = floorPositive > 0 ? floorPositive : 1e-12;
  QVector<double> keys(n), shown(n);
  double energy = 0, sum = 0;
  for (int i = 0; i < n; ++i) {
    keys[i] = i + 1;
    shown[i] = std::max(values[i], drawFloor);
    energy += values[i] * values[i];
    sum += values[i];
  }
  spectrumGraph_->setData(keys, shown, true);
  tracer_->setGraph(spectrumGraph_);
  homeX_[0] = 0;
  homeX_[1] = n + 1;
  homeY_[0] = drawFloor / 1.5;
  homeY_[1] = (top > 0 ? top : 1.0) * 1.5;
  spectrumPlot_->xAxis->setRange(homeX_[0], homeX_[1]);
  spectrumPlot_->yAxis->setRange(homeY_[0], homeY_[1]);

  // Where 90 % of the Frobenius energy is reached, and the entropy-based
  // effective rank: both say how "low-rank" the weight is.
  int rank90 = 0;
  double acc = 0;
  for (int i = 0; i < n && energy > 0; ++i) {
    acc += values[i] * values[i];
    if (acc >= 0.9 * energy) {
      rank90 = i + 1;
      break;
    }
  }
  double entropy = 0;
  for (int i = 0; i < n && sum > 0; ++i) {
    const double p = values[i] / sum;
    if (p > 0)
      entropy -= p * std::log(p);
  }
  if (rank90 > 0) {
    energyLine_->point1->setCoords(rank90, drawFloor);
    energyLine_->point2->setCoords(rank90, top > 0 ? top : 1.0);
    energyLine_->setVisible(true);
    energyLabel_->position->setTypeX(QCPItemPosition::ptPlotCoords);
    energyLabel_->position->setCoords(rank90, 0.04);
    energyLabel_->setText(tr("90 % energy: %1").arg(rank90));
    energyLabel_->setVisible(true);
  }
  rank90_ = rank90;
  placeEnergyLabel(spectrumPlot_->xAxis->range());
  plotTitle(spectrumPlot_)->setText(tr("Singular-value spectrum (%1 values)").arg(n));
  const double cond = (n > 0 && values.back() > 0) ? top / values.back() : 0.0;
  spectrumSummary_->setText(tr("σ₁ %1 · σ_min %2 · cond. %3 · eff. rank %4 / %5")
                                .arg(formatNumber(top), formatNumber(n > 0 ? values.back() : 0.0),
                                     cond > 0 ? formatNumber(cond) : QStringLiteral("∞"))
                                .arg(sum > 0 ? std::exp(entropy) : 0.0, 0, 'f', 1)
                                .arg(n));
  spectrumShown_ = true;
  setPlotMessage(spectrumMessage_, spectrumPlot_, QString());
  emit spectrumShown(tensor);
}

bool TensorInspector::eventFilter(QObject *watched, QEvent *event) {
  if (watched == spectrumPlot_ && event->type() == QEvent::Leave)
    hideHover();
  return QWidget::eventFilter(watched, event);
}

void TensorInspector::onSpectrumHover(QMouseEvent *event) {
  const int n = spectrum_.size();
  if (n == 0 || !spectrumPlot_->axisRect()->rect().contains(event->position().toPoint())) {
    hideHover();
    return;
  }
  const double key = spectrumPlot_->xAxis->pixelToCoord(event->position().x());
  const int index = std::clamp(static_cast<int>(std::lround(key)), 1, n);
  const double value = spectrum_[index - 1];
  tracer_->setGraphKey(index);
  tracer_->setVisible(true);
  const QString text = QStringLiteral("σ%1 = %2").arg(index).arg(formatNumber(value));
  tracerLabel_->setText(text);
  // Keep the label inside the plot near the right edge.
  tracerLabel_->position->setCoords(index > n * 0.7 ? -10 : 10, -10);
  tracerLabel_->setPositionAlignment((index > n * 0.7 ? Qt::AlignRight : Qt::AlignLeft) |
                                     Qt::AlignBottom);
  tracerLabel_->setVisible(true);
  readout_->setText(tr("i = %1   σ = %2").arg(index).arg(formatNumber(value)));
  spectrumPlot_->replot(QCustomPlot::rpQueuedReplot);
}

void TensorInspector::placeEnergyLabel(const QCPRange &range) {
  // Zoomed in or out, the label stays inside the plot: beside the line on the
  // side with room, hidden while the line is out of view.
  if (rank90_ <= 0) {
    energyLabel_->setVisible(false);
    return;
  }
  const bool inView = range.contains(rank90_);
  energyLabel_->setVisible(inView);
  if (!inView)
    return;
  const bool rightHalf = rank90_ > range.lower + 0.6 * range.size();
  energyLabel_->setPositionAlignment((rightHalf ? Qt::AlignRight : Qt::AlignLeft) | Qt::AlignTop);
}

void TensorInspector::hideHover() {
  tracer_->setVisible(false);
  tracerLabel_->setVisible(false);
  readout_->setText(
      spectrum_.isEmpty() ? QString() : tr("hover for values · wheel zooms · double-click resets"));
  spectrumPlot_->replot(QCustomPlot::rpQueuedReplot);
}

QString TensorInspector::hoverReadout() const {
  return tracer_->visible() ? tracerLabel_->text() : QString();
}

void TensorInspector::replotNow() {
  histogramPlot_->replot();
  spectrumPlot_->replot();
}

QString TensorInspector::statisticsText() const {
  QStringList parts;
  for (auto it = statValues_.constBegin(); it != statValues_.constEnd(); ++it)
    parts << it.key() + QLatin1Char('=') + it.value()->text();
  parts.sort();
  return parts.join(QLatin1Char(' '));
}

} // namespace lrq::ui
