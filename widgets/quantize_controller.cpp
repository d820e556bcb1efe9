#include "widgets/quantize_controller.h"

#include <QFileInfo>

#include <spdlog/spdlog.h>

#include "core/runs/run_store.h"

#include "widgets/progress_relay.h"
#include "widgets/session_controller.h"

namespace lrq::ui {

// The worker thread's side: an observer that appends events under a lock.
class QuantizeController::Buffer : public lrq::ProgressObserver {
public:
  Buffer() { clock_.start(); }

  QVector<MonitorEvent> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    QVector<MonitorEvent> out;
    out.swap(events_);
    lastProgress_ = -1;
    return out;
  }

  void runStarted(const std::string &runId, const std::string &storePath) override {
    MonitorEvent e = make(MonitorEvent::Kind::RunStarted);
    e.text = QString::fromStdString(runId);
    e.detail = QString::fromStdString(storePath);
    push(std::move(e));
  }
  void started(const std::string &task, int64_t total) override {
    MonitorEvent e = make(MonitorEvent::Kind::TaskStarted);
    e.text = QString::fromStdString(task);
    e.total = total;
    push(std::move(e));
  }
  void progress(int64_t done, int64_t total, const std::string &detail) override {
    MonitorEvent e = make(MonitorEvent::Kind::Progress);
    e.done = done;
    e.total = total;
    e.text = QString::fromStdString(detail);
    std::lock_guard<std::mutex> lock(mutex_);
    // Progress between two batches is merged: only the newest one matters.
    if (lastProgress_ >= 0 && lastProgress_ == events_.size() - 1)
      events_[lastProgress_] = std::move(e);
    else {
      events_.push_back(std::move(e));
      lastProgress_ = events_.size() - 1;
    }
  }
  void blockStarted(int block, int blockCount) override {
    MonitorEvent e = make(MonitorEvent::Kind::BlockStarted);
    e.block = block;
    e.total = blockCount;
    push(std::move(e));
  }
  void iterationLoss(int block, int iteration, double loss) override {
    MonitorEvent e = make(MonitorEvent::Kind::Iteration);
    e.block = block;
    e.iteration = iteration;
    e.value = loss;
    push(std::move(e));
  }
  void blockFinished(int block, double initialLoss, double finalLoss, double seconds) override {
    MonitorEvent e = make(MonitorEvent::Kind::BlockFinished);
    e.block = block;
    e.value = initialLoss;
    e.value2 = finalLoss;
    e.seconds = seconds;
    push(std::move(e));
  }
  void blockHeldOut(int block, double initialLoss, double finalLoss) override {
    MonitorEvent e = make(MonitorEvent::Kind::BlockHeldOut);
    e.block = block;
    e.value = initialLoss;
    e.value2 = finalLoss;
    push(std::move(e));
  }
  void layerFinished(int block, const std::string &role, double mse, double sqnrDb) override {
    MonitorEvent e = make(MonitorEvent::Kind::Layer);
    e.block = block;
    e.text = QString::fromStdString(role);
    e.value = mse;
    e.value2 = sqnrDb;
    push(std::move(e));
  }
  void metric(const std::string &name, double value) override {
    MonitorEvent e = make(MonitorEvent::Kind::Metric);
    e.text = QString::fromStdString(name);
    e.value = value;
    push(std::move(e));
  }
  void log(lrq::LogLevel level, const std::string &message) override {
    MonitorEvent e = make(MonitorEvent::Kind::Log);
    e.text = QString::fromStdString(message);
    e.level = int(level);
    push(std::move(e));
    logToSpdlog(level, message);
  }

private:
  MonitorEvent make(MonitorEvent::Kind kind) const {
    MonitorEvent e;
    e.kind = kind;
    e.elapsedMs = clock_.elapsed();
    return e;
  }
  void push(MonitorEvent e) {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::move(e));
  }

  std::mutex mutex_;
  QVector<MonitorEvent> events_;
  qsizetype lastProgress_ = -1;
  QElapsedTimer clock_;
};

void registerMonitorMetaTypes() {
  qRegisterMetaType<lrq::ui::MonitorEvent>();
  qRegisterMetaType<QVector<lrq::ui::MonitorEvent>>();
  qRegisterMetaType<lrq::QuantizeRequest>();
}

QuantizeController::QuantizeController(SessionController *session, QObject *parent)
    : QObject(parent), session_(session) {
  registerMonitorMetaTypes();
  drainTimer_.setInterval(kBatchIntervalMs);
  connect(&drainTimer_, &QTimer::timeout, this, &QuantizeController::drain);
}

