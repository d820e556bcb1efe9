// Quantized model against its reference: KL divergence, top-1 agreement and
// both perplexities. Identical models give KL 0 and agreement 1; a tiny model
// and an RTN W4 copy of it are checked against the numpy forward of
// tests/reference/compare_reference.py; the default model under RTN W4 / W3 on
// two short windows gives the figures of the report.
#include <ATen/ATen.h>

#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/eval/compare.h"
#include "core/eval/perplexity.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/rtn.h"
#include "core/quant/scheme.h"
#include "decoder_test_models.h"
#include "test_support.h"

using namespace lrq;

namespace {

std::vector<int32_t> seededTokens(int64_t count, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> out;
  uint64_t x = seed;
  for (int64_t i = 0; i < count; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    out.push_back(int32_t((x >> 33) % uint64_t(vocab)));
  }
  return out;
}

// Writes tensors in decoder_reference.py's raw format (NAME.json + NAME.bin).
bool writeRawModel(const QString &dir, const QString &name, const QJsonObject &config,
                   const std::map<std::string, at::Tensor> &tensors) {
  QJsonArray index;
  QByteArray blob;
  int64_t offset = 0;
  for (const auto &[n, t] : tensors) {
    const at::Tensor c = t.to(at::kFloat).contiguous();
    QJsonArray shape;
    for (int64_t s : c.sizes())
      shape.append(qint64(s));
    index.append(QJsonObject{
        {"name", QString::fromStdString(n)}, {"shape", shape}, {"offset", qint64(offset)}});
    blob.append(reinterpret_cast<const char *>(c.data_ptr<float>()), int(c.numel() * 4));
    offset += c.numel();
  }
  QFile jf(dir + "/" + name + ".json"), bf(dir + "/" + name + ".bin");
  if (!jf.open(QIODevice::WriteOnly) || !bf.open(QIODevice::WriteOnly))
    return false;
  jf.write(QJsonDocument(QJsonObject{{"config", config}, {"tensors", index}}).toJson());
  bf.write(blob);
  return true;
}

// Every tiny model decoder_test_models.h writes, read back (none, with *error
// set, when they cannot be written).
std::vector<lrq::test::TinyModel> allTinyModels(QString *error) {
  QTemporaryDir dir;
  std::vector<lrq::test::TinyModel> out;
  for (const QString &name : lrq::test::writeTinyModels(dir.path(), error))
    out.push_back(lrq::test::readTinyModel(dir.path(), name));
  return out;
}

} // namespace

// Takes every block's linears out of a model and puts back only the block
// asked for; restore() gives every one back.
struct AsideLoader : BlockLoader {
  const ModelConfig &config;
  ModelWeights &w;
  int64_t budget;
  std::map<std::pair<int64_t, std::string>, at::Tensor> held;
  std::vector<int64_t> loads;
  bool othersPresent = false; // another block's linear present when one loads
  std::function<void(int64_t)> onLoad;
  AsideLoader(const ModelConfig &c, ModelWeights &weights, int64_t budgetBytes)
      : config(c), w(weights), budget(budgetBytes) {
    for (int64_t b = 0; b < int64_t(w.blocks.size()); ++b)
      for (auto &[role, l] : blockLinears(config, w.blocks[size_t(b)])) {
        held[{b, role}] = l->weight;
        l->weight = at::Tensor();
      }
  }
  void load(int64_t block) override {
    loads.push_back(block);
    for (int64_t b = 0; b < int64_t(w.blocks.size()); ++b)
      for (auto &[role, l] : blockLinears(config, w.blocks[size_t(b)])) {
        othersPresent = othersPresent || l->weight.defined();
        if (b == block)
          l->weight = held.at({b, role});
      }
    if (onLoad)
      onLoad(block);
  }
  void unload(int64_t block) override {
    for (auto &[role, l] : blockLinears(config, w.blocks[size_t(block)]))
      l->weight = at::Tensor();
  }
  int64_t hiddenBudgetBytes() const override { return budget; }
  bool noneLoaded() {
    for (auto &block : w.blocks)
      for (auto &[role, l] : blockLinears(config, block))
        if (l->weight.defined())
          return false;
    return true;
  }
  void restore() {
    for (const auto &[key, t] : held)
      for (auto &[role, l] : blockLinears(config, w.blocks[size_t(key.first)]))
        if (role == key.second)
          l->weight = t;
  }
};

