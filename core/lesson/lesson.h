#pragma once
// The "Learn" playground: one linear layer quantized piece by piece, fast
// enough to follow a slider. Light header (plain C++ types, no LibTorch) so
// the desktop widgets can include it; the tensor work lives in lesson.cpp and
// reuses the engine's grids (core/quant/grid.h), FlexRound / LRQ layers
// (core/quant/learned_rounding.h) and activation scale (activation_stats.h).
//
// Conventions (ALGORITHMS.md): W is [out, in], activations X are [tokens, in],
// y = X Wᵀ. E = W − Ŵ is the rounding error of the round-to-nearest Ŵ.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/common/progress.h"

namespace lrq {
class ModelSession;
}

namespace lrq::lesson {

// A dense row-major float matrix.
struct Matrix {
  int64_t rows = 0, cols = 0;
  std::vector<float> values; // rows * cols
  bool empty() const { return values.empty(); }
  float at(int64_t r, int64_t c) const { return values[size_t(r * cols + c)]; }
};

// What a lesson works on: a weight and (optionally) the inputs it sees.
struct LessonLayer {
  std::string name;           // "synthetic 1536×576" or "model.layers.0.mlp.down_proj"
  Matrix weight;              // [out, in]
  Matrix activations;         // [tokens, in]; empty when there are none
  std::string activationNote; // where the activations came from ("" when none)
};

// A Gaussian weight (std 0.02) whose few input columns are outliers (gain times
// larger), and correlated Gaussian activations (a 32-dimensional latent signal
// plus noise) with as many outlier channels, elsewhere (as in LLM activations).
// Deterministic for a seed.
struct SyntheticOptions {
  int64_t rows = 1536, cols = 576;
  int outlierColumns = 4;
  double weightOutlierGain = 6.0; // on outlierColumns random input columns
  int64_t tokens = 512;
  double activationOutlierGain = 10.0; // on as many other random input channels
  uint64_t seed = 1;
};
LessonLayer syntheticLayer(const SyntheticOptions &options = {});

// A model opened for lessons: its weights, and its decoder to capture a
// linear's inputs on the default calibration text. Thread-safe (one capture
// at a time).
class LessonModel {
public:
  // "default" is the default model (fetched on first use). Throws lrq::Error.
  static std::shared_ptr<LessonModel> open(const std::string &pathOrDefault,
                                           ProgressObserver *observer = nullptr,
                                           const CancelToken *cancel = nullptr);
  // The model an open session already holds: no second copy is loaded; the
  // session stays alive as long as this does.
  static std::shared_ptr<LessonModel> fromSession(std::shared_ptr<const ModelSession> session);
  ~LessonModel();
  LessonModel(const LessonModel &) = delete;
  LessonModel &operator=(const LessonModel &) = delete;

  const std::string &path() const;
  int64_t numBlocks() const;
  std::vector<std::string> roles() const; // "q_proj", ..., "down_proj"
  // HF tensor name of a block's linear: "model.layers.0.mlp.down_proj".
  std::string layerName(int64_t block, const std::string &role) const;
  // The weight of `role` in `block` and its input on the first `tokens` tokens
  // of the default calibration text (the model run in full precision through
  // blocks 0..block). Throws lrq::Error for an unknown block or role.
  LessonLayer layer(int64_t block, const std::string &role, int64_t tokens = 256,
                    const CancelToken *cancel = nullptr) const;

private:
  struct Impl;
  explicit LessonModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A rectangular window of a matrix, row-major.
struct Tile {
  int64_t row0 = 0, col0 = 0, rows = 0, cols = 0;
  std::vector<double> values;
  double at(int64_t r, int64_t c) const { return values[size_t(r * cols + c)]; }
};

struct GridOptions {
  int bits = 4;          // 2..8
  int64_t groupSize = 0; // 0 = per channel (one step per output row)
  bool symmetric = false;
  double clipRatio = 1.0; // fraction of each unit's min/max range kept, (0, 1]
  int64_t maxRank = 64;   // the remaining-error curves cover k = 0..maxRank
  // Top-left corner of the heat-map tiles; -1 centres them on the largest |W|.
  int64_t tileRow = -1, tileCol = -1;
  int64_t tileSize = 32;
  // The quantization unit (row, group) whose levels and histogram are shown is
  // the one holding element (unitRow, unitCol); unitRow -1 = the row of the
  // largest |W|.
  int64_t unitRow = -1, unitCol = 0;
};

struct GridLessonResult {
  std::string grid; // "W4 asym per-channel, clip 1.00"
  int64_t rows = 0, cols = 0;

  // The chosen unit: row unitRow, columns [unitCol0, unitCol0 + unitCols).
  int64_t unitRow = 0, unitCol0 = 0, unitCols = 0;
  std::vector<double> levels; // every value Ŵ can take in that unit, ascending
  double step = 0;            // its step s
  double histLo = 0, histHi = 0;
  std::vector<double> histCounts; // the unit's weights, equal-width bins over [histLo, histHi]

  // The whole matrix.
  double mse = 0;             // mean E²
  double sqnrDb = 0;          // 10 log10(ΣW² / ΣE²)
  double relativeError = 0;   // ||E||_F / ||W||_F
  double outputRelError = -1; // ||X Eᵀ||_F / ||X Wᵀ||_F on ≤ 256 tokens; -1 without X
  double clippedFraction = 0; // weights outside their unit's grid range
  int64_t scaleCount = 0;     // steps (and zero points) stored

  Tile weight, quantized, error; // the same window of W, Ŵ and E

