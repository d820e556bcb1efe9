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
#include "core/session/model_session.h"
#include "core/session/quantize_request.h"

namespace lrq {

struct QuantizeOutcome {
  std::string runId;
  std::string storePath;
  std::map<std::string, double> metrics; // perplexity, reference_perplexity, kl, top1, ...
  double seconds = 0;
  std::string exportDir;
  std::string packedPath;
  std::string ggufPath;
  std::string compressedTensorsDir;
};

// Resuming. A run of a method that checkpoints (MethodInfo::canResume) saves
// its request in its work directory (quantizeRequestFile) and keeps its
// checkpoint there until it is recorded finished. resumeRequest reads the
// request back for run `runId` of the store, from workDir or else the run's
// default work directory, and returns it with resumeRunId set; it throws
// lrq::RunStillRunning when the run's process is alive, lrq::Error with a
// clear message when the run is unknown or finished or left no saved request.
// A run interrupted before its first checkpoint resumes from block 0.
QuantizeRequest resumeRequest(const std::string &runId, const std::string &storePath,
                              const std::string &workDir = {});
std::string defaultWorkDir(const std::string &runId);
// The request that reproduces a recorded run (same model, method, scheme,
// hyperparameters, calibration and seed; evaluation and outputs left at their
// defaults). The scheme is written to a file under the cache directory. Throws
// lrq::Error when the run is unknown or its record lacks what a request needs.
QuantizeRequest requestForRun(const std::string &runId, const std::string &storePath);
std::string quantizeRequestFile(const std::string &workDir);

// Runs the whole job in named stages (check, open the store, calibrate, run the
// method, install activation quantizers, record layers and spectra, evaluate,
// export, record); throws lrq::Error (the run is recorded as failed once it
// exists) or lrq::Cancelled (recorded as cancelled). Nothing is recorded for a
// request that fails its checks or its calibration.
QuantizeOutcome runQuantizeJob(const QuantizeRequest &request, ProgressObserver *observer = nullptr,
                               const CancelToken *cancel = nullptr);
// The same on a model that is already open (request.model is ignored): its
// weights are the full-precision reference and stay untouched; the quantized
// weights are a copy.
QuantizeOutcome runQuantizeJob(const QuantizeRequest &request, const ModelSession &model,
                               ProgressObserver *observer = nullptr,
                               const CancelToken *cancel = nullptr);

} // namespace lrq
