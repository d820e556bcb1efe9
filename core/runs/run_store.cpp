#include "core/runs/run_store.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <limits>
#include <mutex>
#include <random>
#include <system_error>

#include "core/common/json_limits.h"
#include "core/data/default_assets.h"
#include "core/runs/run_blob.h"
#include "core/runs/run_comparison.h"
#include "core/runs/run_liveness.h"
#include "core/runs/sqlite_db.h"

namespace fs = std::filesystem;

namespace lrq {

using runs_detail::Database;
using runs_detail::Statement;
using runs_detail::Transaction;

namespace {

// One entry per schema version: migration i turns version i into version i+1.
// A later version appends a statement list here and bumps kSchemaVersion;
// never edit an entry that has shipped.
const char *const kMigrations[] = {
    // 0 -> 1
    R"sql(
CREATE TABLE lrq_schema (version INTEGER NOT NULL);
CREATE TABLE runs (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  created TEXT NOT NULL,
  status TEXT NOT NULL,
  model_path TEXT NOT NULL,
  model_digest TEXT NOT NULL,
  method TEXT NOT NULL,
  scheme_json TEXT NOT NULL,
  hyperparameters_json TEXT NOT NULL,
  engine_version TEXT NOT NULL,
  total_seconds REAL,
  error TEXT NOT NULL DEFAULT '',
  notes TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_by_created ON runs (created, seq);
CREATE TABLE run_metrics (
  run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
  name TEXT NOT NULL,
  value REAL,
  PRIMARY KEY (run_seq, name)
);
CREATE TABLE run_blocks (
  run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
  block INTEGER NOT NULL,
  initial_loss REAL,
  final_loss REAL,
  seconds REAL,
  point_count INTEGER NOT NULL,
  curve BLOB NOT NULL,
  PRIMARY KEY (run_seq, block)
);
CREATE TABLE run_layers (
  run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
  block INTEGER NOT NULL,
  role TEXT NOT NULL,
  mse REAL,
  sqnr_db REAL,
  learnable_params INTEGER NOT NULL,
  PRIMARY KEY (run_seq, block, role)
);
CREATE TABLE run_spectra (
  run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
  block INTEGER NOT NULL,
  role TEXT NOT NULL,
  kind TEXT NOT NULL,
  value_count INTEGER NOT NULL,
  singular_values BLOB NOT NULL,
  PRIMARY KEY (run_seq, block, role, kind)
);
INSERT INTO lrq_schema (version) VALUES (0);
)sql",
};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == RunStore::kSchemaVersion,
              "one migration per schema version");

const char *const kRunColumns =
    "seq, id, created, status, model_path, model_digest, method, scheme_json, "
    "hyperparameters_json, engine_version, total_seconds, error, notes, "
    "(SELECT count(*) FROM run_blocks b WHERE b.run_seq = runs.seq)";

// Columns added after schema version 1 shipped. Older builds ignore them, so
// they need no new version: open() adds the missing ones.
struct AddedColumn {
  const char *table;
  const char *name;
  const char *type;
};
const AddedColumn kAddedColumns[] = {
    {"runs", "owner_pid", "INTEGER"},
    {"runs", "owner_host", "TEXT"},
    {"runs", "owner_start", "TEXT"},
    {"runs", "heartbeat", "REAL"},
    {"runs", "export_dir", "TEXT"},
    {"runs", "packed_path", "TEXT"},
    {"runs", "gguf_path", "TEXT"},
    {"runs", "compressed_tensors_dir", "TEXT"},
    // The reconstruction loss on held-out calibration samples (NULL: none).
    {"run_blocks", "heldout_initial_loss", "REAL"},
    {"run_blocks", "heldout_final_loss", "REAL"},
};
const char *const kAddedSelect =
    ", owner_pid, owner_host, owner_start, heartbeat, export_dir, packed_path, gguf_path, "
    "compressed_tensors_dir";
const char *const kAddedNulls = ", NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL";

struct Timestamp {
  std::string iso;    // 2026-11-23T10:15:02.123Z
  std::string idStem; // 20261123-101502
};

Timestamp nowUtc() {
  using namespace std::chrono;
  const int64_t ms = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm t{};
  gmtime_r(&secs, &t);
  char iso[96], stem[96];
  std::snprintf(iso, sizeof iso, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900,
                t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                static_cast<int>(ms % 1000));
  std::snprintf(stem, sizeof stem, "%04d%02d%02d-%02d%02d%02d", t.tm_year + 1900, t.tm_mon + 1,
                t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec);
  return {iso, stem};
}

std::string jsonOrEmptyObject(const std::string &text, const char *what) {
  if (text.empty())
    return "{}";
  if (!nlohmann::json::accept(text))
    throw Error(std::string("run ") + what + " is not valid JSON: " + text.substr(0, 80));
  // Readers walk these documents recursively: keep them shallow.
  if (const std::string problem = jsonLimitProblem(text, defaultJsonLimits()); !problem.empty())
    throw Error(std::string("run ") + what + ": " + problem);
  return text;
}

RunInfo readRunInfo(const Statement &q) {
  RunInfo info;
  info.id = q.text(1);
  info.created = q.text(2);
  info.status = parseRunStatus(q.text(3));
  info.model.path = q.text(4);
  info.model.digest = q.text(5);
  info.method = q.text(6);
  info.schemeJson = q.text(7);
  info.hyperparametersJson = q.text(8);
  info.engineVersion = q.text(9);
  info.totalSeconds = q.real(10);
  info.error = q.text(11);
  info.notes = q.text(12);
  info.blockCount = static_cast<int>(q.integer(13));
  info.owner.pid = q.isNull(14) ? 0 : q.integer(14);
  info.owner.host = q.text(15);
  info.owner.start = q.text(16);
  info.heartbeat = q.isNull(17) ? 0 : q.real(17);
  info.exportDir = q.text(18);
  info.packedPath = q.text(19);
  info.ggufPath = q.text(20);
  info.compressedTensorsDir = q.text(21);
  return info;
}

} // namespace

