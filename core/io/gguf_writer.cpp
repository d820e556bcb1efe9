#include "core/io/gguf_writer.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <regex>
#include <set>

#include "core/common/error.h"
#include "core/io/file_util.h"

namespace lrq {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kGgufVersion = 3;

// Little-endian byte sink for the header (the hosts this builds on are
// little-endian, as GGUF is; checked below).
class HeaderBytes {
public:
  template <typename T> void put(T v) {
    uint8_t raw[sizeof v];
    std::memcpy(raw, &v, sizeof v);
    bytes_.insert(bytes_.end(), raw, raw + sizeof v);
  }
  void putString(const std::string &s) {
    put<uint64_t>(s.size());
    bytes_.insert(bytes_.end(), s.begin(), s.end());
  }
  void putRaw(const std::vector<uint8_t> &b) { bytes_.insert(bytes_.end(), b.begin(), b.end()); }
  std::vector<uint8_t> &bytes() { return bytes_; }

private:
  std::vector<uint8_t> bytes_;
};

void putScalar(HeaderBytes &out, const GgufValue &v, const std::string &key) {
  int64_t i = 0;
  uint64_t u = 0;
  double d = 0;
  bool b = false;
  auto need = [&](bool ok) {
    if (!ok)
      throw Error("GGUF export: metadata key " + key + " holds a " + ggufValueTypeName(v.type()) +
                  " value that does not fit its type");
  };
  switch (v.type()) {
  case GgufValueType::UInt8:
    need(v.toUInt64(&u));
    out.put<uint8_t>(static_cast<uint8_t>(u));
    break;
  case GgufValueType::Int8:
    need(v.toInt64(&i));
    out.put<int8_t>(static_cast<int8_t>(i));
    break;
  case GgufValueType::UInt16:
    need(v.toUInt64(&u));
    out.put<uint16_t>(static_cast<uint16_t>(u));
    break;
  case GgufValueType::Int16:
    need(v.toInt64(&i));
    out.put<int16_t>(static_cast<int16_t>(i));
    break;
  case GgufValueType::UInt32:
    need(v.toUInt64(&u));
    out.put<uint32_t>(static_cast<uint32_t>(u));
    break;
  case GgufValueType::Int32:
    need(v.toInt64(&i));
    out.put<int32_t>(static_cast<int32_t>(i));
    break;
  case GgufValueType::UInt64:
    need(v.toUInt64(&u));
    out.put<uint64_t>(u);
    break;
  case GgufValueType::Int64:
    need(v.toInt64(&i));
    out.put<int64_t>(i);
    break;
  case GgufValueType::Float32:
    need(v.toDouble(&d));
    out.put<float>(static_cast<float>(d));
    break;
  case GgufValueType::Float64:
    need(v.toDouble(&d));
    out.put<double>(d);
    break;
  case GgufValueType::Bool:
    need(v.toBool(&b));
    out.put<uint8_t>(b ? 1 : 0);
    break;
  case GgufValueType::String:
    out.putString(v.str());
    break;
  case GgufValueType::Array:
    break;
  }
}

// An array's element type, count and elements (no leading value type).
void putArray(HeaderBytes &out, const GgufValue &v, const std::string &key) {
  const GgufValueType element = v.elementType();
  out.put<uint32_t>(static_cast<uint32_t>(element));
  out.put<uint64_t>(v.arraySize());
  if (element == GgufValueType::String) {
    for (const std::string &s : v.strings())
      out.putString(s);
  } else if (element == GgufValueType::Array) {
    for (size_t i = 0; i < v.arraySize(); ++i)
      putArray(out, v.item(i), key);
  } else {
    if (v.packedBytes().size() != v.arraySize() * ggufScalarBytes(element))
      throw Error("GGUF export: metadata key " + key + ": array bytes do not match its count");
    out.putRaw(v.packedBytes());
  }
}

uint64_t alignUp(uint64_t x, uint64_t a) {
  return (x + a - 1) / a * a;
}

} // namespace

