#pragma once
// Runs quantization jobs for the desktop on the model that is already open
// (SessionController's session: no second copy is loaded). The engine's events
// are buffered on the worker thread and handed to the UI thread in batches at
// most ~30 times a second, in order; every loss point arrives, only progress
// updates between two batches are merged.
#include <QElapsedTimer>
#include <QMetaType>
#include <QObject>
#include <QString>
#include <QTimer>
#include <QVariantMap>
#include <QVector>

#include <memory>
#include <mutex>
#include <vector>

#include "core/session/quantize_job.h"
#include "core/session/quantize_request.h"
#include "widgets/background_job.h"

namespace lrq::ui {

class SessionController;

// One engine event, as the monitor consumes it.
struct MonitorEvent {
  enum class Kind {
    RunStarted,    // text: run id, detail: store path
    TaskStarted,   // text: task name, total
    Progress,      // done, total, text: detail
    BlockStarted,  // block, total: block count
    Iteration,     // block, iteration, value: loss
    BlockFinished, // block, value: initial loss, value2: final loss, seconds
    BlockHeldOut,  // block, value: held-out initial loss, value2: held-out final loss
    Layer,         // block, text: role, value: MSE, value2: SQNR dB
    Metric,        // text: name, value
    Log,           // text: message, level
  };
  Kind kind = Kind::Log;
  int block = -1;
  int iteration = 0;
  qint64 done = 0, total = 0;
  double value = 0, value2 = 0, seconds = 0;
  int level = 0;
  QString text, detail;
  qint64 elapsedMs = 0; // since the run started, when the engine reported it
};

class QuantizeController : public QObject {
  Q_OBJECT
public:
  static constexpr int kBatchIntervalMs = 33;

  explicit QuantizeController(SessionController *session, QObject *parent = nullptr);
  ~QuantizeController() override;

  // Starts a run on the open model. Returns false without starting when no
  // model is open, a run is going, or the request has problems (problems()
  // lists them, each naming the option it is about).
  bool start(const lrq::QuantizeRequest &request);
  // Resumes an interrupted run from its checkpoint with its saved settings.
  bool resume(const QString &runId, const QString &storePath);
  void cancel();
  bool isRunning() const { return job_.isRunning(); }
  const std::vector<lrq::RequestProblem> &problems() const { return problems_; }
  const lrq::QuantizeRequest &request() const { return request_; }
  QString runId() const { return runId_; }
  QString storePath() const { return storePath_; }
  // Batches handed to the UI so far (the throttle's output, for tests).
  qint64 batchesDelivered() const { return batches_; }
  // The longest time the UI thread spent handling one batch (the views'
  // updates and replots), in milliseconds: the monitor's own share of a stall.
  double longestBatchMs() const { return double(longestBatchNs_) / 1e6; }

signals:
  void started(const lrq::QuantizeRequest &request);
  void rejected(const QString &message);
  void eventsReady(const QVector<lrq::ui::MonitorEvent> &events);
  void finished(const QString &runId, const QVariantMap &metrics, double seconds);
  void failed(const QString &message);
  void cancelled();

private:
  class Buffer;
  void drain();
  bool launch(const lrq::QuantizeRequest &request);
  void checkStore(const std::string &path);

  SessionController *session_;
  BackgroundJob job_{this, 1};
  std::shared_ptr<Buffer> buffer_;
  QTimer drainTimer_;
  std::vector<lrq::RequestProblem> problems_;
  lrq::QuantizeRequest request_;
  QString runId_, storePath_;
  qint64 batches_ = 0;
  qint64 longestBatchNs_ = 0;
};

// Registers MonitorEvent and friends for queued connections and QSignalSpy.
void registerMonitorMetaTypes();

} // namespace lrq::ui

Q_DECLARE_METATYPE(lrq::ui::MonitorEvent)
Q_DECLARE_METATYPE(QVector<lrq::ui::MonitorEvent>)
Q_DECLARE_METATYPE(lrq::QuantizeRequest)
