#pragma once
// safetensors files: a little-endian u64 header length, a JSON header naming
// each tensor's dtype, shape and byte range, then the data. The reader maps
// the file and converts one tensor at a time to float32; the writer writes
// F32/F16/BF16 tensors atomically.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/io/mapped_file.h"

// at::Tensor only appears in declarations here: the parsers compile without
// LibTorch (tests/fuzz builds them alone).
namespace at {
class Tensor;
} // namespace at

namespace lrq {

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype; // as in the file: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0; // byte range relative to the data section
  uint64_t end = 0;
  int64_t numel() const;
};

class SafetensorsReader {
public:
  // Maps the file and validates the header; throws lrq::FileError.
  explicit SafetensorsReader(const std::string &path);

  const std::string &path() const { return file_.path(); }
  // Tensors in data order.
  const std::vector<SafetensorsTensorInfo> &tensors() const { return tensors_; }
  const SafetensorsTensorInfo *find(const std::string &name) const;
  const std::map<std::string, std::string> &metadata() const { return metadata_; }
  uint64_t dataOffset() const { return dataOffset_; }

  // Float32 copy of one tensor (F32, F16 or BF16 in the file; others give
  // lrq::FileError).
  at::Tensor load(const SafetensorsTensorInfo &info) const;
  at::Tensor load(const std::string &name) const;
  // The tensor's bytes as they are in the file (uint8, one dimension).
  at::Tensor loadBytes(const SafetensorsTensorInfo &info) const;
  // Lets the kernel drop the tensor's file pages from the resident set.
  void releasePages(const SafetensorsTensorInfo &info) const;

private:
  [[noreturn]] void fail(const std::string &problem) const;

  MappedFile file_;
  uint64_t dataOffset_ = 0;
  std::vector<SafetensorsTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// model.safetensors.index.json: which shard file holds each tensor.
struct SafetensorsIndex {
  std::string path;
  std::map<std::string, std::string> weightMap; // tensor -> shard file name
  std::vector<std::string> shards;              // distinct shard names, sorted
};
// Throws lrq::FileError for bad JSON, a missing weight_map, or shard names
// that leave the index's directory.
SafetensorsIndex readSafetensorsIndex(const std::string &path);
void writeSafetensorsIndex(const std::string &path, const SafetensorsIndex &index,
                           uint64_t totalSize);

// Writes tensors (float32, float16 or bfloat16, any device, contiguous or
// not) in the given order, with optional __metadata__, to a temporary file
// renamed into place. Throws lrq::Error for other dtypes or duplicate names,
// lrq::FileError for I/O failures.
void writeSafetensors(const std::string &path,
                      const std::vector<std::pair<std::string, at::Tensor>> &tensors,
                      const std::map<std::string, std::string> &metadata = {});

} // namespace lrq