uint64_t ggufTensorBytes(const GgufTensorSpec &t) {
  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(t.type));
  if (!traits)
    throw Error("GGUF export: tensor " + t.name + " has an unknown type");
  if (t.dims.empty() || t.dims.size() > 4)
    throw Error("GGUF export: tensor " + t.name + " needs 1 to 4 dimensions");
  if (t.dims[0] % static_cast<uint64_t>(traits->blockSize) != 0)
    throw Error("GGUF export: tensor " + t.name + ": row length " + std::to_string(t.dims[0]) +
                " is not a multiple of the " + traits->name + " block size " +
                std::to_string(traits->blockSize));
  uint64_t n = 1;
  for (uint64_t d : t.dims)
    n *= d;
  return n / static_cast<uint64_t>(traits->blockSize) * static_cast<uint64_t>(traits->typeSize);
}

GgufWriteResult writeGgufFile(const std::string &path,
                              const std::vector<std::pair<std::string, GgufValue>> &metadata,
                              const std::vector<GgufTensorSpec> &tensors,
                              const GgufTensorProvider &provider, const GgufWriteOptions &options,
                              ProgressObserver *observer, const CancelToken *cancel) {
  static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE float sizes expected");
  {
    const uint16_t probe = 1;
    uint8_t first = 0;
    std::memcpy(&first, &probe, 1);
    if (first != 1)
      throw Error("GGUF export: big-endian hosts are not supported");
  }
  const uint64_t align = options.alignment;
  if (align == 0 || (align & (align - 1)) != 0 || align > (1u << 30))
    throw Error("GGUF export: alignment " + std::to_string(align) +
                " is not a power of two up to 2^30");
  if (!options.overwrite && fs::exists(path))
    throw FileError(path, "already exists (choose another name or allow overwriting)");
  if (!directoryExists(parentDirectory(path)))
    throw FileError(path, "parent directory does not exist");

  // Metadata, with general.alignment made to say what the data section uses.
  std::vector<std::pair<std::string, GgufValue>> meta;
  std::set<std::string> keys;
  bool alignmentWritten = false;
  for (const auto &[key, value] : metadata) {
    if (!keys.insert(key).second)
      throw Error("GGUF export: metadata key " + key + " appears twice");
    if (key == "general.alignment") {
      meta.emplace_back(key, ggufUInt32(static_cast<uint32_t>(align)));
      alignmentWritten = true;
    } else {
      meta.emplace_back(key, value);
    }
  }
  if (!alignmentWritten && align != kGgufDefaultAlignment)
    meta.emplace_back("general.alignment", ggufUInt32(static_cast<uint32_t>(align)));

  HeaderBytes header;
  header.put<uint32_t>(0x46554747u); // "GGUF"
  header.put<uint32_t>(kGgufVersion);
  header.put<uint64_t>(tensors.size());
  header.put<uint64_t>(meta.size());
  for (const auto &[key, value] : meta) {
    header.putString(key);
    header.put<uint32_t>(static_cast<uint32_t>(value.type()));
    if (value.isArray())
      putArray(header, value, key);
    else
      putScalar(header, value, key);
  }
  std::vector<uint64_t> sizes;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const GgufTensorSpec &t : tensors) {
    if (!names.insert(t.name).second)
      throw Error("GGUF export: tensor " + t.name + " appears twice");
    sizes.push_back(ggufTensorBytes(t));
    header.putString(t.name);
    header.put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims)
      header.put<uint64_t>(d);
    header.put<uint32_t>(static_cast<uint32_t>(t.type));
    header.put<uint64_t>(offset);
    offset = alignUp(offset + sizes.back(), align);
  }
  std::vector<uint8_t> &head = header.bytes();
  const uint64_t dataOffset = alignUp(head.size(), align);
  head.resize(dataOffset, 0);

  if (observer)
    observer->started("export", int64_t(tensors.size()));
  AtomicFileWriter out(path);
  out.write(head.data(), head.size());
  const std::vector<uint8_t> zeros(align, 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (cancel)
      cancel->throwIfCancelled();
    if (options.beforeStep)
      options.beforeStep(tensors[i].name);
    const std::vector<uint8_t> data = provider(i);
    if (data.size() != sizes[i])
      throw Error("GGUF export: tensor " + tensors[i].name + ": " + std::to_string(data.size()) +
                  " bytes of data for a tensor of " + std::to_string(sizes[i]));
    out.write(data.data(), data.size());
    const uint64_t pad = alignUp(sizes[i], align) - sizes[i];
    out.write(zeros.data(), pad);
    if (observer)
      observer->progress(int64_t(i + 1), int64_t(tensors.size()), tensors[i].name);
  }
  if (cancel)
    cancel->throwIfCancelled();
  GgufWriteResult r;
  r.bytes = out.written();
  r.dataOffset = dataOffset;
  out.commit();
  if (observer)
    observer->finished();
  return r;
}

