// Conventions: see grid.h.
#include "core/quant/grid.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "core/common/error.h"

namespace lrq::quant {

namespace {

// The group length in a row of in elements: a group wider than the row is the
// row itself (padding it up to the group size would cost memory for nothing).
int64_t groupWidth(const GridSpec &spec, int64_t in) {
  return std::max<int64_t>(1, std::min(spec.groupSize, in));
}

int64_t groupCount(const GridSpec &spec, int64_t in) {
  return (in + groupWidth(spec, in) - 1) / groupWidth(spec, in);
}

// Per-group with a ragged last group: the row padded with zeros up to a whole
// number of groups. The padding changes nothing: every range contains 0, 0 is
// exactly representable on every grid (it maps to x^ = 0, error 0), so steps,
// zero points, clipping-search errors and the real elements' codes are those of
// the shorter last group on its own. Differentiable.
at::Tensor padToGroups(const at::Tensor &weight, const GridSpec &spec) {
  const int64_t in = weight.size(1);
  const int64_t padded = groupCount(spec, in) * groupWidth(spec, in);
  if (padded == in)
    return weight;
  return at::constant_pad_nd(weight, {0, padded - in}, 0.0);
}

// [units, elements]: one quantization unit per row.
at::Tensor unitsView(const at::Tensor &weight, const GridSpec &spec) {
  const int64_t out = weight.size(0), in = weight.size(1);
  switch (spec.granularity) {
  case Granularity::PerTensor:
    return weight.reshape({1, out * in});
  case Granularity::PerChannel:
    return weight;
  case Granularity::PerGroup:
    return padToGroups(weight, spec).reshape({out * groupCount(spec, in), groupWidth(spec, in)});
  }
  return weight;
}

// The inverse of unitsView for a tensor of the same [units, elements] shape:
// back to [out, in], dropping a ragged last group's padding.
at::Tensor fromUnits(const at::Tensor &units, const GridSpec &spec, int64_t out, int64_t in) {
  if (spec.granularity != Granularity::PerGroup)
    return units.reshape({out, in});
  const at::Tensor rows = units.reshape({out, groupCount(spec, in) * groupWidth(spec, in)});
  return rows.size(1) == in ? rows : rows.narrow(1, 0, in).contiguous();
}

// [units, 1] parameters back to [rows, groups].
at::Tensor paramShape(const at::Tensor &unitParam, const GridSpec &spec, int64_t out, int64_t in) {
  switch (spec.granularity) {
  case Granularity::PerTensor:
    return unitParam.reshape({1, 1});
  case Granularity::PerChannel:
    return unitParam.reshape({out, 1});
  case Granularity::PerGroup:
    return unitParam.reshape({out, groupCount(spec, in)});
  }
  return unitParam;
}

// [rows, groups] parameters to [units, 1].
at::Tensor unitParam(const at::Tensor &param) {
  return param.reshape({-1, 1});
}

struct Range {
  at::Tensor lo, hi; // [units, 1], lo <= 0 <= hi
};

Range unitRange(const at::Tensor &units) {
  return {units.amin(1, true).clamp_max(0.0), units.amax(1, true).clamp_min(0.0)};
}

constexpr float kSmallestHalf = 5.9604644775390625e-08f; // 2^-24

// Step and zero point of each unit for the range scaled by fraction, the step
// in spec's step format (the zero point recomputed from the rounded step); a
// k-superblock step is left unrounded (see the KSuperblock branch).
std::pair<at::Tensor, at::Tensor> paramsFromRange(const Range &range, const GridSpec &spec,
                                                  float fraction) {
  if (spec.offsetForm()) {
    // Offset form: s = (hi - lo) / (n - 1) and M = -lo, so that code 0 is lo
    // and code n-1 is hi. Both are rounded together on [rows, groups] by the
    // caller (the super-block couples the units). A zero unit's step is the
    // smallest half, so that it never sets the super-block's d.
    const at::Tensor lo = range.lo * fraction, hi = range.hi * fraction;
    at::Tensor scale = (hi - lo) / double(spec.levels() - 1);
    scale = at::where(scale > 0, scale, at::full_like(scale, kSmallestHalf));
    return {scale, lo.neg()};
  }
  if (!spec.symmetric) {
    const at::Tensor lo = range.lo * fraction, hi = range.hi * fraction;
    auto [scale, zero] = asymmetricStep(lo, hi, spec.levels());
    if (spec.stepFormat == StepFormat::Float32)
      return {scale, zero};
    scale = applyStepFormat(scale, spec);
    zero = at::round(lo.neg() / scale).clamp(0.0, double(spec.levels() - 1));
    return {scale, zero};
  }
  const at::Tensor absMax = at::maximum(range.lo.neg(), range.hi) * fraction;
  const double half = double(spec.levels()) / 2.0;
  at::Tensor scale = absMax / (spec.fullRange ? half : half - 1.0);
  // Full range: the extreme lands on level n/2 on its own side, so a positive
  // extreme (strictly larger than the negative one) moves the levels up by one.
  const at::Tensor zero = spec.fullRange ? (range.hi > range.lo.neg()).to(scale.scalar_type()).neg()
                                         : at::zeros_like(scale);
  if (spec.stepFormat == StepFormat::KSuperblock) {
    // A zero unit's step is the smallest half, so that it never sets the
    // super-block's d; its codes are 0 whatever the step. The rounding couples
    // the units of a super-block: the caller applies it on [rows, groups].
    scale = at::where(scale > 0, scale, at::full_like(scale, kSmallestHalf));
    return {scale, zero};
  }
  scale = at::where(scale > 0, scale, at::ones_like(scale));
  scale = applyStepFormat(scale, spec);
  return {scale, zero};
}

// |e|^p in double as exp(p log|e|): vectorised, unlike pow with a general
// exponent, and accurate to ~1e-14 relative (|e| = 0 gives exp(-inf) = 0).
at::Tensor lpPower(const at::Tensor &e, double p) {
  return (e.abs().to(at::kDouble).log() * p).exp();
}

// |e|^p in place for e >= 0 (double): repeated squaring for an integer p
// (LR-QAT's p = 4: two multiplications instead of a log and an exp, which this
// LibTorch build does not vectorise), exp(p log e) otherwise.
at::Tensor powerInPlace(at::Tensor e, double p) {
  const double whole = std::round(p);
  if (whole != p || whole < 1.0)
    return e.log_().mul_(p).exp_();
  // The same products as base * base and result * base, written into e and
  // one buffer instead of a fresh tensor for each.
  at::Tensor result;
  at::Tensor base = e;
  for (int64_t n = int64_t(whole); n > 0; n >>= 1) {
    if (n & 1)
      result = result.defined() ? result.mul_(base) : (n > 1 ? base.clone() : base);
    if (n > 1)
      base.mul_(base);
  }
  return result;
}

at::Tensor asFloat(const at::Tensor &weight) {
  return weight.scalar_type() == at::kFloat ? weight : weight.to(at::kFloat);
}

} // namespace

namespace {

// Significant bits a step of the format keeps (f32 is not rounded).
int significantBits(const GridSpec &spec) {
  return spec.stepFormat == StepFormat::Fp16Offset ? 11 - spec.bits : 11;
}

constexpr double kLargestHalf = 65504.0;
constexpr int kSmallestHalfExponent = -24; // 2^-24, the smallest positive (subnormal) half

// Powers of two 2^k for an integer tensor k in the normal float range, built
// from the exponent field so that they are exact whatever exp2 does.
at::Tensor powerOfTwo(const at::Tensor &k) {
  return ((k.to(at::kInt) + 127) * (1 << 23)).view(at::kFloat);
}

} // namespace

double largestStep(const GridSpec &spec) {
  switch (spec.stepFormat) {
  case StepFormat::Float32:
    return std::numeric_limits<double>::infinity();
  case StepFormat::Fp16:
    return kLargestHalf;
  case StepFormat::KSuperblock:
    return kLargestHalf * kSuperBlockMaxScale;
  case StepFormat::KSuperblockOffset:
    return kLargestHalf * kOffsetSuperBlockMaxScale;
  case StepFormat::Fp16Offset:
    break;
  }
  // The largest M 2^e <= 65504 / (n - 1) with M < 2^P.
  const int p = significantBits(spec);
  const double limit = kLargestHalf / double(spec.levels() - 1);
  int e = 0;
  std::frexp(limit, &e); // limit in [2^(e-1), 2^e)
  const double quantum = std::ldexp(1.0, e - p);
  return std::floor(limit / quantum) * quantum;
}

namespace {

// The smallest half >= x, for x > 0 (float32): a half with 11 significant
// bits near x is a multiple of 2^(e - 11) for 2^(e-1) <= x < 2^e, and never
// finer than 2^-24.
at::Tensor halfAtOrAbove(const at::Tensor &x) {
  const at::Tensor exponent = std::get<1>(at::frexp(x));
  const at::Tensor quantum = powerOfTwo((exponent - 11).clamp_min(kSmallestHalfExponent));
  return at::ceil(x / quantum).mul_(quantum);
}

// The super-block rounding of values [rows, groups] (float32, >= 0, at most
// 65504 maxScale), `groups` per super-block: d = the
// smallest half >= max_j x_j / maxScale; the largest value gets ceil(x_max /
// d) (maxScale unless d is one of the smallest subnormal halves; never cut),
// the others clamp(round(x_j / d), minScale, maxScale); x_j := d sc_j (exact
// in float32). Values already rounded stay put: d sc_max / maxScale leads
// back to the same d. A super-block of zeros (offsets only) stays zero.
at::Tensor roundToSuperBlocks(const at::Tensor &x, int64_t groups, int maxScale, int minScale) {
  if (x.dim() != 2 || x.size(1) % groups != 0)
    throw Error("weight grid: k-superblock steps must be [rows, groups] with groups a multiple "
                "of " +
                std::to_string(groups) + " (rows of a multiple of 256 inputs), got " +
                std::to_string(x.dim() == 2 ? x.size(1) : -1) + " groups");
  const int64_t rows = x.size(0), blocks = x.size(1) / groups;
  const at::Tensor s = x.reshape({rows, blocks, groups});
  const at::Tensor peak = s.amax(2, true);
  const at::Tensor d =
      halfAtOrAbove(peak / float(maxScale)).clamp_(double(kSmallestHalf), kLargestHalf);
  const at::Tensor ratio = s / d;
  const at::Tensor sc = at::where(s == peak, at::ceil(ratio), at::round(ratio))
                            .clamp_(double(minScale), double(maxScale));
  return (sc * d).reshape({rows, blocks * groups});
}

} // namespace

at::Tensor applyStepFormat(const at::Tensor &step, const GridSpec &spec) {
  if (spec.stepFormat == StepFormat::Float32)
    return step;
  const bool training = step.requires_grad();
  const double largest = largestStep(spec);
  at::Tensor rounded;
  {
    at::NoGradGuard noGrad;
    const at::Tensor x = step.detach().to(at::kFloat);
    if (!training) {
      const at::Tensor storable = (x > 0).logical_and_(x <= largest);
      if (!storable.all().item<bool>()) {
        const double bad = x.masked_select(storable.logical_not()).reshape({-1})[0].item<double>();
        char text[160];
        std::snprintf(text, sizeof text,
                      "weight grid: step %g cannot be stored as %s (steps of %d-bit codes must be "
                      "in (0, %g])",
                      bad, stepFormatName(spec.stepFormat), spec.bits, largest);
        throw Error(text);
      }
    }
    if (spec.stepFormat == StepFormat::KSuperblock) {
      rounded = roundToSuperBlocks(x.clamp(double(kSmallestHalf), largest), kSuperBlockGroups,
                                   kSuperBlockMaxScale, 1);
    } else if (spec.stepFormat == StepFormat::KSuperblockOffset) {
      rounded = roundToSuperBlocks(x.clamp(double(kSmallestHalf), largest), kOffsetSuperBlockGroups,
                                   kOffsetSuperBlockMaxScale, 1);
    } else {
      // x = m 2^e with m in [0.5, 1): 2^(e-1) <= x < 2^e, so a value with P
      // significant bits near x is a multiple of 2^(e - P), and never finer
      // than 2^-24. Dividing and multiplying by a power of two is exact.
      const at::Tensor clamped = x.clamp(0.0, largest);
      const at::Tensor exponent = std::get<1>(at::frexp(clamped));
      const at::Tensor quantum =
          powerOfTwo((exponent - significantBits(spec)).clamp_min(kSmallestHalfExponent));
      rounded = at::round(clamped / quantum).mul_(quantum);
      rounded = rounded.clamp_(std::ldexp(1.0, kSmallestHalfExponent), largest);
    }
    if (step.scalar_type() != at::kFloat)
      rounded = rounded.to(step.scalar_type());
  }
  if (!training)
    return rounded;
  // rounded + 0 with the gradient of the identity: the forward value is the
  // rounded step exactly (step + (rounded - step) need not be).
  return rounded + (step - step.detach());
}

at::Tensor applyOffsetFormat(const at::Tensor &offset, const GridSpec &spec) {
  if (!spec.offsetForm())
    return offset;
  const bool training = offset.requires_grad();
  const double largest = kLargestHalf * kOffsetSuperBlockMaxScale;
  at::Tensor rounded;
  {
    at::NoGradGuard noGrad;
    const at::Tensor x = offset.detach().to(at::kFloat);
    if (!training) {
      const at::Tensor storable = (x >= 0).logical_and_(x <= largest);
      if (!storable.all().item<bool>()) {
        const double bad = x.masked_select(storable.logical_not()).reshape({-1})[0].item<double>();
        char text[160];
        std::snprintf(text, sizeof text,
                      "weight grid: offset %g cannot be stored as %s (offsets must be in [0, %g])",
                      bad, stepFormatName(spec.stepFormat), largest);
        throw Error(text);
      }
    }
    rounded = roundToSuperBlocks(x.clamp(0.0, largest), kOffsetSuperBlockGroups,
                                 kOffsetSuperBlockMaxScale, 0);
    if (offset.scalar_type() != at::kFloat)
      rounded = rounded.to(offset.scalar_type());
  }
  if (!training)
    return rounded;
  return rounded + (offset - offset.detach());
}

at::Tensor roundSte(const at::Tensor &x) {
  if (!x.requires_grad())
    return at::round(x);
  return x + (at::round(x) - x).detach();
}

void checkWeightForGrid(const at::Tensor &weight, const GridSpec &spec) {
  spec.validate();
  if (!weight.defined() || weight.dim() != 2)
    throw Error("weight grid: expected a 2-D weight [out, in]");
  if (!at::isFloatingType(weight.scalar_type()))
    throw Error("weight grid: expected a floating-point weight");
  if (weight.size(0) < 1 || weight.size(1) < 1)
    throw Error("weight grid: empty weight");
  if (spec.stepFormat == StepFormat::KSuperblock && weight.size(1) % kSuperBlockColumns != 0)
    throw Error("weight grid: step format k-superblock (GGUF Q6_K) needs rows of a multiple of " +
                std::to_string(kSuperBlockColumns) + " inputs, got " +
                std::to_string(weight.size(1)) +
                " (llama.cpp stores such tensors as Q8_0: the gguf-q6_k preset's fallback grid)");
  if (spec.stepFormat == StepFormat::KSuperblockOffset && weight.size(1) % kSuperBlockColumns != 0)
    throw Error("weight grid: step format k-superblock-offset (GGUF Q4_K) needs rows of a "
                "multiple of " +
                std::to_string(kSuperBlockColumns) + " inputs, got " +
                std::to_string(weight.size(1)) +
                " (llama.cpp stores such tensors as Q5_0: the gguf-q4_k preset's fallback grid)");
}

namespace {

// Steps (and offsets) [rows, groups] of a super-block grid, made per unit,
// rounded together; other formats rounded their steps per unit already.
void roundSuperBlocks(GridParams &p, const GridSpec &spec) {
  if (!isSuperBlockFormat(spec.stepFormat))
    return;
  p.scale = applyStepFormat(p.scale, spec);
  p.zeroPoint = applyOffsetFormat(p.zeroPoint, spec);
}

} // namespace

GridParams gridParamsForFraction(const at::Tensor &weight, const GridSpec &spec, double fraction) {
  checkWeightForGrid(weight, spec);
  if (!(fraction > 0.0 && fraction <= 1.0))
    throw Error("weight grid: clipping fraction must be in (0, 1], got " +
                std::to_string(fraction));
  at::NoGradGuard noGrad;
  const at::Tensor w = asFloat(weight.detach());
  const auto [scale, zero] = paramsFromRange(unitRange(unitsView(w, spec)), spec, float(fraction));
  const int64_t out = w.size(0), in = w.size(1);
  GridParams p;
  p.scale = paramShape(scale, spec, out, in);
  p.zeroPoint = paramShape(zero, spec, out, in);
  roundSuperBlocks(p, spec);
  return p;
}

namespace {

// Step, zero point and range fraction of each unit, [units, 1] each.
struct UnitSearch {
  at::Tensor scale, zero, fraction;
};

// The 1-D clipping search on units [units, elements]: one pass over the units
// per candidate fraction, every unit at once; a strictly smaller error
// replaces, so ties keep the larger fraction. A layer of many units is cut into
// row blocks of about searchBlockElements, which the threads share, each block
// searched by one thread on its own: a candidate's temporaries then stay in
// that core's cache, instead of the whole layer streaming through memory a
// dozen times per candidate, and the threads meet once per layer rather than
// at every operation. Each unit's arithmetic, its error sum included, is the
// same as on the whole tensor (test_grid_init compares them bit for bit).
constexpr int64_t kDefaultSearchBlockElements = int64_t(1) << 18;
std::atomic<int64_t> searchBlockElements{kDefaultSearchBlockElements};

UnitSearch searchFractionsBlock(const at::Tensor &units, const GridSpec &spec) {
  const Range range = unitRange(units);
  at::Tensor bestError;
  UnitSearch best;
  for (int k = spec.clipSteps; k >= 1; --k) {
    const float fraction = float(double(k) / double(spec.clipSteps));
    const auto [scale, zero] = paramsFromRange(range, spec, fraction);
    // fakeQuantizeElementwise's arithmetic, in place on temporaries of our own.
    at::Tensor e;
    if (spec.offsetForm()) {
      e = (units + zero).div_(scale);
      e.round_().clamp_(double(spec.qmin()), double(spec.qmax()));
      e.mul_(scale).sub_(zero).sub_(units).abs_();
    } else {
      e = units / scale;
      e.round_().add_(zero).clamp_(double(spec.qmin()), double(spec.qmax()));
      e.sub_(zero).mul_(scale).sub_(units).abs_();
    }
    const at::Tensor error = powerInPlace(e.to(at::kDouble), spec.clipNorm).sum(1, true);
    if (!bestError.defined()) {
      bestError = error;
      best = {scale, zero, at::full_like(scale, fraction)};
      continue;
    }
    const at::Tensor better = error < bestError;
    bestError = at::where(better, error, bestError);
    best.scale = at::where(better, scale, best.scale);
    best.zero = at::where(better, zero, best.zero);
    best.fraction = at::where(better, at::full_like(scale, fraction), best.fraction);
  }
  return best;
}

UnitSearch searchFractions(const at::Tensor &units, const GridSpec &spec) {
  const int64_t rows = units.size(0), width = std::max<int64_t>(units.size(1), 1);
  const int64_t blockRows = std::max<int64_t>(searchBlockElements / width, 1);
  if (rows < 2 * blockRows)
    return searchFractionsBlock(units, spec);
  const int64_t blocks = rows / blockRows; // the last one takes the remainder
  std::vector<UnitSearch> found(size_t(blocks), UnitSearch{});
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = b * blockRows;
      const int64_t length = b + 1 == blocks ? rows - start : blockRows;
      found[size_t(b)] = searchFractionsBlock(units.narrow(0, start, length), spec);
    }
  });
  std::vector<at::Tensor> scales, zeros, fractions;
  for (const UnitSearch &f : found) {
    scales.push_back(f.scale);
    zeros.push_back(f.zero);
    fractions.push_back(f.fraction);
  }
  return {at::cat(scales), at::cat(zeros), at::cat(fractions)};
}

