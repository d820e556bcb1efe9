#pragma once
// Storage cost of a quantized run, estimated from what the run store keeps
// (scheme JSON, hyperparameters JSON) and, where the estimate needs matrix
// shapes, the shapes of the model's linears read from its config (an HF
// directory's config.json or a GGUF file's metadata). Qt only, no engine
// headers: the Runs view computes it for every row.
#include <QString>

#include <optional>

namespace lrq::ui {

// The decoder dimensions that fix every quantizable matrix's shape.
struct ModelShape {
  qint64 hidden = 0;
  qint64 intermediate = 0; // LLaMA: gate/up/down width; OPT: ffn_dim
  qint64 heads = 0;
  qint64 kvHeads = 0;
  qint64 headDim = 0;
  qint64 blocks = 0;
  qint64 vocab = 0; // 0 when unknown (embeddings / LM head then cannot be counted)
  bool opt = false; // OPT naming: out_proj, fc1, fc2 and no gate
};

// Reads the shape of the model at path: an HF directory (config.json), a
// file inside one (the config.json beside it) or a .gguf file (its metadata).
// Returns nullopt when the path is gone or not understood; never throws.
std::optional<ModelShape> readModelShape(const QString &path);

// Estimated bits per quantized weight of a run, averaged over the matrices the
// scheme selects, weighted by their number of elements:
//
//   bpw = Σ_m [ n_m·b + s_m·(16 + z) + r_m·(in_m + out_m)·f ] / Σ_m n_m
//
//   n_m  = in_m·out_m, the elements of matrix m (out × in, HF layout)
//   b    = weight.bits
//   s_m  = number of steps: 1 per tensor, out_m per channel, out_m·⌈in_m/g⌉ per group of g
//   16   = one fp16 step (scale) per group/channel/tensor
//   z    = b for an asymmetric grid (its zero point is stored in the weight's width), 0 if
//          symmetric
//   r_m  = min(rank, in_m, out_m) for methods that keep low-rank factors A (in×r), B (r×out)
//          beside the weights at inference, i.e. lqer and l2qer; 0 otherwise. LRQ's low-rank
//          scales and LR-QAT's adapters are merged into the integer codes when the run ends,
//          so they cost nothing at inference and are not counted.
//   f    = hyperparameter factor_bits, or 16 (fp16 factors) when it is 0 ("full precision");
//          the steps of quantized factors are neglected.
//
// Without a shape the estimate is still exact for per-group grids without
// low-rank factors (b + (16 + z)/g, g dividing the width) and taken as b for
// per-tensor grids (one step per matrix is below 0.001 bits); per-channel
// grids and low-rank factors need the widths, so the result is nullopt. Also
// nullopt for a scheme without weight bits or unreadable JSON.
std::optional<double> estimateBitsPerWeight(const QString &method, const QString &schemeJson,
                                            const QString &hyperparametersJson,
                                            const ModelShape *shape);

// The "rank" hyperparameter, nullopt when the run has none.
std::optional<qint64> rankOf(const QString &hyperparametersJson);

} // namespace lrq::ui
