// End-to-end, from the command line: every quantization method and every
// scheme preset (each once, paired in turn, not the whole product) completes
// with tiny settings, is listed by `lrq runs list`, and its HF export loads in
// `lrq eval`. Most cells run on a tiny seeded LLaMA written here (2 blocks,
// widths that every block format takes); two run on the default model, whose
// 30 blocks and odd widths (576 is not a multiple of 256) are the realism. Without activation
// quantizers the export's perplexity is the run's; with them (A8, KV8) the export holds the weights
// only, and `lrq eval` says so (not_exported, a note, a warning) instead of passing off another
// number as the run's.
#include <QDir>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QMap>
#include <QSet>
#include <QtTest>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>

#include "cli_process.h"
#include "test_support.h"
#include "tiny_llama.h"

using lrq::test::Result;
using lrq::test::runLrq;

// A safety net against hangs only: on a busy machine a run takes many minutes.
constexpr int kLongRun = 3600 * 1000;

struct Cell {
  const char *method;
  const char *scheme;
  bool realModel = false; // the default model; otherwise the tiny one
};

// The tiny model: 2 blocks; in-features 256 and 512, so Q4_K and Q6_K
// super-blocks, groups of 128 and llama.cpp's 32 all fit every linear.
const lrq::test::TinyLlamaShape kTinyShape{256, 256, 512, 64, 256};

// Every method once, every scheme preset once, in the order of the test
// functions below. The pairs avoid the reference settings whose default init
// is the 2-D clipping search (LRQ at W3A16 and W4A8, FlexRound at W4A8): on
// this model it costs minutes for 30 blocks, and test_grid_init checks it;
// this test is about the plumbing. The out-of-domain text and held-out samples
// are checked elsewhere too (test_quantize_cli, test_recon).
const Cell kCells[] = {
    {"rtn", "W8A8"},
    {"gptq", "W4A8-KV8", true},
    {"flexround", "W4A16"},
    {"lrq", "W4A16-g128"},
    {"rtn-learned-step", "W3A16"},
    {"lrqat", "W3A16-g128"},
    {"lqer", "W2A16-g64"},
    {"l2qer", "W8A8"},
    // The llama.cpp block formats (f16 / f16-offset steps, groups of 32).
    {"rtn", "gguf-q8_0"},
    {"rtn", "gguf-q6_k"},
    {"lrq", "gguf-q4_k", true},
    {"gptq", "gguf-q5_0"},
    {"lrq", "gguf-q4_0"},
    {"lrqat", "gguf-q5_1"},
    {"flexround", "gguf-q4_1"},
};
constexpr int kCellCount = int(sizeof(kCells) / sizeof(kCells[0]));

class TestMethodMatrixCli : public QObject {
  Q_OBJECT

  // Store, work directories and exports (538 MB each, f32) on tmpfs where the
  // system has one: the exporter's fsync costs seconds per cell on a disk and
  // proves nothing here (test_full_disk checks the writers).
  QTemporaryDir dir_{lrq::test::scratchDirTemplate("lrq-method-matrix")};
  QString store_;
  QString tinyModel_;
  QStringList runIds_;

  QMap<QString, QJsonObject> defaults_; // method -> its hyperparameters
  QStringList schemes_;
  QSet<QString> covered_;

  // Cell i's `lrq quantize`, started ahead: while one cell's export is
  // evaluated the next cell quantizes, so both cores work through the
  // single-threaded parts (start-up, loading, export). One intra-op thread
  // each, since two processes share the cores. Output goes to files: a full
  // pipe would stall the child while the test waits on the other process.
  std::map<int, std::unique_ptr<QProcess>> quantizes_;

  QString cellOut(int i) const {
    return dir_.filePath(QString::fromUtf8(kCells[i].method) + "-" + kCells[i].scheme);
  }

