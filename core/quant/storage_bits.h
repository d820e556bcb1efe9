#pragma once
// What a quantized linear costs in storage, per weight: the integer codes, each
// step (a 16-bit float) and, on an asymmetric grid, each zero point (as wide as
// a code; 16 bits on an f16-offset grid, whose blocks store -s z as a half),
// plus a low-rank correction's factors. A k-superblock grid (GGUF Q6_K) stores
// an 8-bit sc per step and a 16-bit d per 16 steps of a row; a k-superblock-offset grid
// (GGUF Q4_K) a 6-bit sc and a 6-bit m per step and the 16-bit d and dmin per 8 steps of
// a row. Light header: front ends show
// it live while a scheme is edited.
#include <cstdint>

#include "core/quant/quant_spec.h"

namespace lrq::quant {

// Average bits per weight of an out x in linear on this grid. lowRank k adds the
// factors A (in x k) and B (k x out) at factorBits each (0 = 16-bit floats).
// Per-group grids count a row's shorter last group as a whole group.
double effectiveBitsPerWeight(const GridSpec &grid, int64_t outFeatures, int64_t inFeatures,
                              int64_t lowRank = 0, int factorBits = 0);

} // namespace lrq::quant
