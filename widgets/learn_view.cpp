#include "widgets/learn_view.h"

#include "widgets/concurrent_run.h"
#include "widgets/plot_style.h"

#include <QCheckBox>
#include <QComboBox>
#include <QFile>
#include <QFormLayout>
#include <QGridLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QListWidget>
#include <QProgressBar>
#include <QPushButton>
#include <QSlider>
#include <QSpinBox>
#include <QSplitter>
#include <QTabWidget>
#include <QTextBrowser>
#include <QTimer>
#include <QVBoxLayout>
#include <QtConcurrent/QtConcurrentRun>

#include <qcustomplot.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <future>
#include <mutex>

namespace lrq::ui {

using lesson::ErrorSweep;
using lesson::FitLessonResult;
using lesson::GridLessonResult;
using lesson::GridOptions;
using lesson::LessonLayer;
using lesson::Tile;

namespace {

const QColor kBlue(0x1f, 0x5f, 0x9e);
const QColor kOrange(0xd9, 0x6c, 0x1f);
const QColor kGreen(0x2e, 0x8b, 0x57);
const QColor kPurple(0x7b, 0x4f, 0xa8);
const QColor kBars(0x8f, 0xb4, 0xd9);

// A lesson, the tab that illustrates it and the settings its "Set up" button
// applies (the starting point its "Try it" paragraph assumes).
struct Lesson {
  const char *title;
  const char *file;
  int tab;
  int bits;
  int groupSize;
  double clip;
  int rank;
  bool runFit; // start the FlexRound vs LRQ fit
};

const Lesson kLessons[] = {
    {"1. What rounding costs", ":/lessons/01_rounding.md", 0, 4, 0, 1.0, 16, false},
    {"2. Why groups help", ":/lessons/02_groups.md", 0, 3, 0, 1.0, 16, false},
    {"3. LQER: scaled error is low rank", ":/lessons/03_lqer.md", 0, 4, 0, 1.0, 32, false},
    {"4. FlexRound: learn the division", ":/lessons/04_flexround.md", 1, 3, 0, 1.0, 16, true},
    {"5. LRQ: low-rank shared scales", ":/lessons/05_lrq.md", 1, 3, 0, 1.0, 16, true},
    {"6. 8-bit activations, SmoothQuant", ":/lessons/06_activations.md", 2, 8, 0, 1.0, 16, false},
    {"7. LR-QAT: low rank in the grid", ":/lessons/07_lrqat.md", 1, 4, 0, 1.0, 16, false},
};

const int kGroupSizes[] = {0, 128, 64, 32};

// A tab's 2 x 3 plot grid with its reading guide in the last cell.
void finishPlotGrid(QGridLayout *g, QVBoxLayout *v, QLabel *guide) {
  guide->setWordWrap(true);
  guide->setAlignment(Qt::AlignTop | Qt::AlignLeft);
  guide->setStyleSheet(QStringLiteral("color: #333; padding: 6px;"));
  g->addWidget(guide, 1, 2);
  for (int c = 0; c < 3; ++c)
    g->setColumnStretch(c, 1);
  g->setRowStretch(0, 1);
  g->setRowStretch(1, 1);
  v->addLayout(g, 1);
}

QCustomPlot *makePlot(const QString &title, int minHeight = 150) {
  auto *plot = new QCustomPlot;
  stylePlot(plot, title); // the workbench's common look, a size smaller here
  plotTitle(plot)->setFont(QFont(plot->font().family(), 9, QFont::DemiBold));
  for (QCPAxis *axis : {plot->xAxis, plot->yAxis}) {
    axis->setTickLabelFont(QFont(plot->font().family(), 8));
    axis->setLabelFont(QFont(plot->font().family(), 8));
    axis->setLabelPadding(2);
  }
  plot->legend->setFont(QFont(plot->font().family(), 7));
  plot->legend->setBrush(QColor(255, 255, 255, 220));
  plot->legend->setBorderPen(QPen(QColor(0xc0, 0xc0, 0xc0)));
  plot->legend->setRowSpacing(-3);
  plot->setMinimumHeight(minHeight);
  plot->setMinimumWidth(160);
  return plot;
}

void setLogY(QCustomPlot *plot) {
  plot->yAxis->setScaleType(QCPAxis::stLogarithmic);
  QSharedPointer<QCPAxisTickerLog> ticker(new QCPAxisTickerLog);
  plot->yAxis->setTicker(ticker);
  plot->yAxis->setNumberFormat(QStringLiteral("eb"));
  plot->yAxis->setNumberPrecision(0);
}

QCPColorGradient diverging() {
  QCPColorGradient g;
  g.clearColorStops();
  g.setColorStopAt(0.0, QColor(0x21, 0x4a, 0x9a));
  g.setColorStopAt(0.25, QColor(0x6f, 0x9f, 0xd4));
  g.setColorStopAt(0.5, QColor(0xf7, 0xf7, 0xf7));
  g.setColorStopAt(0.75, QColor(0xe8, 0x8a, 0x6a));
  g.setColorStopAt(1.0, QColor(0xb0, 0x1c, 0x2a));
  return g;
}

// A heat map with its colour scale on the right; rows grow downwards as in a matrix.
QCPColorMap *makeHeatMap(QCustomPlot *plot, const QString &scaleLabel) {
  plot->xAxis->setLabel(QStringLiteral("input column j"));
  plot->yAxis->setLabel(QStringLiteral("output row i"));
  plot->yAxis->setRangeReversed(true);
  plot->xAxis->ticker()->setTickCount(3);
  plot->yAxis->ticker()->setTickCount(4);
  plot->xAxis->grid()->setVisible(false);
  plot->yAxis->grid()->setVisible(false);
  auto *map = new QCPColorMap(plot->xAxis, plot->yAxis);
  auto *scale = new QCPColorScale(plot);
  plot->plotLayout()->addElement(1, 1, scale);
  scale->setType(QCPAxis::atRight);
  scale->setBarWidth(8);
  scale->axis()->setTickLabelFont(QFont(plot->font().family(), 7));
  scale->axis()->setLabelFont(QFont(plot->font().family(), 7));
  scale->axis()->setLabel(scaleLabel);
  scale->axis()->setNumberFormat(QStringLiteral("g"));
  scale->axis()->setNumberPrecision(2);
  scale->axis()->ticker()->setTickCount(4);
  map->setColorScale(scale);
  map->setGradient(diverging());
  map->setInterpolate(false);
  auto *group = new QCPMarginGroup(plot);
  plot->axisRect()->setMarginGroup(QCP::msBottom | QCP::msTop, group);
  scale->setMarginGroup(QCP::msBottom | QCP::msTop, group);
  // The title spans both columns.
  return map;
}

void fillHeatMap(QCustomPlot *plot, QCPColorMap *map, const Tile &t, double range) {
  map->data()->setSize(int(t.cols), int(t.rows));
  map->data()->setRange(QCPRange(double(t.col0), double(t.col0 + t.cols - 1)),
                        QCPRange(double(t.row0), double(t.row0 + t.rows - 1)));
  for (int64_t i = 0; i < t.rows; ++i)
    for (int64_t j = 0; j < t.cols; ++j)
      map->data()->setCell(int(j), int(i), t.at(i, j));
  if (!(range > 0))
    range = 1;
  map->setDataRange(QCPRange(-range, range));
  plot->xAxis->setRange(double(t.col0) - 0.5, double(t.col0 + t.cols) - 0.5);
  plot->yAxis->setRange(double(t.row0) - 0.5, double(t.row0 + t.rows) - 0.5);
}

double absMax(const Tile &t) {
  double m = 0;
  for (double v : t.values)
    m = std::max(m, std::abs(v));
  return m;
}

QVector<double> indices(size_t n, double first = 0) {
  QVector<double> x(int(n), 0);
  for (int i = 0; i < int(n); ++i)
    x[i] = first + i;
  return x;
}

QString percent(double v) {
  return QString::number(100.0 * v, 'f', v < 0.001 ? 3 : v < 0.1 ? 2 : 1) + QStringLiteral(" %");
}

QSlider *makeSlider(int lo, int hi, int value) {
  auto *s = new QSlider(Qt::Horizontal);
  s->setRange(lo, hi);
  s->setValue(value);
  return s;
}

} // namespace

struct LearnView::GridJob {
  std::shared_ptr<const LessonLayer> layer;
  GridOptions options;
  bool wantSweep = false;
  QString sweepKey;
  GridLessonResult result;
  ErrorSweep sweep;
  QString error;
};

struct LearnView::ActJob {
  std::shared_ptr<const LessonLayer> layer;
  lesson::ActivationOptions options;
  lesson::ActivationLessonResult result;
  QString error;
};

struct LearnView::FitRelay : public ProgressObserver {
  void iterationLoss(int which, int, double loss) override {
    std::lock_guard<std::mutex> lock(mutex);
    (which == 0 ? flex : lrq).push_back(loss);
  }
  void progress(int64_t d, int64_t t, const std::string &) override {
    done = d;
    total = t;
  }
  std::mutex mutex;
  std::vector<double> flex, lrq;
  std::atomic<int64_t> done{0}, total{0};
  FitLessonResult result;
  QString error;
  bool cancelled = false;
};

LearnView::LearnView(QWidget *parent) : QWidget(parent) {
  jobs_.setMaxThreadCount(4);
  buildUi();
  connect(&gridWatcher_, &QFutureWatcher<void>::finished, this, &LearnView::onGridDone);
  connect(&fitWatcher_, &QFutureWatcher<void>::finished, this, &LearnView::onFitDone);
  connect(&actWatcher_, &QFutureWatcher<void>::finished, this, &LearnView::onActivationsDone);
  fitTimer_ = new QTimer(this);
  fitTimer_->setInterval(150);
  connect(fitTimer_, &QTimer::timeout, this, &LearnView::replotFitLive);
  showLesson(0);
  // The synthetic layer is there at once: the view is never empty.
  QTimer::singleShot(0, this, [this] { sourceChanged(); });
}

LearnView::~LearnView() {
  if (fitCancel_)
    fitCancel_->cancel();
  layerWatcher_.waitForFinished();
  gridWatcher_.waitForFinished();
  actWatcher_.waitForFinished();
  fitWatcher_.waitForFinished();
}

// ------------------------------------------------------------------ layout

void LearnView::buildUi() {
  auto *splitter = new QSplitter(Qt::Horizontal);
  splitter->addWidget(buildControls());
  tabs_ = new QTabWidget;
  tabs_->addTab(buildGridTab(), tr("Rounding && LQER"));
  tabs_->addTab(buildFitTab(), tr("FlexRound vs LRQ"));
  tabs_->addTab(buildActivationTab(), tr("Activations && SmoothQuant"));
  splitter->addWidget(tabs_);
  splitter->addWidget(buildLessonPanel());
  splitter->setStretchFactor(0, 0);
  splitter->setStretchFactor(1, 1);
  splitter->setStretchFactor(2, 0);
  splitter->setSizes({230, 780, 270});
  auto *layout = new QHBoxLayout(this);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addWidget(splitter);
}

QWidget *LearnView::buildControls() {
  auto *panel = new QWidget;
  auto *v = new QVBoxLayout(panel);
  v->setContentsMargins(2, 2, 2, 2);

  auto *sourceBox = new QGroupBox(tr("Layer"));
  auto *sf = new QVBoxLayout(sourceBox);
  sf->setContentsMargins(6, 4, 6, 4);
  source_ = new QComboBox;
  source_->addItem(tr("Synthetic matrix"));
  source_->addItem(tr("Layer of the model"));
  source_->setToolTip(tr("A seeded synthetic matrix, or one linear of the open model with its "
                         "inputs on the default calibration text"));
  block_ = new QSpinBox;
  block_->setRange(0, 0);
  block_->setPrefix(tr("block "));
  role_ = new QComboBox;
  for (const char *r :
       {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    role_->addItem(QString::fromLatin1(r));
  role_->setCurrentText(QStringLiteral("down_proj"));
  sf->addWidget(source_);
  auto *br = new QHBoxLayout;
  br->addWidget(block_);
  br->addWidget(role_, 1);
  sf->addLayout(br);
  status_ = new QLabel;
  status_->setWordWrap(true);
  status_->setTextFormat(Qt::RichText);
  status_->setStyleSheet(QStringLiteral("color: #444;"));
  status_->setMinimumHeight(status_->fontMetrics().lineSpacing() * 4);
  status_->setAlignment(Qt::AlignTop | Qt::AlignLeft);
  sf->addWidget(status_);
  v->addWidget(sourceBox);

  auto *gridBox = new QGroupBox(tr("Grid"));
  auto *gf = new QFormLayout(gridBox);
  gf->setContentsMargins(6, 4, 6, 4);
  bits_ = makeSlider(2, 8, 4);
  bits_->setTickPosition(QSlider::TicksBelow);
  bitsValue_ = new QLabel;
  auto *bitsRow = new QHBoxLayout;
  bitsRow->addWidget(bits_, 1);
  bitsRow->addWidget(bitsValue_);
  gf->addRow(tr("Bits"), bitsRow);
  group_ = new QComboBox;
  group_->addItems(
      {tr("per channel"), tr("groups of 128"), tr("groups of 64"), tr("groups of 32")});
  gf->addRow(tr("Steps"), group_);
  symmetric_ = new QCheckBox(tr("symmetric (zero point 0)"));
  gf->addRow(symmetric_);
  clip_ = makeSlider(50, 100, 100);
  clipValue_ = new QLabel;
  auto *clipRow = new QHBoxLayout;
  clipRow->addWidget(clip_, 1);
  clipRow->addWidget(clipValue_);
  gf->addRow(tr("Clip"), clipRow);
  rank_ = makeSlider(0, 64, 16);
  rankValue_ = new QLabel;
  auto *rankRow = new QHBoxLayout;
  rankRow->addWidget(rank_, 1);
  rankRow->addWidget(rankValue_);
  gf->addRow(tr("LQER k"), rankRow);
  v->addWidget(gridBox);

  auto *figBox = new QGroupBox(tr("Rounding error"));
  auto *fv = new QVBoxLayout(figBox);
  fv->setContentsMargins(6, 4, 6, 4);
  figures_ = new QLabel;
  figures_->setWordWrap(true);
  figures_->setTextFormat(Qt::RichText);
  figures_->setAlignment(Qt::AlignTop | Qt::AlignLeft);
  fv->addWidget(figures_);
  v->addWidget(figBox, 1);

  connect(source_, qOverload<int>(&QComboBox::currentIndexChanged), this,
          &LearnView::sourceChanged);
  connect(block_, qOverload<int>(&QSpinBox::valueChanged), this, [this] {
    if (source_->currentIndex() == 1)
      loadLayer();
  });
  connect(role_, qOverload<int>(&QComboBox::currentIndexChanged), this, [this] {
    if (source_->currentIndex() == 1)
      loadLayer();
  });
  for (QSlider *s : {bits_, clip_})
    connect(s, &QSlider::valueChanged, this, [this] {
      updateLabels();
      requestGrid();
    });
  connect(group_, qOverload<int>(&QComboBox::currentIndexChanged), this, &LearnView::requestGrid);
  connect(symmetric_, &QCheckBox::toggled, this, &LearnView::requestGrid);
  // The rank only moves a marker: no recomputation.
  connect(rank_, &QSlider::valueChanged, this, [this] {
    updateLabels();
    updateRankReadout();
  });
  updateLabels();
  panel->setMinimumWidth(220);
  panel->setMaximumWidth(300);
  return panel;
}

QWidget *LearnView::buildGridTab() {
  auto *page = new QWidget;
  auto *g = new QGridLayout(page);
  g->setContentsMargins(2, 2, 2, 2);
  g->setSpacing(2);

  histPlot_ = makePlot(tr("Weights of one row / group and the grid's levels"));
  histPlot_->xAxis->setLabel(tr("weight value"));
  histPlot_->yAxis->setLabel(tr("count"));
  histBars_ = new QCPBars(histPlot_->xAxis, histPlot_->yAxis);
  histBars_->setName(tr("weights"));
  histBars_->setPen(Qt::NoPen);
  histBars_->setBrush(kBars);
  levelsGraph_ = histPlot_->addGraph();
  levelsGraph_->setName(tr("grid levels"));
  levelsGraph_->setLineStyle(QCPGraph::lsImpulse);
  levelsGraph_->setPen(QPen(kOrange, 1.2));
  legendBelow(histPlot_, 2);
  histPlot_->legend->setVisible(true);

  sweepPlot_ = makePlot(tr("Error vs bits"));
  sweepPlot_->xAxis->setLabel(tr("bits"));
  sweepPlot_->yAxis->setLabel(tr("‖E‖/‖W‖"));
  setLogY(sweepPlot_);
  const QColor sweepColors[] = {kBlue, kGreen, kPurple, kOrange};
  for (int i = 0; i < 4; ++i) {
    QCPGraph *gr = sweepPlot_->addGraph();
    gr->setPen(QPen(sweepColors[i], 1.5));
    gr->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, 4));
  }
  sweepMarker_ = sweepPlot_->addGraph();
  sweepMarker_->setName(tr("now"));
  sweepMarker_->setLineStyle(QCPGraph::lsNone);
  sweepMarker_->setScatterStyle(
      QCPScatterStyle(QCPScatterStyle::ssCircle, QPen(Qt::black, 1.5), Qt::NoBrush, 10));
  sweepMarker_->removeFromLegend();
  legendBelow(sweepPlot_, 2);
  sweepPlot_->legend->setVisible(true);
  sweepPlot_->xAxis->setRange(1.7, 8.3);

  const QString tileTitles[] = {tr("W (tile)"), tr("Ŵ = RTN(W)"), tr("E = W − Ŵ")};
  const QString tileScales[] = {tr("weight"), tr("weight"), tr("error")};
  for (int i = 0; i < 3; ++i) {
    tilePlots_[i] = makePlot(tileTitles[i], 140);
    tileMaps_[i] = makeHeatMap(tilePlots_[i], tileScales[i]);
  }

  spectrumPlot_ = makePlot(tr("Spectrum of the error"));
  spectrumPlot_->xAxis->setLabel(tr("index i"));
  spectrumPlot_->yAxis->setLabel(tr("σᵢ / σ₁"));
  setLogY(spectrumPlot_);
  QCPGraph *plain = spectrumPlot_->addGraph();
  plain->setName(tr("E (LQER)"));
  plain->setPen(QPen(kBlue, 1.5));
  QCPGraph *scaled = spectrumPlot_->addGraph();
  scaled->setName(tr("E·diag(s) (L²QER)"));
  scaled->setPen(QPen(kOrange, 1.5));
  legendBelow(spectrumPlot_, 2);
  spectrumPlot_->legend->setVisible(true);

  remainingPlot_ = makePlot(tr("Error left after a rank-k correction"));
  remainingPlot_->xAxis->setLabel(tr("rank k"));
  remainingPlot_->yAxis->setLabel(tr("% of the RTN error"));
  QCPGraph *lq = remainingPlot_->addGraph();
  lq->setName(tr("LQER ‖E − E_k‖"));
  lq->setPen(QPen(kBlue, 1.8));
  QCPGraph *l2 = remainingPlot_->addGraph();
  l2->setName(tr("L²QER, activation-weighted"));
  l2->setPen(QPen(kOrange, 1.8));
  legendBelow(remainingPlot_, 2);
  remainingPlot_->legend->setVisible(true);
  remainingPlot_->yAxis->setRange(0, 105);
  remainingPlot_->xAxis->setRange(0, 64);
  rankLine_ = new QCPItemStraightLine(remainingPlot_);
  rankLine_->setPen(QPen(QColor(0x60, 0x60, 0x60), 1, Qt::DashLine));
  rankText_ = new QCPItemText(remainingPlot_);
  rankText_->setPositionAlignment(Qt::AlignTop | Qt::AlignRight);
  rankText_->position->setType(QCPItemPosition::ptAxisRectRatio);
  rankText_->position->setCoords(0.98, 0.45);
  rankText_->setFont(QFont(remainingPlot_->font().family(), 8));
  rankText_->setTextAlignment(Qt::AlignRight);
  rankText_->setBrush(QColor(255, 255, 255, 220));

  g->addWidget(histPlot_, 0, 0, 1, 2);
  g->addWidget(sweepPlot_, 0, 2);
  for (int i = 0; i < 3; ++i)
    g->addWidget(tilePlots_[i], 1, i);
  g->addWidget(spectrumPlot_, 2, 0, 1, 1);
  g->addWidget(remainingPlot_, 2, 1, 1, 2);
  for (int c = 0; c < 3; ++c)
    g->setColumnStretch(c, 1);
  return page;
}

QWidget *LearnView::buildFitTab() {
  auto *page = new QWidget;
  auto *v = new QVBoxLayout(page);
  v->setContentsMargins(2, 2, 2, 2);
  auto *bar = new QHBoxLayout;
  bar->addWidget(new QLabel(tr("Adam steps")));
  fitSteps_ = new QSpinBox;
  fitSteps_->setRange(10, 2000);
  fitSteps_->setValue(250);
  bar->addWidget(fitSteps_);
  bar->addWidget(new QLabel(tr("LRQ rank r")));
  fitRank_ = new QSpinBox;
  fitRank_->setRange(1, 128);
  fitRank_->setValue(16);
  bar->addWidget(fitRank_);
  runFit_ = new QPushButton(tr("Run"));
  cancelFit_ = new QPushButton(tr("Cancel"));
  cancelFit_->setEnabled(false);
  bar->addWidget(runFit_);
  bar->addWidget(cancelFit_);
  fitProgress_ = new QProgressBar;
  fitProgress_->setRange(0, 1);
  fitProgress_->setValue(0);
  fitProgress_->setTextVisible(true);
  bar->addWidget(fitProgress_, 1);
  v->addLayout(bar);
  fitSummary_ = new QLabel(tr("Grid from the left panel (bits, steps, symmetric; min/max range). "
                              "Both methods start from RTN and minimise the layer's output "
                              "error ‖X Wᵀ − X Ŵᵀ‖² on its calibration inputs."));
  fitSummary_->setWordWrap(true);
  v->addWidget(fitSummary_);

  auto *g = new QGridLayout;
  g->setSpacing(2);
  lossPlot_ = makePlot(tr("Output error during training"));
  lossPlot_->xAxis->setLabel(tr("Adam step"));
  lossPlot_->yAxis->setLabel(tr("loss / RTN loss"));
  QCPGraph *lf = lossPlot_->addGraph();
  lf->setName(tr("FlexRound (full S)"));
  lf->setPen(QPen(kBlue, 1.6));
  QCPGraph *ll = lossPlot_->addGraph();
  ll->setName(tr("LRQ (L·U, rank r)"));
  ll->setPen(QPen(kOrange, 1.6));
  QCPGraph *hf = lossPlot_->addGraph();
  hf->setName(tr("FlexRound, held-out tokens"));
  hf->setPen(QPen(kBlue, 1.4, Qt::DashLine));
  hf->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, 3));
  QCPGraph *hl = lossPlot_->addGraph();
  hl->setName(tr("LRQ, held-out tokens"));
  hl->setPen(QPen(kOrange, 1.4, Qt::DashLine));
  hl->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, 3));
  legendBelow(lossPlot_, 2);
  lossPlot_->legend->setVisible(true);
  lossPlot_->yAxis->setRange(0, 1.05);

  flipPlot_ = makePlot(tr("Codes changed vs RTN (tile)"));
  flipMap_ = makeHeatMap(flipPlot_, tr("code − RTN code"));
  flipMethod_ = new QComboBox;
  flipMethod_->addItems({tr("LRQ flips"), tr("FlexRound flips")});
  connect(flipMethod_, qOverload<int>(&QComboBox::currentIndexChanged), this, [this] {
    if (fit_)
      showFit(*fit_);
  });

  scaleSpectrumPlot_ = makePlot(tr("Spectra of the learned scales"));
  scaleSpectrumPlot_->xAxis->setLabel(tr("index i"));
  scaleSpectrumPlot_->yAxis->setLabel(tr("σᵢ / σ₁"));
  setLogY(scaleSpectrumPlot_);
  QCPGraph *sf = scaleSpectrumPlot_->addGraph();
  sf->setName(tr("FlexRound S"));
  sf->setPen(QPen(kBlue, 1.5));
  QCPGraph *sl = scaleSpectrumPlot_->addGraph();
  sl->setName(tr("LRQ L·U"));
  sl->setPen(QPen(kOrange, 1.5));
  legendBelow(scaleSpectrumPlot_, 2);
  scaleSpectrumPlot_->legend->setVisible(true);

  const QString titles[] = {tr("FlexRound's S (tile)"), tr("LRQ's L·U (tile)")};
  for (int i = 0; i < 2; ++i) {
    scalePlots_[i] = makePlot(titles[i]);
    scaleMaps_[i] = makeHeatMap(scalePlots_[i], tr("log-scale"));
  }
  auto *flipBox = new QWidget;
  auto *fb = new QVBoxLayout(flipBox);
  fb->setContentsMargins(0, 0, 0, 0);
  fb->setSpacing(0);
  fb->addWidget(flipMethod_);
  fb->addWidget(flipPlot_, 1);
  g->addWidget(lossPlot_, 0, 0);
  g->addWidget(flipBox, 0, 1);
  g->addWidget(scaleSpectrumPlot_, 0, 2);
  g->addWidget(scalePlots_[0], 1, 0);
  g->addWidget(scalePlots_[1], 1, 1);
  auto *howTo = new QLabel(
      tr("<b>Reading the plots</b><br>"
         "<b>Loss</b>: output error relative to RTN (1 = no gain); solid on the training "
         "tokens, dashed on held-out tokens of the same layer.<br>"
         "<b>Flip map</b>: learned code minus RTN code. +1 (red): one level up from RTN's choice "
         "(a rounding flipped up, or the learned step moved the weight across a boundary), −1 "
         "(blue) one level down.<br>"
         "<b>Scales</b>: the learned log-divisor of each weight. FlexRound learns one per "
         "weight (speckle); LRQ's L·U has rank r, so its spectrum stops after r values."));
  finishPlotGrid(g, v, howTo);

  connect(runFit_, &QPushButton::clicked, this, &LearnView::runFit);
  connect(cancelFit_, &QPushButton::clicked, this, &LearnView::cancelFit);
  return page;
}

