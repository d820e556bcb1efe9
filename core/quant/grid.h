#pragma once
// Uniform weight grids (ALGORITHMS.md, "Uniform grid"): step and zero-point
// initialisation, integer codes, dequantization and fake quantization that
// autograd can differentiate (straight-through round, clamp with zero gradient
// outside the grid). Internal to core: includes ATen.
//
// Conventions, n = 2^bits levels:
//  - Asymmetric: the range [lo, hi] = [min(min W, 0), max(max W, 0)] of each unit
//    (tensor, row or group) always contains 0, so 0 is exactly representable.
//    s = (f hi - f lo) / (n - 1), z = round(-f lo / s) (an integer in [0, n-1]),
//    q = clamp(round(x / s) + z, 0, n - 1), x^ = s (q - z).
//  - Symmetric: a = max |W| of the unit, s = f a / (n/2 - 1), z = 0,
//    q = clamp(round(x / s), -n/2, n/2 - 1), x^ = s q. The step maps +-a onto
//    +-(n/2 - 1) exactly (no half-way tie at the extremes); the extra level -n/2
//    is reached by values clipped by the search.
//  - Symmetric, full range (GridSpec::fullRange): s = f a / (n/2) and z = -1
//    when the unit's largest value is larger than minus its smallest (levels
//    -n/2+1..n/2, the positive extreme on n/2), else z = 0 (levels
//    -n/2..n/2-1, the negative extreme on -n/2); q = clamp(round(x / s) + z,
//    -n/2, n/2 - 1), x^ = s (q - z). The clipping search scales a the same way.
//  - f is the clipping fraction: 1 for MinMax; for ClippingSearch the value of
//    k / clipSteps (k = clipSteps..1) minimising sum |W - Q(W)|^clipNorm over the
//    unit, the largest fraction winning ties.
//  - ClippingSearch2D (asymmetric grids; the LRQ / FlexRound reference's
//    "clipping" init): for a unit holding both signs (lo < 0 < hi), every step
//    s_k = (hi - lo) (k / clipSteps) / (n - 1), k = 1..clipSteps, with every
//    integer zero point z = 0..n-1 (the grid covers [-z s_k, (n-1-z) s_k]),
//    minimising sum |W - Q(W)|^clipNorm; the first minimum in the order k, then
//    z (both ascending) wins, as in the reference's loops. A one-sided unit
//    (all values >= 0 or all <= 0, zero units included) takes the 1-D
//    ClippingSearch, the reference's fallback; the reference decides
//    one-sidedness for the whole tensor, this grid per unit. f (clipFraction)
//    is k / clipSteps. On the CPU an exact branch and bound per unit; else
//    every candidate is evaluated in chunks (bounded memory),
//    in float32 (|e|^p as exp(p log|e|); chunks' sums added in double).
//  - A stepFormat other than f32 (quant_spec.h) rounds every step to the
//    nearest value the format can store (applyStepFormat) where it is made:
//    MinMax rounds its step and recomputes the asymmetric zero point
//    z = round(-f lo / s) from the rounded step; the searches round every
//    candidate step before evaluating it (the 1-D search recomputing z the
//    same way, the 2-D search trying every z with it), so they choose among
//    steps the format stores and the chosen grid is exactly one it stores.
//  - k-superblock (llama.cpp's Q6_K; quant_spec.h) couples the 16 groups of
//    a 256-column super-block: s_j = d sc_j with one half d per super-block.
//    Steps are made per group as for f32 (MinMax, or the 1-D search choosing
//    each group's fraction on its own, with unrounded candidate steps), then
//    rounded together once (applyStepFormat on [rows, groups]): d = the
//    smallest half >= max_j s_j / 127; the largest step becomes d
//    ceil(s_max / d), 127 d but for the tiniest d (never cut: at most one
//    step of d's precision above it, 2^-10 relative for a normal half,
//    coarser for the subnormal d of steps below ~0.008), the others sc_j =
//    clamp(round(s_j / d), 1, 127), s_j := d sc_j: the nearest multiple of d
//    (a step below d becomes d). Rounded steps stay put. The search does not look at
//    the rounded grid: searching 16 coupled groups jointly would be a different, far larger search.
//    A zero group's step is 2^-24 (not 1), so that it never sets d. clipFraction is the fraction
//    found before the rounding.
//  - k-superblock-offset (llama.cpp's Q4_K; quant_spec.h) is an asymmetric
//    grid in offset form: GridParams::zeroPoint holds an offset M >= 0 in
//    value units instead of an integer zero point, and
//      q = clamp(round((x + M) / s), 0, n-1),   x^ = fl(s q - M),
//    computed in float32 in that order (s q is exact; the subtraction rounds
//    once), which is llama.cpp's y = (d sc) q - (dmin m) bit for bit. An
//    integer zero point cannot express it: s (q - z) equals s q - M only when
//    M / s is an integer, and Q4_K's d sc and dmin m are independent. Init per
//    group of 32: the min/max (or 1-D search fraction f) range, s = f (hi -
//    lo) / (n-1), M = -f lo; then per 256-column super-block of 8 groups the
//    steps are rounded as k-superblock's with 63 for 127 (d = the smallest half
//    >= s_max / 63, sc_max = ceil, the others clamp(round(s_j / d), 1, 63)),
//    and the offsets the same way with dmin (m_max = ceil(M_max / dmin), the
//    others clamp(round(M_j / dmin), 0, 63); a super-block without offsets
//    keeps M = 0): applyStepFormat and applyOffsetFormat. Both roundings are
//    idempotent, so a stored grid passes through them unchanged. Every
//    quantization site (grid.cpp, GPTQ's column loop, the learned methods'
//    layers, the export's packing) asks GridSpec::offsetForm() and uses
//    these two formulas; methods that keep an integer zero point (LR-QAT)
//    refuse the format.
//  - MethodDefault ("auto") is resolved by the method before it runs
//    (QuantMethod::referenceGrid); here it is MinMax.
//  - round is at::round: halves to even.
//  - A unit whose range is zero (all zeros) gets s = 1 (then q = z and x^ = 0).
//  - Per-group with a group size g that does not divide the row length: the
//    last group of each row is shorter (576 with g = 128: 128,128,128,128,64),
//    as GPTQ implementations do; there are ceil(in / g) groups per row.
// All step arithmetic is float32, so an independent float32 implementation
// (tests/reference/quant_reference.py) reproduces codes bit for bit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>

