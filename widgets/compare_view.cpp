#include "widgets/compare_view.h"

#include "widgets/plot_style.h"

#include <QBuffer>
#include <QButtonGroup>
#include <QCheckBox>
#include <QComboBox>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLabel>
#include <QMap>
#include <QRadioButton>
#include <QSpinBox>
#include <QSplitter>
#include <QTabWidget>
#include <QTableView>
#include <QToolTip>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "widgets/compare_model.h"

namespace lrq::ui {

namespace {

const QColor kReferenceColor(0x44, 0x44, 0x44);

QColor methodColor(const QString &method) {
  static const QMap<QString, QColor> colors = {
      {QStringLiteral("rtn"), QColor(0x7f, 0x7f, 0x7f)},
      {QStringLiteral("gptq"), QColor(0x8c, 0x56, 0x4b)},
      {QStringLiteral("flexround"), QColor(0xe6, 0x7e, 0x0e)},
      {QStringLiteral("lrq"), QColor(0x1f, 0x6f, 0xb4)},
      {QStringLiteral("lqer"), QColor(0xa8, 0xa8, 0x1a)},
      {QStringLiteral("l2qer"), QColor(0x2c, 0xa0, 0x2c)},
      {QStringLiteral("lrqat"), QColor(0x94, 0x67, 0xbd)},
      {QStringLiteral("rtn-learned-step"), QColor(0x17, 0xa5, 0xb5)},
  };
  auto it = colors.find(method.toLower());
  if (it != colors.end())
    return *it;
  static const QColor others[] = {QColor(0xd6, 0x27, 0x28), QColor(0xe3, 0x77, 0xc2),
                                  QColor(0x3b, 0x3b, 0x8f), QColor(0x6b, 0x8e, 0x23)};
  return others[qHash(method) % 4];
}

// One colour per selected run: its method's, darker or lighter when several
// runs share a method.
QList<QColor> runColors(const CompareModel &model) {
  QList<QColor> out;
  QMap<QString, int> seen;
  for (const lrq::RunRecord &r : model.runs()) {
    const QString method = QString::fromStdString(r.method);
    const int k = seen[method]++;
    QColor c = methodColor(method);
    if (k > 0)
      c = (k % 2) ? c.darker(100 + 35 * ((k + 1) / 2)) : c.lighter(100 + 30 * (k / 2));
    out << c;
  }
  return out;
}

void styleComparePlot(QCustomPlot *plot, const QString &title, const QString &objectName) {
  stylePlot(plot, title); // the workbench's common look (widgets/plot_style.h)
  plot->setObjectName(objectName);
  for (QCPAxis *axis : {plot->xAxis, plot->yAxis}) {
    axis->setTickLabelFont(QFont(plot->font().family(), 9));
    axis->setLabelFont(QFont(plot->font().family(), 9));
  }
  QFont legendFont = plot->font();
  legendFont.setPointSize(8);
  plot->legend->setFont(legendFont);
  plot->legend->setBrush(QBrush(QColor(255, 255, 255, 220)));
  plot->legend->setBorderPen(QPen(QColor(0xc0, 0xc0, 0xc0)));
  plot->setMinimumHeight(160);
}

QString plotTitleText(QCustomPlot *plot) {
  const QCPTextElement *t = plotTitle(plot); // widgets/plot_style.h
  return t ? t->text() : QString();
}

void clearPlot(QCustomPlot *plot) {
  plot->clearPlottables();
  plot->clearItems();
  plot->legend->setVisible(false);
}

// A grey sentence in the middle of the axis rect, for plots with nothing to show.
void showMessage(QCustomPlot *plot, const QString &message) {
  auto *item = new QCPItemText(plot);
  item->setObjectName(QStringLiteral("message"));
  item->position->setType(QCPItemPosition::ptAxisRectRatio);
  item->position->setCoords(0.5, 0.5);
  item->setPositionAlignment(Qt::AlignCenter);
  item->setTextAlignment(Qt::AlignCenter);
  item->setColor(QColor(0x70, 0x70, 0x70));
  QFont f = plot->font();
  f.setPointSize(10);
  item->setFont(f);
  item->setText(message);
  item->setClipToAxisRect(false);
}

void setLogY(QCustomPlot *plot, bool log) {
  QCPAxis *y = plot->yAxis;
  if (log) {
    y->setScaleType(QCPAxis::stLogarithmic);
    auto ticker = QSharedPointer<QCPAxisTickerLog>(new QCPAxisTickerLog);
    ticker->setSubTickCount(8);
    y->setTicker(ticker);
    y->setNumberFormat(QStringLiteral("gb"));
    y->setNumberPrecision(3);
  } else {
    y->setScaleType(QCPAxis::stLinear);
    y->setTicker(QSharedPointer<QCPAxisTicker>(new QCPAxisTicker));
    y->setNumberFormat(QStringLiteral("g"));
    y->setNumberPrecision(6);
  }
}

// Log axis range over [lo, hi] with a margin; a log ticker only when the
// range spans more than a decade (otherwise plain ticks label it better).
// An axis of block indices 0..maxBlock: every block labelled while they fit,
// multiples of a step beyond.
void setBlockAxis(QCPAxis *axis, int maxBlock) {
  auto ticker = QSharedPointer<QCPAxisTickerFixed>(new QCPAxisTickerFixed);
  ticker->setTickStep(1);
  ticker->setScaleStrategy(maxBlock <= 40 ? QCPAxisTickerFixed::ssNone
                                          : QCPAxisTickerFixed::ssMultiples);
  axis->setTicker(ticker);
  axis->setRange(-0.5, maxBlock + 0.5);
}

void setLogRange(QCPAxis *axis, double lo, double hi) {
  if (!(lo > 0) || !(hi > 0)) {
    axis->setRange(1e-3, 1);
    return;
  }
  if (hi <= lo) {
    lo /= 2;
    hi *= 2;
  }
  const double margin = std::pow(hi / lo, 0.05);
  axis->setRange(lo / margin, hi * margin);
  if (hi / lo < 12) {
    auto ticker = QSharedPointer<QCPAxisTicker>(new QCPAxisTicker);
    ticker->setTickCount(7);
    axis->setTicker(ticker);
    axis->setNumberFormat(QStringLiteral("g"));
  }
}

QCPGraph *addLine(QCustomPlot *plot, const QString &name, const QColor &color,
                  Qt::PenStyle style = Qt::SolidLine, double width = 1.8) {
  QCPGraph *g = plot->addGraph();
  g->setName(name);
  QPen pen(color, width, style);
  pen.setCapStyle(Qt::FlatCap);
  g->setPen(pen);
  return g;
}

// Numerical rank: singular values above 1e-5 of the largest.
int numericalRank(const std::vector<double> &values) {
  double top = 0;
  for (double v : values)
    top = std::max(top, v);
  int rank = 0;
  for (double v : values)
    rank += v > 1e-5 * top ? 1 : 0;
  return rank;
}

// Fraction of Σσ² captured by the k largest singular values, k = 1..n.
std::vector<double> cumulativeEnergy(const std::vector<double> &values) {
  std::vector<double> sorted = values;
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  double total = 0;
  for (double v : sorted)
    total += v * v;
  std::vector<double> out;
  double sum = 0;
  for (double v : sorted) {
    sum += v * v;
    out.push_back(total > 0 ? sum / total : 0.0);
  }
  return out;
}

QString kindLabel(const QString &kind) {
  if (kind == QLatin1String("E"))
    return QStringLiteral("E = W − Ŵ");
  if (kind == QLatin1String("scaled_E"))
    return QStringLiteral("scaled E (activation-weighted)");
  if (kind == QLatin1String("scale_exponent"))
    return QStringLiteral("learned scale exponent");
  if (kind == QLatin1String("W"))
    return QStringLiteral("W (full precision)");
  return kind;
}

QString shortKindLabel(const QString &kind) {
  if (kind == QLatin1String("scaled_E"))
    return QStringLiteral("scaled E");
  if (kind == QLatin1String("scale_exponent"))
    return QStringLiteral("scale exp.");
  return kind;
}

Qt::PenStyle kindStyle(const QString &kind) {
  if (kind == QLatin1String("scaled_E"))
    return Qt::DashLine;
  if (kind == QLatin1String("scale_exponent"))
    return Qt::DashDotLine;
  return Qt::SolidLine;
}

QString formatMetric(double v) {
  if (std::fabs(v) >= 100)
    return QString::number(v, 'f', 1);
  if (std::fabs(v) >= 1)
    return QString::number(v, 'f', 2);
  return QString::number(v, 'f', 3);
}

QString joinNames(const QStringList &names) {
  return names.join(QStringLiteral(", "));
}

QLabel *makeNote(QWidget *parent) {
  auto *label = new QLabel(parent);
  label->setWordWrap(true);
  label->setStyleSheet(QStringLiteral("color:#555;"));
  label->setTextInteractionFlags(Qt::TextSelectableByMouse);
  return label;
}

} // namespace

CompareView::CompareView(QWidget *parent) : QWidget(parent) {
  model_ = new CompareModel(this);
  tabs_ = new QTabWidget(this);
  tabs_->setObjectName(QStringLiteral("compareTabs"));
  tabs_->addTab(buildAccuracyTab(), tr("Accuracy"));
  tabs_->addTab(buildDepthTab(), tr("Depth profile"));
  tabs_->addTab(buildCurvesTab(), tr("Loss curves"));
  tabs_->addTab(buildSpectraTab(), tr("Spectra"));
  tabs_->addTab(buildParetoTab(), tr("Pareto"));
  error_ = new QLabel(this);
  error_->setObjectName(QStringLiteral("compareError"));
  error_->setWordWrap(true);
  error_->setStyleSheet(QStringLiteral("color:#b3261e;"));
  error_->hide();
  auto *layout = new QVBoxLayout(this);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addWidget(error_);
  layout->addWidget(tabs_, 1);
  connect(model_, &CompareModel::runsChanged, this, &CompareView::onRunsChanged);
  connect(model_, &CompareModel::errorOccurred, this, &CompareView::errorOccurred);
  onRunsChanged();
}

QWidget *CompareView::buildAccuracyTab() {
  auto *page = new QWidget(this);
  differencesOnly_ = new QCheckBox(tr("Differences only"), page);
  differencesOnly_->setToolTip(
      tr("Keep the summary rows and only those settings that differ between the runs"));
  connect(differencesOnly_, &QCheckBox::toggled, model_, &CompareModel::setDifferencesOnly);
  table_ = new QTableView(page);
  table_->setObjectName(QStringLiteral("compareTable"));
  table_->setModel(model_);
  table_->setAlternatingRowColors(true);
  table_->setWordWrap(false);
  table_->setTextElideMode(Qt::ElideMiddle);
  table_->horizontalHeader()->setSectionResizeMode(QHeaderView::Stretch);
  table_->horizontalHeader()->setMinimumSectionSize(90);
  table_->verticalHeader()->setSectionResizeMode(QHeaderView::Fixed);
  table_->verticalHeader()->setDefaultSectionSize(table_->fontMetrics().height() + 6);
  table_->verticalHeader()->setDefaultAlignment(Qt::AlignLeft | Qt::AlignVCenter);
  auto *legend =
      new QLabel(tr("<b>Bold</b>: the runs differ. <span style='background:#d7f0d5'>Green</span>: "
                    "best of the selected runs."),
                 page);
  auto *left = new QWidget(page);
  auto *leftLayout = new QVBoxLayout(left);
  leftLayout->setContentsMargins(0, 0, 0, 0);
  auto *top = new QHBoxLayout;
  top->addWidget(differencesOnly_);
  top->addStretch(1);
  top->addWidget(legend);
  leftLayout->addLayout(top);
  leftLayout->addWidget(table_, 1);

  pplPlot_ = new QCustomPlot(page);
  styleComparePlot(pplPlot_, tr("Perplexity (lower is better)"), QStringLiteral("perplexityPlot"));
  pplPlot_->yAxis->setLabel(tr("perplexity"));
  klPlot_ = new QCustomPlot(page);
  styleComparePlot(klPlot_, tr("KL divergence from the reference (lower is better)"),
                   QStringLiteral("klPlot"));
  klPlot_->yAxis->setLabel(tr("KL (nats/token)"));
  top1Plot_ = new QCustomPlot(page);
  styleComparePlot(top1Plot_, tr("Top-1 agreement with the reference (higher is better)"),
                   QStringLiteral("top1Plot"));
  top1Plot_->yAxis->setLabel(tr("top-1 agreement (%)"));
  legendBelow(pplPlot_, 2);
  legendBelow(klPlot_, 2);
  legendBelow(top1Plot_, 2);
  for (QCustomPlot *p : {pplPlot_, klPlot_, top1Plot_})
    p->xAxis->setLabel(tr("run (method)"));
  accuracyNote_ = makeNote(page);
  auto *charts = new QWidget(page);
  auto *chartsLayout = new QHBoxLayout(charts);
  chartsLayout->setContentsMargins(0, 0, 0, 0);
  chartsLayout->addWidget(pplPlot_, 1);
  chartsLayout->addWidget(klPlot_, 1);
  chartsLayout->addWidget(top1Plot_, 1);
  auto *bottom = new QWidget(page);
  auto *bottomLayout = new QVBoxLayout(bottom);
  bottomLayout->setContentsMargins(0, 0, 0, 0);
  bottomLayout->addWidget(charts, 1);
  bottomLayout->addWidget(accuracyNote_);

  auto *splitter = new QSplitter(Qt::Vertical, page);
  splitter->addWidget(left);
  splitter->addWidget(bottom);
  splitter->setStretchFactor(0, 1);
  splitter->setStretchFactor(1, 1);
  splitter->setSizes({340, 320});
  auto *layout = new QVBoxLayout(page);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addWidget(splitter);
  return page;
}

QWidget *CompareView::buildDepthTab() {
  auto *page = new QWidget(this);
  depthLayer_ = new QComboBox(page);
  depthLayer_->setObjectName(QStringLiteral("depthLayer"));
  depthLayer_->setSizeAdjustPolicy(QComboBox::AdjustToContents);
  depthSqnr_ = new QRadioButton(tr("SQNR (dB)"), page);
  depthMse_ = new QRadioButton(tr("relative MSE"), page);
  depthSqnr_->setChecked(true);
  auto *group = new QButtonGroup(page);
  group->addButton(depthSqnr_);
  group->addButton(depthMse_);
  connect(depthLayer_, &QComboBox::currentIndexChanged, this, [this] { updateDepth(); });
  connect(depthSqnr_, &QRadioButton::toggled, this, [this] { updateDepth(); });
  auto *controls = new QHBoxLayout;
  controls->addWidget(new QLabel(tr("Layer:"), page));
  controls->addWidget(depthLayer_);
  controls->addSpacing(16);
  controls->addWidget(new QLabel(tr("Error:"), page));
  controls->addWidget(depthSqnr_);
  controls->addWidget(depthMse_);
  controls->addStretch(1);
  depthPlot_ = new QCustomPlot(page);
  styleComparePlot(depthPlot_, tr("Weight error by depth"), QStringLiteral("depthPlot"));
  depthPlot_->xAxis->setLabel(tr("block index"));
  legendBelow(depthPlot_, 6);
  depthNote_ = makeNote(page);
  auto *layout = new QVBoxLayout(page);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addLayout(controls);
  layout->addWidget(depthPlot_, 1);
  layout->addWidget(depthNote_);
  return page;
}

QWidget *CompareView::buildCurvesTab() {
  auto *page = new QWidget(this);
  curveBlock_ = new QComboBox(page);
  curveBlock_->setObjectName(QStringLiteral("curveBlock"));
  curveBlock_->setSizeAdjustPolicy(QComboBox::AdjustToContents);
  connect(curveBlock_, &QComboBox::currentIndexChanged, this, [this] { updateCurves(); });
  auto *controls = new QHBoxLayout;
  controls->addWidget(new QLabel(tr("Block:"), page));
  controls->addWidget(curveBlock_);
  controls->addStretch(1);
  curvesPlot_ = new QCustomPlot(page);
  styleComparePlot(curvesPlot_, tr("Block reconstruction loss during training"),
                   QStringLiteral("curvesPlot"));
  curvesPlot_->xAxis->setLabel(tr("iteration"));
  curvesPlot_->yAxis->setLabel(tr("block output error ‖ŷ − y‖² per token (log scale)"));
  setLogY(curvesPlot_, true);
  curvesNote_ = makeNote(page);

  heldoutPlot_ = new QCustomPlot(page);
  styleComparePlot(heldoutPlot_, tr("Final loss by block: training vs held-out samples"),
                   QStringLiteral("heldoutPlot"));
  heldoutPlot_->xAxis->setLabel(tr("block index"));
  heldoutPlot_->yAxis->setLabel(tr("final ‖ŷ − y‖² per token (log scale)"));
  setLogY(heldoutPlot_, true);
  legendBelow(heldoutPlot_, 4);
  heldoutNote_ = makeNote(page);

  auto *top = new QWidget(page);
  auto *topLayout = new QVBoxLayout(top);
  topLayout->setContentsMargins(0, 0, 0, 0);
  topLayout->addWidget(curvesPlot_, 1);
  topLayout->addWidget(curvesNote_);
  auto *bottom = new QWidget(page);
  auto *bottomLayout = new QVBoxLayout(bottom);
  bottomLayout->setContentsMargins(0, 0, 0, 0);
  bottomLayout->addWidget(heldoutPlot_, 1);
  bottomLayout->addWidget(heldoutNote_);
  auto *splitter = new QSplitter(Qt::Vertical, page);
  splitter->addWidget(top);
  splitter->addWidget(bottom);
  splitter->setStretchFactor(0, 1);
  splitter->setStretchFactor(1, 1);
  auto *layout = new QVBoxLayout(page);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addLayout(controls);
  layout->addWidget(splitter, 1);
  return page;
}

QWidget *CompareView::buildSpectraTab() {
  auto *page = new QWidget(this);
  spectrumBlock_ = new QComboBox(page);
  spectrumBlock_->setObjectName(QStringLiteral("spectrumBlock"));
  spectrumBlock_->setSizeAdjustPolicy(QComboBox::AdjustToContents);
  spectrumRole_ = new QComboBox(page);
  spectrumRole_->setObjectName(QStringLiteral("spectrumRole"));
  spectrumRole_->setSizeAdjustPolicy(QComboBox::AdjustToContents);
  energyRank_ = new QSpinBox(page);
  energyRank_->setObjectName(QStringLiteral("energyRank"));
  energyRank_->setRange(1, 1);
  energyRank_->setToolTip(tr("Rank k at which the energy captured is read off"));
  connect(spectrumBlock_, &QComboBox::currentIndexChanged, this, [this] {
    if (updating_)
      return;
    fillSpectrumRoles(spectrumRole_->currentData().toString());
    updateSpectra();
  });
  connect(spectrumRole_, &QComboBox::currentIndexChanged, this, [this] { updateSpectra(); });
  connect(energyRank_, &QSpinBox::valueChanged, this, [this] { updateEnergyMarkers(); });
  auto *controls = new QHBoxLayout;
  controls->addWidget(new QLabel(tr("Block:"), page));
  controls->addWidget(spectrumBlock_);
  controls->addWidget(new QLabel(tr("Layer:"), page));
  controls->addWidget(spectrumRole_);
  controls->addSpacing(16);
  controls->addWidget(new QLabel(tr("Rank k:"), page));
  controls->addWidget(energyRank_);
  controls->addStretch(1);

  spectraPlot_ = new QCustomPlot(page);
  styleComparePlot(spectraPlot_, tr("Singular values"), QStringLiteral("spectraPlot"));
  spectraPlot_->xAxis->setLabel(tr("index i (largest first)"));
  spectraPlot_->yAxis->setLabel(tr("singular value σᵢ (log scale)"));
  setLogY(spectraPlot_, true);
  legendBelow(spectraPlot_, 2);
  energyPlot_ = new QCustomPlot(page);
  styleComparePlot(energyPlot_, tr("Energy captured at rank k"), QStringLiteral("energyPlot"));
  energyPlot_->xAxis->setLabel(tr("rank k"));
  energyPlot_->yAxis->setLabel(tr("Σᵢ≤ₖ σᵢ² / Σ σᵢ² (%)"));
  legendBelow(energyPlot_, 2);
  spectraNote_ = makeNote(page);

  auto *splitter = new QSplitter(Qt::Horizontal, page);
  splitter->addWidget(spectraPlot_);
  auto *right = new QWidget(page);
  auto *rightLayout = new QVBoxLayout(right);
  rightLayout->setContentsMargins(0, 0, 0, 0);
  rightLayout->addWidget(energyPlot_, 1);
  splitter->addWidget(right);
  splitter->setStretchFactor(0, 3);
  splitter->setStretchFactor(1, 2);
  splitter->setSizes({760, 500});
  auto *layout = new QVBoxLayout(page);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addLayout(controls);
  layout->addWidget(splitter, 1);
  layout->addWidget(spectraNote_);
  return page;
}

QWidget *CompareView::buildParetoTab() {
  auto *page = new QWidget(this);
  paretoPpl_ = new QRadioButton(tr("perplexity"), page);
  paretoKl_ = new QRadioButton(tr("KL"), page);
  paretoPpl_->setChecked(true);
  auto *group = new QButtonGroup(page);
  group->addButton(paretoPpl_);
  group->addButton(paretoKl_);
  connect(paretoPpl_, &QRadioButton::toggled, this, [this] { updatePareto(); });
  auto *controls = new QHBoxLayout;
  controls->addWidget(new QLabel(tr("y:"), page));
  controls->addWidget(paretoPpl_);
  controls->addWidget(paretoKl_);
  controls->addSpacing(16);
  controls->addWidget(
      new QLabel(tr("Every finished run in the store; the selected runs are ringed."), page));
  controls->addStretch(1);
  paretoPlot_ = new QCustomPlot(page);
  styleComparePlot(paretoPlot_, tr("Accuracy against storage, all finished runs"),
                   QStringLiteral("paretoPlot"));
  paretoPlot_->xAxis->setLabel(tr("bits per weight (estimated, incl. scales and factors)"));
  setLogY(paretoPlot_, true);
  paretoPlot_->setMouseTracking(true);
  connect(paretoPlot_, &QCustomPlot::mouseMove, this, [this](QMouseEvent *event) {
    const QString tip = paretoToolTipAt(event->position());
    if (tip.isEmpty())
      QToolTip::hideText();
    else
      QToolTip::showText(event->globalPosition().toPoint(), tip, paretoPlot_);
  });
  paretoNote_ = makeNote(page);
  auto *layout = new QVBoxLayout(page);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addLayout(controls);
  layout->addWidget(paretoPlot_, 1);
  layout->addWidget(paretoNote_);
  return page;
}

void CompareView::setRuns(const QString &storePath, const QStringList &ids) {
  model_->setRuns(storePath, ids);
}

void CompareView::reload() {
  QStringList ids;
  for (const lrq::RunRecord &r : model_->runs())
    ids << QString::fromStdString(r.id);
  model_->setRuns(model_->storePath(), ids);
}

void CompareView::setLayerShapes(const QList<LinearShape> &shapes) {
  model_->setLayerShapes(shapes);
  updatePareto();
}

QList<QCustomPlot *> CompareView::plots() const {
  return {pplPlot_,     klPlot_,      top1Plot_,   depthPlot_, curvesPlot_,
          heldoutPlot_, spectraPlot_, energyPlot_, paretoPlot_};
}

void CompareView::setDifferencesOnly(bool on) {
  differencesOnly_->setChecked(on);
}

void CompareView::setDepthLayer(const QString &role) {
  const int i = depthLayer_->findData(role);
  if (i >= 0)
    depthLayer_->setCurrentIndex(i);
}

void CompareView::setDepthMetric(DepthMetric metric) {
  (metric == DepthMetric::SqnrDb ? depthSqnr_ : depthMse_)->setChecked(true);
}

void CompareView::setCurveBlock(int block) {
  const int i = curveBlock_->findData(block);
  if (i >= 0)
    curveBlock_->setCurrentIndex(i);
}

void CompareView::setSpectrumLayer(int block, const QString &role) {
  const int b = spectrumBlock_->findData(block);
  if (b >= 0)
    spectrumBlock_->setCurrentIndex(b);
  const int r = spectrumRole_->findData(role);
  if (r >= 0)
    spectrumRole_->setCurrentIndex(r);
}

void CompareView::setEnergyRank(int k) {
  energyRank_->setValue(k);
}

void CompareView::setParetoMetric(ParetoMetric metric) {
  (metric == ParetoMetric::Perplexity ? paretoPpl_ : paretoKl_)->setChecked(true);
}

QString CompareView::noteText(Tab tab) const {
  switch (tab) {
  case AccuracyTab:
    return accuracyNote_->text();
  case DepthTab:
    return depthNote_->text();
  case CurvesTab:
    return curvesNote_->text();
  case SpectraTab:
    return spectraNote_->text();
  case ParetoTab:
    return paretoNote_->text();
  }
  return {};
}

QString CompareView::heldoutNoteText() const {
  return heldoutNote_->text();
}

QString CompareView::referenceLabel() const {
  for (const lrq::RunRecord &r : model_->runs()) {
    const QString notes = QString::fromStdString(r.notes);
    static const QString prefix = QStringLiteral("full-precision reference: ");
    const int at = notes.indexOf(prefix);
    if (at < 0)
      continue;
    QString note = notes.mid(at + prefix.size());
    note = note.left(note.indexOf(QLatin1Char(';'))).trimmed();
    if (note.startsWith(QLatin1String("dequantized from ")))
      return tr("full precision (dequantized %1)").arg(note.mid(17));
  }
  return tr("full-precision reference");
}

void CompareView::onRunsChanged() {
  updating_ = true;
  const QString error = model_->lastError();
  error_->setText(error);
  error_->setVisible(!error.isEmpty());
  const auto &runs = model_->runs();

  // Depth: every role with statistics inside the blocks.
  const QString depthRole = depthLayer_->currentData().toString();
  depthLayer_->clear();
  depthLayer_->addItem(tr("mean of all layers"), QString());
  std::vector<std::string> roles;
  for (const lrq::RunRecord &r : runs)
    for (const lrq::LayerStats &l : r.layers)
      if (l.block >= 0 && std::find(roles.begin(), roles.end(), l.role) == roles.end())
        roles.push_back(l.role);
  for (const std::string &role : roles)
    depthLayer_->addItem(QString::fromStdString(role), QString::fromStdString(role));
  depthLayer_->setCurrentIndex(std::max(0, depthLayer_->findData(depthRole)));

  // Curves: blocks where any run has a curve.
  const int curveBlock =
      curveBlock_->currentData().isValid() ? curveBlock_->currentData().toInt() : -1;
  curveBlock_->clear();
  std::set<int> curveBlocks;
  for (const lrq::RunRecord &r : runs)
    for (const lrq::BlockRecord &b : r.blocks)
      if (!b.curve.empty())
        curveBlocks.insert(b.index);
  for (int b : curveBlocks)
    curveBlock_->addItem(tr("block %1").arg(b), b);
  curveBlock_->setCurrentIndex(std::max(0, curveBlock_->findData(curveBlock)));
  curveBlock_->setEnabled(curveBlock_->count() > 0);

  // Spectra: blocks with any spectrum; prefer one where two runs learned a
  // scale exponent (FlexRound against LRQ) or, failing that, any E.
  const int spectrumBlock =
      spectrumBlock_->currentData().isValid() ? spectrumBlock_->currentData().toInt() : -1000;
  const QString spectrumRole = spectrumRole_->currentData().toString();
  spectrumBlock_->clear();
  std::set<int> spectrumBlocks;
  for (const lrq::RunRecord &r : runs)
    for (const lrq::SpectrumRecord &s : r.spectra)
      spectrumBlocks.insert(s.block);
  for (int b : spectrumBlocks)
    spectrumBlock_->addItem(b < 0 ? tr("outside blocks") : tr("block %1").arg(b), b);
  spectrumBlock_->setCurrentIndex(std::max(0, spectrumBlock_->findData(spectrumBlock)));
  spectrumBlock_->setEnabled(spectrumBlock_->count() > 0);
  fillSpectrumRoles(spectrumRole);

  // The energy marker starts at the rank of a low-rank method, when there is one.
  int rank = 0;
  for (const lrq::RunRecord &r : runs) {
    const QString m = QString::fromStdString(r.method);
    if (m == QLatin1String("lqer") || m == QLatin1String("l2qer") || m == QLatin1String("lrqat")) {
      const QJsonObject h =
          QJsonDocument::fromJson(QByteArray::fromStdString(r.hyperparametersJson)).object();
      rank = h.value(QStringLiteral("rank")).toInt(0);
      if (rank > 0)
        break;
    }
  }
  QStringList ids;
  for (const lrq::RunRecord &r : runs)
    ids << QString::fromStdString(r.id);
  if (ids != shownIds_) { // a new selection, not a reload
    energyRank_->setMaximum(100000);
    energyRank_->setValue(rank > 0 ? rank : 32);
  }
  shownIds_ = ids;
  updating_ = false;

  updateAccuracy();
  updateDepth();
  updateCurves();
  updateHeldout();
  updateSpectra();
  updatePareto();
}

void CompareView::updateAccuracy() {
  const auto &runs = model_->runs();
  const QList<QColor> colors = runColors(*model_);
  const int n = int(runs.size());
  QStringList notes;
  struct Chart {
    QCustomPlot *plot;
    const char *metric;
    double scale;
    const char *missing;
  };
  const Chart charts[] = {{pplPlot_, "perplexity", 1.0, "perplexity"},
                          {klPlot_, "kl", 1.0, "KL"},
                          {top1Plot_, "top1", 100.0, "top-1 agreement"}};
  for (const Chart &chart : charts) {
    QCustomPlot *plot = chart.plot;
    clearPlot(plot);
    auto ticker = QSharedPointer<QCPAxisTickerText>(new QCPAxisTickerText);
    QStringList missing;
    double top = 0;
    int shown = 0;
    // Beside each run's in-domain bar, a hatched bar for the out-of-domain text
    // when any compared run measured it.
    const std::string oodMetric = std::string("ood_") + chart.metric;
    const bool paired = std::any_of(runs.begin(), runs.end(), [&](const lrq::RunRecord &r) {
      return r.metrics.count(oodMetric) > 0;
    });
    struct Variant {
      const std::string *metric;
      double offset;
      Qt::BrushStyle brush;
    };
    const std::string inMetric = chart.metric;
    const Variant allVariants[] = {{&inMetric, paired ? -0.19 : 0.0, Qt::SolidPattern},
                                   {&oodMetric, 0.19, Qt::BDiagPattern}};
    const auto variants = paired ? QVector<Variant>(std::begin(allVariants), std::end(allVariants))
                                 : QVector<Variant>{allVariants[0]};
    const double width = paired ? 0.36 : 0.6;
    for (int i = 0; i < n; ++i) {
      ticker->addTick(i + 1, model_->runLabel(i));
      for (const Variant &variant : variants) {
        auto it = runs[i].metrics.find(*variant.metric);
        if (it == runs[i].metrics.end() || !std::isfinite(it->second)) {
          if (variant.metric == &inMetric)
            missing << model_->runLabel(i);
          continue;
        }
        const double v = it->second * chart.scale;
        const double x = i + 1 + variant.offset;
        auto *bars = new QCPBars(plot->xAxis, plot->yAxis);
        bars->setName(model_->runLabel(i));
        bars->setProperty("runId", QString::fromStdString(runs[i].id));
        bars->setProperty("kind", QStringLiteral("bar"));
        bars->setProperty("metric", QString::fromStdString(*variant.metric));
        bars->setWidth(width);
        bars->setPen(QPen(colors[i].darker(130)));
        bars->setBrush(QBrush(colors[i], variant.brush));
        bars->setData(QVector<double>{x}, QVector<double>{v});
        bars->removeFromLegend();
        auto *label = new QCPItemText(plot);
        label->position->setType(QCPItemPosition::ptPlotCoords);
        label->position->setCoords(x, v);
        label->setPositionAlignment(Qt::AlignHCenter | Qt::AlignBottom);
        label->setText(chart.scale == 100.0 ? QString::number(v, 'f', 1) : formatMetric(v));
        QFont f = plot->font();
        f.setPointSize(paired ? 7 : 8);
        label->setFont(f);
        label->setPadding(QMargins(0, 0, 0, 2));
        top = std::max(top, v);
        ++shown;
      }
    }
    if (paired) {
      // Legend keys only: grey bars without data.
      for (const Variant &variant : variants) {
        auto *key = new QCPBars(plot->xAxis, plot->yAxis);
        key->setName(variant.metric == &inMetric ? tr("in domain") : tr("out of domain"));
        key->setProperty("kind", QStringLiteral("legend key"));
        key->setPen(QPen(QColor(0x60, 0x60, 0x60)));
        key->setBrush(QBrush(QColor(0x90, 0x90, 0x90), variant.brush));
      }
      plot->legend->setVisible(true);
    }
    if (!missing.isEmpty())
      notes << tr("no %1: %2").arg(QString::fromLatin1(chart.missing), joinNames(missing));
    plot->xAxis->setTicker(ticker);
    plot->xAxis->setTickLabelRotation(n > 6 ? 30 : 0);
    plot->xAxis->setSubTicks(false);
    plot->xAxis->grid()->setVisible(false);
    plot->xAxis->setRange(0.4, std::max(1, n) + 0.6);
    if (plot == pplPlot_) {
      // The full-precision reference, from the runs that measured it.
      for (const char *metric : {"reference_perplexity", "ood_reference_perplexity"}) {
        std::vector<double> refs;
        for (const lrq::RunRecord &r : runs) {
          auto it = r.metrics.find(metric);
          if (it != r.metrics.end() && std::isfinite(it->second))
            refs.push_back(it->second);
        }
        if (refs.empty())
          continue;
        const bool ood = metric[0] == 'o';
        const double ref = refs.front();
        // Paired, two reference lines share a narrow legend: short names there,
        // the full baseline (what "full precision" means) in the plot's tooltip.
        const QString name =
            !paired ? referenceLabel() : (ood ? tr("FP out of domain") : tr("FP in domain"));
        plot->setToolTip(paired ? tr("Reference lines: %1").arg(referenceLabel()) : QString());
        QCPGraph *g = addLine(plot, QStringLiteral("%1: %2").arg(name, formatMetric(ref)),
                              kReferenceColor, ood ? Qt::DotLine : Qt::DashLine, 1.6);
        g->setProperty("kind", QStringLiteral("reference"));
        g->setData(QVector<double>{0.4, n + 0.6}, QVector<double>{ref, ref});
        top = std::max(top, ref);
        plot->legend->setVisible(true);
        for (double r : refs)
          if (std::fabs(r - ref) > 1e-6 * ref) {
            notes << tr("The runs' reference perplexities differ (other evaluation settings); "
                        "the line shows the first.");
            break;
          }
      }
    }
    if (shown == 0)
      showMessage(plot, n == 0 ? tr("No runs selected.")
                               : tr("None of the selected runs recorded %1.")
                                     .arg(QString::fromLatin1(chart.missing)));
    double hi = top > 0 ? top * 1.22 : 1.0;
    if (chart.scale == 100.0)
      hi = std::min(hi, 105.0);
    plot->yAxis->setRange(0, hi);
    plot->replot();
  }
  accuracyNote_->setText(notes.join(QStringLiteral(" · ")));
  accuracyNote_->setVisible(!notes.isEmpty());
}

void CompareView::updateDepth() {
  if (updating_)
    return;
  QCustomPlot *plot = depthPlot_;
  clearPlot(plot);
  const bool sqnr = depthSqnr_->isChecked();
  const QString role = depthLayer_->currentData().toString();
  setLogY(plot, !sqnr);
  plot->yAxis->setLabel(sqnr ? tr("SQNR (dB), higher is better")
                             : tr("relative MSE ‖W − Ŵ‖² / ‖W‖² (log scale)"));
  if (auto *t = qobject_cast<QCPTextElement *>(plot->plotLayout()->element(0, 0)))
    t->setText(
        tr("Weight error by depth: %1").arg(role.isEmpty() ? tr("mean of all layers") : role));
  const auto &runs = model_->runs();
  const QList<QColor> colors = runColors(*model_);
  QStringList noStats, noRole;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  int maxBlock = 0, series = 0;
  for (int i = 0; i < int(runs.size()); ++i) {
    // block -> values of the chosen layer(s), in the chosen unit.
    std::map<int, std::vector<double>> byBlock;
    for (const lrq::LayerStats &l : runs[i].layers) {
      if (l.block < 0 || (!role.isEmpty() && QString::fromStdString(l.role) != role))
        continue;
      byBlock[l.block].push_back(sqnr ? l.sqnrDb : std::pow(10.0, -l.sqnrDb / 10.0));
    }
    if (byBlock.empty()) {
      (runs[i].layers.empty() ? noStats : noRole) << model_->runLabel(i);
      continue;
    }
    QVector<double> xs, ys;
    for (const auto &[block, values] : byBlock) {
      double sum = 0;
      for (double v : values)
        sum += v;
      xs << block;
      ys << sum / double(values.size());
      lo = std::min(lo, ys.back());
      hi = std::max(hi, ys.back());
      maxBlock = std::max(maxBlock, block);
    }
    QCPGraph *g = addLine(plot, model_->runLabel(i), colors[i]);
    g->setProperty("runId", QString::fromStdString(runs[i].id));
    g->setProperty("kind", QStringLiteral("depth"));
    g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, colors[i], Qt::white, 6));
    g->setData(xs, ys, true);
    ++series;
  }
  QStringList notes;
  if (!noStats.isEmpty())
    notes << tr("no layer statistics: %1").arg(joinNames(noStats));
  if (!noRole.isEmpty())
    notes << tr("%1 not quantized: %2").arg(role, joinNames(noRole));
  depthNote_->setText(notes.join(QStringLiteral(" · ")));
  depthNote_->setVisible(!notes.isEmpty());
  setBlockAxis(plot->xAxis, maxBlock);
  if (series == 0) {
    showMessage(plot, runs.empty() ? tr("No runs selected.")
                                   : tr("None of the selected runs recorded per-layer errors."));
    plot->yAxis->setRange(sqnr ? 0 : 1e-3, sqnr ? 30 : 1);
  } else if (sqnr) {
    const double pad = std::max(0.5, (hi - lo) * 0.08);
    plot->yAxis->setRange(lo - pad, hi + pad);
  } else {
    setLogRange(plot->yAxis, lo, hi);
  }
  plot->legend->setVisible(series >= 2);
  plot->replot();
}

