#pragma once
// Runs a piece of a test in a forked child, so that a regression which
// crashes (SIGBUS, SIGSEGV) or hangs (a FIFO opened for reading) shows as a
// failed check with a reason instead of a dead or stuck test binary.
#include <QString>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <new>
#include <string>

#include "core/common/error.h"

namespace lrq::test {

// "error: <what()>" for an lrq::Error, "no error", "bad_alloc", "other: <what()>",
// "crashed (signal N)", "exited with status N" (ended without a word, e.g. by
// a sanitizer's report) or "hung (killed after N s)".
template <typename F> QString runInForkedChild(F f, int timeoutSeconds = 60) {
  int fds[2];
  if (::pipe(fds) != 0)
    return "pipe failed";
  const pid_t pid = ::fork();
  if (pid < 0)
    return "fork failed";
  if (pid == 0) {
    ::close(fds[0]);
    std::string message;
    try {
      f();
      message = "no error";
    } catch (const Error &e) {
      message = std::string("error: ") + e.what();
    } catch (const std::bad_alloc &) {
      message = "bad_alloc";
    } catch (const std::exception &e) {
      message = std::string("other: ") + e.what();
    }
    const char *p = message.data();
    size_t left = message.size();
    while (left > 0) {
      const ssize_t n = ::write(fds[1], p, left);
      if (n <= 0)
        break;
      p += n;
      left -= size_t(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  QByteArray out;
  bool hung = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeoutSeconds);
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      hung = true;
      break;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    const int ready = ::poll(&pfd, 1, int(left.count()));
    if (ready < 0 && errno == EINTR)
      continue;
    if (ready <= 0) {
      hung = true;
      break;
    }
    char buffer[4096];
    const ssize_t n = ::read(fds[0], buffer, sizeof buffer);
    if (n <= 0)
      break;
    out.append(buffer, int(n));
  }
  ::close(fds[0]);
  if (hung)
    ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (hung)
    return QString("hung (killed after %1 s)").arg(timeoutSeconds);
  if (WIFSIGNALED(status))
    return QString("crashed (signal %1)").arg(WTERMSIG(status));
  if (out.isEmpty() && WIFEXITED(status) && WEXITSTATUS(status) != 0)
    return QString("exited with status %1").arg(WEXITSTATUS(status));
  return QString::fromUtf8(out);
}

} // namespace lrq::test