#include "core/quant/quant_spec.h"

namespace lrq::quant {

// Steps and zero points of one weight [out, in], shaped [rows, groups]:
// per-tensor [1, 1], per-channel [out, 1], per-group [out, ceil(in / groupSize)]
// (a ragged last group when groupSize does not divide in).
// The zero point is a float tensor holding integers (0 for symmetric grids),
// so that the same formula x^ = s (q - z) serves both grids and autograd.
struct GridParams {
  at::Tensor scale;
  at::Tensor zeroPoint;
  // ClippingSearch and ClippingSearch2D only: the range fraction kept for
  // each step, same shape; undefined for MinMax.
  at::Tensor clipFraction;
};

// x + (round(x) - x).detach(): the forward value of round, the gradient of the
// identity. Without autograd (x needs no grad) it is plain at::round.
// at::round rounds halves to even.
at::Tensor roundSte(const at::Tensor &x);

// The step rounded to spec.stepFormat (identity for f32), elementwise, for
// steps > 0 in float32:
//  - f16: the nearest IEEE half;
//  - f16-offset: the nearest half with at most 11 - bits significant bits (a
//    multiple of 2^-24, the smallest half), so that s z is an exact half for
//    every z in 0..2^bits - 1.
//  - k-superblock: step must be [rows, groups] with groups a multiple of 16;
//    the super-block rounding described above (not elementwise).
// Nearest in value, ties to the even significand (as a float -> half
// conversion); a step that would round to 0 becomes 2^-24. When step requires
// grad the result is straight-through (forward the rounded value, gradient
// the identity) and a step above the format's largest value is clamped to it,
// so training sees the grid it will end on; otherwise a step that is not
// finite, not positive or above the largest value throws lrq::Error naming it.
at::Tensor applyStepFormat(const at::Tensor &step, const GridSpec &spec);
// The offsets of a k-superblock-offset grid [rows, groups] (>= 0) rounded to
// d_min m, m in 0..63, per super-block of 8 groups (see above); the identity
// for every other format. Straight-through when offset requires grad (then
// clamped into range); otherwise an offset outside [0, 65504 x 63] throws.
at::Tensor applyOffsetFormat(const at::Tensor &offset, const GridSpec &spec);
// The largest step the format stores: 65504 for f16; for f16-offset the
// largest allowed step s with s (2^bits - 1) <= 65504; 65504 x 127 for
// k-superblock, 65504 x 63 for k-superblock-offset; +inf for f32.
double largestStep(const GridSpec &spec);

// Validates spec, and weight against it: 2-D floating non-empty [out, in]
// (any group size fits: the last group may be shorter; a k-superblock grid
// needs in to be a multiple of 256). Throws lrq::Error
// naming the problem.
void checkWeightForGrid(const at::Tensor &weight, const GridSpec &spec);

// Steps and zero points for weight [out, in] by spec.init. Computed without
// gradient. Zero ranges (constant zero rows) get step 1, so nothing divides by
// zero. See grid.cpp for the exact conventions.
GridParams computeGridParams(const at::Tensor &weight, const GridSpec &spec);

// Elements per row block of the 1-D search (default 2^18; same result for
// any size). Tests change it to compare blocks with the whole tensor; <= 0
// restores the default. Returns the previous value.
int64_t setClipSearchBlockElements(int64_t elements);
// Elements per temporary of the 2-D search (three live at once; default 2^21,
// 24 MB in all). Tests lower it to exercise the chunking; <= 0 restores the
// default. Returns the previous value.
int64_t setClipSearchChunkElements(int64_t elements);
// How the 2-D search evaluates its candidates (same result either way): all
// of them in batched tensor chunks, or a branch and bound per unit that drops
// a candidate once its partial error passes the best (grid.cpp). Auto: the
// branch and bound on the CPU, batched elsewhere. Returns the previous value.
enum class Search2DKernel { Auto, Batched, BranchAndBound };
Search2DKernel setClipSearch2DKernel(Search2DKernel kernel);

// Steps and zero points for the min/max range scaled by fraction (in (0, 1]);
// fraction 1 is MinMax. Every quantization unit uses the same fraction.
GridParams gridParamsForFraction(const at::Tensor &weight, const GridSpec &spec, double fraction);

// Expands a [rows, groups] parameter to a tensor broadcastable against the
// weight [out, in] (per-tensor [1,1], per-channel [out,1], per-group [out,in];
// a ragged last group's parameter covers its shorter span).
// Differentiable (no in-place ops).
at::Tensor expandToWeight(const at::Tensor &param, const GridSpec &spec, int64_t in);

// Index of the quantization unit of element (row, col) in a row-major
// [rows, groups] parameter tensor (a ragged last group has index col / g like
// the others), for loops over raw elements.
struct UnitIndex {
  Granularity granularity;
  int64_t groups, groupSize;
  int64_t operator()(int64_t row, int64_t col) const {
    switch (granularity) {
    case Granularity::PerTensor:
      return 0;
    case Granularity::PerChannel:
      return row;
    case Granularity::PerGroup:
      return row * groups + col / groupSize;
    }
    return 0;
  }
};
// The index into params ([rows, groups] as computeGridParams lays them out).
inline UnitIndex unitIndex(const GridSpec &spec, const at::Tensor &params) {
  return {spec.granularity, params.size(1), spec.groupSize};
}
// f(row, unit, begin, end) for each run [begin, end) of flat (row-major)
// indices of an [out, in] weight whose elements share one unit; rows are split
// between threads (at::parallel_for), each run belongs to one of them.
template <typename F>
void forEachUnitRun(const UnitIndex &unit, int64_t out, int64_t in, const F &f) {
  const int64_t span = unit.granularity == Granularity::PerGroup ? unit.groupSize : in;
  at::parallel_for(0, out, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, in)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t r = r0; r < r1; ++r)
                       for (int64_t c = 0; c < in; c += span)
                         f(r, unit(r, c), r * in + c, r * in + std::min(in, c + span));
                   });
}

