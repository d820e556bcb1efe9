#pragma once
// The typed quantization request shared by the command line and the desktop,
// and the one table that declares each of its options: CLI flag, JSON key,
// form label, type, range, help and whether it may change on resume. CLI
// parsing and usage, request.json, the resume comparison and the desktop form
// are all generated from the table (quantizeRequestOptions()).
// Light header: no LibTorch, no JSON library.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/common/option_value.h"

namespace lrq {

// "true", "64", "0.003", "text".
std::string optionValueText(const OptionValue &value);
// Hyperparameters as a JSON object, and back. fromJson throws lrq::Error for
// anything but an object of booleans, numbers and strings.
std::string hyperparametersToJson(const Hyperparameters &hyper);
Hyperparameters hyperparametersFromJson(const std::string &json);

// What a front end needs to know of a method.
struct MethodInfo {
  std::string name;    // "lrq"
  std::string title;   // "LRQ: low-rank weight-scaling matrices"
  std::string summary; // one paragraph: what it learns, from which paper
  std::vector<HyperparameterSpec> hyperparameters;
  std::vector<MethodPreset> presets;
  bool canResume = false;       // keeps a checkpoint per block (block-wise reconstruction)
  bool trainsBlocks = false;    // reports a loss curve per transformer block
  bool needsCalibration = true; // uses calibration activations