class TestCompareEval : public QObject {
  Q_OBJECT

private slots:
  void initTestCase() { at::manual_seed(3); }

  void identicalModelsAgree() {
    QString error;
    const std::vector<lrq::test::TinyModel> tinies = allTinyModels(&error);
    QVERIFY2(!tinies.empty(), qPrintable(error));
    for (const auto &tiny : tinies) {
      const DecoderModel a(tiny.config, ModelWeights::fromHfTensors(tiny.config, tiny.tensors));
      const DecoderModel b(tiny.config, ModelWeights::fromHfTensors(tiny.config, tiny.tensors));
      const auto tokens = seededTokens(70, tiny.config.vocabSize, 11);
      const CompareResult r = compareToReference(a, b, tokens, 16);
      QCOMPARE(r.windows, int64_t(4)); // 70 tokens: 4 windows of 16, 6 dropped
      QCOMPARE(r.tokens, int64_t(4 * 15));
      QVERIFY2(std::abs(r.meanKl) < 1e-7, qPrintable(QString::number(r.meanKl)));
      QVERIFY(r.maxKl < 1e-6);
      QCOMPARE(r.top1Agreement, 1.0);
      QCOMPARE(r.perplexity, r.referencePerplexity);
      // The same windows as perplexity.
      const PerplexityResult p = evaluatePerplexity(b, tokens, 16);
      QVERIFY(std::abs(p.meanNll - r.referenceMeanNll) < 1e-9 * std::max(1.0, p.meanNll));
    }
  }

  // A model run block by block (the reference, the model or both), each
  // block's linears present only while it runs, gives the window-by-window
  // figures to the bit: over every window at once, and in groups of windows.
  void streamedBlockByBlockGivesTheSameFigures() {
    QString error;
    const std::vector<lrq::test::TinyModel> tinies = allTinyModels(&error);
    QVERIFY2(!tinies.empty(), qPrintable(error));
    for (const auto &tiny : tinies) {
      std::map<std::string, at::Tensor> perturbed;
      for (const auto &[n, t] : tiny.tensors)
        perturbed[n] = t * (1 + 0.05 * at::randn(t.sizes()));
      DecoderModel model(tiny.config, ModelWeights::fromHfTensors(tiny.config, perturbed));
      DecoderModel reference(tiny.config, ModelWeights::fromHfTensors(tiny.config, tiny.tensors));
      const auto tokens = seededTokens(90, tiny.config.vocabSize, 5); // 5 windows of 16
      const CompareResult whole = compareToReference(model, reference, tokens, 16);
      QVERIFY2(whole.meanKl > 1e-4, qPrintable(QString::number(whole.meanKl)));
      const int64_t windowBytes = 16 * tiny.config.hiddenSize * 4;
      const int64_t blocks = tiny.config.numLayers;
      // {stream the reference, stream the model, windows per group}
      for (const auto &[ref, mod, group] :
           {std::make_tuple(true, false, 5), std::make_tuple(true, false, 2),
            std::make_tuple(false, true, 2), std::make_tuple(true, true, 2),
            std::make_tuple(true, true, 1)}) {
        const QString tag =
            QString("%1 ref %2 model %3 group %4").arg(tiny.name).arg(ref).arg(mod).arg(group);
        // Both streams count against the budget: groups of `group` windows.
        const int64_t budget = group * windowBytes * ((ref ? 1 : 0) + (mod ? 1 : 0));
        AsideLoader refAside(tiny.config, reference.weights(), budget);
        AsideLoader modelAside(tiny.config, model.weights(), budget);
        if (!ref)
          refAside.restore();
        if (!mod)
          modelAside.restore();
        const CompareResult streamed =
            compareToReference(model, reference, tokens, 16, nullptr, nullptr, 0,
                               ref ? &refAside : nullptr, mod ? &modelAside : nullptr);
        // Every block once per group, in order.
        std::vector<int64_t> each;
        for (int64_t g = 0; g < (5 + group - 1) / group; ++g)
          for (int64_t b = 0; b < blocks; ++b)
            each.push_back(b);
        QCOMPARE(refAside.loads, ref ? each : std::vector<int64_t>());
        QCOMPARE(modelAside.loads, mod ? each : std::vector<int64_t>());
        QVERIFY2(!refAside.othersPresent && !modelAside.othersPresent, qPrintable(tag));
        QCOMPARE(streamed.windows, whole.windows);
        QVERIFY2(streamed.meanKl == whole.meanKl,
                 qPrintable(tag + QString(": %1 vs %2")
                                      .arg(streamed.meanKl, 0, 'g', 17)
                                      .arg(whole.meanKl, 0, 'g', 17)));
        QVERIFY2(streamed.maxKl == whole.maxKl, qPrintable(tag));
        QVERIFY2(streamed.perplexity == whole.perplexity, qPrintable(tag));
        QVERIFY2(streamed.referencePerplexity == whole.referencePerplexity, qPrintable(tag));
        QVERIFY2(streamed.top1Agreement == whole.top1Agreement, qPrintable(tag));
        refAside.restore();
        modelAside.restore();
      }
    }
  }

