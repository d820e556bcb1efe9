// Decoder forward passes against an independent numpy implementation
// (tests/reference/decoder_reference.py): tiny seeded LLaMA/OPT models and the
// real SmolLM2-135M GGUF, plus KV-cache consistency and weight-loading errors.
#include <ATen/ATen.h>

#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include "core/common/error.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "decoder_test_models.h"
#include "test_support.h"

using namespace lrq;

namespace {

double maxAbsDiff(const at::Tensor &a, const at::Tensor &b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

} // namespace

class TestDecoder : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  QStringList names_;

  test::TinyModel tiny(const QString &name) { return test::readTinyModel(dir_.path(), name); }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    QString error;
    names_ = test::writeTinyModels(dir_.path(), &error);
    QVERIFY2(!names_.isEmpty(), qPrintable(error));
    QCOMPARE(names_.size(), 4);
  }

  void tinyModelsMatchNumpy_data() {
    QTest::addColumn<QString>("name");
    for (const char *n : {"llama_gqa", "llama_bias", "opt_pre", "opt_post_proj"})
      QTest::newRow(n) << QString(n);
  }

  void tinyModelsMatchNumpy() {
    QFETCH(QString, name);
    test::TinyModel m = tiny(name);
    QVERIFY(m.logits.defined());
    DecoderModel model(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
    c10::InferenceMode guard;
    const at::Tensor logits = model.forward(m.tokens);
    QCOMPARE(logits.sizes(), m.logits.sizes());
    const double diff = maxAbsDiff(logits, m.logits);
    const double scale = m.logits.abs().max().item<double>();
    qInfo("%s: max |ours - numpy| = %.3g (logits up to %.3g)", qPrintable(name), diff, scale);
    QVERIFY(scale > 0.5); // the reference is not degenerate
    QVERIFY2(diff < 1e-4, qPrintable(QString::number(diff)));
  }

  // 300 positions: beyond the tabulated rotary range (max_positions 64) and
  // several attention chunks, the last one partial.
  void longSequenceMatchesNumpy_data() {
    QTest::addColumn<QString>("name");
    QTest::newRow("llama_gqa") << QString("llama_gqa");
    QTest::newRow("llama_bias") << QString("llama_bias");
  }
  void longSequenceMatchesNumpy() {
    QFETCH(QString, name);
    test::TinyModel m = tiny(name);
    QVERIFY(m.longLogits.defined());
    QCOMPARE(m.longTokens.size(1), int64_t(300));
    DecoderModel model(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
    c10::InferenceMode guard;
    const at::Tensor logits = model.forward(m.longTokens);
    const double diff = maxAbsDiff(logits, m.longLogits);
    const double scale = m.longLogits.abs().max().item<double>();
    qInfo("%s, 300 tokens: max |ours - numpy| = %.3g (logits up to %.3g)", qPrintable(name), diff,
          scale);
    QVERIFY2(diff < 1e-4, qPrintable(QString::number(diff)));

    // The same through the KV cache in uneven pieces (prefix of two chunks,
    // one token, then a piece with a cached prefix spanning two chunks).
    KvCache cache(model.numBlocks());
    std::vector<at::Tensor> parts;
    int64_t pos = 0;
    for (int64_t n : {150, 1, 140, 9}) {
      parts.push_back(model.forward(m.longTokens.narrow(1, pos, n), &cache));
      pos += n;
    }
    QCOMPARE(pos, int64_t(300));
    const double cached = maxAbsDiff(at::cat(parts, 1), logits);
    QVERIFY2(cached < 1e-6 * std::max(1.0, scale), qPrintable(QString::number(cached)));
  }

  // Gradients must flow through a block (quantizers train through it), and the
  // autograd-friendly path must compute the same values as the in-place one.
  void blockWithGradientsMatchesInference_data() { tinyModelsMatchNumpy_data(); }
  void blockWithGradientsMatchesInference() {
    QFETCH(QString, name);
    test::TinyModel m = tiny(name);
    DecoderModel model(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
    at::Tensor hidden, fast;
    {
      c10::InferenceMode guard;
      hidden = model.embed(m.tokens).clone();
      fast = model.runBlock(1, hidden);
    }
    at::Tensor &w = model.weights().blocks[1].q.weight;
    w = w.clone().set_requires_grad(true);
    const at::Tensor slow = model.runBlock(1, hidden.clone());
    QVERIFY(slow.requires_grad());
    QVERIFY(maxAbsDiff(slow.detach(), fast) < 1e-5);
    slow.square().sum().backward();
    QVERIFY(w.grad().defined());
    QVERIFY(w.grad().abs().sum().item<double>() > 0);
  }

  // Incremental decoding with a KV cache (a prefix, then single tokens and a
  // chunk) gives the logits of one full forward.
  void kvCacheMatchesFullForward_data() { tinyModelsMatchNumpy_data(); }
  void kvCacheMatchesFullForward() {
    QFETCH(QString, name);
    test::TinyModel m = tiny(name);
    DecoderModel model(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
    c10::InferenceMode guard;
    const at::Tensor full = model.forward(m.tokens);
    const int64_t T = m.tokens.size(1);
    KvCache cache(model.numBlocks());
    std::vector<at::Tensor> parts;
    const std::vector<int64_t> steps = {5, 1, 1, 3, 1};
    int64_t pos = 0;
    for (int64_t n : steps) {
      parts.push_back(model.forward(m.tokens.narrow(1, pos, n), &cache));
      pos += n;
      QCOMPARE(cache.length(), pos);
    }
    parts.push_back(model.forward(m.tokens.narrow(1, pos, T - pos), &cache));
    const at::Tensor incremental = at::cat(parts, 1);
    QCOMPARE(incremental.sizes(), full.sizes());
    // Summation orders differ between the two paths: allow a few float32 ulps
    // of the largest logit.
    const double diff = maxAbsDiff(incremental, full);
    const double scale = std::max(1.0, full.abs().max().item<double>());
    QVERIFY2(diff < 1e-6 * scale, qPrintable(QString::number(diff)));
    cache.clear();
    QCOMPARE(cache.length(), int64_t(0));
  }

  void tiedHeadSharesEmbedding() {
    test::TinyModel tied = tiny("llama_bias");
    ModelWeights w = ModelWeights::fromHfTensors(tied.config, tied.tensors);
    QVERIFY(w.lmHead.is_same(w.tokenEmbedding));
    QVERIFY(w.blocks[0].q.bias.defined());
    QVERIFY(!w.blocks[0].o.bias.defined());
    DecoderModel model(tied.config, std::move(w));
    model.to(at::kCPU, at::kDouble);
    QVERIFY(model.weights().lmHead.is_same(model.weights().tokenEmbedding));
    test::TinyModel untied = tiny("llama_gqa");
    ModelWeights u = ModelWeights::fromHfTensors(untied.config, untied.tensors);
    QVERIFY(!u.lmHead.is_same(u.tokenEmbedding));
  }

  // In float64 the model agrees with numpy far more tightly, which shows the
  // float32 differences above are rounding, not a convention mismatch.
  void float64ForwardIsTight() {
    test::TinyModel m = tiny("llama_gqa");
    DecoderModel model(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
    model.to(at::kCPU, at::kDouble);
    c10::InferenceMode guard;
    const at::Tensor logits = model.forward(m.tokens);
    QCOMPARE(logits.scalar_type(), at::kDouble);
    // The reference logits were stored in float32: half an ulp at |x| < 8.
    QVERIFY(maxAbsDiff(logits, m.logits) < 1e-6);
  }

  void blockLinearRoles() {
    test::TinyModel l = tiny("llama_gqa"), o = tiny("opt_pre");
    ModelWeights lw = ModelWeights::fromHfTensors(l.config, l.tensors);
    ModelWeights ow = ModelWeights::fromHfTensors(o.config, o.tensors);
    auto ll = blockLinears(l.config, lw.blocks[0]);
    auto ol = blockLinears(o.config, ow.blocks[1]);
    QCOMPARE(ll.size(), size_t(7));
    QCOMPARE(ol.size(), size_t(6));
    QCOMPARE(QString::fromStdString(ll[4].first), QString("gate_proj"));
    QVERIFY(ll[4].second == &lw.blocks[0].gate);
    QCOMPARE(QString::fromStdString(ol[3].first), QString("out_proj"));
    QCOMPARE(QString::fromStdString(ol[4].first), QString("fc1"));
    QVERIFY(ol[5].second->weight.is_same(ow.blocks[1].down.weight));
    QVERIFY(ol[5].second->weight.is_same(o.tensors.at("model.decoder.layers.1.fc2.weight")));
  }

  void missingOrMisshapenTensorIsNamed() {
    test::TinyModel m = tiny("llama_gqa");
    const std::string victim = "model.layers.1.mlp.up_proj.weight";
    auto tensors = m.tensors;
    tensors.erase(victim);
    try {
      ModelWeights::fromHfTensors(m.config, tensors);
      QFAIL("missing tensor accepted");
    } catch (const Error &e) {
      QVERIFY2(QString(e.what()).contains(QString::fromStdString(victim)), e.what());
    }
    tensors = m.tensors;
    tensors[victim] = at::zeros({96, 63});
    try {
      ModelWeights::fromHfTensors(m.config, tensors);
      QFAIL("wrong shape accepted");
    } catch (const Error &e) {
      const QString msg(e.what());
      QVERIFY2(msg.contains(QString::fromStdString(victim)) && msg.contains("[96, 63]") &&
                   msg.contains("[96, 64]"),
               e.what());
    }
    test::TinyModel o = tiny("opt_pre");
    tensors = o.tensors;
    tensors.erase("model.decoder.embed_positions.weight");
    QVERIFY_THROWS_EXCEPTION(Error, ModelWeights::fromHfTensors(o.config, tensors));
  }

  void optPositionsRunOut() {
    test::TinyModel m = tiny("opt_pre");
    DecoderModel model(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
    c10::InferenceMode guard;
    const at::Tensor ids = at::zeros({1, m.config.maxPositions + 1}, at::kLong);
    QVERIFY_THROWS_EXCEPTION(Error, model.forward(ids));
    QCOMPARE(model.forward(ids.narrow(1, 0, m.config.maxPositions)).size(1), m.config.maxPositions);
  }

  // The real SmolLM2-135M (Q4_1 GGUF) through lrq::loadModel against the numpy
  // forward that dequantizes with the gguf package and un-permutes q/k itself.
  void realModelMatchesNumpy() {
    const std::string path = test::defaultModelPath();
    QTemporaryDir tmp;
    const QString out = tmp.filePath("logits.bin");
    QString error;
    const QByteArray json = test::runReference(
        "decoder_reference.py", {"gguf-logits", QString::fromStdString(path), out, "48"}, &error);
    QVERIFY2(!json.isEmpty(), qPrintable(error));
    const QJsonObject meta = QJsonDocument::fromJson(json).object();
    std::vector<int64_t> ids;
    for (const auto &v : meta.value("tokens").toArray())
      ids.push_back(v.toInteger());
    QCOMPARE(ids.size(), size_t(48));
    QFile f(out);
    QVERIFY(f.open(QIODevice::ReadOnly));
    const QByteArray blob = f.readAll();

    LoadedModel loaded = loadModel(path);
    const ModelConfig cfg = loaded.config;
    QCOMPARE(cfg.numLayers, int64_t(30));
    QCOMPARE(cfg.numKvHeads, int64_t(3));
    DecoderModel model(cfg, ModelWeights::fromHfTensors(cfg, loaded.tensors));
    loaded.tensors.clear();
    QVERIFY(model.weights().lmHead.is_same(model.weights().tokenEmbedding));

    const int64_t V = cfg.vocabSize;
    QCOMPARE(int64_t(blob.size()), int64_t(48 * V * 4));
    const at::Tensor ref =
        at::from_blob(const_cast<char *>(blob.constData()), {48, V}, at::kFloat).clone();
    c10::InferenceMode guard;
    const at::Tensor logits = model.forward(at::tensor(ids, at::kLong).view({1, -1}))[0];
    const double diff = maxAbsDiff(logits, ref);
    const double scale = ref.abs().max().item<double>();
    const at::Tensor same = logits.argmax(-1).eq(ref.argmax(-1));
    const double agree = same.to(at::kDouble).mean().item<double>();
    // Top-1 is only defined up to the logits' tolerance: where numpy's two best
    // logits are closer than 2e-3, float32 rounding on another CPU (or thread
    // count) may pick the other one.
    const at::Tensor top2 = std::get<0>(ref.topk(2, -1));
    const at::Tensor decided = (top2.select(1, 0) - top2.select(1, 1)) > 2e-3;
    qInfo("SmolLM2-135M: max |ours - numpy| = %.3g over 48x%lld logits (max |logit| %.3g), "
          "top-1 agreement %.3f (%lld of 48 positions with a top-2 margin over 2e-3)",
          diff, static_cast<long long>(V), scale, agree,
          static_cast<long long>(decided.sum().item<int64_t>()));
    // float32 through 30 blocks vs float64 is ~1e-4 of rounding; a wrong
    // convention (rotary layout, GQA grouping, norm) gives differences of O(1).
    QVERIFY2(diff < 1e-3, qPrintable(QString::number(diff)));
    QVERIFY(decided.sum().item<int64_t>() >= 40);
    QVERIFY(same.masked_select(decided).all().item<bool>());
  }
};

QTEST_GUILESS_MAIN(TestDecoder)
#include "test_decoder.moc"
