// The desktop's responsiveness and memory during a quantization run on the
// default model: the real main window quantizes with the Quantize view while a
// 1 ms timer on the UI thread measures how late the event loop serves it. Prints
// the longest stall, percentiles, the number of stalls over 16 ms (one frame at
// 60 Hz) and the process's peak RSS against the model's float32 size.
// Usage: bench_ui_latency [--method lrq] [--scheme W3A16-g128] [--blocks N]
//                         [--iters N] [--threads N] [--eval 0|1] [--spectra 0|1]
// Defaults: LRQ, demo preset, W3A16-g128, every block (the demo run).
#include <QApplication>
#include <QElapsedTimer>
#include <QSettings>
#include <QTemporaryDir>
#include <QTimer>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/common/memory.h"
#include "core/quant/scheme.h"
#include "core/session/model_session.h"
#include "core/session/quantize_request.h"
#include "widgets/main_window.h"
#include "widgets/quantize_controller.h"
#include "widgets/quantize_view.h"
#include "widgets/run_monitor.h"

#include "widgets/session_controller.h"
#include <qcustomplot.h>

namespace {

// Resident set now (VmRSS), MiB.
double rssMiB() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      double kb = 0;
      status >> kb;
      return kb / 1024.0;
    }
    std::getline(status, key);
  }
  return 0;
}

// Times every top-level event delivery on the UI thread, so that a stall can
// be told apart: the UI thread busy with one long event (named here), or the
// thread waiting for a CPU (no long event around the stall).
class TimedApplication : public QApplication {
public:
  using QApplication::QApplication;
  struct Slow {
    double atSeconds = 0, ms = 0;
    std::string what;
  };
  std::vector<Slow> slow;
  QElapsedTimer clock;

  bool notify(QObject *receiver, QEvent *event) override {
    if (depth_ > 0 || !clock.isValid())
      return QApplication::notify(receiver, event);
    const qint64 start = clock.nsecsElapsed();
    ++depth_;
    const bool result = QApplication::notify(receiver, event);
    --depth_;
    const double ms = double(clock.nsecsElapsed() - start) / 1e6;
    if (ms > 8.0)
      slow.push_back({double(start) / 1e9, ms, describe(receiver, event)});
    return result;
  }

private:
  int depth_ = 0;

  // "Class 'name' in Parent, event N".
  static std::string describe(QObject *receiver, QEvent *event) {
    std::string text = receiver->metaObject()->className();
    if (!receiver->objectName().isEmpty())
      text += " '" + receiver->objectName().toStdString() + "'";
    if (QObject *parent = receiver->parent()) {
      text += std::string(" in ") + parent->metaObject()->className();
      if (!parent->objectName().isEmpty())
        text += " '" + parent->objectName().toStdString() + "'";
    }
    return text + ", event " + std::to_string(int(event->type()));
  }
};

// The plot's title text, if it has one.
QString plotTitle(QCustomPlot *plot) {
  for (int i = 0; i < plot->plotLayout()->elementCount(); ++i)
    if (auto *title = qobject_cast<QCPTextElement *>(plot->plotLayout()->elementAt(i)))
      return title->text();
  return QStringLiteral("(untitled)");
}

} // namespace

