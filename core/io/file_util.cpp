#include "core/io/file_util.h"

#include <cerrno>
#include <cstring>

#include <sys/stat.h>
#include <unistd.h>

#include "core/common/error.h"
#include "core/common/regular_file.h"

namespace lrq {

AtomicFileWriter::AtomicFileWriter(const std::string &path)
    : path_(path), tempPath_(path + ".tmp-" + std::to_string(::getpid())) {
  file_ = std::fopen(tempPath_.c_str(), "wb");
  if (!file_)
    throw FileError(path_, std::string("cannot create: ") + std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (file_) {
    std::fclose(file_);
    std::remove(tempPath_.c_str());
  }
}

void AtomicFileWriter::write(const void *data, size_t bytes) {
  if (!file_)
    throw FileError(path_, "write after the file was closed");
  if (bytes == 0)
    return;
  if (std::fwrite(data, 1, bytes, file_) != bytes)
    throw FileError(path_, std::string("write failed: ") + std::strerror(errno));
  written_ += bytes;
}

void AtomicFileWriter::commit() {
  if (!file_)
    throw FileError(path_, "commit after the file was closed");
  const bool flushed = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  const int err = errno;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flushed || !closed) {
    std::remove(tempPath_.c_str());
    throw FileError(path_, std::string("write failed: ") + std::strerror(err));
  }
  if (std::rename(tempPath_.c_str(), path_.c_str()) != 0) {
    const int renameErr = errno;
    std::remove(tempPath_.c_str());
    throw FileError(path_, std::string("cannot rename the temporary file into place: ") +
                               std::strerror(renameErr));
  }
}

std::string readWholeFile(const std::string &path) {
  const int fd = openRegularFile(path); // names a FIFO or a directory, never waits on one
  std::string text;
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw FileError(path, std::string("read failed: ") + std::strerror(err));
    }
    if (n == 0)
      break;
    text.append(buffer, size_t(n));
  }
  ::close(fd);
  return text;
}

bool fileExists(const std::string &path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool directoryExists(const std::string &path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string parentDirectory(const std::string &path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos)
    return ".";
  if (slash == 0)
    return "/";
  return path.substr(0, slash);
}

std::string joinPath(const std::string &dir, const std::string &name) {
  if (dir.empty() || dir == ".")
    return name;
  if (dir.back() == '/')
    return dir + name;
  return dir + "/" + name;
}

} // namespace lrq
