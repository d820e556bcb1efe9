#include "widgets/run_monitor.h"
#include "widgets/live_label.h"

#include <QHeaderView>
#include <QLabel>
#include <QPainter>
#include <QSplitter>
#include <QTableWidget>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>

#include "widgets/engine_types.h"
#include "widgets/plot_style.h"
#include "widgets/table_export.h"

namespace lrq::ui {

// A row of cells, one per block: waiting, training, done, restored.
class BlockStrip : public QWidget {
public:
  explicit BlockStrip(QWidget *parent) : QWidget(parent) {
    setMinimumHeight(30);
    setSizePolicy(QSizePolicy::Expanding, QSizePolicy::Fixed);
  }
  void setStates(const QVector<RunMonitor::BlockState> &states) {
    states_ = states;
    update();
  }
  static QColor colorOf(RunMonitor::BlockState s) {
    switch (s) {
    case RunMonitor::BlockState::Training:
      return QColor(0xff, 0x9f, 0x1c);
    case RunMonitor::BlockState::Done:
      return QColor(0x3c, 0xa5, 0x5c);
    case RunMonitor::BlockState::Restored:
      return QColor(0x8e, 0x6c, 0xc4);
    default:
      return QColor(0xd8, 0xd8, 0xd8);
    }
  }

protected:
  void paintEvent(QPaintEvent *) override {
    QPainter p(this);
    p.setRenderHint(QPainter::Antialiasing);
    const int n = int(states_.size());
    if (n == 0) {
      p.setPen(QColor(0x80, 0x80, 0x80));
      p.drawText(rect(), Qt::AlignCenter, tr("blocks appear here when a run starts"));
      return;
    }
    const double w = double(width()) / n;
    QFont f = font();
    f.setPointSizeF(std::max(6.0, f.pointSizeF() - 1.5));
    p.setFont(f);
    for (int i = 0; i < n; ++i) {
      const QRectF cell(i * w + 1, 2, w - 2, height() - 4);
      p.setPen(Qt::NoPen);
      p.setBrush(colorOf(states_[i]));
      p.drawRoundedRect(cell, 3, 3);
      if (w >= 16) {
        p.setPen(states_[i] == RunMonitor::BlockState::Waiting ? QColor(0x60, 0x60, 0x60)
                                                               : Qt::white);
        p.drawText(cell, Qt::AlignCenter, QString::number(i));
      }
    }
  }

private:
  QVector<RunMonitor::BlockState> states_;
};

namespace {

QLabel *legendChip(const QString &text, const QColor &color, QWidget *parent) {
  auto *label = new QLabel(parent);
  label->setText(QStringLiteral("<span style='color:%1'>■</span> %2").arg(color.name(), text));
  return label;
}

} // namespace

RunMonitor::RunMonitor(QWidget *parent) : QWidget(parent) {
  auto *layout = new QVBoxLayout(this);
  layout->setContentsMargins(4, 4, 4, 4);

  // Rewritten at every update: a LiveLabel, so the window does not relayout.
  status_ = new LiveLabel(3, this);
  status_->setText(tr("No run yet: choose a method and a scheme, then Start."));
  layout->addWidget(status_);

  auto *stripRow = new QHBoxLayout;
  strip_ = new BlockStrip(this);
  stripRow->addWidget(strip_, 1);
  for (auto [text, state] :
       {std::pair{tr("waiting"), BlockState::Waiting},
        std::pair{tr("training"), BlockState::Training}, std::pair{tr("done"), BlockState::Done},
        std::pair{tr("restored from checkpoint"), BlockState::Restored}})
    stripRow->addWidget(legendChip(text, BlockStrip::colorOf(state), this));
  layout->addLayout(stripRow);

  lossPlot_ = new QCustomPlot(this);
  stylePlot(lossPlot_, tr("Block reconstruction loss"));
  lossPlot_->xAxis->setLabel(tr("iteration"));
  lossPlot_->yAxis->setLabel(tr("block output MSE (log)"));
  setLogAxis(lossPlot_->yAxis);
  lossPlot_->legend->setVisible(true);
  lossPlot_->legend->setFont(QFont(font().family(), 8));
  lossPlot_->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignRight);
  lossMessage_ = addMessage(lossPlot_);
  // The training block's curve has a layer of its own: its new points redraw
  // that layer alone, not the faded curves, axes and legend.
  lossPlot_->addLayer(QStringLiteral("current"), lossPlot_->layer(QStringLiteral("main")),
                      QCustomPlot::limAbove);
  currentLayer_ = lossPlot_->layer(QStringLiteral("current"));
  currentLayer_->setMode(QCPLayer::lmBuffered);