QWidget *LearnView::buildActivationTab() {
  auto *page = new QWidget;
  auto *v = new QVBoxLayout(page);
  v->setContentsMargins(2, 2, 2, 2);
  auto *bar = new QHBoxLayout;
  bar->addWidget(new QLabel(tr("SmoothQuant α")));
  alpha_ = makeSlider(0, 100, 50);
  alpha_->setMaximumWidth(260);
  alphaValue_ = new QLabel(QStringLiteral("0.50"));
  bar->addWidget(alpha_);
  bar->addWidget(alphaValue_);
  bar->addStretch(1);
  v->addLayout(bar);
  actSummary_ = new QLabel(
      tr("Activations quantized per token (asymmetric, one step per token), with and without "
         "SmoothQuant's channel scale s_j = max|x_j|^α / max|w_j|^(1−α): X → X/s, W → W·s."));
  actSummary_->setWordWrap(true);
  v->addWidget(actSummary_);

  auto *g = new QGridLayout;
  g->setSpacing(2);
  actMaxPlot_ = makePlot(tr("Activations: max |x_j| per input channel"));
  actMaxPlot_->xAxis->setLabel(tr("input channel j"));
  actMaxPlot_->yAxis->setLabel(tr("max over tokens |x_j|"));
  weightMaxPlot_ = makePlot(tr("Weights: max |w_j| per input column"));
  weightMaxPlot_->xAxis->setLabel(tr("input column j"));
  weightMaxPlot_->yAxis->setLabel(tr("max over rows |w_ij|"));
  for (QCustomPlot *p : {actMaxPlot_, weightMaxPlot_}) {
    setLogY(p);
    QCPGraph *before = p->addGraph();
    before->setName(tr("before"));
    before->setPen(QPen(kBlue, 1.2));
    QCPGraph *after = p->addGraph();
    after->setName(tr("after SmoothQuant"));
    after->setPen(QPen(kOrange, 1.2));
    legendBelow(p, 2);
    p->legend->setVisible(true);
  }
  actErrorPlot_ = makePlot(tr("Layer output error vs activation bits"));
  actErrorPlot_->xAxis->setLabel(tr("activation bits (per token)"));
  actErrorPlot_->yAxis->setLabel(tr("‖Ŷ − XWᵀ‖ / ‖XWᵀ‖"));
  setLogY(actErrorPlot_);
  const QColor colors[] = {kBlue, kOrange, kBlue, kOrange};
  const QString names[] = {tr("A only"), tr("A only, SmoothQuant"), tr("W8 + A"),
                           tr("W8 + A, SmoothQuant")};
  for (int i = 0; i < 4; ++i) {
    QCPGraph *gr = actErrorPlot_->addGraph();
    gr->setName(names[i]);
    gr->setPen(QPen(colors[i], 1.6, i < 2 ? Qt::SolidLine : Qt::DashLine));
    gr->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, 4));
  }
  legendBelow(actErrorPlot_, 2);
  actErrorPlot_->legend->setVisible(true);
  actErrorPlot_->xAxis->setRange(3.7, 8.3);
  g->addWidget(actMaxPlot_, 0, 0, 1, 2);
  g->addWidget(actErrorPlot_, 0, 2);
  g->addWidget(weightMaxPlot_, 1, 0, 1, 2);
  auto *howTo = new QLabel(
      tr("<b>Reading the plots</b><br>A per-token grid must cover the token's largest value, "
         "so a few channels that are always large (top left) make the step coarse for every "
         "other channel. SmoothQuant divides each channel by s (folded into the previous "
         "norm) and multiplies the weight's column by s: the product is unchanged, the "
         "activations get flatter and the weights take the range. α = 0.5 splits it "
         "evenly; α = 1 moves everything into the weights."));
  finishPlotGrid(g, v, howTo);
  connect(alpha_, &QSlider::valueChanged, this, [this](int value) {
    alphaValue_->setText(QString::number(value / 100.0, 'f', 2));
    requestActivations();
  });
  return page;
}