struct RunStore::Impl {
  std::unique_ptr<Database> db;
  int version = 0;
  std::mutex mutex;
  std::mt19937_64 rng{std::random_device{}()};
  LivenessOptions liveness;
  // kAddedColumns exist (false: a store we could not add them to), by table.
  bool addedColumns = false;   // runs
  bool heldoutColumns = false; // run_blocks

  void noteAddedColumns() {
    addedColumns = missingColumns("runs").empty();
    heldoutColumns = missingColumns("run_blocks").empty();
  }

  const std::string &path() const { return db->path(); }

  std::string runColumns() const {
    return std::string(kRunColumns) + (addedColumns ? kAddedSelect : kAddedNulls);
  }

  // The added columns of `table` ("" = every table) the store lacks.
  std::vector<const AddedColumn *> missingColumns(const std::string &table = "") {
    std::vector<const AddedColumn *> missing;
    for (const char *t : {"runs", "run_blocks"}) {
      if (!table.empty() && table != t)
        continue;
      Statement q(*db, (std::string("SELECT name FROM pragma_table_info('") + t + "')").c_str());
      std::vector<std::string> have;
      while (q.step())
        have.push_back(q.text(0));
      for (const AddedColumn &c : kAddedColumns)
        if (std::string(c.table) == t && std::find(have.begin(), have.end(), c.name) == have.end())
          missing.push_back(&c);
    }
    return missing;
  }

  // Adds the columns an older build's store lacks. A store that cannot be
  // written (read-only) still reads: its runs then have no owner, its blocks
  // no held-out loss.
  void addMissingColumns() {
    if (!missingColumns().empty()) {
      try {
        Transaction txn(*db, true);
        for (const AddedColumn *c : missingColumns()) // again: another process may have
          db->exec(std::string("ALTER TABLE ") + c->table + " ADD COLUMN " + c->name + " " +
                       c->type,
                   std::string("adding column ") + c->name + " to the run store");
        txn.commit();
      } catch (const Error &e) {
        spdlog::warn("{} (runs read from it may show no owner and no held-out loss)", e.what());
      }
    }
    noteAddedColumns();
  }

