#include "core/io/safetensors.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/common/error.h"
#include "core/io/file_util.h"
#include "core/io/ggml_quants.h"

// The LibTorch side of safetensors: converting tensors to and from files. The
// header parser (safetensors.cpp) stays free of LibTorch so it can be fuzzed
// on its own (tests/fuzz).
namespace lrq {

at::Tensor SafetensorsReader::load(const SafetensorsTensorInfo &info) const {
  // The bytes come through MappedFile::read, never from the mapping itself: a
  // file truncated under the run is then an error, not SIGBUS.
  const uint64_t offset = dataOffset_ + info.begin;
  at::Tensor out = at::empty(info.shape, at::TensorOptions().dtype(at::kFloat));
  const int64_t n = out.numel();
  float *dst = out.data_ptr<float>();
  if (info.dtype == "F32") {
    file_.read(offset, static_cast<size_t>(n) * sizeof(float), dst);
  } else if (info.dtype == "F16" || info.dtype == "BF16") {
    const bool half = info.dtype == "F16";
    std::vector<uint16_t> bits(static_cast<size_t>(n));
    file_.read(offset, bits.size() * sizeof(uint16_t), bits.data());
    at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        dst[i] = half ? halfBitsToFloat(bits[size_t(i)]) : bf16BitsToFloat(bits[size_t(i)]);
    });
  } else {
    fail("tensor " + info.name + " has dtype " + info.dtype +
         ", which cannot be loaded as float (supported: F32, F16, BF16)");
  }
  return out;
}

at::Tensor SafetensorsReader::loadBytes(const SafetensorsTensorInfo &info) const {
  at::Tensor out = at::empty({static_cast<int64_t>(info.end - info.begin)}, at::kByte);
  file_.read(dataOffset_ + info.begin, static_cast<size_t>(info.end - info.begin),
             out.data_ptr<uint8_t>());
  return out;
}

at::Tensor SafetensorsReader::load(const std::string &name) const {
  const SafetensorsTensorInfo *info = find(name);
  if (!info)
    fail("no tensor named " + name);
  return load(*info);
}

void writeSafetensors(const std::string &path,
                      const std::vector<std::pair<std::string, at::Tensor>> &tensors,
                      const std::map<std::string, std::string> &metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto &kv : metadata)
      meta[kv.first] = kv.second;
    header["__metadata__"] = meta;
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto &[name, tensor] : tensors) {
    if (name.empty() || name == "__metadata__")
      throw Error("safetensors: '" + name + "' cannot be a tensor name");
    if (!names.insert(name).second)
      throw Error("safetensors: duplicate tensor name " + name);
    if (!tensor.defined())
      throw Error("safetensors: tensor " + name + " is undefined");
    const char *dtype = nullptr;
    switch (tensor.scalar_type()) {
    case at::kFloat:
      dtype = "F32";
      break;
    case at::kHalf:
      dtype = "F16";
      break;
    case at::kBFloat16:
      dtype = "BF16";
      break;
    default:
      throw Error("safetensors: tensor " + name + " has dtype " +
                  std::string(c10::toString(tensor.scalar_type())) +
                  "; only float32, float16 and bfloat16 can be written");
    }
    const auto bytes = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
    header[name] = {{"dtype", dtype},
                    {"shape", tensor.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t headerLen = text.size();

  AtomicFileWriter out(path);
  out.write(&headerLen, sizeof headerLen);
  out.write(text);
  // One tensor at a time, so device or strided tensors cost one copy each.
  for (const auto &entry : tensors) {
    const at::Tensor t = entry.second.detach().to(at::kCPU).contiguous();
    out.write(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
  }
  out.commit();
}

} // namespace lrq
