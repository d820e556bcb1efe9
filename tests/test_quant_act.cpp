// Activation quantizers installed on models (against the numpy forward in
// tests/reference/quant_act_reference.py) and SmoothQuant (identity in full
// precision, statistics against numpy, scales by hand), with W8A8 perplexity
// figures on the default model.
#include <ATen/ATen.h>

#include <QElapsedTimer>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/eval/perplexity.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/activation_install.h"
#include "core/quant/method.h"
#include "core/quant/rtn.h"
#include "core/quant/scheme.h"
#include "core/quant/smoothquant.h"
#include "decoder_test_models.h"
#include "test_support.h"

using namespace lrq;
using namespace lrq::quant;

namespace {

at::Tensor readFloats(const QString &path, std::vector<int64_t> shape) {
  QFile f(path);
  if (!f.open(QIODevice::ReadOnly))
    return {};
  const QByteArray bytes = f.readAll();
  at::Tensor t = at::empty(shape, at::kFloat);
  if (qint64(t.numel() * 4) != bytes.size())
    return {};
  std::memcpy(t.data_ptr(), bytes.constData(), size_t(bytes.size()));
  return t;
}

QJsonObject runRef(const QStringList &args) {
  QString error;
  const QByteArray out = lrq::test::runReference("quant_act_reference.py", args, &error);
  if (out.isEmpty())
    qWarning().noquote() << error;
  return QJsonDocument::fromJson(out).object();
}

double rms(const at::Tensor &t) {
  return t.to(at::kDouble).square().mean().sqrt().item<double>();
}

std::unique_ptr<DecoderModel> tinyDecoder(const lrq::test::TinyModel &m) {
  return std::make_unique<DecoderModel>(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
}

} // namespace

class TestQuantAct : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  QString tinyDir_;
  // The default model, loaded once.
  std::unique_ptr<LoadedModel> loaded_;
  std::vector<int32_t> calibTokens_, evalTokens_;

  std::unique_ptr<DecoderModel> defaultDecoder() {
    return std::make_unique<DecoderModel>(
        loaded_->config, ModelWeights::fromHfTensors(loaded_->config, loaded_->tensors));
  }

private slots:
  void initTestCase() {
    QVERIFY(tmp_.isValid());
    at::set_num_threads(2);
    tinyDir_ = tmp_.filePath("tiny");
    QString error;
    const QStringList names = lrq::test::writeTinyModels(tinyDir_, &error);
    QVERIFY2(!names.isEmpty(), qPrintable(error));
    loaded_ = std::make_unique<LoadedModel>(loadModel(lrq::test::defaultModelPath()));
    QVERIFY(loaded_->tokenizer);
    const TextSplit text = defaultText();
    calibTokens_ = loaded_->tokenizer->encode(text.calibration.substr(0, 30000), false);
    evalTokens_ = loaded_->tokenizer->encode(text.evaluation.substr(0, 12000), false);
    const int64_t big = qEnvironmentVariableIntValue("LRQ_QA_TOKENS");
    seqLen_ = big > 0 ? big : 128;
    windows_ = big > 0 ? 8 : 4;
    calib_ = makeCalibrationSet(calibTokens_, windows_, seqLen_, 7, "default text");
  }

