// The desktop's quantization path on the real default model: the controller
// runs RTN and a short LRQ (2 iterations on the first 2 blocks) on the open
// model; the monitor's curves and the reported metrics equal the run store's
// record point for point; bad input never starts a run and the form keeps its
// values; screenshots of the Quantize view (also at 1280x720) are saved.
#include <QApplication>
#include <QCheckBox>
#include <QComboBox>
#include <QElapsedTimer>
#include <QFile>
#include <QFileInfo>
#include <QLineEdit>
#include <QPushButton>
#include <QSettings>
#include <QSignalSpy>
#include <QSpinBox>
#include <QTableWidget>
#include <QTemporaryDir>
#include <QTest>

#include <qcustomplot.h>

#include <cmath>

#include <unistd.h>

#include "core/quant/scheme.h"
#include "core/runs/run_store.h"
#include "test_support.h"
#include "widgets/compare_model.h"
#include "widgets/compare_view.h"
#include "widgets/main_window.h"
#include "widgets/plot_style.h"
#include "widgets/quantize_controller.h"
#include "widgets/quantize_view.h"
#include "widgets/run_monitor.h"
#include "widgets/runs_view.h"
#include "widgets/session_controller.h"
#include "widgets/table_export.h"

using namespace lrq::ui;

namespace {

constexpr int kLoadTimeoutMs = 300000;
constexpr int kRunTimeoutMs = 600000;

void setText(QWidget *w, const QString &text) {
  auto *edit = qobject_cast<QLineEdit *>(w);
  QVERIFY2(edit, "expected a line edit");
  edit->setText(text);
}

void setSpin(QWidget *w, int value) {
  auto *spin = qobject_cast<QSpinBox *>(w);
  QVERIFY2(spin, "expected a spin box");
  spin->setValue(value);
}

// The form checks itself 150 ms after an edit (a single-shot timer). qWait
// returns once its time is up without processing events again, so on a busy
// machine that wakes this thread late the check could still be pending:
// process the overdue timer too.
void waitForLiveCheck() {
  QTest::qWait(300);
  QCoreApplication::processEvents();
}

} // namespace

