#pragma once
// Which quantization runs the compressed-tensors format (what vLLM and
// llm-compressor read; docs/EXPORT_FORMAT.md section 3) can hold, and the
// quantization_config of its config.json. Light header: no LibTorch.
#include <string>
#include <vector>

#include "core/common/option_value.h"
#include "core/quant/scheme.h"

namespace lrq::quant {

enum class CompressedTensorsFormat {
  PackQuantized, // weight-only int4 / int8: codes packed into int32 words
  IntQuantized,  // W8A8: int8 weights, int8 activations quantized at run time
};
// "pack-quantized", "int-quantized": the format key of config.json.
const char *compressedTensorsFormatName(CompressedTensorsFormat format);

// The format a run of `method` on `scheme` is stored in; throws lrq::Error
// saying why when it cannot be stored exactly: low-rank corrections (lqer,
// l2qer), KV8, bits other than 4/8 (weight-only, pack-quantized) or 8 (W8A8,
// int-quantized), activation bits other than 8, quantized embeddings or LM
// head, GPTQ act_order on a per-group grid (its groups run over permuted
// columns). hyperparameters may be null (act_order is then not checked).
CompressedTensorsFormat
compressedTensorsFormatFor(const QuantScheme &scheme, const std::string &method,
                           const Hyperparameters *hyperparameters = nullptr);

// What the format holds but vLLM will not run (asymmetric or per-group W8A8
// weights, per-tensor weight-only grids): one sentence each; empty when none.
std::vector<std::string> compressedTensorsVllmCaveats(const QuantScheme &scheme);

// The quantization_config object of config.json (JSON text): one config
// group "group_0" targeting "Linear", the layers in `ignore` (module names:
// "lm_head", linears the scheme left in full precision) excluded.
std::string compressedTensorsQuantizationConfig(const QuantScheme &scheme,
                                                const std::vector<std::string> &ignore);

} // namespace lrq::quant