// Elementwise grid math on tensors that broadcast together; the lowest level,
// for methods that build their own divisor (FlexRound, LRQ, LR-QAT).
//   codes:       clamp(round(x / s) + z, qmin, qmax)   (no gradient, float tensor)
//   fake-quant:  s (clamp(roundSte(x / s) + z, qmin, qmax) - z)
// The same with explicit bounds, for grids outside GridSpec (activations up to 16 bits).
at::Tensor fakeQuantizeClamped(const at::Tensor &x, const at::Tensor &scale,
                               const at::Tensor &zeroPoint, int64_t qmin, int64_t qmax);
// Asymmetric step and zero point for [lo, hi] (lo <= 0 <= hi, broadcastable float
// tensors) on `levels` levels: s = (hi - lo) / (levels - 1) (1 where that is 0),
// z = round(-lo / s).
std::pair<at::Tensor, at::Tensor> asymmetricStep(const at::Tensor &lo, const at::Tensor &hi,
                                                 int64_t levels);
at::Tensor quantizeElementwise(const at::Tensor &x, const at::Tensor &scale,
                               const at::Tensor &zeroPoint, const GridSpec &spec);
at::Tensor fakeQuantizeElementwise(const at::Tensor &x, const at::Tensor &scale,
                                   const at::Tensor &zeroPoint, const GridSpec &spec);

// An offset-form grid's values: codes * scale - offset (broadcasting), two
// float32 operations in that order.
at::Tensor dequantizeOffset(const at::Tensor &codes, const at::Tensor &scale,
                            const at::Tensor &offset);

// Integer codes of weight [out, in] (int32, within [qmin, qmax]).
at::Tensor quantizeWeight(const at::Tensor &weight, const GridParams &params, const GridSpec &spec);
// s (q - z) back to float32 [out, in] (s q - M in offset form).
at::Tensor dequantizeWeight(const at::Tensor &codes, const GridParams &params,
                            const GridSpec &spec);
// Dequantize(quantize(W)) in one differentiable expression: gradients reach
// weight through the straight-through round and params.scale when they
// require grad.
at::Tensor fakeQuantizeWeight(const at::Tensor &weight, const GridParams &params,
                              const GridSpec &spec);
// computeGridParams + fakeQuantizeWeight: round-to-nearest Ŵ.
at::Tensor roundToNearest(const at::Tensor &weight, const GridSpec &spec);

// sum |a - b|^p over each quantization unit of spec (rows of the [units, elems]
// view), in double: what the clipping search minimises. Shape [units].
at::Tensor unitLpError(const at::Tensor &a, const at::Tensor &b, const GridSpec &spec, double p);

} // namespace lrq::quant