  // Installed transforms change the logits exactly as numpy's fake quantization
  // does (up to float32 vs float64 noise that may flip a rounding here and there).
  void transformsMatchNumpy_data() {
    QTest::addColumn<QString>("model");
    QTest::addColumn<QString>("mode");
    QTest::addColumn<int>("bits");
    QTest::addColumn<bool>("kv8");
    for (const char *model : {"llama_gqa", "llama_bias"}) {
      QTest::newRow(qPrintable(QString("%1 A4 per-token").arg(model)))
          << model << "per-token-dynamic" << 4 << false;
      QTest::newRow(qPrintable(QString("%1 A8 per-token KV8").arg(model)))
          << model << "per-token-dynamic" << 8 << true;
      QTest::newRow(qPrintable(QString("%1 A4 static").arg(model)))
          << model << "per-tensor-static" << 4 << false;
      QTest::newRow(qPrintable(QString("%1 A6 static KV8").arg(model)))
          << model << "per-tensor-static" << 6 << true;
      QTest::newRow(qPrintable(QString("%1 KV8 only").arg(model))) << model << "none" << 8 << true;
    }
  }
  void transformsMatchNumpy() {
    QFETCH(QString, model);
    QFETCH(QString, mode);
    QFETCH(int, bits);
    QFETCH(bool, kv8);
    const lrq::test::TinyModel tiny = lrq::test::readTinyModel(tinyDir_, model);
    QVERIFY(tiny.logits.defined());
    const QString out = tmp_.filePath("act_logits.bin");
    const QJsonObject ref =
        runRef({"forward", tinyDir_, model, mode, QString::number(bits), kv8 ? "1" : "0", out});
    QVERIFY(!ref.isEmpty());
    const at::Tensor refQ = readFloats(out, tiny.logits.sizes().vec());
    QVERIFY(refQ.defined());

    auto decoder = tinyDecoder(tiny);
    QuantScheme scheme;
    QVERIFY(parseActivationMode(mode.toStdString(), &scheme.activation.mode));
    scheme.activation.bits = bits;
    scheme.kv8 = kv8;
    CalibrationSet calib{tiny.tokens, "tiny tokens"};
    c10::InferenceMode guard;
    const at::Tensor fp = decoder->forward(tiny.tokens);
    QVERIFY(at::allclose(fp, tiny.logits, 1e-4, 1e-4));
    const ActivationInstallReport rep =
        installActivationQuantizers(*decoder, scheme, calib, nullptr, nullptr, 1);
    const int64_t linears = tiny.config.numLayers * 7;
    QCOMPARE(rep.inputTransforms, mode == "none" ? int64_t(0) : linears);
    QCOMPARE(rep.outputTransforms, kv8 ? tiny.config.numLayers * 2 : int64_t(0));
    const at::Tensor ours = decoder->forward(tiny.tokens);

    // Static steps against numpy's.
    const QJsonArray steps = ref.value("steps").toArray();
    QCOMPARE(int64_t(steps.size()), int64_t(rep.staticSteps.size()));
    for (int i = 0; i < steps.size(); ++i) {
      const QJsonArray s = steps[i].toArray();
      const auto &mine = rep.staticSteps[size_t(i)];
      QCOMPARE(mine.block, int64_t(s[0].toInt()));
      QCOMPARE(QString::fromStdString(mine.layer), s[1].toString());
      QVERIFY2(std::abs(mine.scale - s[2].toDouble()) <= 1e-5 * s[2].toDouble(),
               qPrintable(QString("%1 vs %2").arg(mine.scale).arg(s[2].toDouble())));
      // A rounded offset from a float32 step (numpy: float64) may move by one.
      QVERIFY2(std::abs(mine.zeroPoint - s[3].toDouble()) <= 1.0,
               qPrintable(QString("%1 vs %2").arg(mine.zeroPoint).arg(s[3].toDouble())));
    }

    const double effect = rms(refQ - tiny.logits);
    const double mismatch = rms(ours - refQ);
    qInfo().noquote() << QString("%1: rms logit change by quantization %2 (ours %3), "
                                 "rms difference to numpy %4")
                             .arg(QTest::currentDataTag())
                             .arg(effect, 0, 'g', 4)
                             .arg(rms(ours - fp), 0, 'g', 4)
                             .arg(mismatch, 0, 'g', 3);
    QVERIFY(effect > 1e-4);
    QVERIFY2(mismatch < 0.02 * effect, "quantized logits differ from numpy");

    // Removing them restores the full-precision model exactly.
    removeActivationQuantizers(*decoder);
    QVERIFY(at::equal(decoder->forward(tiny.tokens), fp));
  }

  void installRejectsBadInput() {
    const lrq::test::TinyModel tiny = lrq::test::readTinyModel(tinyDir_, "llama_gqa");
    auto decoder = tinyDecoder(tiny);
    QuantScheme scheme;
    scheme.activation.mode = ActivationMode::PerTensorStatic;
    QVERIFY_THROWS_EXCEPTION(Error, installActivationQuantizers(*decoder, scheme, {}));
    scheme.layers.blocks = {5};
    QVERIFY_THROWS_EXCEPTION(
        Error, installActivationQuantizers(*decoder, scheme, CalibrationSet{tiny.tokens, ""}));
    // Selection: only block 1's o_proj.
    scheme.layers.blocks = {1};
    scheme.layers.linears = {"o_proj"};
    CancelToken cancel;
    const ActivationInstallReport r =
        installActivationQuantizers(*decoder, scheme, CalibrationSet{tiny.tokens, ""});
    QCOMPARE(r.inputTransforms, int64_t(1));
    QVERIFY(decoder->weights().blocks[1].o.inputTransform);
    QVERIFY(!decoder->weights().blocks[0].o.inputTransform);
    QVERIFY(!decoder->weights().blocks[1].q.inputTransform);
    QVERIFY(QString::fromStdString(decoder->weights().blocks[1].o.inputTransform->describe())
                .startsWith("A8 per-tensor-static s="));
    cancel.cancel();
    QVERIFY_THROWS_EXCEPTION(Cancelled, installActivationQuantizers(*decoder, scheme,
                                                                    CalibrationSet{tiny.tokens, ""},
                                                                    nullptr, &cancel));
  }

