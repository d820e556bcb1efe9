// End-to-end checks of the `lrq` executable as a user runs it.
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QtTest>

#include <memory>

#include "cli_process.h"
#include "test_support.h"

using lrq::test::parseJson;
using lrq::test::Result;
using lrq::test::runLrq;

namespace {

// A reference script under tests/reference started without waiting, so that
// the independent computation (a numpy forward takes seconds, on one core for
// much of it) runs while `lrq` computes its side on the other.
std::unique_ptr<QProcess> startReference(const QString &script, const QStringList &args) {
  auto proc = std::make_unique<QProcess>();
  proc->start(
      QStringLiteral(LRQ_PYTHON),
      QStringList{QDir(QStringLiteral(LRQ_SOURCE_DIR)).filePath("tests/reference/" + script)}
          << args);
  return proc;
}

// Its stdout once it has succeeded, or an empty string with *error set.
QByteArray finishReference(QProcess &proc, QString *error) {
  if (!proc.waitForFinished(600000) || proc.exitStatus() != QProcess::NormalExit ||
      proc.exitCode() != 0) {
    *error = QStringLiteral("%1 failed: %2")
                 .arg(proc.arguments().value(0), QString::fromUtf8(proc.readAllStandardError()));
    return {};
  }
  return proc.readAllStandardOutput();
}

} // namespace

class TestCli : public QObject {
  Q_OBJECT

private slots:
  void initTestCase() { lrq::test::defaultModelPath(); }

  void versionAndHelp() {
    Result v = runLrq({"--version"});
    QCOMPARE(v.exitCode, 0);
    QVERIFY(v.out.startsWith("lrq "));
    Result h = runLrq({"--help"});
    QCOMPARE(h.exitCode, 0);
    QVERIFY(h.out.contains("dequantized from Q4_1"));
  }

  // `lrq` is a launcher (app/launcher.cpp): it makes LibTorch's idle OpenMP workers sleep
  // instead of spin unless the user chose otherwise, then runs the engine in its place.
  void launcherChoosesOpenMpWaiting() {
    QProcessEnvironment env = QProcessEnvironment::systemEnvironment();
    env.remove(QStringLiteral("OMP_WAIT_POLICY"));
    env.remove(QStringLiteral("GOMP_SPINCOUNT"));
    const QString app = QDir(QStringLiteral(LRQ_BINARY_DIR)).filePath(QStringLiteral("app"));
    const QString launcher = QDir(app).filePath(QStringLiteral("lrq"));
    Result engine =
        lrq::test::runProgram(QDir(app).filePath(QStringLiteral("lrq-engine")), {"--version"}, env);
    QCOMPARE(engine.exitCode, 0);
    QVERIFY2(engine.out.contains("spin (OMP_WAIT_POLICY unset)"), engine.out.constData());
    Result passive = lrq::test::runProgram(launcher, {"--version"}, env);
    QCOMPARE(passive.exitCode, 0);
    QVERIFY2(passive.out.contains("OMP_WAIT_POLICY=PASSIVE"), passive.out.constData());
    QProcessEnvironment chosen = env;
    chosen.insert(QStringLiteral("OMP_WAIT_POLICY"), QStringLiteral("active"));
    Result active = lrq::test::runProgram(launcher, {"--version"}, chosen);
    QVERIFY2(active.out.contains("OMP_WAIT_POLICY=active"), active.out.constData());
    QProcessEnvironment spin = env;
    spin.insert(QStringLiteral("GOMP_SPINCOUNT"), QStringLiteral("1000"));
    Result spinCount = lrq::test::runProgram(launcher, {"--version"}, spin);
    QVERIFY2(spinCount.out.contains("GOMP_SPINCOUNT=1000"), spinCount.out.constData());
    // Arguments reach the engine unchanged, exit codes come back.
    Result usage = lrq::test::runProgram(launcher, {"eval"}, env);
    QCOMPARE(usage.exitCode, 2);
    QVERIFY2(usage.err.startsWith("lrq: "), qPrintable(usage.err));
    // A launcher without its engine says which file it looked for.
    QTemporaryDir alone;
    QVERIFY(alone.isValid());
    const QString copy = alone.filePath(QStringLiteral("lrq"));
    QVERIFY(QFile::copy(launcher, copy));
    Result missing = lrq::test::runProgram(copy, {"--version"}, env);
    QCOMPARE(missing.exitCode, 127);
    QVERIFY2(missing.err.contains("cannot start its engine") &&
                 missing.err.contains(alone.filePath(QStringLiteral("lrq-engine"))),
             qPrintable(missing.err));
  }

