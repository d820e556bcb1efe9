#pragma once
// Typed option and hyperparameter values, and how a method declares its
// hyperparameters and presets. Plain C++ shared by core/quant (methods
// declare them), core/session (the request) and the front ends.
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace lrq {

// A typed value of a request option or a method hyperparameter.
using OptionValue = std::variant<bool, int64_t, double, std::string>;
// A method's hyperparameters by name: the user's values over its defaults.
using Hyperparameters = std::map<std::string, OptionValue>;

enum class ValueType {
  Flag,        // a boolean
  Integer,     // int64 in [minimum, maximum]
  Number,      // double in [minimum, maximum]
  Text,        // free text
  Path,        // a file or folder path; "" = none / the default
  Choice,      // one of choices
  Hyperparams, // the request's Hyperparameters, as a JSON object
};

// One hyperparameter of a method, as the form and the CLI show it.
struct HyperparameterSpec {
  std::string name; // JSON key, e.g. "rank"
  ValueType type = ValueType::Number;
  OptionValue defaultValue;
  double minimum = 0, maximum = 0; // Integer / Number: inclusive range
  std::string help;                // one line; says what 0 means where it means something
};

// Settings a preset gives a request (0 = leave the request's value).
struct MethodPreset {
  std::string name; // "demo", "thorough"
  std::string help;
  Hyperparameters hyperparameters; // only keys the method has
  int64_t samples = 0, seqLen = 0, evalSeqLen = 0;
};

} // namespace lrq