  // SmoothQuant's statistics against numpy, its scales by hand, and the
  // identity in full precision, on a tiny model.
  void smoothQuantTiny() {
    const lrq::test::TinyModel tiny = lrq::test::readTinyModel(tinyDir_, "llama_bias");
    auto decoder = tinyDecoder(tiny);
    const CalibrationSet calib{tiny.tokens, ""};
    const QString out = tmp_.filePath("normmax.bin");
    QVERIFY(!runRef({"normmax", tinyDir_, "llama_bias", out}).isEmpty());
    const int64_t L = tiny.config.numLayers, hidden = tiny.config.hiddenSize;
    const at::Tensor ref = readFloats(out, {L, 2, hidden});
    QVERIFY(ref.defined());
    const std::vector<NormInputMax> stats = collectNormInputAbsMax(*decoder, calib, 1);
    QCOMPARE(int64_t(stats.size()), L);
    for (int64_t b = 0; b < L; ++b) {
      QVERIFY(at::allclose(stats[size_t(b)].attention, ref[b][0], 1e-5, 1e-6));
      QVERIFY(at::allclose(stats[size_t(b)].mlp, ref[b][1], 1e-5, 1e-6));
    }

    const ModelWeights before = ModelWeights::fromHfTensors(tiny.config, tiny.tensors);
    at::Tensor fp;
    {
      at::NoGradGuard g;
      fp = decoder->forward(tiny.tokens);
    }
    const double alpha = 0.6;
    const SmoothQuantReport rep = applySmoothQuant(*decoder, calib, alpha);
    QCOMPARE(int64_t(rep.groups.size()), 2 * L);
    for (int64_t b = 0; b < L; ++b) {
      const BlockWeights &o = before.blocks[size_t(b)];
      const BlockWeights &n = decoder->weights().blocks[size_t(b)];
      // By hand: s_j = max|X_j|^a / max_j(|Wq|,|Wk|,|Wv|)^(1-a).
      const at::Tensor wmax =
          at::maximum(at::maximum(o.q.weight.abs().amax(0), o.k.weight.abs().amax(0)),
                      o.v.weight.abs().amax(0))
              .to(at::kDouble)
              .clamp_min(1e-5);
      const at::Tensor s =
          (ref[b][0].to(at::kDouble).pow(alpha) / wmax.pow(1 - alpha)).clamp_min(1e-5);
      QVERIFY(at::allclose((o.attnNorm.weight / n.attnNorm.weight).to(at::kDouble), s, 1e-4));
      QVERIFY(at::allclose((n.k.weight / o.k.weight).to(at::kDouble),
                           s.unsqueeze(0).expand_as(o.k.weight), 1e-4));
      const at::Tensor wmax2 =
          at::maximum(o.gate.weight.abs().amax(0), o.up.weight.abs().amax(0)).to(at::kDouble);
      const at::Tensor s2 = (ref[b][1].to(at::kDouble).pow(alpha) / wmax2.pow(1 - alpha));
      QVERIFY(at::allclose((o.mlpNorm.weight / n.mlpNorm.weight).to(at::kDouble), s2, 1e-4));
      QVERIFY(at::equal(n.o.weight, o.o.weight) && at::equal(n.down.weight, o.down.weight));
    }
    at::NoGradGuard g;
    const at::Tensor smoothed = decoder->forward(tiny.tokens);
    QVERIFY(at::allclose(smoothed, fp, 1e-4, 1e-4));
    QVERIFY_THROWS_EXCEPTION(Error, applySmoothQuant(*decoder, calib, 1.5));
  }

