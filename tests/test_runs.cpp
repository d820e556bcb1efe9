// The run store (core/runs): round trips, ordering, comparison, cascading
// deletes, concurrent access from two stores, damaged and foreign files.
// Table contents and BLOB bytes are checked through the SQLite C API directly,
// independently of the store's own reading code.
#include <QCryptographicHash>
#include <QElapsedTimer>
#include <QFile>
#include <QRegularExpression>
#include <QTemporaryDir>
#include <QtTest>

#include <sqlite3.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <thread>

#include "core/runs/run_recorder.h"
#include "core/runs/run_store.h"
#include "test_support.h"

using namespace lrq;
namespace fs = std::filesystem;

namespace {

const char *const kRoles[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                              "gate_proj", "up_proj", "down_proj"};
const char *const kKinds[] = {"W", "E", "scaled_E", "scale_exponent"};
// min(out, in) of SmolLM2-135M's linears: the length of their spectra.
const int kSpectrumLength[] = {576, 192, 192, 576, 576, 576, 576};

// A raw connection for looking at the tables behind the store's back.
class RawDb {
public:
  explicit RawDb(const std::string &path) {
    if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK)
      qFatal("cannot open %s", path.c_str());
    sqlite3_busy_timeout(db_, 10000);
  }
  ~RawDb() { sqlite3_close(db_); }
  sqlite3 *handle() const { return db_; }
  int64_t count(const std::string &sql) const {
    sqlite3_stmt *st = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
      qFatal("bad sql %s: %s", sql.c_str(), sqlite3_errmsg(db_));
    int64_t n = -1;
    if (sqlite3_step(st) == SQLITE_ROW)
      n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
  }
  bool exec(const std::string &sql) const {
    return sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK;
  }
  QByteArray blob(const std::string &sql) const {
    sqlite3_stmt *st = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
      qFatal("bad sql %s: %s", sql.c_str(), sqlite3_errmsg(db_));
    QByteArray out;
    if (sqlite3_step(st) == SQLITE_ROW)
      out = QByteArray(static_cast<const char *>(sqlite3_column_blob(st, 0)),
                       sqlite3_column_bytes(st, 0));
    sqlite3_finalize(st);
    return out;
  }

private:
  sqlite3 *db_ = nullptr;
};

// A loss curve as the optimiser would produce it: doubles, decaying with noise.
std::vector<double> lossCurveDoubles(int points, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> noise(0.0, 0.02);
  std::vector<double> out(points);
  for (int i = 0; i < points; ++i)
    out[i] = 0.01 + 0.5 * std::exp(-i / 300.0) * (1.0 + noise(rng));
  return out;
}

BlockRecord makeBlock(int index, int points, uint32_t seed) {
  BlockRecord b;
  const std::vector<double> losses = lossCurveDoubles(points, seed);
  b.index = index;
  b.initialLoss = losses.front() * (1 + 1e-13 * index); // full double mantissa
  b.finalLoss = losses.back() / 3.0;
  b.seconds = 1.0 / 7.0 + index;
  for (int i = 0; i < points; ++i)
    b.curve.push_back({i * 5, static_cast<float>(losses[i])});
  return b;
}

std::vector<LayerStats> makeLayers(int block, std::mt19937 &rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<LayerStats> out;
  for (const char *role : kRoles)
    out.push_back(
        {block, role, u(rng) * 1e-4, 10 + 20 * u(rng), static_cast<int64_t>(rng() % 400000)});
  return out;
}

std::vector<SpectrumRecord> makeSpectra(int block, std::mt19937 &rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<SpectrumRecord> out;
  for (int r = 0; r < 7; ++r)
    for (const char *kind : kKinds) {
      SpectrumRecord s{block, kRoles[r], kind, {}};
      double v = 10 + u(rng);
      for (int i = 0; i < kSpectrumLength[r]; ++i) {
        s.values.push_back(v);
        v *= 0.9 + 0.1 * u(rng);
      }
      out.push_back(std::move(s));
    }
  return out;
}

RunInfo makeInfo(const std::string &method, const std::string &model = "/models/a.gguf") {
  RunInfo info;
  info.model = {model, "sha256:" + std::string(64, 'a')};
  info.method = method;
  info.schemeJson = R"({"name":"W4A16","weight":{"bits":4,"granularity":"per_channel"}})";
  info.hyperparametersJson = R"({"rank":144,"iters":5000,"lr":0.001,"seed":0})";
  info.engineVersion = "test-1.2.3";
  return info;
}

// Little-endian decoding written independently of core/runs/run_blob.cpp.
float floatAt(const QByteArray &bytes, int offset) {
  uint32_t bits = 0;
  for (int i = 3; i >= 0; --i)
    bits = (bits << 8) | static_cast<unsigned char>(bytes[offset + i]);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
int32_t intAt(const QByteArray &bytes, int offset) {
  uint32_t bits = 0;
  for (int i = 3; i >= 0; --i)
    bits = (bits << 8) | static_cast<unsigned char>(bytes[offset + i]);
  return static_cast<int32_t>(bits);
}

bool sameDouble(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof a) == 0;
}

template <typename Fn> QString errorOf(Fn &&fn) {
  try {
    fn();
  } catch (const std::exception &e) {
    return QString::fromStdString(e.what());
  }
  return {};
}

// Counts the events that reach the front end behind a RunRecorder.
struct CountingObserver : ProgressObserver {
  int blockStarts = 0, iterations = 0, blockEnds = 0, metrics = 0, finishes = 0, failures = 0;
  std::vector<std::string> warnings;
  void blockStarted(int, int) override { ++blockStarts; }
  void iterationLoss(int, int, double) override { ++iterations; }
  void blockFinished(int, double, double, double) override { ++blockEnds; }
  void metric(const std::string &, double) override { ++metrics; }
  void log(LogLevel level, const std::string &m) override {
    if (level == LogLevel::Warning)
      warnings.push_back(m);
  }
  void finished() override { ++finishes; }
  void failed(const std::string &) override { ++failures; }
};

} // namespace

class TestRuns : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  int counter_ = 0;
  std::string freshPath(const char *stem = "runs") {
    return QDir(tmp_.path())
        .filePath(QString("%1-%2.sqlite").arg(stem).arg(++counter_))
        .toStdString();
  }

