// GPTQ: the layer routine against the numpy reference
// (tests/reference/gptq_reference.py), GPTQ vs RTN output error on real layers
// of the default model, and the sequential method end to end.
#include <ATen/ATen.h>

#include <QElapsedTimer>
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/gptq.h"
#include "core/quant/grid.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"
#include "core/quant/transform_capture.h"
#include "decoder_test_models.h"
#include "tensor_files.h"
#include "test_support.h"

using namespace lrq;
using namespace lrq::quant;

namespace {

using lrq::test::readRaw;
using lrq::test::writeRaw;

GridSpec makeSpec(int bits, bool sym, Granularity g, int64_t group) {
  GridSpec s;
  s.bits = bits;
  s.symmetric = sym;
  s.granularity = g;
  s.groupSize = group;
  return s;
}

// ||X Wᵀ - X Ŵᵀ||² / N, directly from the inputs.
double outputError(const at::Tensor &x, const at::Tensor &w, const at::Tensor &what) {
  const at::Tensor d = at::mm(x.to(at::kDouble), (w.to(at::kDouble) - what.to(at::kDouble)).t());
  return d.square().sum().item<double>() / double(x.size(0));
}

struct Events : ProgressObserver {
  int started = 0, finished = 0;
  std::vector<double> initial, final;
  void blockStarted(int, int) override { ++started; }
  void blockFinished(int, double i, double f, double) override {
    ++finished;
    initial.push_back(i);
    final.push_back(f);
  }
};

} // namespace

class TestGptq : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;

