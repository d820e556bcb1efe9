#pragma once
// The desktop shell: architecture tree (left), tensor inspector (centre),
// perplexity and generation (right), log (bottom). Everything the engine
// does runs in SessionController's workers; this window only wires views.
#include <QMainWindow>
#include <QStringList>

#include <memory>

class QLabel;
class QMenu;
class QProgressBar;
class QTabWidget;
class QToolButton;

namespace lrq {
struct QuantizeRequest;
} // namespace lrq

namespace lrq::ui {
class LiveLabel;

class ArchitectureView;
class GenerationPanel;
class LogPanel;
class PerplexityPanel;
class QuantizeController;
class QuantizeView;
class RunsView;
class CompareView;
class LearnView;
class QtSignalSink;
class SessionController;
class TensorInspector;

class MainWindow : public QMainWindow {
  Q_OBJECT
public:
  static constexpr int kMaxRecentFiles = 8;

  explicit MainWindow(QWidget *parent = nullptr);
  ~MainWindow() override;

  SessionController *controller() const { return controller_; }
  ArchitectureView *architectureView() const { return architecture_; }
  TensorInspector *inspector() const { return inspector_; }
  PerplexityPanel *perplexityPanel() const { return perplexity_; }
  GenerationPanel *generationPanel() const { return generation_; }
  LogPanel *logPanel() const { return log_; }
  QuantizeController *quantizeController() const { return quantizeController_; }
  QuantizeView *quantizeView() const { return quantizeView_; }
  RunsView *runsView() const { return runs_; }
  CompareView *compareView() const { return compare_; }
  LearnView *learnView() const { return learn_; }
  // Saves the comparison shown as a self-contained HTML page (table and plots).
  bool saveComparisonReport(const QString &path);
  QTabWidget *views() const { return tabs_; }
  // Shows a main view by name: "model", "quantize", "runs", "compare", "learn".
  bool showView(const QString &name);
  QStringList viewNames() const;

  QString lastError() const { return lastError_; }
  QStringList recentFiles() const;
  bool saveScreenshot(const QString &path);
  void saveWindowState();

public slots:
  // A .gguf/.safetensors file, an HF directory, or "default".
  void openModel(const QString &pathOrDefault);
  void openDefaultModel();

signals:
  // The model is loaded and shown in the tree.
  void modelShown(const QString &path);

protected:
  void closeEvent(QCloseEvent *event) override;
  void dragEnterEvent(QDragEnterEvent *event) override;
  void dropEvent(QDropEvent *event) override;

private:
  void createMenus();
  void createStatusBar();
  void restoreWindowState();
  void rebuildRecentMenu();
  void addRecentFile(const QString &path);
  void onModelLoaded(const QString &path);
  void onLoadFailed(const QString &path, const QString &message);
  void showError(const QString &title, const QString &message);
  void setBusy(const QString &message, bool busy);
  void showAbout();
  void fitToScreen();
  void exportRun(const QString &runId);
  void exportRunGguf(const QString &runId);
  // The request that reproduces a run, when its model is the open one (else an error box).
  bool requestToExport(const QString &runId, lrq::QuantizeRequest *request);
  QString lastDirectory() const;
  void rememberDirectory(const QString &path);

  SessionController *controller_ = nullptr;
  ArchitectureView *architecture_ = nullptr;
  TensorInspector *inspector_ = nullptr;
  QTabWidget *tabs_ = nullptr;
  bool ggufExportPending_ = false; // a GGUF export run is going: its failure gets a box
  QuantizeController *quantizeController_ = nullptr;
  QuantizeView *quantizeView_ = nullptr;
  RunsView *runs_ = nullptr;
  CompareView *compare_ = nullptr;
  LearnView *learn_ = nullptr;
  LiveLabel *runLabel_ = nullptr;
  PerplexityPanel *perplexity_ = nullptr;
  GenerationPanel *generation_ = nullptr;
  LogPanel *log_ = nullptr;
  QMenu *recentMenu_ = nullptr;
  QLabel *statusLabel_ = nullptr;
  QLabel *runtimeLabel_ = nullptr;
  QProgressBar *loadProgress_ = nullptr;
  QToolButton *cancelLoad_ = nullptr;
  std::shared_ptr<QtSignalSink> logSink_;
  QString lastError_;
};

} // namespace lrq::ui