  const HyperparameterSpec *hyperparameter(const std::string &name) const;
  const MethodPreset *preset(const std::string &name) const;
  // Learnable parameters of one out x in linear at these hyperparameters
  // (0 for methods that learn nothing); what the rank control shows live.
  int64_t learnableParameters(int64_t outFeatures, int64_t inFeatures,
                              const Hyperparameters &hyper) const;
  // Throws lrq::Error when the method cannot run this scheme (e.g. LR-QAT at
  // 8-bit weights), saying why.
  void checkScheme(const std::string &schemeJson) const;
  // Throws lrq::Error when hyperparameters of the right types cannot be
  // honoured together or a text one is not among its choices (LRQ's rank_rule).
  void checkHyperparameters(const Hyperparameters &hyper) const;
};

// Every registered method, in display order; methodInfo throws lrq::Error
// listing the known names.
const std::vector<MethodInfo> &methodCatalog();
const MethodInfo &methodInfo(const std::string &name);
std::vector<std::string> schemePresets();
// The scheme a request names (preset or path to a scheme JSON file), as
// validated JSON; throws lrq::Error / lrq::FileError.
std::string resolveSchemeJson(const std::string &presetOrPath);

struct QuantizeRequest {
  std::string model = "default"; // file, directory or "default"
  std::string method = "rtn";
  std::string scheme = "W4A16";    // preset name, or a path to a scheme JSON file
  Hyperparameters hyperparameters; // the user's values over the method's defaults
  std::string preset;              // "", "demo" or "thorough" (applied by applyPreset)
  std::string calibrationText;     // a .txt path; "" = default calibration text
  int64_t samples = 32;
  int64_t seqLen = 512;
  // Calibration windows never trained on, disjoint from the training ones:
  // block-wise reconstruction reports its loss on them per block (overfitting).
  // 0 = off. The training windows are the same whatever this is.
  int64_t heldoutSamples = 4;
  int64_t seed = 0;
  bool smoothQuant = false;
  double smoothQuantAlpha = 0.5;
  // Which groups SmoothQuant smooths: "all" (the norm-fed ones and also
  // v_proj -> o_proj and up_proj -> down_proj) or "norm" (the norm-fed ones
  // only, as the authors' reference code). "all" by default: on the default
  // model W8A8 RTN gives perplexity 67.4 with it against 99.3 with "norm".
  std::string smoothQuantGroups = "all";
  bool evaluate = true;
  std::string evaluationText; // a .txt path; "" = default held-out text
  // The same figures on a second text from another domain, which nothing
  // calibrates on: fidelity that cannot come from fitting the first text.
  bool evaluateOutOfDomain = true;
  std::string outOfDomainText; // a .txt path; "" = the Debian Policy Manual part
  int64_t evalSeqLen = 512;
  int64_t evalMaxWindows = 0; // 0 = all windows
  // Record per-layer singular values with the run (W, E = W - Ŵ and the
  // method's own: scaled_E, scale_exponent).
  bool spectra = true;
  std::string exportDir;  // HF-layout export with Ŵ; "" = none
  std::string packedPath; // packed integer export (.safetensors); "" = none
  // GGUF file llama.cpp loads (schemes gguf-q8_0 ... gguf-q5_1); "" = none.
  std::string ggufPath;
  // GGUF storage of the tensors left in float: "PATTERN=TYPE,..." on GGUF
  // names (glob, or "re:REGEX"), TYPE f32, f16, q8_0 or q6_k; "" = all F32.
  std::string ggufFloatTypes;
  // compressed-tensors export (what vLLM and llm-compressor read); "" = none.
  std::string compressedTensorsDir;
  // Replace existing exports (--gguf, --compressed-tensors: else refused before any work).
  bool overwrite = false;
  std::string storePath; // run store file; "" = the default one
  std::string workDir;   // caches and checkpoints; "" = a folder under the cache directory
  // Resume this interrupted run (id or unique prefix in the store).
  std::string resumeRunId;
};

// One option of the request, declared once.
struct RequestOption {
  std::string flag;  // CLI --flag; "" for the positional MODEL
  std::string key;   // request.json key; "" for CLI shortcuts (--rank) that set a hyperparameter
  std::string label; // the desktop form's label; what core messages call it
  std::string
      group; // "Model", "Method", "Calibration", "SmoothQuant", "Evaluation", "Output", "Run"
  ValueType type = ValueType::Text;
  std::string valueName; // "N", "FILE" for usage; "" for flags
  double minimum = 0, maximum = 0;
  std::vector<std::string> choices;
  std::string help;
  bool negated = false; // a Flag whose CLI form turns the field off (--no-eval)
  bool setting = true;  // false for where things go, not what is computed (store, work dir)
  bool mayChangeOnResume = false;
  std::string hyperparameter; // shortcut for this hyperparameter (--rank -> "rank")
  std::function<OptionValue(const QuantizeRequest &)> get;
  std::function<void(QuantizeRequest &, const OptionValue &)> set;
};

const std::vector<RequestOption> &quantizeRequestOptions();
// By CLI flag (without "--") or JSON key; nullptr when unknown.
const RequestOption *findRequestOption(const std::string &flagOrKey);

// An error about one option's value, for the CLI to prefix with the flag and
// the desktop to show beside the field. The message names the option by label.
class OptionError : public Error {
public:
  OptionError(std::string key, const std::string &message) : Error(message), key_(std::move(key)) {}
  const std::string &key() const { return key_; } // RequestOption key, or "hyperparameters.NAME"

private:
  std::string key_;
};

// Parses text as the option's type and checks its range or choices; throws
// OptionError. Flags take "", "true"/"false", "1"/"0", "yes"/"no".
OptionValue parseOptionValue(const RequestOption &option, const std::string &text);
void setRequestOption(QuantizeRequest &request, const RequestOption &option,
                      const std::string &text);
std::string requestOptionText(const QuantizeRequest &request, const RequestOption &option);

// Fills the preset's settings into the request, leaving alone the options
// (keys, or "hyperparameters.NAME") in `keep`: values the user gave win.
// Throws OptionError for a preset the method does not have.
void applyPreset(QuantizeRequest &request, const std::vector<std::string> &keep = {});

// Every problem with the request that can be found without loading the model
// (ranges, method and hyperparameters, scheme, text files readable and UTF-8,
// output folders writable): empty when it may start.
struct RequestProblem {
  std::string key; // option key or "hyperparameters.NAME"
  std::string message;
};
std::vector<RequestProblem> checkRequest(const QuantizeRequest &request);
// Throws OptionError for the first problem of checkRequest.
void validateRequest(const QuantizeRequest &request);

// request.json: every option with a key, paths made absolute; and back.
// requestFromJson throws lrq::Error naming the key for a bad value; keys it
// does not know are refused, missing keys keep their defaults.
std::string requestToJson(const QuantizeRequest &request);
QuantizeRequest requestFromJson(const std::string &json);

// The settings (not where files go) in which two requests differ and which
// may not change on resume, paths compared absolute.
struct RequestDifference {
  const RequestOption *option = nullptr;
  std::string first, second; // values as text
};
std::vector<RequestDifference> requestDifferences(const QuantizeRequest &a,
                                                  const QuantizeRequest &b);

// The usage text of `lrq quantize`, generated from the table.
std::string quantizeUsage();

} // namespace lrq
