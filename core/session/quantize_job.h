#pragma once
// One quantization run from start to finish: load, calibrate, run a method,
// install the scheme's activation quantizers, evaluate against the
// full-precision reference, record everything in the run store, export.
// Light header (no LibTorch) for the command line and the desktop app.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/common/progress.h"

namespace lrq {

struct QuantizeRequest {
  std::string model = "default"; // file, directory or "default"
  std::string method = "rtn";
  std::string scheme = "W4A16";           // preset name, or a path to a scheme JSON file
  std::string hyperparametersJson = "{}"; // the user's values over the method's defaults
  std::string calibrationText;            // a .txt path; "" = default calibration text
  int64_t samples = 32;
  int64_t seqLen = 512;
  uint64_t seed = 0;
  bool smoothQuant = false;
  double smoothQuantAlpha = 0.5;
  // Which groups SmoothQuant smooths: "all" (the norm-fed ones and also
  // v_proj -> o_proj and up_proj -> down_proj) or "norm" (the norm-fed ones
  // only, as the authors' reference code). "all" by default: on the default
  // model W8A8 RTN gives perplexity 67.4 with it against 99.3 with "norm".
  std::string smoothQuantGroups = "all";
  bool evaluate = true;
  std::string evaluationText; // a .txt path; "" = default held-out text
  int64_t evalSeqLen = 512;
  int64_t evalMaxWindows = 0;
  // Record per-layer singular values with the run (W, E = W - Ŵ and the method's
  // own: scaled_E, scale_exponent); `lrq runs show ID --spectra` prints them.
  bool spectra = true;
  std::string exportDir;  // HF-layout export with Ŵ; "" = none
  std::string packedPath; // packed integer export (.safetensors); "" = none
  std::string storePath;  // run store file; "" = the default one
  std::string workDir;    // caches and checkpoints; "" = a folder under the cache directory
  // Resume this interrupted run (id or unique prefix in the store) from its
  // checkpoint and record into it; see resumeRequest.
  std::string resumeRunId;
};

struct QuantizeOutcome {
  std::string runId;
  std::string storePath;
  std::map<std::string, double> metrics; // perplexity, reference_perplexity, kl, top1, ...
  double seconds = 0;
  std::string exportDir;
  std::string packedPath;
};

// Names and one-paragraph help of the registered methods, and the scheme presets.
std::vector<std::pair<std::string, std::string>> quantizationMethods();
std::string methodDefaultsJson(const std::string &method);
std::vector<std::string> schemePresets();
// The scheme a request names, as JSON (validates it; throws lrq::Error).
std::string resolveSchemeJson(const std::string &presetOrPath);

// Resuming. A run of a method that checkpoints (block-wise reconstruction:
// flexround, lrq, rtn-learned-step) saves its request in its work directory
// (quantizeRequestFile) until it finishes. resumeRequest reads it back for run
// `runId` of the store, from workDir or else the run's default work directory,
// and returns it with resumeRunId set; it throws lrq::Error with a clear message
// when the run is unknown or finished or left no saved request or checkpoint.
QuantizeRequest resumeRequest(const std::string &runId, const std::string &storePath,
                              const std::string &workDir = {});
// The settings in which two requests differ, as "--option (a vs b)" (paths
// compared absolute; store, work directory and resume flags are not settings).
std::vector<std::string> requestDifferences(const QuantizeRequest &a, const QuantizeRequest &b);
std::string defaultWorkDir(const std::string &runId);
std::string quantizeRequestFile(const std::string &workDir);
std::string quantizeRequestJson(const QuantizeRequest &request, const std::string &runId);

// Runs the whole job; throws lrq::Error (the run is recorded as failed) or
// lrq::Cancelled (recorded as cancelled).
QuantizeOutcome runQuantizeJob(const QuantizeRequest &request, ProgressObserver *observer = nullptr,
                               const CancelToken *cancel = nullptr);

} // namespace lrq