private slots:
  void initTestCase() { QVERIFY(tmp_.isValid()); }

  void statusNamesRoundTrip() {
    for (RunStatus s :
         {RunStatus::Running, RunStatus::Finished, RunStatus::Failed, RunStatus::Cancelled})
      QCOMPARE(parseRunStatus(runStatusName(s)), s);
    QVERIFY_THROWS_EXCEPTION(Error, parseRunStatus("done"));
  }

  void freshStoreHasSchemaWalAndVacuum() {
    const std::string path = freshPath();
    {
      RunStore store = RunStore::open(path);
      QCOMPARE(store.schemaVersion(), RunStore::kSchemaVersion);
      QCOMPARE(store.path(), path);
      QVERIFY(store.listRuns().empty());
    }
    RawDb raw(path);
    QCOMPARE(raw.count("SELECT version FROM lrq_schema"), int64_t{RunStore::kSchemaVersion});
    QCOMPARE(raw.count("SELECT count(*) FROM lrq_schema"), int64_t{1});
    QCOMPARE(raw.count("PRAGMA auto_vacuum"), int64_t{2}); // incremental
    sqlite3_stmt *st = nullptr;
    sqlite3_prepare_v2(raw.handle(), "PRAGMA journal_mode", -1, &st, nullptr);
    QCOMPARE(sqlite3_step(st), SQLITE_ROW);
    QCOMPARE(QByteArray(reinterpret_cast<const char *>(sqlite3_column_text(st, 0))),
             QByteArray("wal"));
    sqlite3_finalize(st);
    // Reopening an existing store neither migrates again nor loses anything.
    RunStore again = RunStore::open(path);
    QCOMPARE(again.schemaVersion(), RunStore::kSchemaVersion);
  }

  void fullRoundTrip() {
    const std::string path = freshPath();
    RunStore store = RunStore::open(path);
    RunInfo info = makeInfo("lrq");
    info.notes = "first try";
    info.metrics = {{"perplexity", 23.456789012345678}, {"kl", 0.0123456789}};
    const std::string id = store.createRun(info);
    QVERIFY(QString::fromStdString(id).contains(QRegularExpression("^\\d{8}-\\d{6}-[0-9a-f]{4}$")));

    std::mt19937 rng(7);
    std::vector<BlockRecord> blocks;
    std::vector<LayerStats> layers;
    std::vector<SpectrumRecord> spectra;
    for (int b = 0; b < 30; ++b) {
      blocks.push_back(makeBlock(b, 2000, 100 + b));
      store.appendBlock(id, blocks.back());
      auto l = makeLayers(b, rng);
      store.appendLayerStats(id, l);
      layers.insert(layers.end(), l.begin(), l.end());
      auto s = makeSpectra(b, rng);
      store.appendSpectra(id, s);
      spectra.insert(spectra.end(), s.begin(), s.end());
    }
    store.setMetric(id, "top1", 0.875);
    store.setMetric(id, "perplexity", 24.5); // overwrites
    store.finishRun(id, RunStatus::Finished, {}, 1234.5678);

    const RunRecord run = store.getRun(id);
    QCOMPARE(run.id, id);
    QCOMPARE(run.status, RunStatus::Finished);
    QCOMPARE(run.model.path, info.model.path);
    QCOMPARE(run.model.digest, info.model.digest);
    QCOMPARE(run.method, std::string("lrq"));
    QCOMPARE(run.schemeJson, info.schemeJson);
    QCOMPARE(run.hyperparametersJson, info.hyperparametersJson);
    QCOMPARE(run.engineVersion, std::string("test-1.2.3"));
    QCOMPARE(run.totalSeconds, 1234.5678);
    QCOMPARE(run.notes, std::string("first try"));
    QVERIFY(run.error.empty());
    QCOMPARE(run.blockCount, 30);
    QVERIFY(
        QString::fromStdString(run.created)
            .contains(QRegularExpression("^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z$")));
    // The id's date and time are the creation time's.
    const QString created = QString::fromStdString(run.created);
    QCOMPARE(QString::fromStdString(id).left(15),
             created.left(10).remove('-') + "-" + created.mid(11, 8).remove(':'));
    const std::map<std::string, double> metrics{
        {"perplexity", 24.5}, {"kl", 0.0123456789}, {"top1", 0.875}};
    QVERIFY(run.metrics == metrics);

    QCOMPARE(run.blocks.size(), blocks.size());
    for (size_t b = 0; b < blocks.size(); ++b) {
      const BlockRecord &got = run.blocks[b], &want = blocks[b];
      QCOMPARE(got.index, want.index);
      QVERIFY(sameDouble(got.initialLoss, want.initialLoss));
      QVERIFY(sameDouble(got.finalLoss, want.finalLoss));
      QVERIFY(sameDouble(got.seconds, want.seconds));
      QCOMPARE(got.curve.size(), want.curve.size());
      for (size_t i = 0; i < want.curve.size(); ++i) {
        QCOMPARE(got.curve[i].iteration, want.curve[i].iteration);
        QCOMPARE(got.curve[i].loss, want.curve[i].loss); // bit-exact float32
      }
    }
    QCOMPARE(run.layers.size(), layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      QCOMPARE(run.layers[i].block, layers[i].block);
      QCOMPARE(run.layers[i].role, layers[i].role);
      QVERIFY(sameDouble(run.layers[i].mse, layers[i].mse));
      QVERIFY(sameDouble(run.layers[i].sqnrDb, layers[i].sqnrDb));
      QCOMPARE(run.layers[i].learnableParams, layers[i].learnableParams);
    }
    QCOMPARE(run.spectra.size(), spectra.size());
    for (size_t i = 0; i < spectra.size(); ++i) {
      QCOMPARE(run.spectra[i].block, spectra[i].block);
      QCOMPARE(run.spectra[i].role, spectra[i].role);
      QCOMPARE(run.spectra[i].kind, spectra[i].kind);
      QVERIFY(run.spectra[i].values == spectra[i].values);
    }

    // getRunInfo is the header alone, with the same fields.
    const RunInfo head = store.getRunInfo(id);
    QCOMPARE(head.method, run.method);
    QVERIFY(head.metrics == metrics);
    QCOMPARE(head.blockCount, 30);
  }

  // The curve is kept as float32: check the bytes in the file directly, and
  // that each stored loss is the double loss rounded to nearest float.
  void curveIsLittleEndianFloat32() {
    const std::string path = freshPath();
    RunStore store = RunStore::open(path);
    const std::string id = store.createRun(makeInfo("flexround"));
    const std::vector<double> losses = lossCurveDoubles(1000, 42);
    BlockRecord b;
    b.index = 3;
    for (int i = 0; i < 1000; ++i)
      b.curve.push_back({i, static_cast<float>(losses[i])});
    b.curve.push_back({2000000000, std::numeric_limits<float>::infinity()});
    b.curve.push_back({-1, std::numeric_limits<float>::quiet_NaN()});
    store.appendBlock(id, b);

    RawDb raw(path);
    const QByteArray bytes = raw.blob("SELECT curve FROM run_blocks");
    QCOMPARE(bytes.size(), 1002 * 8);
    QCOMPARE(raw.count("SELECT point_count FROM run_blocks"), int64_t{1002});
    double worst = 0;
    for (int i = 0; i < 1000; ++i) {
      QCOMPARE(intAt(bytes, 8 * i), i);
      const float f = floatAt(bytes, 8 * i + 4);
      QCOMPARE(f, static_cast<float>(losses[i]));
      worst = std::max(worst, std::fabs(f - losses[i]) / losses[i]);
    }
    QVERIFY2(worst <= std::ldexp(1.0, -24), qPrintable(QString::number(worst)));
    QVERIFY(worst > 0); // really float32, not doubles
    QCOMPARE(intAt(bytes, 8000), 2000000000);
    QVERIFY(std::isinf(floatAt(bytes, 8004)));
    QCOMPARE(intAt(bytes, 8008), -1);
    QVERIFY(std::isnan(floatAt(bytes, 8012)));
    const RunRecord run = store.getRun(id);
    QVERIFY(std::isnan(run.blocks[0].curve.back().loss));
    QCOMPARE(run.blocks[0].curve[1000].iteration, 2000000000);
  }

  // Quotes, SQL fragments, NUL bytes and non-ASCII text in every text field and
  // in the file name; NaN and infinities in every number.
  void awkwardTextAndNumbersRoundTrip() {
    const std::string path =
        QDir(tmp_.path()).filePath("it's a \"store\"; DROP TABLE runs;.sqlite").toStdString();
    RunStore store = RunStore::open(path);
    const std::string nasty =
        std::string("O'Brien \"quoted\" ; DROP TABLE runs; --\n") + '\0' + "tail ünïcødé ✓";
    RunInfo info = makeInfo(nasty, nasty);
    info.model.digest = nasty;
    // (no raw string here: moc misreads an apostrophe inside one)
    info.schemeJson = "{\"name\":\"it's \\\"W4\\\"\"}";
    info.notes = nasty;
    const double inf = std::numeric_limits<double>::infinity();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    info.metrics = {{nasty, inf}, {"nan metric", nan}, {"tiny", 4.9e-324}, {"huge", -1.7e308}};
    info.id = nasty + "-id";
    QCOMPARE(store.createRun(info), info.id);
    store.appendLayerStats(info.id, LayerStats{-1, nasty, nan, -inf, 0});
    store.appendSpectrum(info.id, SpectrumRecord{-1, nasty, nasty, {nan, inf, 0.0, 1e-300}});
    store.appendBlock(info.id, BlockRecord{0, nan, inf, 0.5, {}});
    store.finishRun(info.id, RunStatus::Failed, nasty, nan);

    RunStore other = RunStore::open(path);
    const RunRecord run = other.getRun(info.id);
    QCOMPARE(run.id, info.id);
    QCOMPARE(run.method, nasty);
    QCOMPARE(run.model.path, nasty);
    QCOMPARE(run.model.digest, nasty);
    QCOMPARE(run.notes, nasty);
    QCOMPARE(run.error, nasty);
    QCOMPARE(run.schemeJson, info.schemeJson);
    QCOMPARE(run.status, RunStatus::Failed);
    QCOMPARE(run.metrics.size(), size_t{4});
    QVERIFY(std::isinf(run.metrics.at(nasty)) && run.metrics.at(nasty) > 0);
    QVERIFY(std::isnan(run.metrics.at("nan metric")));
    QVERIFY(sameDouble(run.metrics.at("tiny"), 4.9e-324));
    QVERIFY(sameDouble(run.metrics.at("huge"), -1.7e308));
    QCOMPARE(run.layers.at(0).role, nasty);
    QCOMPARE(run.layers.at(0).block, -1);
    QVERIFY(std::isnan(run.layers[0].mse));
    QVERIFY(std::isinf(run.layers[0].sqnrDb) && run.layers[0].sqnrDb < 0);
    QCOMPARE(run.spectra.at(0).kind, nasty);
    QVERIFY(std::isnan(run.spectra[0].values[0]) && std::isinf(run.spectra[0].values[1]));
    QCOMPARE(run.spectra[0].values[3], 1e-300);
    QVERIFY(std::isnan(run.blocks.at(0).initialLoss));
    QVERIFY(std::isinf(run.blocks[0].finalLoss));
    // Filters bind their values too.
    RunFilter f;
    f.method = nasty;
    QCOMPARE(other.listRuns(f).size(), size_t{1});
    f.model = nasty;
    QCOMPARE(other.listRuns(f).size(), size_t{1});
    // The tables are all still there.
    RawDb raw(path);
    QCOMPARE(raw.count("SELECT count(*) FROM runs"), int64_t{1});
  }

  void invalidJsonAndDuplicateIdRejected() {
    RunStore store = RunStore::open(freshPath());
    RunInfo info = makeInfo("rtn");
    info.hyperparametersJson = "{rank: 4";
    const QString e1 = errorOf([&] { store.createRun(info); });
    QVERIFY2(e1.contains("hyperparameters") && e1.contains("JSON"), qPrintable(e1));
    info = makeInfo("rtn");
    info.schemeJson.clear();
    info.hyperparametersJson.clear();
    info.engineVersion.clear();
    info.id = "fixed";
    store.createRun(info);
    const RunInfo back = store.getRunInfo("fixed");
    QCOMPARE(back.schemeJson, std::string("{}"));
    QCOMPARE(back.hyperparametersJson, std::string("{}"));
    QCOMPARE(back.engineVersion, std::string(defaultEngineVersion()));
    QVERIFY(!back.engineVersion.empty());
    const QString e2 = errorOf([&] { store.createRun(info); });
    QVERIFY2(e2.contains("'fixed' already exists"), qPrintable(e2));
  }

  void listOrderAndFilters() {
    RunStore store = RunStore::open(freshPath());
    std::vector<std::string> ids;
    const char *methods[] = {"rtn", "lrq", "gptq", "lrq", "flexround", "lrq"};
    for (int i = 0; i < 6; ++i)
      ids.push_back(store.createRun(makeInfo(methods[i], i % 2 ? "/m/b.gguf" : "/m/a.gguf")));
    // Same-second ids still come back newest first (creation order).
    std::vector<RunInfo> all = store.listRuns();
    QCOMPARE(all.size(), size_t{6});
    for (int i = 0; i < 6; ++i)
      QCOMPARE(all[i].id, ids[5 - i]);
    std::set<std::string> unique(ids.begin(), ids.end());
    QCOMPARE(unique.size(), size_t{6});
    for (size_t i = 1; i < all.size(); ++i)
      QVERIFY(all[i - 1].created >= all[i].created);

    RunFilter byMethod;
    byMethod.method = "lrq";
    std::vector<RunInfo> lrq = store.listRuns(byMethod);
    QCOMPARE(lrq.size(), size_t{3});
    QCOMPARE(lrq[0].id, ids[5]);
    QCOMPARE(lrq[1].id, ids[3]);
    QCOMPARE(lrq[2].id, ids[1]);

    RunFilter byModel;
    byModel.model = "/m/a.gguf";
    std::vector<RunInfo> a = store.listRuns(byModel);
    QCOMPARE(a.size(), size_t{3});
    for (const RunInfo &r : a)
      QCOMPARE(r.model.path, std::string("/m/a.gguf"));
    byModel.model = "sha256:" + std::string(64, 'a'); // the digest matches too
    QCOMPARE(store.listRuns(byModel).size(), size_t{6});

    RunFilter both;
    both.model = "/m/b.gguf";
    both.method = "lrq";
    QCOMPARE(store.listRuns(both).size(), size_t{3});
    both.model = "/m/a.gguf";
    QCOMPARE(store.listRuns(both).size(), size_t{0});

    store.finishRun(ids[2], RunStatus::Failed, "boom");
    RunFilter failed;
    failed.status = RunStatus::Failed;
    std::vector<RunInfo> f = store.listRuns(failed);
    QCOMPARE(f.size(), size_t{1});
    QCOMPARE(f[0].id, ids[2]);
    QCOMPARE(f[0].error, std::string("boom"));

    RunFilter limited;
    limited.limit = 2;
    std::vector<RunInfo> two = store.listRuns(limited);
    QCOMPARE(two.size(), size_t{2});
    QCOMPARE(two[0].id, ids[5]);

    // Imported runs with explicit creation times sort by that time.
    RunInfo old = makeInfo("rtn");
    old.created = "2001-01-01T00:00:00.000Z";
    old.id = "old-run";
    store.createRun(old);
    QCOMPARE(store.listRuns().back().id, std::string("old-run"));
  }

  void resolveIdByPrefix() {
    RunStore store = RunStore::open(freshPath());
    RunInfo info = makeInfo("rtn");
    for (const char *id : {"20260101-000000-aaaa", "20260101-000000-aabb", "2026%_x"}) {
      info.id = id;
      store.createRun(info);
    }
    QCOMPARE(store.resolveId("20260101-000000-aaa"), std::string("20260101-000000-aaaa"));
    QCOMPARE(store.resolveId("20260101-000000-aabb"), std::string("20260101-000000-aabb"));
    const QString amb = errorOf([&] { store.resolveId("20260101-000000-aa"); });
    QVERIFY2(amb.contains("ambiguous") && amb.contains("2 runs"), qPrintable(amb));
    // Wildcards in a prefix are literal.
    QCOMPARE(store.resolveId("2026%"), std::string("2026%_x"));
    QVERIFY_THROWS_EXCEPTION(NoSuchRun, store.resolveId("2026_"));
    QVERIFY_THROWS_EXCEPTION(NoSuchRun, store.resolveId("zzz"));
    QVERIFY(store.hasRun("2026%_x"));
    QVERIFY(!store.hasRun("2026%"));
  }

  void unknownIdNamesRunAndStore() {
    const std::string path = freshPath();
    RunStore store = RunStore::open(path);
    const QString want = QString("no run 'nope' in %1").arg(QString::fromStdString(path));
    QCOMPARE(errorOf([&] { store.getRun("nope"); }), want);
    QCOMPARE(errorOf([&] { store.getRunInfo("nope"); }), want);
    QCOMPARE(errorOf([&] { store.deleteRun("nope"); }), want);
    QCOMPARE(errorOf([&] { store.appendBlock("nope", BlockRecord{}); }), want);
    QCOMPARE(errorOf([&] { store.setMetric("nope", "kl", 1); }), want);
    QCOMPARE(errorOf([&] { store.finishRun("nope", RunStatus::Finished); }), want);
    QCOMPARE(errorOf([&] { store.compareRuns({"nope"}); }), want);
    QVERIFY_THROWS_EXCEPTION(NoSuchRun, store.appendSpectrum("nope", SpectrumRecord{}));
    RawDb raw(path);
    QCOMPARE(raw.count("SELECT count(*) FROM run_blocks"), int64_t{0});
  }

  void compareRunsTable() {
    RunStore store = RunStore::open(freshPath());
    RunInfo a = makeInfo("lrq");
    a.hyperparametersJson = R"({"rank":144,"iters":5000,"lr":0.001,"opt":{"beta1":0.9}})";
    a.metrics = {{"perplexity", 21.5}, {"kl", 0.031}};
    RunInfo b = makeInfo("flexround");
    b.hyperparametersJson = R"({"iters":5000,"lr":0.0005,"opt":{"beta1":0.9},"tag":"x y"})";
    b.schemeJson = R"({"name":"W3A16","weight":{"bits":3,"granularity":"per_channel"}})";
    b.metrics = {{"perplexity", 23.25}, {"top1", 0.9}};
    const std::string ida = store.createRun(a), idb = store.createRun(b);
    std::mt19937 rng(3);
    for (int blk = 0; blk < 2; ++blk) {
      store.appendBlock(ida, makeBlock(blk, 10, blk));
      store.appendLayerStats(ida, makeLayers(blk, rng));
    }
    store.finishRun(ida, RunStatus::Finished, {}, 100);
    store.finishRun(idb, RunStatus::Failed, "NaN in block 3 (q_proj)", 5);

    const RunComparison c = store.compareRuns({idb, ida});
    QCOMPARE(c.runIds, (std::vector<std::string>{idb, ida}));
    for (const ComparisonRow &row : c.rows) {
      QCOMPARE(row.cells.size(), size_t{2});
      QCOMPARE(row.values.size(), size_t{2});
    }
    auto row = [&](const char *group, const char *name) {
      const ComparisonRow *r = c.find(group, name);
      if (!r)
        qFatal("no row %s/%s", group, name);
      return *r;
    };
    QCOMPARE(row("run", "method").cells, (std::vector<std::string>{"flexround", "lrq"}));
    QVERIFY(row("run", "method").differs);
    QCOMPARE(row("run", "status").cells, (std::vector<std::string>{"failed", "finished"}));
    QCOMPARE(row("run", "error").cells[0], std::string("NaN in block 3 (q_proj)"));
    QVERIFY(!row("run", "model").differs);
    QCOMPARE(*row("run", "total seconds").values[1], 100.0);

    const ComparisonRow ppl = row("metric", "perplexity");
    QCOMPARE(*ppl.values[0], 23.25);
    QCOMPARE(*ppl.values[1], 21.5);
    QCOMPARE(ppl.cells[1], std::string("21.5"));
    const ComparisonRow kl = row("metric", "kl");
    QVERIFY(!kl.values[0].has_value());
    QCOMPARE(kl.cells[0], std::string());
    QCOMPARE(*kl.values[1], 0.031);
    QVERIFY(row("metric", "top1").values[0].has_value());

    // Reconstruction and layer totals, recomputed here from what was written.
    double finalSum = 0;
    for (int blk = 0; blk < 2; ++blk)
      finalSum += makeBlock(blk, 10, blk).finalLoss;
    QCOMPARE(*row("reconstruction", "blocks").values[1], 2.0);
    QCOMPARE(*row("reconstruction", "blocks").values[0], 0.0);
    QVERIFY(std::fabs(*row("reconstruction", "final loss (sum)").values[1] - finalSum) < 1e-15);
    std::mt19937 rng2(3);
    int64_t params = 0;
    for (int blk = 0; blk < 2; ++blk)
      for (const LayerStats &l : makeLayers(blk, rng2))
        params += l.learnableParams;
    QCOMPARE(*row("layers", "learnable parameters").values[1], static_cast<double>(params));
    QCOMPARE(row("layers", "learnable parameters").cells[1], std::to_string(params));

    // Hyperparameters: union of keys, nested keys flattened, blanks for absent.
    QCOMPARE(row("hyperparameter", "rank").cells, (std::vector<std::string>{"", "144"}));
    QCOMPARE(*row("hyperparameter", "rank").values[1], 144.0);
    QCOMPARE(row("hyperparameter", "lr").cells, (std::vector<std::string>{"0.0005", "0.001"}));
    QVERIFY(row("hyperparameter", "lr").differs);
    QVERIFY(!row("hyperparameter", "iters").differs);
    QVERIFY(!row("hyperparameter", "opt.beta1").differs);
    QCOMPARE(row("hyperparameter", "tag").cells[0], std::string("x y"));
    QCOMPARE(row("scheme", "weight.bits").cells, (std::vector<std::string>{"3", "4"}));
    QCOMPARE(row("scheme", "name").cells, (std::vector<std::string>{"W3A16", "W4A16"}));

    // The printable form holds every run id, and the differing rows only when asked.
    const QString text = QString::fromStdString(formatComparison(c));
    QVERIFY(text.startsWith(" "));
    QVERIFY(text.contains(QString::fromStdString(ida)) &&
            text.contains(QString::fromStdString(idb)));
    QVERIFY(text.contains(QRegularExpression("\\n  perplexity +23\\.25 +21\\.5\\n")));
    QVERIFY(text.contains("opt.beta1"));
    const QString diff = QString::fromStdString(formatComparison(c, true));
    QVERIFY(!diff.contains("opt.beta1"));
    QVERIFY(diff.contains("\n  lr ") && diff.contains("\n  perplexity "));
    // Every line of the table has its cells aligned: same column start for run 2.
    const QStringList lines = text.split('\n', Qt::SkipEmptyParts);
    const int col2 = lines[0].indexOf(QString::fromStdString(ida));
    QVERIFY(col2 > 0);
    for (const QString &line : lines)
      if (line.startsWith("  ") && line.size() > col2)
        QVERIFY2(line[col2 - 1] == ' ', qPrintable(line));
  }

  void deleteCascadesAndShrinks() {
    const std::string path = freshPath();
    std::string keep, gone;
    {
      RunStore store = RunStore::open(path);
      keep = store.createRun(makeInfo("rtn"));
      gone = store.createRun(makeInfo("lrq"));
      std::mt19937 rng(1);
      for (const std::string &id : {keep, gone}) {
        store.setMetric(id, "perplexity", 20);
        for (int b = 0; b < 30; ++b) {
          store.appendBlock(id, makeBlock(b, id == gone ? 3000 : 10, b));
          store.appendLayerStats(id, makeLayers(b, rng));
          if (id == gone)
            store.appendSpectra(id, makeSpectra(b, rng));
        }
      }
    }
    const auto sizeBefore = fs::file_size(path);
    RawDb raw(path);
    const std::string goneSeq =
        std::to_string(raw.count("SELECT seq FROM runs WHERE id = '" + gone + "'"));
    const char *tables[] = {"run_metrics", "run_blocks", "run_layers", "run_spectra"};
    for (const char *t : tables)
      QVERIFY(raw.count(std::string("SELECT count(*) FROM ") + t + " WHERE run_seq = " + goneSeq) >
              0);
    {
      RunStore store = RunStore::open(path);
      store.deleteRun(gone);
      QVERIFY(!store.hasRun(gone));
      QVERIFY_THROWS_EXCEPTION(NoSuchRun, store.getRun(gone));
      const RunRecord kept = store.getRun(keep);
      QCOMPARE(kept.blocks.size(), size_t{30});
      QCOMPARE(kept.layers.size(), size_t{210});
    }
    for (const char *t : tables) {
      QVERIFY2(
          raw.count(std::string("SELECT count(*) FROM ") + t + " WHERE run_seq = " + goneSeq) == 0,
          t);
      QCOMPARE(raw.count(std::string("SELECT count(*) FROM ") + t +
                         " WHERE run_seq NOT IN (SELECT seq FROM runs)"),
               int64_t{0});
    }
    QCOMPARE(raw.count("SELECT count(*) FROM runs"), int64_t{1});
    QCOMPARE(raw.count("SELECT count(*) FROM run_blocks"), int64_t{30});
    QCOMPARE(raw.count("SELECT count(*) FROM run_layers"), int64_t{210});
    QCOMPARE(raw.count("SELECT count(*) FROM run_metrics"), int64_t{1});
    QVERIFY(raw.exec("PRAGMA wal_checkpoint(TRUNCATE)"));
    const auto sizeAfter = fs::file_size(path);
    qInfo("store file %llu bytes before deleting the large run, %llu after",
          static_cast<unsigned long long>(sizeBefore), static_cast<unsigned long long>(sizeAfter));
    QVERIFY(sizeAfter < sizeBefore / 2);
  }

  void failedAndCancelledRuns() {
    const std::string path = freshPath();
    RunStore store = RunStore::open(path);
    const std::string failed = store.createRun(makeInfo("flexround"));
    const std::string cancelled = store.createRun(makeInfo("lrq"));
    QCOMPARE(store.getRunInfo(failed).status, RunStatus::Running);
    store.appendBlock(failed, makeBlock(0, 50, 0));
    const std::string message = "block 4, layer mlp.down_proj: loss is NaN at iteration 17";
    store.finishRun(failed, RunStatus::Failed, message, 12.5);
    store.finishRun(cancelled, RunStatus::Cancelled, "cancelled by user");
    RunInfo f = store.getRunInfo(failed);
    QCOMPARE(f.status, RunStatus::Failed);
    QCOMPARE(f.error, message);
    QCOMPARE(f.totalSeconds, 12.5);
    QCOMPARE(f.blockCount, 1);
    RunInfo c = store.getRunInfo(cancelled);
    QCOMPARE(c.status, RunStatus::Cancelled);
    QCOMPARE(c.error, std::string("cancelled by user"));
    QCOMPARE(c.totalSeconds, 0.0); // untouched (< 0 keeps it)
    RawDb raw(path);
    QCOMPARE(raw.count("SELECT count(*) FROM runs WHERE status = 'failed'"), int64_t{1});
    QCOMPARE(raw.count("SELECT count(*) FROM runs WHERE status = 'cancelled'"), int64_t{1});
    // Resuming reopens the run and clears the error; a redone block replaces the old one.
    store.finishRun(failed, RunStatus::Running);
    f = store.getRunInfo(failed);
    QCOMPARE(f.status, RunStatus::Running);
    QVERIFY(f.error.empty());
    BlockRecord redo = makeBlock(0, 70, 9);
    store.appendBlock(failed, redo);
    const RunRecord r = store.getRun(failed);
    QCOMPARE(r.blocks.size(), size_t{1});
    QCOMPARE(r.blocks[0].curve.size(), size_t{70});
    QCOMPARE(r.blocks[0].finalLoss, redo.finalLoss);
  }

  void recorderTurnsEventsIntoRecords() {
    RunStore store = RunStore::open(freshPath());
    const std::string id = store.createRun(makeInfo("lrq"));
    CountingObserver front;
    RunRecorder rec(store, id, &front);
    for (int b = 0; b < 3; ++b) {
      rec.blockStarted(b, 3);
      for (int it = 0; it < 100; ++it)
        rec.iterationLoss(b, it, 1.0 / (1 + it + b));
      rec.blockFinished(b, 1.0 / (1 + b), 1.0 / (100 + b), 0.25);
    }
    rec.metric("perplexity", 30.5);
    rec.finished();
    QVERIFY(rec.storageError().empty());
    QCOMPARE(front.blockStarts, 3);
    QCOMPARE(front.iterations, 300);
    QCOMPARE(front.blockEnds, 3);
    QCOMPARE(front.metrics, 1);
    QCOMPARE(front.finishes, 1);
    const RunRecord run = store.getRun(id);
    // A stage's "finished" is not the run's end: the job records that last, after
    // evaluation and export (a run browser must not show it finished earlier).
    QCOMPARE(run.status, RunStatus::Running);
    QCOMPARE(run.metrics.at("perplexity"), 30.5);
    QCOMPARE(run.blocks.size(), size_t{3});
    for (int b = 0; b < 3; ++b) {
      QCOMPARE(run.blocks[b].curve.size(), size_t{100});
      QCOMPARE(run.blocks[b].curve[99].iteration, 99);
      QCOMPARE(run.blocks[b].curve[99].loss, static_cast<float>(1.0 / (100 + b)));
      QCOMPARE(run.blocks[b].finalLoss, 1.0 / (100 + b));
    }
    // A recorder whose run is missing keeps going and says why on the front end.
    RunRecorder lost(store, "missing", &front);
    lost.blockStarted(0, 1);
    lost.blockFinished(0, 1, 0.5, 1);
    lost.failed("x");
    QCOMPARE(front.failures, 1);
    QVERIFY(QString::fromStdString(lost.storageError()).contains("no run 'missing'"));
    QCOMPARE(front.warnings.size(), size_t{2});
    // Cancelled has no observer event of its own.
    const std::string id2 = store.createRun(makeInfo("lrq"));
    RunRecorder rec2(store, id2);
    rec2.cancelled();
    QCOMPARE(store.getRunInfo(id2).status, RunStatus::Cancelled);
  }

  // Held-out losses: stored beside the training losses (NULL when a block has
  // none), read back exactly, carried by the recorder, summed in the comparison;
  // a store from before the held-out columns opens read-only and writable.
  void heldoutLossesRoundTripAndOlderStores() {
    const std::string path = freshPath();
    {
      RunStore store = RunStore::open(path);
      const std::string id = store.createRun(makeInfo("lrq"));
      BlockRecord with = makeBlock(0, 20, 3), without = makeBlock(1, 20, 4);
      with.heldoutInitialLoss = 0.1 + 1e-15;
      with.heldoutFinalLoss = 1.0 / 3.0;
      store.appendBlocks(id, {with, without});
      const RunRecord r = store.getRun(id);
      QCOMPARE(r.blocks.size(), size_t(2));
      QVERIFY(r.blocks[0].heldoutInitialLoss && r.blocks[0].heldoutFinalLoss);
      QVERIFY(sameDouble(*r.blocks[0].heldoutInitialLoss, 0.1 + 1e-15));
      QVERIFY(sameDouble(*r.blocks[0].heldoutFinalLoss, 1.0 / 3.0));
      QVERIFY(!r.blocks[1].heldoutInitialLoss && !r.blocks[1].heldoutFinalLoss);
      // The columns as SQLite sees them: a value, and NULL for none.
      RawDb raw(path);
      QCOMPARE(raw.count("SELECT count(*) FROM run_blocks WHERE heldout_final_loss IS NULL"),
               int64_t(1));
      QCOMPARE(raw.count("SELECT count(*) FROM run_blocks WHERE block = 0 AND "
                         "heldout_final_loss = 1.0 / 3.0 AND heldout_initial_loss > 0.1"),
               int64_t(1));

      // The recorder attaches the held-out figures to the block that follows them.
      const std::string id2 = store.createRun(makeInfo("flexround"));
      RunRecorder rec(store, id2);
      rec.blockStarted(0, 2);
      rec.iterationLoss(0, 0, 0.5);
      rec.blockHeldOut(0, 0.6, 0.4);
      rec.blockFinished(0, 0.5, 0.2, 1);
      rec.blockStarted(1, 2);
      rec.iterationLoss(1, 0, 0.5);
      rec.blockFinished(1, 0.5, 0.25, 1); // no held-out figures for this one
      const RunRecord r2 = store.getRun(id2);
      QCOMPARE(r2.blocks.size(), size_t(2));
      QCOMPARE(r2.blocks[0].heldoutInitialLoss.value_or(-1), 0.6);
      QCOMPARE(r2.blocks[0].heldoutFinalLoss.value_or(-1), 0.4);
      QVERIFY(!r2.blocks[1].heldoutFinalLoss);

      // Comparison: sums over the blocks that have them, and the ratio to the
      // training final loss over the same blocks (0.4 / 0.2 = 2).
      const RunComparison c = store.compareRuns({id, id2});
      const ComparisonRow *sum = c.find("reconstruction", "held-out final loss (sum)");
      const ComparisonRow *ratio = c.find("reconstruction", "held-out / training final loss");
      QVERIFY(sum && ratio);
      QCOMPARE(sum->values[0].value_or(-1), 1.0 / 3.0);
      QCOMPARE(sum->values[1].value_or(-1), 0.4);
      QVERIFY(std::abs(ratio->values[0].value_or(-1) - (1.0 / 3.0) / with.finalLoss) < 1e-12);
      QCOMPARE(ratio->values[1].value_or(-1), 2.0);
    }

    // A store as written before the held-out columns existed (schema 1, owner
    // columns present, run_blocks without heldout_*), holding one block.
    const std::string old = freshPath("old");
    {
      RawDb raw(old);
      QVERIFY(raw.exec(R"sql(
CREATE TABLE lrq_schema (version INTEGER NOT NULL);
INSERT INTO lrq_schema (version) VALUES (1);
CREATE TABLE runs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, created TEXT NOT NULL,
  status TEXT NOT NULL, model_path TEXT NOT NULL, model_digest TEXT NOT NULL,
  method TEXT NOT NULL, scheme_json TEXT NOT NULL, hyperparameters_json TEXT NOT NULL,
  engine_version TEXT NOT NULL, total_seconds REAL, error TEXT NOT NULL DEFAULT '',
  notes TEXT NOT NULL DEFAULT '', owner_pid INTEGER, owner_host TEXT, owner_start TEXT,
  heartbeat REAL, export_dir TEXT, packed_path TEXT);
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
INSERT INTO runs (id, created, status, model_path, model_digest, method, scheme_json,
  hyperparameters_json, engine_version, total_seconds) VALUES
  ('old-run', '2026-01-01T00:00:00.000Z', 'finished', 'm', 'd', 'lrq', '{}', '{}', '0.1', 3);
INSERT INTO run_blocks VALUES (1, 0, 0.5, 0.25, 2.0, 0, x'');
)sql"));
    }
    {
      RunStoreOptions readOnly;
      readOnly.readOnly = true;
      RunStore store = RunStore::open(old, readOnly);
      const RunRecord r = store.getRun("old-run");
      QCOMPARE(r.blocks.size(), size_t(1));
      QCOMPARE(r.blocks[0].finalLoss, 0.25);
      QVERIFY(!r.blocks[0].heldoutFinalLoss);
      QVERIFY(!store.compareRuns({"old-run"}).find("reconstruction", "held-out final loss (sum)"));
    }
    QCOMPARE(RawDb(old).count("SELECT count(*) FROM pragma_table_info('run_blocks') WHERE name "
                              "LIKE 'heldout%'"),
             int64_t(0)); // reading changed nothing
    {
      RunStore store = RunStore::open(old);
      QCOMPARE(store.schemaVersion(), 1); // additive columns: older builds still open it
      QVERIFY(!store.getRun("old-run").blocks[0].heldoutFinalLoss);
      const std::string id = store.createRun(makeInfo("lrq"));
      BlockRecord b = makeBlock(0, 5, 1);
      b.heldoutInitialLoss = 2.5;
      b.heldoutFinalLoss = 1.5;
      store.appendBlock(id, b);
      QCOMPARE(RunStore::open(old).getRun(id).blocks[0].heldoutFinalLoss.value_or(-1), 1.5);
    }
    QCOMPARE(RawDb(old).count("SELECT count(*) FROM pragma_table_info('run_blocks') WHERE name "
                              "LIKE 'heldout%'"),
             int64_t(2));
  }

  // A desktop app reading while a CLI run writes: two stores on one file.
  void readerAndWriterConcurrently() {
    const std::string path = freshPath();
    RunStore reader = RunStore::open(path);
    std::atomic<bool> done{false};
    std::string id;
    std::exception_ptr writerError;
    std::mutex idMutex;
    std::thread writer([&] {
      try {
        RunStore store = RunStore::open(path);
        const std::string myId = store.createRun(makeInfo("lrq"));
        {
          std::lock_guard<std::mutex> lock(idMutex);
          id = myId;
        }
        std::mt19937 rng(5);
        for (int b = 0; b < 30; ++b) {
          store.appendBlock(myId, makeBlock(b, 2000, b));
          store.appendLayerStats(myId, makeLayers(b, rng));
          store.appendSpectra(myId, makeSpectra(b, rng));
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        store.setMetric(myId, "perplexity", 22);
        store.finishRun(myId, RunStatus::Finished, {}, 3);
      } catch (...) {
        writerError = std::current_exception();
      }
      done = true;
    });
    int reads = 0;
    std::set<size_t> blockCountsSeen;
    QString readerError;
    while (!done) {
      std::string current;
      {
        std::lock_guard<std::mutex> lock(idMutex);
        current = id;
      }
      if (current.empty()) {
        std::this_thread::yield();
        continue;
      }
      try {
        const std::vector<RunInfo> runs = reader.listRuns();
        const RunRecord run = reader.getRun(current);
        ++reads;
        blockCountsSeen.insert(run.blocks.size());
        if (runs.size() != 1)
          readerError = "list saw " + QString::number(runs.size()) + " runs";
        // One snapshot: every block complete, numbered 0..n-1, layers and
        // spectra never ahead of their block.
        for (size_t b = 0; b < run.blocks.size(); ++b)
          if (run.blocks[b].index != static_cast<int>(b) || run.blocks[b].curve.size() != 2000)
            readerError = "incomplete block seen";
        if (run.layers.size() > 7 * run.blocks.size() ||
            run.spectra.size() > 28 * run.blocks.size() ||
            run.layers.size() + 7 < 7 * run.blocks.size())
          readerError = "layers out of step with blocks";
      } catch (const std::exception &e) {
        readerError = e.what();
      }
      if (!readerError.isEmpty())
        break;
    }
    writer.join();
    if (writerError)
      std::rethrow_exception(writerError);
    QVERIFY2(readerError.isEmpty(), qPrintable(readerError));
    qInfo("reader made %d reads while the writer wrote; saw %zu different block counts", reads,
          blockCountsSeen.size());
    QVERIFY(blockCountsSeen.size() >= 3); // the reads really overlapped the writes
    const RunRecord last = reader.getRun(id);
    QCOMPARE(last.blocks.size(), size_t{30});
    QCOMPARE(last.status, RunStatus::Finished);
  }

  void twoWritersConcurrently() {
    const std::string path = freshPath();
    RunStore::open(path); // create the schema first; concurrent creation is tested below
    std::vector<std::string> ids[2];
    std::exception_ptr errors[2];
    auto work = [&](int w) {
      try {
        RunStore store = RunStore::open(path);
        for (int r = 0; r < 15; ++r) {
          const std::string id = store.createRun(makeInfo(w ? "gptq" : "rtn"));
          ids[w].push_back(id);
          for (int b = 0; b < 4; ++b)
            store.appendBlock(id, makeBlock(b, 200, b));
          store.finishRun(id, RunStatus::Finished, {}, r);
        }
      } catch (...) {
        errors[w] = std::current_exception();
      }
    };
    std::thread t0(work, 0), t1(work, 1);
    t0.join();
    t1.join();
    for (auto &e : errors)
      if (e)
        std::rethrow_exception(e);
    RunStore store = RunStore::open(path);
    QCOMPARE(store.listRuns().size(), size_t{30});
    for (const auto &list : ids)
      for (const std::string &id : list)
        QCOMPARE(store.getRun(id).blocks.size(), size_t{4});
    RawDb raw(path);
    QCOMPARE(raw.count("SELECT count(*) FROM run_blocks"), int64_t{120});

    // Two programs creating the same new store at once both succeed.
    const std::string fresh = freshPath();
    std::exception_ptr openErrors[2];
    auto opener = [&](int w) {
      try {
        RunStore s = RunStore::open(fresh);
        s.createRun(makeInfo("rtn"));
      } catch (...) {
        openErrors[w] = std::current_exception();
      }
    };
    std::thread o0(opener, 0), o1(opener, 1);
    o0.join();
    o1.join();
    for (auto &e : openErrors)
      if (e)
        std::rethrow_exception(e);
    QCOMPARE(RunStore::open(fresh).listRuns().size(), size_t{2});
  }

  // Another program holding the write lock: a write waits for it within the
  // busy timeout, and fails with a message naming the file beyond it.
  void busyTimeout() {
    const std::string path = freshPath();
    RunStore store = RunStore::open(path);
    const std::string id = store.createRun(makeInfo("rtn"));
    RawDb other(path);
    QVERIFY(other.exec("BEGIN IMMEDIATE"));
    QVERIFY(other.exec("UPDATE runs SET notes = 'held'"));
    std::exception_ptr error;
    QElapsedTimer timer;
    timer.start();
    std::thread t([&] {
      try {
        store.setMetric(id, "kl", 0.5);
      } catch (...) {
        error = std::current_exception();
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    QVERIFY(other.exec("COMMIT"));
    t.join();
    const qint64 waited = timer.elapsed();
    if (error)
      std::rethrow_exception(error);
    QVERIFY2(waited >= 350, qPrintable(QString::number(waited)));
    QCOMPARE(store.getRunInfo(id).metrics.at("kl"), 0.5);
    QCOMPARE(store.getRunInfo(id).notes, std::string("held"));
    // Reads are never blocked by a writer in WAL mode.
    QVERIFY(other.exec("BEGIN IMMEDIATE"));
    QCOMPARE(store.listRuns().size(), size_t{1});

    RunStoreOptions impatient;
    impatient.busyTimeoutMs = 100;
    RunStore quick = RunStore::open(path, impatient);
    timer.restart();
    const QString msg = errorOf([&] { quick.setMetric(id, "kl", 0.7); });
    QVERIFY(timer.elapsed() >= 90);
    QVERIFY(other.exec("ROLLBACK"));
    QVERIFY2(msg.startsWith(QString::fromStdString(path) + ": ") && msg.contains("locked"),
             qPrintable(msg));
    QCOMPARE(quick.getRunInfo(id).metrics.at("kl"), 0.5);
  }

  void newerSchemaRefused() {
    const std::string path = freshPath();
    RunStore::open(path).createRun(makeInfo("rtn"));
    {
      RawDb raw(path);
      QVERIFY(raw.exec("UPDATE lrq_schema SET version = 99"));
    }
    try {
      RunStore::open(path);
      QFAIL("opened a store from the future");
    } catch (const FileError &e) {
      QCOMPARE(e.path(), path);
      const QString msg = e.what();
      QVERIFY2(msg.contains("schema version 99") && msg.contains("newer") &&
                   msg.contains(QString::number(RunStore::kSchemaVersion)),
               qPrintable(msg));
    }
    RawDb raw(path);
    QCOMPARE(raw.count("SELECT version FROM lrq_schema"), int64_t{99}); // left alone
    QCOMPARE(raw.count("SELECT count(*) FROM runs"), int64_t{1});
  }

  void notARunStore() {
    // Random bytes.
    const std::string garbage = freshPath("garbage");
    {
      std::ofstream out(garbage, std::ios::binary);
      std::mt19937 rng(11);
      for (int i = 0; i < 8192; ++i)
        out.put(static_cast<char>(rng()));
    }
    // A text file.
    const std::string text = freshPath("text");
    std::ofstream(text) << "perplexity 23.4\n";
    for (const std::string &p : {garbage, text}) {
      try {
        RunStore::open(p);
        QFAIL("opened a non-database");
      } catch (const FileError &e) {
        QCOMPARE(e.path(), p);
        QVERIFY2(QString(e.what()).startsWith(QString::fromStdString(p) + ": "), e.what());
        QVERIFY2(QString(e.what()).contains("not a run store"), e.what());
      }
    }
    // Nothing was written into them.
    QCOMPARE(fs::file_size(text), uintmax_t{16});

    // Another program's SQLite database.
    const std::string foreign = freshPath("foreign");
    {
      RawDb raw(foreign);
      QVERIFY(raw.exec("CREATE TABLE contacts (name TEXT)"));
    }
    const QString e3 = errorOf([&] { RunStore::open(foreign); });
    QVERIFY2(e3.contains(QString::fromStdString(foreign)) && e3.contains("not an LRQ run store"),
             qPrintable(e3));

    // A directory.
    const QString e4 = errorOf([&] { RunStore::open(tmp_.path().toStdString()); });
    QVERIFY2(e4.contains("is a directory"), qPrintable(e4));

    // An empty file is a new store.
    const std::string empty = freshPath("empty");
    std::ofstream(empty).close();
    QCOMPARE(RunStore::open(empty).schemaVersion(), RunStore::kSchemaVersion);
  }

  void damagedStoreReported() {
    const std::string path = freshPath("damaged");
    std::string id;
    {
      RunStore store = RunStore::open(path);
      id = store.createRun(makeInfo("rtn"));
      store.appendBlock(id, makeBlock(0, 100, 0));
    }
    // A curve whose recorded length disagrees with its bytes.
    {
      RawDb raw(path);
      QVERIFY(raw.exec("UPDATE run_blocks SET point_count = 99"));
    }
    {
      RunStore store = RunStore::open(path);
      try {
        store.getRun(id);
        QFAIL("read a damaged curve");
      } catch (const FileError &e) {
        QVERIFY2(QString(e.what()).contains("damaged") && QString(e.what()).contains(id.c_str()),
                 e.what());
      }
    }
    // Page 1 (the schema) overwritten after the 100-byte header.
    {
      std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
      f.seekp(100);
      for (int i = 0; i < 3000; ++i)
        f.put(static_cast<char>(0xA5));
    }
    try {
      RunStore store = RunStore::open(path);
      store.getRun(id);
      QFAIL("read a store with a damaged schema page");
    } catch (const FileError &e) {
      QCOMPARE(e.path(), path);
      QVERIFY2(QString(e.what()).contains("damaged"), e.what());
    }
  }

  void defaultPathAndParentDirectories() {
    const QByteArray saved = qgetenv("LRQ_DATA_DIR");
    const QString dir = QDir(tmp_.path()).filePath("data/deeper");
    qputenv("LRQ_DATA_DIR", dir.toUtf8());
    const std::string path = RunStore::defaultPath();
    QCOMPARE(QString::fromStdString(path), dir + "/runs.sqlite");
    {
      RunStore store = RunStore::open(path); // creates data/deeper
      store.createRun(makeInfo("rtn"));
    }
    QVERIFY(QFile::exists(dir + "/runs.sqlite"));
    if (saved.isNull())
      qunsetenv("LRQ_DATA_DIR");
    else
      qputenv("LRQ_DATA_DIR", saved);
  }

  void modelIdentityDigests() {
    const QString dir = QDir(tmp_.path()).filePath("model-dir");
    QDir().mkpath(dir + "/sub");
    const QString file = dir + "/model.safetensors";
    QByteArray content(100000, '\0');
    for (int i = 0; i < content.size(); ++i)
      content[i] = static_cast<char>((i * 131) ^ (i >> 7));
    {
      QFile f(file);
      QVERIFY(f.open(QIODevice::WriteOnly));
      f.write(content);
    }
    {
      QFile f(dir + "/sub/config.json");
      QVERIFY(f.open(QIODevice::WriteOnly));
      f.write("{}");
    }
    const ModelIdentity sha = identifyModel(file.toStdString(), true);
    QCOMPARE(sha.path, file.toStdString());
    QCOMPARE(QString::fromStdString(sha.digest),
             "sha256:" + QCryptographicHash::hash(content, QCryptographicHash::Sha256).toHex());
    struct stat st {};
    QCOMPARE(::stat(file.toUtf8().constData(), &st), 0);
    const ModelIdentity quick = identifyModel(file.toStdString(), false);
    QCOMPARE(quick.digest,
             "size=100000;mtime=" +
                 std::to_string(static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL +
                                st.st_mtim.tv_nsec));

    const std::string dirSha = identifyModel(dir.toStdString(), true).digest;
    const std::string dirQuick = identifyModel(dir.toStdString(), false).digest;
    QVERIFY(QString::fromStdString(dirSha).startsWith("sha256-dir:"));
    QVERIFY(QString::fromStdString(dirQuick).startsWith("stat-dir:"));
    QCOMPARE(identifyModel(dir.toStdString(), true).digest, dirSha); // deterministic
    {
      QFile f(dir + "/sub/config.json"); // same size, new content
      QVERIFY(f.open(QIODevice::WriteOnly));
      f.write("[]");
    }
    QVERIFY(identifyModel(dir.toStdString(), true).digest != dirSha);
    QVERIFY_THROWS_EXCEPTION(FileError, identifyModel(dir.toStdString() + "/absent", true));
  }

  // Figures: writing a 30 x 5000-point run the way a reconstruction does (one
  // transaction per block, layers and spectra per block), and its file size.
  void largeRunWriteTimeAndSize() {
    const std::string path = freshPath("large");
    std::mt19937 rng(9);
    std::vector<BlockRecord> blocks;
    std::vector<std::vector<LayerStats>> layers;
    std::vector<std::vector<SpectrumRecord>> spectra;
    for (int b = 0; b < 30; ++b) {
      blocks.push_back(makeBlock(b, 5000, 1000 + b));
      layers.push_back(makeLayers(b, rng));
      spectra.push_back(makeSpectra(b, rng));
    }
    QElapsedTimer timer;
    timer.start();
    std::string id;
    qint64 blocksMs = 0, restMs = 0;
    {
      RunStore store = RunStore::open(path);
      id = store.createRun(makeInfo("lrq"));
      QElapsedTimer part;
      for (int b = 0; b < 30; ++b) {
        part.start();
        store.appendBlock(id, blocks[b]);
        blocksMs += part.elapsed();
        part.start();
        store.appendLayerStats(id, layers[b]);
        store.appendSpectra(id, spectra[b]);
        restMs += part.elapsed();
      }
      for (const char *m : {"perplexity", "kl", "top1"})
        store.setMetric(id, m, 1.5);
      store.finishRun(id, RunStatus::Finished, {}, 100);
    }
    const qint64 totalMs = timer.elapsed();
    const auto bytes = fs::file_size(path); // closing checkpointed the WAL into the file
    QVERIFY(!fs::exists(path + "-wal") || fs::file_size(path + "-wal") == 0);
    size_t spectrumValues = 0;
    for (const auto &s : spectra)
      for (const auto &r : s)
        spectrumValues += r.values.size();
    const double curveBytes = 30.0 * 5000 * 8, spectraBytes = spectrumValues * 8.0;

    RunStore store = RunStore::open(path);
    timer.restart();
    const RunRecord run = store.getRun(id);
    const qint64 readMs = timer.elapsed();
    QCOMPARE(run.blocks.size(), size_t{30});
    QCOMPARE(run.blocks[29].curve.size(), size_t{5000});
    QCOMPARE(run.spectra.size(), size_t{30 * 28});
    QCOMPARE(run.blocks[17].curve[4321].loss, blocks[17].curve[4321].loss);

    qInfo("30 blocks x 5000-point curves: blocks written in %lld ms (%.2f ms per block), "
          "210 layer stats + 840 spectra (%zu values) in %lld ms; whole run %lld ms; "
          "read back in %lld ms",
          static_cast<long long>(blocksMs), blocksMs / 30.0, spectrumValues,
          static_cast<long long>(restMs), static_cast<long long>(totalMs),
          static_cast<long long>(readMs));
    qInfo("file %.2f MB for %.2f MB of curves + %.2f MB of spectra (overhead %.1f%%)", bytes / 1e6,
          curveBytes / 1e6, spectraBytes / 1e6,
          100.0 * (bytes - curveBytes - spectraBytes) / (curveBytes + spectraBytes));
    // The payload is stored as raw binary, not text: within 15% of its size.
    QVERIFY(bytes >= curveBytes + spectraBytes);
    QVERIFY(bytes < 1.15 * (curveBytes + spectraBytes));
  }
};

QTEST_GUILESS_MAIN(TestRuns)
#include "test_runs.moc"