  // A run stored as running whose owner is gone reads as interrupted.
  void deriveStatus(RunInfo &info, double now) const {
    if (info.status == RunStatus::Running &&
        runOwnerState(info.owner, info.heartbeat, parseIsoUtc(info.created), now, liveness) ==
            OwnerState::Gone)
      info.status = RunStatus::Interrupted;
  }

  // This process owns the run from now on.
  void takeOwnership(int64_t seq) {
    if (!addedColumns)
      return;
    const RunOwner &me = currentRunOwner();
    Statement q(*db, "UPDATE runs SET owner_pid = ?, owner_host = ?, owner_start = ?, "
                     "heartbeat = ? WHERE seq = ?");
    q.bind(1, me.pid).bind(2, me.host).bind(3, me.start).bind(4, unixNow()).bind(5, seq).run();
  }

  int readVersion() {
    Statement hasTable(*db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                            "name = 'lrq_schema'");
    hasTable.step();
    if (hasTable.integer(0) == 0) {
      Statement tables(*db, "SELECT count(*) FROM sqlite_master WHERE type = 'table'");
      tables.step();
      if (tables.integer(0) != 0)
        throw FileError(path(), "an SQLite database, but not an LRQ run store");
      return 0;
    }
    Statement q(*db, "SELECT version FROM lrq_schema");
    if (!q.step())
      throw FileError(path(), "damaged run store (no schema version)");
    return static_cast<int>(q.integer(0));
  }

  void checkNotNewer(int found) const {
    if (found > kSchemaVersion)
      throw FileError(path(), "run store schema version " + std::to_string(found) +
                                  " is newer than this build understands (" +
                                  std::to_string(kSchemaVersion) +
                                  "); use a newer LRQ Workbench to open it");
    if (found < 0)
      throw FileError(path(), "damaged run store (schema version " + std::to_string(found) + ")");
  }

  void migrate() {
    int found = readVersion(); // also makes SQLite read the header: garbage fails here
    checkNotNewer(found);
    if (found == kSchemaVersion) {
      version = found;
      return;
    }
    if (found == 0) // empty file: let deleted runs give their pages back
      db->exec("PRAGMA auto_vacuum = INCREMENTAL", "setting up the run store");
    Transaction txn(*db, true);
    found = readVersion(); // another process may have migrated meanwhile
    checkNotNewer(found);
    for (int v = found; v < kSchemaVersion; ++v) {
      db->exec(kMigrations[v],
               "migrating the run store to schema version " + std::to_string(v + 1));
      spdlog::debug("run store {}: schema {} -> {}", path(), v, v + 1);
    }
    Statement set(*db, "UPDATE lrq_schema SET version = ?");
    set.bind(1, kSchemaVersion).run();
    txn.commit();
    version = kSchemaVersion;
  }

  int64_t seqOf(const std::string &id) {
    Statement q(*db, "SELECT seq FROM runs WHERE id = ?");
    q.bind(1, id);
    if (!q.step())
      throw NoSuchRun(id, path());
    return q.integer(0);
  }

