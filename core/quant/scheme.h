#pragma once
// A quantization scheme as data: the weight grid, the activation quantizer,
// KV8, and which layers are quantized. Saved with every run as JSON. No
// LibTorch here, so front ends can show and edit schemes.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/quant/quant_spec.h"

namespace lrq::quant {

struct LayerSelection {
  // Blocks to quantize; empty: every block.
  std::vector<int64_t> blocks;
  // HF role names of the block linears to quantize ("q_proj", ..., "down_proj";
  // OPT: "out_proj", "fc1", "fc2"); empty: every linear of the block
  // (lrq::blockLinears: seven for LLaMA, six for OPT).
  std::vector<std::string> linears;
  // Full precision unless asked. Norms always stay full precision.
  bool embeddings = false;
  bool lmHead = false;

  bool selectsBlock(int64_t block) const;
  bool selectsLinear(const std::string &role) const;
};

struct QuantScheme {
  std::string name = "custom"; // preset name, or "custom"
  GridSpec weight;
  // k-superblock and k-superblock-offset weight grids only (GGUF Q6_K and
  // Q4_K, whose super-blocks span 256 inputs): the grid of the linears whose
  // in_features is not a multiple of 256, as llama.cpp's llama-quantize
  // stores such Q6_K tensors as Q8_0 and Q4_K tensors as Q5_0.
  // Without it such linears are refused. Never itself k-superblock.
  std::optional<GridSpec> fallbackWeight;
  ActivationSpec activation;
  bool kv8 = false; // k_proj / v_proj outputs quantized per token to 8 bits
  LayerSelection layers;

  // The grid of a weight [out, inFeatures]: fallbackWeight when weight is a
  // k-superblock(-offset) grid, inFeatures is not a multiple of 256 and there is a
  // fallback; else weight. Every method and export quantizes each linear (and
  // the embeddings / LM head) on the grid this gives for its in_features.
  const GridSpec &weightFor(int64_t inFeatures) const;
  // True when different linears may get different grids (a fallback grid).
  bool mixesGrids() const { return fallbackWeight.has_value(); }

  // Throws lrq::Error naming the bad field.
  void validate() const;
  // "W4A8-KV8: W4 asym per-channel, A8 per-token-dynamic, KV8";
  // "gguf-q6_k: W6 sym g16 k-superblock (GGUF Q6_K), in % 256 != 0: W8 sym g32
  // f16 (GGUF Q8_0), A16"
  std::string describe() const;

  // Compact JSON (see schemeFromJson for the layout).
  std::string toJson(int indent = -1) const;
  // {"name": "...",
  //  "weight": {"bits", "symmetric", "granularity": "per-tensor|per-channel|per-group",
  //             "group_size", "init": "auto|minmax|clip-search|clip-search-2d",
  //             "clip_steps", "clip_norm",
  //             "step_format": "f32|f16|f16-offset|k-superblock|k-superblock-offset",
  //             "full_range": bool (symmetric only; left out when false)},
  //  "fallback_weight": {same keys as weight} (k-superblock weight grids only;
  //                     absent: none),
  //  "activation": {"mode": "none|per-token-dynamic|per-tensor-static", "bits"},
  //  "kv8": bool,
  //  "layers": {"blocks": "all" | [int], "linears": "all" | [string],
  //             "embeddings": bool, "lm_head": bool}}
  // Missing keys keep their defaults (a missing weight.init is "auto": the
  // method's reference choice, QuantMethod::referenceGrid); unknown keys, wrong types and bad
  // values throw lrq::Error naming the key ("scheme JSON: weight.bits: ...").
  static QuantScheme fromJson(const std::string &json);
};

// The named presets, in display order: W8A8, W4A8-KV8, W4A16, W3A16,
// W4A16-g128, W3A16-g128, W2A16-g64, then the llama.cpp block formats
// gguf-q8_0, gguf-q5_0, gguf-q4_0, gguf-q5_1, gguf-q4_1 (weight-only, g32,
// f16 / f16-offset steps: ggufBlockTypeFor names their block type), and
// gguf-q6_k (6-bit symmetric g16 k-superblock steps: llama.cpp's Q6_K, with
// the gguf-q8_0 grid as its fallback for rows not a multiple of 256, as
// llama-quantize demotes them), and gguf-q4_k (4-bit asymmetric g32
// k-superblock-offset steps and offsets: llama.cpp's Q4_K, with the
// gguf-q5_0 grid as its fallback, as llama-quantize demotes such rows).
std::vector<std::string> presetNames();
// Case-insensitive; throws lrq::Error listing the known names.
QuantScheme presetScheme(const std::string &name);

// Every linear role name blockLinears knows (LLaMA and OPT).
const std::vector<std::string> &knownLinearNames();

} // namespace lrq::quant
