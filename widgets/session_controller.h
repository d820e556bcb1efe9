#pragma once
// The desktop app's only door to the engine: a QObject facade over
// lrq::ModelSession. Every engine call runs on a worker thread (QtConcurrent
// on the controller's own pools); results come back as signals on the UI
// thread. Stale jobs (a load superseded by a newer one, an analysis of a
// model that has since been replaced) are dropped by job id.
#include <QHash>
#include <QObject>
#include <QString>
#include <QThreadPool>
#include <QVector>

#include <atomic>
#include <memory>

#include "core/session/model_session.h"
#include "widgets/background_job.h"
#include "widgets/engine_types.h"

namespace lrq::ui {

struct PerplexityRequest {
  QString textFile; // empty: the default held-out text
  int seqLen = 256;
  int maxWindows = 0; // 0: all windows
};

class SessionController : public QObject {
  Q_OBJECT
public:
  static constexpr int kHistogramBins = 120;

  explicit SessionController(QObject *parent = nullptr);
  ~SessionController() override;

  bool hasModel() const { return static_cast<bool>(session_); }
  // Null when no model is loaded.
  const lrq::ModelSummary *summary() const;
  // The loaded session (shared so workers keep it alive while they run).
  std::shared_ptr<const lrq::ModelSession> session() const { return session_; }
  // The path the current model was opened with ("default" included).
  QString modelSource() const { return modelSource_; }
  const lrq::TensorSummary *tensor(const QString &name) const;

  // Loading. Returns the job id; only the latest job's result is kept.
  quint64 openModel(const QString &pathOrDefault);
  bool isLoading() const { return load_.isRunning(); }
  quint64 latestLoadJob() const { return load_.lastJob(); }
  void cancelLoad();

  // Tensor analysis; cached per tensor for the current model.
  void requestAnalysis(const QString &tensor);
  void requestSpectrum(const QString &tensor);
  bool hasCachedSpectrum(const QString &tensor) const { return spectra_.contains(tensor); }
  bool isComputingSpectrum() const { return !pendingSpectra_.isEmpty(); }

  // Perplexity (one run at a time).
  bool runPerplexity(const PerplexityRequest &request);
  void cancelPerplexity();
  bool isPerplexityRunning() const {
    return eval_.isRunning() && evalKind_ == EvalKind::Perplexity;
  }

  // Greedy/sampled continuation (one at a time, shares the evaluation pool).
  bool generate(const QString &prompt, const lrq::GenerationOptions &options);
  void cancelGeneration();
  bool isGenerating() const { return eval_.isRunning() && evalKind_ == EvalKind::Generation; }

  // Cancels what can be cancelled and waits for every worker to finish.
  void shutdown();

signals:
  void loadStarted(quint64 job, const QString &path);
  void loadProgress(quint64 job, qint64 done, qint64 total, const QString &detail);
  void modelLoaded(const QString &path);
  void loadFailed(const QString &path, const QString &message);
  void loadCancelled(const QString &path);
  void loadDropped(quint64 job); // a superseded job finished; its result was discarded

  void analysisStarted(const QString &tensor);
  void analysisReady(const QString &tensor, const lrq::TensorStatistics &statistics,
                     const lrq::Histogram &histogram);
  void analysisFailed(const QString &tensor, const QString &message);
  void spectrumStarted(const QString &tensor);
  void spectrumReady(const QString &tensor, const QVector<double> &singularValues);
  void spectrumFailed(const QString &tensor, const QString &message);

  void perplexityStarted();
  void perplexityProgress(qint64 done, qint64 total, const QString &detail);
  void perplexityFinished(const lrq::PerplexityReport &report);
  void perplexityFailed(const QString &message);
  void perplexityCancelled();

  void generationStarted();
  void generationText(const QString &piece);
  void generationFinished(const QString &text);
  void generationFailed(const QString &message);
  void generationCancelled();

private:
  struct Analysis {
    lrq::TensorStatistics statistics;
    lrq::Histogram histogram;
  };

  void adoptSession(std::shared_ptr<lrq::ModelSession> session, const QString &source);

  std::shared_ptr<lrq::ModelSession> session_;
  QString modelSource_;
  quint64 generation_ = 0; // bumps whenever session_ changes

  // Two loads may overlap briefly (a superseded one winding down).
  BackgroundJob load_{this, 2};
  // Perplexity and generation share one worker: one of them at a time.
  enum class EvalKind { Perplexity, Generation };
  BackgroundJob eval_{this, 1};
  EvalKind evalKind_ = EvalKind::Perplexity;
  QThreadPool statsPool_, svdPool_;

  QHash<QString, Analysis> analyses_;
  QHash<QString, QVector<double>> spectra_;
  // tensor -> ticket of its queued/running job
  QHash<QString, quint64> pendingAnalyses_, pendingSpectra_;
  QString wantedAnalysis_, wantedSpectrum_; // the latest requests
  // Queued analysis jobs whose tensor is no longer the latest request skip
  // their work: clicking through the tree never builds a backlog.
  std::atomic<quint64> latestAnalysisTicket_{0};
  std::atomic<quint64> latestSpectrumTicket_{0};
};

} // namespace lrq::ui
