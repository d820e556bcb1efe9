#pragma once
// Argument parsing and terminal progress shared by the lrq commands.
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <iomanip>
#include <sstream>
#include <unistd.h>

#include "core/common/progress.h"
#include "core/common/text_escape.h"

namespace lrq::cli {

class UsageError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

struct Arguments {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> options; // --name -> value ("" for flags)
};

Arguments parseArguments(int argc, char **argv);
bool has(const Arguments &args, const std::string &name);
std::string stringOption(const Arguments &args, const std::string &name,
                         const std::string &fallback);
long long intOption(const Arguments &args, const std::string &name, long long fallback,
                    long long minimum, long long maximum);
double doubleOption(const Arguments &args, const std::string &name, double fallback, double minimum,
                    double maximum);
// The single MODEL positional argument of a command.
std::string requireModel(const Arguments &args);
std::string formatSeconds(double seconds);

// Cancelled by Ctrl-C (SIGINT) once installInterruptHandler() ran: long work
// stops between units (windows, iterations, blocks) and records what it has.
CancelToken &interruptToken();
void installInterruptHandler();

// Draws a progress bar on stderr: redrawn in place on a terminal, a line per
// 10% otherwise (logs, CI).
class TerminalProgress : public ProgressObserver {
public:
  TerminalProgress(std::ostream &err, bool enabled)
      : err_(err), enabled_(enabled), tty_(isatty(STDERR_FILENO) != 0) {}

  void started(const std::string &task, int64_t total) override {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = task;
    total_ = total;
    start_ = Clock::now();
    lastDraw_ = {};
    lastDecile_ = -1;
  }
  void progress(int64_t done, int64_t total, const std::string &detail) override {
    if (!enabled_)
      return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto now = Clock::now();
    double fraction = total > 0 ? double(done) / double(total) : 0.0;
    double elapsed = std::chrono::duration<double>(now - start_).count();
    std::ostringstream line;
    line << task_ << " [";
    const int width = 30;
    int filled = int(fraction * width);
    for (int i = 0; i < width; ++i)
      line << (i < filled ? '#' : '.');
    line << "] " << std::setw(3) << int(fraction * 100) << "% " << done << "/" << total;
    if (!detail.empty())
      line << "  " << printableText(detail); // tensor names from the file
    if (done > 0 && done < total)
      line << "  ETA " << formatSeconds(elapsed * double(total - done) / double(done));
    if (tty_) {
      if (done < total && now - lastDraw_ < std::chrono::milliseconds(100))
        return;
      lastDraw_ = now;
      err_ << "\r" << line.str() << "\033[K" << (done >= total ? "\n" : "") << std::flush;
    } else {
      int decile = int(fraction * 10);
      if (decile == lastDecile_ && done < total)
        return;
      lastDecile_ = decile;
      err_ << line.str() << "\n" << std::flush;
    }
  }
  // Iterations per block, when known, for the ETA of reconstruction runs.
  void setIterationsPerBlock(int64_t iterations) { iterationsPerBlock_ = iterations; }
  void blockStarted(int block, int blockCount) override {
    std::lock_guard<std::mutex> lock(mutex_);
    block_ = block;
    blockCount_ = blockCount;
    blockStart_ = Clock::now();
    if (runStart_ == Clock::time_point{})
      runStart_ = blockStart_;
  }
  void iterationLoss(int block, int iteration, double loss) override {
    if (!enabled_)
      return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto now = Clock::now();
    if (now - lastDraw_ < std::chrono::milliseconds(tty_ ? 100 : 5000))
      return;
    lastDraw_ = now;
    std::ostringstream line;
    line << "block " << block + 1 << "/" << blockCount_ << "  iter " << iteration + 1;
    if (iterationsPerBlock_ > 0)
      line << "/" << iterationsPerBlock_;
    line << "  loss " << std::setprecision(5) << loss;
    if (iterationsPerBlock_ > 0 && blockCount_ > 0) {
      double elapsed = std::chrono::duration<double>(now - runStart_).count();
      double done = double(block) + double(iteration + 1) / double(iterationsPerBlock_);
      if (done > 0)
        line << "  ETA " << formatSeconds(elapsed * (double(blockCount_) - done) / done);
    }
    err_ << (tty_ ? "\r" : "") << line.str() << (tty_ ? "\033[K" : "\n") << std::flush;
  }
  void blockHeldOut(int block, double initialLoss, double finalLoss) override {
    std::lock_guard<std::mutex> lock(mutex_);
    heldoutBlock_ = block;
    heldoutInitial_ = initialLoss;
    heldoutFinal_ = finalLoss;
  }
  void blockFinished(int block, double initialLoss, double finalLoss, double seconds) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool heldout = heldoutBlock_ == block;
    heldoutBlock_ = -1;
    if (!enabled_)
      return;
    err_ << (tty_ ? "\r\033[K" : "") << "block " << block + 1 << "/" << blockCount_ << " done in "
         << formatSeconds(seconds) << std::setprecision(5) << "  loss " << initialLoss << " -> "
         << finalLoss;
    if (heldout)
      err_ << "  held-out " << heldoutInitial_ << " -> " << heldoutFinal_;
    err_ << "\n" << std::flush;
  }
  void log(LogLevel level, const std::string &message) override {
    if (!enabled_ && level < LogLevel::Warning)
      return;
    std::lock_guard<std::mutex> lock(mutex_);
    err_ << printableText(message) << "\n" << std::flush;
  }

private:
  using Clock = std::chrono::steady_clock;
  std::ostream &err_;
  bool enabled_;
  bool tty_;
  std::mutex mutex_;
  std::string task_;
  int64_t total_ = 0;
  Clock::time_point start_{}, lastDraw_{};
  int lastDecile_ = -1;
  int block_ = 0, blockCount_ = 0;
  int64_t iterationsPerBlock_ = 0;
  int heldoutBlock_ = -1; // held-out figures waiting for their block's line
  double heldoutInitial_ = 0, heldoutFinal_ = 0;
  Clock::time_point blockStart_{}, runStart_{};
};

} // namespace lrq::cli
