// End-to-end, from the command line: every quantization method and every
// scheme preset (each once, paired in turn, not the whole product) completes
// with tiny settings, is listed by `lrq runs list`, and its HF export loads in
// `lrq eval`. Without activation quantizers the export's perplexity is the
// run's; with them (A8, KV8) the export holds the weights only, and `lrq eval`
// says so (not_exported, a note, a warning) instead of passing off another
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

#include "cli_process.h"
#include "test_support.h"

using lrq::test::Result;
using lrq::test::runLrq;

// A safety net against hangs only: on a busy machine a run takes many minutes.
constexpr int kLongRun = 3600 * 1000;

class TestMethodMatrixCli : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  QString store_;
  QStringList runIds_;

  QMap<QString, QJsonObject> defaults_; // method -> its hyperparameters
  QStringList schemes_;
  QSet<QString> covered_;

  // One quantize + eval; each pair is its own test function so that each gets
  // the per-function time limit.
  void cell(const QString &method, const QString &scheme) {
    QVERIFY2(defaults_.contains(method), qPrintable(method));
    const QJsonObject defaults = defaults_[method];
    covered_ << method << scheme;
    QJsonObject hyper;
    if (defaults.contains("iters"))
      hyper["iters"] = 3;
    if (defaults.contains("steps"))
      hyper["steps"] = 3;
    const QString out = dir_.filePath(method + "-" + scheme);
    const QString hyperText =
        QString::fromUtf8(QJsonDocument(hyper).toJson(QJsonDocument::Compact));
    const QString work = dir_.filePath("work");
    Result q = runLrq({"quantize",
                       "default",
                       "--method",
                       method,
                       "--scheme",
                       scheme,
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
                       out,
                       "--work-dir",
                       work,
                       "--store",
                       store_,
                       "--json",
                       "--quiet",
                       "--no-spectra",
                       "--threads",
                       "2",
                       "--no-ood-eval",
                       "--heldout-samples",
                       "0"},
                      kLongRun);
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
                       "--threads", "2"},
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
      QVERIFY(missing.size() >= 30 * 7);
      for (const auto &m : missing)
        QVERIFY2(m.toString().contains(": input ") || m.toString().contains(": output "),
                 qPrintable(m.toString()));
      if (s["kv8"].toBool())
        QCOMPARE(missing.size(), 30 * 7 + 30 * 2);
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
    Result r = runLrq({"methods", "--json"});
    QCOMPARE(r.exitCode, 0);
    const QJsonObject catalogue = lrq::test::parseJson(r);
    for (const auto &m : catalogue["methods"].toArray())
      defaults_[m.toObject()["name"].toString()] = m.toObject()["defaults"].toObject();
    for (const auto &s : catalogue["schemes"].toArray())
      schemes_ << s.toString();
    QVERIFY(defaults_.size() >= 8 && schemes_.size() >= 7);
  }

  // Every method once, every scheme preset once. The pairs avoid the
  // reference settings whose default init is the 2-D clipping search (LRQ at
  // W3A16 and W4A8, FlexRound at W4A8): on this model it costs minutes for
  // 30 blocks, and test_grid_init checks it; this test is about the plumbing.
  // The out-of-domain text and held-out samples are checked elsewhere too
  // (test_quantize_cli, test_recon).
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
  }
};

QTEST_GUILESS_MAIN(TestMethodMatrixCli)
#include "test_method_matrix_cli.moc"
