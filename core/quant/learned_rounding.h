#pragma once
// What FlexRound, LRQ and the learned-step ablation share (ALGORITHMS.md):
//   Ŵ = s1 · (clamp(round(W / (s1 · exp(E))) + z, qmin, qmax) - z)
// with the zero point z frozen at its round-to-nearest value, round with a
// straight-through gradient and clamp with zero gradient outside the grid.
// s1 has the shape of the grid's steps ([out,1] per channel, [out,groups] per
// group, [1,1] per tensor) and is learned as log s1 = log s0 + δ, δ starting at
// 0, where s0 is the round-to-nearest step: s0 · exp(0) is s0 exactly, so with
// E = 0 the layer's Ŵ is the RTN weight bit for bit. Each method defines the
// scale exponent E and its parameters. On an offset-form grid (grid.h,
// k-superblock-offset) the zero point is an offset M1 that follows s1:
//   Ŵ = s1 · clamp(round((W + M1) / (s1 · exp(E))), 0, n−1) − M1,
// M1 = M0 · exp(δ) rounded straight through to its super-block format.
// Internal to core/.
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/quant/grid.h"
#include "core/quant/method.h"
#include "core/recon/block_reconstructor.h"

namespace lrq::quant {

class LearnedRoundingLayer : public recon::LearnableLayer {
public:
  // Steps and zero point by computeGridParams(weight, spec), exactly as RTN.
  LearnedRoundingLayer(const at::Tensor &weight, const GridSpec &spec);

  // "log_s1" (δ, shape of the steps) followed by exponentParameters().
  std::vector<std::pair<std::string, at::Tensor>> parameters() const override;
  at::Tensor weight() const override;

  // E, broadcastable to [out, in], or an undefined tensor for E = 0.
  virtual at::Tensor exponent() const = 0;
  // The method's own learnable tensors (leaves requiring grad).
  virtual std::vector<std::pair<std::string, at::Tensor>> exponentParameters() const = 0;
  // The learned scale exponent in the form the spectra compare (FlexRound's
  // S2, LRQ's L2·U2), [out, in], without gradient; undefined when there is none.
  virtual at::Tensor scaleExponentMatrix() const { return at::Tensor(); }

  // The grid Ŵ lies on, without gradient: the learned step s1 = s0 · exp(δ)
  // and the frozen zero point, [rows, groups] as grid.h lays them out. On an
  // offset-form grid (k-superblock-offset) the offset follows the step,
  // M1 = M0 · exp(δ) rounded to its format, and Ŵ = s1 · q − M1.
  // Ŵ = s1 · (q − z) with the same float32 s1, so the packed export of these
  // codes and steps dequantizes to Ŵ bit for bit.
  GridParams grid() const;
  // grid() as "grid.scale" and "grid.zero_point", so that a block restored from
  // a checkpoint exports on the grid it trained on (an offset-form grid cannot
  // be searched back from Ŵ); empty when grid() refuses (the export reports why).
  std::vector<std::pair<std::string, at::Tensor>> checkpointExtras() const override;

