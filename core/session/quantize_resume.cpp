// Resuming an interrupted quantization run: the saved request, read back and checked.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/recon/block_reconstructor.h"
#include "core/runs/run_store.h"
#include "core/session/quantize_job.h"

namespace fs = std::filesystem;

namespace lrq {
namespace {

constexpr const char *kRequestFile = "request.json";

// Paths made absolute, so a run can be resumed from another folder. A scheme is
// a preset name unless a file of that name exists; "default" names the model.
QuantizeRequest normalized(QuantizeRequest r) {
  auto absolute = [](std::string &path) {
    if (!path.empty())
      path = fs::absolute(path).lexically_normal().string();
  };
  if (r.model != "default")
    absolute(r.model);
  std::error_code ec;
  if (fs::is_regular_file(r.scheme, ec))
    absolute(r.scheme);
  absolute(r.calibrationText);
  absolute(r.evaluationText);
  absolute(r.exportDir);
  absolute(r.packedPath);
  absolute(r.storePath);
  absolute(r.workDir);
  return r;
}

nlohmann::json hyperOf(const std::string &text, const std::string &source) {
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(text.empty() ? std::string("{}") : text);
  } catch (const nlohmann::json::exception &e) {
    throw FileError(source, std::string("hyperparameters are not valid JSON: ") + e.what());
  }
  if (h.is_object())
    h.erase("resume"); // how a run starts, not what it computes
  return h;
}

} // namespace

std::string defaultWorkDir(const std::string &runId) {
  return cacheDirectory() + "/runs/" + runId;
}

std::string quantizeRequestFile(const std::string &workDir) {
  return (fs::path(workDir) / kRequestFile).string();
}

std::string quantizeRequestJson(const QuantizeRequest &request, const std::string &runId) {
  const QuantizeRequest r = normalized(request);
  return nlohmann::json{{"run_id", runId},
                        {"model", r.model},
                        {"method", r.method},
                        {"scheme", r.scheme},
                        {"hyperparameters", hyperOf(r.hyperparametersJson, "request")},
                        {"calibration_text", r.calibrationText},
                        {"samples", r.samples},
                        {"seq_len", r.seqLen},
                        {"seed", r.seed},
                        {"smoothquant", r.smoothQuant},
                        {"smoothquant_alpha", r.smoothQuantAlpha},
                        {"smoothquant_groups", r.smoothQuantGroups},
                        {"evaluate", r.evaluate},
                        {"evaluation_text", r.evaluationText},
                        {"eval_seq_len", r.evalSeqLen},
                        {"eval_max_windows", r.evalMaxWindows},
                        {"spectra", r.spectra},
                        {"export_dir", r.exportDir},
                        {"packed_path", r.packedPath},
                        {"store", r.storePath},
                        {"work_dir", r.workDir}}
      .dump(2);
}

std::vector<std::string> requestDifferences(const QuantizeRequest &first,
                                            const QuantizeRequest &second) {
  const QuantizeRequest a = normalized(first), b = normalized(second);
  std::vector<std::string> out;
  auto check = [&](const char *option, const auto &x, const auto &y) {
    if (x != y) {
      std::ostringstream s;
      s << option << " (" << x << " vs " << y << ")";
      out.push_back(s.str());
    }
  };
  check("MODEL", a.model, b.model);
  check("--method", a.method, b.method);
  check("--scheme", a.scheme, b.scheme);
  const nlohmann::json ha = hyperOf(a.hyperparametersJson, "request"),
                       hb = hyperOf(b.hyperparametersJson, "request");
  if (ha != hb)
    out.push_back("--hyper (" + ha.dump() + " vs " + hb.dump() + ")");
  check("--calib", a.calibrationText, b.calibrationText);
  check("--nsamples", a.samples, b.samples);
  check("--seq-len", a.seqLen, b.seqLen);
  check("--seed", a.seed, b.seed);
  check("--smoothquant", a.smoothQuant, b.smoothQuant);
  check("--alpha", a.smoothQuantAlpha, b.smoothQuantAlpha);
  check("--smooth-groups", a.smoothQuantGroups, b.smoothQuantGroups);
  check("--no-eval", !a.evaluate, !b.evaluate);
  check("--text", a.evaluationText, b.evaluationText);
  check("--eval-seq-len", a.evalSeqLen, b.evalSeqLen);
  check("--eval-windows", a.evalMaxWindows, b.evalMaxWindows);
  check("--no-spectra", !a.spectra, !b.spectra);
  check("--out", a.exportDir, b.exportDir);
  check("--packed", a.packedPath, b.packedPath);
  return out;
}

QuantizeRequest resumeRequest(const std::string &runId, const std::string &storePath,
                              const std::string &workDir) {
  RunStore store = RunStore::open(storePath.empty() ? RunStore::defaultPath() : storePath);
  const std::string id = store.resolveId(runId);
  const RunInfo info = store.getRunInfo(id);
  if (info.status == RunStatus::Finished)
    throw Error("run " + id + " has finished: there is nothing to resume");
  const std::string dir = workDir.empty() ? defaultWorkDir(id) : workDir;
  const std::string path = quantizeRequestFile(dir);
  if (!fs::exists(path))
    throw Error("run " + id + " cannot be resumed: " + dir +
                " holds no saved request (only block-wise reconstruction methods checkpoint: "
                "flexround, lrq, rtn-learned-step; a run started with --work-dir needs the same "
                "--work-dir)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(readTextFile(path));
    QuantizeRequest r;
    if (j.at("run_id").get<std::string>() != id)
      throw FileError(path, "belongs to run " + j.at("run_id").get<std::string>() + ", not " + id);
    r.model = j.at("model").get<std::string>();
    r.method = j.at("method").get<std::string>();
    r.scheme = j.at("scheme").get<std::string>();
    r.hyperparametersJson = j.at("hyperparameters").dump();
    r.calibrationText = j.at("calibration_text").get<std::string>();
    r.samples = j.at("samples").get<int64_t>();
    r.seqLen = j.at("seq_len").get<int64_t>();
    r.seed = j.at("seed").get<uint64_t>();
    r.smoothQuant = j.at("smoothquant").get<bool>();
    r.smoothQuantAlpha = j.at("smoothquant_alpha").get<double>();
    r.smoothQuantGroups = j.value("smoothquant_groups", r.smoothQuantGroups);
    r.evaluate = j.at("evaluate").get<bool>();
    r.evaluationText = j.at("evaluation_text").get<std::string>();
    r.evalSeqLen = j.at("eval_seq_len").get<int64_t>();
    r.evalMaxWindows = j.at("eval_max_windows").get<int64_t>();
    r.spectra = j.value("spectra", r.spectra);
    r.exportDir = j.at("export_dir").get<std::string>();
    r.packedPath = j.at("packed_path").get<std::string>();
    r.storePath = store.path();
    r.workDir = dir;
    r.resumeRunId = id;
    if (info.method != r.method)
      throw FileError(path, "names method " + r.method + " but run " + id + " used " + info.method);
    const std::string state =
        (fs::path(recon::BlockReconstructor::checkpointDir(dir)) / "state.json").string();
    if (!fs::exists(state))
      throw Error("run " + id + " cannot be resumed: no checkpoint in " +
                  recon::BlockReconstructor::checkpointDir(dir) +
                  " (interrupted before its first block finished, or after the reconstruction "
                  "ended); run it again without --resume");
    return r;
  } catch (const nlohmann::json::exception &e) {
    throw FileError(path, std::string("damaged saved request: ") + e.what());
  }
}

} // namespace lrq
