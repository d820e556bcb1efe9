// The quantization request's option table and everything generated from it.
#include "core/session/quantize_request.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>

#include "core/common/c_number.h"
#include "core/data/default_assets.h"
#include "core/io/gguf_writer.h"
#include "core/quant/compressed_tensors_scheme.h"
#include "core/quant/gguf_scheme.h"
#include "core/runs/run_store.h"

namespace fs = std::filesystem;

namespace lrq {
namespace {

std::string numberText(double value) {
  std::ostringstream s;
  s << value;
  return s.str();
}

// Accessors of one QuantizeRequest member, as typed values.
template <typename T> struct Field {
  T QuantizeRequest::*member;
  OptionValue operator()(const QuantizeRequest &r) const { return OptionValue(r.*member); }
};
template <typename T> struct FieldSetter {
  T QuantizeRequest::*member;
  void operator()(QuantizeRequest &r, const OptionValue &v) const { r.*member = std::get<T>(v); }
};

template <typename T>
RequestOption option(std::string flag, std::string key, std::string label, std::string group,
                     ValueType type, std::string valueName, std::string help,
                     T QuantizeRequest::*member) {
  RequestOption o;
  o.flag = std::move(flag);
  o.key = std::move(key);
  o.label = std::move(label);
  o.group = std::move(group);
  o.type = type;
  o.valueName = std::move(valueName);
  o.help = std::move(help);
  o.get = Field<T>{member};
  o.set = FieldSetter<T>{member};
  return o;
}

RequestOption ranged(RequestOption o, double minimum, double maximum) {
  o.minimum = minimum;
  o.maximum = maximum;
  return o;
}

RequestOption choices(RequestOption o, std::vector<std::string> values) {
  o.choices = std::move(values);
  return o;
}

// Where things go, not what is computed: never a difference on resume.
RequestOption place(RequestOption o) {
  o.setting = false;
  o.mayChangeOnResume = true;
  return o;
}

// Applied after the method: a resumed run may evaluate or export differently.
RequestOption afterMethod(RequestOption o) {
  o.mayChangeOnResume = true;
  return o;
}

RequestOption negatedFlag(RequestOption o) {
  o.negated = true;
  return o;
}

// A CLI shortcut that sets one hyperparameter (--rank -> "rank").
RequestOption hyperShortcut(const std::string &name, const std::string &label, ValueType type,
                            const std::string &valueName, double minimum, double maximum,
                            const std::string &help) {
  RequestOption o;
  o.flag = name;
  o.label = label;
  o.group = "Method";
  o.type = type;
  o.valueName = valueName;
  o.minimum = minimum;
  o.maximum = maximum;
  o.help = help;
  o.hyperparameter = name;
  o.get = [name](const QuantizeRequest &r) {
    auto it = r.hyperparameters.find(name);
    return it == r.hyperparameters.end() ? OptionValue(std::string()) : it->second;
  };
  o.set = [name](QuantizeRequest &r, const OptionValue &v) { r.hyperparameters[name] = v; };
  return o;
}

// The scheme presets, comma-separated: the GGUF block formats or the others.
std::string presetList(bool gguf) {
  std::string list;
  for (const std::string &name : schemePresets())
    if ((name.rfind("gguf-", 0) == 0) == gguf)
      list += (list.empty() ? "" : ", ") + name;
  return list;
}

std::vector<RequestOption> buildOptions() {
  using V = ValueType;
  std::vector<std::string> methodNames;
  for (const MethodInfo &m : methodCatalog())
    methodNames.push_back(m.name);
  RequestOption hyper;
  hyper.flag = "hyper";
  hyper.key = "hyperparameters";
  hyper.label = "Hyperparameters";
  hyper.group = "Method";
  hyper.type = V::Hyperparams;
  hyper.valueName = "JSON";
  hyper.help = "the method's hyperparameters as a JSON object, e.g. '{\"rank\": 64}'";
  hyper.get = [](const QuantizeRequest &r) {
    return OptionValue(hyperparametersToJson(r.hyperparameters));
  };
  hyper.set = [](QuantizeRequest &r, const OptionValue &v) {
    r.hyperparameters = hyperparametersFromJson(std::get<std::string>(v));
  };
  return {
      option("", "model", "Model", "Model", V::Path, "MODEL",
             "a .gguf file, a .safetensors file, a Hugging Face directory, or default",
             &QuantizeRequest::model),
      choices(option("method", "method", "Method", "Method", V::Choice, "M",
                     "the quantization method (lrq methods lists them)", &QuantizeRequest::method),
              methodNames),
      option("scheme", "scheme", "Scheme", "Method", V::Text, "S",
             "a scheme preset (" + presetList(false) +
                 "; llama.cpp GGUF blocks: " + presetList(true) + ") or a scheme JSON file",
             &QuantizeRequest::scheme),
      place(choices(option("preset", "preset", "Preset", "Method", V::Choice, "P",
                           "run size: demo (minutes on 2 cores), extended (at most 15 "
                           "minutes on 2 cores) or thorough (closer to the papers); values "
                           "given explicitly win",
                           &QuantizeRequest::preset),
                    {"", "demo", "extended", "thorough"})),
      hyper,
      hyperShortcut("rank", "Rank", V::Integer, "R", 0, 1 << 20,
                    "the method's rank hyperparameter (lrq, lqer, l2qer, lrqat)"),
      hyperShortcut("iters", "Iterations per block", V::Integer, "N", 1, 1e7,
                    "reconstruction iterations per block (flexround, lrq, rtn-learned-step)"),
      hyperShortcut("lr", "Learning rate", V::Number, "X", 1e-12, 1.0,
                    "the method's learning rate"),
      option("calib", "calibration_text", "Calibration text", "Calibration", V::Path, "FILE",
             "UTF-8 text to calibrate on (default: the default text's calibration part)",
             &QuantizeRequest::calibrationText),
      ranged(option("nsamples", "samples", "Calibration samples", "Calibration", V::Integer, "N",
                    "calibration windows", &QuantizeRequest::samples),
             1, 1 << 20),
      ranged(option("seq-len", "seq_len", "Calibration sequence length", "Calibration", V::Integer,
                    "N", "tokens per calibration window", &QuantizeRequest::seqLen),
             2, 1 << 20),
      ranged(option("heldout-samples", "heldout_samples", "Held-out samples", "Calibration",
                    V::Integer, "N",
                    "calibration windows never trained on, for the held-out reconstruction loss "
                    "per block (flexround, lrq, rtn-learned-step); 0 = off",
                    &QuantizeRequest::heldoutSamples),
             0, 1 << 16),
      ranged(option("seed", "seed", "Seed", "Calibration", V::Integer, "S",
                    "seed of the calibration windows' choice and of the methods' initialisation",
                    &QuantizeRequest::seed),
             0, 4.6e18),
      option("smoothquant", "smoothquant", "SmoothQuant", "SmoothQuant", V::Flag, "",
             "migrate activation outliers into the weights before quantizing",
             &QuantizeRequest::smoothQuant),
      ranged(option("alpha", "smoothquant_alpha", "SmoothQuant alpha", "SmoothQuant", V::Number,
                    "A", "migration strength: 0 keeps activations, 1 moves all to weights",
                    &QuantizeRequest::smoothQuantAlpha),
             0, 1),
      choices(option("smooth-groups", "smoothquant_groups", "SmoothQuant groups", "SmoothQuant",
                     V::Choice, "G",
                     "all: norm-fed groups and v->o, up->down; norm: the norm-fed groups only",
                     &QuantizeRequest::smoothQuantGroups),
              {"all", "norm"}),
      afterMethod(negatedFlag(option("no-eval", "evaluate", "Evaluate", "Evaluation", V::Flag, "",
                                     "skip the held-out evaluation (perplexity, KL, top-1)",
                                     &QuantizeRequest::evaluate))),
      afterMethod(option("text", "evaluation_text", "Evaluation text", "Evaluation", V::Path,
                         "FILE", "UTF-8 text to evaluate on (default: the held-out part)",
                         &QuantizeRequest::evaluationText)),
      afterMethod(negatedFlag(option("no-ood-eval", "evaluate_out_of_domain",
                                     "Evaluate out of domain", "Evaluation", V::Flag, "",
                                     "skip the second, out-of-domain evaluation text",
                                     &QuantizeRequest::evaluateOutOfDomain))),
      afterMethod(option("ood-text", "out_of_domain_text", "Out-of-domain text", "Evaluation",
                         V::Path, "FILE",
                         "second UTF-8 text to evaluate on, from another domain than the "
                         "calibration text (default: part of the Debian Policy Manual)",
                         &QuantizeRequest::outOfDomainText)),
      afterMethod(ranged(option("eval-seq-len", "eval_seq_len", "Evaluation sequence length",
                                "Evaluation", V::Integer, "N", "tokens per evaluation window",
                                &QuantizeRequest::evalSeqLen),
                         2, 1 << 20)),
      afterMethod(ranged(
          option("eval-windows", "eval_max_windows", "Evaluation windows", "Evaluation", V::Integer,
                 "N", "evaluation windows at most; 0 = all", &QuantizeRequest::evalMaxWindows),
          0, 1e12)),
      afterMethod(negatedFlag(option(
          "no-spectra", "spectra", "Record spectra", "Evaluation", V::Flag, "",
          "skip the per-layer singular values (W, E = W - Ŵ, scaled E, learned scale exponent)",
          &QuantizeRequest::spectra))),
      afterMethod(option("out", "export_dir", "HF export folder", "Output", V::Path, "DIR",
                         "write the quantized model (Ŵ) as a Hugging Face folder",
                         &QuantizeRequest::exportDir)),
      afterMethod(option("packed", "packed_path", "Packed export file", "Output", V::Path,
                         "FILE.safetensors", "write integer codes, steps and zero points",
                         &QuantizeRequest::packedPath)),
      afterMethod(option("gguf", "gguf_path", "GGUF export file", "Output", V::Path, "FILE.gguf",
                         "write a GGUF file llama.cpp loads (schemes " + presetList(true) + ")",
                         &QuantizeRequest::ggufPath)),
      afterMethod(option("gguf-float", "gguf_float_types", "GGUF float types", "Output", V::Text,
                         "PATTERN=TYPE,...",
                         "storage of the GGUF tensors left in float, by name (glob or re:REGEX), "
                         "TYPE f32 (default: the file is the evaluated model), f16, or q8_0 / "
                         "q6_k as llama-quantize rounds them (e.g. token_embd.weight=q8_0): "
                         "then the file is no longer exactly the evaluated model, measure it "
                         "with lrq eval FILE.gguf; norms stay F32",
                         &QuantizeRequest::ggufFloatTypes)),
      afterMethod(option("compressed-tensors", "compressed_tensors_dir",
                         "compressed-tensors folder", "Output", V::Path, "DIR",
                         "write the model in compressed-tensors' layout (vLLM, llm-compressor): "
                         "weight-only int4/int8 or W8A8",
                         &QuantizeRequest::compressedTensorsDir)),
      place(option("force", "overwrite", "Replace existing exports", "Output", V::Flag, "",
                   "replace an existing export (--out, --packed, --gguf, --compressed-tensors)",
                   &QuantizeRequest::overwrite)),
      place(option("store", "store", "Run store", "Run", V::Path, "FILE",
                   "the run store (default: ~/.local/share/lrq-workbench/runs.sqlite)",
                   &QuantizeRequest::storePath)),
      place(option("work-dir", "work_dir", "Work folder", "Run", V::Path, "DIR",
                   "caches and checkpoints (default: a folder under the cache directory)",
                   &QuantizeRequest::workDir)),
      place(option("resume", "resume", "Resume run", "Run", V::Text, "RUN_ID",
                   "go on with this interrupted run from its checkpoint, with its settings",
                   &QuantizeRequest::resumeRunId)),
  };
}

bool validUtf8(const std::string &text) {
  return firstInvalidUtf8(text) == std::string::npos;
}

std::string absolutePath(const std::string &path) {
  if (path.empty())
    return path;
  return fs::absolute(path).lexically_normal().string();
}

// Paths made absolute, so a run can be resumed from another folder. A scheme is
// a preset name unless a file of that name exists; "default" names the model.
QuantizeRequest normalized(QuantizeRequest r) {
  for (const RequestOption &o : quantizeRequestOptions()) {
    if (o.type != ValueType::Path)
      continue;
    const std::string value = std::get<std::string>(o.get(r));
    if (o.key == "model" && value == "default")
      continue;
    o.set(r, absolutePath(value));
  }
  std::error_code ec;
  if (fs::is_regular_file(r.scheme, ec))
    r.scheme = absolutePath(r.scheme);
  return r;
}

} // namespace

std::string optionValueText(const OptionValue &value) {
  if (const bool *b = std::get_if<bool>(&value))
    return *b ? "true" : "false";
  if (const int64_t *i = std::get_if<int64_t>(&value))
    return std::to_string(*i);
  if (const double *d = std::get_if<double>(&value))
    return numberText(*d);
  return std::get<std::string>(value);
}

std::string hyperparametersToJson(const Hyperparameters &hyper) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto &[name, value] : hyper)
    j[name] = std::visit([](const auto &v) { return nlohmann::json(v); }, value);
  return j.dump();
}