  // Perplexity block by block, in groups of windows, with llama-perplexity's
  // scoring too: the window-by-window figures to the bit. A cancelled pass
  // leaves no block loaded.
  void perplexityBlockByBlockGivesTheSameFigures() {
    QString error;
    const std::vector<lrq::test::TinyModel> tinies = allTinyModels(&error);
    QVERIFY2(!tinies.empty(), qPrintable(error));
    for (const auto &tiny : tinies) {
      DecoderModel model(tiny.config, ModelWeights::fromHfTensors(tiny.config, tiny.tensors));
      const auto tokens = seededTokens(90, tiny.config.vocabSize, 7);
      const int64_t windowBytes = 16 * tiny.config.hiddenSize * 4;
      PerplexityScoring secondHalf;
      secondHalf.firstScored = 8;
      secondHalf.windowBos = 1;
      for (const PerplexityScoring &scoring : {PerplexityScoring{}, secondHalf}) {
        const PerplexityResult whole =
            evaluatePerplexity(model, tokens, 16, nullptr, nullptr, 0, scoring);
        for (int64_t group : {5, 2, 1}) {
          AsideLoader aside(tiny.config, model.weights(), group * windowBytes);
          const PerplexityResult streamed =
              evaluatePerplexity(model, tokens, 16, nullptr, nullptr, 0, scoring, &aside);
          QCOMPARE(int64_t(aside.loads.size()), tiny.config.numLayers * ((5 + group - 1) / group));
          QVERIFY(!aside.othersPresent);
          QVERIFY2(streamed.meanNll == whole.meanNll,
                   qPrintable(QString("%1 group %2: %3 vs %4")
                                  .arg(tiny.name)
                                  .arg(group)
                                  .arg(streamed.meanNll, 0, 'g', 17)
                                  .arg(whole.meanNll, 0, 'g', 17)));
          QCOMPARE(streamed.tokens, whole.tokens);
          aside.restore();
        }
      }
      // Cancelled during block 1's pass: nothing is left loaded.
      AsideLoader aside(tiny.config, model.weights(), 5 * windowBytes);
      CancelToken cancel;
      aside.onLoad = [&](int64_t b) {
        if (b == 1)
          cancel.cancel();
      };
      QVERIFY_THROWS_EXCEPTION(
          Cancelled, evaluatePerplexity(model, tokens, 16, nullptr, &cancel, 0, {}, &aside));
      QCOMPARE(int64_t(aside.loads.size()), int64_t(2));
      QVERIFY(aside.noneLoaded());
      aside.restore();
    }
  }

