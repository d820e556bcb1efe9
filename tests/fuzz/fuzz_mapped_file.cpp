// MappedFile for the fuzz build: the whole file is read into a heap block of
// exactly its size instead of being mapped. A mapping is padded to a whole
// page, so a parser reading a few bytes past the end of the file would go
// unnoticed; past a heap block AddressSanitizer reports it at once.
#include "core/io/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common/error.h"

namespace lrq {

MappedFile::MappedFile(const std::string &path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw FileError(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw FileError(path, "is not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    auto *block = new uint8_t[size_];
    size_t done = 0;
    while (done < size_) {
      const ssize_t n = ::pread(fd, block + done, size_ - done, static_cast<off_t>(done));
      if (n <= 0) {
        delete[] block;
        ::close(fd);
        throw FileError(path, "read failed");
      }
      done += static_cast<size_t>(n);
    }
    data_ = block;
  }
  ::close(fd);
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
  delete[] data_;
  data_ = nullptr;
  size_ = 0;
}

// The heap copy cannot change under the reader; the range check is read()'s.
void MappedFile::read(uint64_t offset, size_t bytes, void *dst) const {
  if (bytes == 0)
    return;
  if (offset > size_ || bytes > size_ - offset)
    throw FileError(path_, "read outside the file");
  std::memcpy(dst, data_ + offset, bytes);
}

// Paging hints do nothing on a heap copy, but the ranges must still lie
// inside the file: check them so a bad range is a finding.
void MappedFile::adviseWillNeed(size_t offset, size_t length) const {
  if (length > 0 && (offset > size_ || length > size_ - offset))
    __builtin_trap();
}

void MappedFile::adviseDontNeed(size_t offset, size_t length) const {
  adviseWillNeed(offset, length);
}

} // namespace lrq
