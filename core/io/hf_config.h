#pragma once
// HF config.json <-> ModelConfig for the architectures the decoder runs:
// LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and OPTForCausalLM.
#include <string>

#include "core/model/config.h"

namespace lrq {

// Reads config.json; throws lrq::FileError naming the file and the key for
// missing or ill-typed fields and for unsupported architectures.
ModelConfig modelConfigFromHfConfigFile(const std::string &configJsonPath);
// Same from text already read; sourcePath is used in messages.
ModelConfig modelConfigFromHfConfigJson(const std::string &jsonText, const std::string &sourcePath);

// config.json text for a ModelConfig (what HF's from_pretrained expects).
// torchDtype is written as "torch_dtype" ("float32", "float16", "bfloat16").
std::string hfConfigJson(const ModelConfig &config, const std::string &torchDtype = "float32");
// Writes it atomically; throws lrq::FileError.
void writeHfConfig(const std::string &path, const ModelConfig &config,
                   const std::string &torchDtype = "float32");

} // namespace lrq
