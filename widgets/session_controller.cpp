#include "widgets/session_controller.h"

#include <QFutureWatcher>
#include <QtConcurrent/QtConcurrentRun>

#include <spdlog/spdlog.h>

#include <mutex>
#include <optional>

#include "core/data/default_assets.h"
#include "widgets/concurrent_run.h"
#include "widgets/progress_relay.h"

namespace lrq::ui {
namespace {

struct AnalysisOutcome {
  lrq::TensorStatistics statistics;
  lrq::Histogram histogram;
  QVector<double> singularValues;
  QString error;
  bool skipped = false;
};

QString messageOf(const std::exception &e) {
  return QString::fromUtf8(e.what()).trimmed();
}

// The held-out default text is decompressed once per process.
std::string defaultEvaluationText() {
  static std::mutex mutex;
  static std::optional<std::string> text;
  std::lock_guard<std::mutex> lock(mutex);
  if (!text)
    text = lrq::defaultText().evaluation;
  return *text;
}

template <typename T, typename Done> void watch(QObject *owner, QFuture<T> future, Done done) {
  auto *watcher = new QFutureWatcher<T>(owner);
  QObject::connect(watcher, &QFutureWatcherBase::finished, owner, [watcher, done] {
    done(watcher->result());
    watcher->deleteLater();
  });
  watcher->setFuture(future);
}

} // namespace

SessionController::SessionController(QObject *parent) : QObject(parent) {
  registerEngineMetaTypes();
  statsPool_.setMaxThreadCount(1);
  svdPool_.setMaxThreadCount(1);
}

SessionController::~SessionController() {
  shutdown();
}

void SessionController::shutdown() {
  latestAnalysisTicket_ = 0;
  latestSpectrumTicket_ = 0;
  load_.shutdown();
  eval_.shutdown();
  statsPool_.waitForDone();
  svdPool_.waitForDone();
}

const lrq::ModelSummary *SessionController::summary() const {
  return session_ ? &session_->summary() : nullptr;
}

const lrq::TensorSummary *SessionController::tensor(const QString &name) const {
  if (!session_)
    return nullptr;
  const std::string key = name.toStdString();
  for (const auto &t : session_->summary().tensors)
    if (t.name == key)
      return &t;
  return nullptr;
}

// ---------------------------------------------------------------- loading

quint64 SessionController::openModel(const QString &pathOrDefault) {
  auto *relay = new ProgressRelay(this);
  const std::string path = pathOrDefault.toStdString();
  spdlog::info("opening model {}", path);
  using Session = std::shared_ptr<lrq::ModelSession>;
  BackgroundJob::Handlers<Session> handlers;
  handlers.done = [this, relay, pathOrDefault](Session session) {
    relay->deleteLater();
    adoptSession(std::move(session), pathOrDefault);
  };
  handlers.failed = [this, relay, pathOrDefault](const QString &error) {
    relay->deleteLater();
    spdlog::error("{}", error.toStdString());
    emit loadFailed(pathOrDefault, error);
  };
  handlers.cancelled = [this, relay, pathOrDefault] {
    relay->deleteLater();
    spdlog::info("loading {} cancelled", pathOrDefault.toStdString());
    emit loadCancelled(pathOrDefault);
  };
  handlers.dropped = [this, relay, pathOrDefault](quint64 job) {
    relay->deleteLater();
    spdlog::debug("dropping superseded load job {} ({})", job, pathOrDefault.toStdString());
    emit loadDropped(job);
  };
  const quint64 job = load_.start<Session>(
      [path, relay](const lrq::CancelToken &cancel) {
        return Session(lrq::ModelSession::open(path, relay, &cancel));
      },
      handlers);
  connect(relay, &ProgressRelay::progressed, this,
          [this, job](qint64 done, qint64 total, const QString &detail) {
            if (job == load_.runningJob())
              emit loadProgress(job, done, total, detail);
          });
  emit loadStarted(job, pathOrDefault);
  return job;
}

void SessionController::cancelLoad() {
  load_.cancel();
}

void SessionController::adoptSession(std::shared_ptr<lrq::ModelSession> session,
                                     const QString &source) {
  // Work on the old model is moot now; its workers keep it alive until they end.
  eval_.cancel();
  session_ = std::move(session);
  modelSource_ = source;
  ++generation_;
  analyses_.clear();
  spectra_.clear();
  pendingAnalyses_.clear();
  pendingSpectra_.clear();
  wantedAnalysis_.clear();
  wantedSpectrum_.clear();
  latestAnalysisTicket_ = 0;
  latestSpectrumTicket_ = 0;
  const auto &s = session_->summary();
  spdlog::debug("showing {} ({} blocks, {} tensors)", s.path, s.blocks.size(), s.tensors.size());
  emit modelLoaded(source);
}

// ---------------------------------------------------------------- analysis

void SessionController::requestAnalysis(const QString &tensor) {
  if (!session_)
    return;
  if (auto it = analyses_.constFind(tensor); it != analyses_.constEnd()) {
    emit analysisReady(tensor, it->statistics, it->histogram);
    return;
  }
  wantedAnalysis_ = tensor;
  if (auto it = pendingAnalyses_.constFind(tensor); it != pendingAnalyses_.constEnd()) {
    latestAnalysisTicket_ = *it; // the queued job for it runs after all
    return;
  }
  static std::atomic<quint64> tickets{0};
  const quint64 ticket = ++tickets;
  latestAnalysisTicket_ = ticket;
  pendingAnalyses_.insert(tensor, ticket);
  emit analysisStarted(tensor);

  auto session = session_;
  const quint64 generation = generation_;
  const std::string name = tensor.toStdString();
  auto future = runConcurrently(&statsPool_, [this, session, name, ticket]() {
    AnalysisOutcome out;
    if (latestAnalysisTicket_.load() != ticket) {
      out.skipped = true;
      return out;
    }
    try {
      out.statistics = session->statistics(name);
      out.histogram = session->histogram(name, kHistogramBins);
    } catch (const std::exception &e) {
      out.error = messageOf(e);
    }
    return out;
  });
  watch(this, future, [this, tensor, generation](const AnalysisOutcome &out) {
    if (generation != generation_)
      return;
    pendingAnalyses_.remove(tensor);
    if (out.skipped) {
      // Wanted again after it decided to skip: queue it afresh.
      if (tensor == wantedAnalysis_)
        requestAnalysis(tensor);
      return;
    }
    if (!out.error.isEmpty()) {
      emit analysisFailed(tensor, out.error);
      return;
    }
    analyses_.insert(tensor, Analysis{out.statistics, out.histogram});
    emit analysisReady(tensor, out.statistics, out.histogram);
  });
}

void SessionController::requestSpectrum(const QString &tensor) {
  if (!session_)
    return;
  if (auto it = spectra_.constFind(tensor); it != spectra_.constEnd()) {
    emit spectrumReady(tensor, *it);
    return;
  }
  wantedSpectrum_ = tensor;
  if (auto it = pendingSpectra_.constFind(tensor); it != pendingSpectra_.constEnd()) {
    latestSpectrumTicket_ = *it; // the queued job for it runs after all
    return;
  }
  static std::atomic<quint64> tickets{0};
  const quint64 ticket = ++tickets;
  latestSpectrumTicket_ = ticket;
  pendingSpectra_.insert(tensor, ticket);
  emit spectrumStarted(tensor);

  auto session = session_;
  const quint64 generation = generation_;
  const std::string name = tensor.toStdString();
  spdlog::debug("computing singular values of {}", name);
  auto future = runConcurrently(&svdPool_, [this, session, name, ticket]() {
    AnalysisOutcome out;
    if (latestSpectrumTicket_.load() != ticket) {
      out.skipped = true;
      return out;
    }
    try {
      const std::vector<double> values = session->singularValues(name);
      out.singularValues = QVector<double>(values.begin(), values.end());
    } catch (const std::exception &e) {
      out.error = messageOf(e);
    }
    return out;
  });
  watch(this, future, [this, tensor, generation](const AnalysisOutcome &out) {
    if (generation != generation_)
      return;
    pendingSpectra_.remove(tensor);
    if (out.skipped) {
      // Wanted again after it decided to skip: queue it afresh.
      if (tensor == wantedSpectrum_)
        requestSpectrum(tensor);
      return;
    }
    if (!out.error.isEmpty()) {
      emit spectrumFailed(tensor, out.error);
      return;
    }
    spectra_.insert(tensor, out.singularValues);
    emit spectrumReady(tensor, out.singularValues);
  });
}

// ---------------------------------------------------------------- evaluation

bool SessionController::runPerplexity(const PerplexityRequest &request) {
  if (!session_ || eval_.isRunning())
    return false;
  evalKind_ = EvalKind::Perplexity;
  auto session = session_;
  auto *relay = new ProgressRelay(this);
  const std::string textFile = request.textFile.toStdString();
  const int64_t seqLen = request.seqLen;
  const int64_t maxWindows = request.maxWindows;
  spdlog::info("perplexity: seq_len {}, max windows {}, text {}", seqLen, maxWindows,
               textFile.empty() ? std::string("default held-out") : textFile);
  BackgroundJob::Handlers<lrq::PerplexityReport> handlers;
  handlers.done = [this, relay](const lrq::PerplexityReport &report) {
    relay->deleteLater();
    spdlog::info("perplexity {:.4f} over {} tokens in {:.2f} s", report.perplexity, report.tokens,
                 report.seconds);
    emit perplexityFinished(report);
  };
  handlers.failed = [this, relay](const QString &error) {
    relay->deleteLater();
    spdlog::error("perplexity failed: {}", error.toStdString());
    emit perplexityFailed(error);
  };
  handlers.cancelled = [this, relay] {
    relay->deleteLater();
    spdlog::info("perplexity cancelled");
    emit perplexityCancelled();
  };
  handlers.dropped = [relay](quint64) { relay->deleteLater(); };
  const quint64 job = eval_.start<lrq::PerplexityReport>(
      [session, relay, textFile, seqLen, maxWindows](const lrq::CancelToken &cancel) {
        lrq::lowerComputePriority(); // the window stays responsive
        const std::string text =
            textFile.empty() ? defaultEvaluationText() : lrq::readTextFile(textFile);
        cancel.throwIfCancelled();
        return session->perplexity(text, seqLen, relay, &cancel, maxWindows);
      },
      handlers);
  connect(relay, &ProgressRelay::progressed, this,
          [this, job](qint64 done, qint64 total, const QString &detail) {
            if (job == eval_.runningJob())
              emit perplexityProgress(done, total, detail);
          });
  emit perplexityStarted();
  return true;
}

void SessionController::cancelPerplexity() {
  if (isPerplexityRunning())
    eval_.cancel();
}

bool SessionController::generate(const QString &prompt, const lrq::GenerationOptions &options) {
  if (!session_ || eval_.isRunning())
    return false;
  evalKind_ = EvalKind::Generation;
  auto session = session_;
  const std::string text = prompt.toStdString();
  const quint64 job = eval_.nextJob();
  auto onText = [this, job](const std::string &piece) {
    const QString qpiece = QString::fromStdString(piece);
    QMetaObject::invokeMethod(
        this,
        [this, job, qpiece] {
          if (job == eval_.runningJob())
            emit generationText(qpiece);
        },
        Qt::QueuedConnection);
  };
  BackgroundJob::Handlers<QString> handlers;
  handlers.done = [this](const QString &completion) { emit generationFinished(completion); };
  handlers.failed = [this](const QString &error) {
    spdlog::error("generation failed: {}", error.toStdString());
    emit generationFailed(error);
  };
  handlers.cancelled = [this] { emit generationCancelled(); };
  eval_.start<QString>(
      [session, text, options, onText](const lrq::CancelToken &cancel) {
        lrq::lowerComputePriority();
        QString completion =
            QString::fromStdString(session->generate(text, options, onText, &cancel));
        cancel.throwIfCancelled(); // stopped early: a cancel, not a result
        return completion;
      },
      handlers);
  emit generationStarted();
  return true;
}

void SessionController::cancelGeneration() {
  if (isGenerating())
    eval_.cancel();
}

} // namespace lrq::ui