// Elements of one [units, sizes, elements] temporary of the 2-D search: three
// of them (x / s, its rounding, the error) stay within 24 MB.
constexpr int64_t kDefaultSearchChunkElements = int64_t(1) << 21;
std::atomic<int64_t> searchChunkElements{kDefaultSearchChunkElements};
std::atomic<int> search2DKernel{int(Search2DKernel::Auto)};

// The steps s_k = (hi - lo) (k / clipSteps) / (n - 1) of every unit, [units,
// clipSteps], in float32 as the 1-D search computes its steps (then rounded to
// the step format); and the
// fractions k / clipSteps, [1, clipSteps].
std::pair<at::Tensor, at::Tensor> candidateSteps(const Range &range, const GridSpec &spec) {
  const int64_t steps = spec.clipSteps;
  const at::Tensor fractions = at::arange(1, steps + 1, range.lo.options().dtype(at::kDouble))
                                   .div_(double(steps))
                                   .to(at::kFloat)
                                   .unsqueeze(0);
  // In the step format: every candidate is a step the grid can store.
  const at::Tensor scales = applyStepFormat(
      (range.hi * fractions - range.lo * fractions) / double(spec.levels() - 1), spec);
  return {scales, fractions};
}

// The 2-D search on units [units, elements] that hold both signs (lo < 0 < hi).
// Candidates, in the reference's order: range size k = 1..clipSteps, then zero
// point z = 0..n-1; step s_k = (hi - lo) (k / clipSteps) / (n - 1), so the grid
// covers [-z s_k, (n - 1 - z) s_k]. Since z is an integer,
//   x - s (clamp(round(x / s) + z, 0, n-1) - z) = s (t - clamp(round(t), -z, n-1-z)),
// t = x / s: t and round(t) are computed once per step and shared by all zero
// points, and s^p factors out of each unit's sum. The first minimum wins.
UnitSearch searchRangesAndZerosBatched(const at::Tensor &units, const GridSpec &spec) {
  const int64_t count = units.size(0), width = units.size(1), steps = spec.clipSteps;
  const int64_t levels = spec.levels();
  const auto [scales, fractionsF] = candidateSteps(unitRange(units), spec);
  at::Tensor errors = at::zeros({count, steps, levels}, units.options().dtype(at::kDouble));

  const int64_t budget = searchChunkElements.load();
  const int64_t widthChunk = std::min(width, budget);
  const int64_t stepChunk = std::max<int64_t>(1, std::min(steps, budget / widthChunk));
  const int64_t unitChunk = std::max<int64_t>(1, budget / (stepChunk * widthChunk));
  for (int64_t u0 = 0; u0 < count; u0 += unitChunk) {
    const int64_t uc = std::min(unitChunk, count - u0);
    for (int64_t k0 = 0; k0 < steps; k0 += stepChunk) {
      const int64_t kc = std::min(stepChunk, steps - k0);
      const at::Tensor s = scales.narrow(0, u0, uc).narrow(1, k0, kc).unsqueeze(2);
      for (int64_t c0 = 0; c0 < width; c0 += widthChunk) {
        const int64_t cc = std::min(widthChunk, width - c0);
        const at::Tensor t = units.narrow(0, u0, uc).narrow(1, c0, cc).unsqueeze(1) / s;
        const at::Tensor r = at::round(t);
        at::Tensor e = at::empty_like(t);
        for (int64_t z = 0; z < levels; ++z) {
          at::clamp_out(e, r, double(-z), double(levels - 1 - z));
          // |e|^p as exp(p log|e|): pow with a general exponent is not
          // vectorised in every LibTorch build (36 ns against 16 ns an element
          // here). ATen's float sum is cascaded: ~1e-7 relative over a row;
          // the chunks add up in double.
          e.sub_(t).abs_().log_().mul_(spec.clipNorm).exp_();
          errors.narrow(0, u0, uc).narrow(1, k0, kc).select(2, z).add_(e.sum(2));
        }
      }
    }
  }
  errors.mul_(scales.to(at::kDouble).pow(spec.clipNorm).unsqueeze(2));
  const at::Tensor best = errors.reshape({count, steps * levels}).argmin(1, true); // first minimum
  const at::Tensor k = at::floor_divide(best, levels);
  UnitSearch out;
  out.scale = scales.gather(1, k);
  out.zero = (best - k * levels).to(at::kFloat);
  out.fraction = fractionsF.expand({count, steps}).gather(1, k);
  return out;
}

