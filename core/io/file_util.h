#pragma once
// Small file helpers shared by the readers and writers in core/io.
#include <cstdint>
#include <cstdio>
#include <string>

namespace lrq {

// Writes a file under a temporary name beside the target and renames it into
// place on commit(), so readers never see a half-written file. Destroying an
// uncommitted AtomicFileWriter removes the temporary file.
class AtomicFileWriter {
public:
  explicit AtomicFileWriter(const std::string &path); // throws lrq::FileError
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter &) = delete;
  AtomicFileWriter &operator=(const AtomicFileWriter &) = delete;

  void write(const void *data, size_t bytes); // throws lrq::FileError
  void write(const std::string &bytes) { write(bytes.data(), bytes.size()); }
  uint64_t written() const { return written_; }
  void commit(); // flushes, closes and renames; throws lrq::FileError

private:
  std::string path_;
  std::string tempPath_;
  std::FILE *file_ = nullptr;
  uint64_t written_ = 0;
};

// Whole file as a string; throws lrq::FileError when missing, unreadable or
// not a regular file (regularFileProblem: a FIFO is named, never waited on).
std::string readWholeFile(const std::string &path);
bool fileExists(const std::string &path);
bool directoryExists(const std::string &path);
// Directory part of a path ("." when there is none) and joining.
std::string parentDirectory(const std::string &path);
std::string joinPath(const std::string &dir, const std::string &name);

} // namespace lrq