Hyperparameters hyperparametersFromJson(const std::string &json) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json.empty() ? std::string("{}") : json);
  } catch (const nlohmann::json::exception &) {
    throw OptionError("hyperparameters",
                      "hyperparameters must be a JSON object, e.g. {\"rank\": 64}; got '" + json +
                          "'");
  }
  if (!j.is_object())
    throw OptionError("hyperparameters",
                      "hyperparameters must be a JSON object, e.g. {\"rank\": 64}");
  Hyperparameters out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const nlohmann::json &v = it.value();
    if (v.is_boolean())
      out[it.key()] = v.get<bool>();
    else if (v.is_number_integer() || v.is_number_unsigned())
      out[it.key()] = v.get<int64_t>();
    else if (v.is_number())
      out[it.key()] = v.get<double>();
    else if (v.is_string())
      out[it.key()] = v.get<std::string>();
    else
      throw OptionError("hyperparameters." + it.key(),
                        "hyperparameter '" + it.key() + "' must be a boolean, number or string");
  }
  return out;
}

const HyperparameterSpec *MethodInfo::hyperparameter(const std::string &key) const {
  for (const HyperparameterSpec &h : hyperparameters)
    if (h.name == key)
      return &h;
  return nullptr;
}

const MethodPreset *MethodInfo::preset(const std::string &key) const {
  for (const MethodPreset &p : presets)
    if (p.name == key)
      return &p;
  return nullptr;
}

