// The `lrq` and `lrq-workbench` commands: a launcher that links neither LibTorch nor Qt.
// It sets OpenMP's wait policy and replaces itself (execv: same process id, arguments and
// argv[0]) with the engine binary that does the work.
//
// Why: LibTorch's OpenMP runtime (libgomp) reads OMP_WAIT_POLICY once, when it is loaded,
// before main() runs. By default its idle worker threads spin. With any other busy process
// on the machine, or the desktop's GUI thread, a spinning worker holds a core that the
// thread it waits for needs: measured with bench_recon (LRQ, 2 x 512 tokens, 2 threads)
// beside two one-thread runs, 3.60 s per iteration spinning against 0.33 s passive. On an
// idle machine the two are within run-to-run noise. A policy the user set is kept.
//
// LRQ_ENGINE names the engine; it is looked up beside this launcher (the build tree) and
// in ../libexec/lrq-workbench/ (an installed tree).
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#ifndef LRQ_ENGINE
#error "LRQ_ENGINE must name the engine binary"
#endif

namespace {

std::string selfDirectory() {
  char buffer[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (n <= 0)
    return {};
  std::string path(buffer, size_t(n));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

} // namespace

int main(int argc, char **argv) {
  (void)argc;
  const char *name = argv[0] != nullptr && argv[0][0] != '\0' ? argv[0] : LRQ_ENGINE;
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && std::getenv("GOMP_SPINCOUNT") == nullptr)
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
  const std::string dir = selfDirectory();
  if (dir.empty()) {
    std::fprintf(stderr, "%s: cannot find its own location (/proc/self/exe): %s\n", name,
                 std::strerror(errno));
    return 127;
  }
  const std::string candidates[] = {dir + "/" LRQ_ENGINE,
                                    dir + "/../libexec/lrq-workbench/" LRQ_ENGINE};
  int error = 0; // the first candidate's, unless it does not exist
  for (const std::string &engine : candidates) {
    ::execv(engine.c_str(), argv);
    if (error == 0 || error == ENOENT)
      error = errno;
  }
  std::fprintf(stderr, "%s: cannot start its engine %s (also looked in %s): %s\n", name,
               candidates[0].c_str(), candidates[1].c_str(), std::strerror(error));
  return 127;
}
