// `lrq quantize TINY --scheme gguf-* --gguf X` on a tiny float32 LLaMA with a
// tokenizer (an HF folder written here), then `lrq eval X`: the GGUF file
// loads and gives the run's perplexity; the file's tensors are the block
// types the scheme names, its metadata the run's, and the run records it.
// Float tensors rounded by --gguf-float are warned about, and lrq eval measures
// the file; bad --gguf-float types are refused before the run.
#include <QDir>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "core/io/gguf.h"
#include "test_support.h"
#include "tiny_llama.h"

using namespace lrq;
using lrq::test::Result;
using lrq::test::runLrq;
using lrq::test::someText;
using lrq::test::writeFile;

namespace {

QJsonObject lastEvent(const Result &r) {
  QJsonObject last;
  for (const QByteArray &line : r.out.split('\n'))
    if (!line.trimmed().isEmpty())
      last = QJsonDocument::fromJson(line).object();
  return last;
}

} // namespace

class TestGgufExportCli : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  QString model_, model256_, calib_, eval_, store_;

  QStringList quantize(const QString &scheme, const QString &out, const QString &model = {}) const {
    return {"quantize",       model.isEmpty() ? model_ : model,
            "--method",       "rtn",
            "--scheme",       scheme,
            "--gguf",         out,
            "--calib",        calib_,
            "--text",         eval_,
            "--nsamples",     "4",
            "--seq-len",      "32",
            "--eval-seq-len", "32",
            "--eval-windows", "6",
            "--no-ood-eval",  "--no-spectra",
            "--store",        store_,
            "--json",         "--quiet",
            "--threads",      "2"};
  }