QWidget *LearnView::buildLessonPanel() {
  auto *panel = new QWidget;
  auto *v = new QVBoxLayout(panel);
  v->setContentsMargins(2, 2, 2, 2);
  auto *title = new QLabel(tr("<b>Lessons</b>"));
  v->addWidget(title);
  lessons_ = new QListWidget;
  for (const Lesson &l : kLessons)
    lessons_->addItem(tr(l.title));
  lessons_->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
  lessons_->setVerticalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
  lessons_->setTextElideMode(Qt::ElideRight);
  lessons_->setFixedHeight(lessons_->sizeHintForRow(0) * lessons_->count() +
                           2 * lessons_->frameWidth() + 2);
  v->addWidget(lessons_);
  auto *setUp = new QPushButton(tr("Set up this lesson"));
  setUp->setToolTip(tr("Apply the settings the lesson's \"Try it\" starts from"));
  connect(setUp, &QPushButton::clicked, this, [this] { setUpLesson(lessons_->currentRow()); });
  v->addWidget(setUp);
  lessonText_ = new QTextBrowser;
  lessonText_->setOpenExternalLinks(false);
  v->addWidget(lessonText_, 1);
  connect(lessons_, &QListWidget::currentRowChanged, this, [this](int row) {
    if (row < 0 || row >= lessonCount())
      return;
    QFile f(QString::fromLatin1(kLessons[row].file));
    lessonText_->setMarkdown(f.open(QIODevice::ReadOnly) ? QString::fromUtf8(f.readAll())
                                                         : tr("(lesson text missing)"));
    showTab(kLessons[row].tab);
  });
  panel->setMinimumWidth(230);
  return panel;
}

