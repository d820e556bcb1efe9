// Liveness in the run store (core/runs/run_liveness.*): a run stored as
// running whose owner process is gone reads back as interrupted (dead pid,
// zombie, reused pid, stale heartbeat of another host, an older build's run);
// a run whose owner is alive stays running and cannot be claimed by another
// resume; the recorder's throttled heartbeat; stores written before owners
// were recorded gain the columns and still open; "interrupted" is never
// written. Rows are also checked through the SQLite C API.
#include <QTemporaryDir>
#include <QtTest>

#include <sqlite3.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <clocale>
#include <fstream>
#include <string>

#include "core/common/c_number.h"
#include "core/runs/run_recorder.h"
#include "core/runs/run_store.h"

using namespace lrq;

namespace {

// A process that has exited and been reaped: its pid is free.
int64_t deadPid() {
  const pid_t child = ::fork();
  if (child == 0)
    ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return int64_t(child);
}

std::string procState(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = text.rfind(')');
  return close == std::string::npos || close + 2 >= text.size() ? std::string()
                                                                : text.substr(close + 2, 1);
}

RunInfo runInfo(const std::string &method = "lrq") {
  RunInfo info;
  info.model = {"/models/tiny.gguf", "size=1;mtime=1"};
  info.method = method;
  info.schemeJson = R"({"name": "W4"})";
  info.hyperparametersJson = R"({"rank": 8})";
  return info;
}

RunOwner ownerWithPid(int64_t pid) {
  RunOwner o = currentRunOwner();
  o.pid = pid;
  return o;
}

int64_t rawCount(const std::string &path, const std::string &sql) {
  sqlite3 *db = nullptr;
  sqlite3_open(path.c_str(), &db);
  sqlite3_stmt *st = nullptr;
  int64_t n = -1;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return n;
}

} // namespace

class TestRunLiveness : public QObject {
  Q_OBJECT
  QTemporaryDir dir_;
  int counter_ = 0;

  std::string freshPath() {
    return dir_.filePath(QString("store-%1.sqlite").arg(++counter_)).toStdString();
  }

private slots:
  void initTestCase() { QVERIFY(dir_.isValid()); }

  void thisProcessIsAlive() {
    const RunOwner &me = currentRunOwner();
    QCOMPARE(me.pid, int64_t(::getpid()));
    QVERIFY(!me.host.empty());
    QVERIFY2(me.start.find("boot=") == 0 && me.start.find(";start=") != std::string::npos,
             me.start.c_str());
    QVERIFY(ownerIsLocal(me));
    const double now = unixNow();
    QCOMPARE(runOwnerState(me, now - 1e6, now - 1e6, now), OwnerState::Alive);
  }

  void deadZombieAndReusedPidsAreGone() {
    const double now = unixNow();
    QCOMPARE(runOwnerState(ownerWithPid(deadPid()), now, now, now), OwnerState::Gone);

    // Killed but not yet reaped by its parent: a zombie is not alive.
    const pid_t child = ::fork();
    if (child == 0) {
      ::pause();
      ::_exit(0);
    }
    RunOwner live = ownerWithPid(child);
    live.start = live.start.substr(0, live.start.find(";start=")); // the pid alone decides
    QCOMPARE(runOwnerState(live, now, now, now), OwnerState::Alive);
    ::kill(child, SIGKILL);
    QTRY_COMPARE(procState(child), std::string("Z"));
    QCOMPARE(runOwnerState(live, now, now, now), OwnerState::Gone);
    int status = 0;
    ::waitpid(child, &status, 0);

    // The pid is alive, but started at another time: it was reused.
    RunOwner reused = currentRunOwner();
    reused.start = reused.start.substr(0, reused.start.find(";start=")) + ";start=1";
    QCOMPARE(runOwnerState(reused, now, now, now), OwnerState::Gone);
  }

  void remoteOwnersGoByHeartbeat() {
    const double now = unixNow();
    RunOwner remote{4242, "another-host.example", "boot=x;pidns=1;start=5"};
    QVERIFY(!ownerIsLocal(remote));
    LivenessOptions options;
    options.staleAfterSeconds = 600;
    QCOMPARE(runOwnerState(remote, now - 30, now - 9000, now, options), OwnerState::Alive);
    QCOMPARE(runOwnerState(remote, now - 601, now - 9000, now, options), OwnerState::Gone);
    // Same host name after a reboot (another boot id): the heartbeat decides too.
    RunOwner rebooted = currentRunOwner();
    rebooted.start = "boot=00000000-dead;pidns=1;start=5";
    QVERIFY(!ownerIsLocal(rebooted));
    QCOMPARE(runOwnerState(rebooted, now - 30, 0, now, options), OwnerState::Alive);
    QCOMPARE(runOwnerState(rebooted, now - 700, 0, now, options), OwnerState::Gone);
    // No owner (an older build): the creation time, with a longer limit.
    QCOMPARE(runOwnerState({}, 0, now - 3600, now, options), OwnerState::Alive);
    QCOMPARE(runOwnerState({}, 0, now - 2 * 86400, now, options), OwnerState::Gone);
  }

