#pragma once
// What the run store keeps about one quantization run. Plain C++ (no LibTorch,
// no Qt) so that the command line and the desktop app can include it.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/runs/run_liveness.h"

namespace lrq {

// Interrupted is never stored: a run stored as Running whose owner process is
// gone (run_liveness.h) reads back as Interrupted.
enum class RunStatus { Running, Finished, Failed, Cancelled, Interrupted };

// "running", "finished", "failed", "cancelled", "interrupted".
const char *runStatusName(RunStatus status);
// Inverse of runStatusName; throws lrq::Error for anything else.
RunStatus parseRunStatus(const std::string &name);

// Which model a run started from. The digest is whatever the caller chose
// ("sha256:<hex>" or the cheaper "size=<bytes>;mtime=<ns>"); see identifyModel.
struct ModelIdentity {
  std::string path;
  std::string digest;
};

// Digest of a model file or directory (directories: every regular file below
// it, by relative path). sha256 = false uses sizes and modification times only,
// which is instant but changes when a file is touched. Throws lrq::FileError.
ModelIdentity identifyModel(const std::string &path, bool sha256);

// The engine's version as built (CMake's PROJECT_VERSION); createRun fills it
// in when the caller leaves RunInfo::engineVersion empty.
const char *defaultEngineVersion();

// One point of a block's reconstruction loss curve. Stored as float32: the
// curve is for plotting; the block's initial and final losses keep doubles.
struct LossPoint {
  int32_t iteration = 0;
  float loss = 0;
};

struct BlockRecord {
  int index = 0;
  double initialLoss = 0; // mean over the training samples
  double finalLoss = 0;
  double seconds = 0;
  std::vector<LossPoint> curve;
  // The same loss on calibration samples never trained on, before and after
  // training (none for runs without held-out samples, and in older stores).
  std::optional<double> heldoutInitialLoss = {};
  std::optional<double> heldoutFinalLoss = {};
};

// Error statistics of one quantized linear. block = -1 for layers outside the
// decoder blocks (embeddings, LM head).
struct LayerStats {
  int block = 0;
  std::string role; // "q_proj", "down_proj", ...
  double mse = 0;
  double sqnrDb = 0;
  int64_t learnableParams = 0;
};

// Singular values of one matrix belonging to a layer. kind is "W", "E",
// "scaled_E" or "scale_exponent" (any other name is kept as given).
struct SpectrumRecord {
  int block = 0;
  std::string role;
  std::string kind;
  std::vector<double> values;
};

// A run without its bulky parts: what `runs list` shows.
struct RunInfo {
  std::string id;      // e.g. "20261123-101502-ab12"; sorts by creation time
  std::string created; // ISO-8601 UTC, "2026-11-23T10:15:02.123Z"
  RunStatus status = RunStatus::Running;
  ModelIdentity model;
  std::string method;
  std::string schemeJson;          // the scheme as data
  std::string hyperparametersJson; // every hyperparameter of the method
  std::string engineVersion;
  double totalSeconds = 0;
  std::map<std::string, double> metrics; // "perplexity", "kl", "top1", ...
  std::string error;                     // why a run failed (or was cancelled)
  std::string notes;
  int blockCount = 0; // number of block records (filled when read back)
  // Liveness: the process that runs (or last ran) it and when it last said so
  // (seconds since the Unix epoch; 0 = not recorded). createRun records this
  // process when owner.pid is 0 and now when heartbeat is 0.
  RunOwner owner;
  double heartbeat = 0;
  // What the run exported, recorded once each export is complete ("" = none).
  std::string exportDir;
  std::string packedPath;
  std::string ggufPath;
  std::string compressedTensorsDir;
};

// A run with everything recorded for it.
struct RunRecord : RunInfo {
  std::vector<BlockRecord> blocks;     // by block index
  std::vector<LayerStats> layers;      // by block, then in the order recorded
  std::vector<SpectrumRecord> spectra; // by block, then in the order recorded
};

// Optional filters for listing runs; empty fields match everything.
struct RunFilter {
  std::string model;  // matches the model's path or its digest exactly
  std::string method; // exact method name
  std::optional<RunStatus> status;
  int limit = 0; // at most this many (newest first); 0 = all
};

// Runs side by side: one column per run, one row per property.
struct ComparisonRow {
  std::string group;              // "run", "metric", "reconstruction", "hyperparameter", "scheme"
  std::string name;               // e.g. "perplexity", "rank", "weight.bits"
  std::vector<std::string> cells; // one per run; "" where the run lacks it
  std::vector<std::optional<double>> values; // the number behind a cell, where there is one
  bool differs = false;                      // not all cells equal
};

struct RunComparison {
  std::vector<std::string> runIds; // column headers
  std::vector<ComparisonRow> rows;
  // The row with this group and name, or nullptr.
  const ComparisonRow *find(const std::string &group, const std::string &name) const;
};

// Plain-text table for terminals: a header line of run ids, then one line per
// row ("group name  cell  cell ..."). onlyDifferences keeps the "run" and
// "metric" rows and those other rows whose cells differ.
std::string formatComparison(const RunComparison &comparison, bool onlyDifferences = false);

} // namespace lrq
