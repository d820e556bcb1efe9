// Two writers and a reader on one run store for a bounded time, as the desktop
// app and a command-line run share it: three processes, each with its own
// connection (WAL, busy timeout). The writers record complete runs (blocks
// with loss curves, layer statistics, spectra, metrics, notes, exports) as
// fast as they can; the reader lists and reads runs all the while and checks
// that it never sees half a run. Afterwards the store must pass PRAGMA
// integrity_check and hold every run each writer reported, field for field.
#include <QFile>
#include <QTemporaryDir>
#include <QtTest>

#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/runs/run_store.h"

using namespace lrq;

namespace {

constexpr double kSeconds = 3.0;
constexpr int kBlocks = 3, kCurvePoints = 40, kLayersPerBlock = 2;

// Everything a writer records for its run number n, so the check can rebuild it.
RunInfo expectedInfo(int writer, int n) {
  RunInfo info;
  info.method = writer == 0 ? "lrq" : "gptq";
  info.model = {"/models/writer" + std::to_string(writer), "size=" + std::to_string(n)};
  info.schemeJson = R"({"weight":{"bits":)" + std::to_string(2 + n % 7) + "}}";
  info.hyperparametersJson =
      "{\"writer\":" + std::to_string(writer) + ",\"n\":" + std::to_string(n) + "}";
  info.metrics = {{"perplexity", 10.0 + n + writer / 4.0}, {"kl", 1.0 / (n + 1)}};
  info.notes = "writer " + std::to_string(writer) + " run " + std::to_string(n);
  info.exportDir = "/exports/" + std::to_string(writer) + "/" + std::to_string(n);
  info.totalSeconds = n * 0.5;
  return info;
}

BlockRecord expectedBlock(int writer, int n, int b) {
  BlockRecord r;
  r.index = b;
  r.initialLoss = 1.0 + n + b / 8.0 + writer;
  r.finalLoss = r.initialLoss / 2;
  r.seconds = b + 0.25;
  for (int i = 0; i < kCurvePoints; ++i)
    r.curve.push_back({i, float(n + b + i / 64.0)}); // exact in float32
  return r;
}

LayerStats expectedLayer(int n, int b, int l) {
  return {b, l == 0 ? "q_proj" : "down_proj", 1e-3 * (n + 1), 20.0 + b + l, 100 * (n + l)};
}

SpectrumRecord expectedSpectrum(int n, int b) {
  return {b, "q_proj", "E", {double(n + 3), double(b + 2), 1.0}};
}

void writerProcess(const std::string &store, int writer, double deadline,
                   const std::string &idsFile) {
  RunStore s = RunStore::open(store);
  std::ofstream ids(idsFile);
  auto now = [] {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  // At least one run, however late a busy machine starts this process.
  for (int n = 0; n == 0 || now() < deadline; ++n) {
    const RunInfo info = expectedInfo(writer, n);
    RunInfo start = info;
    start.metrics.clear();
    start.notes.clear();
    start.exportDir.clear();
    const std::string id = s.createRun(start);
    for (int b = 0; b < kBlocks; ++b) {
      s.appendBlock(id, expectedBlock(writer, n, b));
      s.appendLayerStats(id, {expectedLayer(n, b, 0), expectedLayer(n, b, 1)});
      s.appendSpectrum(id, expectedSpectrum(n, b));
    }
    for (const auto &[name, value] : info.metrics)
      s.setMetric(id, name, value);
    s.setNotes(id, info.notes);
    s.setExports(id, info.exportDir, "", "");
    s.finishRun(id, RunStatus::Finished, {}, info.totalSeconds);
    ids << id << ' ' << n << '\n' << std::flush; // reported once complete
  }
}

// Reads until the deadline; writes "<reads> <runs seen> <problems> <first problem>".
void readerProcess(const std::string &store, double deadline, const std::string &resultFile) {
  RunStoreOptions options;
  options.readOnly = true;
  RunStore s = RunStore::open(store, options);
  auto now = [] {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  long reads = 0, problems = 0;
  size_t mostRuns = 0;
  std::string first;
  auto problem = [&](const std::string &what) {
    if (problems++ == 0)
      first = what;
  };
  // Past the deadline until a first run was read (each writer finishes one,
  // however late a busy machine starts them), for at most a minute more.
  while (now() < deadline || (reads == 0 && now() < deadline + 60)) {
    const std::vector<RunInfo> runs = s.listRuns();
    mostRuns = std::max(mostRuns, runs.size());
    // The newest runs are the ones being written.
    for (size_t i = 0; i < runs.size() && i < 4; ++i) {
      const RunRecord r = s.getRun(runs[i].id);
      ++reads;
      if (int(r.blocks.size()) > kBlocks)
        problem(r.id + ": " + std::to_string(r.blocks.size()) + " blocks");
      for (size_t b = 0; b < r.blocks.size(); ++b)
        if (r.blocks[b].index != int(b) || r.blocks[b].curve.size() != size_t(kCurvePoints))
          problem(r.id + ": block " + std::to_string(b) + " incomplete");
      if (r.layers.size() > kLayersPerBlock * r.blocks.size())
        problem(r.id + ": layer statistics ahead of their blocks");
      if (r.status == RunStatus::Finished &&
          (int(r.blocks.size()) != kBlocks || r.metrics.size() != 2 || r.notes.empty() ||
           r.exportDir.empty() || r.spectra.size() != size_t(kBlocks)))
        problem(r.id + ": finished but incomplete");
    }
  }
  std::ofstream(resultFile) << reads << ' ' << mostRuns << ' ' << problems << ' ' << first;
}

pid_t spawn(const std::function<void()> &work, const std::string &errorFile) {
  const pid_t pid = ::fork();
  if (pid != 0)
    return pid;
  int code = 0;
  try {
    work();
  } catch (const std::exception &e) {
    std::ofstream(errorFile) << e.what();
    code = 1;
  }
  ::_exit(code);
}

} // namespace

class TestRunStoreStress : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;

private slots:
  void initTestCase() { QVERIFY(tmp_.isValid()); }

  void twoWritersAndAReader() {
    const std::string store = tmp_.filePath("runs.sqlite").toStdString();
    RunStore::open(store); // the schema exists before the processes start; closed again
    const std::string dir = tmp_.path().toStdString() + "/";
    const double start =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    const double deadline = start + kSeconds;
    std::vector<pid_t> children;
    for (int w = 0; w < 2; ++w)
      children.push_back(
          spawn([&, w] { writerProcess(store, w, deadline, dir + "ids" + std::to_string(w)); },
                dir + "error" + std::to_string(w)));
    children.push_back(
        spawn([&] { readerProcess(store, deadline, dir + "reader"); }, dir + "error2"));
    for (size_t c = 0; c < children.size(); ++c) {
      int status = 0;
      QCOMPARE(::waitpid(children[c], &status, 0), children[c]);
      std::ifstream error(dir + "error" + std::to_string(c));
      const std::string message((std::istreambuf_iterator<char>(error)),
                                std::istreambuf_iterator<char>());
      QVERIFY2(WIFEXITED(status) && WEXITSTATUS(status) == 0,
               qPrintable(QString("process %1: %2").arg(c).arg(message.c_str())));
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count() -
        start;

    long reads = 0, problems = 0;
    size_t mostRuns = 0;
    std::string firstProblem;
    {
      std::ifstream in(dir + "reader");
      in >> reads >> mostRuns >> problems;
      std::getline(in, firstProblem);
    }
    QVERIFY2(problems == 0, firstProblem.c_str());
    QVERIFY(reads > 0);

    sqlite3 *db = nullptr;
    QCOMPARE(sqlite3_open_v2(store.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt *st = nullptr;
    QCOMPARE(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, nullptr), SQLITE_OK);
    QCOMPARE(sqlite3_step(st), SQLITE_ROW);
    const std::string integrity = reinterpret_cast<const char *>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    QCOMPARE(integrity, std::string("ok"));

    RunStore s = RunStore::open(store);
    long runs = 0, records = 0;
    int perWriter[2] = {0, 0};
    for (int w = 0; w < 2; ++w) {
      std::ifstream in(dir + "ids" + std::to_string(w));
      std::string id;
      int n = 0;
      while (in >> id >> n) {
        const RunInfo e = expectedInfo(w, n);
        const RunRecord r = s.getRun(id);
        QCOMPARE(r.status, RunStatus::Finished);
        QCOMPARE(r.method, e.method);
        QCOMPARE(r.model.path, e.model.path);
        QCOMPARE(r.model.digest, e.model.digest);
        QCOMPARE(r.schemeJson, e.schemeJson);
        QCOMPARE(r.hyperparametersJson, e.hyperparametersJson);
        QVERIFY(r.metrics == e.metrics);
        QCOMPARE(r.notes, e.notes);
        QCOMPARE(r.exportDir, e.exportDir);
        QCOMPARE(r.totalSeconds, e.totalSeconds);
        QCOMPARE(int(r.blocks.size()), kBlocks);
        for (int b = 0; b < kBlocks; ++b) {
          const BlockRecord eb = expectedBlock(w, n, b);
          const BlockRecord &rb = r.blocks[size_t(b)];
          QCOMPARE(rb.index, b);
          QCOMPARE(rb.initialLoss, eb.initialLoss);
          QCOMPARE(rb.finalLoss, eb.finalLoss);
          QCOMPARE(rb.seconds, eb.seconds);
          QCOMPARE(rb.curve.size(), eb.curve.size());
          for (size_t i = 0; i < eb.curve.size(); ++i)
            QVERIFY(rb.curve[i].iteration == eb.curve[i].iteration &&
                    rb.curve[i].loss == eb.curve[i].loss);
        }
        QCOMPARE(int(r.layers.size()), kBlocks * kLayersPerBlock);
        for (int b = 0; b < kBlocks; ++b)
          for (int l = 0; l < kLayersPerBlock; ++l) {
            const LayerStats e2 = expectedLayer(n, b, l);
            const LayerStats &g = r.layers[size_t(b * kLayersPerBlock + l)];
            QVERIFY(g.block == e2.block && g.role == e2.role && g.mse == e2.mse &&
                    g.sqnrDb == e2.sqnrDb && g.learnableParams == e2.learnableParams);
          }
        QCOMPARE(int(r.spectra.size()), kBlocks);
        for (int b = 0; b < kBlocks; ++b)
          QVERIFY(r.spectra[size_t(b)].values == expectedSpectrum(n, b).values);
        ++runs;
        ++perWriter[w];
        // One run row, its blocks, layer rows, spectra and metrics.
        records += 1 + kBlocks + kBlocks * kLayersPerBlock + kBlocks + 2;
      }
    }
    QVERIFY(perWriter[0] > 0 && perWriter[1] > 0);
    // Nothing but the reported runs (a writer reports each run once it is complete).
    QCOMPARE(long(s.listRuns().size()), runs);
    qInfo("%.1f s, 2 writers + 1 reader: %d + %d runs written, %ld records checked intact, "
          "%ld reads (up to %zu runs listed), integrity_check ok",
          seconds, perWriter[0], perWriter[1], records, reads, mostRuns);
  }
};

QTEST_GUILESS_MAIN(TestRunStoreStress)
#include "test_run_store_stress.moc"
