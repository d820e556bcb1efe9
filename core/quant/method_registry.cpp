#include <algorithm>
#include <random>
#include <sstream>
#include <utility>

#include "core/common/error.h"
#include "core/quant/method.h"

namespace lrq::quant {

// Each method file defines its factory; adding a method adds one line below.
std::unique_ptr<QuantMethod> makeRtnMethod();
std::unique_ptr<QuantMethod> makeGptqMethod(); // gptq.cpp
std::unique_ptr<QuantMethod> makeFlexRoundMethod();
std::unique_ptr<QuantMethod> makeLrqMethod();
std::unique_ptr<QuantMethod> makeLearnedStepMethod();
std::unique_ptr<QuantMethod> makeLrqatMethod(); // lrqat.cpp
std::unique_ptr<QuantMethod> makeLqerMethod();  // lqer.cpp
std::unique_ptr<QuantMethod> makeL2qerMethod(); // lqer.cpp

namespace {

const std::vector<std::pair<std::string, MethodFactory>> &registry() {
  static const std::vector<std::pair<std::string, MethodFactory>> methods = {
      {"rtn", makeRtnMethod},
      {"gptq", makeGptqMethod},
      {"flexround", makeFlexRoundMethod},
      {"lrq", makeLrqMethod},
      {"rtn-learned-step", makeLearnedStepMethod},
      {"lrqat", makeLrqatMethod},
      {"lqer", makeLqerMethod},
      {"l2qer", makeL2qerMethod},
  };
  return methods;
}

std::string jsonTypeName(const nlohmann::json &value) {
  if (value.is_number_integer() || value.is_number_unsigned())
    return "integer";
  if (value.is_number())
    return "number";
  return value.type_name();
}

const char *valueTypeName(ValueType type) {
  switch (type) {
  case ValueType::Flag:
    return "boolean";
  case ValueType::Integer:
    return "integer";
  case ValueType::Number:
    return "number";
  default:
    return "string";
  }
}

bool compatible(ValueType type, const nlohmann::json &value) {
  switch (type) {
  case ValueType::Flag:
    return value.is_boolean();
  case ValueType::Integer:
    return value.is_number_integer() || value.is_number_unsigned();
  case ValueType::Number:
    return value.is_number();
  default:
    return value.is_string();
  }
}

std::string numberText(double value) {
  std::ostringstream s;
  s << value;
  return s.str();
}

} // namespace

nlohmann::json toJson(const OptionValue &value) {
  return std::visit([](const auto &v) { return nlohmann::json(v); }, value);
}

OptionValue optionValueOf(const nlohmann::json &value) {
  if (value.is_boolean())
    return value.get<bool>();
  if (value.is_number_integer() || value.is_number_unsigned())
    return value.get<int64_t>();
  if (value.is_number())
    return value.get<double>();
  if (value.is_string())
    return value.get<std::string>();
  throw Error("expected a boolean, a number or a string, got " + jsonTypeName(value));
}

nlohmann::json QuantMethod::defaults() const {
  nlohmann::json d = nlohmann::json::object();
  for (const HyperparameterSpec &h : hyperparameters())
    d[h.name] = toJson(h.defaultValue);
  return d;
}

GridSpec QuantMethod::referenceGrid(const QuantScheme &scheme) const {
  GridSpec g = scheme.weight;
  g.init = StepInit::MinMax;
  return g;
}

QuantScheme resolveReferenceGrid(const QuantMethod &method, QuantScheme scheme) {
  // The fallback grid is resolved as the weight grid of a scheme of its own.
  if (scheme.fallbackWeight && scheme.fallbackWeight->init == StepInit::MethodDefault) {
    QuantScheme fallback = scheme;
    fallback.weight = *scheme.fallbackWeight;
    fallback.fallbackWeight.reset();
    scheme.fallbackWeight = method.referenceGrid(fallback);
    if (scheme.fallbackWeight->init == StepInit::MethodDefault)
      throw Error(method.name() +
                  ": its reference grid leaves the fallback weight init unresolved");
  }
  if (scheme.weight.init != StepInit::MethodDefault)
    return scheme;
  scheme.weight = method.referenceGrid(scheme);
  if (scheme.weight.init == StepInit::MethodDefault)
    throw Error(method.name() + ": its reference grid leaves the weight init unresolved");
  scheme.validate();
  return scheme;
}

GridSpec referenceClippingGrid(const QuantScheme &scheme) {
  GridSpec g = scheme.weight;
  g.init = StepInit::ClippingSearch2D;
  g.clipSteps = 100;
  g.clipNorm = 2.4;
  g.validate();
  return g;
}

std::vector<MethodPreset> QuantMethod::presets() const {
  MethodPreset demo{
      "demo", "minutes on 2 cores: 16 x 128 calibration tokens, short training", {}, 16, 128, 0};
  // The headline rows: one run of any method within 15 minutes on 2 cores.
  MethodPreset extended{"extended",
                        "at most 15 minutes on 2 cores: 64 x 256 calibration tokens, longer "
                        "training than the demo",
                        {},
                        64,
                        256,
                        0};
  MethodPreset thorough{"thorough",
                        "closer to the papers: 128 x 1024 calibration tokens, long training "
                        "(hours on a CPU; meant for a GPU)",
                        {},
                        128,
                        1024,
                        1024};
  for (const HyperparameterSpec &h : hyperparameters()) {
    if (h.name == "iters") {
      demo.hyperparameters["iters"] = int64_t(50);
      extended.hyperparameters["iters"] = int64_t(200);
      thorough.hyperparameters["iters"] = int64_t(2000);
    } else if (h.name == "steps") {
      demo.hyperparameters["steps"] = int64_t(30);
      extended.hyperparameters["steps"] = int64_t(120);
      thorough.hyperparameters["steps"] = int64_t(1000);
    }
  }
  return {demo, extended, thorough};
}

WeightArena weightArenaFor(const ModelConfig &config, ModelWeights &w, const LayerSelection &sel) {
  int64_t elements = 0;
  at::TensorOptions options;
  bool found = false;
  auto add = [&](const at::Tensor &t) {
    if (!t.defined())
      return;
    if (!found)
      options = t.options();
    found = true;
    elements += WeightArena::slotElements(t);
  };
  for (int64_t b = 0; b < int64_t(w.blocks.size()); ++b)
    if (sel.selectsBlock(b))
      for (const auto &[role, linear] : blockLinears(config, w.blocks[size_t(b)]))
        if (sel.selectsLinear(role))
          add(linear->weight);
  if (sel.embeddings)
    add(w.tokenEmbedding);
  if (sel.lmHead)
    add(w.lmHead);
  return found ? WeightArena(elements, options) : WeightArena();
}

std::vector<std::string> methodNames() {
  std::vector<std::string> names;
  for (const auto &entry : registry())
    names.push_back(entry.first);
  return names;
}

std::unique_ptr<QuantMethod> createMethod(const std::string &name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  for (const auto &entry : registry())
    if (entry.first == lower)
      return entry.second();
  std::string known;
  for (const auto &entry : registry())
    known += (known.empty() ? "" : ", ") + entry.first;
  throw Error("unknown method '" + name + "' (known: " + known + ")");
}

nlohmann::json mergeHyperparameters(const QuantMethod &method, const nlohmann::json &user) {
  nlohmann::json merged = method.defaults();
  if (user.is_null())
    return merged;
  if (!user.is_object())
    throw Error(method.name() + ": hyperparameters must be a JSON object");
  const std::vector<HyperparameterSpec> specs = method.hyperparameters();
  for (auto it = user.begin(); it != user.end(); ++it) {
    auto spec = std::find_if(specs.begin(), specs.end(),
                             [&](const HyperparameterSpec &h) { return h.name == it.key(); });
    if (spec == specs.end()) {
      std::string known;
      for (const HyperparameterSpec &h : specs)
        known += (known.empty() ? "" : ", ") + h.name;
      throw Error(method.name() + ": unknown hyperparameter '" + it.key() +
                  "' (known: " + (known.empty() ? "none" : known) + ")");
    }
    if (!compatible(spec->type, it.value()))
      throw Error(method.name() + ": hyperparameter '" + it.key() + "' expects " +
                  valueTypeName(spec->type) + ", got " + jsonTypeName(it.value()));
    if (spec->type == ValueType::Integer || spec->type == ValueType::Number) {
      const double v = it.value().get<double>();
      if (!(v >= spec->minimum && v <= spec->maximum))
        throw Error(method.name() + ": hyperparameter '" + it.key() + "' must be in [" +
                    numberText(spec->minimum) + ", " + numberText(spec->maximum) + "], got " +
                    it.value().dump());
    }
    merged[it.key()] =
        spec->type == ValueType::Number ? nlohmann::json(it.value().get<double>()) : it.value();
  }
  method.checkHyperparameters(merged);
  return merged;
}

int64_t calibrationWindows(int64_t tokenCount, int64_t seqLen) {
  return seqLen > 0 ? std::max<int64_t>(0, tokenCount) / seqLen : 0;
}

CalibrationSet makeCalibrationSet(const std::vector<int32_t> &tokens, int64_t samples,
                                  int64_t seqLen, uint64_t seed, std::string source,
                                  int64_t heldout) {
  if (samples < 1 || seqLen < 2)
    throw Error("calibration needs at least 1 sample of at least 2 tokens");
  if (heldout < 0)
    throw Error("calibration: held-out samples must be >= 0");
  const int64_t slots = calibrationWindows(int64_t(tokens.size()), seqLen);
  if (slots < samples)
    throw Error("calibration text has " + std::to_string(tokens.size()) + " tokens: too few for " +
                std::to_string(samples) + " samples of " + std::to_string(seqLen) +
                " tokens (use fewer samples, shorter sequences or more text)");
  if (slots < samples + heldout)
    throw Error("calibration text has " + std::to_string(tokens.size()) + " tokens, " +
                std::to_string(slots) + " windows of " + std::to_string(seqLen) +
                " tokens: too few for " + std::to_string(samples) + " training and " +
                std::to_string(heldout) +
                " held-out samples that do not overlap (use fewer held-out samples or more text)");
  // Choose `samples` of the non-overlapping slots, uniformly, reproducibly; the
  // held-out windows continue the same partial shuffle, so they come from the
  // slots not chosen and the training windows stay those of heldout = 0.
  std::vector<int64_t> order(static_cast<size_t>(slots));
  for (int64_t i = 0; i < slots; ++i)
    order[size_t(i)] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < samples + heldout; ++i) {
    std::uniform_int_distribution<int64_t> pick(i, slots - 1);
    std::swap(order[size_t(i)], order[size_t(pick(rng))]);
  }
  std::sort(order.begin(), order.begin() + samples);
  std::sort(order.begin() + samples, order.begin() + samples + heldout);
  auto windows = [&](int64_t first, int64_t count) {
    at::Tensor out = at::empty({count, seqLen}, at::kLong);
    auto acc = out.accessor<int64_t, 2>();
    for (int64_t s = 0; s < count; ++s)
      for (int64_t t = 0; t < seqLen; ++t)
        acc[s][t] = tokens[size_t(order[size_t(first + s)] * seqLen + t)];
    return out;
  };
  CalibrationSet set;
  set.tokens = windows(0, samples);
  if (heldout > 0)
    set.heldoutTokens = windows(samples, heldout);
  set.source = std::move(source);
  return set;
}

} // namespace lrq::quant
