#include "core/io/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common/error.h"
#include "core/common/regular_file.h"

namespace lrq {

namespace {

std::string errnoText(int err) {
  return std::strerror(err);
}

// Page-aligned sub-range of [offset, offset+length) clipped to the mapping.
bool pageRange(const uint8_t *base, size_t size, size_t offset, size_t length, void **start,
               size_t *bytes) {
  if (!base || offset >= size || length == 0)
    return false;
  if (length > size - offset)
    length = size - offset;
  const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t first = (offset / page) * page;
  *start = const_cast<uint8_t *>(base) + first;
  *bytes = offset + length - first;
  return true;
}

int64_t modificationNs(const struct stat &st) {
  return int64_t(st.st_mtim.tv_sec) * 1000000000 + int64_t(st.st_mtim.tv_nsec);
}

} // namespace

MappedFile::MappedFile(const std::string &path) : path_(path) {
  const int fd = openRegularFile(path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw FileError(path, "cannot stat: " + errnoText(err));
  }
  size_ = static_cast<size_t>(st.st_size);
  modifiedNs_ = modificationNs(st);
  if (size_ > 0) {
    void *p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw FileError(path, "cannot map into memory: " + errnoText(err));
    }
    data_ = static_cast<const uint8_t *>(p);
  }
  fd_ = fd;
}

MappedFile::~MappedFile() {
  release();
}

MappedFile::MappedFile(MappedFile &&other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_), fd_(other.fd_),
      modifiedNs_(other.modifiedNs_) {
  other.data_ = nullptr;
  other.size_ = 0;
  other.fd_ = -1;
}

MappedFile &MappedFile::operator=(MappedFile &&other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    fd_ = other.fd_;
    modifiedNs_ = other.modifiedNs_;
    other.data_ = nullptr;
    other.size_ = 0;
    other.fd_ = -1;
  }
  return *this;
}

void MappedFile::release() noexcept {
  if (data_)
    ::munmap(const_cast<uint8_t *>(data_), size_);
  if (fd_ >= 0)
    ::close(fd_);
  data_ = nullptr;
  size_ = 0;
  fd_ = -1;
}

void MappedFile::read(uint64_t offset, size_t bytes, void *dst) const {
  if (bytes == 0)
    return;
  if (fd_ < 0 || offset > size_ || bytes > size_ - offset)
    throw FileError(path_, "read of " + std::to_string(bytes) + " bytes at offset " +
                               std::to_string(offset) + " lies outside the file");
  auto *out = static_cast<uint8_t *>(dst);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd_, out + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      throw FileError(path_, "read failed: " + errnoText(errno));
    if (n == 0)
      break; // shorter than when it was opened: reported below
    done += static_cast<size_t>(n);
  }
  // The headers parsed at opening describe the file as it was then: a file
  // truncated, or rewritten in place (same size, new modification time),
  // since then is not what they describe.
  struct stat st {};
  if (::fstat(fd_, &st) != 0)
    throw FileError(path_, "cannot stat: " + errnoText(errno));
  if (done < bytes || static_cast<size_t>(st.st_size) != size_)
    throw FileError(path_, "changed while being read: it is now " + std::to_string(st.st_size) +
                               " bytes, was " + std::to_string(size_) +
                               " when opened (truncated or rewritten?)");
  if (modificationNs(st) != modifiedNs_)
    throw FileError(path_, "changed while being read: modified after it was opened (rewritten "
                           "in place?)");
}

void MappedFile::adviseWillNeed(size_t offset, size_t length) const {
  void *start = nullptr;
  size_t bytes = 0;
  if (pageRange(data_, size_, offset, length, &start, &bytes))
    ::madvise(start, bytes, MADV_WILLNEED);
}

void MappedFile::adviseDontNeed(size_t offset, size_t length) const {
  void *start = nullptr;
  size_t bytes = 0;
  if (pageRange(data_, size_, offset, length, &start, &bytes))
    ::madvise(start, bytes, MADV_DONTNEED);
}

} // namespace lrq