  void startQuantize(int i) {
    if (i >= kCellCount || quantizes_.count(i))
      return;
    const QString method = QString::fromUtf8(kCells[i].method);
    const QJsonObject defaults = defaults_.value(method);
    QJsonObject hyper;
    if (defaults.contains("iters"))
      hyper["iters"] = 3;
    if (defaults.contains("steps"))
      hyper["steps"] = 3;
    const QString hyperText =
        QString::fromUtf8(QJsonDocument(hyper).toJson(QJsonDocument::Compact));
    const QString prefix = dir_.filePath(QString("cell%1").arg(i));
    auto proc = std::make_unique<QProcess>();
    proc->setStandardOutputFile(prefix + ".out");
    proc->setStandardErrorFile(prefix + ".err");
    proc->start(lrq::test::lrqPath(), {"quantize",
                                       kCells[i].realModel ? QString("default") : tinyModel_,
                                       "--method",
                                       method,
                                       "--scheme",
                                       QString::fromUtf8(kCells[i].scheme),
                                       "--nsamples",
                                       "2",
                                       "--seq-len",
                                       "32",
                                       "--eval-seq-len",
                                       "128",
                                       "--eval-windows",
                                       "1",
                                       "--hyper",
                                       hyperText,
                                       "--out",
                                       cellOut(i),
                                       "--work-dir",
                                       prefix + "-work",
                                       "--store",
                                       store_,
                                       "--json",
                                       "--quiet",
                                       "--no-spectra",
                                       "--threads",
                                       "1",
                                       "--no-ood-eval",
                                       "--heldout-samples",
                                       "0"});
    quantizes_[i] = std::move(proc);
  }

  Result finishQuantize(int i) {
    Result r;
    QProcess &proc = *quantizes_.at(i);
    if (!proc.waitForFinished(kLongRun)) {
      proc.kill();
      proc.waitForFinished();
      r.err = "timed out: " + proc.errorString();
      return r;
    }
    r.exitCode = proc.exitStatus() == QProcess::NormalExit ? proc.exitCode() : -1;
    const QString prefix = dir_.filePath(QString("cell%1").arg(i));
    QFile out(prefix + ".out"), err(prefix + ".err");
    if (out.open(QIODevice::ReadOnly))
      r.out = out.readAll();
    if (err.open(QIODevice::ReadOnly))
      r.err = QString::fromUtf8(err.readAll());
    return r;
  }

