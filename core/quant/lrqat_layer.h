#pragma once
// The per-linear state of LR-QAT (ALGORITHMS.md "LR-QAT", Bondarenko et al.,
// arXiv 2406.06385) and its weight math; the training loop is lrqat.cpp.
// Internal to core: includes ATen.
//
//   Ŵ = s · (clamp(round_STE(Φ0 + (α/r)·A·B) + z, qmin, qmax) − z)
// (s in the grid's step format, lrqatStep)
//
// Φ0 = W0 / s0 is frozen and kept downcast as int8 fixed point with
// f = 8 − bits fractional bits (b = 4: 4 fractional bits), which is what the
// paper stores instead of the full-precision weight. The stored byte is
//   v = clamp(round(Φ0 · 2^f) + (z − c) · 2^f, −128, 127),  c = qmin + n/2,
// i.e. Φ0 rounded to a multiple of 2^−f. c is 0 for symmetric grids (the
// paper's case: plain int8 of Φ0, range [−2^(b−1), 2^(b−1) − 2^−f]); for
// asymmetric grids (z ∈ [0, n−1]) the byte holds Φ0 + z − n/2, the same bits as
// a uint8 of Φ0 + z, so that the whole grid range fits. Upcast:
//   Φ0_d = v / 2^f − (z − c)   (exact in float32).
// z is the frozen zero point of the grid (0 when symmetric); s starts at s0.
// A [out, r] starts at zero, B [r, in] kaiming-uniform (LoRA's a = √5:
// bound 1/√in), so Ŵ at initialisation is round-to-nearest of Φ0_d: the same
// codes as plain RTN except, possibly, where Φ0_d is exactly half-way between
// two integers while Φ0 was not (double rounding, a difference of one code).
//
// Offset form (GridSpec::offsetForm, GGUF Q4_K: x̂ = fl(s q − M), M = dmin m
// not a multiple of s): zeroPoint holds the frozen offset M, and
//   Φ0 = (W0 + M) / s0,   Ŵ = fl(s · clamp(round_STE(Φ0 + (α/r)·A·B), qmin, qmax) − M),
// the grid's own quantize and dequantize with the adapters added to the
// codes' argument. Φ0 lies on the codes 0..n−1, so it is stored as the
// asymmetric grids' byte with z = 0: v = round(Φ0 · 2^f) − c · 2^f. Only s
// trains among the grid parameters (rounded to d·sc straight through); M
// stays as the init formatted it (dmin·m), so dŴ/ds = q.
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "core/model/weights.h"
#include "core/quant/grid.h"

namespace lrq::quant {

// f = 8 − bits: fractional bits of the int8 fixed-point Φ0.
int lrqatFractionalBits(const GridSpec &spec);

// Downcast of Φ0 [out, in] (float) to the int8 fixed point described above;
// zeroExpanded is the zero point broadcastable against Φ0 (expandToWeight),
// unused in offset form.
at::Tensor lrqatDowncastPhi(const at::Tensor &phi, const at::Tensor &zeroExpanded,
                            const GridSpec &spec);
// Φ0_d from the int8 storage, float32.
at::Tensor lrqatUpcastPhi(const at::Tensor &stored, const at::Tensor &zeroExpanded,
                          const GridSpec &spec);

struct LrqatLayer {
  GridSpec spec;
  int64_t rank = 0;
  double scaling = 1.0; // α / r
  at::Tensor phi0;      // int8 [out, in], frozen
  at::Tensor zeroPoint; // [rows, groups] float holding integers (offset form: M), frozen
  at::Tensor scale;     // [rows, groups], trained (starts at the grid's s0)
  at::Tensor a;         // [out, r], trained, starts at 0
  at::Tensor b;         // [r, in], trained, kaiming-uniform