  std::vector<double> errorSpectrum;       // σ(E), descending
  std::vector<double> scaledErrorSpectrum; // σ(diag(s) Eᵀ), descending
  // k = 0..maxRank: ||E − E_k||_F / ||W||_F with E_k the best rank-k E (LQER).
  std::vector<double> lqerRemaining;
  // k = 0..maxRank: ||diag(s)(E − E_k^s)ᵀ||_F / ||diag(s) Wᵀ||_F with E_k^s
  // L²QER's rank-k correction (what it minimises: the activation-weighted error).
  std::vector<double> l2qerRemaining;
  bool activationScaled = false; // false: s = 1 (no activations), the curves coincide
  std::string scaleNote;         // where s came from, or why it is 1
  double seconds = 0;
};

// Round-to-nearest on the grid of `options`, and everything the lesson shows
// about its error. ~0.1 s for a 1536×576 layer. Throws lrq::Error for bad options.
GridLessonResult gridLesson(const LessonLayer &layer, const GridOptions &options);

// Relative error ||E||_F / ||W||_F of round-to-nearest for bits 2..8, per
// channel and for groups of 128, 64 and 32 (the same symmetric / clip choice).
struct ErrorSweep {
  std::vector<int> bits;
  std::vector<std::string> labels;                // "per-channel", "g128", "g64", "g32"
  std::vector<int64_t> groupSizes;                // 0, 128, 64, 32
  std::vector<std::vector<double>> relativeError; // [label][bits]
};
ErrorSweep errorSweep(const LessonLayer &layer, bool symmetric, double clipRatio);

// Why 8-bit activations are hard, and what SmoothQuant does, on this layer:
// per-token dynamic asymmetric activation quantization (the engine's), with and
// without SmoothQuant's per-input-channel scale
//   s_j = max|X_j|^α / max|W_:,j|^(1−α)  (clamped to ≥ 1e-5),  X → X/s, W → W·s,
// which is the identity in full precision.
struct ActivationOptions {
  double alpha = 0.5;      // SmoothQuant's migration strength, [0, 1]
  int weightBits = 8;      // per-channel asymmetric weights for the "W+A" curves
  int64_t maxTokens = 128; // rows of X used
};

struct ActivationLessonResult {
  int64_t tokens = 0;
  // Per input channel j: max_t |X_tj| before and after dividing by s, and
  // max_i |W_ij| before and after multiplying by s.
  std::vector<double> actAbsMax, actAbsMaxSmoothed, weightAbsMax, weightAbsMaxSmoothed;
  // Relative output error ||Ŷ − X Wᵀ||_F / ||X Wᵀ||_F for activation bits
  // 4..8 (activationBits): activations only quantized (weights full
  // precision), and weights at weightBits as well; each plain and smoothed.
  std::vector<int> activationBits;
  std::vector<double> actOnly, actOnlySmoothed, weightAndAct, weightAndActSmoothed;
  double seconds = 0;
};

// Throws lrq::Error when the layer has no activations or alpha is outside [0, 1].
ActivationLessonResult activationLesson(const LessonLayer &layer, const ActivationOptions &options);

struct FitOptions {
  int bits = 3;
  int64_t groupSize = 0; // 0 = per channel
  bool symmetric = false;
  int steps = 150; // Adam steps per method, cosine-annealed learning rate
  double lrFlexRound = 3e-3;
  double lrLrq = 1e-2;     // L2 starts at 0: LRQ needs a higher rate at short budgets
  int64_t lrqRank = 16;    // rank of L2·U2
  int64_t maxTokens = 256; // rows of X trained on (the first ones)
  // The rows after those (up to maxTokens more) are held out: the loss on them
  // is measured every evalEvery steps. 0 = no held-out evaluation.
  int evalEvery = 10;
  int64_t tileRow = -1, tileCol = -1, tileSize = 32; // as GridOptions
  uint64_t seed = 0;
};

struct FitLessonResult {
  // Loss (mean over tokens of Σ over outputs of (X Wᵀ − X Ŵᵀ)²) before step 1
  // (index 0, the RTN loss for both) and after each step.
  std::vector<double> lossFlexRound, lossLrq;
  double rtnLoss = 0;
  // The same loss on held-out rows of X, at the steps in heldOutSteps (0 first,
  // the last step last); empty when there are no rows to hold out.
  std::vector<int> heldOutSteps;
  std::vector<double> heldOutFlexRound, heldOutLrq;
  double rtnHeldOutLoss = 0;
  int64_t heldOutTokens = 0;
  // Code of the learned Ŵ minus the RTN code (−1, 0, +1 ...), on the tile.
  Tile flipsFlexRound, flipsLrq;
  double flippedFlexRound = 0, flippedLrq = 0; // fraction of all weights whose code changed
  // The learned scale exponents on the tile: FlexRound's S2 and LRQ's L2·U2.
  Tile scaleFlexRound, scaleLrq;
  std::vector<double> scaleSpectrumFlexRound, scaleSpectrumLrq; // σ of the full matrices
  int64_t paramsFlexRound = 0, paramsLrq = 0;                   // learnable parameters
  int64_t lrqRank = 0;
  int64_t tokens = 0;
  std::string grid;
  std::string activationNote;
  int stepsDone = 0;
  double seconds = 0;
};

// FlexRound and LRQ on one layer, trained side by side on the layer's output
// error with X = layer.activations (synthetic Gaussian X when there are none).
// Reports started("fit", steps), iterationLoss(0 = FlexRound / 1 = LRQ, step,
// loss before the step), progress(step, steps) and checks cancel every step
// (throws lrq::Cancelled).
FitLessonResult fitLesson(const LessonLayer &layer, const FitOptions &options,
                          ProgressObserver *observer = nullptr,
                          const CancelToken *cancel = nullptr);

} // namespace lrq::lesson