// Per run, the final loss of every block on the training samples (solid) and
// on the held-out samples (dashed), in the run's colour: a held-out line well
// above its training line is a block that fit its calibration samples only.
void CompareView::updateHeldout() {
  if (updating_)
    return;
  QCustomPlot *plot = heldoutPlot_;
  clearPlot(plot);
  setLogY(plot, true);
  const auto &runs = model_->runs();
  const QList<QColor> colors = runColors(*model_);
  QStringList noBlocks, noHeldout;
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  int maxBlock = 0, series = 0;
  for (int i = 0; i < int(runs.size()); ++i) {
    QVector<double> bx, by, hx, hy;
    double trainSum = 0, heldoutSum = 0;
    for (const lrq::BlockRecord &b : runs[i].blocks) {
      if (b.curve.empty())
        continue; // not trained: no training loss to compare
      if (b.finalLoss > 0) {
        bx << b.index;
        by << b.finalLoss;
      }
      if (b.heldoutFinalLoss && *b.heldoutFinalLoss > 0) {
        hx << b.index;
        hy << *b.heldoutFinalLoss;
        heldoutSum += *b.heldoutFinalLoss;
        trainSum += b.finalLoss;
      }
    }
    if (bx.isEmpty()) {
      noBlocks << model_->runLabel(i);
      continue;
    }
    for (const QVector<double> *ys : {&by, &hy})
      for (double y : *ys) {
        lo = std::min(lo, y);
        hi = std::max(hi, y);
      }
    maxBlock = std::max(maxBlock, int(bx.back()));
    QCPGraph *train = addLine(plot, tr("%1: training").arg(model_->runLabel(i)), colors[i]);
    train->setProperty("runId", QString::fromStdString(runs[i].id));
    train->setProperty("kind", QStringLiteral("train_final"));
    train->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDisc, colors[i], colors[i], 5));
    train->setData(bx, by, true);
    ++series;
    if (hx.isEmpty()) {
      noHeldout << model_->runLabel(i);
      continue;
    }
    QCPGraph *heldout = addLine(plot,
                                tr("%1: held-out (×%2 of training)")
                                    .arg(model_->runLabel(i))
                                    .arg(trainSum > 0 ? heldoutSum / trainSum : 0.0, 0, 'f', 2),
                                colors[i], Qt::DashLine);
    heldout->setProperty("runId", QString::fromStdString(runs[i].id));
    heldout->setProperty("kind", QStringLiteral("heldout_final"));
    heldout->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, colors[i], Qt::white, 6));
    heldout->setData(hx, hy, true);
    ++series;
  }
  QStringList notes;
  if (!noBlocks.isEmpty())
    notes << tr("no trained blocks: %1").arg(joinNames(noBlocks));
  if (!noHeldout.isEmpty())
    notes << tr("no held-out samples: %1").arg(joinNames(noHeldout));
  notes << tr("Solid: loss on the training samples after training; dashed: the same loss on "
              "held-out calibration samples never trained on. The factor is the held-out sum "
              "over the training sum.");
  heldoutNote_->setText(notes.join(QStringLiteral(" · ")));
  setBlockAxis(plot->xAxis, maxBlock);
  if (series == 0) {
    showMessage(plot, runs.empty() ? tr("No runs selected.")
                                   : tr("None of the selected runs trained blocks."));
    plot->yAxis->setRange(1e-3, 1);
  } else {
    setLogRange(plot->yAxis, lo, hi);
  }
  plot->legend->setVisible(series >= 2);
  plot->replot();
}

