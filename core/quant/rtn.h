#pragma once
// Round-to-nearest of a whole model's selected linears on a scheme's weight
// grid (ALGORITHMS.md, "RTN"): the baseline every table starts from.
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/common/progress.h"
#include "core/model/config.h"
#include "core/model/weight_arena.h"
#include "core/model/weights.h"
#include "core/quant/grid.h"
#include "core/quant/scheme.h"

namespace lrq::quant {

struct LayerErrorStats {
  int64_t block = -1; // -1 for the embeddings and the LM head
  std::string layer;  // "q_proj", ..., "embeddings", "lm_head"
  int64_t rows = 0, cols = 0;
  double mse = 0.0;    // mean (W - Ŵ)^2
  double sqnrDb = 0.0; // 10 log10(sum W^2 / sum (W - Ŵ)^2); +inf when Ŵ == W
};

// MSE and SQNR of an approximation of a weight (computed in double).
LayerErrorStats weightErrorStats(const at::Tensor &weight, const at::Tensor &approx);
// Tells the observer (if any) that a layer's Ŵ is final, with its error.
inline void reportLayer(ProgressObserver *observer, const LayerErrorStats &s) {
  if (observer)
    observer->layerFinished(int(s.block), s.layer, s.mse, s.sqnrDb);
}

// Replaces every selected Linear::weight (and, when the scheme asks, the token
// embedding and LM head) by its round-to-nearest Ŵ in float32. Returns one entry
// per quantized tensor, in block order. Throws lrq::Error naming the block and
// layer when the grid does not fit a weight (e.g. a weight that is not 2-D).
// A tied LM head quantized without the embeddings is untied first. With grids,
// each tensor's grid (computeGridParams of its original) is stored under its
// gridKey (method.h).
std::vector<LayerErrorStats>
quantizeModelRtn(ModelWeights &weights, const ModelConfig &config, const QuantScheme &scheme,
                 ProgressObserver *observer = nullptr, const CancelToken *cancel = nullptr,
                 std::map<std::string, GridParams> *grids = nullptr, WeightArena *arena = nullptr);

} // namespace lrq::quant