  barsPlot_ = new QCustomPlot(this);
  stylePlot(barsPlot_, tr("Loss per block: initial (grey), final (blue), held-out final (orange)"));
  barsPlot_->xAxis->setLabel(tr("block"));
  barsPlot_->yAxis->setLabel(tr("loss (log)"));
  setLogAxis(barsPlot_->yAxis);
  initialBars_ = new QCPBars(barsPlot_->xAxis, barsPlot_->yAxis);
  finalBars_ = new QCPBars(barsPlot_->xAxis, barsPlot_->yAxis);
  // The same loss on calibration samples never trained on: taller than the
  // blue bar where the block fit its training samples only.
  heldoutBars_ = new QCPBars(barsPlot_->xAxis, barsPlot_->yAxis);
  initialBars_->setName(tr("initial (rounded to nearest)"));
  finalBars_->setName(tr("final (learned)"));
  heldoutBars_->setName(tr("final on held-out samples"));
  initialBars_->setPen(Qt::NoPen);
  finalBars_->setPen(Qt::NoPen);
  heldoutBars_->setPen(Qt::NoPen);
  initialBars_->setBrush(QColor(0xc8, 0xc8, 0xc8));
  finalBars_->setBrush(kBarColor);
  heldoutBars_->setBrush(QColor(0xe6, 0x7e, 0x0e));
  auto *group = new QCPBarsGroup(barsPlot_);
  initialBars_->setBarsGroup(group);
  finalBars_->setBarsGroup(group);
  heldoutBars_->setBarsGroup(group);
  initialBars_->setWidth(0.28);
  finalBars_->setWidth(0.28);
  heldoutBars_->setWidth(0.28);
  // The title names the two colours: a legend would cover the bars in a small plot.

  schedulePlot_ = new QCustomPlot(this);
  stylePlot(schedulePlot_, tr("Learning rate (cosine schedule)"));
  schedulePlot_->xAxis->setLabel(tr("iteration within a block"));
  schedulePlot_->yAxis->setLabel(tr("learning rate"));
  scheduleGraph_ = schedulePlot_->addGraph();
  scheduleGraph_->setPen(QPen(kLineColor, 2));
  schedulePlot_->yAxis->ticker()->setTickCount(3);
  schedulePlot_->yAxis->setNumberFormat(QStringLiteral("eb"));
  schedulePlot_->yAxis->setNumberPrecision(1);
  scheduleMarker_ = new QCPItemStraightLine(schedulePlot_);
  scheduleMarker_->setPen(QPen(kAccent, 1.5, Qt::DashLine));
  scheduleMarker_->setVisible(false);
  schedulePlot_->addLayer(QStringLiteral("marker"), schedulePlot_->layer(QStringLiteral("main")),
                          QCustomPlot::limAbove);
  markerLayer_ = schedulePlot_->layer(QStringLiteral("marker"));
  markerLayer_->setMode(QCPLayer::lmBuffered);
  scheduleMarker_->setLayer(markerLayer_);
  scheduleMessage_ = addMessage(schedulePlot_);

  layerPlot_ = new QCustomPlot(this);
  stylePlot(layerPlot_, tr("Per-layer error as each layer is final"));
  layerPlot_->xAxis->setLabel(tr("block"));
  layerPlot_->yAxis->setLabel(tr("SQNR (dB)"));
  layerPlot_->legend->setVisible(true);
  layerPlot_->legend->setFont(QFont(font().family(), 7));
  // The legend sits beside the axis rect, so it never covers the points.
  layerPlot_->axisRect()->insetLayout()->take(layerPlot_->legend);
  layerPlot_->plotLayout()->addElement(1, 1, layerPlot_->legend);
  layerPlot_->plotLayout()->setColumnStretchFactor(1, 0.001);
  layerPlot_->legend->setRowSpacing(0);
  layerPlot_->legend->setColumnSpacing(2);
  layerPlot_->legend->setMargins(QMargins(4, 2, 4, 2));
  // Two columns of four rows: the seven roles fit beside a plot 110 px high.
  layerPlot_->legend->setFillOrder(QCPLayoutGrid::foRowsFirst);
  layerPlot_->legend->setWrap(4);
  layerMessage_ = addMessage(layerPlot_);