void CompareView::updateCurves() {
  if (updating_)
    return;
  QCustomPlot *plot = curvesPlot_;
  clearPlot(plot);
  setLogY(plot, true);
  const auto &runs = model_->runs();
  const QList<QColor> colors = runColors(*model_);
  const bool haveBlock = curveBlock_->currentData().isValid();
  const int block = haveBlock ? curveBlock_->currentData().toInt() : -1;
  if (auto *t = qobject_cast<QCPTextElement *>(plot->plotLayout()->element(0, 0)))
    t->setText(haveBlock ? tr("Block %1 reconstruction loss during training").arg(block)
                         : tr("Block reconstruction loss during training"));
  QStringList untrained, otherBlocks;
  double lo = std::numeric_limits<double>::infinity(), hi = 0, maxIter = 0;
  int series = 0;
  for (int i = 0; i < int(runs.size()); ++i) {
    bool anyCurve = false;
    const lrq::BlockRecord *record = nullptr;
    for (const lrq::BlockRecord &b : runs[i].blocks) {
      anyCurve = anyCurve || !b.curve.empty();
      if (b.index == block && !b.curve.empty())
        record = &b;
    }
    if (!anyCurve) {
      untrained << model_->runLabel(i);
      continue;
    }
    if (!record) {
      otherBlocks << model_->runLabel(i);
      continue;
    }
    QVector<double> xs, ys;
    for (const lrq::LossPoint &p : record->curve) {
      if (!(p.loss > 0))
        continue; // no place on a log axis
      xs << p.iteration;
      ys << p.loss;
      lo = std::min(lo, double(p.loss));
      hi = std::max(hi, double(p.loss));
      maxIter = std::max(maxIter, double(p.iteration));
    }
    QCPGraph *g = addLine(plot,
                          tr("%1 (%2 → %3)")
                              .arg(model_->runLabel(i))
                              .arg(record->initialLoss, 0, 'g', 3)
                              .arg(record->finalLoss, 0, 'g', 3),
                          colors[i]);
    g->setProperty("runId", QString::fromStdString(runs[i].id));
    g->setProperty("kind", QStringLiteral("curve"));
    g->setData(xs, ys, true);
    ++series;
  }
  QStringList notes;
  if (!untrained.isEmpty())
    notes << tr("no training (no loss curves): %1").arg(joinNames(untrained));
  if (!otherBlocks.isEmpty())
    notes << tr("no curve for this block: %1").arg(joinNames(otherBlocks));
  curvesNote_->setText(notes.join(QStringLiteral(" · ")));
  curvesNote_->setVisible(!notes.isEmpty());
  if (series == 0) {
    showMessage(plot, runs.empty() ? tr("No runs selected.")
                                   : tr("None of the selected runs trained with block-wise "
                                        "reconstruction,\nso there are no loss curves."));
    plot->xAxis->setRange(0, 100);
    plot->yAxis->setRange(1e-4, 1);
  } else {
    plot->xAxis->setRange(0, std::max(1.0, maxIter));
    setLogRange(plot->yAxis, lo, hi);
  }
  plot->legend->setVisible(series >= 2);
  plot->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignRight);
  plot->replot();
}

