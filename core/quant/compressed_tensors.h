#pragma once
// Export of a quantized model in compressed-tensors' layout (docs/EXPORT_FORMAT.md
// section 3): an HF directory whose model.safetensors holds each quantized
// linear as weight_packed / weight (int8), weight_scale, weight_zero_point,
// weight_shape (and input_scale / input_zero_point for static activations),
// with config.json's quantization_config naming the scheme.
#include <ATen/ATen.h>

#include <map>
#include <string>

#include "core/io/export.h"
#include "core/model/config.h"
#include "core/model/weights.h"
#include "core/quant/compressed_tensors_scheme.h"
#include "core/quant/grid.h"
#include "core/quant/scheme.h"

namespace lrq::quant {

// Packs signed codes c in [-2^(bits-1), 2^(bits-1) - 1] (int [rows, cols])
// into int32 words as compressed-tensors does: u = c + 2^(bits-1), 32 / bits
// values per word, value i of a word in bits i*bits .. i*bits + bits - 1,
// along dim 1 (weights: [rows, ceil(cols / (32/bits))]) or dim 0 (zero
// points: [ceil(rows / (32/bits)), cols]); padding is 0. bits 1..8.
at::Tensor packInt32(const at::Tensor &signedCodes, int bits, int dim);
// Inverse: int32 [rows, cols] of signed codes.
at::Tensor unpackInt32(const at::Tensor &packed, int bits, int dim, int64_t rows, int64_t cols);

struct CompressedTensorsRun {
  const ModelConfig *config = nullptr;
  const ModelWeights *quantized =
      nullptr; // Ŵ as the run evaluated it, with its activation transforms
  const ModelWeights *original = nullptr; // for grids the method did not report (RTN's)
  const QuantScheme *scheme = nullptr;
  std::string method;
  const Hyperparameters *hyperparameters = nullptr;
  const std::map<std::string, GridParams> *grids = nullptr; // MethodReport::grids
  // HF weight name -> type Ŵ was rounded to (bf16 / f16 sources), as for the packed export.
  const std::map<std::string, at::ScalarType> *valueDtypes = nullptr;
  std::string metadataJson = "{}"; // lrq_metadata.json (a JSON object)
};

struct CompressedTensorsStats {
  int64_t layers = 0;
  // Over all quantized linears: elements whose decoded value (s (q - z) in
  // float32, rounded to the layer's value type) is not bit for bit the run's
  // Ŵ, and the largest such difference.
  int64_t inexactValues = 0;
  double maxDeviation = 0;
};

// Writes the directory (atomically, like exportHfDirectory; options.dtype /
// tensorDtypes give the storage type of the tensors that are not quantized
// and config.json's torch_dtype; overwrite, beforeStep as there). Throws
// lrq::Error when the run cannot be stored (compressedTensorsFormatFor, low-rank
// factors, activation transforms other than the scheme's, a group size that
// does not divide a linear's columns, codes that do not give Ŵ back), before
// anything is written.
ExportResult exportCompressedTensors(const std::string &dir, const CompressedTensorsRun &run,
                                     const ExportTokenizer &tokenizer,
                                     const ExportOptions &options = {},
                                     CompressedTensorsStats *stats = nullptr,
                                     ProgressObserver *observer = nullptr,
                                     const CancelToken *cancel = nullptr);

} // namespace lrq::quant
