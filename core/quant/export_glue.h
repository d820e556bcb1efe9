#pragma once
// From a quantized model to the packed export of core/io/export.h: integer
// codes, steps and zero points of every quantized linear on the scheme's grid.
#include <ATen/ATen.h>

#include <map>
#include <string>

#include "core/io/export.h"
#include "core/model/config.h"
#include "core/model/weights.h"
#include "core/quant/grid.h"
#include "core/quant/scheme.h"

namespace lrq::quant {

struct PackStats {
  int64_t layers = 0;      // quantized tensors packed
  double maxDeviation = 0; // max |s (q - z) - Ŵ| over all of them (0: Ŵ exactly on its grid)
};

// Packs the linears the scheme selects (and the embeddings / LM head when it
// asks). Each Ŵ = quantized's weight is put on its grid: params[prefix]
// ("model.layers.0.self_attn.q_proj", "model.embed_tokens", "lm_head"; see
// gridKey in method.h), the grid the method reports Ŵ lies on, or else
// computeGridParams(original, scheme.weightFor(in)) as RTN uses. The grid
// must have the [rows, groups] shape of scheme.weightFor(in) (each tensor's
// own grid), non-zero finite steps and integer zero points within [qmin,
// qmax]. The codes are quantizeWeight(Ŵ, grid), within [qmin, qmax]; they
// must dequantize back to Ŵ within 1e-6 of each element's step, else
// lrq::Error names the layer: its Ŵ is not on that grid, and no file is
// written from it. The codes are kept in the narrowest integer type that holds
// [qmin, qmax] (one byte for every grid of up to 8 bits). Low-rank factors are
// carried along.
// valueDtypes (by HF weight name, "...q_proj.weight"): a Ŵ that was rounded
// to kHalf / kBFloat16 (a model stored in that type) is compared with its
// codes' s (q - z) rounded the same way, and the packed layer records the type
// so that the reader rounds alike (PackedTensor::valueDtype).
// Tokenizer and metadata are left for the caller (embedTokenizer).
PackedModelContents packQuantizedModel(
    const ModelConfig &config, const ModelWeights &quantized, const ModelWeights &original,
    const QuantScheme &scheme, const std::string &method,
    const std::map<std::string, GridParams> *params = nullptr, PackStats *stats = nullptr,
    const std::map<std::string, at::ScalarType> *valueDtypes = nullptr);

// Whether packQuantizedModel would read a block linear of original: some
// linear it packs has no grid in params (the only weights a quantize run sets
// aside on disk; the embeddings and head always stay in memory).
bool packNeedsOriginalLinears(const ModelConfig &config, const QuantScheme &scheme,
                              const std::map<std::string, GridParams> *params);

} // namespace lrq::quant