  void isoTimesRoundTrip() {
    QCOMPARE(parseIsoUtc("1970-01-01T00:01:40.250Z"), 100.25);
    QCOMPARE(formatIsoUtc(100.25), std::string("1970-01-01T00:01:40.250Z"));
    QCOMPARE(parseIsoUtc("garbage"), 0.0);
    const double now = unixNow();
    QVERIFY(std::abs(parseIsoUtc(formatIsoUtc(now)) - now) < 0.001);
  }

  // Qt programs take LC_ALL from the environment (QCoreApplication calls
  // setlocale): under a decimal comma, times and numbers as text keep '.'.
  void numbersIgnoreTheLocale() {
    const std::string saved = std::setlocale(LC_NUMERIC, nullptr);
    bool comma = false;
    for (const char *name : {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "de_DE", "fr_FR"})
      if (std::setlocale(LC_NUMERIC, name) && std::localeconv()->decimal_point[0] == ',') {
        comma = true;
        break;
      }
    if (!comma) {
      std::setlocale(LC_NUMERIC, saved.c_str());
      QSKIP("no locale with a decimal comma is installed");
    }
    const double heartbeat = parseIsoUtc("1970-01-01T00:01:40.250Z");
    const std::string half = formatNumberC("%.2f", 0.5);
    size_t used = 0;
    const double quarter = parseNumberC("0.25", &used);
    std::setlocale(LC_NUMERIC, saved.c_str());
    QCOMPARE(heartbeat, 100.25);
    QCOMPARE(half, std::string("0.50"));
    QCOMPARE(quarter, 0.25);
    QCOMPARE(used, size_t(4));
  }

  void storeShowsInterruptedRuns() {
    const std::string path = freshPath();
    RunStore store = RunStore::open(path);
    RunInfo alive = runInfo();
    const std::string aliveId = store.createRun(alive); // owned by this process
    RunInfo dead = runInfo("flexround");
    dead.owner = ownerWithPid(deadPid());
    const std::string deadId = store.createRun(dead);
    RunInfo done = runInfo("rtn");
    done.owner = dead.owner;
    done.status = RunStatus::Finished;
    const std::string doneId = store.createRun(done);

    // Stored as running, both; read back by owner.
    QCOMPARE(rawCount(path, "SELECT count(*) FROM runs WHERE status = 'running'"), int64_t(2));
    QCOMPARE(rawCount(path, "SELECT count(*) FROM runs WHERE status = 'interrupted'"), int64_t(0));
    QCOMPARE(rawCount(path, "SELECT owner_pid FROM runs WHERE id = '" + aliveId + "'"),
             int64_t(::getpid()));
    QCOMPARE(store.getRunInfo(aliveId).status, RunStatus::Running);
    QCOMPARE(store.getRunInfo(deadId).status, RunStatus::Interrupted);
    QCOMPARE(store.getRun(deadId).status, RunStatus::Interrupted);
    QCOMPARE(store.getRunInfo(doneId).status, RunStatus::Finished); // finished stays finished
    QCOMPARE(store.getRunInfo(deadId).owner.pid, dead.owner.pid);
    QCOMPARE(store.listRuns().size(), size_t(3));

    RunFilter f;
    f.status = RunStatus::Interrupted;
    std::vector<RunInfo> interrupted = store.listRuns(f);
    QCOMPARE(interrupted.size(), size_t(1));
    QCOMPARE(interrupted[0].id, deadId);
    f.status = RunStatus::Running;
    std::vector<RunInfo> running = store.listRuns(f);
    QCOMPARE(running.size(), size_t(1));
    QCOMPARE(running[0].id, aliveId);
    f.limit = 1;
    f.status = RunStatus::Interrupted;
    QCOMPARE(store.listRuns(f).size(), size_t(1));
    QCOMPARE(parseRunStatus("interrupted"), RunStatus::Interrupted);

    const RunComparison c = store.compareRuns({aliveId, deadId});
    const ComparisonRow *status = c.find("run", "status");
    QVERIFY(status);
    QCOMPARE(status->cells, (std::vector<std::string>{"running", "interrupted"}));

    // "interrupted" is what a reader concludes, never what is written.
    QVERIFY_THROWS_EXCEPTION(Error, store.finishRun(aliveId, RunStatus::Interrupted));
    RunInfo bad = runInfo();
    bad.status = RunStatus::Interrupted;
    QVERIFY_THROWS_EXCEPTION(Error, store.createRun(bad));
  }

