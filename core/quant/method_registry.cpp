#include <algorithm>
#include <random>
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

bool compatible(const nlohmann::json &defaultValue, const nlohmann::json &value) {
  if (defaultValue.is_number_integer() || defaultValue.is_number_unsigned())
    return value.is_number_integer() || value.is_number_unsigned();
  if (defaultValue.is_number_float())
    return value.is_number();
  if (defaultValue.is_null())
    return true;
  return defaultValue.type() == value.type();
}

} // namespace

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
  for (auto it = user.begin(); it != user.end(); ++it) {
    if (!merged.contains(it.key())) {
      std::string known;
      for (auto d = merged.begin(); d != merged.end(); ++d)
        known += (known.empty() ? "" : ", ") + d.key();
      throw Error(method.name() + ": unknown hyperparameter '" + it.key() +
                  "' (known: " + (known.empty() ? "none" : known) + ")");
    }
    if (!compatible(merged[it.key()], it.value()))
      throw Error(method.name() + ": hyperparameter '" + it.key() + "' expects " +
                  jsonTypeName(merged[it.key()]) + ", got " + jsonTypeName(it.value()));
    merged[it.key()] = it.value();
  }
  return merged;
}

CalibrationSet makeCalibrationSet(const std::vector<int32_t> &tokens, int64_t samples,
                                  int64_t seqLen, uint64_t seed, std::string source) {
  if (samples < 1 || seqLen < 2)
    throw Error("calibration needs at least 1 sample of at least 2 tokens");
  const int64_t slots = int64_t(tokens.size()) / seqLen;
  if (slots < samples)
    throw Error("calibration text has " + std::to_string(tokens.size()) + " tokens: too few for " +
                std::to_string(samples) + " samples of " + std::to_string(seqLen) +
                " tokens (use fewer samples, shorter sequences or more text)");
  // Choose `samples` of the non-overlapping slots, uniformly, reproducibly.
  std::vector<int64_t> order(static_cast<size_t>(slots));
  for (int64_t i = 0; i < slots; ++i)
    order[size_t(i)] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < samples; ++i) {
    std::uniform_int_distribution<int64_t> pick(i, slots - 1);
    std::swap(order[size_t(i)], order[size_t(pick(rng))]);
  }
  std::sort(order.begin(), order.begin() + samples);
  CalibrationSet set;
  set.tokens = at::empty({samples, seqLen}, at::kLong);
  auto out = set.tokens.accessor<int64_t, 2>();
  for (int64_t s = 0; s < samples; ++s)
    for (int64_t t = 0; t < seqLen; ++t)
      out[s][t] = tokens[size_t(order[size_t(s)] * seqLen + t)];
  set.source = std::move(source);
  return set;
}

} // namespace lrq::quant
