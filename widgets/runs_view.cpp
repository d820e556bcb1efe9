#include "widgets/runs_view.h"

#include "widgets/plot_style.h"

#include <QComboBox>
#include <QDateTime>
#include <QDir>
#include <QFile>
#include <QFileInfo>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QItemSelectionModel>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLabel>
#include <QLineEdit>
#include <QMessageBox>
#include <QPushButton>
#include <QSortFilterProxyModel>
#include <QSplitter>
#include <QTabWidget>
#include <QTableView>
#include <QTextBrowser>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/quant/gguf_scheme.h"
#include "core/session/quantize_job.h"
#include "widgets/runs_table_model.h"

namespace lrq::ui {

// Text filter over method, scheme and status; an exact status filter.
class RunsFilterProxy : public QSortFilterProxyModel {
public:
  using QSortFilterProxyModel::QSortFilterProxyModel;

  void setText(const QString &text) {
    text_ = text.trimmed();
    invalidateFilter();
  }
  void setStatus(const QString &status) {
    status_ = status;
    invalidateFilter();
  }

protected:
  bool lessThan(const QModelIndex &left, const QModelIndex &right) const override {
    const QVariant a = left.data(sortRole()), b = right.data(sortRole());
    if (a.isValid() != b.isValid()) // runs without the value last, in either order
      return sortOrder() == Qt::AscendingOrder ? a.isValid() : !a.isValid();
    return QSortFilterProxyModel::lessThan(left, right);
  }
  bool filterAcceptsRow(int row, const QModelIndex &parent) const override {
    const QAbstractItemModel *m = sourceModel();
    if (!status_.isEmpty() &&
        m->index(row, RunsTableModel::StatusColumn, parent).data(RunsTableModel::StatusRole) !=
            status_)
      return false;
    if (text_.isEmpty())
      return true;
    for (int column : {int(RunsTableModel::MethodColumn), int(RunsTableModel::SchemeColumn),
                       int(RunsTableModel::StatusColumn)})
      if (m->index(row, column, parent).data().toString().contains(text_, Qt::CaseInsensitive))
        return true;
    return false;
  }

private:
  QString text_;
  QString status_;
};

namespace {

QString qs(const std::string &s) {
  return QString::fromStdString(s);
}

void styleRunsPlot(QCustomPlot *plot, const QString &title) {
  stylePlot(plot, title); // the workbench's common look (widgets/plot_style.h)
  plot->setAntialiasedElements(QCP::aePlottables | QCP::aeItems | QCP::aeLegendItems);
  // The legend lives in its own row under the axes, so it never hides data.
  auto *legendRow = new QCPLayoutGrid;
  plot->plotLayout()->addElement(2, 0, legendRow);
  legendRow->setMargins(QMargins(0, 0, 0, 0));
  plot->axisRect()->insetLayout()->take(plot->legend);
  plot->axisRect()->insetLayout()->simplify();
  legendRow->addElement(0, 0, plot->legend);
  plot->legend->setFillOrder(QCPLegend::foColumnsFirst);
  plot->legend->setBorderPen(Qt::NoPen);
  QFont legendFont = plot->font();
  legendFont.setPixelSize(11); // pixels: measured and drawn alike on any screen
  plot->legend->setFont(legendFont);
  plot->legend->setIconSize(20, 14);
  plot->legend->setRowSpacing(0);
  plot->legend->setMargins(QMargins(6, 2, 6, 6));
  plot->legend->setColumnSpacing(6);
  plot->plotLayout()->setRowStretchFactor(2, 0.01);
  plot->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
  plot->setMinimumHeight(200);
}

QCPTextElement *titleOf(QCustomPlot *plot) {
  return qobject_cast<QCPTextElement *>(plot->plotLayout()->element(0, 0));
}

QCPItemText *messageOf(QCustomPlot *plot) {
  for (int i = 0; i < plot->itemCount(); ++i)
    if (auto *t = qobject_cast<QCPItemText *>(plot->item(i)))
      if (t->objectName() == QLatin1String("message"))
        return t;
  QCPItemText *item = addMessage(plot); // widgets/plot_style.h
  item->setObjectName(QStringLiteral("message"));
  return item;
}

void setMessage(QCustomPlot *plot, const QString &message) {
  QCPItemText *m = messageOf(plot);
  m->setText(message);
  m->setVisible(!message.isEmpty());
}

// Distinct colours for up to a few dozen series, in a perceptual order
// (block 0 dark blue through green to orange).
QColor seriesColor(int i, int n) {
  const double t = n <= 1 ? 0.0 : double(i) / double(n - 1);
  return QColor::fromHsvF(float(0.66 - 0.58 * t), 0.75f, float(0.85 - 0.15 * t));
}

// Fixed colours for the usual linears, so the same role looks the same everywhere.
QColor roleColor(const QString &role, int fallbackIndex) {
  static const QList<QPair<QString, QColor>> colors{
      {QStringLiteral("q_proj"), QColor(0x1f, 0x77, 0xb4)},
      {QStringLiteral("k_proj"), QColor(0xff, 0x7f, 0x0e)},
      {QStringLiteral("v_proj"), QColor(0x2c, 0xa0, 0x2c)},
      {QStringLiteral("o_proj"), QColor(0xd6, 0x27, 0x28)},
      {QStringLiteral("out_proj"), QColor(0xd6, 0x27, 0x28)},
      {QStringLiteral("gate_proj"), QColor(0x94, 0x67, 0xbd)},
      {QStringLiteral("up_proj"), QColor(0x8c, 0x56, 0x4b)},
      {QStringLiteral("fc1"), QColor(0x8c, 0x56, 0x4b)},
      {QStringLiteral("down_proj"), QColor(0xe3, 0x77, 0xc2)},
      {QStringLiteral("fc2"), QColor(0xe3, 0x77, 0xc2)}};
  for (const auto &[name, color] : colors)
    if (name == role)
      return color;
  return seriesColor(fallbackIndex % 8, 8);
}

QString kindLabel(const QString &kind) {
  if (kind == QLatin1String("W"))
    return QObject::tr("W (weights)");
  if (kind == QLatin1String("E"))
    return QObject::tr("E = W − Ŵ (error)");
  if (kind == QLatin1String("scaled_E"))
    return QObject::tr("diag(s)·Eᵀ (activation-scaled error)");
  if (kind == QLatin1String("scale_exponent"))
    return QObject::tr("scale exponent");
  return kind;
}

QString layerLabel(int block, const QString &role) {
  return block < 0 ? role : QObject::tr("block %1 · %2").arg(block).arg(role);
}

QString jsonValueText(const QJsonValue &v) {
  if (v.isDouble()) {
    const double d = v.toDouble();
    return d == std::floor(d) && std::abs(d) < 1e15 ? QString::number(qint64(d))
                                                    : QString::number(d, 'g', 6);
  }
  if (v.isBool())
    return v.toBool() ? QStringLiteral("true") : QStringLiteral("false");
  if (v.isString())
    return v.toString();
  if (v.isNull())
    return QStringLiteral("null");
  return QString::fromUtf8((v.isArray() ? QJsonDocument(v.toArray()) : QJsonDocument(v.toObject()))
                               .toJson(QJsonDocument::Compact));
}

// Rows "key: value" of a flat or nested JSON object ("a.b" for nested keys).
void flatten(const QJsonObject &o, const QString &prefix, QList<QPair<QString, QString>> *out) {
  for (auto it = o.begin(); it != o.end(); ++it) {
    const QString key = prefix.isEmpty() ? it.key() : prefix + QLatin1Char('.') + it.key();
    if (it.value().isObject())
      flatten(it.value().toObject(), key, out);
    else
      out->append({key, jsonValueText(it.value())});
  }
}

// "pid 1234 on host, last heartbeat 10:15:02" (the run's owner process).
QString ownerText(const RunInfo &run) {
  if (!run.owner.known())
    return RunsView::tr("not recorded");
  QString text = RunsView::tr("pid %1 on %2").arg(run.owner.pid).arg(qs(run.owner.host));
  if (run.heartbeat > 0)
    text += RunsView::tr(", last heartbeat %1")
                .arg(QDateTime::fromMSecsSinceEpoch(qint64(run.heartbeat * 1000.0))
                         .toString(QStringLiteral("yyyy-MM-dd HH:mm:ss")));
  return text;
}

QString tableHtml(const QList<QPair<QString, QString>> &rows) {
  QString html = QStringLiteral("<table cellspacing='0' cellpadding='1'>");
  for (const auto &[key, value] : rows)
    html += QStringLiteral("<tr><td style='color:#555; padding-right:10px'>%1</td><td>%2</td></tr>")
                .arg(key.toHtmlEscaped(), value.toHtmlEscaped());
  return html + QStringLiteral("</table>");
}

} // namespace

RunsView::RunsView(QWidget *parent) : QWidget(parent) {
  model_ = new RunsTableModel(this);
  proxy_ = new RunsFilterProxy(this);
  proxy_->setSourceModel(model_);
  proxy_->setSortRole(RunsTableModel::SortRole);
  proxy_->setDynamicSortFilter(true);

  filter_ = new QLineEdit(this);
  filter_->setObjectName(QStringLiteral("runsFilter"));
  filter_->setPlaceholderText(tr("Filter by method, scheme or status"));
  filter_->setClearButtonEnabled(true);
  statusFilter_ = new QComboBox(this);
  statusFilter_->setObjectName(QStringLiteral("runsStatusFilter"));
  statusFilter_->addItem(tr("All statuses"), QString());
  for (RunStatus s : {RunStatus::Running, RunStatus::Interrupted, RunStatus::Finished,
                      RunStatus::Cancelled, RunStatus::Failed})
    statusFilter_->addItem(QString::fromLatin1(runStatusName(s)),
                           QString::fromLatin1(runStatusName(s)));
  count_ = new QLabel(this);
  count_->setObjectName(QStringLiteral("runsCount"));
  compare_ = new QPushButton(tr("Compare"), this);
  compare_->setToolTip(tr("Compare the selected runs side by side (select two or more)"));
  export_ = new QPushButton(tr("Export…"), this);
  export_->setToolTip(tr("Export the selected finished run's quantized model"));
  exportGguf_ = new QPushButton(tr("Export GGUF…"), this);
  exportGguf_->setObjectName(QStringLiteral("exportGguf"));
  exportGguf_->setToolTip(tr("Write the selected finished run as a GGUF file that llama.cpp "
                             "loads (runs of the gguf-* schemes)"));
  openExport_ = new QPushButton(tr("Open Export"), this);
  openExport_->setObjectName(QStringLiteral("openExport"));
  resume_ = new QPushButton(tr("Resume"), this);
  resume_->setToolTip(
      tr("Continue an interrupted, cancelled or failed run from its last checkpoint"));
  delete_ = new QPushButton(tr("Delete"), this);
  delete_->setToolTip(tr("Delete the selected runs from the store"));

  auto *bar = new QHBoxLayout;
  bar->addWidget(filter_, 2);
  bar->addWidget(statusFilter_);
  bar->addWidget(count_);
  bar->addStretch(1);
  bar->addWidget(compare_);
  bar->addWidget(export_);
  bar->addWidget(exportGguf_);
  bar->addWidget(openExport_);
  bar->addWidget(resume_);
  bar->addWidget(delete_);

  error_ = new QLabel(this);
  error_->setObjectName(QStringLiteral("runsError"));
  error_->setWordWrap(true);
  error_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  error_->setStyleSheet(QStringLiteral(
      "QLabel { background: #fdecea; color: #8a1c1c; border: 1px solid #f1b0ab; padding: 4px; }"));
  error_->hide();

  table_ = new QTableView(this);
  table_->setObjectName(QStringLiteral("runsTable"));
  table_->setModel(proxy_);
  table_->setSortingEnabled(true);
  table_->sortByColumn(RunsTableModel::CreatedColumn, Qt::DescendingOrder);
  table_->setSelectionBehavior(QAbstractItemView::SelectRows);
  table_->setSelectionMode(QAbstractItemView::ExtendedSelection);
  table_->setAlternatingRowColors(true);
  table_->setWordWrap(false);
  table_->verticalHeader()->hide();
  table_->verticalHeader()->setDefaultSectionSize(table_->fontMetrics().height() + 8);
  table_->horizontalHeader()->setStretchLastSection(true);
  table_->horizontalHeader()->setSectionResizeMode(QHeaderView::Interactive);
  table_->horizontalHeader()->setHighlightSections(false);
  table_->horizontalHeader()->setDefaultAlignment(Qt::AlignCenter);
  const QList<QPair<int, int>> widths{
      {RunsTableModel::StatusColumn, 80},  {RunsTableModel::MethodColumn, 90},
      {RunsTableModel::SchemeColumn, 160}, {RunsTableModel::BitsColumn, 90},
      {RunsTableModel::RankColumn, 55},    {RunsTableModel::PerplexityColumn, 90},
      {RunsTableModel::KlColumn, 80},      {RunsTableModel::Top1Column, 70},
      {RunsTableModel::SecondsColumn, 80}, {RunsTableModel::PeakRssColumn, 115}};
  for (const auto &[column, width] : widths)
    table_->setColumnWidth(column, width);

  // Details of the selected run.
  detailTitle_ = new QLabel(this);
  detailTitle_->setObjectName(QStringLiteral("runTitle"));
  detailTitle_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  QFont titleFont = detailTitle_->font();
  titleFont.setBold(true);
  detailTitle_->setFont(titleFont);
  settings_ = new QTextBrowser(this);
  settings_->setObjectName(QStringLiteral("runSettings"));
  settings_->setOpenLinks(false);
  settings_->setMinimumWidth(260);

  lossPlot_ = new QCustomPlot(this);
  lossPlot_->setObjectName(QStringLiteral("lossPlot"));
  styleRunsPlot(lossPlot_, tr("Block reconstruction loss"));
  lossPlot_->xAxis->setLabel(tr("iteration"));
  lossPlot_->yAxis->setLabel(tr("block output MSE (log scale)"));
  setLogAxis(lossPlot_->yAxis);

  sqnrPlot_ = new QCustomPlot(this);
  sqnrPlot_->setObjectName(QStringLiteral("sqnrPlot"));
  styleRunsPlot(sqnrPlot_, tr("Weight SQNR per layer"));
  sqnrPlot_->xAxis->setLabel(tr("block"));
  sqnrPlot_->yAxis->setLabel(tr("SQNR of Ŵ vs W (dB)"));
  sqnrPlot_->xAxis->setTicker(QSharedPointer<QCPAxisTickerFixed>(new QCPAxisTickerFixed));
  qSharedPointerCast<QCPAxisTickerFixed>(sqnrPlot_->xAxis->ticker())
      ->setScaleStrategy(QCPAxisTickerFixed::ssMultiples);

  spectrumPlot_ = new QCustomPlot(this);
  spectrumPlot_->setObjectName(QStringLiteral("spectrumPlot"));
  styleRunsPlot(spectrumPlot_, tr("Singular values"));
  spectrumPlot_->xAxis->setLabel(tr("index i"));
  spectrumPlot_->yAxis->setLabel(QStringLiteral("σᵢ (log scale)"));
  setLogAxis(spectrumPlot_->yAxis);
  spectrumLayer_ = new QComboBox(this);
  spectrumLayer_->setObjectName(QStringLiteral("spectrumLayer"));
  spectrumLayer_->setMinimumContentsLength(18);
  spectrumKind_ = new QComboBox(this);
  spectrumKind_->setObjectName(QStringLiteral("spectrumKind"));
  spectrumKind_->setMinimumContentsLength(22);

  auto *spectrumPage = new QWidget(this);
  auto *spectrumBar = new QHBoxLayout;
  spectrumBar->addWidget(new QLabel(tr("Layer:"), spectrumPage));
  spectrumBar->addWidget(spectrumLayer_);
  spectrumBar->addSpacing(12);
  spectrumBar->addWidget(new QLabel(tr("Matrix:"), spectrumPage));
  spectrumBar->addWidget(spectrumKind_);
  spectrumBar->addStretch(1);
  auto *spectrumLayout = new QVBoxLayout(spectrumPage);
  spectrumLayout->setContentsMargins(0, 4, 0, 0);
  spectrumLayout->addLayout(spectrumBar);
  spectrumLayout->addWidget(spectrumPlot_, 1);

  tabs_ = new QTabWidget(this);
  tabs_->setObjectName(QStringLiteral("runPlots"));
  tabs_->addTab(lossPlot_, tr("Reconstruction loss"));
  tabs_->addTab(sqnrPlot_, tr("Layer SQNR"));
  tabs_->addTab(spectrumPage, tr("Spectra"));

  auto *detailSplit = new QSplitter(Qt::Horizontal, this);
  detailSplit->addWidget(settings_);
  detailSplit->addWidget(tabs_);
  detailSplit->setStretchFactor(0, 2);
  detailSplit->setStretchFactor(1, 5);
  detailSplit->setSizes({360, 900});
  auto *detail = new QWidget(this);
  auto *detailLayout = new QVBoxLayout(detail);
  detailLayout->setContentsMargins(0, 0, 0, 0);
  detailLayout->addWidget(detailTitle_);
  detailLayout->addWidget(detailSplit, 1);

  auto *split = new QSplitter(Qt::Vertical, this);
  split->addWidget(table_);
  split->addWidget(detail);
  split->setStretchFactor(0, 2);
  split->setStretchFactor(1, 3);
  split->setSizes({260, 420});
  split->setChildrenCollapsible(false);

  auto *layout = new QVBoxLayout(this);
  layout->addLayout(bar);
  layout->addWidget(error_);
  layout->addWidget(split, 1);

  connect(filter_, &QLineEdit::textChanged, this, &RunsView::setFilterText);
  connect(statusFilter_, &QComboBox::currentIndexChanged, this,
          [this] { proxy_->setStatus(statusFilter_->currentData().toString()); });
  connect(table_->selectionModel(), &QItemSelectionModel::selectionChanged, this,
          &RunsView::onSelectionChanged);
  connect(table_->selectionModel(), &QItemSelectionModel::currentRowChanged, this,
          &RunsView::onSelectionChanged);
  connect(model_, &QAbstractItemModel::dataChanged, this, &RunsView::onRowsChanged);
  connect(model_, &QAbstractItemModel::rowsRemoved, this, [this] {
    if (!shownId_.isEmpty() && model_->rowOfRun(shownId_) < 0)
      clearDetails(tr("The run was deleted."));
    updateActions();
  });
  connect(model_, &RunsTableModel::refreshed, this, &RunsView::updateActions);
  connect(model_, &RunsTableModel::storeError, this, &RunsView::showError);
  connect(model_, &RunsTableModel::storeRecovered, this, [this] { showError({}); });
  connect(spectrumLayer_, &QComboBox::currentIndexChanged, this, &RunsView::fillSpectrumKinds);
  connect(spectrumKind_, &QComboBox::currentIndexChanged, this, &RunsView::plotSpectrum);
  connect(delete_, &QPushButton::clicked, this, &RunsView::deleteSelected);
  connect(resume_, &QPushButton::clicked, this, [this] {
    const QStringList ids = selectedRunIds();
    if (ids.size() == 1)
      emit resumeRequested(ids.first());
  });
  connect(export_, &QPushButton::clicked, this, [this] {
    const QStringList ids = selectedRunIds();
    if (ids.size() == 1)
      emit exportRequested(ids.first());
  });
  connect(exportGguf_, &QPushButton::clicked, this, [this] {
    const QStringList ids = selectedRunIds();
    if (ids.size() == 1)
      emit exportGgufRequested(ids.first());
  });
  connect(openExport_, &QPushButton::clicked, this, [this] {
    const QStringList ids = selectedRunIds();
    const RunInfo *one = ids.size() == 1 ? model_->runInfo(model_->rowOfRun(ids.first())) : nullptr;
    const QString path = one ? openableExport(*one) : QString();
    if (!path.isEmpty())
      emit openModelRequested(path);
  });
  connect(compare_, &QPushButton::clicked, this, [this] {
    const QStringList ids = selectedRunIds();
    if (ids.size() >= 2)
      emit compareRequested(ids);
  });

  clearDetails(tr("Select a run to see its settings, curves and spectra."));
  updateActions();
}

void RunsView::setStorePath(const QString &path) {
  clearDetails(tr("Select a run to see its settings, curves and spectra."));
  showError({});
  model_->setStorePath(path);
  if (!model_->lastError().isEmpty())
    showError(model_->lastError());
  updateActions();
}

QString RunsView::storePath() const {
  return model_->storePath();
}

QString RunsView::errorText() const {
  return error_->isHidden() ? QString() : error_->text();
}

void RunsView::setFilterText(const QString &text) {
  if (filter_->text() != text)
    filter_->setText(text); // comes back through textChanged
  else
    proxy_->setText(text);
  updateActions();
}

void RunsView::setStatusFilter(const QString &status) {
  const int i = statusFilter_->findData(status);
  statusFilter_->setCurrentIndex(i >= 0 ? i : 0);
}

QStringList RunsView::selectedRunIds() const {
  QModelIndexList rows = table_->selectionModel()->selectedRows();
  std::sort(rows.begin(), rows.end(),
            [](const QModelIndex &a, const QModelIndex &b) { return a.row() < b.row(); });
  QStringList ids;
  for (const QModelIndex &i : rows)
    ids << i.data(RunsTableModel::RunIdRole).toString();
  return ids;
}

QList<QCustomPlot *> RunsView::plots() const {
  return {lossPlot_, sqnrPlot_, spectrumPlot_};
}

void RunsView::selectRun(const QString &id) {
  const int sourceRow = model_->rowOfRun(id);
  const QModelIndex index = proxy_->mapFromSource(model_->index(sourceRow < 0 ? 0 : sourceRow, 0));
  if (sourceRow < 0 || !index.isValid()) {
    table_->selectionModel()->clearSelection();
    return;
  }
  table_->selectionModel()->setCurrentIndex(index, QItemSelectionModel::ClearAndSelect |
                                                       QItemSelectionModel::Rows);
  table_->scrollTo(index);
}

void RunsView::onSelectionChanged() {
  updateActions();
  QString id;
  const QModelIndex current = table_->selectionModel()->currentIndex();
  if (current.isValid() && table_->selectionModel()->isRowSelected(current.row(), {}))
    id = current.data(RunsTableModel::RunIdRole).toString();
  else if (const QStringList ids = selectedRunIds(); !ids.isEmpty())
    id = ids.first();
  if (id == shownId_)
    return;
  if (id.isEmpty()) {
    clearDetails(tr("Select a run to see its settings, curves and spectra."));
    return;
  }
  showRun(id);
  emit runSelected(id);
}

void RunsView::onRowsChanged(const QModelIndex &topLeft, const QModelIndex &bottomRight) {
  updateActions();
  if (shownId_.isEmpty())
    return;
  const int row = model_->rowOfRun(shownId_);
  if (row >= topLeft.row() && row <= bottomRight.row())
    showRun(shownId_); // a running run gained blocks, or finished
}

void RunsView::updateActions() {
  const QStringList ids = selectedRunIds();
  const RunInfo *one = ids.size() == 1 ? model_->runInfo(model_->rowOfRun(ids.first())) : nullptr;
  delete_->setEnabled(!ids.isEmpty());
  resume_->setEnabled(one &&
                      (one->status == RunStatus::Interrupted ||
                       one->status == RunStatus::Cancelled || one->status == RunStatus::Failed));
  if (one && one->status == RunStatus::Running)
    resume_->setToolTip(qs(stillRunningMessage(one->id, one->owner, one->heartbeat)) +
                        tr(": only a run whose process is gone (interrupted), cancelled or "
                           "failed can be resumed"));
  else if (one && one->status == RunStatus::Finished)
    resume_->setToolTip(tr("Run %1 has finished: there is nothing to resume").arg(qs(one->id)));
  else
    resume_->setToolTip(
        tr("Continue an interrupted, cancelled or failed run from its last checkpoint"));
  export_->setEnabled(one && one->status == RunStatus::Finished);
  // Only a run on one of llama.cpp's block grids can become a GGUF file: for
  // the others the tooltip says which scheme would (the check runs no work).
  std::string ggufProblem;
  if (one && one->status == RunStatus::Finished) {
    try {
      ggufProblem = lrq::quant::ggufExportProblem(one->schemeJson, one->method);
    } catch (const std::exception &e) {
      ggufProblem = e.what();
    }
  }
  exportGguf_->setEnabled(export_->isEnabled() && ggufProblem.empty());
  exportGguf_->setToolTip(ggufProblem.empty()
                              ? tr("Write the selected finished run as a GGUF file that "
                                   "llama.cpp loads (runs of the gguf-* schemes)")
                              : tr("Not as GGUF: %1").arg(qs(ggufProblem)));
  QString why;
  const QString exported = one ? openableExport(*one, &why) : QString();
  openExport_->setEnabled(!exported.isEmpty());
  openExport_->setToolTip(!one                 ? tr("Select one run to open its exported model")
                          : exported.isEmpty() ? why
                                               : tr("Open %1 as the current model").arg(exported));
  compare_->setEnabled(ids.size() >= 2);
  const int shown = proxy_->rowCount(), total = model_->rowCount();
  count_->setText(shown == total ? tr("%n run(s)", nullptr, total)
                                 : tr("%1 of %n run(s)", nullptr, total).arg(shown));
}

QString RunsView::openableExport(const RunInfo &run, QString *reason) {
  const QString id = qs(run.id);
  auto fail = [reason](const QString &why) {
    if (reason)
      *reason = why;
    return QString();
  };
  QString dir = qs(run.exportDir), packed = qs(run.packedPath);
  if (dir.isEmpty() && packed.isEmpty() && run.status != RunStatus::Finished) {
    // Not recorded yet: what its saved request (resumable runs) asks for.
    QFile file(qs(quantizeRequestFile(defaultWorkDir(run.id))));
    if (file.open(QIODevice::ReadOnly)) {
      const QJsonObject saved = QJsonDocument::fromJson(file.readAll()).object();
      if (saved.value(QStringLiteral("run_id")).toString() == id) {
        const QJsonObject request = saved.value(QStringLiteral("request")).toObject();
        dir = request.value(QStringLiteral("export_dir")).toString();
        packed = request.value(QStringLiteral("packed_path")).toString();
      }
    }
  }
  if (dir.isEmpty() && packed.isEmpty() && run.ggufPath.empty())
    return fail(tr("Run %1 has no export: give a run an HF folder or a packed file as its "
                   "output (Quantize view, Output), or export it with Export…")
                    .arg(id));
  if (!dir.isEmpty() && QFileInfo(dir).isDir() &&
      QFileInfo(QDir(dir).filePath(QStringLiteral("config.json"))).isFile())
    return dir;
  if (!packed.isEmpty() && QFileInfo(packed).isFile())
    return packed;
  if (!run.ggufPath.empty() && QFileInfo(qs(run.ggufPath)).isFile())
    return qs(run.ggufPath);
  const QString where = !dir.isEmpty() ? dir : !packed.isEmpty() ? packed : qs(run.ggufPath);
  if (run.status == RunStatus::Running)
    return fail(tr("Run %1 is still running; its export %2 is written at its end").arg(id, where));
  if (run.status != RunStatus::Finished)
    return fail(tr("Run %1 did not finish: its export %2 was not written (%3)")
                    .arg(id, where, QString::fromLatin1(runStatusName(run.status))));
  return fail(tr("The export of run %1 is no longer on disk: %2").arg(id, where));
}

void RunsView::deleteSelected() {
  const QStringList ids = selectedRunIds();
  if (ids.isEmpty())
    return;
  if (confirmDeletes_) {
    int running = 0;
    for (const QString &id : ids)
      if (const RunInfo *info = model_->runInfo(model_->rowOfRun(id)))
        running += info->status == RunStatus::Running;
    QString text = ids.size() == 1
                       ? tr("Delete run %1 and everything recorded for it?").arg(ids.first())
                       : tr("Delete %1 runs and everything recorded for them?").arg(ids.size());
    if (running > 0)
      text += QStringLiteral("\n\n") +
              tr("%n of them is still marked running; a process still writing it will fail.",
                 nullptr, running);
    if (QMessageBox::question(this, tr("Delete runs"), text, QMessageBox::Yes | QMessageBox::Cancel,
                              QMessageBox::Cancel) != QMessageBox::Yes)
      return;
  }
  QString error;
  if (!model_->deleteRuns(ids, &error))
    showError(tr("Could not delete: %1").arg(error));
}

void RunsView::showError(const QString &message) {
  error_->setText(message.isEmpty() ? QString() : tr("Run store problem: %1").arg(message));
  error_->setVisible(!message.isEmpty());
}

void RunsView::clearDetails(const QString &message) {
  shownId_.clear();
  shown_.reset();
  detailTitle_->setText(tr("No run selected"));
  settings_->setHtml(QStringLiteral("<p style='color:#777'>%1</p>").arg(message.toHtmlEscaped()));
  for (QCustomPlot *plot : plots()) {
    plot->clearGraphs();
    plot->legend->setVisible(false);
    setMessage(plot, message.isEmpty() ? QString() : tr("No run selected"));
    plot->replot(QCustomPlot::rpQueuedReplot);
  }
  {
    QSignalBlocker a(spectrumLayer_), b(spectrumKind_);
    spectrumLayer_->clear();
    spectrumKind_->clear();
  }
}

void RunsView::showRun(const QString &id) {
  std::optional<RunRecord> run = model_->loadRun(id);
  if (!run) {
    clearDetails(model_->lastError().isEmpty() ? tr("The run is no longer in the store.")
                                               : model_->lastError());
    return;
  }
  shownId_ = id;
  shown_ = std::move(run);
  const QJsonObject scheme =
      QJsonDocument::fromJson(QByteArray::fromStdString(shown_->schemeJson)).object();
  detailTitle_->setText(tr("Run %1 — %2, %3, %4")
                            .arg(id, qs(shown_->method),
                                 scheme.value(QStringLiteral("name")).toString(),
                                 QString::fromLatin1(runStatusName(shown_->status))));
  fillSettings(*shown_);
  plotLosses(*shown_);
  plotSqnr(*shown_);
  fillSpectrumChoices(*shown_);
}

void RunsView::fillSettings(const RunRecord &run) {
  QString html;
  auto section = [&html](const QString &title) {
    html += QStringLiteral("<p style='margin-top:8px; margin-bottom:2px'><b>%1</b></p>")
                .arg(title.toHtmlEscaped());
  };
  if (!run.error.empty())
    html += QStringLiteral("<p style='color:#b71c1c'><b>%1</b> %2</p>")
                .arg(run.status == RunStatus::Cancelled ? tr("Cancelled:") : tr("Error:"),
                     qs(run.error).toHtmlEscaped());

  if (run.status == RunStatus::Interrupted)
    html += QStringLiteral("<p style='color:#6a1b9a'><b>%1</b> %2</p>")
                .arg(tr("Interrupted:"),
                     tr("its process (%1) is gone. Resume goes on from the last finished block.")
                         .arg(ownerText(run))
                         .toHtmlEscaped());

  const int row = model_->rowOfRun(qs(run.id));
  QList<QPair<QString, QString>> summary{
      {tr("status"), QString::fromLatin1(runStatusName(run.status))},
      {tr("created"), model_->index(row, RunsTableModel::CreatedColumn).data().toString()},
      {tr("method"), qs(run.method)},
      {tr("model"), qs(run.model.path)},
      {tr("time"), tr("%1 s").arg(run.totalSeconds, 0, 'f', 1)},
      {tr("blocks recorded"), QString::number(run.blocks.size())},
      {tr("engine"), qs(run.engineVersion)}};
  if (const std::optional<double> bits = model_->bitsPerWeight(row))
    summary.insert(4, {tr("bits per weight (est.)"), QString::number(*bits, 'f', 3)});
  if (run.status == RunStatus::Running || run.status == RunStatus::Interrupted)
    summary.append({tr("process"), ownerText(run)});
  if (!run.exportDir.empty())
    summary.append({tr("export"), qs(run.exportDir)});
  if (!run.packedPath.empty())
    summary.append({tr("packed export"), qs(run.packedPath)});
  if (!run.ggufPath.empty())
    summary.append({tr("GGUF export"), qs(run.ggufPath)});
  if (!run.compressedTensorsDir.empty())
    summary.append({tr("compressed-tensors export"), qs(run.compressedTensorsDir)});
  html += tableHtml(summary);

  section(tr("Hyperparameters"));
  QList<QPair<QString, QString>> hyper;
  flatten(QJsonDocument::fromJson(QByteArray::fromStdString(run.hyperparametersJson)).object(), {},
          &hyper);
  html += hyper.isEmpty() ? tr("(none)") : tableHtml(hyper);

  section(tr("Scheme"));
  QList<QPair<QString, QString>> scheme;
  flatten(QJsonDocument::fromJson(QByteArray::fromStdString(run.schemeJson)).object(), {}, &scheme);
  html += tableHtml(scheme);

  if (!run.metrics.empty()) {
    section(tr("Metrics"));
    QList<QPair<QString, QString>> metrics;
    for (const auto &[name, value] : run.metrics)
      metrics.append({qs(name), QString::number(value, 'g', 6)});
    html += tableHtml(metrics);
  }
  if (!run.notes.empty()) {
    section(tr("Notes"));
    QString notes = qs(run.notes);
    if (notes.size() > 800) // a method's report can run to pages of JSON
      notes = notes.left(800) + QStringLiteral(" …");
    html += QStringLiteral("<p style='color:#444'>%1</p>").arg(notes.toHtmlEscaped());
  }
  settings_->setHtml(html);
}

void RunsView::plotLosses(const RunRecord &run) {
  QCustomPlot *plot = lossPlot_;
  plot->clearGraphs();
  int withCurve = 0;
  for (const BlockRecord &b : run.blocks)
    withCurve += b.curve.empty() ? 0 : 1;
  int n = 0;
  for (const BlockRecord &b : run.blocks) {
    if (b.curve.empty())
      continue;
    QVector<double> x, y;
    x.reserve(int(b.curve.size()));
    y.reserve(int(b.curve.size()));
    for (const LossPoint &p : b.curve)
      if (p.loss > 0 && std::isfinite(p.loss)) { // a log axis has no place for 0
        x << p.iteration;
        y << p.loss;
      }
    QCPGraph *g = plot->addGraph();
    g->setName(tr("block %1").arg(b.index));
    g->setPen(QPen(seriesColor(n++, withCurve), 1.6));
    g->setData(x, y, true);
  }
  plot->legend->setVisible(plot->graphCount() >= 2);
  plot->legend->setWrap(plot->graphCount() > 16 ? 10 : 8);
  if (plot->graphCount() == 0) {
    setMessage(plot, run.blocks.empty()
                         ? tr("%1 records no block-wise reconstruction").arg(qs(run.method))
                         : tr("No loss curves recorded for this run's blocks"));
    plot->xAxis->setRange(0, 1);
    plot->yAxis->setRange(1e-3, 1);
  } else {
    setMessage(plot, {});
    plot->rescaleAxes();
    setDecadeRange(plot->yAxis, plot->yAxis->range().lower, plot->yAxis->range().upper);
  }
  titleOf(plot)->setText(tr("Block reconstruction loss — %n block(s)", nullptr, withCurve));
  plot->replot(QCustomPlot::rpQueuedReplot);
}

void RunsView::plotSqnr(const RunRecord &run) {
  QCustomPlot *plot = sqnrPlot_;
  plot->clearGraphs();
  QStringList roles;
  int outside = 0;
  for (const LayerStats &l : run.layers) {
    if (l.block < 0)
      ++outside;
    else if (!roles.contains(qs(l.role)))
      roles << qs(l.role);
  }
  for (int i = 0; i < roles.size(); ++i) {
    QVector<double> x, y;
    for (const LayerStats &l : run.layers)
      if (l.block >= 0 && qs(l.role) == roles[i] && std::isfinite(l.sqnrDb)) {
        x << l.block;
        y << l.sqnrDb;
      }
    QCPGraph *g = plot->addGraph();
    g->setName(roles[i]);
    const QColor c = roleColor(roles[i], i);
    g->setPen(QPen(c, 1.5));
    g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, c, Qt::white, 5));
    g->setData(x, y);
  }
  plot->legend->setVisible(plot->graphCount() >= 2);
  plot->legend->setWrap(10);
  QString title = tr("Weight SQNR per layer");
  if (outside > 0)
    title += tr(" (%n layer(s) outside the blocks not shown)", nullptr, outside);
  titleOf(plot)->setText(title);
  if (plot->graphCount() == 0) {
    setMessage(plot, tr("No layer statistics recorded for this run"));
    plot->xAxis->setRange(0, 1);
    plot->yAxis->setRange(0, 1);
  } else {
    setMessage(plot, {});
    plot->rescaleAxes();
    const QCPRange x = plot->xAxis->range(), y = plot->yAxis->range();
    plot->xAxis->setRange(x.lower - 0.5, x.upper + 0.5);
    const double pad = std::max(0.5, 0.08 * y.size());
    plot->yAxis->setRange(y.lower - pad, y.upper + pad);
  }
  plot->replot(QCustomPlot::rpQueuedReplot);
}

