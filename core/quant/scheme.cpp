#include "core/quant/scheme.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <limits>
#include <string>

#include "core/common/error.h"
#include "core/common/json_limits.h"

namespace lrq::quant {

using nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string &key, const std::string &problem) {
  throw Error("scheme JSON: " + key + ": " + problem);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

void checkKeys(const json &object, const std::string &where,
               std::initializer_list<const char *> allowed) {
  if (!object.is_object())
    fail(where.empty() ? "(top level)" : where, "expected an object");
  for (auto it = object.begin(); it != object.end(); ++it) {
    const bool known =
        std::any_of(allowed.begin(), allowed.end(), [&](const char *k) { return it.key() == k; });
    if (!known)
      throw Error("scheme JSON: unknown key '" + (where.empty() ? "" : where + ".") + it.key() +
                  "'");
  }
}

int64_t readInt(const json &v, const std::string &key, int64_t lo, int64_t hi) {
  if (!v.is_number_integer())
    fail(key, "expected an integer, got " + jsonPreview(v));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    fail(key, "must be in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " +
                  std::to_string(x));
  return x;
}

bool readBool(const json &v, const std::string &key) {
  if (!v.is_boolean())
    fail(key, "expected true or false, got " + jsonPreview(v));
  return v.get<bool>();
}

std::string readString(const json &v, const std::string &key) {
  if (!v.is_string())
    fail(key, "expected a string, got " + jsonPreview(v));
  return v.get<std::string>();
}

// The exponent of the clipping-search error, within kMinClipNorm..kMaxClipNorm.
double readClipNorm(const json &v, const std::string &key) {
  if (!v.is_number())
    fail(key, std::string("expected a number, got ") + v.type_name());
  const double x = v.get<double>();
  if (!(x >= kMinClipNorm && x <= kMaxClipNorm))
    fail(key, "must be in " + formatClipNorm(kMinClipNorm) + ".." + formatClipNorm(kMaxClipNorm) +
                  ", got " + formatClipNorm(x));
  return x;
}

GridSpec readWeight(const json &j, const std::string &where) {
  checkKeys(j, where,
            {"bits", "symmetric", "granularity", "group_size", "init", "clip_steps", "clip_norm",
             "step_format", "full_range"});
  GridSpec g;
  g.init = StepInit::MethodDefault; // no "init": the method's reference choice
  if (j.contains("bits"))
    g.bits = int(readInt(j.at("bits"), where + ".bits", 2, 8));
  if (j.contains("symmetric"))
    g.symmetric = readBool(j.at("symmetric"), where + ".symmetric");
  if (j.contains("granularity")) {
    const std::string s = readString(j.at("granularity"), where + ".granularity");
    if (!parseGranularity(s, &g.granularity))
      fail(where + ".granularity",
           "expected per-tensor, per-channel or per-group, got \"" + s + "\"");
  }
  if (j.contains("group_size"))
    g.groupSize =
        readInt(j.at("group_size"), where + ".group_size", 0, std::numeric_limits<int32_t>::max());
  if (j.contains("init")) {
    const std::string s = readString(j.at("init"), where + ".init");
    if (!parseStepInit(s, &g.init))
      fail(where + ".init",
           "expected auto, minmax, clip-search or clip-search-2d, got \"" + s + "\"");
  }
  if (j.contains("clip_steps"))
    g.clipSteps = int(readInt(j.at("clip_steps"), where + ".clip_steps", 1, 100000));
  if (j.contains("clip_norm"))
    g.clipNorm = readClipNorm(j.at("clip_norm"), where + ".clip_norm");
  if (j.contains("step_format")) {
    const std::string s = readString(j.at("step_format"), where + ".step_format");
    if (!parseStepFormat(s, &g.stepFormat))
      fail(where + ".step_format",
           "expected f32, f16, f16-offset, k-superblock or k-superblock-offset, got \"" + s + "\"");
  }
  if (j.contains("full_range"))
    g.fullRange = readBool(j.at("full_range"), where + ".full_range");
  if (g.fullRange && !g.symmetric)
    fail(where + ".full_range", "places the extreme level of a symmetric grid; an asymmetric grid "
                                "already spans its whole range");
  if (g.granularity == Granularity::PerGroup && g.groupSize < 1)
    fail(where + ".group_size", "per-group quantization needs a group size >= 1");
  if (g.stepFormat == StepFormat::Fp16Offset && g.symmetric)
    fail(where + ".step_format", "f16-offset stores a zero point, so it needs an asymmetric grid "
                                 "(use f16 on a symmetric one)");
  if (g.init == StepInit::ClippingSearch2D && g.symmetric)
    fail(where + ".init", "clip-search-2d searches zero points, so it needs an asymmetric grid "
                          "(use clip-search on a symmetric one)");
  if (g.granularity != Granularity::PerGroup && g.groupSize != 0)
    fail(where + ".group_size", "applies to per-group quantization only, not " +
                                    std::string(granularityName(g.granularity)) +
                                    " (remove it or set it to 0)");
  return g;
}

ActivationSpec readActivation(const json &j) {
  checkKeys(j, "activation", {"mode", "bits", "init", "clip_steps", "clip_norm"});
  ActivationSpec a;
  if (j.contains("mode")) {
    const std::string s = readString(j.at("mode"), "activation.mode");
    if (!parseActivationMode(s, &a.mode))
      fail("activation.mode",
           "expected none, per-token-dynamic or per-tensor-static, got \"" + s + "\"");
  }
  if (j.contains("bits"))
    a.bits = int(readInt(j.at("bits"), "activation.bits", 2, 16));
  if (j.contains("init")) {
    const std::string s = readString(j.at("init"), "activation.init");
    if (!parseStepInit(s, &a.init) ||
        (a.init != StepInit::MinMax && a.init != StepInit::ClippingSearch))
      fail("activation.init", "expected minmax or clip-search, got \"" + s + "\"");
  }
  if (j.contains("clip_steps"))
    a.clipSteps = int(readInt(j.at("clip_steps"), "activation.clip_steps", 1, 100000));
  if (j.contains("clip_norm"))
    a.clipNorm = readClipNorm(j.at("clip_norm"), "activation.clip_norm");
  return a;
}

LayerSelection readLayers(const json &j) {
  checkKeys(j, "layers", {"blocks", "linears", "embeddings", "lm_head"});
  LayerSelection l;
  if (j.contains("blocks")) {
    const json &v = j.at("blocks");
    if (v.is_string()) {
      if (v.get<std::string>() != "all")
        fail("layers.blocks", "expected \"all\" or a list of block indices, got " + jsonPreview(v));
    } else if (v.is_array()) {
      if (v.empty())
        fail("layers.blocks", "an empty list selects no block; write \"all\" for every block");
      for (const json &b : v)
        l.blocks.push_back(readInt(b, "layers.blocks", 0, std::numeric_limits<int32_t>::max()));
    } else {
      fail("layers.blocks", "expected \"all\" or a list of block indices, got " + jsonPreview(v));
    }
  }
  if (j.contains("linears")) {
    const json &v = j.at("linears");
    if (v.is_string()) {
      if (v.get<std::string>() != "all")
        fail("layers.linears", "expected \"all\" or a list of linear names, got " + jsonPreview(v));
    } else if (v.is_array()) {
      if (v.empty())
        fail("layers.linears",
             "an empty list selects no linear; write \"all\" for every linear of a block");
      for (const json &n : v) {
        const std::string name = readString(n, "layers.linears");
        const auto &known = knownLinearNames();
        if (std::find(known.begin(), known.end(), name) == known.end())
          fail("layers.linears", "unknown linear \"" + name + "\"");
        l.linears.push_back(name);
      }
    } else {
      fail("layers.linears", "expected \"all\" or a list of linear names, got " + jsonPreview(v));
    }
  }
  if (j.contains("embeddings"))
    l.embeddings = readBool(j.at("embeddings"), "layers.embeddings");
  if (j.contains("lm_head"))
    l.lmHead = readBool(j.at("lm_head"), "layers.lm_head");
  return l;
}

QuantScheme makePreset(const char *name, int wbits, int64_t group, ActivationMode act, bool kv8) {
  QuantScheme s;
  s.name = name;
  s.weight.bits = wbits;
  s.weight.symmetric = false;
  s.weight.granularity = group > 0 ? Granularity::PerGroup : Granularity::PerChannel;
  s.weight.groupSize = group;
  // The method picks (QuantMethod::referenceGrid): LRQ's reference uses its
  // 2-D clipping init at W3A16 and W4A8, LR-QAT a symmetric Lp-4 search.
  s.weight.init = StepInit::MethodDefault;
  s.activation.mode = act;
  s.activation.bits = 8;
  s.kv8 = kv8;
  return s;
}

// A llama.cpp GGUF block format as a scheme (ggufBlockTypeFor gives the block
// type back): weight-only, groups of 32 inputs, steps stored as halves. The
// init stays "auto": a method's reference grid changes only the init (LR-QAT
// keeps an f16-offset grid asymmetric), so the block type stays. Q4_0 and
// Q5_0 use the full symmetric range, as llama.cpp's own quantizer does (d =
// the signed extreme / -2^(bits-1)); Q8_0, like llama.cpp's, stays balanced.
QuantScheme makeGgufPreset(const char *name, int wbits, bool symmetric) {
  QuantScheme s = makePreset(name, wbits, 32, ActivationMode::None, false);
  s.weight.symmetric = symmetric;
  s.weight.stepFormat = symmetric ? StepFormat::Fp16 : StepFormat::Fp16Offset;
  s.weight.fullRange = symmetric && wbits < 8;
  return s;
}

// llama.cpp's Q6_K: 6-bit symmetric full-range groups of 16 whose steps are
// d sc (one half d per 256-input super-block, integer sc); rows of other lengths get
// gguf-q8_0's grid, as llama-quantize demotes such tensors to Q8_0.
QuantScheme makeQ6KPreset() {
  QuantScheme s = makePreset("gguf-q6_k", 6, kSuperBlockGroupSize, ActivationMode::None, false);
  s.weight.symmetric = true;
  s.weight.stepFormat = StepFormat::KSuperblock;
  // The extreme of each group on level +-32, as llama.cpp's Q6_K quantizer puts it.
  s.weight.fullRange = true;
  s.fallbackWeight = makeGgufPreset("gguf-q8_0", 8, true).weight;
  return s;
}

// llama.cpp's Q4_K: 4-bit asymmetric groups of 32 in offset form, steps d sc
// and offsets dmin m (one half d and one half dmin per 256-input
// super-block, 6-bit sc and m); rows of other lengths get gguf-q5_0's grid,
// as llama-quantize demotes such tensors to Q5_0.
QuantScheme makeQ4KPreset() {
  QuantScheme s =
      makePreset("gguf-q4_k", 4, kOffsetSuperBlockGroupSize, ActivationMode::None, false);
  s.weight.stepFormat = StepFormat::KSuperblockOffset;
  s.fallbackWeight = makeGgufPreset("gguf-q5_0", 5, true).weight;
  return s;
}

std::vector<QuantScheme> presets() {
  return {
      makePreset("W8A8", 8, 0, ActivationMode::PerTensorStatic, false),
      makePreset("W4A8-KV8", 4, 0, ActivationMode::PerTokenDynamic, true),
      makePreset("W4A16", 4, 0, ActivationMode::None, false),
      makePreset("W3A16", 3, 0, ActivationMode::None, false),
      makePreset("W4A16-g128", 4, 128, ActivationMode::None, false),
      makePreset("W3A16-g128", 3, 128, ActivationMode::None, false),
      makePreset("W2A16-g64", 2, 64, ActivationMode::None, false),
      makeGgufPreset("gguf-q8_0", 8, true),
      makeGgufPreset("gguf-q5_0", 5, true),
      makeGgufPreset("gguf-q4_0", 4, true),
      makeGgufPreset("gguf-q5_1", 5, false),
      makeGgufPreset("gguf-q4_1", 4, false),
      makeQ6KPreset(),
      makeQ4KPreset(),
  };
}

} // namespace

