#pragma once
// Elementwise loops of the reconstruction's hot path on raw float32 arrays:
// the learned-rounding quantizer's forward and closed-form backward
// (core/quant/learned_rounding.cpp) and Adam's update (adam.h). They are
// written so the compiler vectorizes them, and built for AVX2 and for the
// baseline CPU with the one that the CPU supports chosen at run time (GCC on
// x86-64). Both clones do the same IEEE float operations in the same order
// (no FMA contraction: the project builds in ISO C++ mode), so the results do
// not depend on the CPU. No LibTorch here; callers split the work between
// threads.
#include <cstdint>

namespace lrq::recon {

// For k in [0, n), with one step s and zero point z for all n elements:
//   t = w[k] / (s · expE[k]),  q = clamp(round(t) + z, lo, hi),  out[k] = (q − z) · s,
// round to nearest with halves to even, as at::round, and each operation in that
// order, as the tensor path does it.
void scaledRoundingForward(const float *w, const float *expE, float s, float z, float lo, float hi,
                           float *out, int64_t n);

// The straight-through gradients of the same elements, given dL/dout in grad:
//   gradE[k] = inside ? −grad[k] · s · t : 0,  inside = (round(t) + z within [lo, hi]),
// and returns Σ_k grad[k] · ((q − z) − (inside ? t : 0)), dL/ds for these
// elements, summed in double in a fixed order.
double scaledRoundingBackward(const float *w, const float *expE, const float *grad, float s,
                              float z, float lo, float hi, float *gradE, int64_t n);

// One Adam update of n elements: m = β1 m + (1 − β1) g, v = β2 v + (1 − β2) g²,
// p −= stepSize · m / (√v / sqrtBc2 + eps), in float.
// β1, β2 and their complements are rounded to float once (as tensor ops with
// double scalars do).
void adamUpdate(float *p, float *m, float *v, const float *g, double beta1, double beta2,
                float stepSize, float sqrtBc2, float eps, int64_t n);

// LR-QAT's codes and Ŵ (core/quant/lrqat_layer.cpp) for n elements that share
// one unit. The zero point's role depends on the grid.
enum class CodeZero {
  None,    // symmetric: Ŵ = clamp(q) · s
  Integer, // asymmetric: codes carry z, Ŵ = (clamp(q) − z) · s
  Offset   // offset form: z holds the value offset M, Ŵ = clamp(q) · s − M
};
struct LrqatUnit {
  float s, z;        // step, and zero point or offset M
  float inv, offset; // 2^−f (Φ0's fraction) and the storage offset c
  float lo, hi;      // qmin, qmax
  CodeZero zero;
};
// φ = v[k] · inv, + c (offset form) or − (z − c) (integer zero);
// q = round(φ + ab[k]) (halves to even), + z (integer zero);
// codes[k] = q clamped to int16 (0 when q is not finite); Ŵ[k] from clamp(q, lo, hi).
void lrqatWeight(const int8_t *v, const float *ab, const LrqatUnit &u, float *w, int16_t *codes,
                 int64_t n);
// du[k] = grad[k] · s where lo <= codes[k] <= hi, else 0; returns
// Σ grad[k] · (clamp(codes[k], lo, hi) − z) (without − z unless the zero is an
// integer one), summed in double in a fixed order.
double lrqatGradients(const int16_t *codes, const float *grad, const LrqatUnit &u, float *du,
                      int64_t n);

} // namespace lrq::recon