void CompareView::fillSpectrumRoles(const QString &preferred) {
  const bool was = updating_;
  updating_ = true;
  const QString current = preferred;
  spectrumRole_->clear();
  const bool haveBlock = spectrumBlock_->currentData().isValid();
  const int block = haveBlock ? spectrumBlock_->currentData().toInt() : 0;
  std::vector<std::string> roles;
  std::map<std::string, int> learned; // role -> runs with a scale exponent there
  for (const lrq::RunRecord &r : model_->runs())
    for (const lrq::SpectrumRecord &s : r.spectra) {
      if (!haveBlock || s.block != block)
        continue;
      if (std::find(roles.begin(), roles.end(), s.role) == roles.end())
        roles.push_back(s.role);
      if (s.kind == "scale_exponent")
        ++learned[s.role];
    }
  for (const std::string &role : roles)
    spectrumRole_->addItem(QString::fromStdString(role), QString::fromStdString(role));
  int index = spectrumRole_->findData(current);
  if (index < 0)
    for (int i = 0; i < int(roles.size()) && index < 0; ++i)
      if (learned[roles[i]] >= 2)
        index = i;
  spectrumRole_->setCurrentIndex(std::max(0, index));
  spectrumRole_->setEnabled(spectrumRole_->count() > 0);
  updating_ = was;
}

