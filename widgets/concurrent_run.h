#pragma once
// QtConcurrent::run for the desktop's background work, telling
// ThreadSanitizer (tests/sanitize/run.sh thread) about the ordering Qt gives.
// Qt is not instrumented, so TSan cannot see the mutex by which QThreadPool
// hands a task to a pooled thread, nor the one by which a finished task's
// event reaches the UI thread: everything a caller wrote before starting a
// task, and everything a task wrote before its watcher's finished signal,
// would be reported as a race. Here those two hand-offs are stated:
//  - starting a task releases, and the task acquires when it begins;
//  - a task releases when it ends, and the UI thread acquires before it
//    handles each event (an application event filter), which is what Qt's
//    event queue guarantees.
// Outside TSan builds this is QtConcurrent::run and nothing more.
#include <QCoreApplication>
#include <QException>
#include <QFuture>
#include <QFutureInterface>
#include <QObject>
#include <QRunnable>
#include <QThreadPool>
#include <QtConcurrent/QtConcurrentRun>

#include <exception>
#include <type_traits>
#include <utility>

#if defined(__SANITIZE_THREAD__)
#define LRQ_TSAN_HANDOFFS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LRQ_TSAN_HANDOFFS 1
#endif
#endif

#if defined(LRQ_TSAN_HANDOFFS)
extern "C" void __tsan_acquire(void *addr);
extern "C" void __tsan_release(void *addr);
#endif

namespace lrq::ui {

namespace detail {

#if defined(LRQ_TSAN_HANDOFFS)
// The one synchronisation object of the hand-offs: Qt's pool and event queue
// each order every task's start and end behind one mutex.
inline char &handoffToken() {
  static char token;
  return token;
}

class HandoffEventFilter : public QObject {
public:
  bool eventFilter(QObject *, QEvent *) override {
    __tsan_acquire(&handoffToken());
    return false;
  }
};

inline void installHandoffFilter() {
  static HandoffEventFilter *filter = [] {
    auto *f = new HandoffEventFilter;
    if (QCoreApplication *app = QCoreApplication::instance()) {
      f->moveToThread(app->thread());
      app->installEventFilter(f);
    }
    return f;
  }();
  (void)filter;
}

#endif

} // namespace detail

// QtConcurrent::run(pool, fn) with the hand-offs stated (see above). In TSan
// builds the task is a QRunnable made here, so that everything the pooled
// thread reads of it was written before the release (QtConcurrent::run builds
// its task object after any point a caller could release at).
template <typename Fn> auto runConcurrently(QThreadPool *pool, Fn &&fn) {
#if defined(LRQ_TSAN_HANDOFFS)
  using Result = std::invoke_result_t<std::decay_t<Fn>>;
  detail::installHandoffFilter();
  QFutureInterface<Result> promise;
  promise.reportStarted();
  QFuture<Result> future = promise.future();
  QRunnable *task = QRunnable::create([promise, fn = std::forward<Fn>(fn)]() mutable {
    __tsan_acquire(&detail::handoffToken());
    try {
      if constexpr (std::is_void_v<Result>) {
        fn();
      } else {
        promise.reportResult(fn());
      }
    } catch (...) {
      promise.reportException(QUnhandledException(std::current_exception()));
    }
    __tsan_release(&detail::handoffToken());
    promise.reportFinished();
  });
  __tsan_release(&detail::handoffToken());
  pool->start(task);
  return future;
#else
  return QtConcurrent::run(pool, std::forward<Fn>(fn));
#endif
}

// On Qt's global thread pool.
template <typename Fn> auto runConcurrently(Fn &&fn) {
  return runConcurrently(QThreadPool::globalInstance(), std::forward<Fn>(fn));
}

} // namespace lrq::ui