private slots:
  void initTestCase() {
    QVERIFY(tmp_.isValid());
    at::set_num_threads(2);
  }

  // The same codes as the plain numpy GPTQ on a small random layer.
  void layerMatchesNumpy_data() {
    QTest::addColumn<int>("bits");
    QTest::addColumn<bool>("symmetric");
    QTest::addColumn<int>("granularity");
    QTest::addColumn<int>("group");
    QTest::addColumn<int>("block");
    QTest::addColumn<bool>("actOrder");
    QTest::newRow("W4 asym per-channel b32")
        << 4 << false << int(Granularity::PerChannel) << 0 << 32 << false;
    QTest::newRow("W3 sym per-channel b128 act-order")
        << 3 << true << int(Granularity::PerChannel) << 0 << 128 << true;
    QTest::newRow("W3 asym per-tensor b16")
        << 3 << false << int(Granularity::PerTensor) << 0 << 16 << false;
    QTest::newRow("W4 asym g32 b32")
        << 4 << false << int(Granularity::PerGroup) << 32 << 32 << false;
    // 96 = 40 + 40 + 16: ragged, and groups starting inside a block of 32.
    QTest::newRow("W3 asym g40 (ragged) b32")
        << 3 << false << int(Granularity::PerGroup) << 40 << 32 << false;
    QTest::newRow("W2 sym g40 (ragged) b128 act-order")
        << 2 << true << int(Granularity::PerGroup) << 40 << 128 << true;
  }
  void layerMatchesNumpy() {
    QFETCH(int, bits);
    QFETCH(bool, symmetric);
    QFETCH(int, granularity);
    QFETCH(int, group);
    QFETCH(int, block);
    QFETCH(bool, actOrder);
    const int64_t rows = 24, cols = 96, n = 300;
    at::manual_seed(100 + bits);
    const at::Tensor w = at::randn({rows, cols}) * 0.1;
    // Correlated inputs of uneven scales, one dead input.
    at::Tensor x = at::mm(at::randn({n, cols}), at::randn({cols, cols}) * 0.3 + at::eye(cols)) *
                   (at::rand({1, cols}) * 2 + 0.2);
    x.select(1, 5).zero_();
    x = x.contiguous();
    const QString wPath = tmp_.filePath("w.bin"), xPath = tmp_.filePath("x.bin"),
                  prefix = tmp_.filePath("gptq");
    writeRaw(wPath, w);
    writeRaw(xPath, x);
    QString error;
    const QByteArray out = lrq::test::runReference(
        "gptq_reference.py",
        {"gptq", wPath, xPath, prefix, QString::number(rows), QString::number(cols),
         QString::number(n), QString::number(bits), symmetric ? "1" : "0",
         granularityName(Granularity(granularity)), QString::number(group), QString::number(block),
         "0.01", actOrder ? "1" : "0"},
        &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    const QJsonObject ref = QJsonDocument::fromJson(out).object();
    QCOMPARE(ref.value("dead").toInt(), 1);
    const at::Tensor refCodes = readRaw(prefix + ".codes", at::kInt, {rows, cols});
    const at::Tensor refValues = readRaw(prefix + ".values", at::kDouble, {rows, cols});
    QVERIFY(refCodes.defined() && refValues.defined());

    const GridSpec spec = makeSpec(bits, symmetric, Granularity(granularity), group);
    GptqOptions options;
    options.blockSize = block;
    options.actOrder = actOrder;
    const GptqLayerResult r = gptqQuantizeLayer(w, gptqHessian(x), spec, options);
    const int64_t differ = (r.codes != refCodes).sum().item<int64_t>();
    QCOMPARE(differ, int64_t(0));
    QVERIFY(at::allclose(r.weight.to(at::kDouble), refValues, 1e-6, 1e-7));
    QVERIFY(r.codes.min().item<int>() >= spec.qmin() && r.codes.max().item<int>() <= spec.qmax());
    // The codes and per-element steps give Ŵ back; without act-order so do the grid params.
    QVERIFY(at::allclose((r.codes.to(at::kFloat) - r.columnZero) * r.columnScale, r.weight, 1e-6,
                         1e-7));
    if (!actOrder || Granularity(granularity) != Granularity::PerGroup) {
      QVERIFY(r.params.scale.defined());
      QVERIFY(at::allclose(dequantizeWeight(r.codes, r.params, spec), r.weight, 1e-6, 1e-7));
    }
    // The tensor-op inner loop (used on GPUs) gives the same codes.
    GptqOptions tensorOps = options;
    tensorOps.tensorOps = true;
    const GptqLayerResult t = gptqQuantizeLayer(w, gptqHessian(x), spec, tensorOps);
    QVERIFY(at::equal(t.codes, r.codes));
    QVERIFY(at::allclose(t.weight, r.weight, 1e-6, 1e-7));
    QVERIFY(std::abs(t.loss - r.loss) <= 1e-9 * r.loss);
    const double mine = outputError(x, w, r.weight);
    const double rtn = outputError(x, w, roundToNearest(w, spec));
    QVERIFY(std::abs(mine - ref.value("gptq_error").toDouble()) <= 1e-6 * mine);
    QVERIFY(std::abs(rtn - ref.value("rtn_error").toDouble()) <= 1e-6 * rtn);
    QVERIFY(std::abs(gptqOutputError(w, r.weight, gptqHessian(x)) - mine) <= 1e-6 * mine);
    QVERIFY(mine < rtn);
    qInfo().noquote() << QString("%1: output error GPTQ %2, RTN %3")
                             .arg(QTest::currentDataTag())
                             .arg(mine, 0, 'g', 4)
                             .arg(rtn, 0, 'g', 4);
  }

  void layerRejectsBadInput() {
    const at::Tensor w = at::randn({4, 8});
    const GridSpec spec = makeSpec(4, false, Granularity::PerChannel, 0);
    QVERIFY_THROWS_EXCEPTION(Error, gptqQuantizeLayer(w, at::eye(7), spec));
    GptqOptions bad;
    bad.blockSize = 0;
    QVERIFY_THROWS_EXCEPTION(Error, gptqQuantizeLayer(w, at::eye(8), spec, bad));
    // Not positive definite even with dampening.
    at::Tensor h = -at::eye(8, at::kDouble);
    QVERIFY_THROWS_EXCEPTION(Error, gptqQuantizeLayer(w, h, spec));
  }

  // Real layers of the default model on their calibration inputs: GPTQ's output
  // error is below RTN's, W4 and W3 per-channel (and W3 g128 with its ragged group).
  void beatsRtnOnDefaultModel() {
    const LoadedModel m = loadModel(lrq::test::defaultModelPath());
    DecoderModel model(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
    const TextSplit text = defaultText();
    const std::vector<int32_t> tokens =
        m.tokenizer->encode(text.calibration.substr(0, 30000), false);
    const CalibrationSet calib = makeCalibrationSet(tokens, 8, 256, 3, "");
    const int64_t blockIndex = 3;
    BlockWeights &blk = model.weights().blocks[size_t(blockIndex)];
    std::vector<at::Tensor> qInputs, downInputs;
    {
      at::NoGradGuard g;
      ScopedCapture cq(blk.q, [&](const at::Tensor &x) { qInputs.push_back(x.clone()); });
      ScopedCapture cd(blk.down, [&](const at::Tensor &x) { downInputs.push_back(x.clone()); });
      at::Tensor h = model.embed(calib.tokens);
      for (int64_t b = 0; b <= blockIndex; ++b)
        h = model.runBlock(b, h);
    }
    struct Case {
      const char *layer;
      at::Tensor weight, x;
    };
    const std::vector<Case> cases = {{"q_proj", blk.q.weight, at::cat(qInputs, 0)},
                                     {"down_proj", blk.down.weight, at::cat(downInputs, 0)}};
    for (const Case &c : cases) {
      QCOMPARE(c.x.size(0), int64_t(8 * 256));
      const at::Tensor h = gptqHessian(c.x);
      for (const GridSpec &spec : {makeSpec(4, false, Granularity::PerChannel, 0),
                                   makeSpec(3, false, Granularity::PerChannel, 0),
                                   makeSpec(3, false, Granularity::PerGroup, 128)}) {
        QElapsedTimer timer;
        timer.start();
        const GptqLayerResult r = gptqQuantizeLayer(c.weight, h, spec);
        const qint64 ms = timer.elapsed();
        const double eG = outputError(c.x, c.weight, r.weight);
        const double eR = outputError(c.x, c.weight, roundToNearest(c.weight, spec));
        QVERIFY(std::isfinite(eG));
        QVERIFY2(eG < eR, qPrintable(QString("%1 %2").arg(c.layer).arg(spec.describe().c_str())));
        qInfo().noquote() << QString("block %1 %2 [%3x%4] %5: ||XWᵀ - XŴᵀ||²/N GPTQ %6, RTN %7 "
                                     "(%8 %), %9 ms")
                                 .arg(blockIndex)
                                 .arg(c.layer)
                                 .arg(c.weight.size(0))
                                 .arg(c.weight.size(1))
                                 .arg(QString::fromStdString(spec.describe()))
                                 .arg(eG, 0, 'g', 4)
                                 .arg(eR, 0, 'g', 4)
                                 .arg(100.0 * eG / eR, 0, 'f', 1)
                                 .arg(ms);
      }
    }

    // The method on the default model's first blocks: time per block.
    QuantScheme scheme = presetScheme("W4A16");
    scheme.layers.blocks = {0, 1};
    auto method = createMethod("gptq");
    const CalibrationSet calib16 = makeCalibrationSet(tokens, 16, 256, 5, "");
    Events events;
    MethodContext ctx{model, scheme,  calib16, mergeHyperparameters(*method, nullptr),
                      0,     &events, nullptr, ""};
    QElapsedTimer timer;
    timer.start();
    const MethodReport rep = method->run(ctx);
    QCOMPARE(int(rep.layers.size()), 14);
    QCOMPARE(events.finished, 2);
    for (int i = 0; i < 2; ++i)
      QVERIFY(events.final[size_t(i)] < events.initial[size_t(i)]);
    qInfo().noquote() << QString("gptq W4A16 on blocks 0-1 of the default model (16 x 256 "
                                 "calibration tokens): %1 s and %2 s per block, output error "
                                 "%3 vs RTN %4 (block 0)")
                             .arg(rep.extra["block_seconds"][0].get<double>(), 0, 'f', 2)
                             .arg(rep.extra["block_seconds"][1].get<double>(), 0, 'f', 2)
                             .arg(events.final[0], 0, 'g', 4)
                             .arg(events.initial[0], 0, 'g', 4);
  }

  // The method end to end on a 2-block tiny model.
  void methodOnTinyModel() {
    QString error;
    const QString dir = tmp_.filePath("tiny");
    QVERIFY2(!lrq::test::writeTinyModels(dir, &error).isEmpty(), qPrintable(error));
    const lrq::test::TinyModel tiny = lrq::test::readTinyModel(dir, "llama_gqa");
    DecoderModel model(tiny.config, ModelWeights::fromHfTensors(tiny.config, tiny.tensors));
    const ModelWeights original = ModelWeights::fromHfTensors(tiny.config, tiny.tensors);
    at::manual_seed(3);
    const CalibrationSet calib{at::randint(0, tiny.config.vocabSize, {6, 24}, at::kLong), ""};
    QuantScheme scheme = presetScheme("W3A16");
    auto method = createMethod("gptq");
    QVERIFY(QString::fromStdString(method->help()).contains("GPTQ"));
    const nlohmann::json hyper =
        mergeHyperparameters(*method, nlohmann::json{{"block_size", 16}, {"act_order", true}});
    QCOMPARE(hyper["damp"].get<double>(), 0.01);
    QVERIFY_THROWS_EXCEPTION(Error, mergeHyperparameters(*method, nlohmann::json{{"rank", 3}}));

    // Block 0's q_proj sees embeddings only: the method's result equals the
    // layer routine on the Hessian of those inputs.
    at::Tensor x0;
    {
      at::NoGradGuard g;
      x0 = model.embed(calib.tokens);
      x0 = x0.reshape({-1, x0.size(-1)});
      const BlockWeights &b0 = model.weights().blocks[0];
      const at::Tensor eps = at::rsqrt(x0.square().mean({-1}, true) + tiny.config.normEps);
      x0 = x0 * eps * b0.attnNorm.weight;
    }
    GptqOptions options;
    options.blockSize = 16;
    options.actOrder = true;
    const GptqLayerResult direct =
        gptqQuantizeLayer(original.blocks[0].q.weight, gptqHessian(x0), scheme.weight, options);

    Events events;
    MethodContext ctx{model, scheme, calib, hyper, 0, &events, nullptr, ""};
    const MethodReport rep = method->run(ctx);
    QCOMPARE(int(rep.layers.size()), 14);
    QCOMPARE(events.started, 2);
    QCOMPARE(events.finished, 2);
    QVERIFY(at::allclose(model.weights().blocks[0].q.weight, direct.weight, 1e-5, 1e-6));
    for (int64_t b = 0; b < 2; ++b)
      for (auto &[role, linear] : blockLinears(tiny.config, model.weights().blocks[size_t(b)])) {
        QVERIFY2(linear->inputTransform == nullptr, role.c_str()); // captures removed
        QVERIFY(std::get<0>(at::_unique(linear->weight[0])).size(0) <= 8);
      }
    QVERIFY(events.final[0] < events.initial[0] && events.final[1] < events.initial[1]);
    at::NoGradGuard g;
    const at::Tensor logits = model.forward(tiny.tokens);
    QVERIFY(at::isfinite(logits).all().item<bool>());
    QVERIFY(!at::allclose(logits, tiny.logits, 1e-3, 1e-3));

    // Cancel between blocks.
    DecoderModel again(tiny.config, ModelWeights::fromHfTensors(tiny.config, tiny.tensors));
    CancelToken cancel;
    cancel.cancel();
    MethodContext ctx2{again, scheme, calib, hyper, 0, nullptr, &cancel, ""};
    QVERIFY_THROWS_EXCEPTION(Cancelled, method->run(ctx2));
  }
};

QTEST_GUILESS_MAIN(TestGptq)
#include "test_gptq.moc"