bool LayerSelection::selectsBlock(int64_t block) const {
  return blocks.empty() || std::find(blocks.begin(), blocks.end(), block) != blocks.end();
}

bool LayerSelection::selectsLinear(const std::string &role) const {
  return linears.empty() || std::find(linears.begin(), linears.end(), role) != linears.end();
}

const std::vector<std::string> &knownLinearNames() {
  static const std::vector<std::string> names{"q_proj",    "k_proj",  "v_proj",    "o_proj",
                                              "gate_proj", "up_proj", "down_proj", "out_proj",
                                              "fc1",       "fc2"};
  return names;
}

const GridSpec &QuantScheme::weightFor(int64_t inFeatures) const {
  if (fallbackWeight && isSuperBlockFormat(weight.stepFormat) &&
      inFeatures % kSuperBlockColumns != 0)
    return *fallbackWeight;
  return weight;
}

void QuantScheme::validate() const {
  weight.validate();
  // A scheme is recorded with every run: it must not hold a group size its grid ignores.
  if (weight.granularity != Granularity::PerGroup && weight.groupSize != 0)
    throw Error("scheme: a group size (" + std::to_string(weight.groupSize) +
                ") applies to per-group quantization only, not " +
                granularityName(weight.granularity));
  if (fallbackWeight) {
    // Nothing else consults it: a fallback there would be recorded but never used.
    if (!isSuperBlockFormat(weight.stepFormat))
      throw Error("scheme: fallback_weight applies to k-superblock weight grids only (rows that "
                  "are not whole 256-input super-blocks), not " +
                  weight.describe());
    if (isSuperBlockFormat(fallbackWeight->stepFormat))
      throw Error("scheme: fallback_weight is for rows a k-superblock grid cannot hold, so it "
                  "cannot be k-superblock itself");
    try {
      fallbackWeight->validate();
    } catch (const Error &e) {
      throw Error(std::string("scheme: fallback_weight: ") + e.what());
    }
    if (fallbackWeight->granularity != Granularity::PerGroup && fallbackWeight->groupSize != 0)
      throw Error("scheme: fallback_weight: a group size (" +
                  std::to_string(fallbackWeight->groupSize) +
                  ") applies to per-group quantization only");
  }
  activation.validate();
  for (const std::string &n : layers.linears) {
    const auto &known = knownLinearNames();
    if (std::find(known.begin(), known.end(), n) == known.end())
      throw Error("scheme: unknown linear \"" + n + "\"");
  }
  for (int64_t b : layers.blocks)
    if (b < 0)
      throw Error("scheme: negative block index " + std::to_string(b));
}

