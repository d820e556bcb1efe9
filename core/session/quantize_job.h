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
  bool evaluate = true;
  std::string evaluationText; // a .txt path; "" = default held-out text
  int64_t evalSeqLen = 512;
  int64_t evalMaxWindows = 0;
  std::string exportDir;  // HF-layout export with Ŵ; "" = none
  std::string packedPath; // packed integer export (.safetensors); "" = none
  std::string storePath;  // run store file; "" = the default one
  std::string workDir;    // caches and checkpoints; "" = a folder under the cache directory
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

// Runs the whole job; throws lrq::Error (the run is recorded as failed) or
// lrq::Cancelled (recorded as cancelled).
QuantizeOutcome runQuantizeJob(const QuantizeRequest &request, ProgressObserver *observer = nullptr,
                               const CancelToken *cancel = nullptr);

} // namespace lrq
