#include "core/io/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <sstream>

#include "core/common/error.h"

namespace lrq {

namespace {

constexpr uint32_t kMaxDims = 4;    // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8; // guards the recursion on hostile files
constexpr uint64_t kMaxNestedArrays = 1u << 20;
constexpr uint64_t kDefaultAlignment = 32;

std::string u64(uint64_t v) {
  return std::to_string(v);
}

// Smallest number of bytes one value of the type can occupy in the file.
uint64_t minimumEncodedSize(GgufValueType t) {
  if (t == GgufValueType::String) // the length prefix
    return 8;
  if (t == GgufValueType::Array) // element type + count
    return 12;
  const uint64_t bytes = ggufScalarBytes(t);
  return bytes > 0 ? bytes : 1;
}

bool knownValueType(uint32_t t) {
  return t <= static_cast<uint32_t>(GgufValueType::Float64);
}

// Bounds-checked little-endian cursor over the mapping.
class Cursor {
public:
  Cursor(const std::string &path, const uint8_t *data, uint64_t size)
      : path_(path), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  uint64_t size() const { return size_; }

  [[noreturn]] void fail(const std::string &problem) const { throw FileError(path_, problem); }

  void need(uint64_t n, const std::string &what) const {
    if (n > left())
      fail(what + " at offset " + u64(pos_) + " runs past the end of the file (size " + u64(size_) +
           ")");
  }

  template <typename T> T read(const std::string &what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }

  // Pointer to the next n bytes, which the cursor then skips.
  const uint8_t *take(uint64_t n, const std::string &what) {
    need(n, what);
    const uint8_t *p = data_ + pos_;
    pos_ += n;
    return p;
  }

