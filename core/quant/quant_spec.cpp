#include "core/quant/quant_spec.h"

#include <cstdio>

#include "core/common/error.h"

namespace lrq::quant {

void GridSpec::validate() const {
  if (bits < 2 || bits > 8)
    throw Error("weight grid: bits must be in 2..8, got " + std::to_string(bits));
  if (granularity == Granularity::PerGroup && groupSize < 1)
    throw Error("weight grid: per-group quantization needs a group size >= 1, got " +
                std::to_string(groupSize));
  if (searchesClipping() && clipSteps < 1)
    throw Error("weight grid: clip steps must be >= 1, got " + std::to_string(clipSteps));
  if (searchesClipping() && !(clipNorm >= kMinClipNorm && clipNorm <= kMaxClipNorm))
    throw Error("weight grid: clip norm must be in " + formatClipNorm(kMinClipNorm) + ".." +
                formatClipNorm(kMaxClipNorm) + ", got " + formatClipNorm(clipNorm));
  // A symmetric grid has its zero point fixed at 0: there is nothing to search.
  if (init == StepInit::ClippingSearch2D && symmetric)
    throw Error("weight grid: clip-search-2d searches zero points, so it needs an asymmetric "
                "grid (use clip-search on a symmetric one)");
}

std::string formatClipNorm(double clipNorm) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", clipNorm);
  return text;
}

std::string GridSpec::describe() const {
  std::string s = "W" + std::to_string(bits) + (symmetric ? " sym" : " asym");
  switch (granularity) {
  case Granularity::PerTensor:
    s += " per-tensor";
    break;
  case Granularity::PerChannel:
    s += " per-channel";
    break;
  case Granularity::PerGroup:
    s += " g" + std::to_string(groupSize);
    break;
  }
  if (init == StepInit::ClippingSearch)
    s += " clip-search";
  else if (init == StepInit::ClippingSearch2D)
    s += " clip-search-2d";
  return s;
}

void ActivationSpec::validate() const {
  if (init != StepInit::MinMax && init != StepInit::ClippingSearch)
    throw Error(std::string("activation quantizer: init must be minmax or clip-search, got ") +
                stepInitName(init));
  if (mode != ActivationMode::None && (bits < 2 || bits > 16))
    throw Error("activation quantizer: bits must be in 2..16, got " + std::to_string(bits));
  if (clipSteps < 1)
    throw Error("activation quantizer: clip_steps must be >= 1, got " + std::to_string(clipSteps));
  if (!(clipNorm >= kMinClipNorm && clipNorm <= kMaxClipNorm))
    throw Error("activation quantizer: clip_norm must be in " + formatClipNorm(kMinClipNorm) +
                ".." + formatClipNorm(kMaxClipNorm) + ", got " + formatClipNorm(clipNorm));
}

const char *granularityName(Granularity g) {
  switch (g) {
  case Granularity::PerTensor:
    return "per-tensor";
  case Granularity::PerChannel:
    return "per-channel";
  case Granularity::PerGroup:
    return "per-group";
  }
  return "?";
}

const char *stepInitName(StepInit s) {
  switch (s) {
  case StepInit::MinMax:
    return "minmax";
  case StepInit::ClippingSearch:
    return "clip-search";
  case StepInit::ClippingSearch2D:
    return "clip-search-2d";
  case StepInit::MethodDefault:
    return "auto";
  }
  return "?";
}

const char *activationModeName(ActivationMode m) {
  switch (m) {
  case ActivationMode::None:
    return "none";
  case ActivationMode::PerTokenDynamic:
    return "per-token-dynamic";
  case ActivationMode::PerTensorStatic:
    return "per-tensor-static";
  }
  return "?";
}

bool parseGranularity(const std::string &name, Granularity *out) {
  for (Granularity g : {Granularity::PerTensor, Granularity::PerChannel, Granularity::PerGroup})
    if (name == granularityName(g)) {
      *out = g;
      return true;
    }
  return false;
}

bool parseStepInit(const std::string &name, StepInit *out) {
  for (StepInit s : {StepInit::MinMax, StepInit::ClippingSearch, StepInit::ClippingSearch2D,
                     StepInit::MethodDefault})
    if (name == stepInitName(s)) {
      *out = s;
      return true;
    }
  return false;
}

bool parseActivationMode(const std::string &name, ActivationMode *out) {
  for (ActivationMode m :
       {ActivationMode::None, ActivationMode::PerTokenDynamic, ActivationMode::PerTensorStatic})
    if (name == activationModeName(m)) {
      *out = m;
      return true;
    }
  return false;
}

} // namespace lrq::quant