  // SmoothQuant on all groups (norm-fed and the linear-fed pairs v -> o,
  // up -> down) with a random alpha: the identity in full precision (GQA,
  // biases, OPT with ReLU), the pairs' scales against numpy, and the
  // re-measured maxima of the smoothed inputs equal to max|X| / s.
  void smoothQuantAllPairsTiny_data() {
    QTest::addColumn<QString>("model");
    QTest::addColumn<double>("alpha");
    std::mt19937 rng(20251123);
    std::uniform_real_distribution<double> pick(0.15, 0.85);
    for (const char *model : {"llama_gqa", "llama_bias", "opt_pre"})
      QTest::newRow(model) << model << pick(rng);
  }
  void smoothQuantAllPairsTiny() {
    QFETCH(QString, model);
    QFETCH(double, alpha);
    const lrq::test::TinyModel tiny = lrq::test::readTinyModel(tinyDir_, model);
    auto decoder = tinyDecoder(tiny);
    const ModelConfig &c = decoder->config();
    const bool llama = c.arch == Architecture::Llama;
    if (model == "llama_gqa")
      QVERIFY(c.numKvHeads < c.numHeads);
    const CalibrationSet calib{tiny.tokens, ""};
    const ModelWeights before = ModelWeights::fromHfTensors(tiny.config, tiny.tensors);
    const std::vector<NormInputMax> statsBefore = collectNormInputAbsMax(*decoder, calib, 1);
    at::NoGradGuard g;
    const at::Tensor fp = decoder->forward(tiny.tokens);
    SmoothQuantOptions options;
    options.alpha = alpha;
    options.groups = SmoothGroups::All;
    const SmoothQuantReport rep = applySmoothQuant(*decoder, calib, options);
    const int64_t L = c.numLayers;
    QCOMPARE(int64_t(rep.groups.size()), 4 * L);
    const at::Tensor smoothed = decoder->forward(tiny.tokens);
    QVERIFY2(at::allclose(smoothed, fp, 1e-4, 1e-4),
             qPrintable(QString::number((smoothed - fp).abs().max().item<double>())));

    at::Tensor ref;
    if (llama) {
      const QString out = tmp_.filePath("sqscales.bin");
      QVERIFY(
          !runRef({"sqscales", tinyDir_, model, QString::number(alpha, 'g', 17), out}).isEmpty());
      ref = readFloats(out, {L, c.numKvHeads * c.headDim + c.intermediateSize}).to(at::kDouble);
      QVERIFY(ref.defined());
    }
    const std::vector<NormInputMax> statsAfter = collectNormInputAbsMax(*decoder, calib, 1);
    const int64_t groups = c.numHeads / c.numKvHeads, d = c.headDim, kv = c.numKvHeads * d;
    for (int64_t b = 0; b < L; ++b) {
      const BlockWeights &o = before.blocks[size_t(b)];
      const BlockWeights &n = decoder->weights().blocks[size_t(b)];
      // The scales as applied: v's rows divided (its columns also carry the
      // attention norm's scale), o's columns multiplied; likewise up/down.
      auto rowScale = [](const at::Tensor &before, const at::Tensor &after,
                         const at::Tensor &columnScale) {
        const at::Tensor r = (before * columnScale.unsqueeze(0) / after).to(at::kDouble);
        const at::Tensor s = r.mean(1);
        return at::allclose(r, s.unsqueeze(1).expand_as(r), 1e-4) ? s : at::Tensor();
      };
      const at::Tensor sV = rowScale(o.v.weight, n.v.weight, o.attnNorm.weight / n.attnNorm.weight);
      QVERIFY(sV.defined());
      const at::Tensor sO = (n.o.weight.abs().amax(0) / o.o.weight.abs().amax(0)).to(at::kDouble);
      // o_proj column (kvHead * groups + g) * d + e reads v channel kvHead * d + e.
      const at::Tensor expectedO =
          sV.reshape({c.numKvHeads, 1, d}).expand({c.numKvHeads, groups, d}).reshape({-1});
      QVERIFY(at::allclose(sO, expectedO, 1e-4));
      if (o.v.bias.defined())
        QVERIFY(at::allclose((o.v.bias / n.v.bias).to(at::kDouble), sV, 1e-4));
      const at::Tensor sU = rowScale(o.up.weight, n.up.weight, o.mlpNorm.weight / n.mlpNorm.weight);
      QVERIFY(sU.defined());
      const at::Tensor sD =
          (n.down.weight.abs().amax(0) / o.down.weight.abs().amax(0)).to(at::kDouble);
      QVERIFY(at::allclose(sU, sD, 1e-4));
      if (llama) {
        QVERIFY2(
            at::allclose(sV, ref[b].narrow(0, 0, kv), 1e-4),
            qPrintable(QString::number((sV - ref[b].narrow(0, 0, kv)).abs().max().item<double>())));
        QVERIFY(at::allclose(sU, ref[b].narrow(0, kv, c.intermediateSize), 1e-4));
      }
      // Re-measured on the smoothed model: max|X_j| / s_j at both inputs.
      const auto &sb = statsBefore[size_t(b)], &sa = statsAfter[size_t(b)];
      QVERIFY(at::allclose(sa.mlpProduct.to(at::kDouble), sb.mlpProduct.to(at::kDouble) / sD, 1e-4,
                           1e-6));
      QVERIFY(at::allclose(sa.attentionOutput.to(at::kDouble),
                           sb.attentionOutput.to(at::kDouble) / sO, 1e-4, 1e-6));
      // And the scales are not trivial: smoothing did move something.
      QVERIFY((sD - 1).abs().max().item<double>() > 1e-2);
    }
    QCOMPARE(std::string(smoothGroupsName(SmoothGroups::All)), std::string("all"));
    SmoothGroups parsed = SmoothGroups::All;
    QVERIFY(parseSmoothGroups("norm", &parsed) && parsed == SmoothGroups::Norm);
    QVERIFY(!parseSmoothGroups("everything", &parsed));
  }