  int64_t rows() const { return phi0.size(0); }
  int64_t cols() const { return phi0.size(1); }
  // A, B and s: what LR-QAT learns for this linear.
  int64_t learnableParams() const { return a.numel() + b.numel() + scale.numel(); }
};

// Builds the state for weight W0 [out, in]: s0 and z (or M) by computeGridParams,
// Φ0 = W0 / s0 (or (W0 + M) / s0) downcast, A = 0, B ~ U(−1/√in, 1/√in) from a generator seeded
// with `seed` (same seed, same B). a, b and scale are created requiring grad.
LrqatLayer initLrqatLayer(const at::Tensor &weight, const GridSpec &spec, int64_t rank,
                          double alpha, uint64_t seed);

// The step Ŵ uses: s rounded to the grid's step format (grid.h
// applyStepFormat; s itself for f32), straight through, so training moves s
// with the gradient of the rounded step and sees the grid it will end on; a
// step above the format's largest is clamped here (the final grid checks it).
at::Tensor lrqatStep(const LrqatLayer &layer);
// Φ0_d as float32 [out, in].
at::Tensor lrqatPhi(const LrqatLayer &layer);
// Φ0_d + (α/r) A B: differentiable in A and B.
at::Tensor lrqatLatent(const LrqatLayer &layer);
// s (clamp(roundSte(latent) + z, qmin, qmax) − z): gradients reach A and B
// through the straight-through round (zero where clamped) and s directly.
at::Tensor lrqatFakeWeight(const LrqatLayer &layer);
// The merged integer codes clamp(round(Φ0_d + (α/r) A B) + z, qmin, qmax), int32
// (no z in offset form).
at::Tensor lrqatMergedCodes(const LrqatLayer &layer);
// s (codes − z), or fl(s codes − M), as float32 [out, in]: the plain dequantized
// weight, no low-rank terms.
at::Tensor lrqatMergedWeight(const LrqatLayer &layer);

// Training without a graph through the weights (lrqat.cpp). The forward gives
// Ŵ (bit for bit lrqatFakeWeight's value) and the unclamped codes
// round(Φ0_d + (α/r) A B) + z as int16, which is all the backward needs.
struct LrqatForward {
  at::Tensor weight; // float32 [out, in]
  at::Tensor codes;  // int16 [out, in], before clamping to [qmin, qmax]
};
// Buffers the training reuses for every linear of every step (grown to the
// largest layer): allocating and freeing Ŵ-sized tensors around the
// activations that stay alive for the backward leaves the heap fragmented,
// hundreds of MiB resident on the default model. Used by the fused path only.
struct LrqatScratch {
  at::Tensor ab, weight, codes, gradWeight, du; // flat
  // A [rows, cols] tensor of this type over the start of `buffer`, grown when short.
  static at::Tensor take(at::Tensor &buffer, int64_t rows, int64_t cols,
                         const at::TensorOptions &options);
};

// With scratch, the returned tensors are views of its buffers, valid until
// the next call with the same scratch.
LrqatForward lrqatForward(const LrqatLayer &layer, LrqatScratch *scratch = nullptr);

// The straight-through gradients autograd takes through lrqatFakeWeight, in
// closed form, from dL/dŴ (gradWeight [out, in]) and the forward's codes q
// (s the formatted step, lrqatStep):
//   du = dŴ ⊙ s ⊙ [qmin <= q <= qmax],  dA = (α/r) du Bᵀ,  dB = (α/r) Aᵀ du,
//   ds = Σ over each unit of dŴ ⊙ (clamp(q, qmin, qmax) − z)   (offset form: no − z).
struct LrqatGradients {
  at::Tensor a, b, scale;
};
LrqatGradients lrqatBackward(const LrqatLayer &layer, const at::Tensor &codes,
                             const at::Tensor &gradWeight, LrqatScratch *scratch = nullptr);

// Training through the model (lrqat.cpp): each selected linear computes
// y = x Ŵᵀ (+ b) through a kernel (Linear::kernel) that derives Ŵ from the
// layer's state in its forward and again in its backward, keeping only x in
// between, and writes the closed-form gradients of A, B and s into `grads`
// (lrqatBackward of dL/dŴ = dyᵀ x, the product autograd's own mm backward
// uses, so the same bits as with Ŵ as a leaf). The kernel records a node even
// when x needs no gradient (the first layers).
struct LrqatLinearState {
  const LrqatLayer *layer = nullptr;
  at::Tensor bias;                   // undefined without one
  at::ScalarType type = at::kFloat;  // the model's dtype for Ŵ (half models stay half)
  LrqatGradients *grads = nullptr;   // this step's dA, dB, ds, written by the backward
  LrqatScratch *scratch = nullptr;   // shared by every layer: one computes at a time
  double *forwardSeconds = nullptr;  // time deriving Ŵ in forwards (may be null)
  double *backwardSeconds = nullptr; // time in backwards (may be null)
};
// The state must outlive the kernel's use (forward and backward).
std::shared_ptr<const LinearKernel> makeLrqatKernel(const LrqatLinearState *state);

// Gradient-norm clipping over every trainable tensor together, as torch's
// clip_grad_norm_: total = ||(||g_1||, ||g_2||, ...)||_2 over the defined
// tensors of all layers; when maxNorm / (total + 1e-6) < 1 every gradient is
// multiplied by it (so the total becomes maxNorm, up to the 1e-6). maxNorm <= 0
// leaves them alone. Returns the total before clipping.
double clipGradientNorm(std::vector<LrqatGradients> &gradients, double maxNorm);

} // namespace lrq::quant
