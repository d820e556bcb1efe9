// End-to-end, from the command line: a block-wise reconstruction run (lrq,
// flexround) interrupted with Ctrl-C after a block and resumed with
// `lrq quantize --resume RUN_ID` exports bit-identical weights to an
// uninterrupted run and is recorded as one finished run; resuming refuses
// finished runs, runs without a checkpoint and changed settings; Ctrl-C during
// an export leaves nothing behind. The resumed runs use a tiny seeded LLaMA of
// six blocks (what is checked is the bookkeeping, not the model); the
// interrupted export uses the default model, whose export lasts long enough
// for Ctrl-C to land in it.
#include <QDir>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonObject>
#include <QtTest>

#include <cmath>

#include "cli_process.h"
#include "test_support.h"
#include "tiny_llama.h"

using lrq::test::Result;
using lrq::test::runLrq;

// A safety net against hangs only: on a busy machine a run takes many minutes.
constexpr int kLongRun = 3600 * 1000;

class TestResumeCli : public QObject {
  Q_OBJECT

  // Store, work directories and exports on tmpfs where there is one
  // (lrq::test::scratchDirTemplate): a disk adds seconds of fsync per export.
  QTemporaryDir dir_{lrq::test::scratchDirTemplate("lrq-resume-cli")};
  QString store_;
  // Six blocks; widths 256 (a whole Q4_K super-block) and 320 (down_proj, which
  // takes gguf-q4_k's Q5_0 fallback, as the default model's odd widths do).
  QString model_;
  QString scheme_;    // W4 on blocks 0-5: blocks 6-29 are not even run, which keeps runs short
  QString q4kScheme_; // gguf-q4_k's grids on blocks 0-5
  static constexpr int kBlocks = 6;

  // Tiny settings: 2 calibration windows of 32 tokens, 3 iterations per block.
  QStringList tiny(const QString &method, const QString &scheme = QString(),
                   const QString &model = QString()) const {
    return {"quantize",     model.isEmpty() ? model_ : model,
            "--method",     method,
            "--scheme",     scheme.isEmpty() ? scheme_ : scheme,
            "--nsamples",   "2",
            "--seq-len",    "32",
            "--iters",      "3",
            "--no-eval",    "--store",
            store_,         "--json",
            "--no-spectra", "--quiet",
            "--threads",    "2"};
  }

  QJsonObject showRun(const QString &id) const {
    Result r = runLrq({"runs", "show", id, "--store", store_, "--json"});
    return r.exitCode == 0 ? lrq::test::parseJson(r) : QJsonObject();
  }

