#pragma once
// The one small interface every quantization method implements (RTN, GPTQ,
// FlexRound, LRQ, LQER, L²QER, LR-QAT). A method is one file: a class deriving
// from QuantMethod plus one line in method_registry.cpp. Internal to core/.
#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/common/option_value.h"
#include "core/common/progress.h"
#include "core/model/decoder.h"
#include "core/model/weight_arena.h"
#include "core/quant/grid.h"
#include "core/quant/rtn.h"
#include "core/quant/scheme.h"

namespace lrq::quant {

// Where a method may set aside the full-precision weights of linears it will
// not read for a long while (LR-QAT, whose steps compute from its own state):
// the run writes them to disk and gives them back on request, bit for bit.
class WeightStash {
public:
  virtual ~WeightStash() = default;
  // Sets aside the weight block b's linear `role` holds now, leaving that
  // Linear::weight undefined. False when it could not: the weight then stays.
  virtual bool setAside(int64_t block, const std::string &role) = 0;
  // What was set aside, as a new tensor. Throws lrq::FileError when the disk fails it.
  virtual at::Tensor bringBack(int64_t block, const std::string &role) = 0;
};

// Calibration token windows, [samples, seqLen] int64 on the CPU.
struct CalibrationSet {
  at::Tensor tokens;
  std::string source; // where the text came from, for the run record
  // Windows never trained on, [heldout, seqLen], disjoint from `tokens`: the
  // block-wise reconstruction reports its loss on them beside the training
  // loss. Undefined when there are none; other methods ignore them.
  at::Tensor heldoutTokens = {};
};

// `samples` windows of seqLen tokens drawn without overlap from the token
// stream, at positions chosen by a generator seeded with `seed` (sorted, so the
// same arguments always give the same set), then `heldout` more windows from
// the slots left. The training windows do not depend on `heldout`. Throws
// lrq::Error when the stream is too short for both.
CalibrationSet makeCalibrationSet(const std::vector<int32_t> &tokens, int64_t samples,
                                  int64_t seqLen, uint64_t seed, std::string source = "",
                                  int64_t heldout = 0);
// Non-overlapping windows of seqLen tokens a stream of tokenCount tokens holds.
int64_t calibrationWindows(int64_t tokenCount, int64_t seqLen);

struct MethodContext {
  DecoderModel &model;       // quantized in place: weights replaced by Ŵ, transforms installed
  const QuantScheme &scheme; // what to quantize and on which grids
  const CalibrationSet &calibration;
  nlohmann::json hyper; // the method's defaults() overlaid with the user's values
  uint64_t seed = 0;
  ProgressObserver *observer = nullptr; // blockStarted / iterationLoss / blockFinished / log ...
  const CancelToken *cancel = nullptr;
  std::string workDir; // per-run folder for caches and checkpoints ("" = none)
  bool spectra = true; // fill LayerReport::spectra (the run store's per-layer spectra)
  // Leave the checkpoint in workDir when the method ends (the caller removes
  // it once the whole run is recorded); false: the method removes it.
  bool keepCheckpoint = false;
  // Where the Ŵ the method keeps are placed (placeWeight), or none: see
  // weight_arena.h. Only where the weights go changes, never their values.
  WeightArena *arena = nullptr;
  // Where weights the method will not read for a while may go (none: they stay).
  WeightStash *stash = nullptr;
};

// Per-layer outcome; LayerErrorStats (rtn.h) plus what the method learned.
struct LayerReport {
  LayerErrorStats error;       // W vs Ŵ (the effective weight, low-rank terms included)
  int64_t learnableParams = 0; // 0 for methods that learn nothing (RTN, GPTQ, LQER)
  // Spectra only the method can compute, by kind: "scaled_E" (LQER / L²QER: diag(s)·Eᵀ of
  // the rounding error before the correction), "scale_exponent" (FlexRound's S2, LRQ's
  // L2·U2, as learned). All singular values, descending. Empty when ctx.spectra is false.
  std::vector<std::pair<std::string, std::vector<double>>> spectra = {};
};

struct MethodReport {
  std::vector<LayerReport> layers;
  nlohmann::json extra = nlohmann::json::object(); // method-specific figures for the run record
  // The grid each quantized tensor's Ŵ lies on, by layer prefix (gridKey:
  // "model.layers.0.self_attn.q_proj"), so that the packed export's codes
  // q = round(Ŵ / s) + z give Ŵ back exactly as s (q - z). Every method fills it
  // for every tensor it quantizes (GPTQ with act-order on a per-group grid
  // cannot); the export takes computeGridParams(W) for layers absent.
  std::map<std::string, GridParams> grids;
};

// Key of MethodReport::grids and of the packed export for linear `role` of
// `block` ("model.layers.0.self_attn.q_proj", OPT: "model.decoder.layers.0.fc1");
// block -1 with role "embeddings" or "lm_head" names the token embedding
// ("model.embed_tokens") or the LM head ("lm_head").
std::string gridKey(const ModelConfig &config, int64_t block, const std::string &role);

class QuantMethod {
public:
  virtual ~QuantMethod() = default;
  virtual std::string
  name() const = 0; // "rtn", "gptq", "flexround", "lrq", "lqer", "l2qer", "lrqat"
  // A short title for pickers: "LRQ: low-rank weight scaling".
  virtual std::string title() const = 0;
  // One paragraph for --help: what it learns, from which paper.
  virtual std::string help() const = 0;
  // Every hyperparameter with its type, default, range and help.
  virtual std::vector<HyperparameterSpec> hyperparameters() const = 0;
  // Run-size presets. By default "demo" (minutes on 2 cores: 16 x 128 calibration
  // tokens, 50 iterations per block, 30 training steps) and "thorough" (closer to
  // the papers: 128 x 1024 tokens, 2000 iterations, 1000 steps), each setting
  // only the hyperparameters the method has.
  virtual std::vector<MethodPreset> presets() const;
  // Keeps a checkpoint per block, so an interrupted run can be resumed.
  virtual bool canResume() const { return false; }
  // Reports a reconstruction loss curve per transformer block.
  virtual bool trainsBlocks() const { return false; }
  // Uses calibration activations.
  virtual bool needsCalibration() const { return true; }
  // Learnable parameters of one out x in linear on a per-channel grid at these
  // hyperparameters (defaults merged in); 0 for methods that learn nothing.
  virtual int64_t learnableParameters(int64_t outFeatures, int64_t inFeatures,
                                      const nlohmann::json &hyper) const {
    (void)outFeatures, (void)inFeatures, (void)hyper;
    return 0;
  }
  // Refuses, before any work, hyperparameters that are each valid but cannot
  // be honoured (a choice outside its list, two that contradict each other):
  // throws lrq::Error. mergeHyperparameters calls it on the merged values.
  virtual void checkHyperparameters(const nlohmann::json &merged) const { (void)merged; }
  // Refuses, before any work, a scheme the method cannot honour: throws
  // lrq::Error saying which setting and why. By default every valid scheme.
  virtual void checkScheme(const QuantScheme &scheme) const { (void)scheme; }
  // The weight grid this method uses for scheme when its weight.init is "auto"
  // (StepInit::MethodDefault): the reference implementation's initialisation
  // for that setting. By default min/max. Only called for "auto"; an init the
  // scheme names is always honoured.
  virtual GridSpec referenceGrid(const QuantScheme &scheme) const;
  // Hyperparameters with their defaults, e.g. {"rank": 0, "iters": 200, "lr": 9e-4}.
  nlohmann::json defaults() const;
  // Quantizes ctx.model according to ctx.scheme. Must check ctx.cancel between
  // units of work (throwing lrq::Cancelled) and report progress.
  virtual MethodReport run(MethodContext &ctx) = 0;
};

// A typed value as JSON, and a JSON scalar as a typed value (throws lrq::Error
// for arrays, objects and null).
nlohmann::json toJson(const OptionValue &value);
OptionValue optionValueOf(const nlohmann::json &value);

// scheme with an "auto" weight init replaced by method.referenceGrid(scheme),
// and an "auto" fallback_weight init by referenceGrid of the scheme whose
// weight is that fallback; any other scheme unchanged. What a run records is the resolved scheme.
QuantScheme resolveReferenceGrid(const QuantMethod &method, QuantScheme scheme);

// The LRQ / FlexRound reference's "clipping" init (ClippingSearch2D, 100 range
// sizes, p = 2.4) on scheme's grid, keeping its bits, granularity and group
// size. Throws lrq::Error for a symmetric grid.
GridSpec referenceClippingGrid(const QuantScheme &scheme);

// An arena (weight_arena.h) with room for every weight `sel` lets a method
// replace: the selected block linears, and the token embedding and LM head
// when selected; in the dtype and on the device of the first of them. An
// empty arena where nothing is selected.
WeightArena weightArenaFor(const ModelConfig &config, ModelWeights &weights,
                           const LayerSelection &sel);

using MethodFactory = std::function<std::unique_ptr<QuantMethod>()>;

// Known method names, in display order.
std::vector<std::string> methodNames();
// Throws lrq::Error listing the known names.
std::unique_ptr<QuantMethod> createMethod(const std::string &name);
// Overlays user values on defaults; unknown keys, wrong types and values out of
// a hyperparameter's range throw lrq::Error naming the key and the method.
nlohmann::json mergeHyperparameters(const QuantMethod &method, const nlohmann::json &user);

} // namespace lrq::quant
