#pragma once
// Reader for GGUF v2 and v3 files (llama.cpp's model format) over a read-only
// mapping. Every count, length and offset read from the file is checked
// against the bytes that are actually there before it is used, so corrupt
// files give an lrq::FileError naming the file and the problem.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/io/ggml_quants.h"
#include "core/io/mapped_file.h"

// at::Tensor only appears in declarations here: the parsers compile without
// LibTorch (tests/fuzz builds them alone).
namespace at {
class Tensor;
} // namespace at

namespace lrq {

enum class GgufValueType : uint32_t {
  UInt8 = 0,
  Int8 = 1,
  UInt16 = 2,
  Int16 = 3,
  UInt32 = 4,
  Int32 = 5,
  Float32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  UInt64 = 10,
  Int64 = 11,
  Float64 = 12,
};

// "uint32", "string", "array", ...
const char *ggufValueTypeName(GgufValueType type);
// Bytes of one value of a fixed-size scalar type (1, 2, 4 or 8); 0 for
// strings and arrays, whose size depends on their content.
uint64_t ggufScalarBytes(GgufValueType type);

// One metadata value: a scalar, a string or an array of values (arrays may
// nest). Integers keep their own signedness; accessors convert with range
// checks and return false when the conversion would lose meaning. Arrays of
// numbers are kept packed as in the file and arrays of strings as strings, so
// the memory a file can make the reader allocate stays proportional to its size.
class GgufValue {
public:
  GgufValue() = default;
  static GgufValue unsignedInt(GgufValueType type, uint64_t v);
  static GgufValue signedInt(GgufValueType type, int64_t v);
  static GgufValue floating(GgufValueType type, double v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  // Array of numbers or bools: elements little-endian back to back.
  static GgufValue packedArray(GgufValueType elementType, std::vector<uint8_t> bytes);
  static GgufValue stringArray(std::vector<std::string> items);
  static GgufValue nestedArray(std::vector<GgufValue> items); // array of arrays

  GgufValueType type() const { return type_; }
  bool isInteger() const;
  bool isFloat() const {
    return type_ == GgufValueType::Float32 || type_ == GgufValueType::Float64;
  }
  bool isNumber() const { return isInteger() || isFloat(); }
  bool isBool() const { return type_ == GgufValueType::Bool; }
  bool isString() const { return type_ == GgufValueType::String; }
  bool isArray() const { return type_ == GgufValueType::Array; }

  // Conversions; false when the type does not fit (e.g. a negative value as
  // unsigned, a string as a number).
  bool toInt64(int64_t *out) const;
  bool toUInt64(uint64_t *out) const;
  bool toDouble(double *out) const; // any number
  bool toBool(bool *out) const;     // bool only

  const std::string &str() const { return string_; } // "" unless a string

  // Arrays (size 0 for non-arrays).
  GgufValueType elementType() const { return elementType_; }
  size_t arraySize() const;
  GgufValue item(size_t i) const; // element i as a value of its own
  // The elements of an array of strings (empty otherwise).
  const std::vector<std::string> &strings() const { return strings_; }
  // The elements of an array of numbers or bools, little-endian as in the file.
  const std::vector<uint8_t> &packedBytes() const { return packed_; }

  // Short human-readable rendering ("42", "\"llama\"", "[string x 49152]").
  std::string describe() const;

private:
  GgufValueType type_ = GgufValueType::UInt8;
  uint64_t unsigned_ = 0;
  int64_t signed_ = 0;
  double float_ = 0.0;
  std::string string_;
  GgufValueType elementType_ = GgufValueType::UInt8;
  std::vector<uint8_t> packed_;      // arrays of numbers / bools
  std::vector<std::string> strings_; // arrays of strings
  std::vector<GgufValue> nested_;    // arrays of arrays
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims; // GGUF order: ne0 (fastest varying) first
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0; // relative to the data section
  uint64_t nbytes = 0; // bytes of data
  int64_t numel = 0;
  // Row-major shape: dims reversed ([ne1, ne0] for a matrix).
  std::vector<int64_t> shape() const;
  std::string typeName() const { return ggmlTypeName(type); }
};

class GgufReader {
public:
  // Maps and parses the file; throws lrq::FileError on any inconsistency.
  explicit GgufReader(const std::string &path);

  const std::string &path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t dataOffset() const { return dataOffset_; } // absolute offset of the data section
  uint64_t fileSize() const { return file_.size(); }

  // Metadata in file order, and lookup by key.
  const std::vector<std::pair<std::string, GgufValue>> &metadata() const { return metadata_; }
  const GgufValue *find(const std::string &key) const;
  bool has(const std::string &key) const { return find(key) != nullptr; }

  // Typed getters: throw lrq::FileError naming the key when it is missing
  // (the variants without a default) or has the wrong type.
  int64_t getInt(const std::string &key) const;
  int64_t getInt(const std::string &key, int64_t fallback) const;
  double getFloat(const std::string &key) const;
  double getFloat(const std::string &key, double fallback) const;
  bool getBool(const std::string &key, bool fallback) const;
  std::string getString(const std::string &key) const;
  std::string getString(const std::string &key, const std::string &fallback) const;
  std::vector<std::string> getStringArray(const std::string &key) const;
  std::vector<double> getFloatArray(const std::string &key) const;
  std::vector<int64_t> getIntArray(const std::string &key) const;

  const std::vector<GgufTensorInfo> &tensors() const { return tensors_; }
  const GgufTensorInfo *findTensor(const std::string &name) const;
  // Raw bytes of a tensor inside the mapping (valid while the reader lives).
  const uint8_t *tensorData(const GgufTensorInfo &info) const;
  // Dequantized float32 copy with shape info.shape(); throws lrq::FileError
  // for types that cannot be dequantized.
  at::Tensor loadTensor(const GgufTensorInfo &info) const;
  at::Tensor loadTensor(const std::string &name) const;
  // Drops the tensor's file pages from the resident set once it is copied.
  void releasePages(const GgufTensorInfo &info) const;

private:
  [[noreturn]] void fail(const std::string &problem) const;
  [[noreturn]] void keyError(const std::string &key, const std::string &problem) const;
  const GgufValue &require(const std::string &key) const;

  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t dataOffset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::map<std::string, size_t> metadataIndex_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensorIndex_;
};

} // namespace lrq
