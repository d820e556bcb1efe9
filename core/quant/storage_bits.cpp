#include "core/quant/storage_bits.h"

namespace lrq::quant {

double effectiveBitsPerWeight(const GridSpec &grid, int64_t outFeatures, int64_t inFeatures,
                              int64_t lowRank, int factorBits) {
  if (outFeatures <= 0 || inFeatures <= 0)
    return 0;
  const double weights = double(outFeatures) * double(inFeatures);
  int64_t steps = 1;
  switch (grid.granularity) {
  case Granularity::PerTensor:
    steps = 1;
    break;
  case Granularity::PerChannel:
    steps = outFeatures;
    break;
  case Granularity::PerGroup: {
    const int64_t g = grid.groupSize > 0 ? grid.groupSize : inFeatures;
    steps = outFeatures * ((inFeatures + g - 1) / g);
    break;
  }
  }
  // An f16-offset grid stores its zero point as the half m = -s z (llama.cpp's
  // Q4_1 / Q5_1 blocks); other asymmetric grids as an integer as wide as a code.
  // A full-range symmetric grid's side (z = 0 or -1) is the sign of the stored
  // step, as in llama.cpp's Q4_0 / Q5_0 blocks: no extra bits.
  const double zeroBits = grid.symmetric                              ? 0.0
                          : grid.stepFormat == StepFormat::Fp16Offset ? 16.0
                                                                      : double(grid.bits);
  double perStep = 16.0 + zeroBits;
  double superBlockBits = 0.0;
  if (grid.stepFormat == StepFormat::KSuperblock) {
    // Each step is an int8 sc; each 16 of a row share one half d (Q6_K: 210
    // bytes per 256 weights, 6.5625 bits each).
    perStep = 8.0;
    const int64_t groups = (steps + outFeatures - 1) / outFeatures; // per row
    superBlockBits =
        16.0 * double(outFeatures) * double((groups + kSuperBlockGroups - 1) / kSuperBlockGroups);
  } else if (grid.stepFormat == StepFormat::KSuperblockOffset) {
    // Each group stores a 6-bit sc and a 6-bit m; each 8 of a row share the
    // halves d and dmin (Q4_K: 144 bytes per 256 weights, 4.5 bits each).
    perStep = 12.0;
    const int64_t groups = (steps + outFeatures - 1) / outFeatures; // per row
    superBlockBits = 32.0 * double(outFeatures) *
                     double((groups + kOffsetSuperBlockGroups - 1) / kOffsetSuperBlockGroups);
  }
  double bits = double(grid.bits) * weights + perStep * double(steps) + superBlockBits;
  if (lowRank > 0)
    bits += double(lowRank) * double(outFeatures + inFeatures) * (factorBits > 0 ? factorBits : 16);
  return bits / weights;
}

} // namespace lrq::quant
