// Conventions: see grid.h.
#include "core/quant/grid.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>

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

// Step and zero point of each unit for the range scaled by fraction.
std::pair<at::Tensor, at::Tensor> paramsFromRange(const Range &range, const GridSpec &spec,
                                                  float fraction) {
  if (!spec.symmetric)
    return asymmetricStep(range.lo * fraction, range.hi * fraction, spec.levels());
  const at::Tensor absMax = at::maximum(range.lo.neg(), range.hi) * fraction;
  at::Tensor scale = absMax / (double(spec.levels()) / 2.0 - 1.0);
  scale = at::where(scale > 0, scale, at::ones_like(scale));
  at::Tensor zero = at::zeros_like(scale);
  return {scale, zero};
}

// |e|^p in double as exp(p log|e|): vectorised, unlike pow with a general
// exponent, and accurate to ~1e-14 relative (|e| = 0 gives exp(-inf) = 0).
at::Tensor lpPower(const at::Tensor &e, double p) {
  return (e.abs().to(at::kDouble).log() * p).exp();
}

at::Tensor asFloat(const at::Tensor &weight) {
  return weight.scalar_type() == at::kFloat ? weight : weight.to(at::kFloat);
}

} // namespace

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
}

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
  return p;
}

namespace {

// Step, zero point and range fraction of each unit, [units, 1] each.
struct UnitSearch {
  at::Tensor scale, zero, fraction;
};

// The 1-D clipping search on units [units, elements]: one pass over the units
// per candidate fraction, every unit at once; a strictly smaller error
// replaces, so ties keep the larger fraction.
UnitSearch searchFractions(const at::Tensor &units, const GridSpec &spec) {
  const Range range = unitRange(units);
  at::Tensor bestError;
  UnitSearch best;
  for (int k = spec.clipSteps; k >= 1; --k) {
    const float fraction = float(double(k) / double(spec.clipSteps));
    const auto [scale, zero] = paramsFromRange(range, spec, fraction);
    // fakeQuantizeElementwise's arithmetic, in place on temporaries of our own.
    at::Tensor e = units / scale;
    e.round_().add_(zero).clamp_(double(spec.qmin()), double(spec.qmax()));
    e.sub_(zero).mul_(scale).sub_(units).abs_();
    at::Tensor ed = e.to(at::kDouble);
    const at::Tensor error = ed.log_().mul_(spec.clipNorm).exp_().sum(1, true);
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

// Elements of one [units, sizes, elements] temporary of the 2-D search: three
// of them (x / s, its rounding, the error) stay within 24 MB.
constexpr int64_t kDefaultSearchChunkElements = int64_t(1) << 21;
std::atomic<int64_t> searchChunkElements{kDefaultSearchChunkElements};

// The 2-D search on units [units, elements] that hold both signs (lo < 0 < hi).
// Candidates, in the reference's order: range size k = 1..clipSteps, then zero
// point z = 0..n-1; step s_k = (hi - lo) (k / clipSteps) / (n - 1), so the grid
// covers [-z s_k, (n - 1 - z) s_k]. Since z is an integer,
//   x - s (clamp(round(x / s) + z, 0, n-1) - z) = s (t - clamp(round(t), -z, n-1-z)),
// t = x / s: t and round(t) are computed once per step and shared by all zero
// points, and s^p factors out of each unit's sum. The first minimum wins.
UnitSearch searchRangesAndZeros(const at::Tensor &units, const GridSpec &spec) {
  const int64_t count = units.size(0), width = units.size(1), steps = spec.clipSteps;
  const int64_t levels = spec.levels();
  const Range range = unitRange(units);
  const at::Tensor fractions =
      at::arange(1, steps + 1, units.options().dtype(at::kDouble)).div_(double(steps));
  const at::Tensor fractionsF = fractions.to(at::kFloat).unsqueeze(0); // [1, steps]
  // [units, steps]: the same float arithmetic as the 1-D search's steps.
  const at::Tensor scales = (range.hi * fractionsF - range.lo * fractionsF) / double(levels - 1);
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
          e.sub_(t).abs_().pow_(spec.clipNorm);
          errors.narrow(0, u0, uc).narrow(1, k0, kc).select(2, z).add_(
              e.sum(2, false, at::kDouble));
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

} // namespace

int64_t setClipSearchChunkElements(int64_t elements) {
  return searchChunkElements.exchange(elements > 0 ? elements : kDefaultSearchChunkElements);
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
  return (at::round(x / scale) + zeroPoint).clamp(double(spec.qmin()), double(spec.qmax()));
}

at::Tensor fakeQuantizeElementwise(const at::Tensor &x, const at::Tensor &scale,
                                   const at::Tensor &zeroPoint, const GridSpec &spec) {
  return fakeQuantizeClamped(x, scale, zeroPoint, spec.qmin(), spec.qmax());
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
