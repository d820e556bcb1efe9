#pragma once
// Exports of a (quantized) model, see docs/EXPORT_FORMAT.md:
//  - an HF directory in full-precision layout (config.json, model.safetensors
//    holding Ŵ, tokenizer files, lrq_metadata.json) that loadModel and HF
//    transformers read like any checkpoint;
//  - a packed safetensors file holding each quantized linear's integer codes
//    (bit-packed), steps, zero points and low-rank factors, the other tensors in
//    float32, and the scheme in __metadata__; loadModel recognises it.
// Both are written atomically: into a temporary sibling renamed into place when
// complete; a cancelled or failed export leaves nothing behind.
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/common/progress.h"
#include "core/io/model_loader.h"
#include "core/io/packed_format.h"
#include "core/model/config.h"
#include "core/model/weights.h"
#include "core/tokenizer/tokenizer_spec.h"

namespace lrq {

// Where the exported tokenizer comes from: the source's HF files when it had
// them (copied as they are), else reconstructed from the spec (GGUF sources).
struct ExportTokenizer {
  std::string tokenizerJsonPath;       // copied when not empty
  std::string tokenizerConfigPath;     // copied when not empty (only with tokenizerJsonPath)
  const TokenizerSpec *spec = nullptr; // used when tokenizerJsonPath is empty; may be null
};
// The tokenizer of a loaded model: its directory's tokenizer.json (and
// tokenizer_config.json) for safetensors sources, else its spec.
ExportTokenizer exportTokenizerFor(const LoadedModel &model);

// tokenizer.json / tokenizer_config.json text for a spec. Byte-level BPE: a BPE
// model with the vocab and merges, the pre-tokenizer regexes as HF steps
// (Digits, Split, ByteLevel), a ByteLevel decoder, the control and user-defined
// tokens as added tokens. SentencePiece BPE with merges: Prepend/Replace
// normalizer, byte_fallback. Throws lrq::Error for specs HF cannot express
// (SentencePiece with scores only).
std::string tokenizerJsonFromSpec(const TokenizerSpec &spec);
std::string tokenizerConfigJsonFromSpec(const TokenizerSpec &spec);

// The tensors of ModelWeights under their HF names, in checkpoint order
// (LLaMA and OPT). A tied LM head (same storage as the embedding) is left out;
// *tied tells which. Low-rank factors are not included.
std::vector<std::pair<std::string, at::Tensor>>
hfTensorsFromWeights(const ModelConfig &config, const ModelWeights &weights, bool *tied = nullptr);
// The same tensors as slots of `weights`, to replace one where it lies.
std::vector<std::pair<std::string, at::Tensor *>>
hfTensorSlotsOfWeights(const ModelConfig &config, ModelWeights &weights, bool *tied = nullptr);
// The linears of ModelWeights under their HF prefixes ("model.layers.0.self_attn.q_proj").
std::vector<std::pair<std::string, const Linear *>>
hfLinearsFromWeights(const ModelConfig &config, const ModelWeights &weights);

struct ExportOptions {
  // HF export: storage type of model.safetensors (kFloat, kHalf or kBFloat16),
  // and config.json's torch_dtype.
  at::ScalarType dtype = at::kFloat;
  // HF export: storage types by HF tensor name, overriding dtype for those
  // tensors (sourceFloatTypes: each tensor back in its source's type).
  std::map<std::string, at::ScalarType> tensorDtypes;
  // Replace an existing target (else an existing target is an error).
  bool overwrite = false;
  // Called before each unit of work ("config.json", a tensor name, ...): tests
  // throw from it to simulate a failure half way.
  std::function<void(const std::string &step)> beforeStep;
};

struct ExportResult {
  std::string path;
  uint64_t bytes = 0;        // all files written
  uint64_t weightsBytes = 0; // the safetensors file alone
  int64_t tensors = 0;       // tensors written to safetensors
  double seconds = 0;
};

// One tensor of a safetensors file being written: source is converted to
// `storage` (kFloat, kHalf, kBFloat16, kByte, kChar, kInt, kLong) as it is written.
struct SafetensorsEntry {
  std::string name;
  at::Tensor source;
  at::ScalarType storage = at::kFloat;
};

// What an HF-style directory holds: the shared writer of the HF export and
// of the compressed-tensors export (core/quant/compressed_tensors.h).
struct HfStyleDirectory {
  std::string configJson;                // config.json text
  ExportTokenizer tokenizer;             // tokenizer.json / tokenizer_config.json (none when empty)
  std::vector<SafetensorsEntry> tensors; // model.safetensors, in this order
  std::vector<std::pair<std::string, std::string>> extraFiles; // name, text
};
// Writes it into a temporary sibling renamed into place when complete
// (options.overwrite replaces an existing target; beforeStep and cancel are
// checked before each file and tensor). Throws lrq::FileError / lrq::Error /
// lrq::Cancelled and then leaves nothing behind.
ExportResult writeHfStyleDirectory(const std::string &dir, const HfStyleDirectory &files,
                                   const ExportOptions &options = {},
                                   ProgressObserver *observer = nullptr,
                                   const CancelToken *cancel = nullptr);

// HF directory. metadataJson (a JSON object: scheme, method, source ...) is
// written as lrq_metadata.json. Low-rank factors are folded into the weights
// (W + (A B)^T); activation transforms cannot be expressed and are listed in
// lrq_metadata.json under "not_exported". Throws lrq::FileError / lrq::Error,
// lrq::Cancelled (cancel is checked between tensors).
ExportResult exportHfDirectory(const std::string &dir, const ModelConfig &config,
                               const ModelWeights &weights, const ExportTokenizer &tokenizer,
                               const std::string &metadataJson, const ExportOptions &options = {},
                               ProgressObserver *observer = nullptr,
                               const CancelToken *cancel = nullptr);

// --- packed integer format -------------------------------------------------------

// One quantized linear (or embedding) as plain tensors.
struct PackedTensor {
  std::string name;      // HF weight name without ".weight": "model.layers.0.mlp.up_proj"
  at::Tensor codes;      // integer [out, in] (any integer dtype), within [qmin, qmin + 2^bits - 1]
  at::Tensor scales;     // [rows, groups]: [1,1] per tensor, [out,1] per channel, [out,ceil(in/g)]
  at::Tensor zeroPoints; // same shape as scales (integers as floats; 0 for symmetric grids)
  // Offset form (GGUF Q4_K's k-superblock-offset grid): zeroPoints hold
  // offsets M >= 0 in value units and the values are s q - M (grid.h). The
  // packed file cannot store it (GGUF can).
  bool offsets = false;
  int bits = 4;          // 2..8
  int64_t qmin = 0;      // 0 (asymmetric) or -2^(bits-1) (symmetric)
  int64_t groupSize = 0; // columns per group; 0 when scales has one column
  at::Tensor lowRankA;   // [in, k] or undefined
  at::Tensor lowRankB;   // [k, out]
  // The type Ŵ was rounded to (kHalf, kBFloat16: a model stored in that type,
  // whose Ŵ = s (q - z) is rounded to it as evaluated and exported); the
  // reader rounds the dequantized weight the same way. kFloat: none.
  at::ScalarType valueDtype = at::kFloat;
};

struct PackedModelContents {
  ModelConfig config;
  std::vector<PackedTensor> quantized;
  // Everything else (norms, embeddings, biases, float linears), HF names.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::string schemeJson = "{}";   // the QuantScheme JSON
  std::string method;              // "rtn", "lrq", ...
  std::string tokenizerJson;       // embedded when not empty
  std::string tokenizerConfigJson; // embedded when not empty
  std::string extraMetadataJson = "{}";
};

// Bit packing of codes (docs/EXPORT_FORMAT.md): each row of codes [rows, cols]
// becomes ceil(cols * bits / 8) bytes; u = code - qmin is written LSB first
// into a little-endian bit stream (code j occupies stream bits j*bits ..
// j*bits + bits - 1; stream bit k is bit k % 8 of byte k / 8), unused high
// bits of the last byte are 0. Returns uint8 [rows, ceil(cols*bits/8)].
at::Tensor packCodes(const at::Tensor &codes, int bits, int64_t qmin);
// Inverse: int32 [rows, cols].
at::Tensor unpackCodes(const at::Tensor &packed, int bits, int64_t qmin, int64_t cols);
// s (q - z) in float32 with scales/zero points [rows, groups] expanded over
// groups of groupSize columns (the last group may be shorter); with offsets,
// zeroPoints are offsets M and the values s q - M (two float32 operations).
at::Tensor dequantizeCodes(const at::Tensor &codes, const at::Tensor &scales,
                           const at::Tensor &zeroPoints, int64_t groupSize, bool offsets = false);

// Writes the packed file (a temporary sibling renamed into place).
ExportResult writePackedModel(const std::string &path, const PackedModelContents &contents,
                              const ExportOptions &options = {},
                              ProgressObserver *observer = nullptr,
                              const CancelToken *cancel = nullptr);

struct PackedModel {
  LoadedModel model; // Ŵ dequantized into the HF weight names; format "lrq-packed"
  // Low-rank factors by linear prefix (A [in,k], B [k,out]).
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> lowRank;
  std::string schemeJson;
  std::string method;
  std::string extraMetadataJson;
  int formatVersion = 0;
  std::vector<std::string> quantizedNames; // prefixes of the packed linears
};

// Reads a packed file. With foldLowRank, W + (A B)^T goes into model.tensors
// and lowRank stays empty (what loadModel does, so evaluation sees the
// correction); without, the factors come back in lowRank (installLowRank puts
// them on the linears). sink: as loadModel's. Throws lrq::FileError naming the
// file and the problem.
PackedModel loadPackedModel(const std::string &path, ProgressObserver *observer = nullptr,
                            const CancelToken *cancel = nullptr, bool foldLowRank = false,
                            const LoadedTensorSink &sink = {});
// Sets Linear::lowRankA/B of weights from a PackedModel's factors.
void installLowRank(const ModelConfig &config, ModelWeights &weights,
                    const std::map<std::string, std::pair<at::Tensor, at::Tensor>> &lowRank);

} // namespace lrq

namespace lrq {
// Fills contents.tokenizerJson / tokenizerConfigJson from the files or the spec.
void embedTokenizer(PackedModelContents &contents, const ExportTokenizer &tokenizer);
} // namespace lrq
