#pragma once
// Plain descriptions of weight grids and activation quantizers: no LibTorch,
// so front ends can edit schemes without the heavy headers. The tensor math
// lives in grid.h and activation_quantizer.h.
#include <cstdint>
#include <string>

namespace lrq::quant {

enum class Granularity {
  PerTensor,  // one step (and zero point) for the whole weight
  PerChannel, // one per output row
  PerGroup,   // one per groupSize consecutive input elements of a row
};

enum class StepInit {
  MinMax,         // the range of the values
  ClippingSearch, // the range fraction minimising sum |W - Q(W)|^clipNorm (ALGORITHMS.md)
  // The LRQ / FlexRound reference's "clipping" init: per unit, clipSteps range
  // sizes x 2^bits zero points minimising sum |W - Q(W)|^clipNorm; one-sided
  // units fall back to ClippingSearch. Asymmetric grids only (grid.h).
  ClippingSearch2D,
  // The method's reference choice (QuantMethod::referenceGrid): what a preset
  // and a scheme JSON without weight.init ask for. Resolved before a method
  // runs; computeGridParams treats an unresolved one as MinMax. Weights only.
  MethodDefault,
};

// How each step of a weight grid is stored, and so which values it may take.
enum class StepFormat {
  Float32, // any positive float32
  // Exactly an IEEE half (> 0): what a llama.cpp Q8_0 / Q4_0 / Q5_0 block
  // stores as its scale d.
  Fp16,
  // A half with at most 11 - bits significant bits, so that s z is an exact
  // half for every zero point z in 0..2^bits - 1: a llama.cpp Q4_1 / Q5_1 block
  // stores d = s and m = -s z as halves, and d q + m == s (q - z) exactly.
  // Asymmetric grids only.
  Fp16Offset,
  // llama.cpp's K-quant super-block (Q6_K): the steps of 16 consecutive
  // groups of 16 (a 256-column super-block of a row) are s_j = d sc_j, d an
  // IEEE half shared by the super-block and sc_j an integer in 1..kSuperBlockMaxScale.
  // Symmetric per-group 16 grids of at most 6 bits (d sc q is then exact in
  // float32), on rows of a multiple of 256 inputs (QuantScheme::weightFor
  // gives other rows the scheme's fallback grid).
  KSuperblock,
  // llama.cpp's Q4_K super-block: the steps of 8 consecutive groups of 32 (a
  // 256-column super-block of a row) are s_j = d sc_j, and their offsets
  // M_j = dmin m_j, with halves d and dmin per super-block, sc_j in
  // 1..kOffsetSuperBlockMaxScale and m_j in 0..kOffsetSuperBlockMaxScale.
  // The grid is in offset form (grid.h): GridParams::zeroPoint holds M, not an
  // integer zero point, and x^ = s q - M, q = clamp(round((x + M) / s), 0, n-1).
  // Asymmetric per-group 32 grids of at most 5 bits (d sc q is then exact in
  // float32), on rows of a multiple of 256 inputs (QuantScheme::weightFor
  // gives other rows the scheme's fallback grid).
  KSuperblockOffset,
};

// The K-quant super-block (StepFormat::KSuperblock, Q6_K): groups per
// super-block, group size, and the largest integer sub-block scale.
constexpr int64_t kSuperBlockGroups = 16;
constexpr int64_t kSuperBlockGroupSize = 16;
constexpr int64_t kSuperBlockColumns = kSuperBlockGroups * kSuperBlockGroupSize;
constexpr int kSuperBlockMaxScale = 127;
// The Q4_K super-block (StepFormat::KSuperblockOffset): 8 groups of 32, 6-bit
// scales sc and mins m (the largest of either is 63), 256 columns as well.
constexpr int64_t kOffsetSuperBlockGroups = 8;
constexpr int64_t kOffsetSuperBlockGroupSize = 32;
constexpr int kOffsetSuperBlockMaxScale = 63;
static_assert(kOffsetSuperBlockGroups * kOffsetSuperBlockGroupSize == kSuperBlockColumns,
              "both K-quant super-blocks span 256 columns");

// k-superblock or k-superblock-offset: steps shared across a 256-column
// super-block, so rows must be whole super-blocks.
inline bool isSuperBlockFormat(StepFormat f) {
  return f == StepFormat::KSuperblock || f == StepFormat::KSuperblockOffset;
}

// The range accepted for a clipping-search exponent (clipNorm): below it every
// fraction scores alike (|e|^p -> 1), above it the errors overflow.
constexpr double kMinClipNorm = 0.1;
constexpr double kMaxClipNorm = 16.0;
// "0.1", "2.4", "1e-308": the shortest form, for messages.
std::string formatClipNorm(double clipNorm);

// A uniform weight grid with n = 2^bits levels.
//   asymmetric: q = clamp(round(x/s) + z, 0, n-1),     x^ = s (q - z)
//   symmetric:  q = clamp(round(x/s), -n/2, n/2 - 1),  x^ = s q
//   symmetric, full range: the same codes with a zero point z in {0, -1},
//               x^ = s (q - z), so the levels are -n/2..n/2-1 or -n/2+1..n/2
struct GridSpec {
  int bits = 4;
  bool symmetric = false;
  Granularity granularity = Granularity::PerChannel;
  int64_t groupSize = 0; // PerGroup only; a row's last group is shorter when it does not divide
  StepInit init = StepInit::MinMax;
  // ClippingSearch tries fractions k/clipSteps, k = clipSteps..1; ClippingSearch2D
  // tries range sizes k/clipSteps of the min/max range, k = 1..clipSteps.
  int clipSteps = 100;
  double clipNorm = 2.4; // exponent of the clipping-search error (both searches)
  // Every step is rounded to this format wherever it is computed or learned
  // (grid.h applyStepFormat), so the grid is one a file format can store.
  StepFormat stepFormat = StepFormat::Float32;
  // Symmetric grids only. false (balanced): the unit's largest magnitude a maps
  // to +-(n/2 - 1), s = a / (n/2 - 1), z = 0, and the extra level -n/2 is
  // reached only by values a clipping search cut. true (full range, as
  // llama.cpp's Q4_0 / Q5_0 quantizers): s = a / (n/2) and the extreme value
  // lands on level n/2 on its own side: z = -1 when it is positive (levels
  // -n/2+1..n/2), z = 0 when it is negative. One more level is used, at the
  // cost of a sign per unit (free in GGUF: the sign of the stored half d).
  bool fullRange = false;

