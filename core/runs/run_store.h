#pragma once
// The run store: every quantization run, recorded in one SQLite file so runs
// can be listed, compared and deleted later, by the command line and by the
// desktop app at the same time (WAL mode, busy timeout).
//
// Layout of the BLOB columns (little-endian, no header):
//   run_blocks.curve            8 bytes per point: int32 iteration, float32 loss
//   run_spectra.singular_values 8 bytes per value: float64
//
// Every method throws lrq::FileError naming the file for storage problems
// (damaged file, disk full, locked longer than the busy timeout) and
// lrq::NoSuchRun for an id not in the store. A RunStore may be shared by
// threads (calls are serialised); separate RunStore objects, in one process or
// several, may use the same file concurrently.
#include <memory>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/runs/run_record.h"

namespace lrq {

// "no run 'X' in <path>".
class NoSuchRun : public Error {
public:
  NoSuchRun(const std::string &id, const std::string &path)
      : Error("no run '" + id + "' in " + path), id_(id) {}
  const std::string &id() const { return id_; }

private:
  std::string id_;
};

// "run X is still running in process N": a run whose owner is alive cannot be
// taken over (resumed) by another process.
class RunStillRunning : public Error {
public:
  RunStillRunning(const std::string &id, const RunOwner &owner, double heartbeat)
      : Error(stillRunningMessage(id, owner, heartbeat)), owner_(owner) {}
  const RunOwner &owner() const { return owner_; }

private:
  RunOwner owner_;
};

struct RunStoreOptions {
  // How long a write waits for another writer (or a checkpoint) before failing.
  int busyTimeoutMs = 10000;
  // When a run stored as running reads back as interrupted (run_liveness.h).
  LivenessOptions liveness;
  // For reading only (listing, showing, comparing): nothing is created or
  // written. A missing store is an lrq::FileError ("no such run store"); a
  // store in a read-only directory can be read. A store of an older schema is
  // opened for writing once, to migrate it.
  bool readOnly = false;
};

class RunStore {
public:
  // The schema version this build writes; open() migrates older stores to it.
  // Columns that older builds can ignore (the owner and heartbeat of a run,
  // its exports) are added by open() where missing, without a new version, so
  // that older builds keep opening the store.
  static constexpr int kSchemaVersion = 1;

  // Opens (creating if needed, with its parent directories) the store at path.
  // Throws lrq::FileError for a file that is not an SQLite database, an SQLite
  // database that is not a run store, or a store written by a newer version.
  static RunStore open(const std::string &path, const RunStoreOptions &options = {});
  // lrq::dataDirectory() + "/runs.sqlite".
  static std::string defaultPath();

  RunStore(RunStore &&) noexcept;
  RunStore &operator=(RunStore &&) noexcept;
  RunStore(const RunStore &) = delete;
  RunStore &operator=(const RunStore &) = delete;
  ~RunStore();

  const std::string &path() const;
  int schemaVersion() const; // as found in the file after opening (== kSchemaVersion)

  // Records a new run and returns its id. An empty id or created time is
  // generated (now, UTC); engineVersion defaults to defaultEngineVersion();
  // schemeJson and hyperparametersJson must be valid JSON or empty ("{}").
  // status and metrics are stored as given; blockCount is ignored.
  std::string createRun(const RunInfo &info);

  // Per-block results; a block index recorded before is replaced (a resumed
  // run redoes the block it was interrupted in).
  void appendBlock(const std::string &id, const BlockRecord &block);
  void appendBlocks(const std::string &id, const std::vector<BlockRecord> &blocks);
  // Layer statistics and spectra; an existing (block, role[, kind]) is replaced.
  void appendLayerStats(const std::string &id, const LayerStats &stats);
  void appendLayerStats(const std::string &id, const std::vector<LayerStats> &stats);
  void appendSpectrum(const std::string &id, const SpectrumRecord &spectrum);
  void appendSpectra(const std::string &id, const std::vector<SpectrumRecord> &spectra);
  // Sets (or overwrites) a final metric. NaN is kept as NaN.
  void setMetric(const std::string &id, const std::string &name, double value);
  void setNotes(const std::string &id, const std::string &notes);
  // Sets the final status and error text (empty for a finished run). A
  // totalSeconds < 0 keeps the stored timing. Status Running reopens a run
  // (resume), clears its error and makes this process its owner; Interrupted
  // is never stored (lrq::Error).
  void finishRun(const std::string &id, RunStatus status, const std::string &error = {},
                 double totalSeconds = -1);
  // Liveness: the owner says it is still at work (the run's heartbeat := now).
  void heartbeat(const std::string &id);
  // Takes over a run to resume it, in one transaction: throws RunStillRunning
  // when its owner is alive, lrq::Error when it has finished; otherwise marks
  // it running, owned by this process, and returns it as it was before.
  RunInfo claimRun(const std::string &id);
  // What the run exported (any may be "" for none).
  void setExports(const std::string &id, const std::string &exportDir,
                  const std::string &packedPath, const std::string &ggufPath = {},
                  const std::string &compressedTensorsDir = {});

  // Newest first. Runs stored as running show as Interrupted when their owner
  // is gone (also for the status filter).
  std::vector<RunInfo> listRuns(const RunFilter &filter = {}) const;
  RunInfo getRunInfo(const std::string &id) const;
  RunRecord getRun(const std::string &id) const; // blocks, layers and spectra too
  bool hasRun(const std::string &id) const;
  // The full id of the one run whose id starts with prefix (an exact id always
  // wins); throws NoSuchRun when none matches, lrq::Error when several do.
  std::string resolveId(const std::string &prefix) const;

  // Rows: run properties, metrics, reconstruction totals, then every
  // hyperparameter and scheme field (flattened, "a.b") that any run has.
  RunComparison compareRuns(const std::vector<std::string> &ids) const;

  // Deletes the run and everything recorded for it.
  void deleteRun(const std::string &id);

private:
  struct Impl;
  explicit RunStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace lrq