// The same search, exactly, on the CPU, as a branch and bound per unit (in
// parallel over units): with a general exponent each |e|^p is a pow call, and
// most candidates are far from the best, so most of them are abandoned after
// a few terms. Per unit the values are sorted once; for step s_k, t = x / s_k
// and r = round(t) are then non-decreasing, so the values clipped below
// (r < -z) are a prefix and those clipped above (r > n-1-z) a suffix, whatever
// z. A candidate's error is
//   s^p (sum over the prefix |t + z|^p + sum over the suffix |t - (n-1-z)|^p
//        + sum over the rest |t - r|^p),
// the last a difference of prefix sums shared by every z. The clipped sums
// are added from the outermost values inwards and the candidate dropped as
// soon as they exceed the best error found so far; the prefix sums of a step
// are computed only when one of its zero points survives that. The best
// starts as the best zero point of the full range, and candidates are visited
// in the reference's order with a strictly smaller error replacing, so the
// first minimum wins as in the batched search. Errors are in double.
UnitSearch searchRangesAndZerosPruned(const at::Tensor &unitsIn, const GridSpec &spec) {
  const at::Tensor units = unitsIn.to(at::kCPU, at::kFloat).contiguous();
  const int64_t count = units.size(0), width = units.size(1), steps = spec.clipSteps;
  const int64_t top = spec.levels() - 1;
  const double p = spec.clipNorm;
  const auto [scales, fractions] = candidateSteps(unitRange(units), spec);
  const at::Tensor sorted = std::get<0>(units.sort(1)).contiguous();
  const float *values = sorted.data_ptr<float>();
  const float *steps0 = scales.contiguous().data_ptr<float>();
  std::vector<int64_t> bestStep(static_cast<size_t>(count)), bestZero(static_cast<size_t>(count));

  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> t(static_cast<size_t>(width)), inGrid(static_cast<size_t>(width + 1));
    std::vector<int64_t> r(static_cast<size_t>(width));
    for (int64_t u = begin; u < end; ++u) {
      const float *x = values + u * width;
      const float *unitSteps = steps0 + u * steps;
      int64_t preparedStep = -1;
      bool prefixSums = false;
      double stepPower = 1.0;
      auto prepare = [&](int64_t k) {
        const float s = unitSteps[k];
        for (int64_t j = 0; j < width; ++j) {
          r[size_t(j)] = int64_t(std::nearbyint(x[j] / s)); // the grid's own float rounding
          t[size_t(j)] = double(x[j]) / double(s);
        }
        stepPower = std::pow(double(s), p);
        preparedStep = k;
        prefixSums = false;
      };
      // s_k^p times the error sum of zero point z, or +inf once it exceeds
      // `limit` (an error, not divided by s_k^p).
      auto error = [&](int64_t z, double limit) {
        const double bound = limit / stepPower * (1.0 + 1e-12);
        const int64_t lo = -z, hi = top - z;
        const int64_t below = std::lower_bound(r.begin(), r.end(), lo) - r.begin();
        const int64_t above = std::upper_bound(r.begin(), r.end(), hi) - r.begin();
        double sum = 0.0;
        for (int64_t j = 0; j < below; ++j)
          if ((sum += std::pow(double(lo) - t[size_t(j)], p)) > bound)
            return std::numeric_limits<double>::infinity();
        for (int64_t j = width - 1; j >= above; --j)
          if ((sum += std::pow(t[size_t(j)] - double(hi), p)) > bound)
            return std::numeric_limits<double>::infinity();
        if (!prefixSums) {
          inGrid[0] = 0.0;
          for (int64_t j = 0; j < width; ++j)
            inGrid[size_t(j + 1)] =
                inGrid[size_t(j)] + std::pow(std::abs(t[size_t(j)] - double(r[size_t(j)])), p);
          prefixSums = true;
        }
        return (sum + (inGrid[size_t(above)] - inGrid[size_t(below)])) * stepPower;
      };
      // An upper bound first: the full range's best zero point.
      prepare(steps - 1);
      double best = std::numeric_limits<double>::infinity();
      int64_t kBest = steps - 1, zBest = 0;
      for (int64_t z = 0; z <= top; ++z) {
        const double e = error(z, std::numeric_limits<double>::infinity());
        if (e < best)
          best = e, zBest = z;
      }
      // Just above it, so that the same candidate is taken again in order.
      best = best * (1.0 + 1e-12) + std::numeric_limits<double>::min();
      for (int64_t k = 0; k < steps; ++k)
        for (int64_t z = 0; z <= top; ++z) {
          if (preparedStep != k)
            prepare(k);
          const double e = error(z, best);
          if (e < best)
            best = e, kBest = k, zBest = z;
        }
      bestStep[size_t(u)] = kBest;
      bestZero[size_t(u)] = zBest;
    }
  });
  const at::Tensor k = at::tensor(bestStep, at::kLong).unsqueeze(1);
  UnitSearch out;
  out.scale = scales.gather(1, k).to(unitsIn.device());
  out.zero = at::tensor(bestZero, at::kLong).unsqueeze(1).to(at::kFloat).to(unitsIn.device());
  out.fraction = fractions.expand({count, steps}).gather(1, k).to(unitsIn.device());
  return out;
}