const std::vector<RequestOption> &quantizeRequestOptions() {
  static const std::vector<RequestOption> options = buildOptions();
  return options;
}

const RequestOption *findRequestOption(const std::string &flagOrKey) {
  for (const RequestOption &o : quantizeRequestOptions())
    if ((!o.flag.empty() && o.flag == flagOrKey) || (!o.key.empty() && o.key == flagOrKey))
      return &o;
  return nullptr;
}

OptionValue parseOptionValue(const RequestOption &o, const std::string &text) {
  const std::string id = o.key.empty() ? "hyperparameters." + o.hyperparameter : o.key;
  auto bad = [&](const std::string &what) {
    return OptionError(id, o.label + " " + what + ", got '" + text + "'");
  };
  switch (o.type) {
  case ValueType::Flag:
    if (text.empty() || text == "true" || text == "1" || text == "yes")
      return true;
    if (text == "false" || text == "0" || text == "no")
      return false;
    throw bad("must be true or false");
  case ValueType::Integer: {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(text, &used);
    } catch (const std::exception &) {
      used = 0;
    }
    if (used == 0 || used != text.size())
      throw bad("must be a whole number");
    if (double(v) < o.minimum || double(v) > o.maximum)
      throw bad("must be between " + numberText(o.minimum) + " and " + numberText(o.maximum));
    return int64_t(v);
  }
  case ValueType::Number: {
    size_t used = 0;
    const double v = parseNumberC(text, &used); // std::stod follows the locale's separator
    if (used == 0 || used != text.size() || !std::isfinite(v))
      throw bad("must be a number");
    if (v < o.minimum || v > o.maximum)
      throw bad("must be between " + numberText(o.minimum) + " and " + numberText(o.maximum));
    return v;
  }
  case ValueType::Choice:
    if (std::find(o.choices.begin(), o.choices.end(), text) == o.choices.end()) {
      std::string list;
      for (const std::string &c : o.choices)
        if (!c.empty())
          list += (list.empty() ? "" : ", ") + c;
      throw bad("must be one of " + list);
    }
    return text;
  case ValueType::Hyperparams:
    hyperparametersFromJson(text); // validates
    return text;
  case ValueType::Text:
  case ValueType::Path:
    return text;
  }
  return text;
}

