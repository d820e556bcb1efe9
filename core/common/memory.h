#pragma once
// The process's peak resident set size, as the kernel counts it, and handing
// freed memory back to the system.
#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace lrq {

// Peak resident set size of this process so far, in MiB.
inline double peakRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0; // ru_maxrss is in KiB on Linux
}

// glibc serves tensors of up to 32 MiB from its heap once blocks that large
// have been freed, and keeps what they free there: trimming hands every whole
// free page back, so the resident size follows the live data again.
inline void releaseFreeMemory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

} // namespace lrq
