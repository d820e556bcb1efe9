// Models stored in bf16 / f16 through the quantize job, every method: no
// failure, the HF export keeps each tensor's source type, the export decodes
// to exactly the weights the run evaluated (its metrics come back bit for bit
// when the reloaded export is evaluated the same way), the packed export
// agrees, and RTN's export is the independent round-to-nearest Ŵ rounded once
// to the source type.
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "core/eval/compare.h"
#include "core/io/export.h"
#include "core/io/hf_config.h"
#include "core/io/model_loader.h"
#include "core/io/safetensors.h"
#include "core/model/decoder.h"
#include "core/quant/grid.h"
#include "core/quant/scheme.h"
#include "core/runs/run_store.h"
#include "core/session/model_session.h"
#include "core/session/quantize_job.h"
#include "core/session/quantize_request.h"
#include "test_support.h"
#include "tiny_llama.h"

using namespace lrq;
using lrq::test::byteTokenizerJson;
using lrq::test::someText;
using lrq::test::tinyLlamaConfig;
using lrq::test::tinyLlamaTensors;
using lrq::test::writeFile;

namespace {

const char *stName(at::ScalarType t) {
  return t == at::kBFloat16 ? "BF16" : t == at::kHalf ? "F16" : "F32";
}

struct MethodCase {
  std::string label, method;
  Hyperparameters hyper;
  bool smoothQuant = false;
  bool lowRank = false; // LQER: factors folded into the HF export
};

std::vector<MethodCase> methodCases() {
  return {
      {"rtn", "rtn", {}},
      {"gptq", "gptq", {}},
      {"flexround", "flexround", {{"iters", int64_t(3)}}},
      {"lrq", "lrq", {{"iters", int64_t(3)}}},
      {"lrq-reference", "lrq", {{"iters", int64_t(3)}, {"rank_rule", std::string("reference")}}},
      {"rtn-learned-step", "rtn-learned-step", {{"iters", int64_t(3)}}},
      {"lqer", "lqer", {{"rank", int64_t(4)}}, false, true},
      {"l2qer", "l2qer", {{"rank", int64_t(4)}}, false, true},
      {"lrqat", "lrqat", {{"steps", int64_t(3)}, {"rank", int64_t(4)}}},
      {"smoothquant-rtn", "rtn", {}, true},
  };
}

// Keeps the job's log lines.
struct LogLines : ProgressObserver {
  std::vector<std::string> lines;
  bool referenceStreamed = false; // the evaluation's reference pass went block by block
  std::vector<std::tuple<int, std::string, double, double>> layers; // block, role, mse, SQNR
  void log(LogLevel, const std::string &message) override { lines.push_back(message); }
  void layerFinished(int block, const std::string &role, double mse, double sqnrDb) override {
    layers.emplace_back(block, role, mse, sqnrDb);
  }
  void progress(int64_t, int64_t, const std::string &detail) override {
    referenceStreamed = referenceStreamed || detail.rfind("reference, block", 0) == 0;
  }
  bool has(const std::string &part) const {
    for (const std::string &l : lines)
      if (l.find(part) != std::string::npos)
        return true;
    return false;
  }
};

} // namespace