  std::string readString(const std::string &what) {
    const uint64_t start = pos_;
    const auto len = read<uint64_t>(what + " length");
    if (len > left())
      fail(what + " at offset " + u64(start) + ": length " + u64(len) +
           " runs past the end of the file (size " + u64(size_) + ")");
    std::string s(reinterpret_cast<const char *>(data_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

private:
  const std::string &path_;
  const uint8_t *data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

GgufValue readValue(Cursor &cur, GgufValueType type, const std::string &key, int depth);

GgufValue readArray(Cursor &cur, const std::string &key, int depth) {
  if (depth >= kMaxArrayNesting)
    cur.fail("metadata key " + key + ": arrays nested more than " +
             std::to_string(kMaxArrayNesting) + " deep");
  const auto rawType = cur.read<uint32_t>("metadata key " + key + ": array element type");
  if (!knownValueType(rawType))
    cur.fail("metadata key " + key + ": unknown array element type " + std::to_string(rawType));
  const auto elementType = static_cast<GgufValueType>(rawType);
  const uint64_t start = cur.pos();
  const auto count = cur.read<uint64_t>("metadata key " + key + ": array length");
  // Every element needs at least this many bytes, so the count cannot exceed
  // what is left; this also bounds the allocations below.
  const uint64_t minSize = minimumEncodedSize(elementType);
  if (count > cur.left() / minSize)
    cur.fail("metadata key " + key + ": array of " + u64(count) + " " +
             ggufValueTypeName(elementType) + " elements at offset " + u64(start) +
             " runs past the end of the file (size " + u64(cur.size()) + ")");
  if (elementType == GgufValueType::String) {
    std::vector<std::string> items;
    items.reserve(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i)
      items.push_back(cur.readString("metadata key " + key + ": string"));
    return GgufValue::stringArray(std::move(items));
  }
  if (elementType == GgufValueType::Array) {
    // Each nested array costs far more memory than its 12 bytes in the file;
    // real files nest only small arrays.
    if (count > kMaxNestedArrays)
      cur.fail("metadata key " + key + ": array of " + u64(count) +
               " arrays is more than this reader accepts (" + u64(kMaxNestedArrays) + ")");
    std::vector<GgufValue> items;
    items.reserve(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i)
      items.push_back(readArray(cur, key, depth + 1));
    return GgufValue::nestedArray(std::move(items));
  }
  const uint64_t bytes = count * minSize;
  const uint8_t *p = cur.take(bytes, "metadata key " + key + ": array data");
  if (elementType == GgufValueType::Bool)
    for (uint64_t i = 0; i < count; ++i)
      if (p[i] > 1)
        cur.fail("metadata key " + key + ": bool array element " + u64(i) + " is " +
                 std::to_string(p[i]) + ", not 0 or 1");
  return GgufValue::packedArray(elementType, std::vector<uint8_t>(p, p + bytes));
}

GgufValue readValue(Cursor &cur, GgufValueType type, const std::string &key, int depth) {
  const std::string what = "metadata key " + key + ": value";
  switch (type) {
  case GgufValueType::UInt8:
    return GgufValue::unsignedInt(type, cur.read<uint8_t>(what));
  case GgufValueType::Int8:
    return GgufValue::signedInt(type, cur.read<int8_t>(what));
  case GgufValueType::UInt16:
    return GgufValue::unsignedInt(type, cur.read<uint16_t>(what));
  case GgufValueType::Int16:
    return GgufValue::signedInt(type, cur.read<int16_t>(what));
  case GgufValueType::UInt32:
    return GgufValue::unsignedInt(type, cur.read<uint32_t>(what));
  case GgufValueType::Int32:
    return GgufValue::signedInt(type, cur.read<int32_t>(what));
  case GgufValueType::UInt64:
    return GgufValue::unsignedInt(type, cur.read<uint64_t>(what));
  case GgufValueType::Int64:
    return GgufValue::signedInt(type, cur.read<int64_t>(what));
  case GgufValueType::Float32:
    return GgufValue::floating(type, cur.read<float>(what));
  case GgufValueType::Float64:
    return GgufValue::floating(type, cur.read<double>(what));
  case GgufValueType::Bool: {
    const auto b = cur.read<uint8_t>(what);
    if (b > 1)
      cur.fail("metadata key " + key + ": bool value " + std::to_string(b) + " is not 0 or 1");
    return GgufValue::boolean(b != 0);
  }
  case GgufValueType::String:
    return GgufValue::string(cur.readString("metadata key " + key + ": string"));
  case GgufValueType::Array:
    return readArray(cur, key, depth);
  }
  cur.fail("metadata key " + key + ": unknown value type " +
           std::to_string(static_cast<uint32_t>(type)));
}

bool mulOverflows(uint64_t a, uint64_t b, uint64_t *out) {
  return __builtin_mul_overflow(a, b, out);
}

} // namespace

// --- GgufValue ----------------------------------------------------------------

uint64_t ggufScalarBytes(GgufValueType type) {
  switch (type) {
  case GgufValueType::UInt8:
  case GgufValueType::Int8:
  case GgufValueType::Bool:
    return 1;
  case GgufValueType::UInt16:
  case GgufValueType::Int16:
    return 2;
  case GgufValueType::UInt32:
  case GgufValueType::Int32:
  case GgufValueType::Float32:
    return 4;
  case GgufValueType::UInt64:
  case GgufValueType::Int64:
  case GgufValueType::Float64:
    return 8;
  case GgufValueType::String:
  case GgufValueType::Array:
    break;
  }
  return 0;
}

const char *ggufValueTypeName(GgufValueType type) {
  switch (type) {
  case GgufValueType::UInt8:
    return "uint8";
  case GgufValueType::Int8:
    return "int8";
  case GgufValueType::UInt16:
    return "uint16";
  case GgufValueType::Int16:
    return "int16";
  case GgufValueType::UInt32:
    return "uint32";
  case GgufValueType::Int32:
    return "int32";
  case GgufValueType::Float32:
    return "float32";
  case GgufValueType::Bool:
    return "bool";
  case GgufValueType::String:
    return "string";
  case GgufValueType::Array:
    return "array";
  case GgufValueType::UInt64:
    return "uint64";
  case GgufValueType::Int64:
    return "int64";
  case GgufValueType::Float64:
    return "float64";
  }
  return "unknown";
}

GgufValue GgufValue::unsignedInt(GgufValueType type, uint64_t v) {
  GgufValue out;
  out.type_ = type;
  out.unsigned_ = v;
  return out;
}

GgufValue GgufValue::signedInt(GgufValueType type, int64_t v) {
  GgufValue out;
  out.type_ = type;
  out.signed_ = v;
  return out;
}

GgufValue GgufValue::floating(GgufValueType type, double v) {
  GgufValue out;
  out.type_ = type;
  out.float_ = v;
  return out;
}

GgufValue GgufValue::boolean(bool v) {
  GgufValue out;
  out.type_ = GgufValueType::Bool;
  out.unsigned_ = v ? 1 : 0;
  return out;
}

GgufValue GgufValue::string(std::string v) {
  GgufValue out;
  out.type_ = GgufValueType::String;
  out.string_ = std::move(v);
  return out;
}

GgufValue GgufValue::packedArray(GgufValueType elementType, std::vector<uint8_t> bytes) {
  GgufValue out;
  out.type_ = GgufValueType::Array;
  out.elementType_ = elementType;
  out.packed_ = std::move(bytes);
  return out;
}

GgufValue GgufValue::stringArray(std::vector<std::string> items) {
  GgufValue out;
  out.type_ = GgufValueType::Array;
  out.elementType_ = GgufValueType::String;
  out.strings_ = std::move(items);
  return out;
}

GgufValue GgufValue::nestedArray(std::vector<GgufValue> items) {
  GgufValue out;
  out.type_ = GgufValueType::Array;
  out.elementType_ = GgufValueType::Array;
  out.nested_ = std::move(items);
  return out;
}

size_t GgufValue::arraySize() const {
  if (!isArray())
    return 0;
  if (elementType_ == GgufValueType::String)
    return strings_.size();
  if (elementType_ == GgufValueType::Array)
    return nested_.size();
  return packed_.size() / minimumEncodedSize(elementType_);
}

GgufValue GgufValue::item(size_t i) const {
  if (i >= arraySize())
    throw Error("GGUF array index " + std::to_string(i) + " out of range");
  if (elementType_ == GgufValueType::String)
    return string(strings_[i]);
  if (elementType_ == GgufValueType::Array)
    return nested_[i];
  const uint8_t *p = packed_.data() + i * minimumEncodedSize(elementType_);
  auto load = [p](auto v) {
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  switch (elementType_) {
  case GgufValueType::UInt8:
    return unsignedInt(elementType_, load(uint8_t{}));
  case GgufValueType::Int8:
    return signedInt(elementType_, load(int8_t{}));
  case GgufValueType::UInt16:
    return unsignedInt(elementType_, load(uint16_t{}));
  case GgufValueType::Int16:
    return signedInt(elementType_, load(int16_t{}));
  case GgufValueType::UInt32:
    return unsignedInt(elementType_, load(uint32_t{}));
  case GgufValueType::Int32:
    return signedInt(elementType_, load(int32_t{}));
  case GgufValueType::UInt64:
    return unsignedInt(elementType_, load(uint64_t{}));
  case GgufValueType::Int64:
    return signedInt(elementType_, load(int64_t{}));
  case GgufValueType::Float32:
    return floating(elementType_, load(float{}));
  case GgufValueType::Float64:
    return floating(elementType_, load(double{}));
  case GgufValueType::Bool:
    return boolean(load(uint8_t{}) != 0);
  default:
    break;
  }
  throw Error("GGUF array of unexpected element type");
}

bool GgufValue::isInteger() const {
  switch (type_) {
  case GgufValueType::UInt8:
  case GgufValueType::Int8:
  case GgufValueType::UInt16:
  case GgufValueType::Int16:
  case GgufValueType::UInt32:
  case GgufValueType::Int32:
  case GgufValueType::UInt64:
  case GgufValueType::Int64:
    return true;
  default:
    return false;
  }
}

namespace {
bool isSignedType(GgufValueType t) {
  return t == GgufValueType::Int8 || t == GgufValueType::Int16 || t == GgufValueType::Int32 ||
         t == GgufValueType::Int64;
}
} // namespace

bool GgufValue::toInt64(int64_t *out) const {
  if (!isInteger())
    return false;
  if (isSignedType(type_)) {
    *out = signed_;
    return true;
  }
  if (unsigned_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return false;
  *out = static_cast<int64_t>(unsigned_);
  return true;
}

bool GgufValue::toUInt64(uint64_t *out) const {
  if (!isInteger())
    return false;
  if (isSignedType(type_)) {
    if (signed_ < 0)
      return false;
    *out = static_cast<uint64_t>(signed_);
    return true;
  }
  *out = unsigned_;
  return true;
}

bool GgufValue::toDouble(double *out) const {
  if (isFloat()) {
    *out = float_;
    return true;
  }
  if (!isInteger())
    return false;
  *out = isSignedType(type_) ? static_cast<double>(signed_) : static_cast<double>(unsigned_);
  return true;
}

bool GgufValue::toBool(bool *out) const {
  if (!isBool())
    return false;
  *out = unsigned_ != 0;
  return true;
}

std::string GgufValue::describe() const {
  std::ostringstream os;
  if (isArray()) {
    os << "[" << ggufValueTypeName(elementType_) << " x " << arraySize() << "]";
  } else if (isString()) {
    os << '"' << (string_.size() > 60 ? string_.substr(0, 60) + "..." : string_) << '"';
  } else if (isBool()) {
    os << (unsigned_ ? "true" : "false");
  } else if (isFloat()) {
    os << float_;
  } else if (isSignedType(type_)) {
    os << signed_;
  } else {
    os << unsigned_;
  }
  return os.str();
}

// --- GgufTensorInfo -------------------------------------------------------------

std::vector<int64_t> GgufTensorInfo::shape() const {
  std::vector<int64_t> s;
  s.reserve(dims.size());
  for (auto it = dims.rbegin(); it != dims.rend(); ++it)
    s.push_back(static_cast<int64_t>(*it));
  return s;
}

// --- GgufReader ---------------------------------------------------------------

void GgufReader::fail(const std::string &problem) const {
  throw FileError(path(), problem);
}

void GgufReader::keyError(const std::string &key, const std::string &problem) const {
  throw FileError(path(), "metadata key " + key + ": " + problem);
}

GgufReader::GgufReader(const std::string &path) : file_(path) {
  static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE float sizes expected");
  Cursor cur(file_.path(), file_.data(), file_.size());

  if (file_.size() < 4)
    fail("not a GGUF file: only " + u64(file_.size()) + " bytes, too short for the magic");
  if (std::memcmp(file_.data(), "GGUF", 4) != 0) {
    std::ostringstream os;
    os << "not a GGUF file: bad magic" << std::hex;
    for (int i = 0; i < 4; ++i) {
      const unsigned c = file_.data()[i];
      os << ' ' << (c < 16 ? "0" : "") << c;
    }
    os << " (expected \"GGUF\")";
    fail(os.str());
  }
  cur.read<uint32_t>("magic");
  version_ = cur.read<uint32_t>("header: version");
  if (version_ == 1)
    fail("GGUF version 1 is not supported (only versions 2 and 3)");
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xFFFFu) == 0 && version_ != 0)
      fail("GGUF version " + u64(version_) +
           " looks byte-swapped: big-endian GGUF files are not supported");
    fail("unsupported GGUF version " + u64(version_) + " (only versions 2 and 3)");
  }
  const auto tensorCount = cur.read<uint64_t>("header: tensor count");
  const auto kvCount = cur.read<uint64_t>("header: metadata count");

  // Each metadata entry needs a key length, a type and at least one byte of
  // value; each tensor info a name length, a dimension count, a type and an
  // offset. Counts that cannot fit in the file are rejected before any
  // allocation is sized by them.
  if (kvCount > cur.left() / 13)
    fail("header: metadata count " + u64(kvCount) + " is impossible, only " + u64(cur.left()) +
         " bytes follow the header");
  if (tensorCount > cur.left() / 24)
    fail("header: tensor count " + u64(tensorCount) + " is impossible, only " + u64(cur.left()) +
         " bytes follow the header");

  metadata_.reserve(static_cast<size_t>(kvCount));
  for (uint64_t i = 0; i < kvCount; ++i) {
    std::string key = cur.readString("metadata key #" + u64(i));
    const auto rawType = cur.read<uint32_t>("metadata key " + key + ": value type");
    if (!knownValueType(rawType))
      fail("metadata key " + key + ": unknown value type " + u64(rawType));
    GgufValue value = readValue(cur, static_cast<GgufValueType>(rawType), key, 0);
    if (metadataIndex_.count(key))
      fail("duplicate metadata key " + key);
    metadataIndex_.emplace(key, metadata_.size());
    metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue *a = find("general.alignment")) {
    uint64_t align = 0;
    if (!a->toUInt64(&align))
      keyError("general.alignment", std::string("has type ") + ggufValueTypeName(a->type()) +
                                        ", expected an unsigned integer");
    if (align == 0 || (align & (align - 1)) != 0 || align > (1u << 30))
      keyError("general.alignment", u64(align) + " is not a power of two up to 2^30");
    alignment_ = align;
  } else {
    alignment_ = kDefaultAlignment;
  }

  tensors_.reserve(static_cast<size_t>(tensorCount));
  for (uint64_t i = 0; i < tensorCount; ++i) {
    GgufTensorInfo info;
    info.name = cur.readString("tensor info #" + u64(i) + ": name");
    const std::string what = "tensor " + info.name;
    const auto nDims = cur.read<uint32_t>(what + ": dimension count");
    if (nDims == 0 || nDims > kMaxDims)
      fail(what + ": " + u64(nDims) + " dimensions (1 to " + u64(kMaxDims) + " supported)");
    uint64_t numel = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < nDims; ++d) {
      const auto ne = cur.read<uint64_t>(what + ": dimensions");
      info.dims.push_back(ne);
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          mulOverflows(numel, ne, &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        overflow = true;
    }
    if (overflow) {
      std::string dims;
      for (uint64_t ne : info.dims)
        dims += (dims.empty() ? "" : ", ") + u64(ne);
      fail(what + ": dimensions [" + dims + "] overflow the element count");
    }
    const auto rawType = cur.read<uint32_t>(what + ": type");
    const GgmlTypeTraits *traits = ggmlTypeTraits(rawType);
    if (!traits)
      fail(what + ": unknown tensor type " + u64(rawType));
    info.type = traits->type;
    info.offset = cur.read<uint64_t>(what + ": offset");
    if (info.dims[0] % static_cast<uint64_t>(traits->blockSize) != 0)
      fail(what + ": row length " + u64(info.dims[0]) + " is not a multiple of the " +
           traits->name + " block size " + std::to_string(traits->blockSize));
    info.numel = static_cast<int64_t>(numel);
    if (mulOverflows(numel / static_cast<uint64_t>(traits->blockSize),
                     static_cast<uint64_t>(traits->typeSize), &info.nbytes))
      fail(what + ": data size overflows");
    if (tensorIndex_.count(info.name))
      fail("duplicate tensor name " + info.name);
    tensorIndex_.emplace(info.name, tensors_.size());
    tensors_.push_back(std::move(info));
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t end = cur.pos();
  dataOffset_ = (end + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t fileSize = file_.size();
  for (const GgufTensorInfo &t : tensors_) {
    const std::string what = "tensor " + t.name;
    if (t.offset % alignment_ != 0)
      fail(what + ": offset " + u64(t.offset) + " is not a multiple of the alignment " +
           u64(alignment_));
    uint64_t begin = 0, stop = 0;
    if (__builtin_add_overflow(dataOffset_, t.offset, &begin) ||
        __builtin_add_overflow(begin, t.nbytes, &stop))
      fail(what + ": data offset " + u64(t.offset) + " (" + u64(t.nbytes) +
           " bytes) lies past the end of the file (size " + u64(fileSize) + ")");
    if (stop > fileSize)
      fail(what + ": data [" + u64(begin) + ", " + u64(stop) +
           ") lies past the end of the file (size " + u64(fileSize) + ")");
  }
  // Tensors must not share bytes.
  std::vector<const GgufTensorInfo *> byOffset;
  byOffset.reserve(tensors_.size());
  for (const auto &t : tensors_)
    if (t.nbytes > 0)
      byOffset.push_back(&t);
  std::sort(byOffset.begin(), byOffset.end(),
            [](const GgufTensorInfo *a, const GgufTensorInfo *b) { return a->offset < b->offset; });
  for (size_t i = 1; i < byOffset.size(); ++i)
    if (byOffset[i - 1]->offset + byOffset[i - 1]->nbytes > byOffset[i]->offset)
      fail("tensors " + byOffset[i - 1]->name + " and " + byOffset[i]->name +
           " overlap in the data section");
}

const GgufValue *GgufReader::find(const std::string &key) const {
  auto it = metadataIndex_.find(key);
  return it == metadataIndex_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufValue &GgufReader::require(const std::string &key) const {
  const GgufValue *v = find(key);
  if (!v)
    fail("missing metadata key " + key);
  return *v;
}

int64_t GgufReader::getInt(const std::string &key) const {
  const GgufValue &v = require(key);
  int64_t out = 0;
  if (!v.toInt64(&out))
    keyError(key, std::string("has type ") + ggufValueTypeName(v.type()) + " (" + v.describe() +
                      "), expected an integer");
  return out;
}

int64_t GgufReader::getInt(const std::string &key, int64_t fallback) const {
  return has(key) ? getInt(key) : fallback;
}

double GgufReader::getFloat(const std::string &key) const {
  const GgufValue &v = require(key);
  double out = 0;
  if (!v.toDouble(&out))
    keyError(key, std::string("has type ") + ggufValueTypeName(v.type()) + ", expected a number");
  return out;
}

double GgufReader::getFloat(const std::string &key, double fallback) const {
  return has(key) ? getFloat(key) : fallback;
}

bool GgufReader::getBool(const std::string &key, bool fallback) const {
  const GgufValue *v = find(key);
  if (!v)
    return fallback;
  bool out = false;
  if (!v->toBool(&out))
    keyError(key, std::string("has type ") + ggufValueTypeName(v->type()) + ", expected a bool");
  return out;
}

std::string GgufReader::getString(const std::string &key) const {
  const GgufValue &v = require(key);
  if (!v.isString())
    keyError(key, std::string("has type ") + ggufValueTypeName(v.type()) + ", expected a string");
  return v.str();
}

std::string GgufReader::getString(const std::string &key, const std::string &fallback) const {
  return has(key) ? getString(key) : fallback;
}

std::vector<std::string> GgufReader::getStringArray(const std::string &key) const {
  const GgufValue &v = require(key);
  if (!v.isArray() || v.elementType() != GgufValueType::String)
    keyError(key, "has type " + std::string(ggufValueTypeName(v.type())) +
                      (v.isArray() ? std::string(" of ") + ggufValueTypeName(v.elementType())
                                   : std::string()) +
                      ", expected an array of strings");
  return v.strings();
}

std::vector<double> GgufReader::getFloatArray(const std::string &key) const {
  const GgufValue &v = require(key);
  std::vector<double> out;
  if (v.isArray()) {
    const size_t n = v.arraySize();
    out.reserve(n);
    for (size_t k = 0; k < n; ++k) {
      const GgufValue item = v.item(k);
      double d = 0;
      if (!item.toDouble(&d))
        break;
      out.push_back(d);
    }
    if (out.size() == v.arraySize())
      return out;
  }
  keyError(key, std::string("has type ") + ggufValueTypeName(v.type()) +
                    ", expected an array of numbers");
}

std::vector<int64_t> GgufReader::getIntArray(const std::string &key) const {
  const GgufValue &v = require(key);
  std::vector<int64_t> out;
  if (v.isArray()) {
    const size_t n = v.arraySize();
    out.reserve(n);
    for (size_t k = 0; k < n; ++k) {
      const GgufValue item = v.item(k);
      int64_t i = 0;
      if (!item.toInt64(&i))
        break;
      out.push_back(i);
    }
    if (out.size() == v.arraySize())
      return out;
  }
  keyError(key, std::string("has type ") + ggufValueTypeName(v.type()) +
                    ", expected an array of integers");
}

const GgufTensorInfo *GgufReader::findTensor(const std::string &name) const {
  auto it = tensorIndex_.find(name);
  return it == tensorIndex_.end() ? nullptr : &tensors_[it->second];
}

const uint8_t *GgufReader::tensorData(const GgufTensorInfo &info) const {
  return file_.data() + dataOffset_ + info.offset;
}

void GgufReader::releasePages(const GgufTensorInfo &info) const {
  file_.adviseDontNeed(static_cast<size_t>(dataOffset_ + info.offset),
                       static_cast<size_t>(info.nbytes));
}

} // namespace lrq