UnitSearch searchRangesAndZeros(const at::Tensor &units, const GridSpec &spec) {
  const auto kernel = Search2DKernel(search2DKernel.load());
  const bool pruned = kernel == Search2DKernel::BranchAndBound ||
                      (kernel == Search2DKernel::Auto && units.device().is_cpu());
  return pruned ? searchRangesAndZerosPruned(units, spec)
                : searchRangesAndZerosBatched(units, spec);
}

} // namespace

int64_t setClipSearchBlockElements(int64_t elements) {
  return searchBlockElements.exchange(elements > 0 ? elements : kDefaultSearchBlockElements);
}

int64_t setClipSearchChunkElements(int64_t elements) {
  return searchChunkElements.exchange(elements > 0 ? elements : kDefaultSearchChunkElements);
}

Search2DKernel setClipSearch2DKernel(Search2DKernel kernel) {
  return Search2DKernel(search2DKernel.exchange(int(kernel)));
}

GridParams computeGridParams(const at::Tensor &weight, const GridSpec &spec) {
  if (spec.init == StepInit::MinMax || spec.init == StepInit::MethodDefault)
    return gridParamsForFraction(weight, spec, 1.0);

  checkWeightForGrid(weight, spec);
  at::NoGradGuard noGrad;
  const at::Tensor w = asFloat(weight.detach()).contiguous();
  const at::Tensor units = unitsView(w, spec).contiguous();
  UnitSearch best;
  if (spec.init == StepInit::ClippingSearch) {
    best = searchFractions(units, spec);
  } else {
    // One-sided units (zero ones included) take the 1-D search, as the
    // reference does; the others the 2-D search.
    const Range range = unitRange(units);
    const at::Tensor twoSided = ((range.lo < 0) & (range.hi > 0)).reshape({-1});
    const at::Tensor both = twoSided.nonzero().reshape({-1});
    const at::Tensor one = twoSided.logical_not().nonzero().reshape({-1});
    best.scale = at::empty({units.size(0), 1}, units.options());
    best.zero = at::empty_like(best.scale);
    best.fraction = at::empty_like(best.scale);
    for (const auto &[rows, twoD] : {std::make_pair(both, true), std::make_pair(one, false)}) {
      if (rows.numel() == 0)
        continue;
      const at::Tensor subset = units.index_select(0, rows);
      const UnitSearch found =
          twoD ? searchRangesAndZeros(subset, spec) : searchFractions(subset, spec);
      best.scale.index_copy_(0, rows, found.scale);
      best.zero.index_copy_(0, rows, found.zero);
      best.fraction.index_copy_(0, rows, found.fraction);
    }
  }
  const int64_t out = w.size(0), in = w.size(1);
  GridParams p;
  p.scale = paramShape(best.scale, spec, out, in);
  p.zeroPoint = paramShape(best.zero, spec, out, in);
  p.clipFraction = paramShape(best.fraction, spec, out, in);
  roundSuperBlocks(p, spec);
  return p;
}