  void insertBlock(int64_t seq, const BlockRecord &b) {
    Statement q(*db, heldoutColumns
                         ? "INSERT OR REPLACE INTO run_blocks (run_seq, block, initial_loss, "
                           "final_loss, seconds, point_count, curve, heldout_initial_loss, "
                           "heldout_final_loss) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                         : "INSERT OR REPLACE INTO run_blocks (run_seq, block, initial_loss, "
                           "final_loss, seconds, point_count, curve) VALUES (?, ?, ?, ?, ?, ?, ?)");
    q.bind(1, seq)
        .bind(2, b.index)
        .bind(3, b.initialLoss)
        .bind(4, b.finalLoss)
        .bind(5, b.seconds)
        .bind(6, static_cast<int64_t>(b.curve.size()))
        .bindBlob(7, runs_detail::encodeCurve(b.curve));
    if (heldoutColumns) { // none is NULL (as NaN is: SQLite has no NaN)
      const double none = std::numeric_limits<double>::quiet_NaN();
      q.bind(8, b.heldoutInitialLoss.value_or(none)).bind(9, b.heldoutFinalLoss.value_or(none));
    }
    q.run();
  }

  void insertLayer(int64_t seq, const LayerStats &l) {
    Statement q(*db, "INSERT OR REPLACE INTO run_layers (run_seq, block, role, mse, sqnr_db, "
                     "learnable_params) VALUES (?, ?, ?, ?, ?, ?)");
    q.bind(1, seq)
        .bind(2, l.block)
        .bind(3, l.role)
        .bind(4, l.mse)
        .bind(5, l.sqnrDb)
        .bind(6, l.learnableParams)
        .run();
  }

  void insertSpectrum(int64_t seq, const SpectrumRecord &s) {
    Statement q(*db, "INSERT OR REPLACE INTO run_spectra (run_seq, block, role, kind, "
                     "value_count, singular_values) VALUES (?, ?, ?, ?, ?, ?)");
    q.bind(1, seq)
        .bind(2, s.block)
        .bind(3, s.role)
        .bind(4, s.kind)
        .bind(5, static_cast<int64_t>(s.values.size()))
        .bindBlob(6, runs_detail::encodeDoubles(s.values))
        .run();
  }

  void insertMetric(int64_t seq, const std::string &name, double value) {
    Statement q(*db, "INSERT OR REPLACE INTO run_metrics (run_seq, name, value) VALUES (?, ?, ?)");
    q.bind(1, seq).bind(2, name).bind(3, value).run();
  }

  void readMetrics(int64_t seq, RunInfo &info) {
    Statement q(*db, "SELECT name, value FROM run_metrics WHERE run_seq = ? ORDER BY name");
    q.bind(1, seq);
    while (q.step())
      info.metrics[q.text(0)] = q.real(1);
  }

  // Reads the run row; returns its seq.
  int64_t readInfo(const std::string &id, RunInfo &info) {
    Statement q(*db, ("SELECT " + runColumns() + " FROM runs WHERE id = ?").c_str());
    q.bind(1, id);
    if (!q.step())
      throw NoSuchRun(id, path());
    info = readRunInfo(q);
    deriveStatus(info, unixNow());
    const int64_t seq = q.integer(0);
    readMetrics(seq, info);
    return seq;
  }

  // One write transaction on an existing run.
  template <typename Fn> void write(const std::string &id, Fn &&fn) {
    std::lock_guard<std::mutex> lock(mutex);
    Transaction txn(*db, true);
    const int64_t seq = seqOf(id);
    fn(seq);
    txn.commit();
  }
};

RunStore::RunStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RunStore::RunStore(RunStore &&) noexcept = default;
RunStore &RunStore::operator=(RunStore &&) noexcept = default;
RunStore::~RunStore() = default;

RunStore RunStore::open(const std::string &path, const RunStoreOptions &options) {
  if (path.empty())
    throw Error("run store path is empty");
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec))
    throw FileError(path, "is a directory, not a run store file");
  if (options.readOnly) {
    if (!fs::exists(p, ec))
      throw FileError(path, "no such run store");
    auto impl = std::make_unique<Impl>();
    impl->db = std::make_unique<Database>(path, options.busyTimeoutMs, /*readOnly=*/true);
    const int found = impl->readVersion();
    impl->checkNotNewer(found);
    if (found == kSchemaVersion) {
      impl->version = found;
      impl->liveness = options.liveness;
      // Read only: a store from before the added columns shows no owners and
      // no held-out losses.
      impl->noteAddedColumns();
      return RunStore(std::move(impl));
    }
    // An empty or older store: opened for writing below, to set it up or migrate it.
  }
  if (p.has_parent_path() && !fs::exists(p.parent_path(), ec)) {
    fs::create_directories(p.parent_path(), ec);
    if (ec)
      throw FileError(path, "cannot create its directory: " + ec.message());
  }
  auto impl = std::make_unique<Impl>();
  impl->db = std::make_unique<Database>(path, options.busyTimeoutMs);
  impl->liveness = options.liveness;
  Database &db = *impl->db;
  db.exec("PRAGMA foreign_keys = ON", "opening the run store");
  impl->migrate();
  impl->addMissingColumns();
  // WAL lets a reader (the desktop app) and a writer (a CLI run) work at once.
  // On file systems without shared memory SQLite keeps its rollback journal,
  // which still works, only with less concurrency.
  {
    Statement wal(db, "PRAGMA journal_mode = WAL");
    if (wal.step() && wal.text(0) != "wal")
      spdlog::warn("{}: WAL mode unavailable (journal mode {}); concurrent access will wait", path,
                   wal.text(0));
  }
  db.exec("PRAGMA synchronous = NORMAL", "opening the run store");
  return RunStore(std::move(impl));
}