  int64_t levels() const { return int64_t(1) << bits; }
  int64_t qmin() const { return symmetric ? -(levels() / 2) : 0; }
  int64_t qmax() const { return symmetric ? levels() / 2 - 1 : levels() - 1; }
  // ClippingSearch or ClippingSearch2D.
  bool searchesClipping() const {
    return init == StepInit::ClippingSearch || init == StepInit::ClippingSearch2D;
  }
  // The grid's zero points are offsets M in value units (x^ = s q - M), not
  // integers z (x^ = s (q - z)): k-superblock-offset.
  bool offsetForm() const { return stepFormat == StepFormat::KSuperblockOffset; }
  // Throws lrq::Error naming the bad field (bits outside 2..8, group size < 1,
  // clip-search-2d on a symmetric grid, f16-offset on a symmetric grid, ...).
  void validate() const;
  // "W4 asym per-channel", "W3 sym g128 clip-search", "W4 sym g32 f16" ...
  std::string describe() const;
};

// The llama.cpp GGUF block type whose blocks store exactly this grid: "Q8_0",
// "Q4_0", "Q5_0" (symmetric, per-group 32, f16 steps), "Q4_1", "Q5_1"
// (asymmetric, per-group 32, f16-offset steps), "Q6_K" (6-bit symmetric,
// per-group 16, k-superblock steps), "Q4_K" (4-bit asymmetric, per-group 32,
// k-superblock-offset steps); nullptr for any other grid.
const char *ggufBlockTypeFor(const GridSpec &spec);

enum class ActivationMode {
  None,            // activations stay full precision
  PerTokenDynamic, // asymmetric, min/max of each token's row, recomputed every call
  PerTensorStatic, // asymmetric, one step and zero point calibrated on calibration data
};

struct ActivationSpec {
  ActivationMode mode = ActivationMode::None;
  int bits = 8;
  // Per-tensor static only: the calibrated range is the observed [min, max]
  // (MinMax), or that range scaled by the fraction k / clipSteps (k =
  // clipSteps..1) minimising sum |x - Q(x)|^clipNorm over the calibration
  // activations (ClippingSearch: the weight grid's search applied to the
  // tensor; clipNorm 2 = mean squared error).
  StepInit init = StepInit::MinMax;
  int clipSteps = 100;
  double clipNorm = 2.0;
  // bits in 2..16, clipSteps >= 1, clipNorm > 0, init minmax or clip-search
  void validate() const;
};

// Stable names used in scheme JSON and on the command line.
const char *granularityName(Granularity g); // "per-tensor", "per-channel", "per-group"
// "minmax", "clip-search", "clip-search-2d", "auto" (MethodDefault)
const char *stepInitName(StepInit s);
const char *
activationModeName(ActivationMode m); // "none", "per-token-dynamic", "per-tensor-static"
// "f32", "f16", "f16-offset", "k-superblock", "k-superblock-offset"
const char *stepFormatName(StepFormat f);
// Parse the names above; return false for anything else.
bool parseGranularity(const std::string &name, Granularity *out);
bool parseStepInit(const std::string &name, StepInit *out);
bool parseActivationMode(const std::string &name, ActivationMode *out);
bool parseStepFormat(const std::string &name, StepFormat *out);

} // namespace lrq::quant