void setRequestOption(QuantizeRequest &request, const RequestOption &option,
                      const std::string &text) {
  option.set(request, parseOptionValue(option, text));
}

std::string requestOptionText(const QuantizeRequest &request, const RequestOption &option) {
  return optionValueText(option.get(request));
}

void applyPreset(QuantizeRequest &request, const std::vector<std::string> &keep) {
  if (request.preset.empty())
    return;
  const MethodInfo &info = methodInfo(request.method);
  const MethodPreset *preset = info.preset(request.preset);
  if (!preset) {
    std::string list;
    for (const MethodPreset &p : info.presets)
      list += (list.empty() ? "" : ", ") + p.name;
    throw OptionError("preset", "method " + info.name + " has no preset '" + request.preset +
                                    "' (its presets: " + (list.empty() ? "none" : list) + ")");
  }
  auto kept = [&](const std::string &key) {
    return std::find(keep.begin(), keep.end(), key) != keep.end();
  };
  for (const auto &[name, value] : preset->hyperparameters)
    if (!kept("hyperparameters." + name))
      request.hyperparameters[name] = value;
  if (preset->samples > 0 && !kept("samples"))
    request.samples = preset->samples;
  if (preset->seqLen > 0 && !kept("seq_len"))
    request.seqLen = preset->seqLen;
  if (preset->evalSeqLen > 0 && !kept("eval_seq_len"))
    request.evalSeqLen = preset->evalSeqLen;
}