std::string RunStore::defaultPath() {
  return lrq::dataDirectory() + "/runs.sqlite";
}

const std::string &RunStore::path() const {
  return impl_->path();
}

int RunStore::schemaVersion() const {
  return impl_->version;
}

std::string RunStore::createRun(const RunInfo &info) {
  const std::string scheme = jsonOrEmptyObject(info.schemeJson, "scheme");
  const std::string hyper = jsonOrEmptyObject(info.hyperparametersJson, "hyperparameters");
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Database &db = *impl_->db;
  Transaction txn(db, true);
  const Timestamp now = nowUtc();
  std::string id = info.id;
  auto exists = [&](const std::string &candidate) {
    Statement q(db, "SELECT 1 FROM runs WHERE id = ?");
    q.bind(1, candidate);
    return q.step();
  };
  if (id.empty()) {
    std::uniform_int_distribution<unsigned> hex(0, 0xffff);
    for (int attempt = 0; id.empty() || exists(id); ++attempt) {
      if (attempt == 64)
        throw FileError(path(), "cannot find a free run id");
      char suffix[8];
      std::snprintf(suffix, sizeof suffix, "%04x", hex(impl_->rng));
      id = now.idStem + "-" + suffix;
    }
  } else if (exists(id)) {
    throw Error("run '" + id + "' already exists in " + path());
  }
  Statement q(db, "INSERT INTO runs (id, created, status, model_path, model_digest, method, "
                  "scheme_json, hyperparameters_json, engine_version, total_seconds, error, "
                  "notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  if (info.status == RunStatus::Interrupted)
    throw Error("run status interrupted is never stored (it is read from a running run's owner)");
  q.bind(1, id)
      .bind(2, info.created.empty() ? now.iso : info.created)
      .bind(3, std::string(runStatusName(info.status)))
      .bind(4, info.model.path)
      .bind(5, info.model.digest)
      .bind(6, info.method)
      .bind(7, scheme)
      .bind(8, hyper)
      .bind(9,
            info.engineVersion.empty() ? std::string(defaultEngineVersion()) : info.engineVersion)
      .bind(10, info.totalSeconds)
      .bind(11, info.error)
      .bind(12, info.notes)
      .run();
  const int64_t seq = sqlite3_last_insert_rowid(db.handle());
  for (const auto &[name, value] : info.metrics)
    impl_->insertMetric(seq, name, value);
  if (impl_->addedColumns) {
    const RunOwner &owner = info.owner.known() ? info.owner : currentRunOwner();
    Statement o(db, "UPDATE runs SET owner_pid = ?, owner_host = ?, owner_start = ?, "
                    "heartbeat = ?, export_dir = ?, packed_path = ?, gguf_path = ?, "
                    "compressed_tensors_dir = ? WHERE seq = ?");
    o.bind(1, owner.pid)
        .bind(2, owner.host)
        .bind(3, owner.start)
        .bind(4, info.heartbeat > 0 ? info.heartbeat : unixNow())
        .bind(5, info.exportDir)
        .bind(6, info.packedPath)
        .bind(7, info.ggufPath)
        .bind(8, info.compressedTensorsDir)
        .bind(9, seq)
        .run();
  }
  txn.commit();
  return id;
}

void RunStore::appendBlock(const std::string &id, const BlockRecord &block) {
  impl_->write(id, [&](int64_t seq) { impl_->insertBlock(seq, block); });
}

void RunStore::appendBlocks(const std::string &id, const std::vector<BlockRecord> &blocks) {
  impl_->write(id, [&](int64_t seq) {
    for (const auto &b : blocks)
      impl_->insertBlock(seq, b);
  });
}

void RunStore::appendLayerStats(const std::string &id, const LayerStats &stats) {
  impl_->write(id, [&](int64_t seq) { impl_->insertLayer(seq, stats); });
}

void RunStore::appendLayerStats(const std::string &id, const std::vector<LayerStats> &stats) {
  impl_->write(id, [&](int64_t seq) {
    for (const auto &s : stats)
      impl_->insertLayer(seq, s);
  });
}

void RunStore::appendSpectrum(const std::string &id, const SpectrumRecord &spectrum) {
  impl_->write(id, [&](int64_t seq) { impl_->insertSpectrum(seq, spectrum); });
}

void RunStore::appendSpectra(const std::string &id, const std::vector<SpectrumRecord> &spectra) {
  impl_->write(id, [&](int64_t seq) {
    for (const auto &s : spectra)
      impl_->insertSpectrum(seq, s);
  });
}

void RunStore::setMetric(const std::string &id, const std::string &name, double value) {
  impl_->write(id, [&](int64_t seq) { impl_->insertMetric(seq, name, value); });
}

void RunStore::setNotes(const std::string &id, const std::string &notes) {
  impl_->write(id, [&](int64_t seq) {
    Statement q(*impl_->db, "UPDATE runs SET notes = ? WHERE seq = ?");
    q.bind(1, notes).bind(2, seq).run();
  });
}

void RunStore::finishRun(const std::string &id, RunStatus status, const std::string &error,
                         double totalSeconds) {
  if (status == RunStatus::Interrupted)
    throw Error("run status interrupted is never stored (it is read from a running run's owner)");
  impl_->write(id, [&](int64_t seq) {
    if (status == RunStatus::Running)
      impl_->takeOwnership(seq);
    Statement q(*impl_->db, "UPDATE runs SET status = ?, error = ? WHERE seq = ?");
    q.bind(1, std::string(runStatusName(status)))
        .bind(2, status == RunStatus::Running ? std::string() : error)
        .bind(3, seq)
        .run();
    if (totalSeconds >= 0) {
      Statement t(*impl_->db, "UPDATE runs SET total_seconds = ? WHERE seq = ?");
      t.bind(1, totalSeconds).bind(2, seq).run();
    }
  });
}

std::vector<RunInfo> RunStore::listRuns(const RunFilter &filter) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Database &db = *impl_->db;
  Transaction txn(db, false);
  Statement q(db, ("SELECT " + impl_->runColumns() +
                   " FROM runs WHERE (?1 IS NULL OR model_path = ?1 OR model_digest = ?1) "
                   "AND (?2 IS NULL OR method = ?2) AND (?3 IS NULL OR status = ?3) "
                   "ORDER BY created DESC, seq DESC LIMIT ?4")
                      .c_str());
  if (!filter.model.empty())
    q.bind(1, filter.model);
  if (!filter.method.empty())
    q.bind(2, filter.method);
  // Running and interrupted runs are both stored as running: the owner decides.
  const bool live = filter.status && (*filter.status == RunStatus::Running ||
                                      *filter.status == RunStatus::Interrupted);
  if (filter.status)
    q.bind(3, std::string(runStatusName(live ? RunStatus::Running : *filter.status)));
  q.bind(4, filter.limit > 0 && !live ? static_cast<int64_t>(filter.limit) : int64_t{-1});
  std::vector<RunInfo> runs;
  std::vector<int64_t> seqs;
  const double now = unixNow();
  while (q.step()) {
    RunInfo info = readRunInfo(q);
    impl_->deriveStatus(info, now);
    if (live && info.status != *filter.status)
      continue;
    runs.push_back(std::move(info));
    seqs.push_back(q.integer(0));
    if (filter.limit > 0 && int(runs.size()) == filter.limit)
      break;
  }
  for (size_t i = 0; i < runs.size(); ++i)
    impl_->readMetrics(seqs[i], runs[i]);
  txn.commit();
  return runs;
}

