#pragma once
// Figures derived from a recorded run that the store does not keep itself,
// shared by the views that compare runs.
#include <QList>
#include <QString>

namespace lrq::ui {

// One linear of a decoder block: weight [outFeatures, inFeatures] (HF layout).
struct LinearShape {
  QString role; // "q_proj", ..., "down_proj"
  qint64 outFeatures = 0;
  qint64 inFeatures = 0;
};

// The seven linears of one block of the default model (SmolLM2-135M: hidden
// 576, 9 query heads and 3 key/value heads of 64, MLP 1536). The fallback
// shapes when a view does not know the model a run was made from.
QList<LinearShape> defaultModelBlockShapes();

// Storage cost of a run's quantized linears, in bits per weight:
//
//   total   = weightBits + scaleBits + lowRankBits
//   weight  = b                                       (scheme weight.bits)
//   scale   = Σ units·(16 + z) / Σ m·n                one 16-bit scale per quantization
//             unit, plus a zero point as wide as a code (z = b) unless symmetric (z = 0);
//             units per m×n linear: m·⌈n/g⌉ (per-group, g = group_size),
//             m (per-channel: one per output row), 1 (per-tensor)
//   lowRank = Σ r·(m + n)·f / Σ m·n                  LQER / L²QER only: the kept
//             factors A (n×r) and B (r×m), r = min(rank, m, n), f = factor_bits or 16
//             when factor_bits is 0 (the scales of 8-bit factors are left out)
//
// (The per-linear formula is the engine's: lrq::quant::effectiveBitsPerWeight.)
// Sums run over the block linears the scheme selects (layers.linears), all
// blocks being alike. Methods whose learned parts fold into Ŵ before inference
// cost nothing extra: FlexRound's and LRQ's scales, GPTQ's updates, and LR-QAT's
// adapters (merged into the integer codes at the end of training).
struct BitsPerWeight {
  bool valid = false; // false: the scheme JSON has no usable weight grid
  double weightBits = 0;
  double scaleBits = 0;
  double lowRankBits = 0;
  QString error; // why not valid
  double total() const { return weightBits + scaleBits + lowRankBits; }
};

// shapes empty: defaultModelBlockShapes().
BitsPerWeight estimateBitsPerWeight(const QString &method, const QString &schemeJson,
                                    const QString &hyperparametersJson,
                                    const QList<LinearShape> &shapes = {});

// Short scheme label for tables and legends: the preset name when the scheme
// has one ("W3A16-g128"), else built from the grid ("W3 g128 asym", "W4 ch").
QString schemeLabel(const QString &schemeJson);

} // namespace lrq::ui
