// LR-QAT per-linear math; conventions in lrqat_layer.h.
#include "core/quant/lrqat_layer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "core/common/error.h"
#include "core/quant/block_checkpoint.h"
#include "core/recon/elementwise_kernels.h"

namespace lrq::quant {

namespace {

// Integer offset c: 0 for symmetric grids, n/2 for asymmetric ones.
double storageOffset(const GridSpec &spec) {
  return double(spec.qmin() + spec.levels() / 2);
}

// Whether the codes carry an integer zero point z: asymmetric grids but the
// offset form, whose zeroPoint holds the value offset M (Ŵ = s q − M).
bool integerZero(const GridSpec &spec) {
  return !spec.symmetric && !spec.offsetForm();
}

// SplitMix64: decorrelates nearby seeds.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// U(-bound, bound) from a seeded 64-bit stream (24 random bits per value), so
// the same seed gives the same B on every platform and LibTorch version.
at::Tensor seededUniform(int64_t rows, int64_t cols, double bound, uint64_t seed) {
  at::Tensor t = at::empty({rows, cols}, at::kFloat);
  float *p = t.data_ptr<float>();
  uint64_t state = mix(seed);
  for (int64_t i = 0; i < rows * cols; ++i) {
    state = mix(state);
    const double u = double(state >> 40) / double(uint64_t(1) << 24); // [0, 1)
    p[i] = float((2.0 * u - 1.0) * bound);
  }
  return t;
}

} // namespace

int lrqatFractionalBits(const GridSpec &spec) {
  return 8 - spec.bits;
}

at::Tensor lrqatDowncastPhi(const at::Tensor &phi, const at::Tensor &zeroExpanded,
                            const GridSpec &spec) {
  at::NoGradGuard noGrad;
  const double unit = std::ldexp(1.0, lrqatFractionalBits(spec)); // 2^f, exact
  // round(Φ0 · 2^f) first (multiplying by a power of two is exact), then the
  // integer shift (z − c) · 2^f, so the rounding never depends on the shift.
  at::Tensor v = at::round(phi.to(at::kFloat) * unit);
  if (spec.offsetForm()) // Φ0 = (W0 + M) / s0 already lies on the codes 0..n−1
    v = v - storageOffset(spec) * unit;
  else if (!spec.symmetric)
    v = v + (zeroExpanded - storageOffset(spec)) * unit;
  return v.clamp(-128.0, 127.0).to(at::kChar);
}

at::Tensor lrqatUpcastPhi(const at::Tensor &stored, const at::Tensor &zeroExpanded,
                          const GridSpec &spec) {
  at::NoGradGuard noGrad;
  const double unit = std::ldexp(1.0, lrqatFractionalBits(spec));
  at::Tensor phi = stored.to(at::kFloat).mul_(1.0 / unit);
  if (spec.offsetForm())
    phi = phi + storageOffset(spec);
  else if (!spec.symmetric)
    phi = phi - (zeroExpanded - storageOffset(spec));
  return phi;
}

LrqatLayer initLrqatLayer(const at::Tensor &weight, const GridSpec &spec, int64_t rank,
                          double alpha, uint64_t seed) {
  checkWeightForGrid(weight, spec);
  if (rank < 1)
    throw Error("lrqat: rank must be at least 1, got " + std::to_string(rank));
  if (!(alpha > 0.0) || !std::isfinite(alpha))
    throw Error("lrqat: alpha must be a positive number");
  at::NoGradGuard noGrad;
  const at::Tensor w = weight.detach().to(at::kFloat);
  const int64_t out = w.size(0), in = w.size(1);
  const GridParams p = computeGridParams(w, spec);
  LrqatLayer layer;
  layer.spec = spec;
  layer.rank = rank;
  layer.scaling = alpha / double(rank);
  layer.zeroPoint = p.zeroPoint.clone();
  const at::Tensor zExp = expandToWeight(layer.zeroPoint, spec, in);
  const at::Tensor sExp = expandToWeight(p.scale, spec, in);
  // The grid's own arithmetic (quantizeElementwise): W0 / s0, or (W0 + M) / s0 in offset form.
  const at::Tensor phi = spec.offsetForm() ? (w + zExp) / sExp : w / sExp;
  layer.phi0 = lrqatDowncastPhi(phi, zExp, spec).contiguous();
  layer.scale = p.scale.clone().set_requires_grad(true);
  layer.a = at::zeros({out, rank}, w.options()).set_requires_grad(true);
  layer.b = seededUniform(rank, in, 1.0 / std::sqrt(double(in)), seed)
                .to(w.device())
                .set_requires_grad(true);
  return layer;
}

at::Tensor lrqatStep(const LrqatLayer &layer) {
  return applyStepFormat(layer.scale, layer.spec);
}

at::Tensor lrqatPhi(const LrqatLayer &layer) {
  return lrqatUpcastPhi(layer.phi0, expandToWeight(layer.zeroPoint, layer.spec, layer.cols()),
                        layer.spec);
}

at::Tensor lrqatLatent(const LrqatLayer &layer) {
  return lrqatPhi(layer) + at::mm(layer.a * layer.scaling, layer.b);
}

at::Tensor lrqatFakeWeight(const LrqatLayer &layer) {
  const GridSpec &spec = layer.spec;
  const int64_t in = layer.cols();
  const at::Tensor s = expandToWeight(lrqatStep(layer), spec, in);
  const at::Tensor rounded = roundSte(lrqatLatent(layer));
  if (spec.offsetForm())
    return dequantizeOffset(rounded.clamp(double(spec.qmin()), double(spec.qmax())), s,
                            expandToWeight(layer.zeroPoint, spec, in));
  if (spec.symmetric) // z = 0
    return rounded.clamp(double(spec.qmin()), double(spec.qmax())) * s;
  const at::Tensor z = expandToWeight(layer.zeroPoint, spec, in);
  return ((rounded + z).clamp(double(spec.qmin()), double(spec.qmax())) - z) * s;
}

at::Tensor lrqatMergedCodes(const LrqatLayer &layer) {
  at::NoGradGuard noGrad;
  const GridSpec &spec = layer.spec;
  at::Tensor q = lrqatLatent(layer).round_();
  if (integerZero(spec))
    q.add_(expandToWeight(layer.zeroPoint, spec, layer.cols()));
  return q.clamp_(double(spec.qmin()), double(spec.qmax())).to(at::kInt);
}

at::Tensor lrqatMergedWeight(const LrqatLayer &layer) {
  at::NoGradGuard noGrad;
  const GridSpec &spec = layer.spec;
  const int64_t in = layer.cols();
  at::Tensor q = lrqatMergedCodes(layer).to(at::kFloat);
  const at::Tensor s = expandToWeight(lrqatStep(layer).detach(), spec, in);
  if (spec.offsetForm())
    return dequantizeOffset(q, s, expandToWeight(layer.zeroPoint, spec, in)).contiguous();
  if (!spec.symmetric)
    q = q - expandToWeight(layer.zeroPoint, spec, in);
  return (q * s).contiguous();
}

namespace {

UnitIndex unitIndex(const LrqatLayer &l) {
  return unitIndex(l.spec, l.scale);
}

// The fused loops serve float32 CPU tensors; anything else takes tensor ops.
bool fusable(const LrqatLayer &l) {
  return l.phi0.device().is_cpu() && l.scale.scalar_type() == at::kFloat &&
         l.zeroPoint.scalar_type() == at::kFloat && l.a.scalar_type() == at::kFloat;
}

// The constants of the fused loops that every unit shares (s and z are set per unit).
recon::LrqatUnit unitConstants(const GridSpec &spec) {
  recon::LrqatUnit c{};
  c.inv = float(1.0 / std::ldexp(1.0, lrqatFractionalBits(spec)));
  c.offset = float(storageOffset(spec));
  c.lo = float(spec.qmin());
  c.hi = float(spec.qmax());
  c.zero = spec.offsetForm()   ? recon::CodeZero::Offset
           : integerZero(spec) ? recon::CodeZero::Integer
                               : recon::CodeZero::None;
  return c;
}

// Sums P [out, in] over each quantization unit: [rows, groups].
at::Tensor sumUnits(const at::Tensor &p, const GridSpec &spec) {
  const int64_t out = p.size(0), in = p.size(1);
  switch (spec.granularity) {
  case Granularity::PerTensor:
    return p.sum().view({1, 1});
  case Granularity::PerChannel:
    return p.sum(1, true);
  case Granularity::PerGroup:
    break;
  }
  const int64_t g = spec.groupSize, full = in / g, tail = in - full * g;
  std::vector<at::Tensor> parts;
  if (full > 0)
    parts.push_back(p.narrow(1, 0, full * g).reshape({out, full, g}).sum(2));
  if (tail > 0)
    parts.push_back(p.narrow(1, full * g, tail).sum(1, true));
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

} // namespace

at::Tensor LrqatScratch::take(at::Tensor &buffer, int64_t rows, int64_t cols,
                              const at::TensorOptions &options) {
  const int64_t n = rows * cols;
  if (!buffer.defined() || buffer.numel() < n || buffer.scalar_type() != options.dtype())
    buffer = at::empty({n}, options);
  return buffer.narrow(0, 0, n).view({rows, cols});
}

LrqatForward lrqatForward(const LrqatLayer &layer, LrqatScratch *scratch) {
  at::NoGradGuard noGrad;
  const GridSpec &spec = layer.spec;
  const int64_t out = layer.rows(), in = layer.cols();
  const float qmin = float(spec.qmin()), qmax = float(spec.qmax());
  LrqatForward f;
  if (!fusable(layer)) {
    const at::Tensor z = expandToWeight(layer.zeroPoint, spec, in);
    at::Tensor q = lrqatLatent(layer).round_();
    if (integerZero(spec))
      q.add_(z);
    f.codes = q.clamp(-32768.0, 32767.0).to(at::kShort);
    at::Tensor qc = q.clamp_(qmin, qmax);
    const at::Tensor s = expandToWeight(lrqatStep(layer).detach(), spec, in);
    if (spec.offsetForm()) {
      f.weight = dequantizeOffset(qc, s, z);
      return f;
    }
    if (!spec.symmetric)
      qc = qc - z;
    f.weight = qc * s;
    return f;
  }
  // One pass: Φ0_d from its byte, + (α/r) A B, round, codes, Ŵ; the same float
  // operations in the same order as lrqatFakeWeight, so the same bits.
  const at::TensorOptions floats = layer.b.options().dtype(at::kFloat);
  at::Tensor ab;
  if (scratch) {
    ab = LrqatScratch::take(scratch->ab, out, in, floats);
    at::mm_out(ab, layer.a.detach() * layer.scaling, layer.b.detach());
    f.weight = LrqatScratch::take(scratch->weight, out, in, floats);
    f.codes = LrqatScratch::take(scratch->codes, out, in, floats.dtype(at::kShort));
  } else {
    ab = at::mm(layer.a.detach() * layer.scaling, layer.b.detach()).contiguous();
    f.weight = at::empty({out, in}, ab.options());
    f.codes = at::empty({out, in}, ab.options().dtype(at::kShort));
  }
  const at::Tensor phi0 = layer.phi0.contiguous();
  const at::Tensor scale = lrqatStep(layer).detach().contiguous();
  const at::Tensor zero = layer.zeroPoint.contiguous();
  const int8_t *v = phi0.data_ptr<int8_t>();
  const float *abp = ab.data_ptr<float>(), *sp = scale.data_ptr<float>();
  const float *zp = zero.data_ptr<float>();
  float *w = f.weight.data_ptr<float>();
  int16_t *codes = f.codes.data_ptr<int16_t>();
  const recon::LrqatUnit constants = unitConstants(spec);
  forEachUnitRun(unitIndex(layer), out, in, [&](int64_t, int64_t u, int64_t begin, int64_t end) {
    recon::LrqatUnit c = constants;
    c.s = sp[u];
    c.z = zp[u];
    recon::lrqatWeight(v + begin, abp + begin, c, w + begin, codes + begin, end - begin);
  });
  return f;
}

LrqatGradients lrqatBackward(const LrqatLayer &layer, const at::Tensor &codes,
                             const at::Tensor &gradWeightAnyType, LrqatScratch *scratch) {
  at::NoGradGuard noGrad;
  const at::Tensor gradWeight = gradWeightAnyType.to(at::kFloat);
  const GridSpec &spec = layer.spec;
  const int64_t out = layer.rows(), in = layer.cols();
  const float qmin = float(spec.qmin()), qmax = float(spec.qmax());
  at::Tensor du, ds;
  if (!fusable(layer)) {
    const at::Tensor q = codes.to(gradWeight.scalar_type());
    const at::Tensor inside = (q >= qmin).logical_and_(q <= qmax);
    const at::Tensor s = expandToWeight(lrqatStep(layer).detach(), spec, in);
    du = gradWeight * s * inside.to(gradWeight.scalar_type());
    at::Tensor qc = q.clamp(qmin, qmax);
    if (integerZero(spec)) // dŴ/ds = q − z; in offset form q (M is frozen)
      qc = qc - expandToWeight(layer.zeroPoint, spec, in);
    ds = sumUnits(gradWeight * qc, spec);
  } else {
    const at::Tensor g = gradWeight.contiguous(), q = codes.contiguous();
    const at::Tensor scale = lrqatStep(layer).detach().contiguous();
    const at::Tensor zero = layer.zeroPoint.contiguous();
    du = scratch ? LrqatScratch::take(scratch->du, out, in, g.options())
                 : at::empty({out, in}, g.options());
    const bool perGroup = spec.granularity == Granularity::PerGroup;
    const int64_t groups = perGroup ? scale.size(1) : 1;
    at::Tensor partial = at::zeros({out, groups}, g.options().dtype(at::kDouble));
    const float *gp = g.data_ptr<float>(), *sp = scale.data_ptr<float>();
    const float *zp = zero.data_ptr<float>();
    const int16_t *qp = q.data_ptr<int16_t>();
    float *dup = du.data_ptr<float>();
    double *pp = partial.data_ptr<double>();
    const recon::LrqatUnit constants = unitConstants(spec);
    // Per-tensor grids sum per row here (partial is [out, 1]) and over rows below.
    const bool perTensor = spec.granularity == Granularity::PerTensor;
    forEachUnitRun(unitIndex(layer), out, in,
                   [&](int64_t r, int64_t u, int64_t begin, int64_t end) {
                     recon::LrqatUnit c = constants;
                     c.s = sp[u];
                     c.z = zp[u];
                     pp[perTensor ? r : u] +=
                         recon::lrqatGradients(qp + begin, gp + begin, c, dup + begin, end - begin);
                   });
    switch (spec.granularity) {
    case Granularity::PerTensor:
      ds = partial.sum().view({1, 1});
      break;
    case Granularity::PerChannel:
    case Granularity::PerGroup:
      ds = partial;
      break;
    }
    ds = ds.to(at::kFloat);
  }
  LrqatGradients grads;
  grads.a = at::mm(du, layer.b.detach().t()).mul_(layer.scaling);
  grads.b = at::mm(layer.a.detach().t(), du).mul_(layer.scaling);
  grads.scale = ds.view_as(layer.scale);
  return grads;
}

namespace {

double secondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Ŵ of the layer in the model's dtype, and the unclamped codes.
LrqatForward weightFor(const LrqatLinearState &st) {
  LrqatForward f = lrqatForward(*st.layer, st.scratch);
  if (f.weight.scalar_type() != st.type)
    f.weight = f.weight.to(st.type);
  return f;
}

// y = x Ŵᵀ (+ b) with Ŵ derived from the state, in the forward and again in the
// backward. `token` is the layer's s (a leaf requiring grad), passed only so
// that the node is recorded when x itself needs no gradient (the first layers);
// its gradient is delivered through the state, not through autograd. The
// products are the ones autograd's own mm uses for x Wᵀ with W contiguous, so
// the gradients are the same bits as with Ŵ as a leaf.
class LrqatLinearFunction : public torch::autograd::Function<LrqatLinearFunction> {
public:
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x,
                            const at::Tensor &token, int64_t statePointer) {
    (void)token;
    const auto &st = *reinterpret_cast<const LrqatLinearState *>(statePointer);
    const auto start = std::chrono::steady_clock::now();
    LrqatForward f = weightFor(st);
    if (st.forwardSeconds)
      *st.forwardSeconds += secondsSince(start);
    ctx->save_for_backward({x});
    ctx->saved_data["state"] = statePointer;
    const at::Tensor y =
        st.bias.defined() ? at::addmm(st.bias, x, f.weight.t()) : at::mm(x, f.weight.t());
    // A block run again for its backward: that backward comes next, so Ŵ and
    // its codes are kept for it (copies: the scratch serves the next layer).
    if (recomputingForBackward()) {
      ctx->saved_data["weight"] = f.weight.clone();
      ctx->saved_data["codes"] = f.codes.clone();
    }
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list gradOutputs) {
    const auto &st = *reinterpret_cast<const LrqatLinearState *>(ctx->saved_data["state"].toInt());
    const auto start = std::chrono::steady_clock::now();
    const at::Tensor x = ctx->get_saved_variables()[0];
    const at::Tensor &dy = gradOutputs[0];
    LrqatForward f;
    if (ctx->saved_data.count("weight")) {
      f.weight = ctx->saved_data["weight"].toTensor();
      f.codes = ctx->saved_data["codes"].toTensor();
      ctx->saved_data.erase("weight");
      ctx->saved_data.erase("codes");
    } else {
      f = weightFor(st);
    }
    at::Tensor dx;
    if (ctx->needs_input_grad(0))
      dx = at::mm(dy, f.weight);
    f.weight = at::Tensor();
    // dL/dŴ = dyᵀ x, as autograd's mm backward computes it.
    at::Tensor gradWeight;
    if (dy.scalar_type() == at::kFloat && st.scratch) {
      gradWeight = LrqatScratch::take(st.scratch->gradWeight, dy.size(1), x.size(1), dy.options());
      at::mm_out(gradWeight, dy.t(), x);
    } else {
      gradWeight = at::mm(dy.t(), x);
    }
    *st.grads = lrqatBackward(*st.layer, f.codes, gradWeight, st.scratch);
    if (st.backwardSeconds)
      *st.backwardSeconds += secondsSince(start);
    return {dx, at::Tensor(), at::Tensor()};
  }
};

class LrqatKernel : public LinearKernel {
public:
  explicit LrqatKernel(const LrqatLinearState *state) : state_(state) {}
  at::Tensor apply(const at::Tensor &x2d) const override {
    return LrqatLinearFunction::apply(x2d, state_->layer->scale, reinterpret_cast<int64_t>(state_));
  }

private:
  const LrqatLinearState *state_;
};

} // namespace

std::shared_ptr<const LinearKernel> makeLrqatKernel(const LrqatLinearState *state) {
  return std::make_shared<LrqatKernel>(state);
}

double clipGradientNorm(std::vector<LrqatGradients> &gradients, double maxNorm) {
  at::NoGradGuard noGrad;
  double sumSquares = 0.0;
  for (const LrqatGradients &g : gradients)
    for (const at::Tensor *t : {&g.a, &g.b, &g.scale})
      if (t->defined())
        sumSquares += t->to(at::kDouble).square().sum().item<double>();
  const double total = std::sqrt(sumSquares);
  const double coefficient = maxNorm / (total + 1e-6);
  if (maxNorm > 0.0 && coefficient < 1.0)
    for (LrqatGradients &g : gradients)
      for (at::Tensor *t : {&g.a, &g.b, &g.scale})
        if (t->defined())
          t->mul_(coefficient);
  return total;
}

} // namespace lrq::quant
