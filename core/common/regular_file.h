#pragma once
// The one check every reader of a model directory makes before it opens a
// file: the path must be a regular file once symbolic links are followed (the
// HF hub cache links snapshots to blobs, so links are fine). A FIFO would block
// open() forever, /dev/zero never ends and a directory cannot be read; each is
// reported by what it is, never as "no such file". Header-only and POSIX, so
// the fuzz build and the tokenizer library use it without core/io.
#include <cerrno>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common/error.h"

namespace lrq {

namespace regular_file_detail {

inline const char *fileTypeName(mode_t mode) {
  if (S_ISDIR(mode))
    return "a directory";
  if (S_ISFIFO(mode))
    return "a FIFO";
  if (S_ISCHR(mode))
    return "a character device";
  if (S_ISBLK(mode))
    return "a block device";
  if (S_ISSOCK(mode))
    return "a socket";
  return "an unknown kind of file";
}

inline std::string linkTarget(const std::string &path) {
  char buffer[4096];
  const ssize_t n = ::readlink(path.c_str(), buffer, sizeof buffer - 1);
  return n > 0 ? std::string(buffer, size_t(n)) : std::string("?");
}

// Why a file of this mode is not readable as a file; "" for a regular file.
inline std::string problemOfMode(const std::string &path, mode_t mode) {
  if (S_ISREG(mode))
    return {};
  std::string what = fileTypeName(mode);
  struct stat linkStat {};
  if (::lstat(path.c_str(), &linkStat) == 0 && S_ISLNK(linkStat.st_mode))
    return "is a symbolic link to " + linkTarget(path) + ", which is " + what +
           ", not a regular file";
  return "is " + what + ", not a regular file";
}

} // namespace regular_file_detail

// "" when path is a regular file (symbolic links followed); otherwise the
// problem as a message tail: "no such file", "is a FIFO, not a regular file",
// "is a symbolic link to /dev/zero, which is a character device, not a regular
// file", "is a symbolic link to x, which does not exist".
inline std::string regularFileProblem(const std::string &path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0)
    return regular_file_detail::problemOfMode(path, st.st_mode);
  const int err = errno;
  struct stat linkStat {};
  if (::lstat(path.c_str(), &linkStat) == 0 && S_ISLNK(linkStat.st_mode))
    return "is a symbolic link to " + regular_file_detail::linkTarget(path) +
           (err == ENOENT ? ", which does not exist"
                          : ", which cannot be followed: " + std::string(std::strerror(err)));
  if (err == ENOENT)
    return "no such file";
  return "cannot be read: " + std::string(std::strerror(err));
}

// Throws FileError(path, problem) unless path is a regular file.
inline void requireRegularFile(const std::string &path) {
  const std::string problem = regularFileProblem(path);
  if (!problem.empty())
    throw FileError(path, problem);
}

// For files a model may or may not have (tokenizer.json, an index): false when
// nothing is at path, true for a regular file, and FileError for anything else
// there, so that a FIFO or a broken link is reported rather than skipped.
inline bool optionalRegularFile(const std::string &path) {
  struct stat linkStat {};
  if (::lstat(path.c_str(), &linkStat) != 0 && errno == ENOENT)
    return false;
  requireRegularFile(path);
  return true;
}

// Opens path read-only and returns the descriptor; throws FileError unless it
// is a regular file. O_NONBLOCK makes a FIFO's open return at once (a FIFO
// swapped in after a stat cannot hang the reader either); the type is checked
// on the opened descriptor, and reads of regular files ignore the flag.
inline int openRegularFile(const std::string &path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string problem = regularFileProblem(path);
    if (problem.empty())
      problem = "cannot open: " + std::string(std::strerror(err));
    throw FileError(path, problem);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw FileError(path, "cannot stat: " + std::string(std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw FileError(path, regular_file_detail::problemOfMode(path, st.st_mode));
  }
  return fd;
}

} // namespace lrq
