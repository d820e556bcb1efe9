#pragma once
// The process's peak resident set size, as the kernel counts it.
#include <sys/resource.h>

namespace lrq {

// Peak resident set size of this process so far, in MiB.
inline double peakRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0; // ru_maxrss is in KiB on Linux
}

} // namespace lrq
