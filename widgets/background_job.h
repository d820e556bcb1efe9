#pragma once
// One kind of background work (loading a model, perplexity, a quantization
// run): each start gets a job id and a fresh cancel token; the work runs on the
// helper's own thread pool; its outcome comes back on the UI thread as exactly
// one of done / failed / cancelled, unless a later start (or drop()) superseded
// it, in which case it is dropped. Controllers build on this instead of
// repeating the bookkeeping for every operation.
#include <QFutureWatcher>
#include <QObject>
#include <QString>
#include <QThreadPool>
#include <QtConcurrent/QtConcurrentRun>

#include <functional>
#include <memory>
#include <optional>

#include "core/common/progress.h"
#include "widgets/concurrent_run.h"

namespace lrq::ui {

class BackgroundJob : public QObject {
  Q_OBJECT
public:
  explicit BackgroundJob(QObject *parent = nullptr, int maxThreads = 1) : QObject(parent) {
    pool_.setMaxThreadCount(maxThreads);
  }
  ~BackgroundJob() override { shutdown(); }

  template <typename R> struct Handlers {
    std::function<void(R)> done;
    std::function<void(const QString &)> failed;
    std::function<void()> cancelled = {};
    std::function<void(quint64)> dropped = {};
  };

  // Starts work(cancel) and returns its job id. A job still running is asked to
  // cancel; its outcome will be dropped.
  template <typename R>
  quint64 start(std::function<R(const lrq::CancelToken &)> work, Handlers<R> handlers) {
    const quint64 job = ++last_;
    if (cancel_)
      cancel_->cancel();
    auto cancel = std::make_shared<lrq::CancelToken>();
    cancel_ = cancel;
    running_ = job;
    struct Outcome {
      std::optional<R> value;
      QString error;
      bool cancelled = false;
    };
    auto future = runConcurrently(&pool_, [work = std::move(work), cancel]() {
      Outcome out;
      try {
        out.value.emplace(work(*cancel));
      } catch (const lrq::Cancelled &) {
        out.cancelled = true;
      } catch (const std::exception &e) {
        out.error = QString::fromUtf8(e.what()).trimmed();
      }
      return out;
    });
    auto *watcher = new QFutureWatcher<Outcome>(this);
    connect(watcher, &QFutureWatcherBase::finished, this, [this, watcher, job, handlers] {
      const Outcome out = watcher->result();
      watcher->deleteLater();
      if (job != running_) {
        if (handlers.dropped)
          handlers.dropped(job);
        return;
      }
      running_ = 0;
      if (out.cancelled) {
        if (handlers.cancelled)
          handlers.cancelled();
      } else if (!out.value) {
        handlers.failed(out.error);
      } else {
        handlers.done(*out.value);
      }
    });
    watcher->setFuture(future);
    return job;
  }

  bool isRunning() const { return running_ != 0; }
  quint64 runningJob() const { return running_; }
  quint64 lastJob() const { return last_; }
  // The id the next start() will return (for work that reports as it goes).
  quint64 nextJob() const { return last_ + 1; }
  // Asks the running job to stop between units of work.
  void cancel() {
    if (running_ != 0 && cancel_)
      cancel_->cancel();
  }
  // The running job's outcome will be dropped (it is also asked to stop).
  void drop() {
    cancel();
    running_ = 0;
  }
  // Cancels and waits for every worker to end.
  void shutdown() {
    if (cancel_)
      cancel_->cancel();
    pool_.waitForDone();
  }

private:
  QThreadPool pool_;
  quint64 last_ = 0, running_ = 0;
  std::shared_ptr<lrq::CancelToken> cancel_;
};

} // namespace lrq::ui