void RunsView::fillSpectrumChoices(const RunRecord &run) {
  const QVariant keep = spectrumLayer_->currentData();
  {
    QSignalBlocker block(spectrumLayer_);
    spectrumLayer_->clear();
    std::set<std::pair<int, std::string>> seen;
    for (const SpectrumRecord &s : run.spectra)
      if (seen.insert({s.block, s.role}).second)
        spectrumLayer_->addItem(layerLabel(s.block, qs(s.role)), QVariantList{s.block, qs(s.role)});
    const int i = spectrumLayer_->findData(keep);
    spectrumLayer_->setCurrentIndex(spectrumLayer_->count() == 0 ? -1 : (i >= 0 ? i : 0));
  }
  fillSpectrumKinds();
}

void RunsView::fillSpectrumKinds() {
  // The kinds recorded for the chosen layer.
  const QString keep = spectrumKind_->currentData().toString();
  {
    QSignalBlocker block(spectrumKind_);
    spectrumKind_->clear();
    if (shown_ && spectrumLayer_->currentIndex() >= 0) {
      const QVariantList key = spectrumLayer_->currentData().toList();
      const int blockIndex = key.value(0).toInt();
      const QString role = key.value(1).toString();
      QStringList kinds;
      for (const SpectrumRecord &s : shown_->spectra)
        if (s.block == blockIndex && qs(s.role) == role && !kinds.contains(qs(s.kind)))
          kinds << qs(s.kind);
      if (kinds.size() > 1)
        spectrumKind_->addItem(tr("all recorded"), QString());
      for (const QString &k : kinds)
        spectrumKind_->addItem(kindLabel(k), k);
      const int i = spectrumKind_->findData(keep);
      spectrumKind_->setCurrentIndex(i >= 0 ? i : 0);
    }
  }
  plotSpectrum();
}

