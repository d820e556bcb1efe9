#pragma once
// The tiny seeded LLaMA of tiny_llama.h as files: an HF directory (one
// safetensors file or two shards with an index), and a packed-export model
// with some linears quantized (4-bit, 32-column groups, so GGUF takes it as
// Q4_1). For the tests of odd directories, changed files and full disks.
#include <QDir>
#include <QString>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/io/export.h"
#include "core/io/hf_config.h"
#include "core/io/safetensors.h"
#include "tiny_llama.h"

namespace lrq::test {

// Writes config.json, tokenizer.json and the weights into dir (created) and
// returns the tensors as written. With sharded, the tensors are split into
// model-00001-of-00002.safetensors and model-00002-of-00002.safetensors with
// model.safetensors.index.json. storage is the file type (F32 or F16 data).
inline std::map<std::string, at::Tensor> writeTinyHfDirectory(const QString &dir, bool sharded,
                                                              at::ScalarType storage = at::kFloat) {
  QDir().mkpath(dir);
  const ModelConfig config = tinyLlamaConfig();
  std::vector<std::pair<std::string, at::Tensor>> tensors = tinyLlamaTensors(config, 11);
  std::map<std::string, at::Tensor> asWritten;
  for (auto &[name, t] : tensors) {
    t = t.to(storage);
    asWritten[name] = t.to(at::kFloat);
  }
  writeFile(dir + "/config.json", hfConfigJson(config));
  writeFile(dir + "/tokenizer.json", byteTokenizerJson());
  const std::string d = dir.toStdString();
  if (!sharded) {
    writeSafetensors(d + "/model.safetensors", tensors);
    return asWritten;
  }
  const size_t half = tensors.size() / 2;
  const std::vector<std::pair<std::string, at::Tensor>> first(tensors.begin(),
                                                              tensors.begin() + long(half));
  const std::vector<std::pair<std::string, at::Tensor>> second(tensors.begin() + long(half),
                                                               tensors.end());
  SafetensorsIndex index;
  for (const auto &[name, t] : first)
    index.weightMap[name] = "model-00001-of-00002.safetensors";
  for (const auto &[name, t] : second)
    index.weightMap[name] = "model-00002-of-00002.safetensors";
  writeSafetensors(d + "/model-00001-of-00002.safetensors", first);
  writeSafetensors(d + "/model-00002-of-00002.safetensors", second);
  writeSafetensorsIndex(d + "/model.safetensors.index.json", index, 0);
  return asWritten;
}

// The tiny LLaMA with each block's down_proj quantized: 4-bit asymmetric,
// groups of 32 columns, seeded codes and steps; the rest in float.
inline PackedModelContents tinyPackedContents() {
  PackedModelContents p;
  p.config = tinyLlamaConfig();
  p.method = "rtn";
  p.schemeJson = R"({"weight":{"bits":4,"symmetric":false,"group_size":32}})";
  std::mt19937_64 rng(3);
  for (auto &[name, t] : tinyLlamaTensors(p.config, 12)) {
    if (name.find("mlp.down_proj.weight") == std::string::npos) {
      p.tensors.emplace_back(name, t);
      continue;
    }
    PackedTensor q;
    q.name = name.substr(0, name.size() - std::string(".weight").size());
    q.bits = 4;
    q.qmin = 0;
    q.groupSize = 32;
    const int64_t rows = t.size(0), cols = t.size(1), groups = cols / 32;
    q.codes = at::empty({rows, cols}, at::kInt);
    for (int64_t i = 0; i < rows * cols; ++i)
      q.codes.data_ptr<int32_t>()[i] = int32_t(rng() % 16);
    q.scales = at::empty({rows, groups}, at::kFloat);
    q.zeroPoints = at::empty({rows, groups}, at::kFloat);
    for (int64_t i = 0; i < rows * groups; ++i) {
      q.scales.data_ptr<float>()[i] = float(1 + rng() % 63) / 1024.0f;
      q.zeroPoints.data_ptr<float>()[i] = float(rng() % 16);
    }
    p.quantized.push_back(q);
  }
  return p;
}

} // namespace lrq::test