  void claimingRefusesALiveOwner() {
    RunStore store = RunStore::open(freshPath());
    const std::string aliveId = store.createRun(runInfo());
    try {
      store.claimRun(aliveId);
      QFAIL("claimed a run whose owner is alive");
    } catch (const RunStillRunning &e) {
      const std::string want =
          "run " + aliveId + " is still running in process " + std::to_string(::getpid());
      QCOMPARE(std::string(e.what()), want);
      QCOMPARE(e.owner().pid, int64_t(::getpid()));
    }
    QCOMPARE(store.getRunInfo(aliveId).status, RunStatus::Running);

    RunInfo dead = runInfo();
    dead.owner = ownerWithPid(deadPid());
    dead.totalSeconds = 42;
    const std::string deadId = store.createRun(dead);
    store.finishRun(deadId, RunStatus::Failed, "out of memory", 42);
    // A failed run: this process takes it over (resumes it).
    RunStore other = RunStore::open(store.path());
    QCOMPARE(other.getRunInfo(deadId).status, RunStatus::Failed);
    const RunInfo before = store.claimRun(deadId);
    QCOMPARE(before.status, RunStatus::Failed);
    QCOMPARE(before.totalSeconds, 42.0);
    const RunInfo after = other.getRunInfo(deadId);
    QCOMPARE(after.status, RunStatus::Running);
    QCOMPARE(after.owner.pid, int64_t(::getpid()));
    QVERIFY(after.error.empty());
    // Now ours: another claim is refused.
    QVERIFY_THROWS_EXCEPTION(RunStillRunning, other.claimRun(deadId));
    store.finishRun(deadId, RunStatus::Finished, {}, 50);
    try {
      other.claimRun(deadId);
      QFAIL("claimed a finished run");
    } catch (const RunStillRunning &) {
      QFAIL("a finished run is not running");
    } catch (const Error &e) {
      QVERIFY2(std::string(e.what()).find("has finished") != std::string::npos, e.what());
    }
    QVERIFY_THROWS_EXCEPTION(NoSuchRun, store.claimRun("nosuchrun"));
  }

  void heartbeatKeepsARemoteRunAlive() {
    RunStoreOptions options;
    options.liveness.staleAfterSeconds = 60;
    RunStore store = RunStore::open(freshPath(), options);
    RunInfo remote = runInfo();
    remote.owner = {4242, "another-host.example", "boot=x;pidns=1;start=5"};
    remote.heartbeat = unixNow() - 120;
    const std::string id = store.createRun(remote);
    QCOMPARE(store.getRunInfo(id).status, RunStatus::Interrupted);
    store.heartbeat(id);
    QCOMPARE(store.getRunInfo(id).status, RunStatus::Running);
    QVERIFY(unixNow() - store.getRunInfo(id).heartbeat < 5);
    QVERIFY_THROWS_EXCEPTION(NoSuchRun, store.heartbeat("nosuchrun"));
    try {
      store.claimRun(id);
      QFAIL("claimed a remote run with a fresh heartbeat");
    } catch (const RunStillRunning &e) {
      const std::string what = e.what();
      QVERIFY2(what.find("in process 4242 on host another-host.example") != std::string::npos &&
                   what.find("last heartbeat") != std::string::npos,
               e.what());
    }
  }

  void recorderBeatsThrottled() {
    RunStore store = RunStore::open(freshPath());
    RunInfo info = runInfo();
    info.heartbeat = 1000; // long ago
    const std::string id = store.createRun(info);
    RunRecorder recorder(store, id);
    recorder.setHeartbeatInterval(3600);
    recorder.progress(1, 10, "calibrating");
    recorder.iterationLoss(0, 0, 0.5);
    QCOMPARE(store.getRunInfo(id).heartbeat, 1000.0); // throttled
    recorder.blockFinished(0, 0.5, 0.25, 1.0);        // a block's end always beats
    const double afterBlock = store.getRunInfo(id).heartbeat;
    QVERIFY(unixNow() - afterBlock < 5);
    recorder.setHeartbeatInterval(0);
    QTest::qWait(20);
    recorder.progress(2, 10, "evaluating");
    QVERIFY(store.getRunInfo(id).heartbeat > afterBlock);
    QVERIFY(recorder.storageError().empty());
    // A deleted run: said once, the run goes on.
    store.deleteRun(id);
    recorder.progress(3, 10, "evaluating");
    QVERIFY(!recorder.storageError().empty());
  }