class TestSourceDtype : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  QString calibration_, evaluation_;

  // A tiny LLaMA stored in `type`, with tokenizer; returns its directory.
  QString writeModel(at::ScalarType type) {
    const QString dir = tmp_.filePath(QString::fromLatin1(stName(type)) + "-model");
    QDir().mkpath(dir);
    const ModelConfig config = tinyLlamaConfig();
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (auto &[name, t] : tinyLlamaTensors(config, 11, 3))
      tensors.emplace_back(name, t.to(type));
    writeSafetensors(dir.toStdString() + "/model.safetensors", tensors);
    writeHfConfig(dir.toStdString() + "/config.json", config,
                  type == at::kBFloat16 ? "bfloat16"
                  : type == at::kHalf   ? "float16"
                                        : "float32");
    writeFile(dir + "/tokenizer.json", byteTokenizerJson());
    return dir;
  }

  QuantizeRequest request(const QString &model, const MethodCase &m, const QString &tag) {
    QuantizeRequest r;
    r.model = model.toStdString();
    r.method = m.method;
    r.scheme = "W4A16";
    r.hyperparameters = m.hyper;
    r.smoothQuant = m.smoothQuant;
    r.calibrationText = calibration_.toStdString();
    r.evaluationText = evaluation_.toStdString();
    r.samples = 4;
    r.seqLen = 32;
    r.evalSeqLen = 32;
    r.evalMaxWindows = 6;
    r.spectra = false;
    r.storePath = tmp_.filePath("runs.sqlite").toStdString();
    r.workDir = tmp_.filePath("work-" + tag).toStdString();
    r.exportDir = tmp_.filePath("hf-" + tag).toStdString();
    r.packedPath = tmp_.filePath("packed-" + tag + ".safetensors").toStdString();
    return r;
  }

  std::vector<int32_t> evaluationTokens(const LoadedModel &source) {
    QFile evalFile(evaluation_);
    if (!evalFile.open(QIODevice::ReadOnly))
      return {};
    return source.tokenizer->encode(evalFile.readAll().toStdString(), true);
  }

  // The model the run evaluated, rebuilt from an export (the HF one, or for
  // LQER, whose HF export folds the factors, the packed one with its factors)
  // and compared with the reference window by window: the run's figures to the bit.
  void checkExportEvaluatesAsTheRun(const LoadedModel &source, const DecoderModel &reference,
                                    const std::vector<int32_t> &evalTokens,
                                    const QuantizeRequest &r, const MethodCase &m,
                                    const QuantizeOutcome &outcome, const QString &tag,
                                    const LoadedModel &hf, const PackedModel &packed) {
    ModelWeights evaluated =
        m.lowRank ? ModelWeights::fromHfTensors(packed.model.config, packed.model.tensors)
                  : ModelWeights::fromHfTensors(hf.config, hf.tensors);
    if (m.lowRank) {
      QVERIFY2(!packed.lowRank.empty(), qPrintable(tag));
      installLowRank(packed.model.config, evaluated, packed.lowRank);
    }
    const DecoderModel again(source.config, evaluated);
    const CompareResult c = compareToReference(again, reference, evalTokens, r.evalSeqLen, nullptr,
                                               nullptr, r.evalMaxWindows);
    QVERIFY2(c.perplexity == outcome.metrics.at("perplexity"),
             qPrintable(tag + QStringLiteral(": perplexity %1 evaluated, %2 from the export")
                                  .arg(outcome.metrics.at("perplexity"), 0, 'g', 17)
                                  .arg(c.perplexity, 0, 'g', 17)));
    QVERIFY2(c.meanKl == outcome.metrics.at("kl"), qPrintable(tag + ": kl"));
    QVERIFY2(c.top1Agreement == outcome.metrics.at("top1"), qPrintable(tag + ": top1"));
  }

