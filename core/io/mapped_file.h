#pragma once
// Read-only memory mapping of a whole file. Headers are parsed from the
// mapping, so bounds checks work against one contiguous byte range. Tensor
// data is copied out with read() instead: a file truncated while mapped makes
// touching its lost pages raise SIGBUS, while pread() on the descriptor kept
// open reports the shorter file as an error.
#include <cstddef>
#include <cstdint>
#include <string>

namespace lrq {

class MappedFile {
public:
  // Throws lrq::FileError when the file is missing, not a regular file (a
  // FIFO, a directory, a device: regularFileProblem) or unreadable.
  explicit MappedFile(const std::string &path);
  ~MappedFile();
  MappedFile(MappedFile &&other) noexcept;
  MappedFile &operator=(MappedFile &&other) noexcept;
  MappedFile(const MappedFile &) = delete;
  MappedFile &operator=(const MappedFile &) = delete;

  const std::string &path() const { return path_; }
  const uint8_t *data() const { return data_; }
  size_t size() const { return size_; }

  // Copies bytes [offset, offset+bytes) of the file into dst. Throws
  // lrq::FileError naming the file when it has changed since it was opened
  // (a new size or modification time: truncated or rewritten under a run) or
  // cannot be read.
  void read(uint64_t offset, size_t bytes, void *dst) const;

  // Hints that [offset, offset+length) will be read soon / sequentially.
  void adviseWillNeed(size_t offset, size_t length) const;
  // Lets the kernel drop the pages of [offset, offset+length) from this
  // process's resident set (they stay in the page cache).
  void adviseDontNeed(size_t offset, size_t length) const;

private:
  void release() noexcept;

  std::string path_;
  const uint8_t *data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;            // kept open for read()
  int64_t modifiedNs_ = 0; // modification time when opened
};

} // namespace lrq