RunInfo RunStore::getRunInfo(const std::string &id) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Transaction txn(*impl_->db, false);
  RunInfo info;
  impl_->readInfo(id, info);
  txn.commit();
  return info;
}

RunRecord RunStore::getRun(const std::string &id) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Database &db = *impl_->db;
  Transaction txn(db, false); // one snapshot: a concurrent writer never shows half a block
  RunRecord run;
  const int64_t seq = impl_->readInfo(id, run);

  Statement blocks(
      db, (std::string("SELECT block, initial_loss, final_loss, seconds, "
                       "point_count, curve, ") +
           (impl_->heldoutColumns ? "heldout_initial_loss, heldout_final_loss" : "NULL, NULL") +
           " FROM run_blocks WHERE run_seq = ? ORDER BY block")
              .c_str());
  blocks.bind(1, seq);
  while (blocks.step()) {
    BlockRecord b;
    b.index = static_cast<int>(blocks.integer(0));
    b.initialLoss = blocks.real(1);
    b.finalLoss = blocks.real(2);
    b.seconds = blocks.real(3);
    const auto bytes = blocks.blob(5);
    if (static_cast<int64_t>(bytes.size()) != 8 * blocks.integer(4))
      throw FileError(path(), "damaged run store (curve of block " + std::to_string(b.index) +
                                  " of run '" + id + "' has the wrong length)");
    b.curve = runs_detail::decodeCurve(bytes);
    if (!blocks.isNull(6))
      b.heldoutInitialLoss = blocks.real(6);
    if (!blocks.isNull(7))
      b.heldoutFinalLoss = blocks.real(7);
    run.blocks.push_back(std::move(b));
  }

  Statement layers(db, "SELECT block, role, mse, sqnr_db, learnable_params FROM run_layers "
                       "WHERE run_seq = ? ORDER BY block, rowid");
  layers.bind(1, seq);
  while (layers.step()) {
    LayerStats l;
    l.block = static_cast<int>(layers.integer(0));
    l.role = layers.text(1);
    l.mse = layers.real(2);
    l.sqnrDb = layers.real(3);
    l.learnableParams = layers.integer(4);
    run.layers.push_back(std::move(l));
  }

  Statement spectra(db, "SELECT block, role, kind, value_count, singular_values FROM "
                        "run_spectra WHERE run_seq = ? ORDER BY block, rowid");
  spectra.bind(1, seq);
  while (spectra.step()) {
    SpectrumRecord s;
    s.block = static_cast<int>(spectra.integer(0));
    s.role = spectra.text(1);
    s.kind = spectra.text(2);
    const auto bytes = spectra.blob(4);
    if (static_cast<int64_t>(bytes.size()) != 8 * spectra.integer(3))
      throw FileError(path(), "damaged run store (spectrum " + s.kind + " of " + s.role +
                                  " in run '" + id + "' has the wrong length)");
    s.values = runs_detail::decodeDoubles(bytes);
    run.spectra.push_back(std::move(s));
  }
  txn.commit();
  return run;
}