void RunsView::plotSpectrum() {
  QCustomPlot *plot = spectrumPlot_;
  plot->clearGraphs();
  QString title = tr("Singular values");
  if (shown_ && spectrumLayer_->currentIndex() >= 0) {
    const QVariantList key = spectrumLayer_->currentData().toList();
    const int block = key.value(0).toInt();
    const QString role = key.value(1).toString();
    const QString kind = spectrumKind_->currentData().toString(); // "" = all
    title = tr("Singular values — %1").arg(layerLabel(block, role));
    int i = 0;
    for (const SpectrumRecord &s : shown_->spectra) {
      if (s.block != block || qs(s.role) != role || (!kind.isEmpty() && qs(s.kind) != kind))
        continue;
      QVector<double> x, y;
      for (size_t k = 0; k < s.values.size(); ++k)
        if (s.values[k] > 0 && std::isfinite(s.values[k])) {
          x << double(k + 1);
          y << s.values[k];
        }
      QCPGraph *g = plot->addGraph();
      g->setName(kindLabel(qs(s.kind)));
      static const QColor colors[] = {QColor(0x1f, 0x5f, 0x9e), QColor(0xd9, 0x5f, 0x0e),
                                      QColor(0x2c, 0xa0, 0x2c), QColor(0x94, 0x67, 0xbd)};
      g->setPen(QPen(colors[i++ % 4], 1.8));
      g->setData(x, y, true);
    }
  }
  titleOf(plot)->setText(title);
  plot->legend->setVisible(plot->graphCount() >= 2);
  plot->legend->setWrap(4);
  if (plot->graphCount() == 0) {
    setMessage(plot, shown_ ? tr("No spectra recorded for this run") : tr("No run selected"));
    plot->xAxis->setRange(0, 1);
    plot->yAxis->setRange(1e-3, 1);
  } else {
    setMessage(plot, {});
    plot->rescaleAxes();
    setDecadeRange(plot->yAxis, plot->yAxis->range().lower, plot->yAxis->range().upper);
    const QCPRange x = plot->xAxis->range();
    plot->xAxis->setRange(0, x.upper + 1);
  }
  plot->replot(QCustomPlot::rpQueuedReplot);
}

} // namespace lrq::ui