  void tinyModelAgainstNumpy() {
    QTemporaryDir dir;
    QString error;
    const QStringList names = lrq::test::writeTinyModels(dir.path(), &error);
    QVERIFY2(names.contains("llama_gqa"), qPrintable(error));
    const auto tiny = lrq::test::readTinyModel(dir.path(), "llama_gqa");
    const DecoderModel reference(tiny.config,
                                 ModelWeights::fromHfTensors(tiny.config, tiny.tensors));
    ModelWeights qw = ModelWeights::fromHfTensors(tiny.config, tiny.tensors);
    quant::QuantScheme scheme = quant::presetScheme("W3A16");
    quant::quantizeModelRtn(qw, tiny.config, scheme);
    const DecoderModel model(tiny.config, qw);

    // The quantized tensors for numpy, under the same config.
    std::map<std::string, at::Tensor> qt = tiny.tensors;
    for (size_t b = 0; b < qw.blocks.size(); ++b) {
      const std::string p = "model.layers." + std::to_string(b) + ".";
      const BlockWeights &blk = qw.blocks[b];
      qt[p + "self_attn.q_proj.weight"] = blk.q.weight;
      qt[p + "self_attn.k_proj.weight"] = blk.k.weight;
      qt[p + "self_attn.v_proj.weight"] = blk.v.weight;
      qt[p + "self_attn.o_proj.weight"] = blk.o.weight;
      qt[p + "mlp.gate_proj.weight"] = blk.gate.weight;
      qt[p + "mlp.up_proj.weight"] = blk.up.weight;
      qt[p + "mlp.down_proj.weight"] = blk.down.weight;
    }
    QFile jf(dir.path() + "/llama_gqa.json");
    QVERIFY(jf.open(QIODevice::ReadOnly));
    const QJsonObject config =
        QJsonDocument::fromJson(jf.readAll()).object().value("config").toObject();
    QVERIFY(writeRawModel(dir.path(), "quantized", config, qt));

    const int64_t seqLen = 24;
    const auto tokens = seededTokens(3 * seqLen + 7, tiny.config.vocabSize, 5);
    QJsonArray tj;
    for (int32_t t : tokens)
      tj.append(t);
    QFile tf(dir.path() + "/tokens.json");
    QVERIFY(tf.open(QIODevice::WriteOnly));
    tf.write(QJsonDocument(tj).toJson());
    tf.close();

    const CompareResult r = compareToReference(model, reference, tokens, seqLen);
    const QByteArray out =
        lrq::test::runReference("compare_reference.py",
                                {dir.path(), "quantized", "llama_gqa", dir.path() + "/tokens.json",
                                 QString::number(seqLen)},
                                &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    const QJsonObject ref = QJsonDocument::fromJson(out).object();
    qInfo().noquote() << QStringLiteral(
                             "tiny llama W3 RTN: KL %1 (numpy %2), max KL %3 (numpy %4), top-1 %5 "
                             "(numpy %6), ppl %7 vs reference %8")
                             .arg(r.meanKl, 0, 'g', 8)
                             .arg(ref.value("mean_kl").toDouble(), 0, 'g', 8)
                             .arg(r.maxKl, 0, 'g', 6)
                             .arg(ref.value("max_kl").toDouble(), 0, 'g', 6)
                             .arg(r.top1Agreement)
                             .arg(ref.value("top1").toDouble())
                             .arg(r.perplexity, 0, 'g', 7)
                             .arg(r.referencePerplexity, 0, 'g', 7);
    QCOMPARE(r.windows, int64_t(ref.value("windows").toInt()));
    QCOMPARE(r.tokens, int64_t(ref.value("tokens").toInt()));
    QVERIFY(r.meanKl > 1e-4); // W3 must visibly change the distribution
    QVERIFY2(std::abs(r.meanKl - ref.value("mean_kl").toDouble()) < 1e-5, "mean KL");
    QVERIFY2(std::abs(r.maxKl - ref.value("max_kl").toDouble()) < 1e-5, "max KL");
    // float32 here, float64 in numpy: a position whose two best logits are
    // within rounding may go either way, so one token of the count may differ.
    QVERIFY2(std::abs(r.top1Agreement - ref.value("top1").toDouble()) <=
                 1.0 / double(r.tokens) + 1e-12,
             "top-1");
    QVERIFY(std::abs(r.meanNll - ref.value("nll").toDouble()) < 1e-5);
    QVERIFY(std::abs(r.referenceMeanNll - ref.value("ref_nll").toDouble()) < 1e-5);
  }

  void rejectsBadInput() {
    QTemporaryDir dir;
    QString error;
    QVERIFY(!lrq::test::writeTinyModels(dir.path(), &error).isEmpty());
    const auto tiny = lrq::test::readTinyModel(dir.path(), "llama_gqa");
    const DecoderModel a(tiny.config, ModelWeights::fromHfTensors(tiny.config, tiny.tensors));
    QVERIFY_THROWS_EXCEPTION(Error, compareToReference(a, a, seededTokens(10, 8, 1), 16));
    QVERIFY_THROWS_EXCEPTION(Error, compareToReference(a, a, seededTokens(10, 8, 1), 1));
    const auto other = lrq::test::readTinyModel(dir.path(), "opt_pre");
    if (other.config.vocabSize != tiny.config.vocabSize) {
      const DecoderModel b(other.config, ModelWeights::fromHfTensors(other.config, other.tensors));
      QVERIFY_THROWS_EXCEPTION(Error, compareToReference(a, b, seededTokens(40, 8, 1), 16));
    }
    CancelToken cancel;
    cancel.cancel();
    QVERIFY_THROWS_EXCEPTION(
        Cancelled, compareToReference(a, a, seededTokens(40, 8, 1), 16, nullptr, &cancel));
  }

  void defaultModelRtn() {
    const LoadedModel m = loadModel(lrq::test::defaultModelPath());
    QVERIFY(m.tokenizer);
    const ModelWeights original = ModelWeights::fromHfTensors(m.config, m.tensors);
    const DecoderModel reference(m.config, original);
    const std::vector<int32_t> tokens = m.tokenizer->encode(defaultText().evaluation, false);
    const int64_t seqLen = 128, windows = 2;
    double previousKl = 0, previousTop1 = 1.0;
    for (const char *preset : {"W4A16", "W3A16"}) {
      ModelWeights qw = original; // RTN replaces the weights it quantizes
      quant::quantizeModelRtn(qw, m.config, quant::presetScheme(preset));
      const DecoderModel model(m.config, qw);
      const CompareResult r =
          compareToReference(model, reference, tokens, seqLen, nullptr, nullptr, windows);
      qInfo().noquote() << QStringLiteral("default model RTN %1 (per-channel asym), %2 windows x "
                                          "%3: mean KL %4, max KL %5, top-1 %6, ppl %7 vs "
                                          "reference %8, %9 s")
                               .arg(preset)
                               .arg(r.windows)
                               .arg(seqLen)
                               .arg(r.meanKl, 0, 'g', 5)
                               .arg(r.maxKl, 0, 'g', 5)
                               .arg(r.top1Agreement, 0, 'f', 4)
                               .arg(r.perplexity, 0, 'g', 6)
                               .arg(r.referencePerplexity, 0, 'g', 6)
                               .arg(r.seconds, 0, 'f', 2);
      QCOMPARE(r.windows, windows);
      QCOMPARE(r.tokens, windows * (seqLen - 1));
      QVERIFY(r.meanKl > 0);
      QVERIFY(r.top1Agreement < 1.0);
      QVERIFY(r.top1Agreement > 0.05); // far above chance (1 / 49152)
      QVERIFY(r.perplexity > r.referencePerplexity);
      // Fewer bits, further from the reference.
      QVERIFY(r.meanKl > previousKl);
      QVERIFY(r.top1Agreement < previousTop1);
      previousKl = r.meanKl;
      previousTop1 = r.top1Agreement;
      // The reference side equals plain perplexity on the same windows.
      if (std::string(preset) == "W4A16") {
        const PerplexityResult p =
            evaluatePerplexity(reference, tokens, seqLen, nullptr, nullptr, windows);
        QVERIFY(std::abs(p.perplexity - r.referencePerplexity) < 1e-6 * p.perplexity);
      }
    }
  }
};

QTEST_GUILESS_MAIN(TestCompareEval)
#include "test_compare_eval.moc"
