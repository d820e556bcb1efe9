#pragma once
// Writer for GGUF v3 files (llama.cpp's model format), little-endian: the
// header, metadata key/values of every GGUF value type (arrays too, nested),
// tensor infos, then the data section, each tensor at a multiple of the
// alignment (general.alignment, default 32). Tensor data is streamed: a
// provider hands over one tensor's bytes at a time, so a model is never held
// twice. Atomic: written under a temporary sibling renamed into place once
// complete; a failure or a cancel (checked between tensors) leaves no file.
// LibTorch-free, like the reader (core/io/gguf.h).
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/common/progress.h"
#include "core/io/ggml_quants.h"
#include "core/io/gguf.h"

namespace lrq {

constexpr uint64_t kGgufDefaultAlignment = 32;

// One tensor of the file: its name, dimensions in GGUF order (ne0, the row
// length, first) and storage type. Its byte size follows from them.
struct GgufTensorSpec {
  std::string name;
  std::vector<uint64_t> dims;
  GgmlType type = GgmlType::F32;
};

// Bytes a tensor of that type and those dimensions occupies; throws lrq::Error
// when the row length is not a multiple of the type's block size.
uint64_t ggufTensorBytes(const GgufTensorSpec &tensor);

struct GgufWriteOptions {
  // Data alignment; a power of two. Written as general.alignment (uint32)
  // when it is not the default 32 or when the metadata already has the key.
  uint64_t alignment = kGgufDefaultAlignment;
  bool overwrite = false; // replace an existing file (else an existing file is an error)
  // Called before each tensor's data with its name: tests throw from it to
  // simulate a failure half way.
  std::function<void(const std::string &step)> beforeStep;
};

// The bytes of tensor `index` (of the list given to writeGgufFile); must be
// exactly ggufTensorBytes(tensors[index]) long.
using GgufTensorProvider = std::function<std::vector<uint8_t>(size_t index)>;

struct GgufWriteResult {
  uint64_t bytes = 0;      // file size
  uint64_t dataOffset = 0; // absolute offset of the data section
};

// Writes the file. Throws lrq::FileError (existing target without overwrite,
// missing parent folder, I/O), lrq::Error (duplicate names or keys, a bad
// alignment, a provider returning the wrong size) or lrq::Cancelled.
GgufWriteResult writeGgufFile(const std::string &path,
                              const std::vector<std::pair<std::string, GgufValue>> &metadata,
                              const std::vector<GgufTensorSpec> &tensors,
                              const GgufTensorProvider &provider,
                              const GgufWriteOptions &options = {},
                              ProgressObserver *observer = nullptr,
                              const CancelToken *cancel = nullptr);

// The storage of a GGUF export's float tensors as the command line gives it
// (GgufExportOptions::floatTypes): "PATTERN=TYPE", TYPE f32, f16, q8_0 or q6_k
// (any case), the pattern a glob or "re:REGEX"; a list of them separated by
// commas. Throw lrq::Error for other types and bad regular expressions.
std::pair<std::string, GgmlType> parseGgufFloatOverride(const std::string &text);
std::vector<std::pair<std::string, GgmlType>> parseGgufFloatTypes(const std::string &list);

// Convenience constructors for metadata values.
GgufValue ggufUInt32(uint32_t v);
GgufValue ggufInt32(int32_t v);
GgufValue ggufUInt64(uint64_t v);
GgufValue ggufFloat32(float v);
GgufValue ggufString(std::string v);
GgufValue ggufStringArray(std::vector<std::string> v);
GgufValue ggufFloat32Array(const std::vector<float> &v);
GgufValue ggufInt32Array(const std::vector<int32_t> &v);

} // namespace lrq
