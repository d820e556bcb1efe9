// The Learn view offscreen: the synthetic layer's lesson appears, slider
// changes are computed on a worker and only the latest one is shown, the
// FlexRound vs LRQ fit runs and cancels, a model layer loads; screenshots at
// 1280x720 in $LRQ_TEST_OUTPUT_DIR.
#include <QApplication>
#include <QElapsedTimer>
#include <QSignalSpy>
#include <QTabWidget>
#include <QTest>

#include <qcustomplot.h>

#include "test_support.h"
#include "widgets/learn_view.h"

using lrq::ui::LearnView;

namespace {

constexpr int kTimeoutMs = 120000;

bool waitGrid(QSignalSpy &spy, int timeoutMs = kTimeoutMs) {
  return spy.wait(timeoutMs) || spy.count() > 0;
}

void save(LearnView &view, const QString &name) {
  for (QCustomPlot *p : view.plots())
    p->replot();
  QApplication::processEvents();
  const QString path = lrq::test::outputDir() + QLatin1Char('/') + name;
  QVERIFY(view.grab().save(path));
  qInfo().noquote() << "screenshot:" << path;
}

} // namespace

class TestLearnView : public QObject {
  Q_OBJECT

private slots:
  void syntheticLesson() {
    LearnView view;
    view.resize(1280, 720);
    view.show();
    QSignalSpy shown(&view, &LearnView::gridShown);
    QVERIFY(waitGrid(shown));
    QVERIFY(view.layer());
    QVERIFY(QString::fromStdString(view.layer()->name).startsWith("synthetic"));
    const lrq::lesson::GridLessonResult *r = view.gridResult();
    QVERIFY(r);
    QCOMPARE(r->rows, int64_t(1536));
    QCOMPARE(r->cols, int64_t(576));
    const double err4 = r->relativeError;
    QVERIFY(view.figuresText().contains("SQNR"));
    QCOMPARE(view.plots().size(), 15);
    for (QCustomPlot *p : view.plots()) {
      QVERIFY(!p->xAxis->label().isEmpty());
      QVERIFY(!p->yAxis->label().isEmpty());
    }

    // Lower bits: bigger error.
    shown.clear();
    QElapsedTimer one;
    one.start();
    view.setBits(2);
    QVERIFY(waitGrid(shown));
    const qint64 oneMs = one.elapsed(); // one change, computed and shown
    QVERIFY(view.gridResult()->relativeError > 2 * err4);

    // A burst of changes: the UI thread is not blocked (each setter returns at
    // once) and the view ends on the last settings.
    shown.clear();
    QElapsedTimer t;
    t.start();
    const int before = view.gridComputations();
    for (int b = 2; b <= 8; ++b) {
      view.setBits(b);
      view.setGroupSize(b % 2 ? 32 : 0);
    }
    view.setBits(3);
    view.setGroupSize(32);
    view.setClipRatio(0.9);
    // Setters that computed in place would take 17 computations; on a loaded
    // machine even queuing them can take a while, so the bound scales with one
    // computation's wall time measured above.
    QVERIFY2(t.elapsed() < std::max<qint64>(500, 3 * oneMs),
             qPrintable(QString("%1 ms (one change: %2 ms)").arg(t.elapsed()).arg(oneMs)));
    while (view.gridResult() == nullptr || view.gridResult()->grid.find("W3") != 0 ||
           view.gridResult()->grid.find("g32") == std::string::npos ||
           view.gridResult()->grid.find("0.90") == std::string::npos)
      QVERIFY(shown.wait(kTimeoutMs));
    const int computed = view.gridComputations() - before;
    qInfo("burst of 17 changes: %d computations", computed);
    QVERIFY(computed < 17); // coalesced, stale requests dropped

    // Groups help at 3 bits.
    const double g32 = view.gridResult()->relativeError;
    view.showLesson(1);
    save(view, QStringLiteral("learn_view_g32.png"));
    shown.clear();
    view.setGroupSize(0);
    view.setClipRatio(1.0);
    while (view.gridResult()->grid.find("per-channel") == std::string::npos ||
           view.gridResult()->grid.find("1.00") == std::string::npos)
      QVERIFY(shown.wait(kTimeoutMs));
    QVERIFY(view.gridResult()->relativeError > g32);

    view.setBits(4);
    view.setRank(32);
    QVERIFY(shown.wait(kTimeoutMs));
    view.showLesson(2);
    save(view, QStringLiteral("learn_view.png"));

    // The fit: cancel one, then run a short one to the end.
    QSignalSpy fitDone(&view, &LearnView::fitFinished);
    view.setFitSteps(2000);
    view.runFit();
    QVERIFY(view.fitRunning());
    QTest::qWait(300);
    view.cancelFit();
    QVERIFY(fitDone.wait(kTimeoutMs));
    QCOMPARE(fitDone.takeFirst().at(0).toBool(), false);
    QVERIFY(!view.fitResult());

    // Activations and SmoothQuant: shown for the synthetic layer; α moves them.
    QSignalSpy actShown(&view, &LearnView::activationsShown);
    if (!view.activationResult())
      QVERIFY(actShown.wait(kTimeoutMs));
    const lrq::lesson::ActivationLessonResult *a = view.activationResult();
    QVERIFY(a);
    QVERIFY(a->actOnlySmoothed.back() < a->actOnly.back());
    actShown.clear();
    view.setAlpha(0.8);
    QVERIFY(actShown.wait(kTimeoutMs));
    view.showLesson(5);
    QCOMPARE(view.findChild<QTabWidget *>()->currentIndex(), 2);
    save(view, QStringLiteral("learn_view_activations.png"));

    view.setFitSteps(60);
    view.runFit();
    QVERIFY(fitDone.wait(kTimeoutMs));
    QCOMPARE(fitDone.takeFirst().at(0).toBool(), true);
    const lrq::lesson::FitLessonResult *f = view.fitResult();
    QVERIFY(f);
    QCOMPARE(f->lossFlexRound.size(), size_t(61));
    QVERIFY(f->lossFlexRound.back() < f->rtnLoss);
    view.showLesson(4);
    save(view, QStringLiteral("learn_view_fit.png"));

    // "Set up this lesson": lesson 2 starts from 3 bits per channel.
    shown.clear();
    view.setUpLesson(1);
    QCOMPARE(view.findChild<QTabWidget *>()->currentIndex(), 0);
    while (view.gridResult()->grid.find("W3 asym per-channel") != 0)
      QVERIFY(shown.wait(kTimeoutMs));
  }

