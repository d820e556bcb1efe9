// lrq-workbench: the desktop shell. Thin: parses options, applies runtime
// settings, shows the main window; --screenshot renders a demo image and quits.
#include <QApplication>
#include <QCommandLineParser>
#include <QDir>
#include <QFileInfo>
#include <QStyleFactory>
#include <QTimer>

#include <spdlog/spdlog.h>

#include <clocale>
#include <cstdio>
#include <cstring>
#include <memory>

#include "core/common/error.h"
#include "core/session/model_session.h"
#include "widgets/app_icon.h"
#include "widgets/architecture_view.h"
#include "widgets/main_window.h"
#include "widgets/session_controller.h"
#include "widgets/tensor_inspector.h"
#include "widgets/version.h"

#include "app/workbench_tour.h"

namespace {

// --screenshot needs no display: fall back to the offscreen platform when
// there is none (must happen before QApplication exists).
void preferOffscreenForScreenshots(int argc, char **argv) {
  bool screenshot = false;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--screenshot", 12) == 0)
      screenshot = true;
  if (screenshot && qEnvironmentVariableIsEmpty("QT_QPA_PLATFORM") &&
      qEnvironmentVariableIsEmpty("DISPLAY") && qEnvironmentVariableIsEmpty("WAYLAND_DISPLAY"))
    qputenv("QT_QPA_PLATFORM", "offscreen");
}

int fail(const QString &message) {
  std::fprintf(stderr, "lrq-workbench: %s\n", message.toLocal8Bit().constData());
  return 2;
}

} // namespace

