#pragma once
// GPTQ (Frantar et al., ICLR 2023; ALGORITHMS.md "GPTQ") for one linear layer;
// the method itself ("gptq", sequential over blocks) is in gptq.cpp.
#include <ATen/ATen.h>

#include <cstdint>

#include "core/quant/grid.h"
#include "core/quant/quant_spec.h"

namespace lrq::quant {

struct GptqOptions {
  double damp = 0.01;      // added to diag(H): damp * mean(diag(H))
  int64_t blockSize = 128; // columns per lazy-batch block
  bool actOrder = false;   // columns by descending diag(H)
  // Inner loop with tensor ops (what non-CPU devices use) instead of the
  // CPU's plain loops; lets tests on a CPU check that path too.
  bool tensorOps = false;
};

struct GptqLayerResult {
  at::Tensor weight; // Ŵ [out, in], the dtype and device of the input weight
  at::Tensor codes;  // int32 [out, in], original column order
  // Step and zero point of every element's unit, [out, in] float32 (original
  // column order): valid for every granularity, with or without act-order.
  at::Tensor columnScale, columnZero;
  // [rows, groups] as grid.h lays them out; undefined for per-group with
  // act-order (groups then run over permuted columns: use columnScale).
  GridParams params;
  at::Tensor permutation; // int64 [in]: quantization order (identity without act-order)
  double loss = 0;        // GPTQ's own objective: sum (w - q)^2 / d^2 / 2
};

// H = 2/N XᵀX (float64) of inputs x [..., in] (N = rows of x).
at::Tensor gptqHessian(const at::Tensor &x);

// GPTQ of weight [out, in] with Hessian h [in, in] on spec's grid:
//  - dead inputs (diag(H) = 0): H_ii = 1, W_:,i = 0;
//  - act-order: columns permuted by descending diag(H) (stable);
//  - H += damp * mean(diag(H)) I; U = upper Cholesky factor of H⁻¹;
//  - columns in blocks of blockSize; column i is quantized, its error
//    e = (w - q) / U_ii is propagated to the block's later columns with U_i,:,
//    and after the block to all later columns at once (lazy batch);
//  - per-tensor / per-channel steps come from the whole original weight;
//    per-group steps (ragged last group included) are computed when the
//    quantization reaches the group's first column, from the weight as updated
//    up to the start of the current block: the reference implementation reads
//    them from its lazily updated matrix, so updates made earlier in the same
//    block are not yet visible (identical when groups start on block
//    boundaries, e.g. g128 with blocks of 128); on a k-superblock grid (GGUF
//    Q6_K) the 16 group steps of a 256-column super-block are made together
//    (computeGridParams on its columns) when the quantization reaches its
//    first column, so that they share one d.
// Computes in float64. Throws lrq::Error when H is not positive definite even
// after dampening (more damping helps).
GptqLayerResult gptqQuantizeLayer(const at::Tensor &weight, const at::Tensor &h,
                                  const GridSpec &spec, const GptqOptions &options = {});

// Mean output error over the tokens behind h = 2/N XᵀX:
// (1/N) ||X (W - Ŵ)ᵀ||² = tr((W - Ŵ) H (W - Ŵ)ᵀ) / 2.
double gptqOutputError(const at::Tensor &weight, const at::Tensor &approx, const at::Tensor &h);

} // namespace lrq::quant