  // Per-tensor static with the clipping search: the fraction chosen from the
  // histogram against a brute-force search over the raw values (independent
  // formula), MinMax unchanged, and the scheme field round trip.
  void staticClipSearch() {
    at::manual_seed(7);
    std::vector<at::Tensor> batches;
    for (int i = 0; i < 3; ++i)
      batches.push_back(at::randn({64, 48}) + 0.3);
    batches[1][5][7] = 60.0; // a few outliers set the min/max range
    batches[2][9][3] = -21.0;
    batches[0][0][0] = 35.0;
    ActivationSpec spec;
    spec.mode = ActivationMode::PerTensorStatic;
    spec.init = StepInit::ClippingSearch;
    spec.bits = 4; // coarse enough that clipping the outliers pays off
    spec.clipSteps = 80;
    spec.clipNorm = 2.0;
    ActivationQuantizer q(spec);
    for (const at::Tensor &x : batches)
      q.observe(x);
    QVERIFY(q.needsClipSearchPass());
    QVERIFY_THROWS_EXCEPTION(Error, ActivationQuantizer(q).freeze());
    for (const at::Tensor &x : batches)
      q.observeForClipSearch(x);
    q.freeze();
    QVERIFY(!q.needsClipSearchPass());

    // Brute force on the values themselves, float64 throughout.
    const at::Tensor all = at::cat(batches).to(at::kDouble).reshape({-1});
    const double lo = std::min(all.min().item<double>(), 0.0);
    const double hi = std::max(all.max().item<double>(), 0.0);
    auto error = [&](double f) {
      const double s = (f * hi - f * lo) / 15.0, z = std::round(-f * lo / s);
      const at::Tensor r = ((all / s).round() + z).clamp(0, 15).sub(z).mul(s);
      return (all - r).pow(2).sum().item<double>();
    };
    double best = std::numeric_limits<double>::infinity(), bestF = 1;
    for (int k = spec.clipSteps; k >= 1; --k)
      if (error(double(k) / spec.clipSteps) < best) {
        best = error(double(k) / spec.clipSteps);
        bestF = double(k) / spec.clipSteps;
      }
    QVERIFY(bestF < 0.5); // outliers of ~50 sigma: the search must clip
    QVERIFY2(error(q.clipFraction()) <= best * (1 + 1e-3),
             qPrintable(QString("fraction %1 (error %2) vs brute force %3 (error %4)")
                            .arg(q.clipFraction())
                            .arg(error(q.clipFraction()))
                            .arg(bestF)
                            .arg(best)));
    QVERIFY(std::abs(q.scale() - q.clipFraction() * (hi - lo) / 15.0) <= 1e-5 * q.scale());
    // The quantizer does what its step says: clipped values saturate.
    const at::Tensor y = q(batches[1]);
    QVERIFY(y.max().item<double>() < 0.6 * 60.0);

    ActivationSpec minmax = spec;
    minmax.init = StepInit::MinMax;
    ActivationQuantizer m(minmax);
    for (const at::Tensor &x : batches)
      m.observe(x);
    m.freeze();
    QCOMPARE(m.clipFraction(), 1.0);
    QVERIFY(std::abs(m.scale() - (hi - lo) / 15.0) <= 1e-6 * m.scale());

    // Scheme JSON: default minmax, the field read and written back.
    QuantScheme w8a8 = presetScheme("W8A8");
    QCOMPARE(w8a8.activation.init, StepInit::MinMax);
    w8a8.activation.init = StepInit::ClippingSearch;
    w8a8.activation.clipSteps = 40;
    const QuantScheme back = QuantScheme::fromJson(w8a8.toJson());
    QCOMPARE(back.activation.init, StepInit::ClippingSearch);
    QCOMPARE(back.activation.clipSteps, 40);
    QCOMPARE(back.activation.clipNorm, 2.0);
    QVERIFY_THROWS_EXCEPTION(Error,
                             QuantScheme::fromJson(R"({"activation": {"init": "percentile"}})"));

    // Installed on a tiny model: block 0 sees the same inputs as with MinMax,
    // so its clipped steps can only be smaller or equal.
    const lrq::test::TinyModel tiny = lrq::test::readTinyModel(tinyDir_, "llama_gqa");
    QuantScheme scheme = presetScheme("W8A8");
    const CalibrationSet calib{tiny.tokens, ""};
    auto plain = tinyDecoder(tiny);
    const ActivationInstallReport r0 = installActivationQuantizers(*plain, scheme, calib);
    scheme.activation.init = StepInit::ClippingSearch;
    auto clipped = tinyDecoder(tiny);
    const ActivationInstallReport r1 = installActivationQuantizers(*clipped, scheme, calib);
    QCOMPARE(r1.staticSteps.size(), r0.staticSteps.size());
    for (size_t i = 0; i < r0.staticSteps.size(); ++i)
      if (r0.staticSteps[i].block == 0)
        QVERIFY(r1.staticSteps[i].scale <= r0.staticSteps[i].scale * (1 + 1e-6));
    at::NoGradGuard g;
    QVERIFY(at::isfinite(clipped->forward(tiny.tokens)).all().item<bool>());
  }