std::vector<RequestProblem> checkRequest(const QuantizeRequest &request) {
  std::vector<RequestProblem> problems;
  auto problem = [&](const std::string &key, const std::string &message) {
    problems.push_back({key, message});
  };
  // Each option's own range or choices, through the same parser the CLI uses.
  for (const RequestOption &o : quantizeRequestOptions()) {
    if (o.key.empty() || o.type == ValueType::Text || o.type == ValueType::Path)
      continue;
    try {
      parseOptionValue(o, optionValueText(o.get(request)));
    } catch (const OptionError &e) {
      problem(e.key(), e.what());
    }
  }
  if (request.model.empty())
    problem("model", "no model given");
  // The method and its hyperparameters.
  const MethodInfo *info = nullptr;
  try {
    info = &methodInfo(request.method);
  } catch (const Error &e) {
    problem("method", e.what());
  }
  if (info) {
    const size_t problemsBefore = problems.size();
    for (const auto &[name, value] : request.hyperparameters) {
      const HyperparameterSpec *spec = info->hyperparameter(name);
      const std::string key = "hyperparameters." + name;
      if (!spec) {
        std::string known;
        for (const HyperparameterSpec &h : info->hyperparameters)
          known += (known.empty() ? "" : ", ") + h.name;
        problem(key, "method " + info->name + " has no hyperparameter '" + name +
                         "' (its hyperparameters: " + (known.empty() ? "none" : known) + ")");
        continue;
      }
      const bool isInt = std::holds_alternative<int64_t>(value);
      const bool isNumber = isInt || std::holds_alternative<double>(value);
      bool typeOk = true;
      switch (spec->type) {
      case ValueType::Flag:
        typeOk = std::holds_alternative<bool>(value);
        break;
      case ValueType::Integer:
        typeOk = isInt;
        break;
      case ValueType::Number:
        typeOk = isNumber;
        break;
      default:
        typeOk = std::holds_alternative<std::string>(value);
      }
      if (!typeOk) {
        problem(key, info->name + " " + name + " expects " +
                         (spec->type == ValueType::Integer  ? "a whole number"
                          : spec->type == ValueType::Number ? "a number"
                          : spec->type == ValueType::Flag   ? "true or false"
                                                            : "text") +
                         ", got " + optionValueText(value));
        continue;
      }
      if (isNumber) {
        const double v = isInt ? double(std::get<int64_t>(value)) : std::get<double>(value);
        if (!(v >= spec->minimum && v <= spec->maximum))
          problem(key, info->name + " " + name + " must be between " + numberText(spec->minimum) +
                           " and " + numberText(spec->maximum) + ", got " + optionValueText(value));
      }
    }
    if (problems.size() == problemsBefore) { // each of the right type and range
      try {
        info->checkHyperparameters(request.hyperparameters);
      } catch (const Error &e) {
        problem("hyperparameters", e.what());
      }
    }
    if (!request.preset.empty() && !info->preset(request.preset))
      problem("preset", "method " + info->name + " has no preset '" + request.preset + "'");
    if (!request.resumeRunId.empty() && !info->canResume)
      problem("resume",
              "method " + info->name + " keeps no checkpoint: its runs cannot be resumed");
  }
  std::string schemeJson;
  try {
    schemeJson = resolveSchemeJson(request.scheme);
    if (info)
      info->checkScheme(schemeJson); // what this method can do with it
  } catch (const Error &e) {
    problem("scheme", e.what());
    schemeJson.clear();
  }
  if (!request.compressedTensorsDir.empty() && !schemeJson.empty()) {
    // Refused before the run: a scheme or method the format cannot hold exactly.
    try {
      quant::compressedTensorsFormatFor(quant::QuantScheme::fromJson(schemeJson), request.method,
                                        &request.hyperparameters);
    } catch (const Error &e) {
      problem("compressed_tensors_dir", e.what());
    }
  }
  // Text files: present, readable, UTF-8.
  auto checkText = [&](const std::string &key, const std::string &path) {
    if (path.empty())
      return;
    try {
      const std::string text = readTextFile(path);
      if (!validUtf8(text))
        problem(key, path + ": not UTF-8 text");
      else if (text.empty())
        problem(key, path + ": the file is empty");
    } catch (const Error &e) {
      problem(key, e.what());
    }
  };
  checkText("calibration_text", request.calibrationText);
  if (request.evaluate)
    checkText("evaluation_text", request.evaluationText);
  if (request.evaluate && request.evaluateOutOfDomain)
    checkText("out_of_domain_text", request.outOfDomainText);
  std::error_code ec;
  if (!request.exportDir.empty() && fs::exists(request.exportDir, ec) &&
      !fs::is_directory(request.exportDir, ec))
    problem("export_dir", request.exportDir + ": exists and is not a folder");
  if (!request.packedPath.empty() && fs::is_directory(request.packedPath, ec))
    problem("packed_path", request.packedPath + ": is a folder, not a file name");
  if (!request.packedPath.empty() && !schemeJson.empty() &&
      quant::QuantScheme::fromJson(schemeJson).weight.offsetForm())
    problem("packed_path", "k-superblock-offset grids (values s q - M, GGUF Q4_K) have no "
                           "packed form (it stores s (q - z)); export GGUF (--gguf) instead");
  if (!request.ggufPath.empty()) {
    if (fs::is_directory(request.ggufPath, ec))
      problem("gguf_path", request.ggufPath + ": is a folder, not a file name");
    else if (!request.overwrite && fs::exists(request.ggufPath, ec))
      problem("gguf_path", request.ggufPath + ": already exists (replace it with --force)");
    std::string schemeJson;
    try {
      schemeJson = resolveSchemeJson(request.scheme);
    } catch (const Error &) {
      // Reported for the scheme above.
    }
    if (!schemeJson.empty()) {
      const std::string why = quant::ggufExportProblem(schemeJson, request.method);
      if (!why.empty())
        problem("gguf_path", why);
    }
    try {
      parseGgufFloatTypes(request.ggufFloatTypes);
    } catch (const Error &e) {
      problem("gguf_float_types", e.what());
    }
  }
  if (!request.compressedTensorsDir.empty() && fs::exists(request.compressedTensorsDir, ec)) {
    if (!fs::is_directory(request.compressedTensorsDir, ec))
      problem("compressed_tensors_dir",
              request.compressedTensorsDir + ": exists and is not a folder");
    else if (!request.overwrite)
      problem("compressed_tensors_dir",
              request.compressedTensorsDir + ": already exists (--force replaces it)");
  }
  if (!request.model.empty() && request.model != "default" && !fs::exists(request.model, ec))
    problem("model", request.model + ": no such file or folder");
  return problems;
}