class TestQuantizeView : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  std::unique_ptr<MainWindow> window_;
  QString store_;

  QuantizeView *view() const { return window_->quantizeView(); }
  QuantizeController *controller() const { return window_->quantizeController(); }

  // Small settings every run here uses: seconds, not minutes.
  void smallSettings() {
    setSpin(view()->field("samples"), 2);
    setSpin(view()->field("seq_len"), 32);
    setSpin(view()->field("eval_seq_len"), 64);
    setSpin(view()->field("eval_max_windows"), 1);
    setText(view()->field("store"), store_);
    auto *spectra = qobject_cast<QCheckBox *>(view()->field("spectra"));
    QVERIFY(spectra);
    spectra->setChecked(false);
  }

  void chooseMethod(const QString &name) {
    QComboBox *box = view()->methodBox();
    const int index = box->findData(name);
    QVERIFY(index >= 0);
    box->setCurrentIndex(index);
  }

  // Runs the form as it is; returns the finished run's id.
  QString runToEnd() {
    QSignalSpy finished(controller(), &QuantizeController::finished);
    QSignalSpy failed(controller(), &QuantizeController::failed);
    waitForLiveCheck();
    if (!view()->startButton()->isEnabled()) {
      qWarning("%s", qPrintable(view()->problemText()));
      return {};
    }
    QTest::mouseClick(view()->startButton(), Qt::LeftButton);
    if (!controller()->isRunning()) {
      qWarning("not started: %s", qPrintable(view()->problemText()));
      return {};
    }
    // The UI thread stays responsive while the run goes on: measure the
    // longest gap between two timer ticks.
    QElapsedTimer clock;
    clock.start();
    qint64 last = 0, longest = 0;
    QTimer probe;
    probe.setInterval(5);
    connect(&probe, &QTimer::timeout, this, [&] {
      const qint64 now = clock.elapsed();
      longest = std::max(longest, now - last);
      last = now;
    });
    probe.start();
    const bool done =
        QTest::qWaitFor([&] { return !finished.isEmpty() || !failed.isEmpty(); }, kRunTimeoutMs);
    probe.stop();
    qInfo("longest UI-thread gap during the run: %lld ms (%lld batches)", longest,
          controller()->batchesDelivered());
    if (!done || !failed.isEmpty()) {
      qWarning("run failed: %s",
               failed.isEmpty() ? "timeout" : qPrintable(failed.first().first().toString()));
      return {};
    }
    return finished.first().first().toString();
  }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    QCoreApplication::setOrganizationName(QStringLiteral("lrq-workbench-test"));
    QCoreApplication::setApplicationName(QStringLiteral("test_quantize_view"));
    QSettings::setDefaultFormat(QSettings::IniFormat);
    QSettings::setPath(QSettings::IniFormat, QSettings::UserScope, dir_.path());
    store_ = dir_.filePath("runs.sqlite");
    lrq::test::defaultModelPath();
    window_ = std::make_unique<MainWindow>();
    window_->resize(1440, 900);
    window_->show();
    QSignalSpy loaded(window_.get(), &MainWindow::modelShown);
    window_->openDefaultModel();
    QVERIFY(loaded.wait(kLoadTimeoutMs));
    QVERIFY(window_->showView(QStringLiteral("quantize")));
  }

  void formIsGeneratedFromTheTable() {
    for (const lrq::RequestOption &o : lrq::quantizeRequestOptions()) {
      if (o.key.empty() || o.key == "model" || o.key == "hyperparameters" || o.key == "resume")
        continue;
      QVERIFY2(view()->field(QString::fromStdString(o.key)), o.key.c_str());
    }
    chooseMethod("lrq");
    for (const lrq::HyperparameterSpec &h : lrq::methodInfo("lrq").hyperparameters)
      QVERIFY2(view()->field("hyperparameters." + QString::fromStdString(h.name)), h.name.c_str());
    // The demo preset fills LRQ's demo values into the form.
    const lrq::QuantizeRequest r = view()->request();
    QCOMPARE(r.samples, int64_t(16));
    QCOMPARE(std::get<int64_t>(r.hyperparameters.at("iters")), int64_t(50));
    // LRQ at rank 0 (min/4) learns 1,333,248 parameters per block of the default model.
    waitForLiveCheck();
    QCOMPARE(view()->learnablePerBlock(), qint64(1333248));
    // W3A16-g128: 3 bits + (16 + 3) bits per 128 weights (ragged last groups count whole).
    QVERIFY2(view()->bitsPerWeight() > 3.14 && view()->bitsPerWeight() < 3.17,
             qPrintable(QString::number(view()->bitsPerWeight())));
  }

  // Every preset survives the scheme editor: chosen, shown in the form and
  // read back, it is the same scheme (full range and fallback grids included)
  // and the preset box still names it.
  void schemeEditorHoldsEveryPreset() {
    auto *box = qobject_cast<QComboBox *>(view()->field("scheme"));
    QVERIFY(box);
    for (const std::string &name : lrq::quant::presetNames()) {
      box->setCurrentText(QString::fromStdString(name));
      QCOMPARE(view()->editedScheme().toJson(), lrq::quant::presetScheme(name).toJson());
      QCOMPARE(box->currentText(), QString::fromStdString(name));
    }
    box->setCurrentText("gguf-q4_0");
    QVERIFY(view()->editedScheme().weight.fullRange);
    box->setCurrentText("W3A16-g128");
  }

  void badInputNeverStartsARun() {
    chooseMethod("lrq");
    smallSettings();
    QWidget *lr = view()->field("hyperparameters.lr");
    setText(lr, "5");
    waitForLiveCheck();
    QVERIFY(!view()->startButton()->isEnabled());
    QVERIFY2(view()->problemText().contains("lr"), qPrintable(view()->problemText()));
    QVERIFY(!lr->styleSheet().isEmpty());                          // the field is marked
    QCOMPARE(qobject_cast<QLineEdit *>(lr)->text(), QString("5")); // and keeps its value
    setText(lr, "0.003");

    setText(view()->field("calibration_text"), dir_.filePath("missing.txt"));
    waitForLiveCheck();
    QVERIFY(!view()->startButton()->isEnabled());
    QVERIFY(view()->problemText().contains("missing.txt"));
    QFile latin1(dir_.filePath("latin1.txt"));
    QVERIFY(latin1.open(QIODevice::WriteOnly));
    latin1.write("caf\xe9\n");
    latin1.close();
    setText(view()->field("calibration_text"), latin1.fileName());
    waitForLiveCheck();
    QVERIFY(view()->problemText().contains("UTF-8"));
    setText(view()->field("calibration_text"), QString());

    // A corrupt run store: refused before the run starts, with its path.
    QFile corrupt(dir_.filePath("corrupt.sqlite"));
    QVERIFY(corrupt.open(QIODevice::WriteOnly));
    corrupt.write(QByteArray(4096, 'x'));
    corrupt.close();
    setText(view()->field("store"), corrupt.fileName());
    waitForLiveCheck();
    QSignalSpy rejected(controller(), &QuantizeController::rejected);
    view()->startRun();
    QVERIFY(!controller()->isRunning());
    QCOMPARE(rejected.count(), 1);
    QVERIFY2(view()->problemText().contains("corrupt.sqlite"), qPrintable(view()->problemText()));
    setText(view()->field("store"), store_);
    waitForLiveCheck();
    QVERIFY2(view()->startButton()->isEnabled(), qPrintable(view()->problemText()));
    QVERIFY(!QFile::exists(store_)); // nothing ran
  }

  void rtnRunMatchesTheStore() {
    chooseMethod("rtn");
    smallSettings();
    const QString id = runToEnd();
    QVERIFY(!id.isEmpty());
    lrq::RunStore store = lrq::RunStore::open(store_.toStdString());
    const lrq::RunRecord record = store.getRun(id.toStdString());
    QCOMPARE(record.method, std::string("rtn"));
    // Every layer's error shown equals the store's.
    const auto &shown = view()->monitor()->layers();
    QCOMPARE(int(shown.size()), int(record.layers.size()));
    for (const lrq::LayerStats &l : record.layers) {
      const auto it = std::find_if(shown.begin(), shown.end(), [&](const RunMonitor::LayerRow &r) {
        return r.block == l.block && r.role.toStdString() == l.role;
      });
      QVERIFY(it != shown.end());
      QCOMPARE(it->mse, l.mse);
      QCOMPARE(it->sqnrDb, l.sqnrDb);
    }
    QVERIFY(record.metrics.count("perplexity"));
  }

  void lrqCurvesEqualTheStorePointForPoint() {
    chooseMethod("lrq");
    smallSettings();
    setSpin(view()->field("hyperparameters.iters"), 2);
    lrq::QuantizeRequest r = view()->request();
    QCOMPARE(std::get<int64_t>(r.hyperparameters.at("iters")), int64_t(2));
    // The first two blocks only, through the scheme editor (a custom scheme).
    QList<QLineEdit *> edits = view()->findChildren<QLineEdit *>();
    QLineEdit *blockEdit = nullptr;
    for (QLineEdit *e : edits)
      if (e->placeholderText().contains("0-3"))
        blockEdit = e;
    QVERIFY(blockEdit);
    blockEdit->setText("0-1");
    QSignalSpy finished(controller(), &QuantizeController::finished);
    const QString id = runToEnd();
    QVERIFY(!id.isEmpty());
    lrq::RunStore store = lrq::RunStore::open(store_.toStdString());
    const lrq::RunRecord record = store.getRun(id.toStdString());
    QCOMPARE(record.method, std::string("lrq"));
    QCOMPARE(int(record.blocks.size()), 2);
    RunMonitor *monitor = view()->monitor();
    for (const lrq::BlockRecord &b : record.blocks) {
      const QVector<QPointF> curve = monitor->curve(b.index);
      QCOMPARE(int(curve.size()), int(b.curve.size()));
      for (int i = 0; i < curve.size(); ++i) {
        QCOMPARE(int(curve[i].x()), b.curve[size_t(i)].iteration);
        // The store keeps float32 losses.
        QCOMPARE(float(curve[i].y()), float(b.curve[size_t(i)].loss));
      }
      QCOMPARE(monitor->blockState(b.index), RunMonitor::BlockState::Done);
      QCOMPARE(float(monitor->initialLoss(b.index)), float(b.initialLoss));
      QCOMPARE(float(monitor->finalLoss(b.index)), float(b.finalLoss));
    }
    // The metrics the view reported are the store's.
    const QVariantMap metrics = finished.first().at(1).toMap();
    for (const char *name : {"perplexity", "kl", "top1"}) {
      QVERIFY(metrics.contains(name));
      QCOMPARE(metrics.value(name).toDouble(), record.metrics.at(name));
    }
    // Every plot saves as PNG, SVG and PDF; every table copies as CSV.
    QCustomPlot *loss = monitor->plots().first();
    for (const char *suffix : {"png", "svg", "pdf"}) {
      const QString path = dir_.filePath(QStringLiteral("loss.") + suffix);
      QVERIFY2(lrq::ui::savePlot(loss, path), suffix);
      QVERIFY(QFileInfo(path).size() > 1000);
    }
    QFile svg(dir_.filePath("loss.svg"));
    QVERIFY(svg.open(QIODevice::ReadOnly));
    QVERIFY(svg.readAll().contains("<svg"));
    auto *table = monitor->findChild<QTableWidget *>();
    QVERIFY(table);
    const QStringList csv =
        lrq::ui::tableText(table->model(), true).split('\n', Qt::SkipEmptyParts);
    QCOMPARE(csv.size(), 1 + int(monitor->layers().size()));
    QCOMPARE(csv.first(), QString("block,layer,MSE,SQNR (dB)"));

    const QString out = lrq::test::outputDir();
    QVERIFY(window_->saveScreenshot(out + "/quantize_view.png"));
    window_->resize(1280, 720);
    QTest::qWait(200);
    QVERIFY(window_->saveScreenshot(out + "/quantize_view_1280x720.png"));
    window_->resize(1440, 900);
  }

  void cancelKeepsTheFormAndRecordsTheRun() {
    chooseMethod("lrq");
    smallSettings();
    setSpin(view()->field("hyperparameters.iters"), 400);
    QSignalSpy cancelled(controller(), &QuantizeController::cancelled);
    QSignalSpy events(controller(), &QuantizeController::eventsReady);
    waitForLiveCheck();
    view()->startRun();
    QVERIFY(controller()->isRunning());
    // Cancel once the first iterations arrived.
    QVERIFY(QTest::qWaitFor(
        [&] {
          for (const QList<QVariant> &args : events)
            for (const MonitorEvent &e : args.first().value<QVector<MonitorEvent>>())
              if (e.kind == MonitorEvent::Kind::Iteration)
                return true;
          return false;
        },
        kRunTimeoutMs));
    view()->cancelRun();
    QVERIFY(cancelled.wait(kRunTimeoutMs));
    QVERIFY(view()->startButton()->isEnabled());
    QCOMPARE(qobject_cast<QSpinBox *>(view()->field("hyperparameters.iters"))->value(), 400);
    lrq::RunStore store = lrq::RunStore::open(store_.toStdString());
    const std::string id = controller()->runId().toStdString();
    QVERIFY(!id.empty());
    QCOMPARE(store.getRunInfo(id).status, lrq::RunStatus::Cancelled);
  }

  // A compared run that changes in the store (here: a metric added, as an
  // evaluation finishing would) shows the change without the user asking.
  void compareFollowsTheStore() {
    window_->runsView()->setStorePath(store_);
    lrq::RunStore store = lrq::RunStore::open(store_.toStdString());
    std::vector<lrq::RunInfo> runs = store.listRuns();
    QVERIFY(runs.size() >= 2);
    const QStringList ids = {QString::fromStdString(runs[0].id),
                             QString::fromStdString(runs[1].id)};
    window_->compareView()->setRuns(store_, ids);
    QCOMPARE(int(window_->compareView()->model()->runs().size()), 2);
    auto shownMetric = [&]() -> double {
      for (const lrq::RunRecord &r : window_->compareView()->model()->runs())
        if (r.id == runs[1].id && r.metrics.count("test_metric"))
          return r.metrics.at("test_metric");
      return 0;
    };
    QCOMPARE(shownMetric(), 0.0);
    store.setMetric(runs[1].id, "test_metric", 4.25);
    QTRY_COMPARE_WITH_TIMEOUT(shownMetric(), 4.25, 10000);
  }

  // Resume (as the Runs view asks for it) refuses a run whose process is alive,
  // naming the process, and starts nothing.
  void resumeRefusesARunThatIsStillRunning() {
    lrq::RunStore store = lrq::RunStore::open(store_.toStdString());
    lrq::RunInfo info;
    info.model = {"default", "size=1;mtime=1"};
    info.method = "lrq";
    const QString id = QString::fromStdString(store.createRun(info)); // owned by this process
    view()->resumeRun(id, store_);
    QVERIFY(!controller()->isRunning());
    QVERIFY2(view()->problemText().contains(
                 QString("run %1 is still running in process %2").arg(id).arg(getpid())),
             qPrintable(view()->problemText()));
    QCOMPARE(store.getRunInfo(id.toStdString()).status, lrq::RunStatus::Running);
  }

  void cleanupTestCase() {
    window_->controller()->shutdown();
    window_.reset();
  }
};

QTEST_MAIN(TestQuantizeView)
#include "test_quantize_view.moc"
