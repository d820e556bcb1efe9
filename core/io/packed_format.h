#pragma once
// The packed export's format below the tensors (docs/EXPORT_FORMAT.md, section
// 2): the __metadata__ and per-layer checks, the code unpacking and the checks
// on steps and zero points. No LibTorch here, so tests/fuzz builds it alone;
// loadPackedModel (export.h) reads files through it.
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/io/safetensors.h"

namespace lrq {

constexpr int kPackedFormatVersion = 1;
constexpr const char *kPackedFormatName = "lrq-packed";

// One quantized linear as the header declares it, checked against the file's
// tensor entries. The pointers point into the SafetensorsReader it came from.
struct PackedLayerLayout {
  std::string name; // prefix: "model.layers.0.mlp.up_proj"
  int bits = 0;     // 1..8
  int64_t qmin = 0; // 0 (asymmetric) or -2^(bits-1) (symmetric)
  int64_t qmax = 0; // qmin + 2^bits - 1
  int64_t groupSize = 0;
  int64_t out = 0, in = 0; // the weight's shape
  int64_t rowBytes = 0;    // ceil(in * bits / 8)
  int64_t scaleRows = 0;   // 1 (per tensor) or out
  int64_t groups = 0;      // 1, or ceil(in / groupSize)
  std::string valueDtype;  // "" (float32), "F16" or "BF16": the type Ŵ was rounded to
  const SafetensorsTensorInfo *qweight = nullptr;    // U8 [out, rowBytes]
  const SafetensorsTensorInfo *scales = nullptr;     // float [scaleRows, groups]
  const SafetensorsTensorInfo *zeroPoints = nullptr; // float, as scales
  const SafetensorsTensorInfo *lowRankA = nullptr;   // float [in, k], or null
  const SafetensorsTensorInfo *lowRankB = nullptr;   // float [k, out], or null with lowRankA
};

struct PackedHeader {
  int formatVersion = 0;
  std::string configJson; // HF config.json text (not parsed here)
  std::string schemeJson;
  std::string method;
  std::string extraMetadataJson; // empty when the file has none
  std::vector<PackedLayerLayout> layers;
  // Names of every tensor a layer may own (qweight, scales, ...): the rest are
  // the model's float tensors.
  std::set<std::string> layerTensorNames;
};

// Reads and checks __metadata__ (format, version, layers) and each layer's
// tensor entries: what the writer would not have written is refused with
// lrq::FileError naming the file. Tensor data is not read.
PackedHeader readPackedHeader(const SafetensorsReader &reader);

// True when path is a safetensors file (a valid header) whose __metadata__
// names the packed format. Never throws.
bool isPackedModelFile(const std::string &path);

// Unpacks rows [rowBegin, rowEnd) of a layer's packed codes (rows of rowBytes
// bytes, see packCodes in export.h) into codes q = u + qmin, cols per row.
void unpackCodeRows(const uint8_t *packed, int64_t rowBytes, int64_t rowBegin, int64_t rowEnd,
                    int64_t cols, int bits, int64_t qmin, int32_t *codes);

// What is wrong with a layer's steps and zero points (n of each, as float32),
// or "" when nothing: a step that is zero or not finite, a zero point that is
// not an integer in [qmin, qmax], or a unit whose dequantized values
// s (q - z) would not be finite in float32 or, with valueDtype, after
// rounding to F16 / BF16.
std::string packedGridProblem(const float *scales, const float *zeroPoints, size_t n, int64_t qmin,
                              int64_t qmax, const std::string &valueDtype);

} // namespace lrq