  void usageErrorsExitTwo() {
    const QList<QStringList> commands{
        {"eval"},
        {"--bogus"},
        {"frobnicate", "x"},
        {"eval", "default", "--seq-len", "abc"},
        {"generate", "default"},
        {"spectrum", "default"},
        {"eval", "default", "--device", "tpu"},
        {"eval", "default", "--score", "half"},
        {"eval", "default", "--score", "second-half", "--reference", "default"},
        {}};
    const QList<Result> results = lrq::test::runLrqTogether(commands);
    for (int i = 0; i + 1 < commands.size(); ++i) {
      const Result &r = results[i];
      QVERIFY2(r.exitCode == 2,
               qPrintable(commands[i].join(' ') + " -> " + QString::number(r.exitCode)));
      QVERIFY2(r.err.startsWith("lrq: "), qPrintable(r.err));
      QCOMPARE(r.err.count('\n'), 1);
    }
    const Result &none = results.last();
    QCOMPARE(none.exitCode, 2);
    QVERIFY(none.err.startsWith("usage: lrq"));
  }

  void infoJsonDescribesDefaultModel() {
    Result r = runLrq({"info", "default", "--json", "--quiet"});
    QCOMPARE(r.exitCode, 0);
    QJsonObject j = parseJson(r);
    QCOMPARE(j["architecture"].toString(), QString("LlamaForCausalLM"));
    QCOMPARE(j["layers"].toInt(), 30);
    QCOMPARE(j["hidden_size"].toInt(), 576);
    QCOMPARE(j["kv_heads"].toInt(), 3);
    QVERIFY(j["full_precision_reference"].toString().contains("dequantized from Q4_1"));
    QJsonArray tensors = j["tensors"].toArray();
    QCOMPARE(tensors.size(), 272); // the GGUF's tensor count (tied head: no output.weight)
    qint64 total = 0;
    for (const auto &t : tensors)
      total += t.toObject()["numel"].toInteger();
    QCOMPARE(j["parameters"].toInteger(), total);
    // SmolLM2-135M: ~134.5M parameters with the tied embedding counted once.
    QVERIFY(total > 130000000 && total < 140000000);
  }

  void missingAndCorruptFilesGiveOneLineErrors() {
    Result missing = runLrq({"info", "/nonexistent/model.gguf"});
    QCOMPARE(missing.exitCode, 1);
    QVERIFY2(missing.err.startsWith("lrq: error: "), qPrintable(missing.err));
    QVERIFY(missing.err.contains("/nonexistent/model.gguf"));
    // With --reference (which loads first), the missing model is said before
    // the reference is read: one line, nothing about the reference.
    Result missingWithReference =
        runLrq({"eval", "/nonexistent/model.gguf", "--reference", "default"});
    QCOMPARE(missingWithReference.exitCode, 1);
    QCOMPARE(missingWithReference.err,
             QString("lrq: error: /nonexistent/model.gguf: no such file or directory\n"));

    QTemporaryDir dir;
    const QString bad = dir.filePath("corrupt.gguf");
    QFile f(bad);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write("NOPE this is not a gguf file at all, just some bytes.");
    f.close();
    Result corrupt = runLrq({"info", bad});
    QCOMPARE(corrupt.exitCode, 1);
    QVERIFY2(corrupt.err.contains("corrupt.gguf"), qPrintable(corrupt.err));
    QCOMPARE(corrupt.err.count('\n'), 1);
  }

