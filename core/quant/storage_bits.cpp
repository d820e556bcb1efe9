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
  const double perStep = 16.0 + (grid.symmetric ? 0.0 : double(grid.bits));
  double bits = double(grid.bits) * weights + perStep * double(steps);
  if (lowRank > 0)
    bits += double(lowRank) * double(outFeatures + inFeatures) * (factorBits > 0 ? factorBits : 16);
  return bits / weights;
}

} // namespace lrq::quant
