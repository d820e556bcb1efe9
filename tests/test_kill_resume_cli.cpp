// Runs that survive being killed, end to end: a real `lrq quantize` child
// (LRQ, W4 on blocks 0-2 of the default model, tiny settings, one thread) is
// killed with SIGKILL in the middle of block 2, between blocks, during
// evaluation and during the export. Each time the store stays intact, the run
// shows as interrupted (never while its process lives: then a resume is
// refused, naming the process), `lrq quantize --resume ID` finishes it in the
// same run, and its HF export is bit-identical to an uninterrupted run's. A run
// killed after its reconstruction resumes without redoing a block.
#include <QDir>
#include <QElapsedTimer>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonObject>
#include <QProcess>
#include <QtTest>

#include <signal.h>
#include <sqlite3.h>

#include <functional>

#include "cli_process.h"
#include "test_support.h"

using lrq::test::Result;
using lrq::test::runLrq;

namespace {

// A safety net against hangs only; on an idle machine a whole run takes seconds.
constexpr int kLongRun = 600 * 1000;
constexpr int kBlocks = 3;
constexpr int kIters = 8;

struct Killed {
  bool sent = false;
  qint64 pid = 0;
  QList<QJsonObject> events; // every event line before the process ended
  QString err;
  QProcess::ExitStatus exitStatus = QProcess::NormalExit;
};

// Runs lrq and kills it with SIGKILL as soon as an event satisfies `when`,
// which also sees the child's pid (and may look at the store while it lives).
Killed runLrqKilled(const QStringList &args,
                    const std::function<bool(const QJsonObject &, qint64 pid)> &when) {
  Killed k;
  QProcess proc;
  proc.start(lrq::test::lrqPath(), args);
  if (!proc.waitForStarted()) {
    k.err = "cannot start lrq";
    return k;
  }
  k.pid = proc.processId();
  QByteArray pending;
  QElapsedTimer timer;
  timer.start();
  while (proc.state() != QProcess::NotRunning && timer.elapsed() < kLongRun) {
    proc.waitForReadyRead(100);
    pending += proc.readAllStandardOutput();
    for (int nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const QJsonObject e = QJsonDocument::fromJson(pending.left(nl)).object();
      pending.remove(0, nl + 1);
      if (k.sent)
        continue; // what the pipe still held: the process is already gone
      k.events << e;
      if (when(e, k.pid)) {
        ::kill(pid_t(k.pid), SIGKILL);
        k.sent = true;
      }
    }
  }
  if (proc.state() != QProcess::NotRunning) {
    proc.kill();
    proc.waitForFinished();
    k.err = "timed out";
  }
  k.exitStatus = proc.exitStatus();
  k.err += QString::fromUtf8(proc.readAllStandardError());
  return k;
}

QString integrityCheck(const QString &path) {
  sqlite3 *db = nullptr;
  if (sqlite3_open_v2(path.toUtf8().constData(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK)
    return "cannot open";
  sqlite3_stmt *st = nullptr;
  QString out;
  if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    out = QString::fromUtf8(reinterpret_cast<const char *>(sqlite3_column_text(st, 0)));
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

int count(const QList<QJsonObject> &events, const QString &name) {
  int n = 0;
  for (const QJsonObject &e : events)
    n += e["event"].toString() == name;
  return n;
}

} // namespace

class TestKillResumeCli : public QObject {
  Q_OBJECT

  // Store, work directories and exports (538 MB each) on tmpfs where there is one
  // (lrq::test::scratchDirTemplate): a disk adds seconds of fsync per export.
  QTemporaryDir dir_{lrq::test::scratchDirTemplate("lrq-kill-resume")};
  QString store_;
  QString scheme_; // W4 on blocks 0-2: the other blocks are not even run
  QString straightOut_;
  QElapsedTimer clock_;

  QStringList quantize(const QString &out) const {
    return {"quantize",
            "default",
            "--method",
            "lrq",
            "--scheme",
            scheme_,
            "--nsamples",
            "2",
            "--seq-len",
            "32",
            "--iters",
            QString::number(kIters),
            "--eval-seq-len",
            "32",
            "--eval-windows",
            "2",
            "--no-spectra",
            "--store",
            store_,
            "--json",
            "--quiet",
            "--threads",
            "1",
            "--out",
            out};
  }

  QJsonObject showRun(const QString &id) const {
    Result r = runLrq({"runs", "show", id, "--store", store_, "--json"});
    return r.exitCode == 0 ? lrq::test::parseJson(r) : QJsonObject();
  }

private slots:
  void initTestCase() {
    clock_.start();
    QVERIFY(dir_.isValid());
    store_ = dir_.filePath("runs.sqlite");
    scheme_ = dir_.filePath("w4-blocks-0-2.json");
    QFile f(scheme_);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write("{\"name\": \"W4 blocks 0-2\", \"weight\": {\"bits\": 4, \"granularity\": "
            "\"per-channel\"}, \"layers\": {\"blocks\": [0, 1, 2]}}");
    f.close();
    lrq::test::defaultModelPath();

    straightOut_ = dir_.filePath("straight");
    Result straight =
        runLrq(quantize(straightOut_) << "--work-dir" << dir_.filePath("work-straight"), kLongRun);
    QVERIFY2(straight.exitCode == 0, qPrintable(straight.err));
    QCOMPARE(count(lrq::test::jsonEvents(straight.out), "block_finished"), kBlocks);
    qInfo("uninterrupted run: %.1f s", double(clock_.elapsed()) / 1000.0);
  }

  void killedRunResumesBitIdentical_data() {
    QTest::addColumn<QString>("point");
    QTest::newRow("mid block 2") << "mid-block";
    QTest::newRow("between blocks") << "between-blocks";
    QTest::newRow("during evaluation") << "evaluation";
    QTest::newRow("during export") << "export";
  }

  void killedRunResumesBitIdentical() {
    QFETCH(QString, point);
    QElapsedTimer timer;
    timer.start();
    const QString out = dir_.filePath("out-" + point);
    QString id, aliveRefusal, aliveStatus;
    Killed k = runLrqKilled(quantize(out), [&](const QJsonObject &e, qint64 pid) {
      const QString event = e["event"].toString();
      if (event == "run_started")
        id = e["run_id"].toString();
      if (point == "mid-block" && event == "block_started" && e["block"].toInt() == 1) {
        // Alive (stopped meanwhile, so that it does not run ahead of the events
        // read here): shown running, and a resume is refused, naming the process.
        ::kill(pid_t(pid), SIGSTOP);
        aliveStatus = showRun(id)["status"].toString();
        Result r = runLrq({"quantize", "--resume", id, "--store", store_, "--quiet"});
        aliveRefusal = QString("exit %1: %2").arg(r.exitCode).arg(r.err);
        ::kill(pid_t(pid), SIGCONT);
      }
      if (point == "mid-block")
        return event == "iteration" && e["block"].toInt() == 2 && e["iteration"].toInt() == 2;
      if (point == "between-blocks")
        return event == "block_finished" && e["block"].toInt() == 1;
      if (point == "evaluation")
        return event == "started" && e["task"].toString() == "compare";
      return event == "started" && e["task"].toString() == "export";
    });
    QVERIFY2(k.sent, qPrintable(k.err));
    QCOMPARE(k.exitStatus, QProcess::CrashExit);
    QVERIFY(!id.isEmpty());
    if (point == "mid-block") {
      QCOMPARE(aliveStatus, QString("running"));
      QVERIFY2(aliveRefusal.startsWith("exit 1: ") &&
                   aliveRefusal.contains(
                       QString("run %1 is still running in process %2").arg(id).arg(k.pid)),
               qPrintable(aliveRefusal));
    }
    const int finishedBefore = count(k.events, "block_finished");

    // The store is intact, the run interrupted, with the blocks finished before.
    QCOMPARE(integrityCheck(store_), QString("ok"));
    const QJsonObject cut = showRun(id);
    QCOMPARE(cut["status"].toString(), QString("interrupted"));
    QCOMPARE(cut["owner"].toObject()["pid"].toInteger(), k.pid);
    QCOMPARE(cut["block_records"].toArray().size(), finishedBefore);
    QVERIFY(!cut["metrics"].toObject().contains("perplexity"));
    if (point == "mid-block")
      QCOMPARE(finishedBefore, 2);
    else if (point == "between-blocks")
      QVERIFY(finishedBefore == 2 || finishedBefore == 3);
    else
      QCOMPARE(finishedBefore, kBlocks);
    Result listed =
        runLrq({"runs", "list", "--store", store_, "--status", "interrupted", "--json"});
    QVERIFY2(listed.exitCode == 0, qPrintable(listed.err));
    QStringList interrupted;
    for (const QJsonValue &r : lrq::test::parseJson(listed)["runs"].toArray())
      interrupted << r.toObject()["id"].toString();
    QVERIFY2(interrupted.contains(id), qPrintable(interrupted.join(", ")));
    Result text = runLrq({"runs", "list", "--store", store_});
    QVERIFY2(
        QString::fromUtf8(text.out).contains(QRegularExpression(id + "\\s+interrupted\\s+lrq")),
        qPrintable(text.out));
    // Nothing that looks like a complete export.
    QVERIFY(!QFileInfo::exists(QDir(out).filePath("model.safetensors")));
    const QString workDir =
        QDir(QString::fromStdString(lrq::cacheDirectory())).filePath("runs/" + id);
    QCOMPARE(QFileInfo::exists(QDir(workDir).filePath("recon/state.json")), finishedBefore > 0);

    // Resumed into the same run: bit-identical weights, every block, one run.
    Result resumed = runLrq(
        {"quantize", "--resume", id, "--store", store_, "--json", "--quiet", "--threads", "1"},
        kLongRun);
    QVERIFY2(resumed.exitCode == 0, qPrintable(resumed.err));
    const QList<QJsonObject> events = lrq::test::jsonEvents(resumed.out);
    QCOMPARE(events.last()["event"].toString(), QString("finished"));
    QCOMPARE(events.last()["run_id"].toString(), id);
    const QString difference = lrq::test::compareSafetensors(
        QDir(straightOut_).filePath("model.safetensors"), QDir(out).filePath("model.safetensors"));
    QVERIFY2(difference.isEmpty(), qPrintable(difference));
    const QJsonObject run = showRun(id);
    QCOMPARE(run["status"].toString(), QString("finished"));
    QCOMPARE(run["block_records"].toArray().size(), kBlocks);
    QVERIFY(run["metrics"].toObject().contains("perplexity"));
    QCOMPARE(QDir(run["export"].toString()).absolutePath(), QDir(out).absolutePath());
    QVERIFY2(run["notes"].toString().contains(QString("\"resumed_blocks\":%1").arg(finishedBefore)),
             qPrintable(run["notes"].toString()));
    QVERIFY(!QFileInfo::exists(workDir)); // checkpoint and saved request gone with it
    QCOMPARE(integrityCheck(store_), QString("ok"));
    QDir(out).removeRecursively();
    qInfo("%s: killed after %d blocks, resumed; %.1f s", qPrintable(point), finishedBefore,
          double(timer.elapsed()) / 1000.0);
  }

  void cleanupTestCase() { qInfo("total %.1f s", double(clock_.elapsed()) / 1000.0); }
};

QTEST_GUILESS_MAIN(TestKillResumeCli)
#include "test_kill_resume_cli.moc"