at::Tensor expandToWeight(const at::Tensor &param, const GridSpec &spec, int64_t in) {
  if (spec.granularity != Granularity::PerGroup)
    return param;
  const int64_t out = param.size(0), groups = param.size(1);
  if (groups != groupCount(spec, in))
    throw Error("weight grid: parameter shape does not match the row length " + std::to_string(in));
  const at::Tensor full = param.unsqueeze(2)
                              .expand({out, groups, groupWidth(spec, in)})
                              .reshape({out, groups * groupWidth(spec, in)});
  return full.size(1) == in ? full : full.narrow(1, 0, in);
}

std::pair<at::Tensor, at::Tensor> asymmetricStep(const at::Tensor &lo, const at::Tensor &hi,
                                                 int64_t levels) {
  at::NoGradGuard noGrad;
  at::Tensor scale = (hi - lo) / double(levels - 1);
  scale = at::where(scale > 0, scale, at::ones_like(scale));
  const at::Tensor zero = at::round(lo.neg() / scale).clamp(0.0, double(levels - 1));
  return {scale, zero};
}

at::Tensor fakeQuantizeClamped(const at::Tensor &x, const at::Tensor &scale,
                               const at::Tensor &zeroPoint, int64_t qmin, int64_t qmax) {
  const at::Tensor q = (roundSte(x / scale) + zeroPoint).clamp(double(qmin), double(qmax));
  return (q - zeroPoint) * scale;
}