  void modelLayer() {
    LearnView view;
    view.resize(1280, 720);
    view.show();
    QSignalSpy shown(&view, &LearnView::gridShown);
    QVERIFY(shown.wait(kTimeoutMs));
    view.setModelPath(QString::fromStdString(lrq::test::defaultModelPath()));
    QSignalSpy layerShown(&view, &LearnView::layerShown);
    shown.clear();
    // Quick changes while the model opens: one opening, only the last layer shown.
    view.showModelLayer(3, QStringLiteral("q_proj"));
    view.showModelLayer(1, QStringLiteral("up_proj"));
    view.showModelLayer(0, QStringLiteral("down_proj"));
    QVERIFY(layerShown.wait(kTimeoutMs));
    QTest::qWait(200);
    QCOMPARE(layerShown.count(), 1);
    QCOMPARE(layerShown.takeFirst().at(0).toString(),
             QStringLiteral("model.layers.0.mlp.down_proj"));
    while (shown.isEmpty())
      QVERIFY(shown.wait(kTimeoutMs));
    QCOMPARE(view.gridResult()->rows, int64_t(576));
    QCOMPARE(view.gridResult()->cols, int64_t(1536));
    QVERIFY(view.gridResult()->activationScaled);
    QVERIFY(view.statusText().contains("down_proj"));
    view.showLesson(2);
    save(view, QStringLiteral("learn_view_model.png"));

    // LRQ vs FlexRound on the real layer and its captured inputs.
    QSignalSpy fitDone(&view, &LearnView::fitFinished);
    view.setBits(3);
    view.setFitSteps(100);
    view.runFit();
    QVERIFY(fitDone.wait(kTimeoutMs));
    QCOMPARE(fitDone.takeFirst().at(0).toBool(), true);
    const lrq::lesson::FitLessonResult *f = view.fitResult();
    QVERIFY(f->lossFlexRound.back() < 0.8 * f->rtnLoss);
    QVERIFY(f->lossLrq.back() < 0.9 * f->rtnLoss);
    QVERIFY(f->heldOutTokens > 0);
    qInfo("down_proj 0 W3, 100 steps: training loss FlexRound %.1f %%, LRQ %.1f %% of RTN; "
          "held-out %.1f %% / %.1f %%; %.1f s",
          100 * f->lossFlexRound.back() / f->rtnLoss, 100 * f->lossLrq.back() / f->rtnLoss,
          100 * f->heldOutFlexRound.back() / f->rtnHeldOutLoss,
          100 * f->heldOutLrq.back() / f->rtnHeldOutLoss, f->seconds);
    view.showLesson(4);
    save(view, QStringLiteral("learn_view_model_fit.png"));
  }
};

QTEST_MAIN(TestLearnView)
#include "test_learn_view.moc"