private slots:
  void initTestCase() {
    QVERIFY(tmp_.isValid());
    model_ = tmp_.filePath("tiny");
    lrq::test::writeTinyLlamaDir(model_, {256, 64, 96, 16, 256}, 3);
    // MLP width 256: down_proj's rows are one Q6_K super-block, the other
    // linears' (64) take gguf-q6_k's Q8_0 fallback.
    model256_ = tmp_.filePath("tiny256");
    lrq::test::writeTinyLlamaDir(model256_, {256, 64, 256, 16, 256}, 4);
    if (QTest::currentTestFailed())
      return;
    calib_ = tmp_.filePath("calib.txt");
    eval_ = tmp_.filePath("eval.txt");
    store_ = tmp_.filePath("runs.sqlite");
    writeFile(calib_, someText(1, 400));
    writeFile(eval_, someText(2, 300));
  }

  void exportLoadsAndGivesTheRunsPerplexity_data() {
    QTest::addColumn<QString>("scheme");
    QTest::addColumn<QString>("method");
    QTest::addColumn<QString>("type");     // attn_q's block type
    QTest::addColumn<QString>("downType"); // ffn_down's
    QTest::addColumn<int>("fileType");
    QTest::newRow("q4_0") << "gguf-q4_0"
                          << "rtn"
                          << "Q4_0"
                          << "Q4_0" << 2;
    QTest::newRow("q4_1") << "gguf-q4_1"
                          << "rtn"
                          << "Q4_1"
                          << "Q4_1" << 3;
    QTest::newRow("q8_0") << "gguf-q8_0"
                          << "rtn"
                          << "Q8_0"
                          << "Q8_0" << 7;
    QTest::newRow("q5_0") << "gguf-q5_0"
                          << "rtn"
                          << "Q5_0"
                          << "Q5_0" << 8;
    QTest::newRow("q5_1") << "gguf-q5_1"
                          << "rtn"
                          << "Q5_1"
                          << "Q5_1" << 9;
    // Q6_K where rows are whole super-blocks, Q8_0 elsewhere; MOSTLY_Q6_K.
    QTest::newRow("q6_k") << "gguf-q6_k"
                          << "rtn"
                          << "Q8_0"
                          << "Q6_K" << 18;
    QTest::newRow("q6_k gptq") << "gguf-q6_k"
                               << "gptq"
                               << "Q8_0"
                               << "Q6_K" << 18;
    // Q4_K where rows are whole super-blocks, Q5_0 elsewhere; MOSTLY_Q4_K_S.
    QTest::newRow("q4_k") << "gguf-q4_k"
                          << "rtn"
                          << "Q5_0"
                          << "Q4_K" << 14;
    QTest::newRow("q4_k gptq") << "gguf-q4_k"
                               << "gptq"
                               << "Q5_0"
                               << "Q4_K" << 14;
    QTest::newRow("q4_k lrq") << "gguf-q4_k"
                              << "lrq"
                              << "Q5_0"
                              << "Q4_K" << 14;
  }
  void exportLoadsAndGivesTheRunsPerplexity() {
    QFETCH(QString, scheme);
    QFETCH(QString, method);
    QFETCH(QString, type);
    QFETCH(QString, downType);
    QFETCH(int, fileType);
    const QString out = tmp_.filePath(scheme + "-" + method + ".gguf");
    QStringList args =
        quantize(scheme, out, downType == "Q6_K" || downType == "Q4_K" ? model256_ : model_);
    args[args.indexOf("--method") + 1] = method;
    if (method == "lrq")
      args << "--iters"
           << "5"; // a few steps move the learned grid; seconds to run
    // gguf-q6_k's mixed grids in the packed file too (each layer its own bits and groups).
    const QString packed = tmp_.filePath(scheme + "-" + method + ".safetensors");
    if (downType == "Q6_K")
      args << "--packed" << packed;
    const Result r = runLrq(args);
    QVERIFY2(r.exitCode == 0, qPrintable(r.err));
    const QJsonObject done = lastEvent(r);
    QCOMPARE(done["event"].toString(), QString("finished"));
    QCOMPARE(done["gguf"].toString(), out);
    const double ppl = done["metrics"].toObject()["perplexity"].toDouble();
    QVERIFY(ppl > 1);

    const GgufReader g(out.toStdString());
    QCOMPARE(g.getInt("general.file_type"), int64_t(fileType));
    QCOMPARE(g.getString("lrq.run_id"), done["run_id"].toString().toStdString());
    QCOMPARE(g.getString("lrq.method"), method.toStdString());
    QCOMPARE(g.getString("tokenizer.ggml.model"), std::string("gpt2"));
    QCOMPARE(g.getString("tokenizer.ggml.pre"), std::string("gpt-2"));     // llama.cpp's name
    QCOMPARE(g.getStringArray("tokenizer.ggml.merges").size(), size_t(0)); // present, as required
    QCOMPARE(QString::fromStdString(g.findTensor("blk.1.ffn_down.weight")->typeName()), downType);
    QCOMPARE(QString::fromStdString(g.findTensor("blk.0.attn_q.weight")->typeName()), type);
    QCOMPARE(g.findTensor("token_embd.weight")->typeName(), std::string("F32"));

    const Result e = runLrq({"eval", out, "--text", eval_, "--seq-len", "32", "--max-windows", "6",
                             "--json", "--quiet", "--threads", "2"});
    QVERIFY2(e.exitCode == 0, qPrintable(e.err));
    const double back = lrq::test::parseJson(e)["perplexity"].toDouble();
    qInfo("%s %s: run perplexity %.9g, GGUF file %.9g", qPrintable(scheme), qPrintable(method), ppl,
          back);
    QVERIFY2(std::abs(back - ppl) <= 1e-9 * ppl,
             qPrintable(QString("%1 vs %2").arg(back, 0, 'g', 12).arg(ppl, 0, 'g', 12)));
    if (downType == "Q6_K") {
      const Result p = runLrq({"eval", packed, "--text", eval_, "--seq-len", "32", "--max-windows",
                               "6", "--json", "--quiet", "--threads", "2"});
      QVERIFY2(p.exitCode == 0, qPrintable(p.err));
      const double fromPacked = lrq::test::parseJson(p)["perplexity"].toDouble();
      QVERIFY2(
          std::abs(fromPacked - ppl) <= 1e-9 * ppl,
          qPrintable(QString("packed %1 vs %2").arg(fromPacked, 0, 'g', 12).arg(ppl, 0, 'g', 12)));
    }

    // Recorded with the run.
    const Result show =
        runLrq({"runs", "show", done["run_id"].toString(), "--store", store_, "--json"});
    QVERIFY2(show.exitCode == 0, qPrintable(show.err));
    QCOMPARE(lrq::test::parseJson(show)["gguf"].toString(), out);
  }

  // --gguf-float token_embd.weight=q8_0 (and output.weight=q6_k, which rows of
  // 64 turn into Q8_0): the run warns that the file is no longer the evaluated
  // model; lrq eval of the file runs and its perplexity moves a little.
  void roundedFloatTensorsAreWarnedAndMeasurable() {
    const QString out = tmp_.filePath("embd-q8_0.gguf");
    const Result r =
        runLrq(quantize("gguf-q4_0", out) << "--gguf-float"
                                          << "token_embd.weight=q8_0,output.weight=q6_k");
    QVERIFY2(r.exitCode == 0, qPrintable(r.err));
    QVERIFY2(r.err.contains("GGUF export rounded token_embd.weight (Q8_0), output.weight (Q8_0)") &&
                 r.err.contains("no longer exactly the evaluated model") &&
                 r.err.contains("lrq eval " + out),
             qPrintable(r.err));
    const double ppl = lastEvent(r)["metrics"].toObject()["perplexity"].toDouble();
    const GgufReader g(out.toStdString());
    QCOMPARE(g.findTensor("token_embd.weight")->typeName(), std::string("Q8_0"));
    QCOMPARE(g.findTensor("output.weight")->typeName(), std::string("Q8_0"));
    QCOMPARE(g.findTensor("output_norm.weight")->typeName(), std::string("F32"));
    QCOMPARE(g.findTensor("blk.0.attn_q.weight")->typeName(), std::string("Q4_0"));

    const Result e = runLrq({"eval", out, "--text", eval_, "--seq-len", "32", "--max-windows", "6",
                             "--json", "--quiet", "--threads", "2"});
    QVERIFY2(e.exitCode == 0, qPrintable(e.err));
    const double back = lrq::test::parseJson(e)["perplexity"].toDouble();
    const double relative = std::abs(back - ppl) / ppl;
    qInfo("gguf-q4_0 with Q8_0 token_embd and output: run perplexity %.9g, GGUF file %.9g "
          "(relative difference %.3g)",
          ppl, back, relative);
    QVERIFY2(relative > 0 && relative < 1e-2,
             qPrintable(QString("%1 vs %2").arg(back, 0, 'g', 12).arg(ppl, 0, 'g', 12)));
  }

  // A --gguf-float type the export cannot store: refused before the run.
  void badFloatTypesAreRefusedFirst() {
    const QString out = tmp_.filePath("bad-float.gguf");
    for (const QString type : {"q4_0", "banana"}) {
      const Result r = runLrq(quantize("gguf-q4_0", out) << "--gguf-float"
                                                         << "token_embd.weight=" + type);
      QCOMPARE(r.exitCode, 2);
      QVERIFY2(r.err.contains("type must be f32, f16, q8_0 or q6_k, not '" + type + "'"),
               qPrintable(r.err));
      QVERIFY(!r.out.contains("run_started"));
      QVERIFY(!QFile::exists(out));
    }
  }

  // Refused before any work: the scheme cannot be stored; the file exists.
  void refusalsComeFirst() {
    const QString out = tmp_.filePath("refused.gguf");
    Result r = runLrq(quantize("W3A16", out));
    QCOMPARE(r.exitCode, 2);
    QVERIFY2(r.err.contains("--gguf: W3 asym per-channel weights cannot be stored as GGUF Q4_1; "
                            "quantize with --scheme gguf-q4_1"),
             qPrintable(r.err));
    QVERIFY(!QFile::exists(out));
    QVERIFY(!r.out.contains("run_started"));
    // gguf-q4_k's offset grid has no packed form: refused before the run, too.
    r = runLrq(quantize("gguf-q4_k", out) << "--packed" << tmp_.filePath("q4k.safetensors"));
    QCOMPARE(r.exitCode, 2);
    QVERIFY2(r.err.contains("no packed form") && r.err.contains("--gguf"), qPrintable(r.err));
    QVERIFY(!r.out.contains("run_started"));
    writeFile(out, "old");
    r = runLrq(quantize("gguf-q4_0", out));
    QCOMPARE(r.exitCode, 2);
    QVERIFY2(r.err.contains("already exists") && r.err.contains("--force"), qPrintable(r.err));
    QCOMPARE(QFileInfo(out).size(), qint64(3));
    r = runLrq(quantize("gguf-q4_0", out) << "--force");
    QVERIFY2(r.exitCode == 0, qPrintable(r.err));
    QVERIFY(GgufReader(out.toStdString()).tensors().size() > 3);
  }
};

QTEST_GUILESS_MAIN(TestGgufExportCli)
#include "test_gguf_export_cli.moc"