at::Tensor quantizeElementwise(const at::Tensor &x, const at::Tensor &scale,
                               const at::Tensor &zeroPoint, const GridSpec &spec) {
  at::NoGradGuard noGrad;
  if (spec.offsetForm())
    return at::round((x + zeroPoint) / scale).clamp(double(spec.qmin()), double(spec.qmax()));
  return (at::round(x / scale) + zeroPoint).clamp(double(spec.qmin()), double(spec.qmax()));
}

at::Tensor fakeQuantizeElementwise(const at::Tensor &x, const at::Tensor &scale,
                                   const at::Tensor &zeroPoint, const GridSpec &spec) {
  if (spec.offsetForm())
    return dequantizeOffset(
        roundSte((x + zeroPoint) / scale).clamp(double(spec.qmin()), double(spec.qmax())), scale,
        zeroPoint);
  return fakeQuantizeClamped(x, scale, zeroPoint, spec.qmin(), spec.qmax());
}

at::Tensor dequantizeOffset(const at::Tensor &codes, const at::Tensor &scale,
                            const at::Tensor &offset) {
  // Two operations, each rounding once in float32: s q is exact (d sc q has at
  // most 22 significant bits), so the result is fl(s q - M) as llama.cpp's
  // dequantize_row_q4_K computes it.
  return codes * scale - offset;
}