  layerTable_ = new QTableWidget(0, 4, this);
  layerTable_->setHorizontalHeaderLabels({tr("block"), tr("layer"), tr("MSE"), tr("SQNR (dB)")});
  layerTable_->horizontalHeader()->setSectionResizeMode(QHeaderView::Stretch);
  layerTable_->verticalHeader()->setVisible(false);
  layerTable_->setWordWrap(false);
  // Rows one line high: more layers in view when the window is short.
  layerTable_->verticalHeader()->setDefaultSectionSize(fontMetrics().height() + 6);
  layerTable_->setEditTriggers(QAbstractItemView::NoEditTriggers);
  layerTable_->setSelectionBehavior(QAbstractItemView::SelectRows);
  enableTableExport(layerTable_);

  auto *right = new QSplitter(Qt::Vertical, this);
  right->addWidget(barsPlot_);
  right->addWidget(schedulePlot_);
  auto *top = new QSplitter(Qt::Horizontal, this);
  top->addWidget(lossPlot_);
  top->addWidget(right);
  top->setStretchFactor(0, 3);
  top->setStretchFactor(1, 2);
  auto *bottom = new QSplitter(Qt::Horizontal, this);
  bottom->addWidget(layerPlot_);
  bottom->addWidget(layerTable_);
  bottom->setStretchFactor(0, 3);
  bottom->setStretchFactor(1, 2);
  auto *main = new QSplitter(Qt::Vertical, this);
  main->addWidget(top);
  main->addWidget(bottom);
  main->setStretchFactor(0, 3);
  main->setStretchFactor(1, 2);
  layout->addWidget(main, 1);
  // Blocks and iterations are whole numbers; the plots fit a 1280 x 720 window.
  for (QCustomPlot *p : plots())
    p->setMinimumHeight(110);
  for (QCustomPlot *p : {barsPlot_, layerPlot_}) {
    auto ticker = QSharedPointer<QCPAxisTickerFixed>(new QCPAxisTickerFixed);
    ticker->setTickStep(1.0);
    ticker->setScaleStrategy(QCPAxisTickerFixed::ssMultiples);
    p->xAxis->setTicker(ticker);
  }

  reset(QString(), true, 0, 0, 0);
}

void RunMonitor::reset(const QString &title, bool trainsBlocks, int blockCount, int iterations,
                       double learningRate) {
  title_ = title;
  trainsBlocks_ = trainsBlocks;
  iterations_ = iterations;
  learningRate_ = learningRate;
  current_ = -1;
  currentIteration_ = -1;
  states_.clear();
  curves_.clear();
  initial_.clear();
  final_.clear();
  heldoutFinal_.clear();
  seconds_.clear();
  layers_.clear();
  roles_.clear();
  lastLog_.clear();
  done_ = total_ = 0;
  lossMin_ = lossMax_ = 0;
  lossPlot_->clearGraphs();
  graphs_.clear();
  layerPlot_->clearGraphs();
  layerTable_->setRowCount(0);
  initialBars_->data()->clear();
  finalBars_->data()->clear();
  heldoutBars_->data()->clear();
  ensureBlocks(blockCount);
  lossMessage_->setText(trainsBlocks ? tr("loss curves appear as blocks train")
                                     : tr("this method trains no blocks: see the per-layer "
                                          "errors below"));
  layerMessage_->setText(tr("each layer's error appears when its Ŵ is final"));
  lossPlot_->xAxis->setRange(0, std::max(1, iterations));
  lossPlot_->yAxis->setRange(1e-6, 1);
  barsPlot_->xAxis->setRange(-0.5, std::max(1, blockCount) - 0.5);
  barsPlot_->yAxis->setRange(1e-6, 1);
  layerPlot_->xAxis->setRange(-0.5, std::max(1, blockCount) - 0.5);
  layerPlot_->yAxis->setRange(0, 40);
  refreshSchedule();
  refreshStatus();
  for (QCustomPlot *p : plots())
    p->replot(QCustomPlot::rpQueuedReplot);
}

void RunMonitor::ensureBlocks(int count) {
  while (int(states_.size()) < count) {
    const int b = int(states_.size());
    states_.push_back(BlockState::Waiting);
    curves_.push_back({});
    initial_.push_back(std::nan(""));
    final_.push_back(std::nan(""));
    heldoutFinal_.push_back(std::nan(""));
    seconds_.push_back(0);
    QCPGraph *g = lossPlot_->addGraph();
    g->setName(tr("block %1").arg(b));
    g->removeFromLegend();
    graphs_.push_back(g);
  }
  strip_->setStates(states_);
}