  // Per-tensor static calibration is deterministic: the same steps twice.
  // The same settings twice give bit-identical steps. A different batch size
  // runs the same arithmetic in other GEMM shapes, so float sums may round
  // differently in the last bits: those steps agree within float tolerance.
  void staticCalibrationDeterministic() {
    const lrq::test::TinyModel tiny = lrq::test::readTinyModel(tinyDir_, "llama_gqa");
    QuantScheme scheme = presetScheme("W8A8");
    std::vector<ActivationInstallReport> reports;
    for (const int64_t batch : {int64_t(1), int64_t(1), int64_t(2)}) {
      auto decoder = tinyDecoder(tiny);
      reports.push_back(installActivationQuantizers(
          *decoder, scheme, CalibrationSet{tiny.tokens, ""}, nullptr, nullptr, batch));
    }
    const size_t n = reports[0].staticSteps.size();
    QCOMPARE(n, size_t(tiny.config.numLayers * 7));
    QCOMPARE(reports[1].staticSteps.size(), n);
    QCOMPARE(reports[2].staticSteps.size(), n);
    for (size_t i = 0; i < n; ++i) {
      const auto &a = reports[0].staticSteps[i];
      const auto &same = reports[1].staticSteps[i];
      const auto &otherBatch = reports[2].staticSteps[i];
      QCOMPARE(same.scale, a.scale);
      QCOMPARE(same.zeroPoint, a.zeroPoint);
      QVERIFY(a.scale > 0);
      const double relScale = std::abs(otherBatch.scale - a.scale) / a.scale;
      QVERIFY2(relScale < 1e-5, qPrintable(QString("%1 %2: %3 vs %4")
                                               .arg(QString::fromStdString(a.layer))
                                               .arg(a.block)
                                               .arg(a.scale, 0, 'g', 12)
                                               .arg(otherBatch.scale, 0, 'g', 12)));
      // A zero point is a rounded offset: a last-bit change may move it by one.
      QVERIFY(std::abs(otherBatch.zeroPoint - a.zeroPoint) <= 1.0);
    }
  }

  // On the default model: identity in FP, activation maxima more even.
  // Small by default (4 windows of 128 tokens, 2 busy cores); LRQ_QA_TOKENS=N
  // (e.g. 256) calibrates and evaluates on 8 windows of N tokens, for report
  // figures.
  void smoothQuantDefaultModel() {
    auto fpModel = defaultDecoder();
    fpPpl_ = evaluatePerplexity(*fpModel, evalTokens_, seqLen_, nullptr, nullptr, windows_);

    // Full precision: logits unchanged by smoothing.
    smoothed_ = defaultDecoder();
    const at::Tensor probe = calib_.tokens.narrow(0, 0, 1).narrow(1, 0, 64);
    at::Tensor fpLogits;
    {
      at::NoGradGuard g;
      fpLogits = fpModel->forward(probe);
    }
    const SmoothQuantReport rep = applySmoothQuant(*smoothed_, calib_, 0.5);
    QCOMPARE(int64_t(rep.groups.size()), loaded_->config.numLayers * 2);
    at::Tensor sqLogits;
    {
      at::NoGradGuard g;
      sqLogits = smoothed_->forward(probe);
    }
    const double logitDiff = (sqLogits - fpLogits).abs().max().item<double>();
    const double logitScale = fpLogits.abs().max().item<double>();
    QVERIFY2(logitDiff < 1e-3 * logitScale, qPrintable(QString::number(logitDiff)));

    // Activation maxima: re-measured on the smoothed model, they are max|X|/s,
    // and their max/median ratio falls.
    const std::vector<NormInputMax> after = collectNormInputAbsMax(*smoothed_, calib_, 4);
    double meanBefore = 0, meanAfter = 0, worstBefore = 0, worstAfter = 0;
    for (const auto &g : rep.groups) {
      meanBefore += g.activationRatioBefore / double(rep.groups.size());
      meanAfter += g.activationRatioAfter / double(rep.groups.size());
      worstBefore = std::max(worstBefore, g.activationRatioBefore);
      worstAfter = std::max(worstAfter, g.activationRatioAfter);
    }
    for (const auto &g : rep.groups) {
      const at::Tensor m = (g.norm == "input_layernorm" ? after[size_t(g.block)].attention
                                                        : after[size_t(g.block)].mlp)
                               .to(at::kDouble);
      const double ratio = m.max().item<double>() / m.median().item<double>();
      QVERIFY2(std::abs(ratio - g.activationRatioAfter) <= 1e-3 * ratio,
               qPrintable(QString("block %1 %2: %3 vs %4")
                              .arg(g.block)
                              .arg(QString::fromStdString(g.norm))
                              .arg(ratio)
                              .arg(g.activationRatioAfter)));
    }
    QVERIFY(meanAfter < meanBefore);
    qInfo().noquote() << QString("SmoothQuant a=0.5 on %1 norm groups in %2 s: max/median of "
                                 "per-channel max|X|: mean %3 -> %4, worst %5 -> %6; FP logits "
                                 "max diff %7 (max |logit| %8)")
                             .arg(rep.groups.size())
                             .arg(rep.seconds, 0, 'f', 1)
                             .arg(meanBefore, 0, 'f', 1)
                             .arg(meanAfter, 0, 'f', 1)
                             .arg(worstBefore, 0, 'f', 1)
                             .arg(worstAfter, 0, 'f', 1)
                             .arg(logitDiff, 0, 'g', 3)
                             .arg(logitScale, 0, 'f', 1);
  }