void validateRequest(const QuantizeRequest &request) {
  const std::vector<RequestProblem> problems = checkRequest(request);
  if (!problems.empty())
    throw OptionError(problems.front().key, problems.front().message);
}

std::string requestToJson(const QuantizeRequest &request) {
  const QuantizeRequest r = normalized(request);
  nlohmann::json j = nlohmann::json::object();
  for (const RequestOption &o : quantizeRequestOptions()) {
    if (o.key.empty())
      continue;
    if (o.type == ValueType::Hyperparams)
      j[o.key] = nlohmann::json::parse(hyperparametersToJson(r.hyperparameters));
    else
      j[o.key] = std::visit([](const auto &v) { return nlohmann::json(v); }, o.get(r));
  }
  return j.dump(2);
}

QuantizeRequest requestFromJson(const std::string &text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception &e) {
    throw Error(std::string("request is not valid JSON: ") + e.what());
  }
  if (!j.is_object())
    throw Error("request must be a JSON object");
  QuantizeRequest r;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const RequestOption *o = nullptr;
    for (const RequestOption &candidate : quantizeRequestOptions())
      if (!candidate.key.empty() && candidate.key == it.key())
        o = &candidate;
    if (!o)
      throw OptionError(it.key(), "request: unknown key '" + it.key() + "'");
    const nlohmann::json &v = it.value();
    try {
      switch (o->type) {
      case ValueType::Hyperparams:
        o->set(r, v.dump());
        break;
      case ValueType::Flag:
        o->set(r, v.get<bool>());
        break;
      case ValueType::Integer:
        if (!v.is_number_integer() && !v.is_number_unsigned())
          throw OptionError(o->key, "request: " + o->key + " must be a whole number");
        o->set(r, v.get<int64_t>());
        break;
      case ValueType::Number:
        o->set(r, v.get<double>());
        break;
      default:
        o->set(r, v.get<std::string>());
      }
    } catch (const nlohmann::json::exception &) {
      throw OptionError(o->key, "request: " + o->key + " has the wrong type (" +
                                    std::string(v.type_name()) + ")");
    }
  }
  return r;
}