void CompareView::updateSpectra() {
  if (updating_)
    return;
  QCustomPlot *plot = spectraPlot_;
  QCustomPlot *energy = energyPlot_;
  clearPlot(plot);
  clearPlot(energy);
  const auto &runs = model_->runs();
  const QList<QColor> colors = runColors(*model_);
  const bool have =
      spectrumBlock_->currentData().isValid() && spectrumRole_->currentData().isValid();
  const int block = have ? spectrumBlock_->currentData().toInt() : 0;
  const std::string role = spectrumRole_->currentData().toString().toStdString();
  if (auto *t = qobject_cast<QCPTextElement *>(plot->plotLayout()->element(0, 0)))
    t->setText(have
                   ? tr("Singular values, block %1 %2").arg(block).arg(QString::fromStdString(role))
                   : tr("Singular values"));

  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  int maxLen = 0, series = 0;
  bool haveW = false;
  QStringList noSpectra, noLayer;
  auto addSpectrum = [&](const lrq::SpectrumRecord &s, const QString &name,
                         const QString &shortName, const QColor &color, const QString &runId,
                         double width) {
    const QString kind = QString::fromStdString(s.kind);
    std::vector<double> values = s.values;
    std::sort(values.begin(), values.end(), std::greater<double>());
    QVector<double> xs, ys;
    const double top = values.empty() ? 0.0 : values.front();
    for (int i = 0; i < int(values.size()); ++i) {
      if (!(values[i] > 0))
        continue; // exact zeros have no place on a log axis
      xs << i + 1;
      ys << values[i];
      hi = std::max(hi, values[i]);
      // The range follows each curve down to its numerical rank only: what
      // lies below is rounding noise, and the drop into it shows the rank.
      if (values[i] > 1e-5 * top)
        lo = std::min(lo, values[i]);
    }
    maxLen = std::max(maxLen, int(values.size()));
    QCPGraph *g = addLine(plot, name, color, kindStyle(kind), width);
    g->setProperty("runId", runId);
    g->setProperty("kind", kind);
    g->setData(xs, ys, true);
    // Its energy curve, same colour and style.
    const std::vector<double> e = cumulativeEnergy(values);
    QVector<double> ex, ey;
    for (int i = 0; i < int(e.size()); ++i) {
      ex << i + 1;
      ey << 100.0 * e[i];
    }
    QCPGraph *eg = addLine(energy, shortName, color, kindStyle(kind), width);
    eg->setProperty("runId", runId);
    eg->setProperty("kind", QStringLiteral("energy:") + kind);
    eg->setProperty("baseName", shortName);
    eg->setData(ex, ey, true);
    ++series;
  };

  if (have) {
    // W once: from the first run that recorded it for this layer.
    for (const lrq::RunRecord &r : runs) {
      for (const lrq::SpectrumRecord &s : r.spectra)
        if (s.block == block && s.role == role && s.kind == "W") {
          addSpectrum(s, kindLabel(QStringLiteral("W")), QStringLiteral("W"),
                      QColor(0x11, 0x11, 0x11), QString::fromStdString(r.id), 2.4);
          haveW = true;
          break;
        }
      if (haveW)
        break;
    }
    static const char *kinds[] = {"E", "scaled_E", "scale_exponent"};
    for (int i = 0; i < int(runs.size()); ++i) {
      const lrq::RunRecord &r = runs[i];
      if (r.spectra.empty()) {
        noSpectra << model_->runLabel(i);
        continue;
      }
      bool any = false;
      for (const char *kind : kinds)
        for (const lrq::SpectrumRecord &s : r.spectra) {
          if (s.block != block || s.role != role || s.kind != kind)
            continue;
          QString name =
              model_->runLabel(i) + QStringLiteral(": ") + kindLabel(QString::fromLatin1(kind));
          if (s.kind == "scale_exponent")
            name += tr(", rank %1 of %2").arg(numericalRank(s.values)).arg(s.values.size());
          addSpectrum(
              s, name,
              model_->runLabel(i) + QLatin1Char(' ') + shortKindLabel(QString::fromLatin1(kind)),
              colors[i], QString::fromStdString(r.id), s.kind == "scale_exponent" ? 2.2 : 1.6);
          any = true;
        }
      // Other kinds a method recorded, drawn thin.
      for (const lrq::SpectrumRecord &s : r.spectra)
        if (s.block == block && s.role == role && s.kind != "W" && s.kind != "E" &&
            s.kind != "scaled_E" && s.kind != "scale_exponent") {
          addSpectrum(s,
                      model_->runLabel(i) + QStringLiteral(": ") + QString::fromStdString(s.kind),
                      model_->runLabel(i) + QLatin1Char(' ') + QString::fromStdString(s.kind),
                      colors[i], QString::fromStdString(r.id), 1.0);
          any = true;
        }
      if (!any)
        noLayer << model_->runLabel(i);
    }
  }
  QStringList notes;
  if (!noSpectra.isEmpty())
    notes << tr("no spectra recorded: %1").arg(joinNames(noSpectra));
  if (!noLayer.isEmpty())
    notes << tr("nothing recorded for this layer: %1").arg(joinNames(noLayer));
  notes << tr("Dashed: activation-scaled error (L²QER); dash-dot: learned scale exponent "
              "(FlexRound: one per weight; LRQ: a low-rank product). Rank = singular values "
              "above 10⁻⁵·σ₁.");
  spectraNote_->setText(notes.join(QStringLiteral(" · ")));
  if (series == 0) {
    const QString message =
        runs.empty() ? tr("No runs selected.") : tr("None of the selected runs recorded spectra.");
    showMessage(plot, message);
    showMessage(energy, message);
    plot->xAxis->setRange(0, 10);
    plot->yAxis->setRange(1e-3, 1);
    energy->xAxis->setRange(0, 10);
  } else {
    plot->xAxis->setRange(0, maxLen + 1);
    setLogRange(plot->yAxis, std::max(lo / 4, hi * 1e-7), hi);
    energy->xAxis->setRange(0, maxLen + 1);
  }
  energy->yAxis->setRange(0, 102);
  plot->legend->setVisible(series >= 2);
  energy->legend->setVisible(series >= 2);
  energyRank_->setMaximum(std::max(1, maxLen));
  updateEnergyMarkers();
  plot->replot();
}

