#pragma once
// LQER / L²QER (arXiv 2402.02446; ALGORITHMS.md "LQER / L²QER"): the
// quantization error E = W - Q(W) is approximated by a rank-k product found
// by SVD, optionally weighted by per-input-channel activation magnitudes s:
//   SVD of diag(s) Eᵀ = U Σ Vᵀ,  A = diag(s)⁻¹ U_k [in, k],  B = Σ_k V_kᵀ [k, out],
// so that y = x Q(W)ᵀ + (x A) B. Plain LQER is s = 1. The methods "lqer" and
// "l2qer" are registered in method_registry.cpp. Internal to core: includes ATen.
#include <ATen/ATen.h>

#include <cstdint>

namespace lrq::quant {

struct LqerFactors {
  at::Tensor a;              // [in, k]
  at::Tensor b;              // [k, out]
  at::Tensor singularValues; // all singular values of diag(s) Eᵀ, descending (float64, CPU)
  int64_t rank = 0;          // k actually kept: min(requested, in, out)
};

// Factors of error E [out, in] at the requested rank (clamped to min(in, out)).
// scale: [in] positive channel weights s, or undefined for s = 1.
// On the CPU the SVD runs in float64 and a, b come back in float64; on CUDA in
// float32. factorBits 0 keeps a and b as computed; 2..8 fake-quantizes them
// (symmetric, one step per column of a and per output column of b).
LqerFactors lqerFactorize(const at::Tensor &error, const at::Tensor &scale, int64_t rank,
                          int factorBits = 0);

// Symmetric per-channel fake quantization of a factor along its columns:
// every column of m [rows, cols] gets its own step.
at::Tensor fakeQuantizeFactorColumns(const at::Tensor &m, int bits);

} // namespace lrq::quant