void RunMonitor::addEvents(const QVector<MonitorEvent> &events) {
  using K = MonitorEvent::Kind;
  const int firstNewRow = int(layers_.size());
  // restyle: a block changed state (colours, legend, layers: a full redraw);
  // pointsAdded alone: new points of the current block (its layer suffices).
  bool restyle = false, pointsAdded = false, barsChanged = false;
  for (const MonitorEvent &e : events) {
    switch (e.kind) {
    case K::BlockStarted:
      ensureBlocks(int(e.total));
      if (current_ >= 0 && current_ < int(states_.size()) &&
          states_[current_] == BlockState::Training)
        states_[current_] = BlockState::Done;
      current_ = e.block;
      currentIteration_ = -1;
      if (e.block >= 0 && e.block < int(states_.size()))
        states_[e.block] = BlockState::Training;
      restyle = true;
      break;
    case K::Iteration:
      ensureBlocks(e.block + 1);
      if (e.block >= 0) {
        if (e.block != current_ || curves_[e.block].isEmpty())
          restyle = true; // the legend and the "no curves yet" message change
        curves_[e.block].push_back(QPointF(e.iteration, e.value));
        graphs_[e.block]->addData(e.iteration, e.value);
        if (e.value > 0) {
          lossMin_ = lossMin_ > 0 ? std::min(lossMin_, e.value) : e.value;
          lossMax_ = std::max(lossMax_, e.value);
        }
        currentIteration_ = e.iteration;
        pointsAdded = true;
      }
      break;
    case K::BlockFinished:
      ensureBlocks(e.block + 1);
      if (e.block >= 0) {
        if (states_[e.block] != BlockState::Restored)
          states_[e.block] = BlockState::Done;
        initial_[e.block] = e.value;
        final_[e.block] = e.value2;
        seconds_[e.block] = e.seconds;
        barsChanged = true;
        restyle = true;
      }
      break;
    case K::BlockHeldOut:
      ensureBlocks(e.block + 1);
      if (e.block >= 0) {
        heldoutFinal_[e.block] = e.value2;
        barsChanged = true;
      }
      break;
    case K::Layer:
      layers_.push_back({e.block, e.text, e.value, e.value2});
      break;
    case K::Progress:
      done_ = e.done;
      total_ = e.total;
      break;
    case K::Log:
      lastLog_ = e.text;
      // Replayed blocks of a resumed run say so.
      if (e.text.endsWith(QLatin1String("restored from the checkpoint"))) {
        const QStringList words = e.text.split(' ');
        bool ok = false;
        const int b = words.size() > 1 ? words[1].toInt(&ok) : -1;
        if (ok) {
          ensureBlocks(b + 1);
          states_[b] = BlockState::Restored;
        }
      }
      break;
    default:
      break;
    }
  }
  strip_->setStates(states_);
  if (restyle || pointsAdded) {
    if (restyle)
      styleCurves();
    const QCPRange x = lossPlot_->xAxis->range(), y = lossPlot_->yAxis->range();
    rescaleLoss();
    if (restyle || x != lossPlot_->xAxis->range() || y != lossPlot_->yAxis->range())
      lossPlot_->replot(QCustomPlot::rpQueuedReplot);
    else
      currentLayer_->replot();
  }
  if (barsChanged) {
    refreshBars();
    barsPlot_->replot(QCustomPlot::rpQueuedReplot);
  }
  if (int(layers_.size()) > firstNewRow) {
    refreshLayers(firstNewRow);
    layerPlot_->replot(QCustomPlot::rpQueuedReplot);
  }
  refreshSchedule();
  refreshStatus();
}

void RunMonitor::styleCurves() {
  // Finished blocks fade into a light band; the current block stands out.
  if (lossPlot_->legend->itemCount() > 0)
    lossPlot_->legend->clearItems();
  bool anyFinished = false;
  for (int b = 0; b < int(graphs_.size()); ++b) {
    QCPGraph *g = graphs_[b];
    const bool current = b == current_;
    const bool finished = states_[b] == BlockState::Done || states_[b] == BlockState::Restored;
    g->setLayer(current ? currentLayer_ : lossPlot_->layer(QStringLiteral("main")));
    if (current) {
      g->setPen(QPen(QColor(0xd6, 0x27, 0x28), 2.2));
      g->setName(tr("block %1 (current)").arg(b));
    } else if (finished) {
      QColor c = states_[b] == BlockState::Restored ? QColor(0x8e, 0x6c, 0xc4) : kLineColor;
      c.setAlpha(70);
      g->setPen(QPen(c, 1.0));
      g->setName(tr("finished blocks"));
    } else {
      g->setPen(QPen(QColor(0xb0, 0xb0, 0xb0), 1.0));
    }
    if (current && !curves_[b].isEmpty())
      g->addToLegend();
    if (finished && !current && !anyFinished && !curves_[b].isEmpty()) {
      g->addToLegend();
      anyFinished = true;
    }
  }
  const bool any = std::any_of(curves_.begin(), curves_.end(),
                               [](const QVector<QPointF> &c) { return !c.isEmpty(); });
  lossMessage_->setVisible(!any);
}