std::vector<RequestDifference> requestDifferences(const QuantizeRequest &first,
                                                  const QuantizeRequest &second) {
  const QuantizeRequest a = normalized(first), b = normalized(second);
  std::vector<RequestDifference> out;
  for (const RequestOption &o : quantizeRequestOptions()) {
    if (o.key.empty() || !o.setting || o.mayChangeOnResume)
      continue;
    if (o.type == ValueType::Hyperparams) {
      if (a.hyperparameters != b.hyperparameters)
        out.push_back({&o, hyperparametersToJson(a.hyperparameters),
                       hyperparametersToJson(b.hyperparameters)});
      continue;
    }
    const OptionValue va = o.get(a), vb = o.get(b);
    if (va != vb)
      out.push_back({&o, optionValueText(va), optionValueText(vb)});
  }
  return out;
}

std::string quantizeUsage() {
  std::ostringstream s;
  s << "usage: lrq quantize MODEL [options]\n"
       "       lrq quantize --resume RUN_ID [--store FILE] [--work-dir DIR] [evaluation and "
       "output options]\n\n"
       "Quantizes MODEL with a method and a scheme, evaluates it against the full-precision\n"
       "reference and records the run in the run store; prints the run id.\n";
  std::string group;
  for (const RequestOption &o : quantizeRequestOptions()) {
    if (o.flag.empty())
      continue;
    if (o.group != group) {
      group = o.group;
      s << "\n" << group << ":\n";
    }
    std::string left = "  --" + o.flag + (o.valueName.empty() ? "" : " " + o.valueName);
    if (left.size() < 30)
      left.resize(30, ' ');
    else
      left += "\n" + std::string(30, ' ');
    std::string help = o.help;
    if (o.type == ValueType::Choice) {
      std::string list;
      for (const std::string &c : o.choices)
        if (!c.empty())
          list += (list.empty() ? "" : "|") + c;
      help += " [" + list + "]";
    }
    if (o.setting && !o.key.empty() &&
        (o.type == ValueType::Integer || o.type == ValueType::Number ||
         (o.type == ValueType::Choice && !o.key.empty())))
      help += " (default " + requestOptionText(QuantizeRequest{}, o) + ")";
    s << left << help << "\n";
  }
  s << "\nMethods and their hyperparameters:\n";
  for (const MethodInfo &m : methodCatalog()) {
    s << "  " << m.name << ": " << m.title << (m.canResume ? " (resumable)" : "") << "\n";
    for (const HyperparameterSpec &h : m.hyperparameters)
      s << "      " << h.name << " = " << optionValueText(h.defaultValue) << "  " << h.help << "\n";
  }
  return s.str();
}

} // namespace lrq