  // W8A8 = W8 per-channel RTN + per-tensor static A8, with and without
  // SmoothQuant (the smoothed model of the test above); W8A16 on the way.
  void w8a8DefaultModel() {
    QVERIFY(smoothed_);
    const QuantScheme w8a8 = presetScheme("W8A8");
    QCOMPARE(w8a8.activation.mode, ActivationMode::PerTensorStatic);
    auto rtn = defaultDecoder();
    quantizeModelRtn(rtn->weights(), rtn->config(), w8a8);
    const PerplexityResult w8Ppl =
        evaluatePerplexity(*rtn, evalTokens_, seqLen_, nullptr, nullptr, windows_);
    const ActivationInstallReport a1 = installActivationQuantizers(*rtn, w8a8, calib_);
    QCOMPARE(a1.inputTransforms, loaded_->config.numLayers * 7);
    QCOMPARE(int64_t(a1.staticSteps.size()), loaded_->config.numLayers * 7);
    const PerplexityResult rtnPpl =
        evaluatePerplexity(*rtn, evalTokens_, seqLen_, nullptr, nullptr, windows_);
    quantizeModelRtn(smoothed_->weights(), smoothed_->config(), w8a8);
    installActivationQuantizers(*smoothed_, w8a8, calib_);
    const PerplexityResult sqPpl =
        evaluatePerplexity(*smoothed_, evalTokens_, seqLen_, nullptr, nullptr, windows_);
    smoothed_.reset();
    qInfo().noquote() << QString("perplexity (%1 windows x %2 tokens, calibration %1 x %2): FP "
                                 "%3; W8A16 RTN %4; W8A8 RTN %5; W8A8 RTN + SmoothQuant %6")
                             .arg(windows_)
                             .arg(seqLen_)
                             .arg(fpPpl_.perplexity, 0, 'f', 3)
                             .arg(w8Ppl.perplexity, 0, 'f', 3)
                             .arg(rtnPpl.perplexity, 0, 'f', 3)
                             .arg(sqPpl.perplexity, 0, 'f', 3);
    // Where per-tensor static A8 hurts: the widest calibrated ranges.
    std::vector<ActivationInstallReport::StaticStep> steps = a1.staticSteps;
    std::sort(steps.begin(), steps.end(), [](const auto &a, const auto &b) {
      return a.observedMax - a.observedMin > b.observedMax - b.observedMin;
    });
    for (size_t i = 0; i < 3; ++i)
      qInfo().noquote() << QString("  widest static range %1: block %2 %3 [%4, %5], step %6")
                               .arg(i + 1)
                               .arg(steps[i].block)
                               .arg(QString::fromStdString(steps[i].layer))
                               .arg(steps[i].observedMin, 0, 'g', 4)
                               .arg(steps[i].observedMax, 0, 'g', 4)
                               .arg(steps[i].scale, 0, 'g', 4);
    // 8-bit weights barely move perplexity; per-tensor static A8 moves it
    // much more (outliers set the step), and SmoothQuant takes part of that back.
    QVERIFY(std::abs(w8Ppl.perplexity / fpPpl_.perplexity - 1) < 0.02);
    QVERIFY(rtnPpl.perplexity > w8Ppl.perplexity);
    QVERIFY(sqPpl.perplexity < rtnPpl.perplexity);
    QVERIFY(rtnPpl.perplexity < 3 * fpPpl_.perplexity);
  }