void RunMonitor::rescaleLoss() {
  int maxIter = std::max(1, iterations_);
  for (const QVector<QPointF> &c : curves_)
    if (!c.isEmpty())
      maxIter = std::max(maxIter, int(c.back().x()) + 1);
  lossPlot_->xAxis->setRange(0, maxIter);
  setDecadeRange(lossPlot_->yAxis, lossMin_, lossMax_, 2);
}

void RunMonitor::refreshBars() {
  QVector<double> keys, initial, final, heldoutKeys, heldout;
  double lo = 0, hi = 0;
  for (int b = 0; b < int(initial_.size()); ++b) {
    if (std::isnan(initial_[b]))
      continue;
    keys << b;
    initial << initial_[b];
    final << final_[b];
    if (!std::isnan(heldoutFinal_[b])) {
      heldoutKeys << b;
      heldout << heldoutFinal_[b];
    }
    for (double v : {initial_[b], final_[b], heldoutFinal_[b]})
      if (v > 0) {
        lo = lo > 0 ? std::min(lo, v) : v;
        hi = std::max(hi, v);
      }
  }
  initialBars_->setData(keys, initial, true);
  finalBars_->setData(keys, final, true);
  heldoutBars_->setData(heldoutKeys, heldout, true);
  barsPlot_->xAxis->setRange(-0.5, std::max(1, int(states_.size())) - 0.5);
  setDecadeRange(barsPlot_->yAxis, lo, hi, 2);
}

void RunMonitor::refreshLayers(int firstNewRow) {
  layerTable_->setRowCount(int(layers_.size()));
  for (int r = firstNewRow; r < int(layers_.size()); ++r) {
    const LayerRow &l = layers_[r];
    const QStringList cells = {l.block < 0 ? QStringLiteral("–") : QString::number(l.block), l.role,
                               QString::number(l.mse, 'g', 3), QString::number(l.sqnrDb, 'f', 2)};
    for (int c = 0; c < 4; ++c) {
      auto *item = new QTableWidgetItem(cells[c]);
      item->setTextAlignment(c == 1 ? Qt::AlignLeft | Qt::AlignVCenter
                                    : Qt::AlignRight | Qt::AlignVCenter);
      if (c == 2)
        item->setToolTip(formatNumber(l.mse)); // three digits in the cell, all of them here
      layerTable_->setItem(r, c, item);
    }
    if (l.block < 0)
      continue; // embeddings / LM head: in the table only
    int series = int(roles_.indexOf(l.role));
    if (series < 0) {
      roles_ << l.role;
      series = int(roles_.size()) - 1;
      QCPGraph *g = layerPlot_->addGraph();
      g->setName(l.role);
      g->setPen(QPen(seriesColor(series), 1.5));
      g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDisc, 5));
    }
    layerPlot_->graph(series)->addData(l.block, l.sqnrDb);
  }
  layerTable_->scrollToBottom();
  double lo = 1e300, hi = -1e300;
  int maxBlock = 0;
  for (const LayerRow &l : layers_) {
    if (l.block < 0 || !std::isfinite(l.sqnrDb))
      continue;
    lo = std::min(lo, l.sqnrDb);
    hi = std::max(hi, l.sqnrDb);
    maxBlock = std::max(maxBlock, l.block);
  }
  if (hi >= lo) {
    const double pad = std::max(1.0, (hi - lo) * 0.1);
    layerPlot_->yAxis->setRange(lo - pad, hi + pad);
  }
  layerPlot_->xAxis->setRange(-0.5, std::max(maxBlock + 1, int(states_.size())) - 0.5);
  layerMessage_->setVisible(layers_.isEmpty());
}