std::string QuantScheme::describe() const {
  std::string s = name + ": " + weight.describe();
  if (fallbackWeight)
    s += ", in % " + std::to_string(kSuperBlockColumns) + " != 0: " + fallbackWeight->describe();
  if (activation.mode == ActivationMode::None)
    s += ", A16";
  else
    s += ", A" + std::to_string(activation.bits) + " " + activationModeName(activation.mode);
  if (activation.mode == ActivationMode::PerTensorStatic &&
      activation.init == StepInit::ClippingSearch)
    s += " clip-search";
  if (kv8)
    s += ", KV8";
  return s;
}

namespace {

json weightJson(const GridSpec &weight) {
  json w{{"bits", weight.bits},
         {"symmetric", weight.symmetric},
         {"granularity", granularityName(weight.granularity)},
         {"group_size", weight.groupSize},
         {"init", stepInitName(weight.init)},
         {"clip_steps", weight.clipSteps},
         {"clip_norm", weight.clipNorm}};
  // Left out when f32, so the JSON of every scheme from before the key existed is unchanged.
  if (weight.stepFormat != StepFormat::Float32)
    w["step_format"] = stepFormatName(weight.stepFormat);
  if (weight.fullRange)
    w["full_range"] = true;
  return w;
}

} // namespace

std::string QuantScheme::toJson(int indent) const {
  json a{{"mode", activationModeName(activation.mode)},
         {"bits", activation.bits},
         {"init", stepInitName(activation.init)},
         {"clip_steps", activation.clipSteps},
         {"clip_norm", activation.clipNorm}};
  json l{{"blocks", layers.blocks.empty() ? json("all") : json(layers.blocks)},
         {"linears", layers.linears.empty() ? json("all") : json(layers.linears)},
         {"embeddings", layers.embeddings},
         {"lm_head", layers.lmHead}};
  json j{{"name", name},
         {"weight", weightJson(weight)},
         {"activation", a},
         {"kv8", kv8},
         {"layers", l}};
  // Only when there is one, so the JSON of every other scheme is unchanged.
  if (fallbackWeight)
    j["fallback_weight"] = weightJson(*fallbackWeight);
  return j.dump(indent);
}