  void exportsAreRecorded() {
    RunStore store = RunStore::open(freshPath());
    const std::string id = store.createRun(runInfo());
    QVERIFY(store.getRunInfo(id).exportDir.empty());
    store.setExports(id, "/tmp/out dir", "/tmp/model.packed.safetensors");
    const RunInfo info = store.getRunInfo(id);
    QCOMPARE(info.exportDir, std::string("/tmp/out dir"));
    QCOMPARE(info.packedPath, std::string("/tmp/model.packed.safetensors"));
    QVERIFY(info.ggufPath.empty() && info.compressedTensorsDir.empty());
    store.setExports(id, "", "", "/tmp/m.gguf", "/tmp/ct dir");
    const RunInfo all = store.getRunInfo(id);
    QCOMPARE(all.ggufPath, std::string("/tmp/m.gguf"));
    QCOMPARE(all.compressedTensorsDir, std::string("/tmp/ct dir"));
    QVERIFY(all.exportDir.empty());
  }

  void olderStoresGainTheColumns() {
    // A store as the first release wrote it: schema version 1, no owner columns.
    const std::string path = freshPath();
    {
      sqlite3 *db = nullptr;
      QCOMPARE(sqlite3_open(path.c_str(), &db), SQLITE_OK);
      const char *sql = R"sql(
CREATE TABLE lrq_schema (version INTEGER NOT NULL);
INSERT INTO lrq_schema (version) VALUES (1);
CREATE TABLE runs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, created TEXT NOT NULL,
  status TEXT NOT NULL, model_path TEXT NOT NULL, model_digest TEXT NOT NULL,
  method TEXT NOT NULL, scheme_json TEXT NOT NULL, hyperparameters_json TEXT NOT NULL,
  engine_version TEXT NOT NULL, total_seconds REAL, error TEXT NOT NULL DEFAULT '',
  notes TEXT NOT NULL DEFAULT '');
CREATE TABLE run_metrics (run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
  name TEXT NOT NULL, value REAL, PRIMARY KEY (run_seq, name));
CREATE TABLE run_blocks (run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
  block INTEGER NOT NULL, initial_loss REAL, final_loss REAL, seconds REAL,
  point_count INTEGER NOT NULL, curve BLOB NOT NULL, PRIMARY KEY (run_seq, block));
CREATE TABLE run_layers (run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
  block INTEGER NOT NULL, role TEXT NOT NULL, mse REAL, sqnr_db REAL,
  learnable_params INTEGER NOT NULL, PRIMARY KEY (run_seq, block, role));
CREATE TABLE run_spectra (run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
  block INTEGER NOT NULL, role TEXT NOT NULL, kind TEXT NOT NULL, value_count INTEGER NOT NULL,
  singular_values BLOB NOT NULL, PRIMARY KEY (run_seq, block, role, kind));
)sql";
      QCOMPARE(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK);
      const std::string now = formatIsoUtc(unixNow() - 60);
      const std::string rows =
          "INSERT INTO runs (id, created, status, model_path, model_digest, method, scheme_json, "
          "hyperparameters_json, engine_version, total_seconds) VALUES "
          "('old-finished', '2026-01-01T00:00:00.000Z', 'finished', 'm', 'd', 'rtn', '{}', '{}', "
          "'0.1', 3), "
          "('old-running', '2026-01-01T00:00:01.000Z', 'running', 'm', 'd', 'lrq', '{}', '{}', "
          "'0.1', 5), "
          "('recent-running', '" +
          now + "', 'running', 'm', 'd', 'lrq', '{}', '{}', '0.1', 1);";
      QCOMPARE(sqlite3_exec(db, rows.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
      sqlite3_close(db);
    }
    RunStore store = RunStore::open(path);
    QCOMPARE(store.schemaVersion(), 1); // additive columns: older builds still open it
    QCOMPARE(rawCount(path, "SELECT count(*) FROM pragma_table_info('runs') WHERE name IN "
                            "('owner_pid', 'owner_host', 'owner_start', 'heartbeat', "
                            "'export_dir', 'packed_path')"),
             int64_t(6));
    QCOMPARE(store.listRuns().size(), size_t(3));
    QCOMPARE(store.getRunInfo("old-finished").status, RunStatus::Finished);
    QCOMPARE(store.getRunInfo("old-running").status, RunStatus::Interrupted); // months old
    QCOMPARE(store.getRunInfo("recent-running").status, RunStatus::Running);  // may be alive
    QVERIFY(!store.getRunInfo("old-running").owner.known());
    // New runs in the upgraded store carry their owner; opening again changes nothing.
    const std::string id = store.createRun(runInfo());
    QCOMPARE(RunStore::open(path).getRunInfo(id).owner.pid, int64_t(::getpid()));
  }
};

QTEST_GUILESS_MAIN(TestRunLiveness)
#include "test_run_liveness.moc"
