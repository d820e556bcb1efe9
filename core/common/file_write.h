#pragma once
// Writing a whole file so that a full disk leaves nothing behind: the one
// helper of the libraries that cannot use core/io's AtomicFileWriter (the
// reconstruction engine's checkpoint and hidden-state spill).
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <unistd.h>

#include "core/common/error.h"

namespace lrq {

// Writes bytes to path (created or truncated). On any failure (ENOSPC, EFBIG,
// EIO ...) the partial file is removed and FileError(reportAs, problem) is
// thrown, problem naming the system's reason; reportAs defaults to path. With
// sync the data is on disk before this returns (for files renamed into place
// afterwards, so a crash cannot leave a renamed but empty file).
inline void writeFileOrRemove(const std::string &path, const void *data, size_t bytes,
                              bool sync = false, const std::string &reportAs = {}) {
  const std::string &name = reportAs.empty() ? path : reportAs;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw FileError(name, std::string("cannot create: ") + std::strerror(errno));
  auto fail = [&](const char *what, int err) {
    ::close(fd);
    ::unlink(path.c_str());
    throw FileError(name, std::string(what) + ": " + std::strerror(err) +
                              (err == ENOSPC || err == EFBIG || err == EDQUOT
                                   ? " (the disk or a size limit is full)"
                                   : ""));
  };
  const auto *p = static_cast<const char *>(data);
  size_t left = bytes;
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      fail("write failed", n < 0 ? errno : EIO);
    p += n;
    left -= size_t(n);
  }
  if (sync && ::fsync(fd) != 0)
    fail("write failed", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    throw FileError(name, std::string("write failed: ") + std::strerror(err));
  }
}

} // namespace lrq