int main(int argc, char **argv) {
  preferOffscreenForScreenshots(argc, argv);
  QApplication app(argc, argv);
  // QApplication took LC_ALL from the environment; printf and strtod in the
  // libraries below keep '.' as the decimal separator (as Qt's docs advise).
  std::setlocale(LC_NUMERIC, "C");
  QApplication::setOrganizationName(QStringLiteral("lrq-workbench"));
  QApplication::setApplicationName(QStringLiteral("LRQ Workbench"));
  QApplication::setApplicationVersion(lrq::ui::applicationVersion());
  QApplication::setStyle(QStyleFactory::create(QStringLiteral("Fusion")));
  QApplication::setWindowIcon(lrq::ui::appIcon());

  QCommandLineParser parser;
  parser.setApplicationDescription(
      QStringLiteral("Desktop workbench for quantizing and evaluating LLMs."));
  parser.addHelpOption();
  parser.addVersionOption();
  const QCommandLineOption threadsOption(QStringLiteral("threads"),
                                         QStringLiteral("Threads for LibTorch (0: all cores)."),
                                         QStringLiteral("N"), QStringLiteral("0"));
  const QCommandLineOption deviceOption(QStringLiteral("device"),
                                        QStringLiteral("Compute device: cpu or cuda."),
                                        QStringLiteral("cpu|cuda"), QStringLiteral("cpu"));
  const QCommandLineOption screenshotOption(
      QStringLiteral("screenshot"),
      QStringLiteral("Open the model (default if none given), wait until it is loaded and "
                     "its first linear's spectrum is shown, save the window to FILE (PNG), quit."),
      QStringLiteral("FILE"));
  const QCommandLineOption tensorOption(
      QStringLiteral("tensor"),
      QStringLiteral("Tensor to select once the model is loaded (HF name, e.g. "
                     "model.layers.0.mlp.down_proj.weight)."),
      QStringLiteral("NAME"));
  const QCommandLineOption viewOption(
      QStringLiteral("view"),
      QStringLiteral("The view to show first: model, quantize, runs, compare or learn."),
      QStringLiteral("NAME"), QStringLiteral("model"));
  const QCommandLineOption tourOption(
      QStringLiteral("tour"),
      QStringLiteral("Drive the app through its views on the default model (four short runs), "
                     "save a screenshot of each view into DIR, quit."),
      QStringLiteral("DIR"));
  parser.addOptions(
      {threadsOption, deviceOption, screenshotOption, tensorOption, viewOption, tourOption});
  parser.addPositionalArgument(QStringLiteral("model"),
                               QStringLiteral("A .gguf/.safetensors file, an HF model directory, "
                                              "or \"default\"."),
                               QStringLiteral("[model]"));
  parser.process(app);

  lrq::RuntimeOptions runtime;
  bool ok = false;
  runtime.threads = parser.value(threadsOption).toInt(&ok);
  if (!ok || runtime.threads < 0)
    return fail(QStringLiteral("--threads: expected a non-negative integer, got \"%1\"")
                    .arg(parser.value(threadsOption)));
  runtime.device = parser.value(deviceOption).toLower().toStdString();
  if (runtime.device != "cpu" && runtime.device != "cuda")
    return fail(QStringLiteral("--device: expected cpu or cuda, got \"%1\"")
                    .arg(parser.value(deviceOption)));
  try {
    lrq::applyRuntimeOptions(runtime);
  } catch (const std::exception &e) {
    return fail(QString::fromUtf8(e.what()));
  }

  const QStringList positional = parser.positionalArguments();
  if (positional.size() > 1)
    return fail(QStringLiteral("expected at most one model, got %1").arg(positional.size()));
  QString model = positional.value(0);
  if (!model.isEmpty() && model != QStringLiteral("default"))
    model = QFileInfo(model).absoluteFilePath();
  const QString screenshot = parser.value(screenshotOption);
  const QString tensor = parser.value(tensorOption);
  const QString tourDir = parser.value(tourOption);

  lrq::ui::MainWindow window;
  const QString view = parser.value(viewOption);
  if (!window.showView(view))
    return fail(QStringLiteral("--view: expected one of %1, got \"%2\"")
                    .arg(window.viewNames().join(QStringLiteral(", ")), view));
  // --screenshot and --tour keep the window fitted to the screen (Xvfb's -screen sets it).
  window.show();
  if (!tourDir.isEmpty()) {
    auto *tour = new WorkbenchTour(&window, tourDir);
    auto started = std::make_shared<bool>(false);
    QObject::connect(&window, &lrq::ui::MainWindow::modelShown, tour, [tour, started] {
      if (!*started) {
        *started = true;
        tour->start();
      }
    });
    if (model.isEmpty())
      model = QStringLiteral("default");
  }

  auto *controller = window.controller();
  QObject::connect(&window, &lrq::ui::MainWindow::modelShown, &window, [&window, tensor] {
    if (!tensor.isEmpty() && !window.architectureView()->selectTensor(tensor))
      spdlog::warn("--tensor {}: no such tensor in this model", tensor.toStdString());
  });

  if (!screenshot.isEmpty()) {
    if (model.isEmpty())
      model = QStringLiteral("default");
    auto *inspector = window.inspector();
    auto grabbed = std::make_shared<bool>(false);
    auto grabAndQuit = [&window, screenshot, grabbed] {
      if (*grabbed)
        return;
      *grabbed = true;
      // Let queued replots and layout settle before grabbing.
      QTimer::singleShot(150, &window, [&window, screenshot] {
        const bool saved = window.saveScreenshot(screenshot);
        if (saved)
          std::fprintf(stdout, "%s\n",
                       QDir::toNativeSeparators(screenshot).toLocal8Bit().constData());
        else
          std::fprintf(stderr, "lrq-workbench: %s: cannot write the image\n",
                       screenshot.toLocal8Bit().constData());
        QCoreApplication::exit(saved ? 0 : 1);
      });
    };
    // Ready when the selected tensor shows everything it can: its spectrum
    // for a matrix, its statistics otherwise.
    auto grabWhenReady = [controller, inspector, grabAndQuit] {
      const QString current = inspector->currentTensor();
      const lrq::TensorSummary *info = controller->tensor(current);
      const bool matrix = info && info->shape.size() == 2;
      if (current.isEmpty() || (matrix ? inspector->hasSpectrum() : inspector->hasAnalysis()))
        grabAndQuit();
    };
    QObject::connect(&window, &lrq::ui::MainWindow::modelShown, &window, grabWhenReady);
    QObject::connect(inspector, &lrq::ui::TensorInspector::spectrumShown, &window, grabWhenReady);
    QObject::connect(inspector, &lrq::ui::TensorInspector::analysisShown, &window, grabWhenReady);
    QObject::connect(controller, &lrq::ui::SessionController::spectrumFailed, &window, grabAndQuit);
    QObject::connect(controller, &lrq::ui::SessionController::loadFailed, &window,
                     [](const QString &, const QString &message) {
                       std::fprintf(stderr, "lrq-workbench: %s\n",
                                    message.toLocal8Bit().constData());
                       QCoreApplication::exit(1);
                     });
    QTimer::singleShot(15 * 60 * 1000, &window, [] {
      std::fprintf(stderr, "lrq-workbench: --screenshot: gave up waiting after 15 minutes\n");
      QCoreApplication::exit(1);
    });
  }

  if (!model.isEmpty())
    window.openModel(model);
  return app.exec();
}
