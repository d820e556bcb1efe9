#include "core/quant/gguf_scheme.h"

#include "core/quant/scheme.h"

namespace lrq::quant {

namespace {

// The llama.cpp block type nearest to a grid of `bits` bits.
std::string nearestBlockType(int bits, bool symmetric) {
  const std::string width = bits >= 8 ? "8" : bits >= 5 ? "5" : "4";
  if (width == "8")
    return "Q8_0";
  return "Q" + width + (symmetric ? "_0" : "_1");
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
  const bool blockGrid = w.granularity == Granularity::PerGroup && w.groupSize == 32 &&
                         (w.bits == 8 ? w.symmetric : (w.bits == 4 || w.bits == 5));
  if (blockGrid)
    return "";
  const std::string type = nearestBlockType(w.bits, w.symmetric);
  return w.describe() + " weights cannot be stored as GGUF " + type +
         "; quantize with --scheme gguf-" + lower(type);
}

} // namespace lrq::quant
