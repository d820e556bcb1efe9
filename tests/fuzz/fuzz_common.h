#pragma once
// Shared by the libFuzzer harnesses: an in-memory file for parsers that take
// a path, and a check that turns a broken invariant into a reported crash.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <spdlog/spdlog.h>

namespace lrq_fuzz {

// A memfd rewritten with each input; path() names it for open()/fopen().
class MemoryFile {
public:
  explicit MemoryFile(const char *name) {
    fd_ = ::memfd_create(name, MFD_CLOEXEC);
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  MemoryFile(const MemoryFile &) = delete;
  MemoryFile &operator=(const MemoryFile &) = delete;

  const std::string &write(const uint8_t *data, size_t size) {
    if (::ftruncate(fd_, 0) != 0)
      std::abort();
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0)
        std::abort();
      done += static_cast<size_t>(n);
    }
    return path_;
  }
  const std::string &path() const { return path_; }

private:
  int fd_ = -1;
  std::string path_;
};

// Parsers warn through spdlog about odd but accepted input; at fuzzing rates
// that is only noise.
inline void quietLogs() {
  spdlog::set_level(spdlog::level::off);
}

// Called with each refusal; LRQ_FUZZ_VERBOSE=1 prints it, to see why a seed
// is refused when the target is run on single files.
inline void refused(const std::exception &e) {
  static const bool verbose = std::getenv("LRQ_FUZZ_VERBOSE") != nullptr;
  if (verbose)
    std::fprintf(stderr, "refused: %s\n", e.what());
}

} // namespace lrq_fuzz

// An invariant the parser promises: a failure aborts, and libFuzzer saves the input.
#define FUZZ_CHECK(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);          \
      std::abort();                                                                                \
    }                                                                                              \
  } while (0)
