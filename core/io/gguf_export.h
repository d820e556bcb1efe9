#pragma once
// A quantized model as a GGUF file that llama.cpp loads (docs/EXPORT_FORMAT.md,
// "GGUF"): each quantized linear's codes, steps and zero points in one of
// llama.cpp's block types (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q6_K), exactly, never
// re-rounded; everything else F32 (or F16, Q8_0, Q6_K by pattern); LLaMA-family tensor
// names and llama.cpp's q/k row order; metadata carried from a GGUF source or
// built from the HF configuration and tokenizer.
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/common/progress.h"
#include "core/io/export.h"
#include "core/io/ggml_quants.h"
#include "core/io/gguf_writer.h"
#include "core/io/model_loader.h"
#include "core/tokenizer/tokenizer_spec.h"

namespace lrq {

// The block type that holds a grid of `bits` bits whose codes start at qmin
// (0: asymmetric, -2^(bits-1): symmetric) in groups of groupSize columns:
// Q8_0 (8 symmetric), Q4_0 / Q5_0 (4 / 5 symmetric), Q4_1 / Q5_1 (4 / 5
// asymmetric), all with groups of 32; Q6_K (6 symmetric, groups of 16); with
// offsets (zero points in offset form, PackedTensor::offsets) Q4_K (4
// asymmetric, groups of 32) only. False for every other grid.
bool ggufBlockTypeForGrid(int bits, int64_t qmin, int64_t groupSize, GgmlType *type,
                          bool offsets = false);
// The scheme preset that quantizes onto that block type ("gguf-q4_0").
std::string ggufSchemeFor(GgmlType type);
// llama.cpp's LLAMA_FTYPE number for a model mostly in `type` (Q4_0: 2, Q4_1: 3,
// Q8_0: 7, Q5_0: 8, Q5_1: 9, Q6_K: 18, Q4_K: 14 (Q4_K_S), F32: 0, F16: 1).
uint32_t ggufFileTypeFor(GgmlType type);

// The blocks of one quantized tensor, as llama.cpp lays them out: row by row,
// one block per group of 32 columns; d = s (and m = -s z for Q4_1 / Q5_1) as
// IEEE half, codes u = q - qmin packed (low nibbles: values 0..15 of the block,
// high nibbles: 16..31; Q5's fifth bits in a 32-bit word). Every d and m must
// be exactly a half (the grid was made for it), else lrq::Error names the
// tensor and the scheme to quantize with. Q6_K: one 210-byte block per 256
// columns, each 16-column step s_j = d sc_j stored as a half d and int8 sc_j
// (llama.cpp's ql / qh / scales / d layout; see encodeQ6KBlocks). Q4_K: one 144-byte block
// per 256 columns, each 32-column group's step d sc_j and offset dmin m_j stored as the
// halves d, dmin and 6-bit sc_j, m_j (see encodeQ4KBlocks). The blocks are checked by
// decoding them with dequantizeGgml: they must give s (q - z) (s q - M) back exactly.
std::vector<uint8_t> encodeGgufBlocks(const PackedTensor &tensor, GgmlType type);

// llama.cpp's order of the rows of q_proj / k_proj (and their biases), from HF
// order: HF row h*D + j*D/2 + i becomes row h*D + 2*i + j. Inverse of
// unpermuteGgufRotary.
at::Tensor permuteGgufRotary(const at::Tensor &t, int64_t heads);

// llama.cpp's name of an HF tensor of a LLaMA-family model
// ("model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"); "" when
// it has none. Inverse of hfNameFromGgufTensor.
std::string ggufTensorNameFromHf(const std::string &hfName);

// Where the metadata comes from.
struct GgufExportSource {
  // A GGUF source file: every metadata key of it is carried over (updated
  // where the export changes it). Empty: built from the configuration.
  std::string sourceGguf;
  const TokenizerSpec *tokenizer = nullptr; // HF sources: the tokenizer.ggml.* keys
  std::string chatTemplate;                 // HF sources: tokenizer.chat_template when not empty
  std::string name;                         // general.name (HF sources)
};
// The source of a loaded model: its GGUF file, or its tokenizer and the
// chat_template of its tokenizer_config.json.
GgufExportSource ggufExportSourceFor(const LoadedModel &model);

struct GgufExportOptions {
  bool overwrite = false;
  uint64_t alignment = 32;
  // Storage type of the tensors that are not quantized (F32 by default), by
  // their GGUF name: a glob (fnmatch: * ? [...]) or, after "re:", a regular
  // expression (ECMAScript) that must match the whole name; the first pattern
  // that matches wins. F32, F16, or Q8_0 / Q6_K: rounded at export with
  // llama.cpp's reference quantizer (quantizeGgmlReference), so the file is no
  // longer exactly the evaluated model; Q6_K on rows that are not whole
  // 256-value super-blocks falls back to Q8_0, and Q8_0 on rows that are not
  // whole 32-value blocks to F16, as llama-quantize does. One-dimensional
  // tensors (norms, biases) stay F32 whatever matches, as llama.cpp keeps them.
  std::vector<std::pair<std::string, GgmlType>> floatTypes;
  std::string runId; // lrq.run_id
  // Called before each tensor's data (tests throw from it).
  std::function<void(const std::string &step)> beforeStep;
  // Told (one line each) of fallbacks (Info) and, once the file is written, of
  // the float tensors the rounding changed (Warning: the file is not the
  // evaluated model) and of those it left unchanged (Info: already on the grid).
  std::function<void(LogLevel level, const std::string &line)> note;
};

// llama.cpp's reference quantizer of n float values (a multiple of the type's
// block size) into Q8_0 (quantize_row_q8_0_ref: per 32 values d = amax/127,
// stored as a half, q = roundf(x * (1/d)) with the unrounded d) or Q6_K
// (quantize_row_q6_K_ref: per 16 values the weighted least-squares scale of
// make_qx_quants, per 256 a half d and int8 sub-scales, then the codes
// re-rounded on d sc). Deterministic; bit-equal to llama-quantize without an
// importance matrix. Throws lrq::Error for other types, a bad n or values that
// are not finite.
std::vector<uint8_t> quantizeGgmlReference(GgmlType type, const float *src, int64_t n);

// Writes the GGUF file of a packed model (quant::packQuantizedModel), one
// tensor at a time, atomically. Refuses (lrq::Error, no file) layers whose
// grid has no GGUF block type, steps that are not halves, low-rank factors
// (LQER) and architectures other than the LLaMA family.
ExportResult exportGguf(const std::string &path, const PackedModelContents &contents,
                        const GgufExportSource &source, const GgufExportOptions &options = {},
                        ProgressObserver *observer = nullptr, const CancelToken *cancel = nullptr);

} // namespace lrq