QuantizeController::~QuantizeController() {
  job_.shutdown();
}

void QuantizeController::drain() {
  if (!buffer_)
    return;
  QVector<MonitorEvent> events = buffer_->take();
  if (events.isEmpty())
    return;
  for (const MonitorEvent &e : events)
    if (e.kind == MonitorEvent::Kind::RunStarted) {
      runId_ = e.text;
      storePath_ = e.detail;
    }
  ++batches_;
  QElapsedTimer clock;
  clock.start();
  emit eventsReady(events);
  longestBatchNs_ = std::max(longestBatchNs_, clock.nsecsElapsed());
}

bool QuantizeController::start(const lrq::QuantizeRequest &request) {
  problems_.clear();
  longestBatchNs_ = 0;
  if (!session_->hasModel()) {
    problems_.push_back({"model", "open a model first"});
    emit rejected(QStringLiteral("Open a model first."));
    return false;
  }
  if (job_.isRunning()) {
    problems_.push_back({"", "a quantization run is going; cancel it or wait for it"});
    emit rejected(QStringLiteral("A quantization run is going."));
    return false;
  }
  lrq::QuantizeRequest checked = request;
  checked.model = session_->summary()->path;
  problems_ = lrq::checkRequest(checked);
  checkStore(checked.storePath);
  if (!problems_.empty()) {
    QString message;
    for (const lrq::RequestProblem &p : problems_)
      message += (message.isEmpty() ? "" : "\n") + QString::fromStdString(p.message);
    emit rejected(message);
    return false;
  }
  return launch(checked);
}

void QuantizeController::checkStore(const std::string &path) {
  // A store the run could not record into stops it before it starts.
  const std::string store = path.empty() ? lrq::RunStore::defaultPath() : path;
  const QFileInfo info(QString::fromStdString(store));
  if (info.exists() && !info.isWritable()) {
    problems_.push_back({"store", store + ": the run store is read-only"});
    return;
  }
  try {
    lrq::RunStore::open(store);
  } catch (const std::exception &e) {
    problems_.push_back({"store", e.what()});
  }
}

bool QuantizeController::resume(const QString &runId, const QString &storePath) {
  problems_.clear();
  lrq::QuantizeRequest saved;
  try {
    saved = lrq::resumeRequest(runId.toStdString(), storePath.toStdString());
  } catch (const std::exception &e) {
    problems_.push_back({"resume", e.what()});
    emit rejected(QString::fromUtf8(e.what()));
    return false;
  }
  if (!session_->hasModel()) {
    problems_.push_back({"model", "open the run's model first: " + saved.model});
    emit rejected(QString::fromStdString("Open the run's model first: " + saved.model));
    return false;
  }
  return start(saved);
}

bool QuantizeController::launch(const lrq::QuantizeRequest &request) {
  request_ = request;
  runId_.clear();
  storePath_.clear();
  buffer_ = std::make_shared<Buffer>();
  auto buffer = buffer_;
  std::shared_ptr<const lrq::ModelSession> session = session_->session();
  BackgroundJob::Handlers<lrq::QuantizeOutcome> handlers;
  auto stop = [this] {
    drainTimer_.stop();
    drain(); // the last events arrive before the outcome
  };
  handlers.done = [this, stop](const lrq::QuantizeOutcome &outcome) {
    stop();
    QVariantMap metrics;
    for (const auto &[name, value] : outcome.metrics)
      metrics.insert(QString::fromStdString(name), value);
    runId_ = QString::fromStdString(outcome.runId);
    storePath_ = QString::fromStdString(outcome.storePath);
    emit finished(runId_, metrics, outcome.seconds);
  };
  handlers.failed = [this, stop](const QString &message) {
    stop();
    spdlog::error("quantization failed: {}", message.toStdString());
    emit failed(message);
  };
  handlers.cancelled = [this, stop] {
    stop();
    spdlog::info("quantization cancelled");
    emit cancelled();
  };
  job_.start<lrq::QuantizeOutcome>(
      [request, session, buffer](const lrq::CancelToken &cancel) {
        // The run's threads yield to the UI thread: the window stays responsive.
        lrq::lowerComputePriority();
        return lrq::runQuantizeJob(request, *session, buffer.get(), &cancel);
      },
      handlers);
  drainTimer_.start();
  spdlog::info("quantization started: {} with {} on {}", request.method, request.scheme,
               request.model);
  emit started(request);
  return true;
}

void QuantizeController::cancel() {
  job_.cancel();
}

} // namespace lrq::ui