void RunMonitor::refreshSchedule() {
  const bool show = trainsBlocks_ && iterations_ > 0 && learningRate_ > 0;
  scheduleMessage_->setText(show ? QString() : tr("no learning-rate schedule for this method"));
  scheduleMessage_->setVisible(!show);
  if (show && scheduleGraph_->dataCount() == 0) {
    QVector<double> x, y;
    const int n = std::min(iterations_, 400);
    for (int i = 0; i <= n; ++i) {
      const double it = double(i) * iterations_ / n;
      x << it;
      y << 0.5 * learningRate_ * (1.0 + std::cos(M_PI * it / iterations_));
    }
    scheduleGraph_->setData(x, y, true);
    schedulePlot_->xAxis->setRange(0, iterations_);
    schedulePlot_->yAxis->setRange(0, learningRate_ * 1.05);
  }
  if (!show)
    scheduleGraph_->data()->clear();
  const bool markerShown = show && currentIteration_ >= 0;
  const bool markerMoved =
      markerShown != scheduleMarker_->visible() ||
      (markerShown && scheduleMarker_->point1->coords().x() != currentIteration_);
  scheduleMarker_->setVisible(markerShown);
  if (currentIteration_ >= 0) {
    scheduleMarker_->point1->setCoords(currentIteration_, 0);
    scheduleMarker_->point2->setCoords(currentIteration_, 1);
  }
  // The curve is drawn once; a moving marker redraws its own layer.
  if (show != scheduleShown_) {
    scheduleShown_ = show;
    schedulePlot_->replot(QCustomPlot::rpQueuedReplot);
  } else if (markerMoved) {
    markerLayer_->replot();
  }
}

void RunMonitor::refreshStatus() {
  status_->setText(statusText());
}

QString RunMonitor::statusText() const {
  if (title_.isEmpty())
    return tr("No run yet: choose a method and a scheme, then Start.");
  QString text = QStringLiteral("<b>%1</b>").arg(title_.toHtmlEscaped());
  const int doneBlocks = int(std::count_if(states_.begin(), states_.end(), [](BlockState s) {
    return s == BlockState::Done || s == BlockState::Restored;
  }));
  if (!states_.isEmpty())
    text += tr(" · blocks done %1/%2").arg(doneBlocks).arg(states_.size());
  if (current_ >= 0 && current_ < int(states_.size()) &&
      states_[current_] == BlockState::Training && currentIteration_ >= 0)
    text += tr(" · block %1, iteration %2%3")
                .arg(current_)
                .arg(currentIteration_ + 1)
                .arg(iterations_ > 0 ? QStringLiteral("/%1").arg(iterations_) : QString());
  // Seconds per iteration from the finished blocks that trained here.
  double seconds = 0;
  int iterations = 0;
  for (int b = 0; b < int(states_.size()); ++b)
    if (states_[b] == BlockState::Done && !curves_[b].isEmpty()) {
      seconds += seconds_[b];
      iterations += int(curves_[b].size());
    }
  if (iterations > 0)
    text += tr(" · %1 s/iteration").arg(seconds / iterations, 0, 'f', 3);
  if (!layers_.isEmpty())
    text += tr(" · %1 layers final").arg(layers_.size());
  if (!lastLog_.isEmpty())
    text += QStringLiteral("<br><span style='color:#666'>%1</span>").arg(lastLog_.toHtmlEscaped());
  return text;
}

QVector<QPointF> RunMonitor::curve(int block) const {
  QVector<QPointF> out;
  if (block < 0 || block >= int(graphs_.size()))
    return out;
  // Read back from the plot itself: what is drawn, not what was received.
  for (auto it = graphs_[block]->data()->constBegin(); it != graphs_[block]->data()->constEnd();
       ++it)
    out << QPointF(it->key, it->value);
  return out;
}

RunMonitor::BlockState RunMonitor::blockState(int block) const {
  return block >= 0 && block < int(states_.size()) ? states_[block] : BlockState::Waiting;
}

double RunMonitor::initialLoss(int block) const {
  return block >= 0 && block < int(initial_.size()) ? initial_[block] : std::nan("");
}

double RunMonitor::finalLoss(int block) const {
  return block >= 0 && block < int(final_.size()) ? final_[block] : std::nan("");
}

double RunMonitor::heldoutFinalLoss(int block) const {
  return block >= 0 && block < int(heldoutFinal_.size()) ? heldoutFinal_[block] : std::nan("");
}

QList<QCustomPlot *> RunMonitor::plots() const {
  return {lossPlot_, barsPlot_, schedulePlot_, layerPlot_};
}

} // namespace lrq::ui