// ------------------------------------------------------------------ public setters

void LearnView::setModelPath(const QString &pathOrDefault) {
  if (modelPath_ == pathOrDefault)
    return;
  modelPath_ = pathOrDefault;
  if (model_ && modelOpenedFor_ != modelPath_)
    model_.reset();
  opening_ = {};
  if (source_->currentIndex() == 1)
    loadLayer();
}

void LearnView::setSession(std::shared_ptr<const lrq::ModelSession> session, const QString &path) {
  session_ = std::move(session);
  modelPath_.clear(); // setModelPath below treats the path as new
  model_.reset();
  setModelPath(path);
}

void LearnView::showSynthetic() {
  if (source_->currentIndex() == 0)
    sourceChanged();
  else
    source_->setCurrentIndex(0);
}

void LearnView::showModelLayer(int block, const QString &role) {
  const QSignalBlocker b1(block_), b2(role_), b3(source_);
  block_->setMaximum(std::max(block_->maximum(), block));
  block_->setValue(block);
  role_->setCurrentText(role);
  source_->setCurrentIndex(1);
  sourceChanged();
}

void LearnView::setBits(int bits) {
  bits_->setValue(bits);
}
void LearnView::setGroupSize(int groupSize) {
  for (int i = 0; i < 4; ++i)
    if (kGroupSizes[i] == groupSize)
      group_->setCurrentIndex(i);
}
void LearnView::setSymmetric(bool symmetric) {
  symmetric_->setChecked(symmetric);
}
void LearnView::setClipRatio(double ratio) {
  clip_->setValue(int(std::lround(ratio * 100)));
}
void LearnView::setAlpha(double alpha) {
  alpha_->setValue(int(std::lround(alpha * 100)));
}
void LearnView::setRank(int k) {
  rank_->setValue(k);
}
void LearnView::setFitSteps(int steps) {
  fitSteps_->setValue(steps);
}
void LearnView::showLesson(int index) {
  lessons_->setCurrentRow(index);
}
void LearnView::setUpLesson(int index) {
  if (index < 0 || index >= lessonCount())
    return;
  const Lesson &l = kLessons[index];
  showLesson(index);
  setBits(l.bits);
  setGroupSize(l.groupSize);
  setSymmetric(false);
  setClipRatio(l.clip);
  setRank(l.rank);
  if (index == 5)
    setAlpha(0.5);
  showTab(l.tab);
  if (l.runFit && !fitRunning_) {
    setFitSteps(150);
    runFit();
  }
}

