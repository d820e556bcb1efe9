#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "core/common/error.h"
#include "core/io/ggml_quants.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"

// The LibTorch side of GGUF: whole tensors dequantized into at::Tensor and the
// rotary row order undone. The parsers (gguf.cpp, gguf_model.cpp,
// ggml_quants.cpp) stay free of LibTorch so they can be fuzzed on their own
// (tests/fuzz).
namespace lrq {

at::Tensor dequantizeGgmlTensor(GgmlType type, const uint8_t *src,
                                const std::vector<int64_t> &shape) {
  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(type));
  if (!traits || !traits->dequantizable)
    throw Error("dequantization of " + ggmlTypeName(type) +
                " is not supported (supported: " + ggmlDequantizableTypeNames() + ")");
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  const int64_t n = out.numel();
  if (n % traits->blockSize != 0)
    throw Error("tensor of " + std::to_string(n) + " values is not a whole number of " +
                traits->name + " blocks");
  const int64_t blocks = n / traits->blockSize;
  float *dst = out.data_ptr<float>();
  // Chunks of at least ~64K values keep the thread hand-off cheap.
  const int64_t grain = std::max<int64_t>(1, 65536 / traits->blockSize);
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    dequantizeGgml(type, src + begin * traits->typeSize, dst + begin * traits->blockSize,
                   (end - begin) * traits->blockSize);
  });
  return out;
}

at::Tensor GgufReader::loadTensor(const GgufTensorInfo &info) const {
  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(info.type));
  if (!traits || !traits->dequantizable)
    fail("tensor " + info.name + " has type " + info.typeName() +
         ", which cannot be dequantized (supported: " + ggmlDequantizableTypeNames() + ")");
  // Copied out with MappedFile::read rather than dequantized from the mapping:
  // a file truncated under the run is then an error, not SIGBUS.
  std::vector<uint8_t> bytes(static_cast<size_t>(info.nbytes));
  file_.read(dataOffset_ + info.offset, bytes.size(), bytes.data());
  return dequantizeGgmlTensor(info.type, bytes.data(), info.shape());
}

at::Tensor GgufReader::loadTensor(const std::string &name) const {
  const GgufTensorInfo *info = findTensor(name);
  if (!info)
    fail("no tensor named " + name);
  return loadTensor(*info);
}

at::Tensor unpermuteGgufRotary(const at::Tensor &t, int64_t heads) {
  if (t.dim() < 1 || heads <= 0 || t.size(0) % (2 * heads) != 0)
    throw Error("cannot undo the rotary permutation: " + std::to_string(t.dim() ? t.size(0) : 0) +
                " rows are not a whole number of head pairs for " + std::to_string(heads) +
                " heads");
  std::vector<int64_t> split{heads, t.size(0) / heads / 2, 2};
  for (int64_t d = 1; d < t.dim(); ++d)
    split.push_back(t.size(d));
  // GGUF rows (h, i, j) -> HF rows (h, j, i).
  return t.reshape(split).transpose(1, 2).contiguous().reshape(t.sizes());
}

} // namespace lrq