void CompareView::updateEnergyMarkers() {
  QCustomPlot *energy = energyPlot_;
  // Remove the previous markers (graphs with kind "marker", the k line).
  for (int i = energy->graphCount() - 1; i >= 0; --i)
    if (energy->graph(i)->property("kind").toString() == QLatin1String("marker"))
      energy->removeGraph(i);
  for (int i = energy->itemCount() - 1; i >= 0; --i)
    if (energy->item(i)->objectName() == QLatin1String("rankLine"))
      energy->removeItem(i);
  const int k = energyRank_->value();
  QList<QCPGraph *> curves;
  for (int i = 0; i < energy->graphCount(); ++i)
    curves << energy->graph(i);
  for (QCPGraph *g : curves) {
    const QString base = g->property("baseName").toString();
    auto it = g->data()->findBegin(k, false);
    if (it == g->data()->constEnd() || it->key != k) {
      g->setName(base + tr(": (k past its length)"));
      continue;
    }
    auto *marker = energy->addGraph();
    marker->setProperty("kind", QStringLiteral("marker"));
    marker->setLineStyle(QCPGraph::lsNone);
    marker->setScatterStyle(
        QCPScatterStyle(QCPScatterStyle::ssDisc, g->pen().color(), g->pen().color(), 8));
    marker->setData(QVector<double>{double(k)}, QVector<double>{it->value});
    marker->removeFromLegend();
    // The legend shows each curve's value at k.
    g->setName(QStringLiteral("%1: %2 %").arg(base, QString::number(it->value, 'f', 1)));
  }
  if (!curves.isEmpty()) {
    auto *line = new QCPItemStraightLine(energy);
    line->setObjectName(QStringLiteral("rankLine"));
    line->point1->setCoords(k, 0);
    line->point2->setCoords(k, 1);
    line->setPen(QPen(QColor(0x88, 0x88, 0x88), 1, Qt::DotLine));
  }
  if (auto *t = qobject_cast<QCPTextElement *>(energy->plotLayout()->element(0, 0)))
    t->setText(tr("Energy captured at rank k = %1").arg(k));
  energy->replot();
}