int LearnView::lessonCount() const {
  return int(sizeof(kLessons) / sizeof(kLessons[0]));
}
void LearnView::showTab(int index) {
  tabs_->setCurrentIndex(index);
}

QList<QCustomPlot *> LearnView::plots() const {
  return {actMaxPlot_,   weightMaxPlot_, actErrorPlot_,      histPlot_,      sweepPlot_,
          tilePlots_[0], tilePlots_[1],  tilePlots_[2],      spectrumPlot_,  remainingPlot_,
          lossPlot_,     flipPlot_,      scaleSpectrumPlot_, scalePlots_[0], scalePlots_[1]};
}

QString LearnView::statusText() const {
  return status_->text();
}
QString LearnView::figuresText() const {
  return figures_->text();
}

void LearnView::setStatus(const QString &text) {
  status_->setText(text);
}

GridOptions LearnView::gridOptions() const {
  GridOptions o;
  o.bits = bits_->value();
  o.groupSize = kGroupSizes[std::clamp(group_->currentIndex(), 0, 3)];
  o.symmetric = symmetric_->isChecked();
  o.clipRatio = clip_->value() / 100.0;
  o.maxRank = 64;
  // Keep the tile and the shown unit put while the settings change.
  if (layer_ && grid_) {
    o.tileRow = grid_->weight.row0;
    o.tileCol = grid_->weight.col0;
    o.unitRow = grid_->unitRow;
  }
  return o;
}

void LearnView::updateLabels() {
  bitsValue_->setText(QString::number(bits_->value()));
  clipValue_->setText(QString::number(clip_->value() / 100.0, 'f', 2));
  rankValue_->setText(QString::number(rank_->value()));
}

// ------------------------------------------------------------------ sources

void LearnView::sourceChanged() {
  const bool model = source_->currentIndex() == 1;
  block_->setEnabled(model);
  role_->setEnabled(model);
  loadLayer();
}

void LearnView::loadLayer() {
  const int ticket = ++layerTicket_;
  const bool synthetic = source_->currentIndex() == 0;
  if (!synthetic && modelPath_.isEmpty()) {
    setStatus(tr("No model is open: choose the synthetic matrix, or open a model."));
    return;
  }
  auto model = model_;
  const QString path = modelPath_;
  // One opening of the model however many layer requests wait for it.
  if (!synthetic && !model && (!opening_.valid() || openingFor_ != path)) {
    const std::string p = path.toStdString();
    auto session = session_;
    opening_ =
        std::async(std::launch::deferred, [p, session] {
          return session ? lesson::LessonModel::fromSession(session) : lesson::LessonModel::open(p);
        }).share();
    openingFor_ = path;
  }
  auto opening = opening_;
  const int block = block_->value();
  const std::string role = role_->currentText().toStdString();
  setStatus(synthetic ? tr("Making the synthetic matrix…")
            : model   ? tr("Capturing the layer's inputs…")
                      : tr("Opening the model (first time: a few seconds)…"));
  struct Loaded {
    std::shared_ptr<lesson::LessonModel> model;
    std::shared_ptr<const LessonLayer> layer;
    QString error;
  };
  auto out = std::make_shared<Loaded>();
  QFuture<void> future = runConcurrently(&jobs_, [=] {
    try {
      if (synthetic) {
        out->layer = std::make_shared<const LessonLayer>(lesson::syntheticLayer());
        return;
      }
      out->model = model ? model : opening.get();
      const int b = std::clamp<int>(block, 0, int(out->model->numBlocks()) - 1);
      out->layer = std::make_shared<const LessonLayer>(out->model->layer(b, role, 512));
    } catch (const std::exception &e) {
      out->error = QString::fromUtf8(e.what());
    }
  });
  // A per-request watcher: the latest request's result is the only one shown.
  auto *watcher = new QFutureWatcher<void>(this);
  connect(watcher, &QFutureWatcher<void>::finished, this, [=] {
    watcher->deleteLater();
    if (!out->error.isEmpty() && !model_)
      opening_ = {}; // let the next request try again
    if (out->model && !model_ && path == modelPath_) {
      model_ = out->model;
      modelOpenedFor_ = path;
      const QSignalBlocker blocker(block_);
      block_->setRange(0, int(model_->numBlocks()) - 1);
      QStringList roles;
      for (const std::string &r : model_->roles())
        roles << QString::fromStdString(r);
      const QString current = role_->currentText();
      const QSignalBlocker rb(role_);
      role_->clear();
      role_->addItems(roles);
      role_->setCurrentText(current);
    }
    if (ticket != layerTicket_)
      return;
    if (!out->error.isEmpty()) {
      setStatus(tr("Could not load the layer: %1").arg(out->error));
      emit failed(out->error);
      return;
    }
    layer_ = out->layer;
    grid_.reset();
    fit_.reset();
    sweep_.reset();
    sweepKey_.clear();
    act_.reset();
    const LessonLayer &l = *layer_;
    setStatus(tr("<b>%1</b><br>W: %2 × %3 (out × in)<br>%4")
                  .arg(QString::fromStdString(l.name))
                  .arg(l.weight.rows)
                  .arg(l.weight.cols)
                  .arg(l.activations.empty()
                           ? tr("no activations")
                           : tr("X: %1 tokens, %2")
                                 .arg(l.activations.rows)
                                 .arg(synthetic ? tr("synthetic") : tr("calibration text"))));
    emit layerShown(QString::fromStdString(l.name));
    requestGrid();
    requestActivations();
  });
  watcher->setFuture(future);
  // The member watcher lets the destructor wait for the last load.
  layerWatcher_.setFuture(future);
}

