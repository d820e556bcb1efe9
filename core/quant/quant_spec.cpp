#include "core/quant/quant_spec.h"

#include <cstdio>

#include "core/common/c_number.h"
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
  // The format exists so that s z is an exact half: without a zero point use f16.
  if (stepFormat == StepFormat::Fp16Offset && symmetric)
    throw Error("weight grid: step format f16-offset stores a zero point, so it needs an "
                "asymmetric grid (use f16 on a symmetric one)");
  if (fullRange && !symmetric)
    throw Error("weight grid: full range places the extreme level of a symmetric grid; an "
                "asymmetric grid already spans its whole range");
  if (stepFormat == StepFormat::KSuperblock) {
    if (!symmetric || granularity != Granularity::PerGroup || groupSize != kSuperBlockGroupSize)
      throw Error("weight grid: step format k-superblock is llama.cpp's Q6_K super-block of 16 "
                  "groups of 16, so it needs a symmetric per-group grid with group size 16");
    // d (11 significant bits) sc (7) q (bits) must stay within float32's 24.
    if (bits > 6)
      throw Error("weight grid: step format k-superblock holds codes of at most 6 bits, got " +
                  std::to_string(bits));
  }
  if (stepFormat == StepFormat::KSuperblockOffset) {
    if (symmetric || granularity != Granularity::PerGroup ||
        groupSize != kOffsetSuperBlockGroupSize)
      throw Error("weight grid: step format k-superblock-offset is llama.cpp's Q4_K super-block "
                  "of 8 groups of 32 with a step and an offset each, so it needs an asymmetric "
                  "per-group grid with group size 32");
    // d (11 significant bits) sc (6) q (bits) must stay within float32's 24.
    if (bits > 5)
      throw Error("weight grid: step format k-superblock-offset holds codes of at most 5 bits, "
                  "got " +
                  std::to_string(bits));
    // Its zero points are offsets in value units: there are no integer zero points to search.
    if (init == StepInit::ClippingSearch2D)
      throw Error("weight grid: clip-search-2d searches integer zero points, which a "
                  "k-superblock-offset grid (offsets d_min m) does not have; use minmax or "
                  "clip-search");
  }
}

const char *ggufBlockTypeFor(const GridSpec &spec) {
  if (spec.stepFormat == StepFormat::KSuperblock)
    return spec.bits == 6 && spec.symmetric && spec.granularity == Granularity::PerGroup &&
                   spec.groupSize == kSuperBlockGroupSize
               ? "Q6_K"
               : nullptr;
  if (spec.stepFormat == StepFormat::KSuperblockOffset)
    return spec.bits == 4 && !spec.symmetric && spec.granularity == Granularity::PerGroup &&
                   spec.groupSize == kOffsetSuperBlockGroupSize
               ? "Q4_K"
               : nullptr;
  if (spec.granularity != Granularity::PerGroup || spec.groupSize != 32)
    return nullptr;
  if (spec.symmetric && spec.stepFormat == StepFormat::Fp16) {
    switch (spec.bits) {
    case 8:
      return "Q8_0";
    case 5:
      return "Q5_0";
    case 4:
      return "Q4_0";
    default:
      return nullptr;
    }
  }
  if (!spec.symmetric && spec.stepFormat == StepFormat::Fp16Offset) {
    switch (spec.bits) {
    case 5:
      return "Q5_1";
    case 4:
      return "Q4_1";
    default:
      return nullptr;
    }
  }
  return nullptr;
}

std::string formatClipNorm(double clipNorm) {
  return formatNumberC("%g", clipNorm);
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
  if (stepFormat != StepFormat::Float32)
    s += std::string(" ") + stepFormatName(stepFormat);
  if (fullRange)
    s += " full-range";
  if (const char *block = ggufBlockTypeFor(*this))
    s += std::string(" (GGUF ") + block + ")";
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

const char *stepFormatName(StepFormat f) {
  switch (f) {
  case StepFormat::Float32:
    return "f32";
  case StepFormat::Fp16:
    return "f16";
  case StepFormat::Fp16Offset:
    return "f16-offset";
  case StepFormat::KSuperblock:
    return "k-superblock";
  case StepFormat::KSuperblockOffset:
    return "k-superblock-offset";
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

bool parseStepFormat(const std::string &name, StepFormat *out) {
  for (StepFormat f : {StepFormat::Float32, StepFormat::Fp16, StepFormat::Fp16Offset,
                       StepFormat::KSuperblock, StepFormat::KSuperblockOffset})
    if (name == stepFormatName(f)) {
      *out = f;
      return true;
    }
  return false;
}

} // namespace lrq::quant
