// lrq quantize / runs / methods / schemes.
#include "app/cli_quantize.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <mutex>
#include <optional>
#include <ostream>
#include <sstream>

#include "core/common/error.h"
#include "core/common/json_limits.h"
#include "core/runs/run_store.h"
#include "core/session/quantize_job.h"

namespace lrq::cli {
namespace {

// Prints every engine event as one JSON object per line on stdout and
// forwards it to the terminal progress.
class JsonLinesObserver : public ProgressObserver {
public:
  JsonLinesObserver(std::ostream &out, ProgressObserver &forward) : out_(out), forward_(forward) {}

  void started(const std::string &task, int64_t total) override {
    emit({{"event", "started"}, {"task", task}, {"total", total}});
    forward_.started(task, total);
  }
  void progress(int64_t done, int64_t total, const std::string &detail) override {
    forward_.progress(done, total, detail);
  }
  void runStarted(const std::string &runId, const std::string &storePath) override {
    emit({{"event", "run_started"}, {"run_id", runId}, {"store", storePath}});
    forward_.runStarted(runId, storePath);
  }
  void layerFinished(int block, const std::string &role, double mse, double sqnrDb) override {
    emit(
        {{"event", "layer"}, {"block", block}, {"layer", role}, {"mse", mse}, {"sqnr_db", sqnrDb}});
    forward_.layerFinished(block, role, mse, sqnrDb);
  }
  void blockStarted(int block, int blockCount) override {
    emit({{"event", "block_started"}, {"block", block}, {"blocks", blockCount}});
    forward_.blockStarted(block, blockCount);
  }
  void iterationLoss(int block, int iteration, double loss) override {
    emit({{"event", "iteration"}, {"block", block}, {"iteration", iteration}, {"loss", loss}});
    forward_.iterationLoss(block, iteration, loss);
  }
  void blockHeldOut(int block, double initialLoss, double finalLoss) override {
    emit({{"event", "block_heldout"},
          {"block", block},
          {"initial_loss", initialLoss},
          {"final_loss", finalLoss}});
    forward_.blockHeldOut(block, initialLoss, finalLoss);
  }
  void blockFinished(int block, double initialLoss, double finalLoss, double seconds) override {
    emit({{"event", "block_finished"},
          {"block", block},
          {"initial_loss", initialLoss},
          {"final_loss", finalLoss},
          {"seconds", seconds}});
    forward_.blockFinished(block, initialLoss, finalLoss, seconds);
  }
  void metric(const std::string &name, double value) override {
    emit({{"event", "metric"}, {"name", name}, {"value", value}});
    forward_.metric(name, value);
  }
  void log(LogLevel level, const std::string &message) override { forward_.log(level, message); }
  void emit(const nlohmann::json &event) {
    std::lock_guard<std::mutex> lock(mutex_);
    out_ << event.dump() << "\n" << std::flush;
  }

private:
  std::ostream &out_;
  ProgressObserver &forward_;
  std::mutex mutex_;
};

std::string storePathOf(const Arguments &args) {
  return has(args, "store") ? stringOption(args, "store", "") : RunStore::defaultPath();
}

std::string metricText(const std::map<std::string, double> &metrics) {
  std::ostringstream s;
  s << std::setprecision(6);
  bool first = true;
  for (const auto &[name, value] : metrics) {
    s << (first ? "" : ", ") << name << " " << value;
    first = false;
  }
  return s.str();
}

// A JSON column of a stored run; a document too deep to print is an error
// (dump() recurses), not a crash.
nlohmann::json storedJson(const std::string &text, const RunInfo &r, const char *what) {
  if (text.empty())
    return nlohmann::json::object();
  checkJsonLimits(text, std::string(what) + " of run " + r.id);
  return nlohmann::json::parse(text);
}

nlohmann::json runInfoJson(const RunInfo &r) {
  nlohmann::json j = {{"id", r.id},
                      {"created", r.created},
                      {"status", runStatusName(r.status)},
                      {"model", r.model.path},
                      {"model_digest", r.model.digest},
                      {"method", r.method},
                      {"scheme", storedJson(r.schemeJson, r, "scheme")},
                      {"hyperparameters", storedJson(r.hyperparametersJson, r, "hyperparameters")},
                      {"engine_version", r.engineVersion},
                      {"seconds", r.totalSeconds},
                      {"metrics", r.metrics},
                      {"error", r.error},
                      {"notes", r.notes},
                      {"blocks", r.blockCount}};
  // Liveness: the process that runs (or ran) it; what it exported.
  j["owner"] = {{"pid", r.owner.pid}, {"host", r.owner.host}, {"process_start", r.owner.start}};
  j["heartbeat"] = r.heartbeat > 0 ? formatIsoUtc(r.heartbeat) : std::string();
  j["export"] = r.exportDir;
  j["packed"] = r.packedPath;
  j["gguf"] = r.ggufPath;
  j["compressed_tensors"] = r.compressedTensorsDir;
  return j;
}

// "process 1234 on host h, last heartbeat 2026-...Z" for a run that is or was running.
std::string ownerText(const RunInfo &r) {
  if (!r.owner.known())
    return "not recorded (an older build ran it)";
  std::string text = "process " + std::to_string(r.owner.pid) + " on " +
                     (r.owner.host.empty() ? std::string("an unnamed host") : r.owner.host);
  if (r.heartbeat > 0)
    text += ", last heartbeat " + formatIsoUtc(r.heartbeat);
  return text;
}

// The rank rule an LRQ run used: its recorded rank_rule, "fixed" for runs
// recorded before the rule existed (they all used one rank for every layer).
std::string lrqRankRuleOf(const RunInfo &r) {
  const nlohmann::json h = nlohmann::json::parse(r.hyperparametersJson, nullptr, false);
  const auto it = h.is_object() ? h.find("rank_rule") : h.end();
  return h.is_object() && it != h.end() && it->is_string() ? it->get<std::string>() : "fixed";
}

// Effective rank of a spectrum (Roy & Vetterli): exp of the entropy of the
// normalised singular values p_i = s_i / sum s; 0 for an all-zero spectrum.
double effectiveRank(const std::vector<double> &values) {
  double sum = 0;
  for (double v : values)
    sum += std::abs(v);
  if (!(sum > 0))
    return 0;
  double entropy = 0;
  for (double v : values) {
    const double p = std::abs(v) / sum;
    if (p > 0)
      entropy -= p * std::log(p);
  }
  return std::exp(entropy);
}

nlohmann::json spectraJson(const std::vector<SpectrumRecord> &spectra) {
  nlohmann::json list = nlohmann::json::array();
  for (const SpectrumRecord &s : spectra)
    list.push_back({{"block", s.block},
                    {"layer", s.role},
                    {"kind", s.kind},
                    {"count", s.values.size()},
                    {"effective_rank", effectiveRank(s.values)},
                    {"values", s.values}});
  return list;
}

// One line per recorded spectrum: its size, effective rank and largest values.
void printSpectra(std::ostream &out, const std::vector<SpectrumRecord> &spectra) {
  constexpr size_t shown = 4;
  out << "\nspectra: singular values (count, effective rank exp(H(s / sum s)), the largest "
      << shown << ")\nblock  layer        kind            count  eff. rank  largest\n";
  for (const SpectrumRecord &s : spectra) {
    out << std::right << std::setw(5) << s.block << "  " << std::left << std::setw(11) << s.role
        << "  " << std::setw(14) << s.kind << std::right << std::setw(6) << s.values.size()
        << std::setw(11) << std::fixed << std::setprecision(1) << effectiveRank(s.values)
        << std::defaultfloat << std::setprecision(4) << " ";
    for (size_t i = 0; i < s.values.size() && i < shown; ++i)
      out << " " << s.values[i];
    out << "\n";
  }
}

std::string schemeName(const std::string &schemeJson) {
  try {
    return nlohmann::json::parse(schemeJson).value("name", std::string("custom"));
  } catch (const nlohmann::json::exception &) {
    return "?";
  }
}

// The request option key a flag sets ("hyperparameters.rank" for --rank).
std::string givenKey(const RequestOption &o) {
  return o.key.empty() ? "hyperparameters." + o.hyperparameter : o.key;
}

// The flag to name for a request key in a message.
std::string flagOf(const std::string &key) {
  if (key.rfind("hyperparameters.", 0) == 0) {
    const RequestOption *shortcut = findRequestOption(key.substr(16));
    return shortcut && !shortcut->hyperparameter.empty() ? "--" + shortcut->flag : "--hyper";
  }
  const RequestOption *o = findRequestOption(key);
  return o == nullptr ? key : o->flag.empty() ? "MODEL" : "--" + o->flag;
}

// The request the command line describes, every option read through the table.
// `given` receives the keys the user set explicitly.
QuantizeRequest requestFromArguments(const Arguments &args, bool resumeAlone,
                                     std::vector<std::string> &given) {
  QuantizeRequest request;
  if (!resumeAlone)
    request.model = requireModel(args);
  for (const RequestOption &o : quantizeRequestOptions()) {
    if (o.flag.empty() || !has(args, o.flag))
      continue;
    if (resumeAlone && o.setting && !o.mayChangeOnResume)
      throw UsageError("--resume RUN_ID alone takes the run's settings; --" + o.flag +
                       " may only come with the whole original command");
    try {
      if (o.type == ValueType::Flag)
        o.set(request, !o.negated); // present: on, or off for --no-...
      else
        setRequestOption(request, o, stringOption(args, o.flag, ""));
    } catch (const OptionError &e) {
      throw UsageError("--" + o.flag + ": " + e.what());
    }
    given.push_back(givenKey(o));
    if (o.type == ValueType::Hyperparams)
      for (const auto &entry : request.hyperparameters)
        given.push_back("hyperparameters." + entry.first);
  }
  return request;
}

// `--resume RUN_ID`: the run's saved request. Given with the whole original
// command (MODEL and options), the command's settings must be the run's;
// options that may change on resume (evaluation, outputs) are taken from the
// command.
QuantizeRequest resumedRequest(const Arguments &args, const QuantizeRequest &given,
                               const std::vector<std::string> &givenKeys) {
  QuantizeRequest saved;
  try {
    saved = resumeRequest(given.resumeRunId, given.storePath, given.workDir);
  } catch (const FileError &) {
    throw;
  } catch (const Error &e) {
    // The engine names no flags; here the flag that finds the run's folder helps.
    if (given.workDir.empty() &&
        std::string(e.what()).find("no saved request") != std::string::npos)
      throw Error(std::string(e.what()) + " (a run started with --work-dir DIR is resumed with "
                                          "--work-dir DIR)");
    throw;
  }
  const bool alone = args.positional.empty();
  if (!alone) {
    const std::vector<RequestDifference> differences = requestDifferences(saved, given);
    if (!differences.empty()) {
      std::string list;
      for (const RequestDifference &d : differences)
        list += (list.empty() ? "" : ", ") + flagOf(d.option->key) + " (" + d.first + " vs " +
                d.second + ")";
      throw Error("cannot resume run " + saved.resumeRunId + ": settings differ from the run's: " +
                  list + " (give --resume " + saved.resumeRunId + " alone to use the run's)");
    }
  }
  for (const RequestOption &o : quantizeRequestOptions())
    if (o.setting && o.mayChangeOnResume && !o.key.empty() &&
        (!alone || std::find(givenKeys.begin(), givenKeys.end(), o.key) != givenKeys.end()))
      o.set(saved, o.get(given));
  return saved;
}

} // namespace

int commandQuantize(const Arguments &args, std::ostream &out, TerminalProgress &progress) {
  const bool resumeAlone = has(args, "resume") && args.positional.empty();
  std::vector<std::string> given;
  QuantizeRequest request = requestFromArguments(args, resumeAlone, given);
  try {
    applyPreset(request, given);
    if (has(args, "resume"))
      request = resumedRequest(args, request, given);
    validateRequest(request);
  } catch (const OptionError &e) {
    throw UsageError(flagOf(e.key()) + ": " + e.what());
  }
  if (has(args, "dry-run")) {
    out << requestToJson(request) << "\n";
    return 0;
  }
  const MethodInfo &method = methodInfo(request.method);
  const HyperparameterSpec *iters = method.hyperparameter("iters");
  if (iters) {
    auto it = request.hyperparameters.find("iters");
    progress.setIterationsPerBlock(it != request.hyperparameters.end()
                                       ? std::get<int64_t>(it->second)
                                       : std::get<int64_t>(iters->defaultValue));
  }

  const bool json = has(args, "json");
  JsonLinesObserver jsonObserver(out, progress);
  ProgressObserver *observer = json ? static_cast<ProgressObserver *>(&jsonObserver) : &progress;
  QuantizeOutcome outcome = runQuantizeJob(request, observer, &interruptToken());
  if (json) {
    jsonObserver.emit({{"event", "finished"},
                       {"run_id", outcome.runId},
                       {"store", outcome.storePath},
                       {"metrics", outcome.metrics},
                       {"seconds", outcome.seconds},
                       {"export", outcome.exportDir},
                       {"packed", outcome.packedPath},
                       {"gguf", outcome.ggufPath},
                       {"compressed_tensors", outcome.compressedTensorsDir}});
    return 0;
  }
  out << "run " << outcome.runId << " finished in " << formatSeconds(outcome.seconds) << "\n";
  if (!outcome.metrics.empty())
    out << metricText(outcome.metrics) << "\n";
  if (!outcome.exportDir.empty())
    out << "exported to " << outcome.exportDir << "  (lrq eval " << outcome.exportDir << ")\n";
  if (!outcome.packedPath.empty())
    out << "packed export " << outcome.packedPath << "\n";
  if (!outcome.ggufPath.empty())
    out << "GGUF export " << outcome.ggufPath << "  (lrq eval " << outcome.ggufPath << ")\n";
  if (!outcome.compressedTensorsDir.empty())
    out << "compressed-tensors export " << outcome.compressedTensorsDir << "\n";
  out << "store " << outcome.storePath << "  (lrq runs show " << outcome.runId << ")\n";
  return 0;
}

int commandRuns(const Arguments &args, std::ostream &out) {
  if (args.positional.empty())
    throw UsageError("'runs' needs a subcommand: list, show ID, compare ID ID..., delete ID");
  const std::string sub = args.positional[0];
  const bool json = has(args, "json");
  if (sub != "list" && sub != "show" && sub != "compare" && sub != "delete")
    throw UsageError("unknown 'runs' subcommand '" + sub + "' (list, show, compare, delete)");
  // Reading creates nothing: no store file, no folders (only delete writes).
  const std::string storePath = storePathOf(args);
  RunStoreOptions storeOptions;
  storeOptions.readOnly = sub != "delete";
  std::error_code ec;
  if (sub == "list" && !std::filesystem::exists(storePath, ec)) {
    if (json)
      out << nlohmann::json{{"store", storePath}, {"runs", nlohmann::json::array()}}.dump() << "\n";
    else
      out << "no runs in " << storePath << " (no run store there yet)\n";
    return 0;
  }
  RunStore store = RunStore::open(storePath, storeOptions);
  if (sub == "list") {
    RunFilter filter;
    filter.model = stringOption(args, "model", "");
    filter.method = stringOption(args, "method", "");
    filter.limit = int(intOption(args, "limit", 0, 0, 1 << 30));
    if (has(args, "status")) {
      try {
        filter.status = parseRunStatus(stringOption(args, "status", ""));
      } catch (const Error &e) {
        throw UsageError(std::string("--status: ") + e.what());
      }
    }
    std::vector<RunInfo> runs = store.listRuns(filter);
    if (json) {
      nlohmann::json list = nlohmann::json::array();
      for (const RunInfo &r : runs)
        list.push_back(runInfoJson(r));
      out << nlohmann::json{{"store", store.path()}, {"runs", list}}.dump() << "\n";
      return 0;
    }
    if (runs.empty()) {
      out << "no runs in " << store.path() << "\n";
      return 0;
    }
    // Method and scheme columns as wide as their longest entry, plus a gap.
    size_t methodWidth = 8, schemeWidth = 8;
    for (const RunInfo &r : runs) {
      methodWidth = std::max(methodWidth, r.method.size() + 2);
      schemeWidth = std::max(schemeWidth, schemeName(r.schemeJson).size() + 2);
    }
    const int mw = int(methodWidth), sw = int(schemeWidth);
    out << std::left << std::setw(22) << "id" << std::setw(13) << "status" << std::setw(mw)
        << "method" << std::setw(sw) << "scheme" << std::setw(9) << "seconds"
        << "metrics\n";
    for (const RunInfo &r : runs)
      out << std::left << std::setw(22) << r.id << std::setw(13) << runStatusName(r.status)
          << std::setw(mw) << r.method << std::setw(sw) << schemeName(r.schemeJson) << std::setw(9)
          << std::fixed << std::setprecision(1) << r.totalSeconds << std::defaultfloat
          << metricText(r.metrics) << "\n";
    return 0;
  }
  if (sub == "show") {
    if (args.positional.size() != 2)
      throw UsageError("'runs show' needs one run id");
    RunRecord r = store.getRun(store.resolveId(args.positional[1]));
    if (json) {
      nlohmann::json j = runInfoJson(r);
      nlohmann::json blocks = nlohmann::json::array();
      for (const BlockRecord &b : r.blocks) {
        nlohmann::json curve = nlohmann::json::array();
        for (const LossPoint &p : b.curve)
          curve.push_back({p.iteration, p.loss});
        auto optional = [](const std::optional<double> &v) {
          return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
        };
        blocks.push_back({{"block", b.index},
                          {"initial_loss", b.initialLoss},
                          {"final_loss", b.finalLoss},
                          {"heldout_initial_loss", optional(b.heldoutInitialLoss)},
                          {"heldout_final_loss", optional(b.heldoutFinalLoss)},
                          {"seconds", b.seconds},
                          {"curve", curve}});
      }
      if (r.method == "lrq")
        j["rank_rule"] = lrqRankRuleOf(r);
      j["block_records"] = blocks;
      nlohmann::json layers = nlohmann::json::array();
      for (const LayerStats &l : r.layers)
        layers.push_back({{"block", l.block},
                          {"layer", l.role},
                          {"mse", l.mse},
                          {"sqnr_db", l.sqnrDb},
                          {"learnable_params", l.learnableParams}});
      j["layers"] = layers;
      if (has(args, "spectra"))
        j["spectra"] = spectraJson(r.spectra);
      out << j.dump() << "\n";
      return 0;
    }
    out << "run       " << r.id << " (" << runStatusName(r.status) << ")\n"
        << "created   " << r.created << "\n"
        << "model     " << r.model.path << "\n"
        << "method    " << r.method << "  " << r.hyperparametersJson << "\n"
        << "scheme    " << r.schemeJson << "\n";
    if (r.method == "lrq")
      out << "rank rule " << lrqRankRuleOf(r) << "\n";
    out << "engine    " << r.engineVersion << ", " << std::fixed << std::setprecision(1)
        << r.totalSeconds << " s" << std::defaultfloat << "\n";
    if (r.status == RunStatus::Running || r.status == RunStatus::Interrupted)
      out << "owner     " << ownerText(r) << "\n";
    if (r.status == RunStatus::Interrupted)
      out << "          its process is gone: lrq quantize --resume " << r.id
          << " goes on from the last checkpoint (block-wise reconstruction methods)\n";
    if (!r.exportDir.empty())
      out << "export    " << r.exportDir << "\n";
    if (!r.packedPath.empty())
      out << "packed    " << r.packedPath << "\n";
    if (!r.ggufPath.empty())
      out << "gguf      " << r.ggufPath << "\n";
    if (!r.compressedTensorsDir.empty())
      out << "c-tensors " << r.compressedTensorsDir << "  (compressed-tensors, for vLLM)\n";
    if (!r.notes.empty())
      out << "notes     " << r.notes << "\n";
    if (!r.error.empty())
      out << "error     " << r.error << "\n";
    if (!r.metrics.empty())
      out << "metrics   " << metricText(r.metrics) << "\n";
    if (!r.blocks.empty()) {
      // Held-out columns: the same loss on calibration samples never trained on.
      bool heldout = false;
      for (const BlockRecord &b : r.blocks)
        heldout = heldout || b.heldoutFinalLoss.has_value();
      out << "\nblock  initial loss    final loss"
          << (heldout ? "  held-out initial  held-out final" : "") << "   seconds  iterations\n";
      for (const BlockRecord &b : r.blocks) {
        out << std::right << std::setw(5) << b.index << std::setw(14) << std::setprecision(5)
            << b.initialLoss << std::setw(14) << b.finalLoss;
        if (heldout) {
          auto cell = [](const std::optional<double> &v) {
            std::ostringstream c;
            if (v)
              c << std::setprecision(5) << *v;
            else
              c << "-";
            return c.str();
          };
          out << std::setw(18) << cell(b.heldoutInitialLoss) << std::setw(16)
              << cell(b.heldoutFinalLoss);
        }
        out << std::setw(10) << std::fixed << std::setprecision(1) << b.seconds << std::defaultfloat
            << std::setw(12) << b.curve.size() << "\n";
      }
    }
    if (!r.layers.empty()) {
      out << "\nblock  layer        MSE           SQNR dB   learnable\n";
      for (const LayerStats &l : r.layers)
        out << std::right << std::setw(5) << l.block << "  " << std::left << std::setw(11) << l.role
            << std::right << std::setw(13) << std::setprecision(4) << l.mse << std::setw(10)
            << std::fixed << std::setprecision(2) << l.sqnrDb << std::defaultfloat << std::setw(12)
            << l.learnableParams << "\n";
    }
    if (has(args, "spectra"))
      printSpectra(out, r.spectra);
    else if (!r.spectra.empty())
      out << "\n" << r.spectra.size() << " spectra recorded (--spectra shows them)\n";
    return 0;
  }
  if (sub == "compare") {
    if (args.positional.size() < 3)
      throw UsageError("'runs compare' needs at least two run ids");
    std::vector<std::string> ids;
    for (size_t i = 1; i < args.positional.size(); ++i)
      ids.push_back(store.resolveId(args.positional[i]));
    RunComparison c = store.compareRuns(ids);
    if (json) {
      nlohmann::json rows = nlohmann::json::array();
      for (const ComparisonRow &row : c.rows)
        rows.push_back({{"group", row.group},
                        {"name", row.name},
                        {"cells", row.cells},
                        {"differs", row.differs}});
      out << nlohmann::json{{"runs", c.runIds}, {"rows", rows}}.dump() << "\n";
      return 0;
    }
    out << formatComparison(c, has(args, "differences"));
    return 0;
  }
  if (sub == "delete") {
    if (args.positional.size() != 2)
      throw UsageError("'runs delete' needs one run id");
    const std::string id = store.resolveId(args.positional[1]);
    store.deleteRun(id);
    out << "deleted run " << id << "\n";
    return 0;
  }
  throw UsageError("unknown 'runs' subcommand '" + sub + "' (list, show, compare, delete)");
}

int commandMethods(const Arguments &args, std::ostream &out) {
  if (has(args, "json")) {
    nlohmann::json list = nlohmann::json::array();
    for (const MethodInfo &m : methodCatalog()) {
      nlohmann::json hyper = nlohmann::json::array(), defaults = nlohmann::json::object(),
                     presets = nlohmann::json::object();
      for (const HyperparameterSpec &h : m.hyperparameters) {
        defaults[h.name] =
            nlohmann::json::parse(hyperparametersToJson({{h.name, h.defaultValue}}))[h.name];
        hyper.push_back({{"name", h.name},
                         {"default", defaults[h.name]},
                         {"minimum", h.minimum},
                         {"maximum", h.maximum},
                         {"help", h.help}});
      }
      for (const MethodPreset &p : m.presets)
        presets[p.name] = {
            {"hyperparameters", nlohmann::json::parse(hyperparametersToJson(p.hyperparameters))},
            {"samples", p.samples},
            {"seq_len", p.seqLen},
            {"eval_seq_len", p.evalSeqLen}};
      list.push_back({{"name", m.name},
                      {"title", m.title},
                      {"help", m.summary},
                      {"can_resume", m.canResume},
                      {"trains_blocks", m.trainsBlocks},
                      {"defaults", defaults},
                      {"hyperparameters", hyper},
                      {"presets", presets}});
    }
    out << nlohmann::json{{"methods", list}, {"schemes", schemePresets()}}.dump() << "\n";
    return 0;
  }
  for (const MethodInfo &m : methodCatalog()) {
    out << m.name << ": " << m.title << (m.canResume ? " (resumable)" : "") << "\n  " << m.summary
        << "\n";
    for (const HyperparameterSpec &h : m.hyperparameters)
      out << "  " << h.name << " = " << optionValueText(h.defaultValue) << "  " << h.help << "\n";
    out << "\n";
  }
  out << "schemes:";
  for (const std::string &s : schemePresets())
    out << " " << s;
  out << "\n";
  return 0;
}

} // namespace lrq::cli