// ------------------------------------------------------------------ grid lesson

void LearnView::requestGrid() {
  if (!layer_)
    return;
  if (gridRunning_) {
    gridPending_ = true; // picked up when the running job ends; its result is dropped
    return;
  }
  startGrid();
}

void LearnView::startGrid() {
  gridRunning_ = true;
  gridPending_ = false;
  auto job = std::make_shared<GridJob>();
  job->layer = layer_;
  job->options = gridOptions();
  job->sweepKey = QStringLiteral("%1/%2/%3")
                      .arg(quintptr(layer_.get()))
                      .arg(job->options.symmetric)
                      .arg(job->options.clipRatio);
  job->wantSweep = job->sweepKey != sweepKey_;
  gridJob_ = job;
  ++gridComputations_;
  gridWatcher_.setFuture(runConcurrently(&jobs_, [job] {
    try {
      job->result = lesson::gridLesson(*job->layer, job->options);
      if (job->wantSweep)
        job->sweep =
            lesson::errorSweep(*job->layer, job->options.symmetric, job->options.clipRatio);
    } catch (const std::exception &e) {
      job->error = QString::fromUtf8(e.what());
    }
  }));
}

void LearnView::onGridDone() {
  gridRunning_ = false;
  std::shared_ptr<GridJob> job = std::move(gridJob_);
  if (!job)
    return;
  const bool current = job->layer == layer_;
  if (current && job->wantSweep && job->error.isEmpty()) {
    sweep_ = std::make_unique<ErrorSweep>(std::move(job->sweep));
    sweepKey_ = job->sweepKey;
  }
  if (gridPending_ || !current) {
    startGrid(); // a newer request: this result is stale
    return;
  }
  if (!job->error.isEmpty()) {
    setStatus(tr("Error: %1").arg(job->error));
    emit failed(job->error);
    return;
  }
  grid_ = std::make_unique<GridLessonResult>(std::move(job->result));
  showGrid(*grid_);
  if (sweep_ && sweepKey_ == job->sweepKey)
    showSweep(*sweep_);
  emit gridShown();
}

void LearnView::showGrid(const GridLessonResult &r) {
  // Histogram with the levels.
  {
    const int n = int(r.histCounts.size());
    const double width = (r.histHi - r.histLo) / std::max(1, n);
    QVector<double> x(n), y(n);
    double peak = 1;
    for (int i = 0; i < n; ++i) {
      x[i] = r.histLo + (i + 0.5) * width;
      y[i] = r.histCounts[size_t(i)];
      peak = std::max(peak, y[i]);
    }
    histBars_->setWidth(width * 0.95);
    histBars_->setData(x, y, true);
    QVector<double> lx, ly;
    for (double l : r.levels) {
      lx << l;
      ly << peak * 1.08;
    }
    levelsGraph_->setData(lx, ly, true);
    levelsGraph_->setName(
        tr("%1 grid levels (step %2)").arg(r.levels.size()).arg(r.step, 0, 'g', 3));
    const double pad = 0.04 * (r.histHi - r.histLo);
    histPlot_->xAxis->setRange(r.histLo - pad, r.histHi + pad);
    histPlot_->yAxis->setRange(0, peak * 1.35);
    auto *title = qobject_cast<QCPTextElement *>(histPlot_->plotLayout()->element(0, 0));
    title->setText(r.unitCols == r.cols
                       ? tr("Row %1 (all %2 weights) and its %3 grid levels")
                             .arg(r.unitRow)
                             .arg(r.unitCols)
                             .arg(r.levels.size())
                       : tr("Row %1, columns %2–%3 (one group) and its %4 grid levels")
                             .arg(r.unitRow)
                             .arg(r.unitCol0)
                             .arg(r.unitCol0 + r.unitCols - 1)
                             .arg(r.levels.size()));
    histPlot_->replot(QCustomPlot::rpQueuedReplot);
  }
  // Tiles: W and Ŵ on one colour range, E on its own.
  const double wRange = absMax(r.weight);
  fillHeatMap(tilePlots_[0], tileMaps_[0], r.weight, wRange);
  fillHeatMap(tilePlots_[1], tileMaps_[1], r.quantized, wRange);
  fillHeatMap(tilePlots_[2], tileMaps_[2], r.error, absMax(r.error));
  for (QCustomPlot *p : tilePlots_)
    p->replot(QCustomPlot::rpQueuedReplot);

  // Spectra, each relative to its largest value.
  auto normalised = [](const std::vector<double> &s) {
    QVector<double> y(int(s.size()));
    const double top = s.empty() || s[0] <= 0 ? 1 : s[0];
    for (int i = 0; i < y.size(); ++i)
      y[i] = std::max(s[size_t(i)] / top, 1e-6);
    return y;
  };
  spectrumPlot_->graph(0)->setData(indices(r.errorSpectrum.size()), normalised(r.errorSpectrum),
                                   true);
  spectrumPlot_->graph(1)->setVisible(r.activationScaled);
  spectrumPlot_->graph(1)->setData(indices(r.scaledErrorSpectrum.size()),
                                   normalised(r.scaledErrorSpectrum), true);
  spectrumPlot_->graph(1)->addToLegend();
  if (!r.activationScaled)
    spectrumPlot_->graph(1)->removeFromLegend();
  spectrumPlot_->xAxis->setRange(0, double(r.errorSpectrum.size()));
  double low = 1;
  for (const auto *s : {&r.errorSpectrum, &r.scaledErrorSpectrum})
    if (!s->empty() && s->front() > 0)
      low = std::min(low, std::max(1e-4, s->back() / s->front()));
  spectrumPlot_->yAxis->setRange(low * 0.25, 1.5);
  spectrumPlot_->replot(QCustomPlot::rpQueuedReplot);

  // Remaining error, as % of the rank-0 (RTN) error.
  auto relative = [](const std::vector<double> &c) {
    QVector<double> y(int(c.size()));
    for (int i = 0; i < y.size(); ++i)
      y[i] = c[0] > 0 ? 100.0 * c[size_t(i)] / c[0] : 0.0;
    return y;
  };
  remainingPlot_->graph(0)->setData(indices(r.lqerRemaining.size()), relative(r.lqerRemaining),
                                    true);
  remainingPlot_->graph(1)->setData(indices(r.l2qerRemaining.size()), relative(r.l2qerRemaining),
                                    true);
  remainingPlot_->graph(1)->setName(r.activationScaled ? tr("L²QER, activation-weighted")
                                                       : tr("L²QER (no activations: s = 1)"));
  remainingPlot_->xAxis->setRange(0, double(r.lqerRemaining.size() - 1));
  updateRankReadout();
}

void LearnView::showSweep(const ErrorSweep &s) {
  for (int g = 0; g < 4 && g < int(s.labels.size()); ++g) {
    QVector<double> x, y;
    for (size_t b = 0; b < s.bits.size(); ++b) {
      x << s.bits[b];
      y << s.relativeError[size_t(g)][b];
    }
    sweepPlot_->graph(g)->setData(x, y, true);
    sweepPlot_->graph(g)->setName(QString::fromStdString(s.labels[size_t(g)]));
  }
  double lo = 1e9, hi = 0;
  for (const auto &row : s.relativeError)
    for (double v : row) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  if (hi > 0)
    sweepPlot_->yAxis->setRange(lo * 0.7, hi * 1.5);
  if (grid_) {
    sweepMarker_->setData(QVector<double>{double(bits_->value())},
                          QVector<double>{grid_->relativeError}, true);
  }
  sweepPlot_->replot(QCustomPlot::rpQueuedReplot);
}