int main(int argc, char **argv) {
  std::string method = "lrq", scheme = "W3A16-g128";
  int blocks = 0, iters = 0, threads = 0;
  bool evaluate = true, spectra = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--method"))
      method = argv[i + 1];
    else if (!std::strcmp(argv[i], "--scheme"))
      scheme = argv[i + 1];
    else if (!std::strcmp(argv[i], "--blocks"))
      blocks = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--iters"))
      iters = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads"))
      threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--eval"))
      evaluate = std::atoi(argv[i + 1]) != 0;
    else if (!std::strcmp(argv[i], "--spectra"))
      spectra = std::atoi(argv[i + 1]) != 0;
  }
  if (qEnvironmentVariableIsEmpty("QT_QPA_PLATFORM") && qEnvironmentVariableIsEmpty("DISPLAY"))
    qputenv("QT_QPA_PLATFORM", "offscreen");
  TimedApplication app(argc, argv);
  QTemporaryDir dir;
  QCoreApplication::setOrganizationName(QStringLiteral("lrq-workbench-bench"));
  QSettings::setDefaultFormat(QSettings::IniFormat);
  QSettings::setPath(QSettings::IniFormat, QSettings::UserScope, dir.path());
  lrq::RuntimeOptions runtime;
  runtime.threads = threads;
  lrq::applyRuntimeOptions(runtime);

  lrq::ui::MainWindow window;
  window.resize(1440, 900);
  window.show();
  window.showView(QStringLiteral("quantize"));

  QElapsedTimer clock;
  std::vector<double> gaps;
  std::vector<std::pair<double, double>> stalls; // (seconds into the run, ms)
  qint64 last = -1;
  QTimer probe;
  probe.setTimerType(Qt::PreciseTimer);
  probe.setInterval(1);
  QObject::connect(&probe, &QTimer::timeout, [&] {
    const qint64 now = clock.nsecsElapsed();
    if (last >= 0) {
      gaps.push_back(double(now - last) / 1e6);
      if (gaps.back() > 16.0)
        stalls.push_back({double(now) / 1e9, gaps.back()});
    }
    last = now;
  });
  // RSS over the run, every 250 ms: where the peak happens.
  std::vector<std::pair<double, double>> rssTrace; // (seconds into the run, MiB)
  QTimer rssProbe;
  rssProbe.setInterval(250);
  QObject::connect(&rssProbe, &QTimer::timeout, [&] {
    rssTrace.push_back({double(clock.elapsed()) / 1000.0, rssMiB()});
  });
  double modelMiB = 0, loadedRss = 0, loadedPeak = 0;
  QObject::connect(&window, &lrq::ui::MainWindow::modelShown, [&] {
    const lrq::ModelSummary *s = window.controller()->summary();
    modelMiB = double(s->parameters) * 4.0 / (1024.0 * 1024.0);
    loadedRss = rssMiB();
    loadedPeak = lrq::peakRssMiB();
    lrq::QuantizeRequest r;
    r.method = method;
    r.preset = "demo";
    lrq::quant::QuantScheme sch = lrq::quant::presetScheme(scheme);
    if (blocks > 0) {
      sch.name = "custom";
      for (int b = 0; b < blocks; ++b)
        sch.layers.blocks.push_back(b);
    }
    const std::string schemeFile = dir.filePath("scheme.json").toStdString();
    std::ofstream(schemeFile) << sch.toJson() << "\n";
    r.scheme = schemeFile;
    lrq::applyPreset(r);
    if (iters > 0)
      r.hyperparameters["iters"] = int64_t(iters);
    r.evalMaxWindows = 8;
    r.spectra = spectra;
    r.evaluate = evaluate;
    r.storePath = dir.filePath("runs.sqlite").toStdString();
    window.quantizeView()->setRequest(r);
    QTimer::singleShot(300, [&] {
      clock.start();
      app.clock.start();
      probe.start();
      rssProbe.start();
      window.quantizeView()->startRun();
    });
  });
  auto report = [&](const char *outcome) {
    probe.stop();
    std::sort(gaps.begin(), gaps.end());
    auto pct = [&](double p) {
      return gaps.empty() ? 0.0 : gaps[size_t(p * double(gaps.size() - 1))];
    };
    const size_t over =
        size_t(std::count_if(gaps.begin(), gaps.end(), [](double g) { return g > 16.0; }));
    std::printf("run %s: %s, %s, %.1f s\n", outcome, method.c_str(), scheme.c_str(),
                double(clock.elapsed()) / 1000.0);
    std::printf("UI thread, 1 ms probe: %zu ticks, longest stall %.1f ms, p99 %.2f ms, "
                "p99.9 %.2f ms, stalls > 16 ms: %zu\n",
                gaps.size(), gaps.empty() ? 0.0 : gaps.back(), pct(0.99), pct(0.999), over);
    std::printf("longest batch of monitor updates on the UI thread: %.1f ms (%lld batches)\n",
                window.quantizeController()->longestBatchMs(),
                window.quantizeController()->batchesDelivered());
    for (size_t i = 0; i < stalls.size() && i < 40; ++i)
      std::printf("  stall at %.2f s: %.1f ms\n", stalls[i].first, stalls[i].second);
    std::printf("UI-thread event deliveries over 8 ms: %zu\n", app.slow.size());
    for (size_t i = 0; i < app.slow.size() && i < 40; ++i)
      std::printf("  event at %.2f s: %.1f ms (%s)\n", app.slow[i].atSeconds, app.slow[i].ms,
                  app.slow[i].what.c_str());
    // What one full redraw of each monitor plot costs (the live view redraws them).
    for (QCustomPlot *plot : window.quantizeView()->monitor()->plots()) {
      QElapsedTimer t;
      t.start();
      for (int i = 0; i < 5; ++i)
        plot->replot(QCustomPlot::rpImmediateRefresh);
      std::printf("  full redraw of '%s': %.1f ms (%d graphs)\n", qPrintable(plotTitle(plot)),
                  double(t.nsecsElapsed()) / 5e6, plot->graphCount());
    }
    rssProbe.stop();
    if (!rssTrace.empty()) {
      const auto top = std::max_element(rssTrace.begin(), rssTrace.end(),
                                        [](auto &x, auto &y) { return x.second < y.second; });
      std::printf("RSS trace (every 250 ms): highest %.0f MiB at %.1f s; by tenths of the run:",
                  top->second, top->first);
      for (int i = 0; i < 10; ++i)
        std::printf(" %.0f", rssTrace[rssTrace.size() * size_t(i) / 10].second);
      std::printf(" %.0f MiB\n", rssTrace.back().second);
    }
    std::printf("RSS with the model open %.0f MiB (peak while loading %.0f MiB); peak RSS over "
                "the run %.0f MiB; model float32 %.0f MiB (2x = %.0f MiB)\n",
                loadedRss, loadedPeak, lrq::peakRssMiB(), modelMiB, 2 * modelMiB);
    QCoreApplication::exit(0);
  };
  QObject::connect(window.quantizeController(), &lrq::ui::QuantizeController::finished,
                   [&] { report("finished"); });
  QObject::connect(window.quantizeController(), &lrq::ui::QuantizeController::failed,
                   [&](const QString &m) {
                     std::fprintf(stderr, "run failed: %s\n", qPrintable(m));
                     QCoreApplication::exit(1);
                   });
  window.openDefaultModel();
  return app.exec();
}