  void evalJsonReportsPerplexity() {
    // Both scorings at once: two independent processes; the first again with
    // the model whole in memory instead of its blocks read back from disk.
    const QList<Result> both = lrq::test::runLrqTogether(
        {{"eval", "default", "--seq-len", "128", "--max-windows", "2", "--json", "--threads", "2"},
         {"eval", "default", "--seq-len", "128", "--max-windows", "2", "--json", "--threads", "2",
          "--score", "second-half"},
         {"eval", "default", "--seq-len", "128", "--max-windows", "2", "--json", "--threads", "2",
          "--in-memory"}});
    const Result &r = both[0];
    QVERIFY2(r.exitCode == 0, qPrintable(r.err));
    QJsonObject j = parseJson(r);
    QCOMPARE(j["windows"].toInt(), 2);
    QCOMPARE(j["seq_len"].toInt(), 128);
    QVERIFY(j["tokens"].toInt() >= 2 * 127 && j["tokens"].toInt() <= 2 * 128);
    double ppl = j["perplexity"].toDouble();
    QVERIFY2(ppl > 1.0 && ppl < 1000.0, qPrintable(QString::number(ppl)));
    QVERIFY(std::abs(std::log(ppl) - j["mean_nll"].toDouble()) < 1e-6);
    QCOMPARE(j["threads"].toInt(), 2);
    QVERIFY(j["full_precision_reference"].toString().contains("dequantized from Q4_1"));
    QCOMPARE(j["score"].toString(), QString("all"));
    QCOMPARE(j["first_scored"].toInt(), 0);
    QVERIFY2(r.err.contains("set aside on disk"), qPrintable(r.err));
    const Result &inMemory = both[2];
    QVERIFY2(inMemory.exitCode == 0, qPrintable(inMemory.err));
    QVERIFY(!inMemory.err.contains("set aside on disk"));
    QVERIFY(parseJson(inMemory)["mean_nll"].toDouble() == j["mean_nll"].toDouble()); // to the bit

    // llama-perplexity's rule: the same windows, positions 64..126 of each scored.
    const Result &half = both[1];
    QVERIFY2(half.exitCode == 0, qPrintable(half.err));
    QJsonObject h = parseJson(half);
    QCOMPARE(h["score"].toString(), QString("second-half"));
    QCOMPARE(h["first_scored"].toInt(), 64);
    QCOMPARE(h["tokens"].toInt(), 2 * 63);
    QVERIFY(h["perplexity"].toDouble() != ppl);
  }

  void evalMatchesIndependentReference() {
    // The same windows of the default held-out text, tokenized by HF tokenizers
    // and run through a numpy forward of the dequantized GGUF.
    QTemporaryDir dir;
    Result text = runLrq({"text", "--part", "evaluation"});
    QCOMPARE(text.exitCode, 0);
    const QString textPath = dir.filePath("eval.txt");
    QFile f(textPath);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write(text.out);
    f.close();
    const auto reference =
        startReference("eval_reference.py", {QString::fromStdString(lrq::test::defaultModelPath()),
                                             textPath, "256", "3"});
    Result ours = runLrq({"eval", "default", "--text", textPath, "--seq-len", "256",
                          "--max-windows", "3", "--json", "--quiet"});
    QString error;
    const QByteArray ref = finishReference(*reference, &error);
    QVERIFY2(ours.exitCode == 0, qPrintable(ours.err));
    QJsonObject o = parseJson(ours);
    QVERIFY2(!ref.isEmpty(), qPrintable(error));
    QJsonObject r = QJsonDocument::fromJson(ref).object();
    QCOMPARE(o["tokens"].toInt(), r["tokens"].toInt());
    QCOMPARE(o["windows"].toInt(), 3);
    const double relative = std::abs(o["perplexity"].toDouble() - r["perplexity"].toDouble()) /
                            r["perplexity"].toDouble();
    qInfo("perplexity ours %.5f, reference %.5f, relative difference %.2e",
          o["perplexity"].toDouble(), r["perplexity"].toDouble(), relative);
    QVERIFY(relative < 1e-3);
  }

