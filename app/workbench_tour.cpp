#include "app/workbench_tour.h"

#include <QCoreApplication>
#include <QDir>
#include <QFile>
#include <QTabWidget>
#include <QTimer>

#include <cstdio>
#include <fstream>

#include "core/data/default_assets.h"
#include "core/quant/scheme.h"
#include "core/session/quantize_request.h"
#include "widgets/compare_view.h"
#include "widgets/main_window.h"
#include "widgets/quantize_controller.h"
#include "widgets/quantize_view.h"
#include "widgets/run_monitor.h"
#include "widgets/runs_table_model.h"
#include "widgets/runs_view.h"

using lrq::ui::MainWindow;
using lrq::ui::RunMonitor;

WorkbenchTour::WorkbenchTour(MainWindow *window, const QString &dir)
    : QObject(window), window_(window), dir_(QDir(dir).absolutePath()) {
  QDir().mkpath(dir_);
  store_ = QDir(dir_).filePath(QStringLiteral("tour-runs.sqlite"));
  for (const char *suffix : {"", "-wal", "-shm"})
    QFile::remove(store_ + suffix);
  auto *controller = window_->quantizeController();
  connect(controller, &lrq::ui::QuantizeController::finished, this,
          [this](const QString &runId) { onRunFinished(runId); });
  connect(controller, &lrq::ui::QuantizeController::failed, this,
          [this](const QString &message) { fail(QStringLiteral("run failed: ") + message); });
  connect(controller, &lrq::ui::QuantizeController::rejected, this,
          [this](const QString &message) { fail(QStringLiteral("run refused: ") + message); });
  // The monitor mid-run: the first run, once block 2 has trained a while.
  connect(controller, &lrq::ui::QuantizeController::eventsReady, this, [this] {
    RunMonitor *monitor = window_->quantizeView()->monitor();
    if (!monitorShot_ && runIds_.isEmpty() &&
        monitor->blockState(2) == RunMonitor::BlockState::Training &&
        monitor->curve(2).size() >= 20) {
      monitorShot_ = true;
      shoot(QStringLiteral("quantize.png"));
    }
  });
  QTimer::singleShot(20 * 60 * 1000, this,
                     [this] { fail(QStringLiteral("gave up after 20 min")); });
}

void WorkbenchTour::start() {
  window_->runsView()->setStorePath(store_);
  window_->showView(QStringLiteral("quantize"));
  // The scheme editor holding a GGUF preset (full-range symmetric Q4_0), then the runs.
  lrq::QuantizeRequest r;
  r.method = "flexround";
  r.scheme = "gguf-q4_0";
  r.preset = "demo";
  lrq::applyPreset(r);
  window_->quantizeView()->setRequest(r);
  QTimer::singleShot(500, this, [this] {
    window_->quantizeView()->revealSchemeEditor();
    QTimer::singleShot(300, this, [this] {
      shoot(QStringLiteral("scheme.png"));
      runNext();
    });
  });
}

void WorkbenchTour::runNext() {
  const int index = int(runIds_.size());
  if (index >= methods_.size()) {
    showRuns();
    return;
  }
  // W3A16-g128 on the first four blocks: a minute a run on 2 cores.
  lrq::quant::QuantScheme scheme = lrq::quant::presetScheme("W3A16-g128");
  scheme.name = "custom";
  scheme.layers.blocks = {0, 1, 2, 3};
  const QString schemeFile = QDir(dir_).filePath(QStringLiteral("tour-scheme.json"));
  std::ofstream(schemeFile.toStdString()) << scheme.toJson(2) << "\n";
  lrq::QuantizeRequest r;
  r.method = methods_[index].toStdString();
  r.scheme = schemeFile.toStdString();
  r.preset = "demo";
  lrq::applyPreset(r);
  r.samples = 8;
  r.evalSeqLen = 256;
  r.evalMaxWindows = 4;
  r.storePath = store_.toStdString();
  window_->quantizeView()->setRequest(r);
  QTimer::singleShot(400, this, [this] { window_->quantizeView()->startRun(); });
}

void WorkbenchTour::onRunFinished(const QString &runId) {
  runIds_ << runId;
  std::printf("tour: %s run %s finished\n", qPrintable(methods_[runIds_.size() - 1]),
              qPrintable(runId));
  std::fflush(stdout);
  if (!monitorShot_ && runIds_.size() == 1) {
    monitorShot_ = true;
    shoot(QStringLiteral("quantize.png"));
  }
  QTimer::singleShot(300, this, [this] { runNext(); });
}

void WorkbenchTour::showRuns() {
  window_->showView(QStringLiteral("runs"));
  window_->runsView()->model()->refresh();
  window_->runsView()->selectRun(runIds_.first());
  QTimer::singleShot(800, this, [this] {
    shoot(QStringLiteral("runs.png"));
    showCompare();
  });
}

void WorkbenchTour::showCompare() {
  auto *compare = window_->compareView();
  compare->setRuns(store_, runIds_.mid(0, 3));
  window_->showView(QStringLiteral("compare"));
  compare->tabs()->setCurrentIndex(lrq::ui::CompareView::AccuracyTab);
  QTimer::singleShot(800, this, [this, compare] {
    shoot(QStringLiteral("compare.png"));
    compare->setSpectrumLayer(2, QStringLiteral("down_proj"));
    compare->tabs()->setCurrentIndex(lrq::ui::CompareView::SpectraTab);
    QTimer::singleShot(800, this, [this, compare] {
      shoot(QStringLiteral("compare_spectra.png"));
      compare->tabs()->setCurrentIndex(lrq::ui::CompareView::DepthTab);
      QTimer::singleShot(800, this, [this] {
        shoot(QStringLiteral("compare_depth.png"));
        showLearn();
      });
    });
  });
}

void WorkbenchTour::showLearn() {
  if (!window_->showView(QStringLiteral("learn"))) {
    QCoreApplication::exit(0);
    return;
  }
  QTimer::singleShot(6000, this, [this] {
    shoot(QStringLiteral("learn.png"));
    QCoreApplication::exit(0);
  });
}

void WorkbenchTour::shoot(const QString &name) {
  const QString path = QDir(dir_).filePath(name);
  if (!window_->saveScreenshot(path)) {
    fail(path + QStringLiteral(": cannot write the image"));
    return;
  }
  std::printf("%s\n", qPrintable(path));
  std::fflush(stdout);
}

void WorkbenchTour::fail(const QString &message) {
  std::fprintf(stderr, "lrq-workbench --tour: %s\n", qPrintable(message));
  QCoreApplication::exit(1);
}