at::Tensor quantizeWeight(const at::Tensor &weight, const GridParams &params,
                          const GridSpec &spec) {
  checkWeightForGrid(weight, spec);
  at::NoGradGuard noGrad;
  const at::Tensor w = asFloat(weight.detach());
  const at::Tensor codes = quantizeElementwise(unitsView(w, spec), unitParam(params.scale),
                                               unitParam(params.zeroPoint), spec);
  return fromUnits(codes, spec, w.size(0), w.size(1)).to(at::kInt).contiguous();
}

at::Tensor dequantizeWeight(const at::Tensor &codes, const GridParams &params,
                            const GridSpec &spec) {
  const at::Tensor q = codes.to(at::kFloat);
  checkWeightForGrid(q, spec);
  if (spec.offsetForm())
    return fromUnits(dequantizeOffset(unitsView(q, spec), unitParam(params.scale),
                                      unitParam(params.zeroPoint)),
                     spec, q.size(0), q.size(1))
        .contiguous();
  return fromUnits((unitsView(q, spec) - unitParam(params.zeroPoint)) * unitParam(params.scale),
                   spec, q.size(0), q.size(1))
      .contiguous();
}

at::Tensor fakeQuantizeWeight(const at::Tensor &weight, const GridParams &params,
                              const GridSpec &spec) {
  checkWeightForGrid(weight, spec);
  const at::Tensor units = unitsView(weight, spec);
  const at::Tensor q =
      fakeQuantizeElementwise(units, unitParam(params.scale), unitParam(params.zeroPoint), spec);
  return fromUnits(q, spec, weight.size(0), weight.size(1));
}

at::Tensor roundToNearest(const at::Tensor &weight, const GridSpec &spec) {
  at::NoGradGuard noGrad;
  const at::Tensor w = asFloat(weight.detach());
  return fakeQuantizeWeight(w, computeGridParams(w, spec), spec);
}

at::Tensor unitLpError(const at::Tensor &a, const at::Tensor &b, const GridSpec &spec, double p) {
  checkWeightForGrid(a, spec);
  at::NoGradGuard noGrad;
  return lpPower(unitsView((a - b).detach(), spec), p).sum(1);
}

} // namespace lrq::quant