std::pair<std::string, GgmlType> parseGgufFloatOverride(const std::string &text) {
  const size_t eq = text.rfind('=');
  if (eq == std::string::npos || eq == 0)
    throw Error("GGUF float type '" + text +
                "': expected PATTERN=TYPE, TYPE one of f32, f16, q8_0, q6_k");
  std::string type = text.substr(eq + 1);
  std::transform(type.begin(), type.end(), type.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  const std::string pattern = text.substr(0, eq);
  if (pattern.compare(0, 3, "re:") == 0) {
    try {
      std::regex check(pattern.substr(3), std::regex::ECMAScript);
    } catch (const std::regex_error &e) {
      throw Error("GGUF float type '" + text + "': bad regular expression: " + e.what());
    }
  }
  if (type == "f16")
    return {pattern, GgmlType::F16};
  if (type == "f32")
    return {pattern, GgmlType::F32};
  if (type == "q8_0")
    return {pattern, GgmlType::Q8_0};
  if (type == "q6_k")
    return {pattern, GgmlType::Q6_K};
  throw Error("GGUF float type '" + text + "': type must be f32, f16, q8_0 or q6_k, not '" + type +
              "'");
}

std::vector<std::pair<std::string, GgmlType>> parseGgufFloatTypes(const std::string &list) {
  std::vector<std::pair<std::string, GgmlType>> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string::npos)
      comma = list.size();
    const std::string entry = list.substr(start, comma - start);
    if (!entry.empty())
      out.push_back(parseGgufFloatOverride(entry));
    start = comma + 1;
  }
  return out;
}

GgufValue ggufUInt32(uint32_t v) {
  return GgufValue::unsignedInt(GgufValueType::UInt32, v);
}
GgufValue ggufInt32(int32_t v) {
  return GgufValue::signedInt(GgufValueType::Int32, v);
}
GgufValue ggufUInt64(uint64_t v) {
  return GgufValue::unsignedInt(GgufValueType::UInt64, v);
}
GgufValue ggufFloat32(float v) {
  return GgufValue::floating(GgufValueType::Float32, v);
}
GgufValue ggufString(std::string v) {
  return GgufValue::string(std::move(v));
}
GgufValue ggufStringArray(std::vector<std::string> v) {
  return GgufValue::stringArray(std::move(v));
}
GgufValue ggufFloat32Array(const std::vector<float> &v) {
  std::vector<uint8_t> bytes(v.size() * sizeof(float));
  if (!v.empty())
    std::memcpy(bytes.data(), v.data(), bytes.size());
  return GgufValue::packedArray(GgufValueType::Float32, std::move(bytes));
}
GgufValue ggufInt32Array(const std::vector<int32_t> &v) {
  std::vector<uint8_t> bytes(v.size() * sizeof(int32_t));
  if (!v.empty())
    std::memcpy(bytes.data(), v.data(), bytes.size());
  return GgufValue::packedArray(GgufValueType::Int32, std::move(bytes));
}

} // namespace lrq
