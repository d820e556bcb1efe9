#include "core/io/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common/error.h"

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

} // namespace

MappedFile::MappedFile(const std::string &path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT)
      throw FileError(path, "no such file");
    throw FileError(path, "cannot open: " + errnoText(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw FileError(path, "cannot stat: " + errnoText(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw FileError(path, "is a directory, not a file");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw FileError(path, "is not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void *p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw FileError(path, "cannot map into memory: " + errnoText(err));
    }
    data_ = static_cast<const uint8_t *>(p);
  }
  ::close(fd); // the mapping keeps the file alive
}

MappedFile::~MappedFile() {
  release();
}

MappedFile::MappedFile(MappedFile &&other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile &MappedFile::operator=(MappedFile &&other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void MappedFile::release() noexcept {
  if (data_)
    ::munmap(const_cast<uint8_t *>(data_), size_);
  data_ = nullptr;
  size_ = 0;
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