  const at::Tensor &fpWeight() const { return w_; }
  const GridSpec &spec() const { return spec_; }
  int64_t rows() const { return w_.size(0); }
  int64_t cols() const { return w_.size(1); }

protected:
  at::Tensor w_; // full-precision weight, float32, frozen
  GridSpec spec_;
  at::Tensor step0_;     // RTN steps [rows, groups]
  at::Tensor zeroParam_; // frozen zero point [rows, groups]
  at::Tensor zero_;      // the same expanded to the weight's broadcast shape
  at::Tensor logStep_;   // δ: log s1 - log s0, learnable
};

// Whether weight() takes a one-pass kernel with a closed-form backward where it
// applies (float32 CPU tensors, integer zero point; the default), or tensor ops
// under autograd everywhere (benches compare the two). Ŵ is the same bits
// either way. Returns the previous value.
bool setLearnedRoundingOnePass(bool enabled);

// The per-layer quantizers of the methods (declared here for tests and tools).
std::unique_ptr<LearnedRoundingLayer> makeFlexRoundLayer(const at::Tensor &weight,
                                                         const GridSpec &spec);
// rank <= 0: defaultLrqRank; ranks above min(out, in) are reduced to it. U2 is
// drawn kaiming-uniform(a = √5) from a generator seeded with `seed`.
std::unique_ptr<LearnedRoundingLayer> makeLrqLayer(const at::Tensor &weight, const GridSpec &spec,
                                                   int64_t rank, uint64_t seed);

// How LRQ parameterises one layer's scale exponent E.
struct LrqLayerShape {
  // FlexRound's E = S2 + r3 (S2 [out,in], one scale per weight) instead of
  // L2·U2 + r3 + c3: the reference's hybrid rule gives some shapes this.
  bool fullS2 = false;
  int64_t rank = 0; // rank of L2·U2 when !fullS2, within [1, min(out, in)]
  int64_t learnableParameters(int64_t out, int64_t in) const; // per-channel s1 included
  std::string describe() const;                               // "full S2" or "rank 144"
};

// "fixed": every layer gets L2·U2 of the user's rank (0 = defaultLrqRank).
// "reference": the LRQ reference code's hybrid rule (lrqReferenceShape).
enum class LrqRankRule { Fixed, Reference };
// "fixed" / "reference"; throws lrq::Error for anything else.
LrqRankRule parseLrqRankRule(const std::string &name);
const char *lrqRankRuleName(LrqRankRule rule);

// The reference code's rule (ALGORITHMS.md "LRQ"): full S2 when exactly one of
// out, in exceeds 4096, or for exactly 8192 x 8192; otherwise rank 2048 when
// both sides are >= 8192, else rank 1024. A rank above min(out, in) is reduced
// to min(out, in): L2·U2 is then full rank (it can express any S2) but keeps
// LRQ's parameterisation and initialisation, with fewer parameters than the
// unreduced factors would have.
LrqLayerShape lrqReferenceShape(int64_t out, int64_t in);
// The shape a rule gives an out x in layer (rank is the "fixed" rule's).
LrqLayerShape lrqLayerShape(LrqRankRule rule, int64_t rank, int64_t out, int64_t in);
// A full-S2 shape gives FlexRound's layer exactly (same parameter names, same Ŵ).
std::unique_ptr<LearnedRoundingLayer> makeLrqLayer(const at::Tensor &weight, const GridSpec &spec,
                                                   const LrqLayerShape &shape, uint64_t seed);
std::unique_ptr<LearnedRoundingLayer> makeLearnedStepLayer(const at::Tensor &weight,
                                                           const GridSpec &spec);
// The grid of a Ŵ = s1 · (q − z) whose layer is gone (a block restored from a
// checkpoint): z and s0 by computeGridParams(fpWeight), and for each unit the
// step s that reproduces every element of the unit exactly as s (q − z), searched
// within two ulps of max|Ŵ| / k for k = 1 .. n−1 (where s1 lies), the one
// closest to s0 when several do (an all-zero unit keeps s0). Any such step serves the packed
// export: its codes give Ŵ back. An undefined scale when some unit fits no step (Ŵ is on no grid
// with z). On a k-superblock grid the steps are recovered in float32 and kept only when they
// are d sc as they are (applyStepFormat leaves them unchanged); else undefined. Always
// undefined on a k-superblock-offset grid (its offsets follow the learned steps).
GridParams recoverLearnedGrid(const at::Tensor &fpWeight, const at::Tensor &quantized,
                              const GridSpec &spec);

// ≈ min(out, in) / 4, at least 1.
int64_t defaultLrqRank(int64_t rows, int64_t cols);

// Whether scheme is one of the reference code's settings: an asymmetric
// per-channel grid of `bits` bits with 8-bit activations (a8) or
// full-precision ones (A16). Picks the reference init (referenceGrid).
bool isReferenceSetting(const QuantScheme &scheme, int bits, bool a8);

// Hyperparameters every reconstruction method has, with `lr` as the default rate:
// iters, lr, batch_size, cache_mb. (A resumed run's job adds "resume": true.)
std::vector<HyperparameterSpec> reconstructionHyperparameters(double lr);
// FlexRound, LRQ and the learned-step ablation: resumable, a loss curve per block.
class ReconstructionMethod : public QuantMethod {
public:
  bool canResume() const override { return true; }
  bool trainsBlocks() const override { return true; }
};

// Block-wise reconstruction of ctx.model's selected linears (on the grid
// resolveReferenceGrid(method, ctx.scheme)) with the layers makeLayer builds (layerSeed differs per
// block and linear); the scheme's embeddings / LM head, when selected, get round-to-nearest. Fills
// one LayerReport per quantized tensor, the grid of each (layer.grid(); RTN's for the embeddings /
// LM head) in grids, and a per-block summary in extra. Blocks restored from a checkpoint (resume)
// have no layer to ask: their grids come from recoverLearnedGrid (none when it finds none: the
// packed export of that layer is then refused).
using LayerMaker = std::function<std::unique_ptr<LearnedRoundingLayer>(
    const at::Tensor &weight, const GridSpec &spec, uint64_t layerSeed)>;
MethodReport runReconstructionMethod(MethodContext &ctx, const QuantMethod &method,
                                     const LayerMaker &makeLayer);

} // namespace lrq::quant