  // SmoothQuant on all groups on the default model (GQA: 9 query heads on 3
  // kv heads): FP logits unchanged for a random alpha, the down_proj input
  // maxima re-measured equal max|X| / s, and W8A8 RTN perplexity against
  // norm-only smoothing (alpha 0.5).
  void smoothQuantAllDefaultModel() {
    std::mt19937 rng(1123);
    const double alpha = std::uniform_real_distribution<double>(0.3, 0.7)(rng);
    auto fpModel = defaultDecoder();
    QVERIFY(fpModel->config().numKvHeads < fpModel->config().numHeads);
    auto model = defaultDecoder();
    const at::Tensor probe = calib_.tokens.narrow(0, 0, 1).narrow(1, 0, 64);
    // Two calibration windows keep the three statistics passes short.
    const CalibrationSet calib{calib_.tokens.narrow(0, 0, 2), calib_.source};
    const std::vector<NormInputMax> before = collectNormInputAbsMax(*model, calib, 4);
    SmoothQuantOptions options;
    options.alpha = alpha;
    options.groups = SmoothGroups::All;
    const SmoothQuantReport rep = applySmoothQuant(*model, calib, options);
    QCOMPARE(int64_t(rep.groups.size()), loaded_->config.numLayers * 4);
    at::Tensor fpLogits, sqLogits;
    {
      at::NoGradGuard g;
      fpLogits = fpModel->forward(probe);
      sqLogits = model->forward(probe);
    }
    const double logitDiff = (sqLogits - fpLogits).abs().max().item<double>();
    const double logitScale = fpLogits.abs().max().item<double>();
    QVERIFY2(logitDiff < 1e-3 * logitScale, qPrintable(QString::number(logitDiff)));
    const std::vector<NormInputMax> after = collectNormInputAbsMax(*model, calib, 4);
    double worstDown = 0, ratioBefore = 0, ratioAfter = 0;
    for (int64_t b = 0; b < model->numBlocks(); ++b) {
      const BlockWeights &o = fpModel->weights().blocks[size_t(b)];
      const BlockWeights &n = model->weights().blocks[size_t(b)];
      const at::Tensor s =
          (n.down.weight.abs().amax(0) / o.down.weight.abs().amax(0)).to(at::kDouble);
      const at::Tensor predicted = before[size_t(b)].mlpProduct.to(at::kDouble) / s;
      const at::Tensor measured = after[size_t(b)].mlpProduct.to(at::kDouble);
      QVERIFY(at::allclose(measured, predicted, 2e-3, 1e-5 * predicted.max().item<double>()));
      worstDown = std::max(worstDown, before[size_t(b)].mlpProduct.max().item<double>());
    }
    for (const auto &g : rep.groups)
      if (g.norm == "up_proj") {
        ratioBefore = std::max(ratioBefore, g.activationRatioBefore);
        ratioAfter = std::max(ratioAfter, g.activationRatioAfter);
      }
    QVERIFY(ratioAfter < ratioBefore);
    qInfo().noquote() << QString("SmoothQuant all groups a=%1: FP logits max diff %2; down_proj "
                                 "input max %3, worst max/median %4 -> %5")
                             .arg(alpha, 0, 'f', 3)
                             .arg(logitDiff, 0, 'g', 3)
                             .arg(worstDown, 0, 'f', 1)
                             .arg(ratioBefore, 0, 'f', 1)
                             .arg(ratioAfter, 0, 'f', 1);
  }

  // W4A8-KV8: per-token dynamic A8 and KV8 on W4 RTN cost little beyond W4A16.
  void w4a8Kv8DefaultModel() {
    const QuantScheme w4a8 = presetScheme("W4A8-KV8");
    auto w4 = defaultDecoder();
    quantizeModelRtn(w4->weights(), w4->config(), w4a8);
    const PerplexityResult w4a16Ppl =
        evaluatePerplexity(*w4, evalTokens_, seqLen_, nullptr, nullptr, windows_);
    const ActivationInstallReport r = installActivationQuantizers(*w4, w4a8, calib_);
    QCOMPARE(r.outputTransforms, loaded_->config.numLayers * 2);
    const PerplexityResult w4a8Ppl =
        evaluatePerplexity(*w4, evalTokens_, seqLen_, nullptr, nullptr, windows_);
    qInfo().noquote() << QString("perplexity (%1 windows x %2 tokens): FP %3; W4A16 RTN %4; "
                                 "W4A8-KV8 RTN %5")
                             .arg(windows_)
                             .arg(seqLen_)
                             .arg(fpPpl_.perplexity, 0, 'f', 3)
                             .arg(w4a16Ppl.perplexity, 0, 'f', 3)
                             .arg(w4a8Ppl.perplexity, 0, 'f', 3);
    QVERIFY(w4a8Ppl.perplexity < 1.10 * w4a16Ppl.perplexity);
  }

private:
  int64_t seqLen_ = 128, windows_ = 4;
  CalibrationSet calib_;
  PerplexityResult fpPpl_;
  std::unique_ptr<DecoderModel> smoothed_;
};

QTEST_GUILESS_MAIN(TestQuantAct)
#include "test_quant_act.moc"
