#pragma once
// The Quantize view: choose a method (its hyperparameters as a form generated
// from the method's metadata), a scheme (a preset or the editor, with bits per
// weight live), calibration, evaluation and outputs (a form generated from the
// request's option table), then Start, Cancel or Resume; the live monitor
// shows the run. Bad input never starts a run: problems are listed and the
// fields they concern are marked; the form keeps its values.
#include <optional>

#include <QHash>
#include <QString>
#include <QWidget>

#include "core/quant/scheme.h"
#include "core/session/quantize_request.h"

class QCheckBox;
class QComboBox;
class QFormLayout;
class QLabel;
class QLineEdit;
class QProgressBar;
class QPushButton;
class QScrollArea;
class QSpinBox;
class QTimer;

namespace lrq::ui {
class LiveLabel;

class QuantizeController;
class RunMonitor;
class SessionController;
struct MonitorEvent;

class QuantizeView : public QWidget {
  Q_OBJECT
public:
  QuantizeView(SessionController *session, QuantizeController *controller,
               QWidget *parent = nullptr);

  // What the form says, and filling the form from a request.
  lrq::QuantizeRequest request() const;
  void setRequest(const lrq::QuantizeRequest &request);
  // The scheme the editor describes (validated by the caller).
  lrq::quant::QuantScheme editedScheme() const;
  // Problems of the form as it is (empty when Start would start).
  QString problemText() const;
  // Average bits per weight of the selected linears, as shown.
  double bitsPerWeight() const { return bitsPerWeight_; }
  qint64 learnablePerBlock() const { return learnablePerBlock_; }

  RunMonitor *monitor() const { return monitor_; }
  QPushButton *startButton() const { return start_; }
  QPushButton *cancelButton() const { return cancel_; }
  QProgressBar *progressBar() const { return progress_; }
  QComboBox *methodBox() const { return method_; }
  // The editor of a request option (by key) or hyperparameter ("hyperparameters.NAME").
  QWidget *field(const QString &key) const { return fields_.value(key); }
  // Scrolls the form so the scheme editor is in view (small screens show the method first).
  void revealSchemeEditor();

public slots:
  void startRun();
  void cancelRun();
  // Resumes an interrupted run of the run store (the Runs view asks for this too).
  void resumeRun(const QString &runId, const QString &storePath);
  void chooseRunToResume();

signals:
  // Status-bar text while a run goes on; empty when idle.
  void busyChanged(bool busy, const QString &message);
  void runFinished(const QString &runId, const QString &storePath);

private:
  QWidget *buildMethodBox();
  QWidget *buildSchemeBox();
  QWidget *buildOptionBoxes();
  void rebuildHyperparameters();
  void applyPresetToForm();
  void schemePresetChosen();
  void schemeEdited();
  void loadScheme();
  void saveScheme();
  void updateLive();
  void markProblems(const std::vector<lrq::RequestProblem> &problems);
  void showRefusal();
  void setRunning(bool running);
  void onEvents(const QVector<lrq::ui::MonitorEvent> &events);
  QString schemeArgument() const; // preset name or a saved custom scheme file
  void setSchemeEditor(const lrq::quant::QuantScheme &scheme);

  SessionController *session_;
  QuantizeController *controller_;
  RunMonitor *monitor_ = nullptr;

  QComboBox *method_ = nullptr, *preset_ = nullptr;
  QLabel *methodHelp_ = nullptr, *learnable_ = nullptr;
  QFormLayout *hyperForm_ = nullptr;
  QWidget *hyperBox_ = nullptr;

  QComboBox *schemePreset_ = nullptr, *granularity_ = nullptr, *init_ = nullptr,
            *stepFormat_ = nullptr, *actMode_ = nullptr;
  QSpinBox *bits_ = nullptr, *groupSize_ = nullptr, *actBits_ = nullptr;
  QScrollArea *formScroll_ = nullptr;
  QWidget *schemeBox_ = nullptr;
  QCheckBox *symmetric_ = nullptr, *fullRange_ = nullptr, *kv8_ = nullptr;
  QLineEdit *blocks_ = nullptr, *linears_ = nullptr;
  QLabel *schemeInfo_ = nullptr;
  bool fillingScheme_ = false;
  // The fallback grid of the scheme last put in the editor (gguf-q6_k's
  // Q8_0 grid), which the form has no fields for: kept while the weight grid
  // stays k-superblock.
  std::optional<quant::GridSpec> fallbackWeight_;

  QHash<QString, QWidget *> fields_; // option key or "hyperparameters.NAME" -> editor
  QLabel *problems_ = nullptr;
  QPushButton *start_ = nullptr, *cancel_ = nullptr, *resume_ = nullptr;
  QProgressBar *progress_ = nullptr;
  LiveLabel *eta_ = nullptr;
  QTimer *liveTimer_ = nullptr;
  double bitsPerWeight_ = 0;
  qint64 learnablePerBlock_ = 0;

  // Progress of the running job.
  bool trainsBlocks_ = false;
  int blocksDone_ = 0, blockCount_ = 0, iteration_ = 0, iterations_ = 0;
  qint64 progressDone_ = 0, progressTotal_ = 0;
  qint64 startedMs_ = 0;
};

} // namespace lrq::ui