void LearnView::updateRankReadout() {
  if (!grid_) {
    figures_->setText(tr("Computing…"));
    return;
  }
  const GridLessonResult &r = *grid_;
  const int k = std::min<int>(rank_->value(), int(r.lqerRemaining.size()) - 1);
  rankLine_->point1->setCoords(k, 0);
  rankLine_->point2->setCoords(k, 1);
  const double lq = r.lqerRemaining[0] > 0 ? r.lqerRemaining[size_t(k)] / r.lqerRemaining[0] : 0;
  const double l2 = r.l2qerRemaining[0] > 0 ? r.l2qerRemaining[size_t(k)] / r.l2qerRemaining[0] : 0;
  rankText_->setText(
      tr("k = %1: LQER leaves %2, L²QER %3").arg(k).arg(percent(lq)).arg(percent(l2)));
  remainingPlot_->replot(QCustomPlot::rpQueuedReplot);

  // Effective bits per weight: codes, FP16 steps (and zero points when
  // asymmetric), FP16 rank-k factors.
  const double numel = double(r.rows) * double(r.cols);
  const double paramBits = (symmetric_->isChecked() ? 16.0 : 32.0) * double(r.scaleCount) / numel;
  const double factorBits = 16.0 * k * double(r.rows + r.cols) / numel;
  QString text;
  text += QStringLiteral("<b>%1</b><br>").arg(QString::fromStdString(r.grid).toHtmlEscaped());
  text += tr("‖E‖/‖W‖: <b>%1</b><br>").arg(percent(r.relativeError));
  text += tr("SQNR: <b>%1 dB</b>, MSE %2<br>").arg(r.sqnrDb, 0, 'f', 1).arg(r.mse, 0, 'e', 2);
  if (r.outputRelError >= 0)
    text += tr("output error ‖XEᵀ‖/‖XWᵀ‖: <b>%1</b><br>").arg(percent(r.outputRelError));
  text += tr("clipped weights: %1<br>").arg(percent(r.clippedFraction));
  text += tr("%1 steps stored: %2 bits/weight<br>")
              .arg(r.scaleCount)
              .arg(bits_->value() + paramBits, 0, 'f', 2);
  text +=
      tr("rank-%1 correction (FP16 A, B): +%2 bits/weight<br>").arg(k).arg(factorBits, 0, 'f', 2);
  text += tr("error left: LQER %1 of ‖E‖, L²QER %2 of the weighted error")
              .arg(percent(lq))
              .arg(percent(l2));
  if (!r.activationScaled)
    text += QStringLiteral("<br><i>%1</i>").arg(QString::fromStdString(r.scaleNote));
  figures_->setText(text);
  if (sweep_)
    sweepMarker_->setData(QVector<double>{double(bits_->value())}, QVector<double>{r.relativeError},
                          true);
  sweepPlot_->replot(QCustomPlot::rpQueuedReplot);
}

// ------------------------------------------------------------------ activations

void LearnView::requestActivations() {
  if (!layer_)
    return;
  if (layer_->activations.empty()) {
    actSummary_->setText(tr("This layer has no activations."));
    return;
  }
  if (actRunning_) {
    actPending_ = true;
    return;
  }
  startActivations();
}

void LearnView::startActivations() {
  actRunning_ = true;
  actPending_ = false;
  auto job = std::make_shared<ActJob>();
  job->layer = layer_;
  job->options.alpha = alpha_->value() / 100.0;
  actJob_ = job;
  actWatcher_.setFuture(runConcurrently(&jobs_, [job] {
    try {
      job->result = lesson::activationLesson(*job->layer, job->options);
    } catch (const std::exception &e) {
      job->error = QString::fromUtf8(e.what());
    }
  }));
}

void LearnView::onActivationsDone() {
  actRunning_ = false;
  std::shared_ptr<ActJob> job = std::move(actJob_);
  if (!job)
    return;
  if (actPending_ || job->layer != layer_) {
    if (layer_ && !layer_->activations.empty())
      startActivations();
    return;
  }
  if (!job->error.isEmpty()) {
    actSummary_->setText(tr("Error: %1").arg(job->error));
    return;
  }
  act_ = std::make_unique<lesson::ActivationLessonResult>(std::move(job->result));
  showActivations(*act_);
  emit activationsShown();
}

void LearnView::showActivations(const lesson::ActivationLessonResult &r) {
  auto put = [](QCustomPlot *p, const std::vector<double> &before,
                const std::vector<double> &after) {
    QVector<double> y0(int(before.size())), y1(int(after.size()));
    double lo = 1e30, hi = 0;
    for (int i = 0; i < y0.size(); ++i) {
      y0[i] = std::max(before[size_t(i)], 1e-8);
      y1[i] = std::max(after[size_t(i)], 1e-8);
      lo = std::min({lo, y0[i], y1[i]});
      hi = std::max({hi, y0[i], y1[i]});
    }
    p->graph(0)->setData(indices(before.size()), y0, true);
    p->graph(1)->setData(indices(after.size()), y1, true);
    p->xAxis->setRange(0, double(before.size()));
    p->yAxis->setRange(lo * 0.7, hi * 1.5);
    p->replot(QCustomPlot::rpQueuedReplot);
  };
  put(actMaxPlot_, r.actAbsMax, r.actAbsMaxSmoothed);
  put(weightMaxPlot_, r.weightAbsMax, r.weightAbsMaxSmoothed);
  const std::vector<double> *curves[] = {&r.actOnly, &r.actOnlySmoothed, &r.weightAndAct,
                                         &r.weightAndActSmoothed};
  double lo = 1e30, hi = 0;
  for (int i = 0; i < 4; ++i) {
    QVector<double> x, y;
    for (size_t b = 0; b < r.activationBits.size(); ++b) {
      x << r.activationBits[b];
      y << std::max((*curves[i])[b], 1e-8);
      lo = std::min(lo, y.back());
      hi = std::max(hi, y.back());
    }
    actErrorPlot_->graph(i)->setData(x, y, true);
  }
  actErrorPlot_->yAxis->setRange(lo * 0.7, hi * 12);
  actErrorPlot_->replot(QCustomPlot::rpQueuedReplot);
  const size_t a8 = r.activationBits.size() - 1;
  auto ratio = [](const std::vector<double> &v) {
    double mx = 0, sum = 0;
    for (double x : v) {
      mx = std::max(mx, x);
      sum += x;
    }
    return sum > 0 ? mx / (sum / double(v.size())) : 0.0;
  };
  actSummary_->setText(
      tr("%1 tokens. Largest channel / mean channel max |x|: %2× before, %3× after "
         "SmoothQuant (α = %4). A8 output error: %5 → %6; W8A8: %7 → %8.")
          .arg(r.tokens)
          .arg(ratio(r.actAbsMax), 0, 'f', 1)
          .arg(ratio(r.actAbsMaxSmoothed), 0, 'f', 1)
          .arg(alpha_->value() / 100.0, 0, 'f', 2)
          .arg(percent(r.actOnly[a8]))
          .arg(percent(r.actOnlySmoothed[a8]))
          .arg(percent(r.weightAndAct[a8]))
          .arg(percent(r.weightAndActSmoothed[a8])));
}

// ------------------------------------------------------------------ fit lesson

