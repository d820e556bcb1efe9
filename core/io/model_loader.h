#pragma once
// Loads a model from a GGUF file, a safetensors file (with config.json and
// tokenizer files beside it) or an HF directory (sharded checkpoints via
// model.safetensors.index.json). Tensors come out in HF naming and layout,
// float32 on the CPU.
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/common/progress.h"
#include "core/model/config.h"
#include "core/tokenizer/tokenizer.h"

namespace lrq {

struct TensorSource {
  std::string name;           // HF name ("model.layers.0.self_attn.q_proj.weight")
  std::string sourceName;     // name in the file ("blk.0.attn_q.weight" for GGUF)
  std::string sourceType;     // storage type in the file: "F32", "F16", "BF16", "Q4_1", ...
  std::vector<int64_t> shape; // HF shape ([out, in] for linears)
};

struct LoadedModel {
  std::string path;   // the file or directory given
  std::string format; // "gguf" or "safetensors"
  ModelConfig config;
  std::map<std::string, at::Tensor> tensors; // HF names, float32, CPU
  std::vector<TensorSource> sources;         // in file order
  std::unique_ptr<Tokenizer> tokenizer;      // null when the files have none
  // How the full-precision reference was obtained, shown wherever the baseline
  // is: e.g. "dequantized from Q4_1" for a quantized GGUF, "" for F32/F16/BF16.
  std::string baselineNote;
};

// The floating-point type a tensor's values are exactly representable in when
// written back: kHalf for "F16", kBFloat16 for "BF16", kFloat for every other
// source type (F32, and GGUF block types, whose dequantized values need F32).
at::ScalarType floatTypeOfSource(const std::string &sourceType);
// floatTypeOfSource of each tensor of a loaded model, by HF name.
std::map<std::string, at::ScalarType> sourceFloatTypes(const LoadedModel &model);

// Sees each tensor as it is loaded (HF name, float32 on the CPU) and returns
// what LoadedModel::tensors keeps of it: the tensor itself, or a stand-in of
// the same shape and dtype once the caller has put its values elsewhere, so
// that the whole model is never in memory at once.
using LoadedTensorSink = std::function<at::Tensor(const std::string &name, at::Tensor tensor)>;

// Throws lrq::FileError naming the file and the problem. Reports bytes or
// tensors read through observer->progress and checks cancel between tensors.
LoadedModel loadModel(const std::string &path, ProgressObserver *observer = nullptr,
                      const CancelToken *cancel = nullptr, const LoadedTensorSink &sink = {});

} // namespace lrq