void CompareView::updatePareto() {
  if (updating_)
    return;
  QCustomPlot *plot = paretoPlot_;
  clearPlot(plot);
  paretoPoints_.clear();
  const bool ppl = paretoPpl_->isChecked();
  const char *metric = ppl ? "perplexity" : "kl";
  plot->yAxis->setLabel(ppl ? tr("perplexity (log scale, lower is better)")
                            : tr("KL from the reference (nats/token, log scale)"));
  setLogY(plot, true);
  std::set<std::string> selected;
  for (const lrq::RunRecord &r : model_->runs())
    selected.insert(r.id);

  struct Point {
    double x, y;
    const lrq::RunInfo *run;
  };
  std::map<std::string, std::vector<Point>> byMethod;
  std::vector<Point> all;
  int unfinished = 0, noMetric = 0, noBits = 0;
  std::vector<double> refs;
  for (const lrq::RunInfo &r : model_->allRuns()) {
    if (r.status != lrq::RunStatus::Finished) {
      ++unfinished;
      continue;
    }
    auto it = r.metrics.find(metric);
    if (it == r.metrics.end() || !(it->second > 0) || !std::isfinite(it->second)) {
      ++noMetric;
      continue;
    }
    const BitsPerWeight bits = model_->bitsPerWeight(r);
    if (!bits.valid) {
      ++noBits;
      continue;
    }
    auto ref = r.metrics.find("reference_perplexity");
    if (ref != r.metrics.end() && std::isfinite(ref->second))
      refs.push_back(ref->second);
    const Point p{bits.total(), it->second, &r};
    byMethod[r.method].push_back(p);
    all.push_back(p);
  }
  double xlo = std::numeric_limits<double>::infinity(), xhi = -xlo, ylo = xlo, yhi = 0;
  for (const auto &[method, points] : byMethod) {
    const QString m = QString::fromStdString(method);
    QCPGraph *g = plot->addGraph();
    g->setName(QString::fromStdString(method));
    g->setProperty("kind", QStringLiteral("pareto"));
    g->setProperty("method", m);
    g->setLineStyle(QCPGraph::lsNone);
    const QColor c = methodColor(m);
    g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDisc, c.darker(115), c, 9));
    QVector<double> xs, ys;
    for (const Point &p : points) {
      xs << p.x;
      ys << p.y;
      xlo = std::min(xlo, p.x);
      xhi = std::max(xhi, p.x);
      ylo = std::min(ylo, p.y);
      yhi = std::max(yhi, p.y);
      ParetoPoint pp;
      pp.x = p.x;
      pp.y = p.y;
      pp.text = tr("%1\n%2, %3\n%4 bits/weight, %5 %6")
                    .arg(QString::fromStdString(p.run->id), m,
                         schemeLabel(QString::fromStdString(p.run->schemeJson)))
                    .arg(p.x, 0, 'f', 3)
                    .arg(ppl ? tr("perplexity") : tr("KL"))
                    .arg(formatMetric(p.y));
      paretoPoints_ << pp;
    }
    g->setData(xs, ys);
  }
  // The front: runs no other run beats on both bits and the metric.
  std::vector<Point> sorted = all;
  std::sort(sorted.begin(), sorted.end(),
            [](const Point &a, const Point &b) { return a.x < b.x || (a.x == b.x && a.y < b.y); });
  QVector<double> fx, fy;
  double best = std::numeric_limits<double>::infinity();
  for (const Point &p : sorted)
    if (p.y < best) {
      best = p.y;
      fx << p.x;
      fy << p.y;
    }
  if (fx.size() >= 2) {
    QCPGraph *front =
        addLine(plot, tr("Pareto front"), QColor(0x99, 0x99, 0x99), Qt::DashLine, 1.2);
    front->setProperty("kind", QStringLiteral("front"));
    front->setLineStyle(QCPGraph::lsStepLeft);
    front->setData(fx, fy, true);
  }
  // Selected runs: ringed and named.
  QVector<double> sx, sy;
  for (const Point &p : all)
    if (selected.count(p.run->id)) {
      sx << p.x;
      sy << p.y;
      auto *label = new QCPItemText(plot);
      label->position->setType(QCPItemPosition::ptPlotCoords);
      label->position->setCoords(p.x, p.y);
      label->setPositionAlignment(Qt::AlignLeft | Qt::AlignVCenter);
      label->setPadding(QMargins(12, 0, 0, 0));
      QFont f = plot->font();
      f.setPointSize(8);
      label->setFont(f);
      label->setText(QString::fromStdString(p.run->method));
    }
  if (!sx.isEmpty()) {
    QCPGraph *g = plot->addGraph();
    g->setName(tr("selected runs"));
    g->setProperty("kind", QStringLiteral("selected"));
    g->setLineStyle(QCPGraph::lsNone);
    g->setScatterStyle(
        QCPScatterStyle(QCPScatterStyle::ssCircle, QPen(Qt::black, 1.8), Qt::NoBrush, 17));
    g->setData(sx, sy);
  }
  if (ppl && !refs.empty() && !all.empty()) {
    const double ref = refs.front();
    QCPGraph *g = addLine(plot, QStringLiteral("%1: %2").arg(referenceLabel(), formatMetric(ref)),
                          kReferenceColor, Qt::DashLine, 1.4);
    g->setProperty("kind", QStringLiteral("reference"));
    const double span = std::max(0.5, xhi - xlo);
    g->setData(QVector<double>{xlo - span, xhi + span}, QVector<double>{ref, ref});
    ylo = std::min(ylo, ref);
    auto *label = new QCPItemText(plot);
    label->position->setTypeX(QCPItemPosition::ptAxisRectRatio);
    label->position->setTypeY(QCPItemPosition::ptPlotCoords);
    label->position->setCoords(0.99, ref);
    label->setPositionAlignment(Qt::AlignRight | Qt::AlignBottom);
    label->setColor(kReferenceColor);
    QFont f = plot->font();
    f.setPointSize(8);
    label->setFont(f);
    label->setText(tr("full precision %1").arg(formatMetric(ref)));
  }
  QStringList notes;
  if (unfinished)
    notes << tr("%n unfinished run(s) left out", nullptr, unfinished);
  if (noMetric)
    notes << tr("%n run(s) without %1", nullptr, noMetric).arg(ppl ? tr("perplexity") : tr("KL"));
  if (noBits)
    notes << tr("%n run(s) without a weight grid", nullptr, noBits);
  notes << tr("Bits per weight: weight bits + 16-bit scale (and zero point) per group or "
              "channel + LQER/L²QER factors r·(m+n)·16/(m·n); hover a point for its run.");
  paretoNote_->setText(notes.join(QStringLiteral(" · ")));
  if (all.empty()) {
    showMessage(
        plot,
        model_->allRuns().empty()
            ? tr("The store has no runs.")
            : tr("No finished run in the store has a %1.").arg(ppl ? tr("perplexity") : tr("KL")));
    plot->xAxis->setRange(2, 9);
    plot->yAxis->setRange(ppl ? 10 : 1e-3, ppl ? 1000 : 10);
  } else {
    const double span = std::max(0.5, xhi - xlo);
    plot->xAxis->setRange(xlo - 0.08 * span, xhi + 0.22 * span);
    setLogRange(plot->yAxis, ylo, yhi);
  }
  plot->legend->setVisible(plot->graphCount() >= 2);
  plot->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignRight);
  plot->replot();
}