  // One quantize + eval; each pair is its own test function so that each gets
  // the per-function time limit.
  void cell(const QString &method, const QString &scheme) {
    int i = 0;
    while (i < kCellCount && !(method == kCells[i].method && scheme == kCells[i].scheme))
      ++i;
    QVERIFY2(i < kCellCount, qPrintable(method + " " + scheme + " is not in kCells"));
    QVERIFY2(defaults_.contains(method), qPrintable(method));
    covered_ << method << scheme;
    const QString out = cellOut(i);
    startQuantize(i);
    startQuantize(i + 1);
    Result q = finishQuantize(i);
    QVERIFY2(q.exitCode == 0, qPrintable(q.err));
    const QJsonObject done = lrq::test::jsonEvents(q.out).last();
    QCOMPARE(done["event"].toString(), QString("finished"));
    const QString id = done["run_id"].toString();
    const double runPpl = done["metrics"].toObject()["perplexity"].toDouble();
    QVERIFY(std::isfinite(runPpl) && runPpl > 1);

    // Listed, finished, with the scheme asked for.
    Result list = runLrq({"runs", "list", "--store", store_, "--json"});
    QCOMPARE(list.exitCode, 0);
    QJsonObject listed;
    for (const auto &r : lrq::test::parseJson(list)["runs"].toArray())
      if (r.toObject()["id"].toString() == id)
        listed = r.toObject();
    QVERIFY2(!listed.isEmpty(), qPrintable(id));
    QCOMPARE(listed["status"].toString(), QString("finished"));
    QCOMPARE(listed["method"].toString(), method);
    const QJsonObject s = listed["scheme"].toObject();
    QCOMPARE(s["name"].toString(), scheme);
    const bool activations =
        s["activation"].toObject()["mode"].toString() != "none" || s["kv8"].toBool();

    Result e = runLrq({"eval", out, "--seq-len", "128", "--max-windows", "1", "--json", "--quiet",
                       "--threads", "1"},
                      kLongRun);
    QVERIFY2(e.exitCode == 0, qPrintable(e.err));
    const QJsonObject ev = lrq::test::parseJson(e);
    const double evalPpl = ev["perplexity"].toDouble();
    const QJsonArray missing = ev["not_exported"].toArray();
    qInfo("%s %s: run perplexity %.4f, export's %.4f, %d quantizers not exported",
          qPrintable(method), qPrintable(scheme), runPpl, evalPpl, int(missing.size()));
    if (!activations) {
      QVERIFY(missing.isEmpty());
      QVERIFY(!ev.contains("note"));
      QVERIFY2(std::abs(evalPpl - runPpl) / runPpl < 1e-4,
               qPrintable(QString("%1 vs %2").arg(evalPpl).arg(runPpl)));
    } else {
      // Every block's linears lose their activation quantizer (and with KV8 the
      // k/v outputs theirs); eval says the figure is the weights' alone.
      const int blocks = kCells[i].realModel ? 30 : 2;
      QVERIFY(missing.size() >= blocks * 7);
      for (const auto &m : missing)
        QVERIFY2(m.toString().contains(": input ") || m.toString().contains(": output "),
                 qPrintable(m.toString()));
      if (s["kv8"].toBool())
        QCOMPARE(missing.size(), blocks * 7 + blocks * 2);
      QVERIFY(ev["note"].toString().contains("weights only"));
      QVERIFY2(e.err.contains("weights only"), qPrintable(e.err));
      QVERIFY(std::isfinite(evalPpl));
    }
    runIds_ << id;
    QDir(out).removeRecursively();
  }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    store_ = dir_.filePath("runs.sqlite");
    lrq::test::defaultModelPath();
    tinyModel_ = dir_.filePath("tiny");
    lrq::test::writeTinyLlamaDir(tinyModel_, kTinyShape, 21);
    if (QTest::currentTestFailed())
      return;
    Result r = runLrq({"methods", "--json"});
    QCOMPARE(r.exitCode, 0);
    const QJsonObject catalogue = lrq::test::parseJson(r);
    for (const auto &m : catalogue["methods"].toArray())
      defaults_[m.toObject()["name"].toString()] = m.toObject()["defaults"].toObject();
    for (const auto &s : catalogue["schemes"].toArray())
      schemes_ << s.toString();
    QVERIFY(defaults_.size() >= 8 && schemes_.size() >= 7);
  }

  // One function per entry of kCells, in its order.
  void rtn_W8A8() { cell("rtn", "W8A8"); }
  void gptq_W4A8_KV8() { cell("gptq", "W4A8-KV8"); }
  void flexround_W4A16() { cell("flexround", "W4A16"); }
  void lrq_W4A16_g128() { cell("lrq", "W4A16-g128"); }
  void rtnLearnedStep_W3A16() { cell("rtn-learned-step", "W3A16"); }
  void lrqat_W3A16_g128() { cell("lrqat", "W3A16-g128"); }
  void lqer_W2A16_g64() { cell("lqer", "W2A16-g64"); }
  void l2qer_W8A8() { cell("l2qer", "W8A8"); }
  // The llama.cpp block formats (f16 / f16-offset steps, groups of 32).
  void rtn_gguf_q8_0() { cell("rtn", "gguf-q8_0"); }
  void rtn_gguf_q6_k() { cell("rtn", "gguf-q6_k"); }
  void lrq_gguf_q4_k() { cell("lrq", "gguf-q4_k"); }
  void gptq_gguf_q5_0() { cell("gptq", "gguf-q5_0"); }
  void lrq_gguf_q4_0() { cell("lrq", "gguf-q4_0"); }
  void lrqat_gguf_q5_1() { cell("lrqat", "gguf-q5_1"); }
  void flexround_gguf_q4_1() { cell("flexround", "gguf-q4_1"); }

  void everyMethodAndSchemeCovered() {
    // A method or preset added later must get its own function above.
    for (auto it = defaults_.begin(); it != defaults_.end(); ++it)
      QVERIFY2(covered_.contains(it.key()), qPrintable("not covered: method " + it.key()));
    for (const QString &s : schemes_)
      QVERIFY2(covered_.contains(s), qPrintable("not covered: scheme " + s));
    Result list = runLrq({"runs", "list", "--store", store_, "--json"});
    const QJsonArray runs = lrq::test::parseJson(list)["runs"].toArray();
    QCOMPARE(runs.size(), runIds_.size());
    QCOMPARE(runIds_.size(), kCellCount); // one function per cell
  }
};

QTEST_GUILESS_MAIN(TestMethodMatrixCli)
#include "test_method_matrix_cli.moc"
