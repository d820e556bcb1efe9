#include "widgets/session_controller.h"

#include <QFutureWatcher>
#include <QtConcurrent/QtConcurrentRun>

#include <spdlog/spdlog.h>

#include <mutex>
#include <optional>

#include "core/data/default_assets.h"
#include "widgets/progress_relay.h"

namespace lrq::ui {
namespace {

struct LoadOutcome {
  std::shared_ptr<lrq::ModelSession> session;
  QString error;
  bool cancelled = false;
};

struct AnalysisOutcome {
  lrq::TensorStatistics statistics;
  lrq::Histogram histogram;
  QVector<double> singularValues;
  QString error;
  bool skipped = false;
};

struct EvalOutcome {
  lrq::PerplexityReport report;
  QString text;
  QString error;
  bool cancelled = false;
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
  // Two loads may overlap briefly (a superseded one winding down).
  loadPool_.setMaxThreadCount(2);
  statsPool_.setMaxThreadCount(1);
  svdPool_.setMaxThreadCount(1);
  evalPool_.setMaxThreadCount(1);
}

SessionController::~SessionController() {
  shutdown();
}

void SessionController::shutdown() {
  if (loadCancel_)
    loadCancel_->cancel();
  if (evalCancel_)
    evalCancel_->cancel();
  latestAnalysisTicket_ = 0;
  latestSpectrumTicket_ = 0;
  loadPool_.waitForDone();
  statsPool_.waitForDone();
  svdPool_.waitForDone();
  evalPool_.waitForDone();
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
  const quint64 job = ++lastLoadJob_;
  if (loadCancel_)
    loadCancel_->cancel(); // the superseded load may stop early; its result is dropped anyway
  auto cancel = std::make_shared<lrq::CancelToken>();
  loadCancel_ = cancel;
  loadingJob_ = job;

  auto *relay = new ProgressRelay(this);
  connect(relay, &ProgressRelay::progressed, this,
          [this, job](qint64 done, qint64 total, const QString &detail) {
            if (job == lastLoadJob_)
              emit loadProgress(job, done, total, detail);
          });

  const std::string path = pathOrDefault.toStdString();
  spdlog::info("opening model {}", path);
  auto future = QtConcurrent::run(&loadPool_, [path, relay, cancel]() {
    LoadOutcome out;
    try {
      out.session = lrq::ModelSession::open(path, relay, cancel.get());
    } catch (const lrq::Cancelled &) {
      out.cancelled = true;
    } catch (const std::exception &e) {
      out.error = messageOf(e);
    }
    return out;
  });
  watch(this, future, [this, job, relay, pathOrDefault](const LoadOutcome &out) {
    relay->deleteLater();
    if (job != lastLoadJob_) {
      spdlog::debug("dropping superseded load job {} ({})", job, pathOrDefault.toStdString());
      emit loadDropped(job);
      return;
    }
    loadingJob_ = 0;
    if (out.cancelled) {
      spdlog::info("loading {} cancelled", pathOrDefault.toStdString());
      emit loadCancelled(pathOrDefault);
    } else if (!out.session) {
      spdlog::error("{}", out.error.toStdString());
      emit loadFailed(pathOrDefault, out.error);
    } else {
      adoptSession(out.session, pathOrDefault);
    }
  });
  emit loadStarted(job, pathOrDefault);
  return job;
}

void SessionController::cancelLoad() {
  if (loadingJob_ != 0 && loadCancel_)
    loadCancel_->cancel();
}

void SessionController::adoptSession(std::shared_ptr<lrq::ModelSession> session,
                                     const QString &source) {
  // Work on the old model is moot now; its workers keep it alive until they end.
  if (evalCancel_)
    evalCancel_->cancel();
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
  auto future = QtConcurrent::run(&statsPool_, [this, session, name, ticket]() {
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
  auto future = QtConcurrent::run(&svdPool_, [this, session, name, ticket]() {
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
  if (!session_ || perplexityJob_ != 0 || generationJob_ != 0)
    return false;
  const quint64 job = ++lastEvalJob_;
  perplexityJob_ = job;
  evalCancel_ = std::make_shared<lrq::CancelToken>();
  auto cancel = evalCancel_;
  auto session = session_;

  auto *relay = new ProgressRelay(this);
  connect(relay, &ProgressRelay::progressed, this,
          [this, job](qint64 done, qint64 total, const QString &detail) {
            if (job == perplexityJob_)
              emit perplexityProgress(done, total, detail);
          });

  const std::string textFile = request.textFile.toStdString();
  const int64_t seqLen = request.seqLen;
  const int64_t maxWindows = request.maxWindows;
  spdlog::info("perplexity: seq_len {}, max windows {}, text {}", seqLen, maxWindows,
               textFile.empty() ? std::string("default held-out") : textFile);
  auto future =
      QtConcurrent::run(&evalPool_, [session, relay, cancel, textFile, seqLen, maxWindows]() {
        EvalOutcome out;
        try {
          const std::string text =
              textFile.empty() ? defaultEvaluationText() : lrq::readTextFile(textFile);
          cancel->throwIfCancelled();
          out.report = session->perplexity(text, seqLen, relay, cancel.get(), maxWindows);
        } catch (const lrq::Cancelled &) {
          out.cancelled = true;
        } catch (const std::exception &e) {
          out.error = messageOf(e);
        }
        return out;
      });
  watch(this, future, [this, job, relay](const EvalOutcome &out) {
    relay->deleteLater();
    if (job != perplexityJob_)
      return;
    perplexityJob_ = 0;
    if (out.cancelled) {
      spdlog::info("perplexity cancelled");
      emit perplexityCancelled();
    } else if (!out.error.isEmpty()) {
      spdlog::error("perplexity failed: {}", out.error.toStdString());
      emit perplexityFailed(out.error);
    } else {
      spdlog::info("perplexity {:.4f} over {} tokens in {:.2f} s", out.report.perplexity,
                   out.report.tokens, out.report.seconds);
      emit perplexityFinished(out.report);
    }
  });
  emit perplexityStarted();
  return true;
}

void SessionController::cancelPerplexity() {
  if (perplexityJob_ != 0 && evalCancel_)
    evalCancel_->cancel();
}

bool SessionController::generate(const QString &prompt, const lrq::GenerationOptions &options) {
  if (!session_ || perplexityJob_ != 0 || generationJob_ != 0)
    return false;
  const quint64 job = ++lastEvalJob_;
  generationJob_ = job;
  evalCancel_ = std::make_shared<lrq::CancelToken>();
  auto cancel = evalCancel_;
  auto session = session_;
  const std::string text = prompt.toStdString();
  auto onText = [this, job](const std::string &piece) {
    const QString qpiece = QString::fromStdString(piece);
    QMetaObject::invokeMethod(
        this,
        [this, job, qpiece] {
          if (job == generationJob_)
            emit generationText(qpiece);
        },
        Qt::QueuedConnection);
  };
  auto future = QtConcurrent::run(&evalPool_, [session, cancel, text, options, onText]() {
    EvalOutcome out;
    try {
      out.text = QString::fromStdString(session->generate(text, options, onText, cancel.get()));
      if (cancel->cancelled())
        out.cancelled = true;
    } catch (const lrq::Cancelled &) {
      out.cancelled = true;
    } catch (const std::exception &e) {
      out.error = messageOf(e);
    }
    return out;
  });
  watch(this, future, [this, job](const EvalOutcome &out) {
    if (job != generationJob_)
      return;
    generationJob_ = 0;
    if (out.cancelled)
      emit generationCancelled();
    else if (!out.error.isEmpty())
      emit generationFailed(out.error);
    else
      emit generationFinished(out.text);
  });
  emit generationStarted();
  return true;
}

void SessionController::cancelGeneration() {
  if (generationJob_ != 0 && evalCancel_)
    evalCancel_->cancel();
}

} // namespace lrq::ui