QString CompareView::paretoToolTipAt(const QPointF &pixel) const {
  double bestDistance = 10.0; // pixels
  QString text;
  for (const ParetoPoint &p : paretoPoints_) {
    const double px = paretoPlot_->xAxis->coordToPixel(p.x);
    const double py = paretoPlot_->yAxis->coordToPixel(p.y);
    const double d = std::hypot(px - pixel.x(), py - pixel.y());
    if (d <= bestDistance) {
      bestDistance = d;
      text = p.text;
    }
  }
  return text;
}

QString CompareView::toHtmlReport() const {
  QString html;
  html += QStringLiteral(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Run comparison</title>\n"
      "<style>body{font-family:sans-serif;margin:24px;color:#222}"
      "table{border-collapse:collapse;font-size:13px}"
      "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
      "td.num{text-align:right}th{background:#f0f0f0}tr.differs td,tr.differs th{font-weight:bold}"
      "td.best{background:#d7f0d5}p.note{color:#555;font-size:13px}"
      "img{max-width:100%;border:1px solid #ddd}</style></head><body>\n");
  html += QStringLiteral("<h1>Run comparison</h1>\n<p>Run store: <code>%1</code></p>\n")
              .arg(model_->storePath().toHtmlEscaped());
  if (!model_->lastError().isEmpty())
    html += QStringLiteral("<p style=\"color:#b3261e\">%1</p>\n")
                .arg(model_->lastError().toHtmlEscaped());
  html += QStringLiteral("<table>\n<tr><th></th>");
  for (int c = 0; c < model_->columnCount(); ++c)
    html += QStringLiteral("<th>%1</th>")
                .arg(model_->headerData(c, Qt::Horizontal)
                         .toString()
                         .toHtmlEscaped()
                         .replace(QLatin1String("\n"), QLatin1String("<br>")));
  html += QStringLiteral("</tr>\n");
  for (int r = 0; r < model_->rowCount(); ++r) {
    const bool differs = model_->index(r, 0).data(CompareModel::DiffersRole).toBool();
    html += differs ? QStringLiteral("<tr class=\"differs\">") : QStringLiteral("<tr>");
    html += QStringLiteral("<th>%1</th>")
                .arg(model_->headerData(r, Qt::Vertical).toString().toHtmlEscaped());
    for (int c = 0; c < model_->columnCount(); ++c) {
      const QModelIndex index = model_->index(r, c);
      QStringList classes;
      if (index.data(CompareModel::ValueRole).isValid())
        classes << QStringLiteral("num");
      if (index.data(Qt::BackgroundRole).isValid())
        classes << QStringLiteral("best");
      html += QStringLiteral("<td class=\"%1\">%2</td>")
                  .arg(classes.join(QLatin1Char(' ')), index.data().toString().toHtmlEscaped());
    }
    html += QStringLiteral("</tr>\n");
  }
  html += QStringLiteral("</table>\n");

  struct Section {
    QCustomPlot *plot;
    int width, height;
    QLabel *note;
  };
  const Section sections[] = {
      {pplPlot_, 720, 360, nullptr},         {klPlot_, 720, 360, nullptr},
      {top1Plot_, 720, 360, accuracyNote_},  {depthPlot_, 1000, 480, depthNote_},
      {curvesPlot_, 1000, 480, curvesNote_}, {heldoutPlot_, 1000, 480, heldoutNote_},
      {spectraPlot_, 1000, 520, nullptr},    {energyPlot_, 1000, 420, spectraNote_},
      {paretoPlot_, 1000, 520, paretoNote_}};
  for (const Section &s : sections) {
    const QPixmap pixmap = s.plot->toPixmap(s.width, s.height);
    QByteArray png;
    QBuffer buffer(&png);
    buffer.open(QIODevice::WriteOnly);
    pixmap.save(&buffer, "PNG");
    const QString title = plotTitleText(s.plot);
    html += QStringLiteral("<h2>%1</h2>\n<img alt=\"%1\" src=\"data:image/png;base64,%2\">\n")
                .arg(title.toHtmlEscaped(), QString::fromLatin1(png.toBase64()));
    if (s.note && !s.note->text().isEmpty())
      html += QStringLiteral("<p class=\"note\">%1</p>\n").arg(s.note->text().toHtmlEscaped());
  }
  html += QStringLiteral("</body></html>\n");
  return html;
}

} // namespace lrq::ui
