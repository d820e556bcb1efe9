// End-to-end: `lrq quantize` runs, records, evaluates and exports; `lrq runs`
// lists, shows, compares and deletes; `lrq eval --reference` measures KL.
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QtTest>

#include "cli_process.h"
#include "test_support.h"

using lrq::test::Result;
using lrq::test::runLrq;

namespace {

// The JSON-lines events of a quantize run; the last is "finished".
QList<QJsonObject> events(const Result &r) {
  QList<QJsonObject> out;
  for (const QByteArray &line : r.out.split('\n'))
    if (!line.trimmed().isEmpty())
      out << QJsonDocument::fromJson(line).object();
  return out;
}

} // namespace

class TestQuantizeCli : public QObject {
  Q_OBJECT

  // The store and the export (538 MB) on tmpfs where there is one: a disk adds
  // seconds of fsync (lrq::test::scratchDirTemplate).
  QTemporaryDir dir_{lrq::test::scratchDirTemplate("lrq-quantize-cli")};
  QString store_;
  QString rtnRun_, lqerRun_;

  // A small, fast run: few calibration windows, two evaluation windows, no
  // spectra (test_run_spectra checks those; here they would be 420 SVDs).
  QStringList quick(const QString &method, const QString &scheme) const {
    return {"quantize",       "default", "--method",    method, "--scheme",       scheme,
            "--nsamples",     "4",       "--seq-len",   "64",   "--eval-seq-len", "128",
            "--eval-windows", "2",       "--store",     store_, "--json",         "--quiet",
            "--threads",      "2",       "--no-spectra"};
  }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    store_ = dir_.filePath("runs.sqlite");
    lrq::test::defaultModelPath();
  }

  void rtnRunIsRecordedWithMetrics() {
    QStringList args = quick("rtn", "W4A16");
    args << "--out" << dir_.filePath("rtn-export");
    Result r = runLrq(args);
    QVERIFY2(r.exitCode == 0, qPrintable(r.err));
    QList<QJsonObject> ev = events(r);
    QVERIFY(!ev.isEmpty());
    QJsonObject done = ev.last();
    QCOMPARE(done["event"].toString(), QString("finished"));
    rtnRun_ = done["run_id"].toString();
    QVERIFY(!rtnRun_.isEmpty());
    QJsonObject m = done["metrics"].toObject();
    const double ppl = m["perplexity"].toDouble(), ref = m["reference_perplexity"].toDouble();
    qInfo("RTN W4A16: perplexity %.3f (reference %.3f), KL %.4f, top-1 %.4f", ppl, ref,
          m["kl"].toDouble(), m["top1"].toDouble());
    QVERIFY(ppl > ref); // 4-bit rounding costs something on these windows
    QVERIFY(m["kl"].toDouble() > 0);
    QVERIFY(m["top1"].toDouble() > 0.2 && m["top1"].toDouble() < 1.0);
    // Bits per weight, by hand for this model's block (q, k, v, o, gate, up, down:
    // out 576+192+192+576+1536+1536+576 rows over 3,538,944 weights), W4 per
    // channel asymmetric: each row adds a 16-bit step and a 4-bit zero point.
    const double expectedBits = 4.0 + 20.0 * 5184.0 / 3538944.0;
    QVERIFY2(std::abs(m["bits_per_weight"].toDouble() - expectedBits) < 1e-9,
             qPrintable(QString::number(m["bits_per_weight"].toDouble(), 'g', 12)));

    // Three independent commands at once: the export evaluated alone and
    // against the reference, and the out-of-domain text printed. The
    // evaluations use the run's thread count: the same windows, shapes and
    // threads give the same bits (KL and top-1 equal to the run's).
    const QList<Result> results = lrq::test::runLrqTogether(
        {{"eval", dir_.filePath("rtn-export"), "--seq-len", "128", "--max-windows", "2", "--json",
          "--quiet", "--threads", "2"},
         {"eval", dir_.filePath("rtn-export"), "--reference", "default", "--seq-len", "128",
          "--max-windows", "2", "--json", "--quiet", "--threads", "2"},
         {"text", "--part", "out-of-domain"}});

    // The HF export loads in `lrq eval` and reproduces the run's perplexity on the same windows.
    const Result &e = results[0];
    QVERIFY2(e.exitCode == 0, qPrintable(e.err));
    const double exported = lrq::test::parseJson(e)["perplexity"].toDouble();
    QVERIFY2(std::abs(exported - ppl) / ppl < 1e-4,
             qPrintable(QString("%1 vs %2").arg(exported).arg(ppl)));

    // `eval --reference` measures the same KL as the run did.
    const Result &k = results[1];
    QVERIFY2(k.exitCode == 0, qPrintable(k.err));
    QJsonObject kj = lrq::test::parseJson(k);
    QVERIFY(std::abs(kj["kl"].toDouble() - m["kl"].toDouble()) < 1e-4);
    QVERIFY(std::abs(kj["top1"].toDouble() - m["top1"].toDouble()) < 1e-9);

    // The second, out-of-domain text: the same figures, measured again by
    // `eval --reference` on the text `lrq text --part out-of-domain` prints.
    QVERIFY(m.contains("ood_kl") && m.contains("ood_top1") && m.contains("ood_perplexity"));
    QVERIFY(m["ood_reference_perplexity"].toDouble() != ref);
    const Result &t = results[2];
    QCOMPARE(t.exitCode, 0);
    const QString oodPath = dir_.filePath("ood.txt");
    QFile ood(oodPath);
    QVERIFY(ood.open(QIODevice::WriteOnly));
    ood.write(t.out);
    ood.close();
    Result o =
        runLrq({"eval", dir_.filePath("rtn-export"), "--reference", "default", "--text", oodPath,
                "--seq-len", "128", "--max-windows", "2", "--json", "--quiet", "--threads", "2"});
    QVERIFY2(o.exitCode == 0, qPrintable(o.err));
    QJsonObject oj = lrq::test::parseJson(o);
    qInfo("RTN W4A16 out of domain: perplexity %.3f (reference %.3f), KL %.4f, top-1 %.4f",
          m["ood_perplexity"].toDouble(), m["ood_reference_perplexity"].toDouble(),
          m["ood_kl"].toDouble(), m["ood_top1"].toDouble());
    QVERIFY(std::abs(oj["kl"].toDouble() - m["ood_kl"].toDouble()) < 1e-4);
    QVERIFY(std::abs(oj["top1"].toDouble() - m["ood_top1"].toDouble()) < 1e-9);
    QVERIFY(std::abs(oj["kl"].toDouble() - m["kl"].toDouble()) > 1e-6); // another text
  }

  void lqerRunOnSchemeFile() {
    // A scheme file selecting the first three blocks keeps the run short and
    // exercises custom schemes.
    const QString schemePath = dir_.filePath("w4-first-blocks.json");
    QFile f(schemePath);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write("{\"name\": \"W4 blocks 0-2\", \"weight\": {\"bits\": 4, \"granularity\": "
            "\"per-channel\"}, \"layers\": {\"blocks\": [0, 1, 2]}}");
    f.close();
    QStringList args = quick("lqer", schemePath);
    args << "--rank"
         << "32";
    Result r = runLrq(args);
    QVERIFY2(r.exitCode == 0, qPrintable(r.err));
    QJsonObject done = events(r).last();
    lqerRun_ = done["run_id"].toString();
    qInfo("LQER W4 rank 32 on blocks 0-2: perplexity %.3f, KL %.4f",
          done["metrics"].toObject()["perplexity"].toDouble(),
          done["metrics"].toObject()["kl"].toDouble());
    QVERIFY(!lqerRun_.isEmpty());
    Result show = runLrq({"runs", "show", lqerRun_, "--store", store_, "--json"});
    QCOMPARE(show.exitCode, 0);
    QCOMPARE(lrq::test::parseJson(show)["layers"].toArray().size(), 21); // 3 blocks x 7
  }

  void runsListShowCompareDelete() {
    QVERIFY(!rtnRun_.isEmpty() && !lqerRun_.isEmpty());
    // The reading commands at once, then the delete.
    const QList<Result> reads =
        lrq::test::runLrqTogether({{"runs", "list", "--store", store_, "--json"},
                                   {"runs", "show", rtnRun_, "--store", store_, "--json"},
                                   {"runs", "show", rtnRun_, "--store", store_},
                                   {"runs", "compare", rtnRun_, lqerRun_, "--store", store_}});
    const Result &list = reads[0], &show = reads[1], &text = reads[2], &cmp = reads[3];
    QCOMPARE(list.exitCode, 0);
    QJsonArray runs = lrq::test::parseJson(list)["runs"].toArray();
    QCOMPARE(runs.size(), 2);
    QCOMPARE(runs[0].toObject()["id"].toString(), lqerRun_); // newest first
    QCOMPARE(runs[1].toObject()["status"].toString(), QString("finished"));

    QCOMPARE(show.exitCode, 0);
    QJsonObject s = lrq::test::parseJson(show);
    QCOMPARE(s["method"].toString(), QString("rtn"));
    QCOMPARE(s["layers"].toArray().size(), 210); // 30 blocks x 7 linears
    QCOMPARE(s["scheme"].toObject()["name"].toString(), QString("W4A16"));

    QCOMPARE(text.exitCode, 0);
    QVERIFY(text.out.contains("q_proj"));

    QCOMPARE(cmp.exitCode, 0);
    QVERIFY(cmp.out.contains("perplexity"));
    QVERIFY(cmp.out.contains("lqer"));

    Result del = runLrq({"runs", "delete", rtnRun_, "--store", store_});
    QCOMPARE(del.exitCode, 0);
    Result gone = runLrq({"runs", "show", rtnRun_, "--store", store_});
    QCOMPARE(gone.exitCode, 1);
    QVERIFY(gone.err.contains(rtnRun_));
  }

  void badRequestsGiveClearErrors() {
    // A bad value of an option is a usage error (exit 2) naming the flag.
    // Five independent commands at once.
    const QList<Result> results =
        lrq::test::runLrqTogether({quick("nosuch", "W4A16"),
                                   quick("rtn", "W5A5"),
                                   quick("rtn", "W4A16") << "--rank"
                                                         << "8",
                                   quick("lqer", "W4A16") << "--hyper"
                                                          << "{\"rnk\": 3}",
                                   {"quantize", "default", "--method", "rtn", "--nsamples",
                                    "100000", "--store", store_, "--quiet"}});
    const Result &method = results[0], &scheme = results[1], &rank = results[2],
                 &hyper = results[3], &samples = results[4];
    QCOMPARE(method.exitCode, 2);
    QVERIFY2(method.err.contains("--method"), qPrintable(method.err));
    QVERIFY2(method.err.contains("nosuch") && method.err.contains("rtn"), qPrintable(method.err));
    QCOMPARE(scheme.exitCode, 2);
    QVERIFY2(scheme.err.contains("--scheme"), qPrintable(scheme.err));
    QVERIFY2(scheme.err.contains("W5A5"), qPrintable(scheme.err));
    QCOMPARE(rank.exitCode, 2);
    QVERIFY2(rank.err.contains("rank"), qPrintable(rank.err));
    QCOMPARE(hyper.exitCode, 2);
    QVERIFY2(hyper.err.contains("rnk"), qPrintable(hyper.err));
    QCOMPARE(samples.exitCode, 1);
    QVERIFY2(samples.err.contains("calibration"), qPrintable(samples.err));
  }

  void methodsListsEveryRegisteredMethod() {
    Result r = runLrq({"methods", "--json"});
    QCOMPARE(r.exitCode, 0);
    QJsonObject j = lrq::test::parseJson(r);
    QStringList names;
    for (const auto &m : j["methods"].toArray())
      names << m.toObject()["name"].toString();
    for (const char *expected : {"rtn", "lqer", "l2qer"})
      QVERIFY2(names.contains(expected), expected);
    QVERIFY(j["schemes"].toArray().size() == 14); // 7 integer grids, 7 GGUF block formats
  }
};

QTEST_GUILESS_MAIN(TestQuantizeCli)
#include "test_quantize_cli.moc"