void RunStore::heartbeat(const std::string &id) {
  if (!impl_->addedColumns)
    return;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Statement q(*impl_->db, "UPDATE runs SET heartbeat = ? WHERE id = ?");
  q.bind(1, unixNow()).bind(2, id).run();
  if (sqlite3_changes(impl_->db->handle()) == 0)
    throw NoSuchRun(id, path());
}

RunInfo RunStore::claimRun(const std::string &id) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Transaction txn(*impl_->db, true); // nobody else claims or finishes it meanwhile
  RunInfo info;
  const int64_t seq = impl_->readInfo(id, info);
  if (info.status == RunStatus::Running)
    throw RunStillRunning(id, info.owner, info.heartbeat);
  if (info.status == RunStatus::Finished)
    throw Error("run " + id + " has finished: there is nothing to resume");
  Statement q(*impl_->db, "UPDATE runs SET status = ?, error = '' WHERE seq = ?");
  q.bind(1, std::string(runStatusName(RunStatus::Running))).bind(2, seq).run();
  impl_->takeOwnership(seq);
  txn.commit();
  return info;
}

void RunStore::setExports(const std::string &id, const std::string &exportDir,
                          const std::string &packedPath, const std::string &ggufPath,
                          const std::string &compressedTensorsDir) {
  if (!impl_->addedColumns)
    throw FileError(path(), "cannot record exports in this run store (it could not be upgraded)");
  impl_->write(id, [&](int64_t seq) {
    Statement q(*impl_->db, "UPDATE runs SET export_dir = ?, packed_path = ?, gguf_path = ?, "
                            "compressed_tensors_dir = ? WHERE seq = ?");
    q.bind(1, exportDir)
        .bind(2, packedPath)
        .bind(3, ggufPath)
        .bind(4, compressedTensorsDir)
        .bind(5, seq)
        .run();
  });
}

