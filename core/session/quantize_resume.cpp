// Resuming an interrupted quantization run: the saved request, read back and checked.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/common/error.h"
#include "core/common/text_escape.h"
#include "core/data/default_assets.h"
#include "core/runs/run_store.h"
#include "core/session/quantize_job.h"

namespace fs = std::filesystem;

namespace lrq {
namespace {

constexpr const char *kRequestFile = "request.json";

// Run ids become folder and file names (the work folder, the saved scheme). One
// read from a store is checked to be a plain name: "../../x" must not be a path.
const std::string &checkedRunId(const std::string &id) {
  const bool plain = !id.empty() && id.size() <= 128 && id[0] != '.' &&
                     std::all_of(id.begin(), id.end(), [](char ch) {
                       return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                              (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.';
                     });
  if (!plain)
    throw Error("run id '" + printableText(id) +
                "' cannot name a folder (a run id is letters, digits, '-', '_' and '.', not "
                "starting with '.')");
  return id;
}

} // namespace

std::string defaultWorkDir(const std::string &runId) {
  return cacheDirectory() + "/runs/" + checkedRunId(runId);
}

std::string quantizeRequestFile(const std::string &workDir) {
  return (fs::path(workDir) / kRequestFile).string();
}

QuantizeRequest requestForRun(const std::string &runId, const std::string &storePath) {
  RunStore store = RunStore::open(storePath.empty() ? RunStore::defaultPath() : storePath);
  const std::string id = checkedRunId(store.resolveId(runId));
  const RunInfo info = store.getRunInfo(id);
  const MethodInfo &method = methodInfo(info.method);
  QuantizeRequest r;
  r.model = info.model.path;
  r.method = method.name;
  r.storePath = store.path();
  // The scheme as recorded, as the file a request names.
  const fs::path schemes = fs::path(cacheDirectory()) / "schemes";
  std::error_code ec;
  fs::create_directories(schemes, ec);
  const fs::path schemeFile = schemes / ("run-" + id + ".json");
  std::ofstream(schemeFile) << info.schemeJson << "\n";
  r.scheme = schemeFile.string();
  nlohmann::json recorded;
  try {
    recorded = nlohmann::json::parse(info.hyperparametersJson.empty() ? std::string("{}")
                                                                      : info.hyperparametersJson);
  } catch (const nlohmann::json::exception &e) {
    throw Error("run " + id + ": its hyperparameters are not valid JSON: " + e.what());
  }
  for (auto it = recorded.begin(); it != recorded.end(); ++it) {
    if (!method.hyperparameter(it.key()) || it.value().is_object() || it.value().is_array())
      continue;
    r.hyperparameters[it.key()] =
        hyperparametersFromJson(nlohmann::json{{it.key(), it.value()}}.dump())[it.key()];
  }
  r.samples = recorded.value("samples", r.samples);
  r.seqLen = recorded.value("seq_len", r.seqLen);
  // Runs of reconstruction methods recorded before held-out samples existed had none.
  r.heldoutSamples =
      recorded.value("heldout_samples", method.trainsBlocks ? int64_t(0) : r.heldoutSamples);
  r.seed = recorded.value("seed", r.seed);
  const std::string calibration = recorded.value("calibration", std::string());
  if (fs::is_regular_file(calibration, ec))
    r.calibrationText = calibration;
  if (recorded.contains("smoothquant") && recorded["smoothquant"].is_object()) {
    r.smoothQuant = true;
    r.smoothQuantAlpha = recorded["smoothquant"].value("alpha", r.smoothQuantAlpha);
    r.smoothQuantGroups = recorded["smoothquant"].value("groups", r.smoothQuantGroups);
  }
  return r;
}

QuantizeRequest resumeRequest(const std::string &runId, const std::string &storePath,
                              const std::string &workDir) {
  RunStore store = RunStore::open(storePath.empty() ? RunStore::defaultPath() : storePath);
  const std::string id = checkedRunId(store.resolveId(runId));
  const RunInfo info = store.getRunInfo(id);
  if (info.status == RunStatus::Finished)
    throw Error("run " + id + " has finished: there is nothing to resume");
  if (info.status == RunStatus::Running) // its owner is alive: interrupted runs resume
    throw RunStillRunning(id, info.owner, info.heartbeat);
  const std::string dir = workDir.empty() ? defaultWorkDir(id) : workDir;
  const std::string path = quantizeRequestFile(dir);
  if (!fs::exists(path))
    throw Error("run " + id + " cannot be resumed: " + dir +
                " holds no saved request (only block-wise reconstruction methods checkpoint: "
                "flexround, lrq, rtn-learned-step; a run started with its own work folder "
                "needs that folder again)");
  QuantizeRequest r;
  try {
    const nlohmann::json j = nlohmann::json::parse(readTextFile(path));
    if (j.at("run_id").get<std::string>() != id)
      throw FileError(path, "belongs to run " + j.at("run_id").get<std::string>() + ", not " + id);
    r = requestFromJson(j.at("request").dump());
  } catch (const nlohmann::json::exception &e) {
    throw FileError(path, std::string("damaged saved request: ") + e.what());
  } catch (const FileError &) {
    throw;
  } catch (const Error &e) {
    throw FileError(path, std::string("damaged saved request: ") + e.what());
  }
  r.storePath = store.path();
  r.workDir = dir;
  r.resumeRunId = id;
  if (info.method != r.method)
    throw FileError(path, "names method " + r.method + " but run " + id + " used " + info.method);
  // No checkpoint yet (interrupted before its first block finished): the
  // reconstruction starts again from block 0, into the same run.
  return r;
}

} // namespace lrq