void LearnView::runFit() {
  if (fitRunning_ || !layer_)
    return;
  lesson::FitOptions o;
  o.bits = bits_->value();
  o.groupSize = kGroupSizes[std::clamp(group_->currentIndex(), 0, 3)];
  o.symmetric = symmetric_->isChecked();
  o.steps = fitSteps_->value();
  o.lrqRank = fitRank_->value();
  if (grid_) {
    o.tileRow = grid_->weight.row0;
    o.tileCol = grid_->weight.col0;
  }
  fitRunning_ = true;
  fitCancel_ = std::make_shared<CancelToken>();
  fitRelay_ = std::make_shared<FitRelay>();
  fitProgress_->setRange(0, o.steps);
  fitProgress_->setValue(0);
  runFit_->setEnabled(false);
  cancelFit_->setEnabled(true);
  fitSummary_->setText(tr("Training FlexRound and LRQ (rank %1) on %2, %3 steps…")
                           .arg(o.lrqRank)
                           .arg(QString::fromStdString(layer_->name))
                           .arg(o.steps));
  for (int i = 0; i < 4; ++i)
    lossPlot_->graph(i)->data()->clear();
  auto layer = layer_;
  auto relay = fitRelay_;
  auto cancel = fitCancel_;
  fitTimer_->start();
  fitWatcher_.setFuture(runConcurrently(&jobs_, [layer, relay, cancel, o] {
    try {
      relay->result = lesson::fitLesson(*layer, o, relay.get(), cancel.get());
    } catch (const lrq::Cancelled &) {
      relay->cancelled = true;
    } catch (const std::exception &e) {
      relay->error = QString::fromUtf8(e.what());
    }
  }));
}

void LearnView::cancelFit() {
  if (fitCancel_)
    fitCancel_->cancel();
}

void LearnView::replotFitLive() {
  if (!fitRelay_)
    return;
  fitProgress_->setValue(int(fitRelay_->done.load()));
  std::vector<double> flex, lrq;
  {
    std::lock_guard<std::mutex> lock(fitRelay_->mutex);
    flex = fitRelay_->flex;
    lrq = fitRelay_->lrq;
  }
  if (flex.empty())
    return;
  const double base = flex.front() > 0 ? flex.front() : 1;
  for (int m = 0; m < 2; ++m) {
    const std::vector<double> &c = m == 0 ? flex : lrq;
    QVector<double> y(int(c.size()));
    for (int i = 0; i < y.size(); ++i)
      y[i] = c[size_t(i)] / base;
    lossPlot_->graph(m)->setData(indices(c.size()), y, true);
  }
  lossPlot_->xAxis->setRange(0, std::max<double>(10, double(fitProgress_->maximum())));
  double hi = 1.05;
  for (const auto *c : {&flex, &lrq})
    for (double v : *c)
      hi = std::max(hi, v / base + 0.05);
  lossPlot_->yAxis->setRange(0, hi);
  lossPlot_->replot(QCustomPlot::rpQueuedReplot);
}

void LearnView::onFitDone() {
  fitTimer_->stop();
  fitRunning_ = false;
  runFit_->setEnabled(true);
  cancelFit_->setEnabled(false);
  std::shared_ptr<FitRelay> relay = fitRelay_;
  if (!relay)
    return;
  replotFitLive();
  if (relay->cancelled) {
    fitSummary_->setText(tr("Cancelled after %1 steps.").arg(relay->done.load()));
    emit fitFinished(false);
    return;
  }
  if (!relay->error.isEmpty()) {
    fitSummary_->setText(tr("Error: %1").arg(relay->error));
    emit failed(relay->error);
    emit fitFinished(false);
    return;
  }
  fit_ = std::make_unique<FitLessonResult>(std::move(relay->result));
  showFit(*fit_);
  emit fitFinished(true);
}

void LearnView::showFit(const FitLessonResult &r) {
  const double base = r.rtnLoss > 0 ? r.rtnLoss : 1;
  for (int m = 0; m < 2; ++m) {
    const std::vector<double> &c = m == 0 ? r.lossFlexRound : r.lossLrq;
    QVector<double> y(int(c.size()));
    for (int i = 0; i < y.size(); ++i)
      y[i] = c[size_t(i)] / base;
    lossPlot_->graph(m)->setData(indices(c.size()), y, true);
  }
  const double heldBase = r.rtnHeldOutLoss > 0 ? r.rtnHeldOutLoss : 1;
  for (int m = 0; m < 2; ++m) {
    const std::vector<double> &c = m == 0 ? r.heldOutFlexRound : r.heldOutLrq;
    QVector<double> x, y;
    for (size_t i = 0; i < c.size(); ++i) {
      x << r.heldOutSteps[i];
      y << c[i] / heldBase;
    }
    lossPlot_->graph(2 + m)->setData(x, y, true);
    lossPlot_->graph(2 + m)->setVisible(!c.empty());
  }
  lossPlot_->xAxis->setRange(0, double(std::max<size_t>(r.lossFlexRound.size(), 2) - 1));
  double lo = 1, hi = 1;
  for (const auto *c : {&r.lossFlexRound, &r.lossLrq, &r.heldOutFlexRound, &r.heldOutLrq})
    for (double v : *c) {
      const double y = v / (c == &r.heldOutFlexRound || c == &r.heldOutLrq ? heldBase : base);
      lo = std::min(lo, y);
      hi = std::max(hi, y);
    }
  lossPlot_->yAxis->setRange(std::max(0.0, lo - 0.05 * (hi - lo) - 0.02), hi + 0.05);
  lossPlot_->graph(0)->setName(tr("FlexRound, %1 params").arg(r.paramsFlexRound));
  lossPlot_->graph(1)->setName(tr("LRQ r=%1, %2 params").arg(r.lrqRank).arg(r.paramsLrq));
  lossPlot_->replot(QCustomPlot::rpQueuedReplot);

  const bool lrqFlips = flipMethod_->currentIndex() == 0;
  fillHeatMap(flipPlot_, flipMap_, lrqFlips ? r.flipsLrq : r.flipsFlexRound, 1.5);
  flipPlot_->replot(QCustomPlot::rpQueuedReplot);

  const double range = std::max(absMax(r.scaleFlexRound), absMax(r.scaleLrq));
  fillHeatMap(scalePlots_[0], scaleMaps_[0], r.scaleFlexRound, range);
  fillHeatMap(scalePlots_[1], scaleMaps_[1], r.scaleLrq, range);
  for (QCustomPlot *p : scalePlots_)
    p->replot(QCustomPlot::rpQueuedReplot);

  auto normalised = [](const std::vector<double> &s) {
    QVector<double> y(int(s.size()));
    const double top = s.empty() || s[0] <= 0 ? 1 : s[0];
    for (int i = 0; i < y.size(); ++i)
      y[i] = std::max(s[size_t(i)] / top, 1e-7);
    return y;
  };
  scaleSpectrumPlot_->graph(0)->setData(indices(r.scaleSpectrumFlexRound.size()),
                                        normalised(r.scaleSpectrumFlexRound), true);
  scaleSpectrumPlot_->graph(1)->setData(indices(r.scaleSpectrumLrq.size()),
                                        normalised(r.scaleSpectrumLrq), true);
  scaleSpectrumPlot_->xAxis->setRange(0, double(r.scaleSpectrumFlexRound.size()));
  scaleSpectrumPlot_->yAxis->setRange(5e-8, 2);
  scaleSpectrumPlot_->replot(QCustomPlot::rpQueuedReplot);

  fitSummary_->setText(
      tr("%1, trained on %2 tokens, %3 steps in %4 s. Output error vs RTN: FlexRound %5, "
         "LRQ %6. Codes changed: FlexRound %7, LRQ %8. Learned scales: FlexRound %9, LRQ %10.")
          .arg(QString::fromStdString(r.grid))
          .arg(r.tokens)
          .arg(r.stepsDone)
          .arg(r.seconds, 0, 'f', 1)
          .arg(percent(r.lossFlexRound.back() / base))
          .arg(percent(r.lossLrq.back() / base))
          .arg(percent(r.flippedFlexRound))
          .arg(percent(r.flippedLrq))
          .arg(r.paramsFlexRound)
          .arg(r.paramsLrq) +
      (r.heldOutTokens > 0 ? tr(" On %1 held-out tokens: FlexRound %2, LRQ %3.")
                                 .arg(r.heldOutTokens)
                                 .arg(percent(r.heldOutFlexRound.back() / heldBase))
                                 .arg(percent(r.heldOutLrq.back() / heldBase))
                           : QString()));
}

} // namespace lrq::ui