bool RunStore::hasRun(const std::string &id) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Statement q(*impl_->db, "SELECT 1 FROM runs WHERE id = ?");
  q.bind(1, id);
  return q.step();
}

std::string RunStore::resolveId(const std::string &prefix) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Database &db = *impl_->db;
  {
    Statement exact(db, "SELECT 1 FROM runs WHERE id = ?");
    exact.bind(1, prefix);
    if (exact.step())
      return prefix;
  }
  // substr() rather than LIKE/GLOB: the prefix may hold wildcard characters.
  Statement q(db, "SELECT id FROM runs WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id");
  q.bind(1, prefix);
  std::vector<std::string> matches;
  while (q.step())
    matches.push_back(q.text(0));
  if (prefix.empty() || matches.empty())
    throw NoSuchRun(prefix, path());
  if (matches.size() > 1)
    throw Error("run id '" + prefix + "' is ambiguous in " + path() + " (" +
                std::to_string(matches.size()) + " runs match, e.g. " + matches[0] + ", " +
                matches[1] + ")");
  return matches[0];
}

RunComparison RunStore::compareRuns(const std::vector<std::string> &ids) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Database &db = *impl_->db;
  Transaction txn(db, false);
  std::vector<RunInfo> runs(ids.size());
  std::vector<runs_detail::RunTotals> totals(ids.size());
  // The held-out sums go with the training sum over the same blocks, for the ratio.
  Statement blocks(
      db, (std::string("SELECT count(*), total(initial_loss), total(final_loss), "
                       "total(seconds), ") +
           (impl_->heldoutColumns ? "count(heldout_final_loss), total(heldout_initial_loss), "
                                    "total(heldout_final_loss), total(CASE WHEN heldout_final_loss "
                                    "IS NOT NULL THEN final_loss END)"
                                  : "0, 0, 0, 0") +
           " FROM run_blocks WHERE run_seq = ?")
              .c_str());
  Statement layers(db, "SELECT count(*), sum(learnable_params), avg(sqnr_db), avg(mse) "
                       "FROM run_layers WHERE run_seq = ?");
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t seq = impl_->readInfo(ids[i], runs[i]);
    runs_detail::RunTotals &t = totals[i];
    blocks.bind(1, seq);
    if (blocks.step()) {
      t.blocks = static_cast<int>(blocks.integer(0));
      t.initialLossSum = blocks.real(1);
      t.finalLossSum = blocks.real(2);
      t.blockSeconds = blocks.real(3);
      t.heldoutBlocks = static_cast<int>(blocks.integer(4));
      t.heldoutInitialLossSum = blocks.real(5);
      t.heldoutFinalLossSum = blocks.real(6);
      t.heldoutTrainFinalLossSum = blocks.real(7);
    }
    blocks.reset();
    layers.bind(1, seq);
    if (layers.step()) {
      t.layers = static_cast<int>(layers.integer(0));
      t.learnableParams = layers.integer(1);
      t.meanSqnrDb = layers.real(2);
      t.meanMse = layers.real(3);
    }
    layers.reset();
  }
  txn.commit();
  return runs_detail::buildComparison(runs, totals);
}

void RunStore::deleteRun(const std::string &id) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Database &db = *impl_->db;
  {
    Transaction txn(db, true);
    Statement q(db, "DELETE FROM runs WHERE id = ?"); // children go by ON DELETE CASCADE
    q.bind(1, id).run();
    if (sqlite3_changes(db.handle()) == 0)
      throw NoSuchRun(id, path());
    txn.commit();
  }
  // Hand freed pages back to the file system (stores made with auto_vacuum).
  // The run is gone either way; a busy store just stays larger for now.
  try {
    db.exec("PRAGMA incremental_vacuum", "compacting the run store");
  } catch (const Error &e) {
    spdlog::warn("{}", e.what());
  }
}

} // namespace lrq
