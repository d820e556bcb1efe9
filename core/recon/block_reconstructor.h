#pragma once
// Block-wise reconstruction (ALGORITHMS.md, "Block-wise reconstruction"): the
// optimisation engine FlexRound and LRQ (and the learned-step ablation) share.
// It knows nothing about grids: a method supplies, per linear, a LearnableLayer
// whose weight() is Ŵ(θ), and the engine trains θ block by block so that each
// quantized block reproduces the full-precision block's output.
//
//  - Blocks in order 0..L-1. Block j's input is the output of the already
//    quantized blocks 0..j-1 on the calibration set ("quantized stream"); its
//    target is the full-precision block j applied to the full-precision input
//    ("FP stream"). Both streams are cached per calibration sample, in memory up
//    to a budget, spilled to files in the work directory beyond it.
//  - Adam (β 0.9/0.999, ε 1e-8) on every layer's parameters, learning rate
//    cosine-annealed from lr to 0 over the iterations; each iteration a batch of
//    distinct samples drawn by a generator seeded from (seed, block).
//  - Loss: (pred - target)^2 summed over the hidden dimension, averaged over
//    batch and tokens.
//  - Events: blockStarted, iterationLoss (every iteration), blockFinished with
//    the loss over the whole calibration set before and after training. The
//    cancel token is checked between iterations (throws lrq::Cancelled).
//  - Held-out samples (optional): windows never trained on go through both
//    streams exactly as the training ones (quantized blocks before, FP target)
//    and are always kept in memory; their loss, same definition, before and
//    after each block's training is reported (blockHeldOut, BlockOutcome). They
//    change nothing of the training: the weights are those of a run without.
//  - After each block the allocator hands back the memory it keeps for the
//    block's training temporaries (malloc_trim on glibc).
//  - Non-finite loss or parameters stop with an lrq::Error naming block and layer;
//    the block's full-precision weights are put back on any failure.
//  - After each block a checkpoint (the final Ŵ of its layers and its figures) is
//    written to <workDir>/recon/; with `resume`, finished blocks are restored from
//    it and both streams recomputed through them exactly as the first run did, so
//    the resumed run ends with bit-identical weights.
// Internal to core/ (includes ATen).
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/common/progress.h"
#include "core/model/decoder.h"
#include "core/model/weight_arena.h"

namespace lrq::recon {

// The learnable quantizer of one linear.
class LearnableLayer {
public:
  virtual ~LearnableLayer() = default;
  // Leaf tensors requiring grad, with their names ("log_s1", "S2", ...).
  virtual std::vector<std::pair<std::string, at::Tensor>> parameters() const = 0;
  // Ŵ(θ) [out, in], differentiable in the parameters.
  virtual at::Tensor weight() const = 0;
  // Tensors a block restored from the checkpoint needs beside Ŵ (e.g. the grid
  // the learned steps ended on, which Ŵ alone may not determine), read after the
  // final iteration; saved as float32.
  virtual std::vector<std::pair<std::string, at::Tensor>> checkpointExtras() const { return {}; }
  int64_t parameterCount() const;
};

// The learnable quantizer for linear `role` of `block` given its FP weight, or
// null to leave that linear in full precision.
using LayerFactory = std::function<std::unique_ptr<LearnableLayer>(
    int64_t block, const std::string &role, const at::Tensor &fpWeight)>;

struct ReconOptions {
  int64_t iters = 200;
  double lr = 1e-3;
  int64_t batchSize = 2;
  // MiB of both streams together kept in memory; -1 = none when there is a
  // work directory to spill to, else all.
  int64_t cacheMb = -1;
  bool resume = false;
  uint64_t seed = 0;
  // Blocks whose linears are offered to the factory; empty = all. Blocks after
  // the last one listed are left alone (not even run).
  std::vector<int64_t> blocks;
  std::string workDir; // checkpoints and spill files; "" = none (no checkpoints)
  // The checkpoint only serves an interrupted run: a finished run removes it
  // (a 135M model's is ~400 MB) unless asked to keep it.
  bool keepCheckpoint = false;
  std::string fingerprint; // the run's settings; a checkpoint of other settings is refused
  ProgressObserver *observer = nullptr;
  const CancelToken *cancel = nullptr;
  WeightArena *arena = nullptr; // where each block's final Ŵ go (weight_arena.h), or none
};

struct LayerOutcome {
  std::string role;
  int64_t learnableParams = 0;
  at::Tensor fpWeight; // before (only in the per-block callback)
  at::Tensor weight;   // the Ŵ installed (only in the per-block callback)
  // The layer's checkpointExtras(), float32 on the CPU (only in the per-block
  // callback; also for restored blocks, empty for checkpoints written without).
  std::vector<std::pair<std::string, at::Tensor>> extras;
};

struct BlockOutcome {
  int64_t block = 0;
  double initialLoss = 0, finalLoss = 0; // mean over the calibration set
  // Mean over the held-out samples, same loss (none without held-out samples,
  // or for a block restored from a checkpoint that has none).
  std::optional<double> heldoutInitialLoss = {}, heldoutFinalLoss = {};
  double seconds = 0;      // whole block
  double trainSeconds = 0; // the iterations alone
  int64_t iterations = 0;
  std::vector<double> curve; // loss of every iteration's batch
  std::vector<LayerOutcome> layers;
  bool restored = false; // taken from a checkpoint
};

struct ReconSummary {
  std::vector<BlockOutcome> blocks; // without tensors
  int64_t samples = 0, seqLen = 0;
  int64_t heldoutSamples = 0;
  int64_t spilledSamples = 0; // per stream
  int64_t resumedBlocks = 0;
};

class BlockReconstructor {
public:
  // calibrationTokens: [samples, seqLen] int64; heldoutTokens: [heldout, len]
  // int64 windows never trained on, or undefined for none.
  BlockReconstructor(DecoderModel &model, at::Tensor calibrationTokens, ReconOptions options,
                     at::Tensor heldoutTokens = {});

  // Quantizes every block of the model in place. onBlock sees each block's
  // outcome with its tensors (also for blocks restored from a checkpoint).
  ReconSummary run(const LayerFactory &factory,
                   const std::function<void(const BlockOutcome &)> &onBlock = {});

  // Where the checkpoint lives for a work directory.
  static std::string checkpointDir(const std::string &workDir);

private:
  DecoderModel &model_;
  at::Tensor tokens_;
  ReconOptions options_;
  at::Tensor heldoutTokens_;
};

} // namespace lrq::recon