  void tokenizeCountsWhatEvalWindows() {
    // A few paragraphs of the held-out text: `lrq tokenize` must give HF tokenizers' ids,
    // and exactly the token count eval splits into windows (one window of N fits, N+1 not).
    QTemporaryDir dir;
    Result text = runLrq({"text", "--part", "evaluation"});
    QCOMPARE(text.exitCode, 0);
    const QString textPath = dir.filePath("part.txt");
    QFile f(textPath);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write(text.out.left(600));
    f.close();
    const auto reference = startReference(
        "tokenize_reference.py", {QString::fromStdString(lrq::test::defaultModelPath()), textPath});
    Result tok = runLrq({"tokenize", "default", "--text", textPath, "--ids", "--json", "--quiet"});
    QString error;
    const QByteArray ref = finishReference(*reference, &error);
    QVERIFY2(tok.exitCode == 0, qPrintable(tok.err));
    QJsonObject j = parseJson(tok);
    const QJsonArray ids = j["ids"].toArray();
    const int n = j["tokens"].toInt();
    QCOMPARE(ids.size(), n);
    QVERIFY(n > 50);
    QCOMPARE(j["bytes"].toInt(), 600);
    QVERIFY2(!ref.isEmpty(), qPrintable(error));
    QCOMPARE(ids, QJsonDocument::fromJson(ref).object()["ids"].toArray());

    const QList<Result> evals = lrq::test::runLrqTogether(
        {{"eval", "default", "--text", textPath, "--seq-len", QString::number(n), "--json",
          "--quiet"},
         {"eval", "default", "--text", textPath, "--seq-len", QString::number(n + 1), "--quiet"}});
    const Result &fits = evals[0], &over = evals[1];
    QVERIFY2(fits.exitCode == 0, qPrintable(fits.err));
    QCOMPARE(parseJson(fits)["windows"].toInt(), 1);
    QCOMPARE(over.exitCode, 1);

    const QList<Result> tokenizes = lrq::test::runLrqTogether(
        {{"tokenize", "default", "--text", textPath, "--quiet"},
         {"tokenize", "default", "--text", textPath, "--part", "calibration"}});
    const Result &plain = tokenizes[0], &both = tokenizes[1];
    QCOMPARE(plain.exitCode, 0);
    QVERIFY2(plain.out.startsWith("tokens " + QByteArray::number(n) + " "), plain.out.constData());
    QCOMPARE(both.exitCode, 2);
  }

  void evalRejectsBadText() {
    QTemporaryDir dir;
    Result r = runLrq({"eval", "default", "--text", dir.filePath("none.txt")});
    QCOMPARE(r.exitCode, 1);
    QVERIFY(r.err.contains("none.txt"));
  }

  void generateContinuesSensibly() {
    Result r = runLrq({"generate", "default", "--prompt", "The capital of France is",
                       "--max-new-tokens", "8", "--json"});
    QVERIFY2(r.exitCode == 0, qPrintable(r.err));
    QJsonObject j = parseJson(r);
    QVERIFY2(j["completion"].toString().contains("Paris"), qPrintable(j["completion"].toString()));
  }

  void spectrumIsDescendingCsv() {
    Result r = runLrq(
        {"spectrum", "default", "--tensor", "model.layers.0.self_attn.k_proj.weight", "--quiet"});
    QVERIFY2(r.exitCode == 0, qPrintable(r.err));
    QList<QByteArray> lines = r.out.trimmed().split('\n');
    QCOMPARE(lines.first(), QByteArray("index,singular_value"));
    QCOMPARE(lines.size(), 1 + 192); // k_proj is [192, 576]
    double previous = 1e300;
    for (int i = 1; i < lines.size(); ++i) {
      double value = lines[i].split(',')[1].toDouble();
      QVERIFY(value <= previous + 1e-9);
      QVERIFY(value >= 0);
      previous = value;
    }
    Result bad = runLrq({"spectrum", "default", "--tensor", "no.such.tensor", "--quiet"});
    QCOMPARE(bad.exitCode, 1);
    QVERIFY(bad.err.contains("no.such.tensor"));
  }

  void cudaRequestOnCpuBuildIsAClearError() {
    if (qEnvironmentVariableIsSet("LRQ_TEST_HAS_CUDA"))
      return; // exercised on GPU machines by the device tests instead
    Result r = runLrq({"info", "default", "--device", "cuda"});
    QCOMPARE(r.exitCode, 1);
    QVERIFY2(r.err.contains("cuda", Qt::CaseInsensitive), qPrintable(r.err));
  }
};

QTEST_GUILESS_MAIN(TestCli)
#include "test_cli.moc"
