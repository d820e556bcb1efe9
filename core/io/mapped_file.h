#pragma once
// Read-only memory mapping of a whole file. Model files are read through a
// mapping so that only the pages a tensor needs are touched, and so that
// bounds checks can work against one contiguous byte range.
#include <cstddef>
#include <cstdint>
#include <string>

namespace lrq {

class MappedFile {
public:
  // Throws lrq::FileError when the file is missing, a directory or unreadable.
  explicit MappedFile(const std::string &path);
  ~MappedFile();
  MappedFile(MappedFile &&other) noexcept;
  MappedFile &operator=(MappedFile &&other) noexcept;
  MappedFile(const MappedFile &) = delete;
  MappedFile &operator=(const MappedFile &) = delete;

  const std::string &path() const { return path_; }
  const uint8_t *data() const { return data_; }
  size_t size() const { return size_; }

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
};

} // namespace lrq