private slots:
  void initTestCase() {
    QVERIFY(tmp_.isValid());
    calibration_ = tmp_.filePath("calibration.txt");
    evaluation_ = tmp_.filePath("evaluation.txt");
    writeFile(calibration_, someText(1, 600));
    writeFile(evaluation_, someText(2, 300));
  }

  void everyMethodKeepsTheSourceType_data() {
    QTest::addColumn<int>("type");
    QTest::newRow("bf16") << int(at::kBFloat16);
    QTest::newRow("f16") << int(at::kHalf);
  }
  void everyMethodKeepsTheSourceType() {
    QFETCH(int, type);
    const auto dtype = static_cast<at::ScalarType>(type);
    const QString modelDir = writeModel(dtype);
    const LoadedModel source = loadModel(modelDir.toStdString());
    for (const TensorSource &s : source.sources)
      QCOMPARE(s.sourceType, std::string(stName(dtype)));
    const DecoderModel reference(source.config,
                                 ModelWeights::fromHfTensors(source.config, source.tensors));
    const std::vector<int32_t> evalTokens = evaluationTokens(source);
    QVERIFY(!evalTokens.empty());

    for (const MethodCase &m : methodCases()) {
      const QString tag =
          QString::fromLatin1(stName(dtype)) + "-" + QString::fromStdString(m.label);
      const QuantizeRequest r = request(modelDir, m, tag);
      QuantizeOutcome outcome;
      try {
        outcome = runQuantizeJob(r);
      } catch (const std::exception &e) {
        QFAIL(qPrintable(tag + ": " + e.what()));
      }
      if (m.method == "lrq") {
        // `lrq runs show` says which rank rule the run used.
        const std::string rule = m.hyper.count("rank_rule") ? "reference" : "fixed";
        const test::Result show =
            test::runLrq({"runs", "show", QString::fromStdString(outcome.runId), "--store",
                          QString::fromStdString(r.storePath)});
        QVERIFY2(show.exitCode == 0, qPrintable(show.err));
        QVERIFY2(show.out.contains(QByteArray("rank rule ") + rule.c_str() + "\n"),
                 show.out.constData());
        QVERIFY2(show.out.contains("\"rank_rule\":\"" + QByteArray(rule.c_str()) + "\""),
                 show.out.constData());
        QVERIFY2(show.out.contains("rounded to their source types"), show.out.constData());
      }
      for (const char *metric : {"perplexity", "kl", "top1"})
        QVERIFY2(outcome.metrics.count(metric) && std::isfinite(outcome.metrics.at(metric)),
                 qPrintable(tag + " " + metric));

      // Every tensor of the HF export in the source's type; config.json says so.
      const SafetensorsReader st(r.exportDir + "/model.safetensors");
      QCOMPARE(int(st.tensors().size()), int(source.tensors.size()));
      for (const SafetensorsTensorInfo &info : st.tensors())
        QVERIFY2(info.dtype == stName(dtype),
                 qPrintable(tag + " " + QString::fromStdString(info.name)));
      QFile cfg(QString::fromStdString(r.exportDir) + "/config.json");
      QVERIFY(cfg.open(QIODevice::ReadOnly));
      QCOMPARE(QJsonDocument::fromJson(cfg.readAll()).object().value("torch_dtype").toString(),
               QString(dtype == at::kBFloat16 ? "bfloat16" : "float16"));

      const LoadedModel hf = loadModel(r.exportDir);
      PackedModel packed = loadPackedModel(r.packedPath, nullptr, nullptr, /*foldLowRank=*/false);
      checkExportEvaluatesAsTheRun(source, reference, evalTokens, r, m, outcome, tag, hf, packed);
      if (QTest::currentTestFailed())
        return;

      // The packed export decodes to the HF export's values (LQER: Ŵ + (A B)ᵀ
      // rounded once to the source type is what the HF export holds).
      for (const auto &[name, t] : hf.tensors) {
        QVERIFY2(packed.model.tensors.count(name),
                 qPrintable(tag + " " + QString::fromStdString(name)));
        at::Tensor expected = packed.model.tensors.at(name);
        const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
        const auto lr = packed.lowRank.find(prefix);
        if (lr != packed.lowRank.end())
          expected = (expected + at::matmul(lr->second.first, lr->second.second).t())
                         .to(dtype)
                         .to(at::kFloat);
        QVERIFY2(at::equal(t, expected), qPrintable(tag + " " + QString::fromStdString(name)));
      }

      // RTN: the export is the round-to-nearest grid value of the source weight,
      // computed here independently, rounded once to the source type; and that
      // rounding is not a no-op (the grid values are not all representable).
      if (m.method == "rtn" && !m.smoothQuant) {
        const quant::QuantScheme scheme = quant::QuantScheme::fromJson(resolveSchemeJson(r.scheme));
        int64_t notRepresentable = 0;
        for (const char *n :
             {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"}) {
          const at::Tensor grid = quant::roundToNearest(source.tensors.at(n), scheme.weight);
          const at::Tensor rounded = grid.to(dtype).to(at::kFloat);
          notRepresentable += (rounded != grid).sum().item<int64_t>();
          QVERIFY2(at::equal(hf.tensors.at(n), rounded), qPrintable(tag + " " + n));
        }
        QVERIFY2(notRepresentable > 0, qPrintable(tag));
      }
      // Tensors no method touches come back as they were.
      QVERIFY(at::equal(hf.tensors.at("model.embed_tokens.weight"),
                        source.tensors.at("model.embed_tokens.weight")));
      if (!m.smoothQuant)
        QVERIFY(at::equal(hf.tensors.at("model.layers.0.input_layernorm.weight"),
                          source.tensors.at("model.layers.0.input_layernorm.weight")));
      else
        QVERIFY(!at::equal(hf.tensors.at("model.layers.0.input_layernorm.weight"),
                           source.tensors.at("model.layers.0.input_layernorm.weight")));
    }
  }

  // A float32 model: the run sets aside the reference's linears its method
  // replaced, and its evaluation brings them back one block at a time; every
  // method's figures are still those of its export against the reference,
  // evaluated here with the whole reference in memory.
  void float32RunEvaluatesFromTheSpill() {
    const QString modelDir = writeModel(at::kFloat);
    const LoadedModel source = loadModel(modelDir.toStdString());
    const DecoderModel reference(source.config,
                                 ModelWeights::fromHfTensors(source.config, source.tensors));
    const std::vector<int32_t> evalTokens = evaluationTokens(source);
    QVERIFY(!evalTokens.empty());
    for (const MethodCase &m : methodCases()) {
      const QString tag = "F32-" + QString::fromStdString(m.label);
      const QuantizeRequest r = request(modelDir, m, tag);
      LogLines log;
      QuantizeOutcome outcome;
      try {
        outcome = runQuantizeJob(r, &log);
      } catch (const std::exception &e) {
        QFAIL(qPrintable(tag + ": " + e.what()));
      }
      QVERIFY2(log.has("full-precision linears the method replaced set aside on disk"),
               qPrintable(tag));
      QVERIFY2(log.referenceStreamed, qPrintable(tag));
      const LoadedModel hf = loadModel(r.exportDir);
      const PackedModel packed =
          loadPackedModel(r.packedPath, nullptr, nullptr, /*foldLowRank=*/false);
      checkExportEvaluatesAsTheRun(source, reference, evalTokens, r, m, outcome, tag, hf, packed);
      if (QTest::currentTestFailed())
        return;
    }
  }

  // The same request on the model the job loads (reference set aside on disk,
  // LR-QAT's W0 in the stash while it trains) and on an open session (all in
  // memory): every layer's error, every figure and every exported tensor agree
  // to the bit.
  void spilledAndWholeRunsAgree() {
    const QString modelDir = writeModel(at::kFloat);
    const auto session = ModelSession::open(modelDir.toStdString());
    for (const MethodCase &m : methodCases()) {
      const QString tag = "agree-" + QString::fromStdString(m.label);
      QuantizeRequest spilled = request(modelDir, m, tag + "-spilled");
      spilled.spectra = true; // the spectra read each reference layer from the spill
      QuantizeRequest whole = request(modelDir, m, tag + "-whole");
      whole.spectra = true;
      LogLines a, b;
      QuantizeOutcome x, y;
      try {
        x = runQuantizeJob(spilled, &a);
        y = runQuantizeJob(whole, *session, &b);
      } catch (const std::exception &e) {
        QFAIL(qPrintable(tag + ": " + e.what()));
      }
      QVERIFY2(a.has("set aside on disk") && !b.has("set aside on disk"), qPrintable(tag));
      // Streamed, so the spectra after it still read the reference from the spill.
      QVERIFY2(a.referenceStreamed && !b.referenceStreamed, qPrintable(tag));
      if (m.method == "lrqat")
        QVERIFY2(a.has("set aside while the steps run") && !b.has("set aside while the steps run"),
                 qPrintable(tag));
      QVERIFY2(!a.layers.empty(), qPrintable(tag));
      QVERIFY2(a.layers == b.layers, qPrintable(tag + ": layer errors differ"));
      for (const char *metric : {"perplexity", "kl", "max_kl", "top1", "bits_per_weight"})
        QVERIFY2(x.metrics.count(metric) && x.metrics.at(metric) == y.metrics.at(metric),
                 qPrintable(tag + " " + metric));
      // The spectra, each layer's reference weight read from the spill on one
      // side and from memory on the other: the same values.
      const RunStore store = RunStore::open(spilled.storePath);
      const RunRecord rx = store.getRun(x.runId), ry = store.getRun(y.runId);
      QVERIFY2(!rx.spectra.empty(), qPrintable(tag));
      QCOMPARE(rx.spectra.size(), ry.spectra.size());
      for (size_t i = 0; i < rx.spectra.size(); ++i)
        QVERIFY2(rx.spectra[i].block == ry.spectra[i].block &&
                     rx.spectra[i].role == ry.spectra[i].role &&
                     rx.spectra[i].kind == ry.spectra[i].kind &&
                     rx.spectra[i].values == ry.spectra[i].values,
                 qPrintable(tag + " spectrum " + QString::fromStdString(rx.spectra[i].role)));
      const LoadedModel ex = loadModel(spilled.exportDir), ey = loadModel(whole.exportDir);
      QCOMPARE(ex.tensors.size(), ey.tensors.size());
      for (const auto &[name, t] : ex.tensors)
        QVERIFY2(at::equal(t, ey.tensors.at(name)),
                 qPrintable(tag + " " + QString::fromStdString(name)));
      // The packed export takes every step from the grid the method reported:
      // the reference stays on disk, and the file holds the same tensors.
      QVERIFY2(!a.has("set aside back into memory"), qPrintable(tag));
      const PackedModel px = loadPackedModel(spilled.packedPath, nullptr, nullptr, false);
      const PackedModel py = loadPackedModel(whole.packedPath, nullptr, nullptr, false);
      QCOMPARE(px.model.tensors.size(), py.model.tensors.size());
      for (const auto &[name, t] : px.model.tensors)
        QVERIFY2(at::equal(t, py.model.tensors.at(name)),
                 qPrintable(tag + " packed " + QString::fromStdString(name)));
      QCOMPARE(px.lowRank.size(), py.lowRank.size());
      for (const auto &[name, f] : px.lowRank)
        QVERIFY2(at::equal(f.first, py.lowRank.at(name).first) &&
                     at::equal(f.second, py.lowRank.at(name).second),
                 qPrintable(tag + " factors " + QString::fromStdString(name)));
    }
  }

  // SmoothQuant on block 0 only: the job sets every reference linear aside
  // before smoothing, and those SmoothQuant and the method leave alone (the
  // other blocks) are shared with the model again afterwards, not copies: the
  // run reports only block 0's linears on disk, and its figures and export
  // equal those of the run that keeps everything in memory.
  void smoothQuantOnOneBlockSharesTheRest() {
    const QString modelDir = writeModel(at::kFloat);
    const auto session = ModelSession::open(modelDir.toStdString());
    quant::QuantScheme scheme = quant::presetScheme("W8A8");
    scheme.layers.blocks = {0};
    const QString schemeFile = tmp_.filePath("w8a8-block0.json");
    writeFile(schemeFile, scheme.toJson());
    MethodCase m{"smoothquant-block0", "rtn", {}, true};
    QuantizeRequest spilled = request(modelDir, m, "block0-spilled");
    QuantizeRequest whole = request(modelDir, m, "block0-whole");
    spilled.scheme = whole.scheme = schemeFile.toStdString();
    LogLines a, b;
    const QuantizeOutcome x = runQuantizeJob(spilled, &a);
    const QuantizeOutcome y = runQuantizeJob(whole, *session, &b);
    const int perBlock =
        int(blockLinears(tinyLlamaConfig(),
                         ModelWeights::fromHfTensors(tinyLlamaConfig(),
                                                     loadModel(modelDir.toStdString()).tensors)
                             .blocks[0])
                .size());
    QVERIFY2(
        a.has(std::to_string(perBlock) + " full-precision linears the method replaced set aside"),
        qPrintable(QString::fromStdString(a.lines.empty() ? "" : a.lines.back())));
    for (const char *metric : {"perplexity", "kl", "top1"})
      QVERIFY2(x.metrics.at(metric) == y.metrics.at(metric), metric);
    const LoadedModel ex = loadModel(spilled.exportDir), ey = loadModel(whole.exportDir);
    for (const auto &[name, t] : ex.tensors)
      QVERIFY2(at::equal(t, ey.tensors.at(name)), name.c_str());
  }

  // `lrq eval --reference`: the reference session's block weights set aside
  // on disk (ModelSession::setBlocksAside) give the comparison of a whole one
  // to the bit, read block by block where the windows' hidden states weigh
  // less than what is on disk and whole otherwise; the session then serves
  // only as a reference; a folder that refuses the file leaves it whole.
  void referenceSetAsideComparesAsTheWholeOne() {
    const auto model = ModelSession::open(writeModel(at::kBFloat16).toStdString());
    const std::string refPath = writeModel(at::kFloat).toStdString();
    const auto whole = ModelSession::open(refPath);
    const auto aside = ModelSession::open(refPath);
    QFile evalFile(evaluation_);
    QVERIFY(evalFile.open(QIODevice::ReadOnly));
    const std::string text = evalFile.readAll().toStdString();

    QTemporaryDir spillDir;
    QVERIFY(spillDir.isValid());
    int64_t linearBytes = 0;
    for (const auto &[name, t] : loadModel(refPath).tensors)
      if (name.find(".layers.") != std::string::npos && t.dim() == 2)
        linearBytes += t.numel() * 4;
    const int64_t bytes = aside->setBlocksAside(spillDir.path().toStdString());
    QCOMPARE(bytes, linearBytes);
    QVERIFY(QDir(spillDir.path()).entryList(QDir::Files | QDir::Hidden).isEmpty());
    // Streamed block by block, on 2 windows and on every one.
    for (const int windows : {2, 0}) {
      const int seqLen = 16;
      LogLines a, b;
      const ComparisonReport x = model->compare(*whole, text, seqLen, &a, nullptr, windows);
      const ComparisonReport y = model->compare(*aside, text, seqLen, &b, nullptr, windows);
      QVERIFY(b.referenceStreamed);
      QVERIFY(!a.referenceStreamed);
      QVERIFY(x.meanKl > 0);
      QVERIFY(x.meanKl == y.meanKl && x.maxKl == y.maxKl && x.top1Agreement == y.top1Agreement);
      QVERIFY(x.model.perplexity == y.model.perplexity);
      QVERIFY(x.referencePerplexity == y.referencePerplexity);
      QCOMPARE(y.model.windows, x.model.windows);
    }
    // Perplexity and comparisons as the model run block by block too; every
    // other use is refused.
    QVERIFY(aside->perplexity(text, 16, nullptr, nullptr, 3).meanNll ==
            whole->perplexity(text, 16, nullptr, nullptr, 3).meanNll);
    const ComparisonReport asModel = aside->compare(*model, text, 16, nullptr, nullptr, 2);
    const ComparisonReport wholeAsModel = whole->compare(*model, text, 16, nullptr, nullptr, 2);
    QVERIFY(asModel.meanKl > 0 && asModel.meanKl == wholeAsModel.meanKl);
    for (const std::function<void()> &use :
         {std::function<void()>(
              [&] { aside->singularValues("model.layers.0.mlp.up_proj.weight"); }),
          std::function<void()>([&] { aside->statistics("model.norm.weight"); }),
          std::function<void()>([&] { aside->generate("a", GenerationOptions{}); })}) {
      try {
        use();
        QFAIL("expected lrq::Error");
      } catch (const Error &e) {
        QVERIFY2(QString(e.what()).contains("set aside"), e.what());
      }
    }

    const auto refused = ModelSession::open(refPath);
    QVERIFY_THROWS_EXCEPTION(FileError,
                             refused->setBlocksAside(tmp_.filePath("no-such-dir").toStdString()));
    QVERIFY(refused->perplexity(text, 16, nullptr, nullptr, 2).perplexity ==
            whole->perplexity(text, 16, nullptr, nullptr, 2).perplexity);
  }

  // A session opened with its block weights aside never holds them whole: each
  // linear goes to disk as it loads (safetensors, the packed format), and
  // perplexity and comparisons give the whole session's figures to the bit,
  // either side. A folder that refuses the file leaves the session whole.
  void openedWithBlocksAsideEvaluatesAsTheWholeOne() {
    const std::string bf16 = writeModel(at::kBFloat16).toStdString();
    const std::string f32 = writeModel(at::kFloat).toStdString();
    // A packed file with low-rank factors, which the reader folds into Ŵ.
    const QuantizeRequest lqer = request(QString::fromStdString(bf16), methodCases()[6], "aside");
    QCOMPARE(lqer.method, std::string("lqer"));
    runQuantizeJob(lqer);
    const std::string packed = lqer.packedPath;
    QFile evalFile(evaluation_);
    QVERIFY(evalFile.open(QIODevice::ReadOnly));
    const std::string text = evalFile.readAll().toStdString();
    QTemporaryDir spillDir;
    QVERIFY(spillDir.isValid());
    const std::string dir = spillDir.path().toStdString();
    const auto reference = ModelSession::open(f32);
    for (const std::string &path : {bf16, f32, packed}) {
      const auto whole = ModelSession::open(path);
      const auto aside = ModelSession::openBlocksAside(path, dir);
      int64_t linearBytes = 0;
      for (const auto &[name, t] : loadModel(path).tensors)
        if (name.find(".layers.") != std::string::npos && t.dim() == 2)
          linearBytes += t.numel() * 4;
      // The loader hands every tensor to the sink as it loads and keeps what it returns.
      int64_t sunk = 0;
      const LoadedModel viaSink =
          loadModel(path, nullptr, nullptr, [&](const std::string &name, at::Tensor t) {
            if (name.find(".layers.") == std::string::npos || t.dim() != 2)
              return t;
            sunk += t.numel() * 4;
            return at::empty(t.sizes(), t.options().device(at::kMeta));
          });
      QCOMPARE(sunk, linearBytes);
      QVERIFY(viaSink.tensors.at("model.layers.1.self_attn.k_proj.weight").is_meta());
      QCOMPARE(aside->setBlocksAside(dir), linearBytes); // already aside: what is there
      QVERIFY(QDir(spillDir.path()).entryList(QDir::Files | QDir::Hidden).isEmpty());
      QVERIFY2(aside->perplexity(text, 16, nullptr, nullptr, 3).meanNll ==
                   whole->perplexity(text, 16, nullptr, nullptr, 3).meanNll,
               path.c_str());
      const ComparisonReport x = whole->compare(*reference, text, 16, nullptr, nullptr, 3);
      const ComparisonReport y = aside->compare(*reference, text, 16, nullptr, nullptr, 3);
      const ComparisonReport z = reference->compare(*aside, text, 16, nullptr, nullptr, 3);
      const ComparisonReport zWhole = reference->compare(*whole, text, 16, nullptr, nullptr, 3);
      QVERIFY2(x.meanKl == y.meanKl && x.model.perplexity == y.model.perplexity, path.c_str());
      QVERIFY2(z.meanKl == zWhole.meanKl && z.top1Agreement == zWhole.top1Agreement, path.c_str());
      QVERIFY_THROWS_EXCEPTION(Error, aside->singularValues("model.layers.0.mlp.up_proj.weight"));
      QCOMPARE(aside->summary().parameters, whole->summary().parameters);
    }
    const auto refusedFolder =
        ModelSession::openBlocksAside(f32, tmp_.filePath("no-such-dir").toStdString());
    QCOMPARE(refusedFolder->singularValues("model.layers.0.mlp.up_proj.weight"),
             reference->singularValues("model.layers.0.mlp.up_proj.weight"));
  }

  // The packed file says which type its Ŵ was rounded to; a type the reader
  // does not know is refused, naming the file and the layer, not guessed.
  void packedFileRecordsTheRounding() {
    const QString path = tmp_.filePath("packed-BF16-rtn.safetensors");
    QVERIFY(QFile::exists(path));
    const SafetensorsReader reader(path.toStdString());
    const nlohmann::json layers = nlohmann::json::parse(reader.metadata().at("layers"));
    QCOMPARE(int(layers.size()), 14);
    for (const auto &[name, layer] : layers.items())
      QCOMPARE(layer.at("value_dtype").get<std::string>(), std::string("BF16"));
    QFile in(path);
    QVERIFY(in.open(QIODevice::ReadOnly));
    QByteArray bytes = in.readAll();
    // In the header the layers JSON is itself a JSON string: its quotes are escaped.
    const QByteArray entry = R"(\"value_dtype\":\"BF16\")";
    QCOMPARE(int(bytes.count(entry)), 14);
    bytes.replace(entry, R"(\"value_dtype\":\"XF16\")"); // same length: the header stays valid
    const QString bad = tmp_.filePath("bad-value-dtype.safetensors");
    QFile out(bad);
    QVERIFY(out.open(QIODevice::WriteOnly));
    QCOMPARE(out.write(bytes), qint64(bytes.size()));
    out.close();
    try {
      loadPackedModel(bad.toStdString());
      QFAIL("expected lrq::FileError");
    } catch (const FileError &e) {
      const QString message = QString::fromUtf8(e.what());
      QVERIFY2(message.contains("bad-value-dtype") && message.contains("value_dtype") &&
                   message.contains("XF16"),
               e.what());
    }
  }
};

QTEST_GUILESS_MAIN(TestSourceDtype)
#include "test_source_dtype.moc"