QuantScheme QuantScheme::fromJson(const std::string &text) {
  // A scheme is a few hundred bytes, three levels deep.
  JsonLimits limits;
  limits.maxBytes = size_t(1) << 20;
  limits.maxDepth = 16;
  limits.maxElements = size_t(1) << 16;
  if (const std::string problem = jsonLimitProblem(text, limits); !problem.empty())
    throw Error("scheme JSON: " + problem);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception &e) {
    throw Error(std::string("scheme JSON: not valid JSON: ") + e.what());
  }
  checkKeys(j, "", {"name", "weight", "fallback_weight", "activation", "kv8", "layers"});
  QuantScheme s;
  if (j.contains("name"))
    s.name = readString(j.at("name"), "name");
  if (j.contains("weight"))
    s.weight = readWeight(j.at("weight"), "weight");
  if (j.contains("fallback_weight"))
    s.fallbackWeight = readWeight(j.at("fallback_weight"), "fallback_weight");
  if (j.contains("activation"))
    s.activation = readActivation(j.at("activation"));
  if (j.contains("kv8"))
    s.kv8 = readBool(j.at("kv8"), "kv8");
  if (j.contains("layers"))
    s.layers = readLayers(j.at("layers"));
  s.validate();
  return s;
}

std::vector<std::string> presetNames() {
  std::vector<std::string> names;
  for (const QuantScheme &s : presets())
    names.push_back(s.name);
  return names;
}

QuantScheme presetScheme(const std::string &name) {
  std::string known;
  for (const QuantScheme &s : presets()) {
    if (lower(s.name) == lower(name))
      return s;
    known += (known.empty() ? "" : ", ") + s.name;
  }
  throw Error("unknown quantization scheme \"" + name + "\" (known: " + known + ")");
}

} // namespace lrq::quant
