#include "core/io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "core/common/error.h"
#include "core/common/json_limits.h"
#include "core/common/text_escape.h"
#include "core/io/file_util.h"
#include "core/io/ggml_quants.h"

namespace lrq {

namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// The reference implementation refuses headers above 100 MB; so do we, before
// the JSON parser allocates anything.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

int dtypeSize(const std::string &dtype) {
  static const std::pair<const char *, int> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8},
  };
  for (const auto &s : kSizes)
    if (dtype == s.first)
      return s.second;
  return 0;
}

std::string shapeText(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string jsonErrorText(const std::exception &e) {
  std::string what = e.what();
  const size_t close = what.find("] ");
  return close == std::string::npos ? what : what.substr(close + 2);
}

} // namespace

int64_t SafetensorsTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

void SafetensorsReader::fail(const std::string &problem) const {
  throw FileError(path(), problem);
}

SafetensorsReader::SafetensorsReader(const std::string &path) : file_(path) {
  const uint64_t size = file_.size();
  if (size < 8)
    fail("not a safetensors file: " + std::to_string(size) +
         " bytes, too short for the header length");
  uint64_t headerLen = 0;
  std::memcpy(&headerLen, file_.data(), sizeof headerLen);
  if (headerLen > size - 8)
    fail("header length " + std::to_string(headerLen) + " runs past the end of the file (size " +
         std::to_string(size) + ")");
  if (headerLen > kMaxHeaderBytes)
    fail("header length " + std::to_string(headerLen) + " exceeds the 100 MB limit");
  if (headerLen < 2)
    fail("header of " + std::to_string(headerLen) + " bytes cannot hold a JSON object");
  dataOffset_ = 8 + headerLen;
  const uint64_t dataSize = size - dataOffset_;

  // The header's layout nests three levels ({name: {shape: [...]}}) and holds
  // about ten values per tensor: bound both before parsing, so a header of
  // nested or tiny arrays cannot cost gigabytes of parsed values.
  JsonLimits limits;
  limits.maxBytes = kMaxHeaderBytes;
  limits.maxDepth = 8;
  limits.maxElements = size_t(4) << 20;
  const std::string problem = jsonLimitProblem(
      std::string_view(reinterpret_cast<const char *>(file_.data()) + 8, headerLen), limits);
  if (!problem.empty())
    fail("header " + problem);
  json header;
  try {
    header = json::parse(file_.data() + 8, file_.data() + 8 + headerLen);
  } catch (const json::exception &e) {
    fail("header is not valid JSON: " + jsonErrorText(e));
  }
  if (!header.is_object())
    fail("header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string &name = it.key();
    const json &v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object())
        fail("header: __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail("header: __metadata__ value of '" + m.key() + "' is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string what = "tensor " + name;
    if (!v.is_object())
      fail(what + ": header entry is not an object");
    SafetensorsTensorInfo info;
    info.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string())
      fail(what + ": missing or non-string dtype");
    info.dtype = dt->get<std::string>();
    const int elemSize = dtypeSize(info.dtype);
    if (elemSize == 0)
      fail(what + ": unknown dtype '" + info.dtype + "'");
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array())
      fail(what + ": missing or non-list shape");
    if (sh->size() > 8)
      fail(what + ": " + std::to_string(sh->size()) + " dimensions are too many");
    uint64_t numel = 1;
    for (const json &d : *sh) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        fail(what + ": shape entries must be non-negative integers");
      const auto dim = d.get<uint64_t>();
      if (__builtin_mul_overflow(numel, dim, &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(what + ": shape overflows the element count");
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_integer() ||
        !(*off)[1].is_number_integer() || (*off)[0].get<int64_t>() < 0 ||
        (*off)[1].get<int64_t>() < 0)
      fail(what + ": data_offsets must be two non-negative integers");
    info.begin = (*off)[0].get<uint64_t>();
    info.end = (*off)[1].get<uint64_t>();
    if (info.begin > info.end)
      fail(what + ": data_offsets [" + std::to_string(info.begin) + ", " +
           std::to_string(info.end) + ") end before they begin");
    if (info.end > dataSize)
      fail(what + ": data_offsets [" + std::to_string(info.begin) + ", " +
           std::to_string(info.end) + ") lie past the end of the file (data section of " +
           std::to_string(dataSize) + " bytes)");
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(elemSize), &bytes) ||
        bytes != info.end - info.begin)
      fail(what + ": shape " + shapeText(info.shape) + " of " + info.dtype + " needs " +
           std::to_string(numel) + " x " + std::to_string(elemSize) +
           " bytes but data_offsets span " + std::to_string(info.end - info.begin));
    tensors_.push_back(std::move(info));
  }

  std::stable_sort(tensors_.begin(), tensors_.end(),
                   [](const SafetensorsTensorInfo &a, const SafetensorsTensorInfo &b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  // A tensor with no elements occupies no bytes, so it overlaps nothing (the
  // writer gives it an empty range where the next tensor begins).
  const SafetensorsTensorInfo *previous = nullptr;
  for (const SafetensorsTensorInfo &t : tensors_) {
    if (t.begin == t.end)
      continue;
    if (previous && previous->end > t.begin)
      fail("tensors " + previous->name + " and " + t.name + " overlap in the data section");
    previous = &t;
  }
  for (size_t i = 0; i < tensors_.size(); ++i)
    index_.emplace(tensors_[i].name, i);
}

const SafetensorsTensorInfo *SafetensorsReader::find(const std::string &name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsReader::releasePages(const SafetensorsTensorInfo &info) const {
  file_.adviseDontNeed(static_cast<size_t>(dataOffset_ + info.begin),
                       static_cast<size_t>(info.end - info.begin));
}

SafetensorsIndex readSafetensorsIndex(const std::string &path) {
  if (directoryExists(path))
    throw FileError(path, "is a directory, not a file");
  const std::string text = readTextFileLimited(path, defaultJsonLimits().maxBytes);
  checkJsonLimits(text, path);
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception &e) {
    throw FileError(path, "is not valid JSON: " + jsonErrorText(e));
  }
  if (!root.is_object())
    throw FileError(path, "is not a JSON object");
  auto wm = root.find("weight_map");
  if (wm == root.end() || !wm->is_object())
    throw FileError(path, "missing key 'weight_map' (an object of tensor -> file)");
  SafetensorsIndex index;
  index.path = path;
  std::set<std::string> seen;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string())
      throw FileError(path,
                      "weight_map entry '" + printableText(it.key()) + "' is not a file name");
    const std::string shard = it.value().get<std::string>();
    // A NUL would end the name where open() reads it: "x\0/../y" opens "x".
    if (shard.empty() || shard.find('/') != std::string::npos ||
        shard.find('\0') != std::string::npos || shard == "." || shard == "..")
      throw FileError(path, "weight_map entry '" + printableText(it.key()) + "' names '" +
                                printableText(shard) +
                                "', which is not a file in the same directory");
    index.weightMap[it.key()] = shard;
    if (seen.insert(shard).second)
      index.shards.push_back(shard);
  }
  if (index.weightMap.empty())
    throw FileError(path, "weight_map is empty");
  std::sort(index.shards.begin(), index.shards.end());
  return index;
}

void writeSafetensorsIndex(const std::string &path, const SafetensorsIndex &index,
                           uint64_t totalSize) {
  ordered_json root;
  root["metadata"] = {{"total_size", totalSize}};
  ordered_json wm = ordered_json::object();
  for (const auto &kv : index.weightMap)
    wm[kv.first] = kv.second;
  root["weight_map"] = wm;
  AtomicFileWriter out(path);
  out.write(root.dump(2) + "\n");
  out.commit();
}

} // namespace lrq
