#include "core/quant/gguf_scheme.h"

#include "core/quant/scheme.h"

namespace lrq::quant {

namespace {

// The llama.cpp block type nearest to a grid of `bits` bits.
std::string nearestBlockType(int bits, bool symmetric) {
  if (bits >= 8)
    return "Q8_0";
  if (bits == 6 && symmetric)
    return "Q6_K";
  return std::string(bits >= 5 ? "Q5" : "Q4") + (symmetric ? "_0" : "_1");
}

std::string lower(std::string s) {
  for (char &c : s)
    c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

} // namespace

std::string ggufExportProblem(const std::string &schemeJson, const std::string &method) {
  if (method == "lqer" || method == "l2qer")
    return method + " adds low-rank correction factors to every quantized linear, which GGUF "
                    "cannot store; export the HF folder (--out) or the packed file (--packed)";
  const QuantScheme scheme = QuantScheme::fromJson(schemeJson);
  const GridSpec &w = scheme.weight;
  if (ggufBlockTypeFor(w)) {
    // Each tensor takes its own block type: the fallback grid needs one too.
    if (!scheme.fallbackWeight || ggufBlockTypeFor(*scheme.fallbackWeight))
      return "";
    return "the fallback grid " + scheme.fallbackWeight->describe() +
           " (rows that are not whole 256-input super-blocks) cannot be stored as a GGUF block "
           "type; quantize with " +
           (w.stepFormat == StepFormat::KSuperblockOffset
                ? "--scheme gguf-q4_k (its fallback is gguf-q5_0's grid)"
                : "--scheme gguf-q6_k (its fallback is gguf-q8_0's grid)");
  }
  if (w.stepFormat == StepFormat::KSuperblock)
    return w.describe() + " weights cannot be stored as GGUF Q6_K (6-bit codes only); quantize "
                          "with --scheme gguf-q6_k";
  if (w.stepFormat == StepFormat::KSuperblockOffset)
    return w.describe() + " weights cannot be stored as GGUF Q4_K (4-bit codes only); quantize "
                          "with --scheme gguf-q4_k";
  const std::string type = nearestBlockType(w.bits, w.symmetric);
  const bool blockShaped = w.granularity == Granularity::PerGroup && w.groupSize == 32 &&
                           (w.bits == 4 || w.bits == 5 || (w.bits == 8 && w.symmetric));
  const bool q6kShaped =
      w.granularity == Granularity::PerGroup && w.groupSize == 16 && w.bits == 6 && w.symmetric;
  const bool q4kShaped =
      w.granularity == Granularity::PerGroup && w.groupSize == 32 && w.bits == 4 && !w.symmetric;
  // The right shape with steps of the wrong format: say what the block stores.
  const std::string why =
      blockShaped ? std::string(" (its steps are stored as half-precision numbers") +
                        (w.symmetric ? "" : ", and so is -s*z") + ")"
      : q6kShaped ? std::string(" (its steps are stored as d*sc: one half-precision d per 256 "
                                "inputs, an integer sc per group)")
                  : "";
  return w.describe() + " weights cannot be stored as GGUF " + type + why +
         "; quantize with --scheme gguf-" + lower(type) +
         (q4kShaped ? " (or --scheme gguf-q4_k: Q4_K, steps d*sc and offsets dmin*m per "
                      "256-input super-block)"
                    : "");
}

} // namespace lrq::quant