  int runCount() const {
    Result r = runLrq({"runs", "list", "--store", store_, "--json"});
    return lrq::test::parseJson(r)["runs"].toArray().size();
  }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    store_ = dir_.filePath("runs.sqlite");
    scheme_ = dir_.filePath("w4-blocks-0-5.json");
    QFile f(scheme_);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write("{\"name\": \"W4 blocks 0-5\", \"weight\": {\"bits\": 4, \"granularity\": "
            "\"per-channel\"}, \"layers\": {\"blocks\": [0, 1, 2, 3, 4, 5]}}");
    f.close();
    // Q4_K: offsets dmin m that Ŵ alone does not give back; the checkpoint keeps the grid.
    q4kScheme_ = dir_.filePath("q4k-blocks-0-5.json");
    QFile q(q4kScheme_);
    QVERIFY(q.open(QIODevice::WriteOnly));
    q.write("{\"name\": \"Q4_K blocks 0-5\", \"weight\": {\"bits\": 4, \"granularity\": "
            "\"per-group\", \"group_size\": 32, \"step_format\": \"k-superblock-offset\"}, "
            "\"fallback_weight\": {\"bits\": 5, \"symmetric\": true, \"granularity\": "
            "\"per-group\", \"group_size\": 32, \"step_format\": \"f16\", \"full_range\": "
            "true}, \"layers\": {\"blocks\": [0, 1, 2, 3, 4, 5]}}");
    q.close();
    model_ = dir_.filePath("tiny");
    lrq::test::writeTinyLlamaDir(model_, {256, 256, 320, 64, 256, kBlocks}, 17);
    lrq::test::defaultModelPath();
  }

  void resumedRunMatchesUninterrupted_data() {
    QTest::addColumn<QString>("method");
    QTest::addColumn<bool>("ownWorkDir");
    QTest::addColumn<bool>("q4k"); // gguf-q4_k grids, also exported as GGUF
    QTest::newRow("lrq, default work dir") << "lrq" << false << false;
    QTest::newRow("flexround, --work-dir") << "flexround" << true << false;
    QTest::newRow("lrq, gguf-q4_k, --gguf") << "lrq" << true << true;
  }

  void resumedRunMatchesUninterrupted() {
    QFETCH(QString, method);
    QFETCH(bool, ownWorkDir);
    QFETCH(bool, q4k);
    const int interruptAfter = 2; // Ctrl-C once block 2 of 0-5 has finished
    const QString tag = method + (q4k ? "-q4k" : "");
    const QString scheme = q4k ? q4kScheme_ : QString();

    // Uninterrupted.
    const QString straightOut = dir_.filePath(tag + "-straight");
    const QString straightGguf = dir_.filePath(tag + "-straight.gguf");
    QStringList straightArgs = tiny(method, scheme) << "--out" << straightOut << "--work-dir"
                                                    << dir_.filePath(tag + "-work-straight");
    if (q4k)
      straightArgs << "--gguf" << straightGguf;
    Result straight = runLrq(straightArgs, kLongRun);
    QVERIFY2(straight.exitCode == 0, qPrintable(straight.err));

    // Interrupted after block k.
    const QString resumedOut = dir_.filePath(tag + "-resumed");
    const QString resumedGguf = dir_.filePath(tag + "-resumed.gguf");
    const QString workDir = dir_.filePath(tag + "-work");
    QStringList args = tiny(method, scheme) << "--out" << resumedOut;
    if (q4k)
      args << "--gguf" << resumedGguf;
    if (ownWorkDir)
      args << "--work-dir" << workDir;
    const int runsBefore = runCount();
    bool sent = false;
    Result cut = lrq::test::runLrqInterrupted(
        args,
        [&](const QJsonObject &e) {
          return e["event"].toString() == "block_finished" && e["block"].toInt() == interruptAfter;
        },
        &sent, kLongRun);
    QVERIFY(sent);
    QVERIFY2(cut.exitCode == 130,
             qPrintable(QString("exit %1: %2").arg(cut.exitCode).arg(cut.err)));
    QVERIFY(!QFileInfo::exists(resumedOut));
    QCOMPARE(runCount(), runsBefore + 1);
    Result list = runLrq({"runs", "list", "--store", store_, "--json", "--limit", "1"});
    const QJsonObject cancelled = lrq::test::parseJson(list)["runs"].toArray()[0].toObject();
    const QString id = cancelled["id"].toString();
    QCOMPARE(cancelled["status"].toString(), QString("cancelled"));
    QCOMPARE(cancelled["method"].toString(), method);
    int finishedBefore = 0;
    for (const QJsonObject &e : lrq::test::jsonEvents(cut.out))
      finishedBefore += e["event"].toString() == "block_finished";
    QVERIFY(finishedBefore > interruptAfter && finishedBefore < kBlocks);

    QStringList resume{"quantize", "--resume", id, "--store", store_, "--json", "--quiet"};
    if (ownWorkDir) {
      // The run's work dir is needed to find it; without it resuming says so.
      Result noDir = runLrq(resume);
      QCOMPARE(noDir.exitCode, 1);
      QVERIFY2(noDir.err.contains("--work-dir"), qPrintable(noDir.err));
      resume << "--work-dir" << workDir;
    }
    // Settings must be the run's: alone, or the whole original command unchanged.
    Result extra = runLrq(QStringList(resume) << "--iters"
                                              << "5");
    QCOMPARE(extra.exitCode, 2);
    QVERIFY2(extra.err.contains("--iters"), qPrintable(extra.err));
    QStringList changed = args;
    changed[changed.indexOf("--nsamples") + 1] = "3";
    changed << "--resume" << id;
    if (ownWorkDir)
      changed << "--work-dir" << workDir;
    Result differ = runLrq(changed);
    QCOMPARE(differ.exitCode, 1);
    QVERIFY2(differ.err.contains("--nsamples (2 vs 3)"), qPrintable(differ.err));

    Result resumed = runLrq(resume << "--threads"
                                   << "2",
                            kLongRun);
    QVERIFY2(resumed.exitCode == 0, qPrintable(resumed.err));
    const QJsonObject done = lrq::test::jsonEvents(resumed.out).last();
    QCOMPARE(done["event"].toString(), QString("finished"));
    QCOMPARE(done["run_id"].toString(), id); // recorded into the same run
    QCOMPARE(QDir(done["export"].toString()).absolutePath(), QDir(resumedOut).absolutePath());

    // Bit-identical weights.
    const QString difference =
        lrq::test::compareSafetensors(QDir(straightOut).filePath("model.safetensors"),
                                      QDir(resumedOut).filePath("model.safetensors"));
    QVERIFY2(difference.isEmpty(), qPrintable(difference));
    if (q4k) {
      // Restored blocks export on the grid they trained on: the GGUF files hold the
      // same weights (same perplexity as each other and as the HF export).
      auto ppl = [](const QString &model) {
        Result e = runLrq({"eval", model, "--seq-len", "128", "--max-windows", "1", "--json",
                           "--quiet", "--threads", "2"},
                          kLongRun);
        return e.exitCode == 0 ? lrq::test::parseJson(e)["perplexity"].toDouble() : -1.0;
      };
      const double straightPpl = ppl(straightGguf), resumedPpl = ppl(resumedGguf);
      QVERIFY2(resumedPpl > 1 && resumedPpl == straightPpl,
               qPrintable(QString("%1 vs %2").arg(resumedPpl).arg(straightPpl)));
      const double hfPpl = ppl(resumedOut);
      QVERIFY2(std::abs(hfPpl - resumedPpl) < 1e-4 * hfPpl,
               qPrintable(QString("%1 vs %2").arg(hfPpl).arg(resumedPpl)));
    }

    // One run, finished, with every block; the checkpoint was used.
    QCOMPARE(runCount(), runsBefore + 1);
    const QJsonObject run = showRun(id);
    QCOMPARE(run["status"].toString(), QString("finished"));
    QCOMPARE(run["block_records"].toArray().size(), kBlocks);
    QVERIFY2(run["notes"].toString().contains(QString("\"resumed_blocks\":%1").arg(finishedBefore)),
             qPrintable(run["notes"].toString()));
    // The checkpoint and the saved request are gone; a finished run is not resumable.
    const QString usedDir =
        ownWorkDir ? workDir
                   : QDir(QString::fromStdString(lrq::cacheDirectory())).filePath("runs/" + id);
    QVERIFY(!QFileInfo::exists(QDir(usedDir).filePath("recon")));
    QVERIFY(!QFileInfo::exists(QDir(usedDir).filePath("request.json")));
    Result again = runLrq(resume);
    QCOMPARE(again.exitCode, 1);
    QVERIFY2(again.err.contains("finished"), qPrintable(again.err));

    QDir(straightOut).removeRecursively();
    QDir(resumedOut).removeRecursively();
    QFile::remove(straightGguf);
    QFile::remove(resumedGguf);
  }

  void interruptDuringExportLeavesNothing() {
    // Ctrl-C once the export has started: the run is cancelled and neither the
    // export nor its temporary folder is left.
    QTemporaryDir outParent;
    QVERIFY(outParent.isValid());
    const QString out = QDir(outParent.path()).filePath("export");
    QStringList args = tiny("rtn", QString(), "default");
    args.removeAt(args.indexOf("--iters") + 1);
    args.removeAt(args.indexOf("--iters"));
    bool sent = false;
    Result r = lrq::test::runLrqInterrupted(
        args << "--out" << out,
        [](const QJsonObject &e) {
          return e["event"].toString() == "started" && e["task"].toString() == "export";
        },
        &sent, kLongRun);
    QVERIFY(sent);
    if (r.exitCode == 0)
      QSKIP("the export finished before Ctrl-C arrived");
    QVERIFY2(r.exitCode == 130, qPrintable(QString("exit %1: %2").arg(r.exitCode).arg(r.err)));
    QVERIFY(!QFileInfo::exists(out));
    QCOMPARE(
        QDir(outParent.path()).entryList(QDir::AllEntries | QDir::Hidden | QDir::NoDotAndDotDot),
        QStringList());
    Result list = runLrq({"runs", "list", "--store", store_, "--json", "--limit", "1"});
    const QJsonObject run = lrq::test::parseJson(list)["runs"].toArray()[0].toObject();
    QCOMPARE(run["status"].toString(), QString("cancelled"));

    // RTN keeps no checkpoint: the interrupted run cannot be resumed, and says why.
    Result resume =
        runLrq({"quantize", "--resume", run["id"].toString(), "--store", store_, "--quiet"});
    QCOMPARE(resume.exitCode, 1);
    QVERIFY2(resume.err.contains("no saved request"), qPrintable(resume.err));
    Result unknown = runLrq({"quantize", "--resume", "nosuchrun", "--store", store_, "--quiet"});
    QCOMPARE(unknown.exitCode, 1);
    QVERIFY2(unknown.err.contains("nosuchrun"), qPrintable(unknown.err));
  }
};

QTEST_GUILESS_MAIN(TestResumeCli)
#include "test_resume_cli.moc"
