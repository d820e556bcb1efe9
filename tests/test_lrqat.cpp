// LR-QAT (core/quant/lrqat.cpp, lrqat_layer.h): the int8 fixed-point Φ0 and
// the initial codes against the numpy reference tests/reference/lrqat_reference.py
// and a hand computation; straight-through gradients against their closed form;
// training on a tiny model and on SmolLM2-135M; merging; reproducibility.
#include <ATen/ATen.h>

#include <QElapsedTimer>
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/common/error.h"
#include "core/eval/perplexity.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/activation_install.h"
#include "core/quant/block_checkpoint.h"
#include "core/quant/grid.h"
#include "core/quant/lrqat_layer.h"
#include "core/quant/method.h"
#include "core/quant/rtn.h"
#include "core/quant/scheme.h"
#include "decoder_test_models.h"
#include "tensor_files.h"
#include "test_support.h"

using namespace lrq;
using namespace lrq::quant;

namespace {

GridSpec makeSpec(int bits, bool symmetric, Granularity g, int64_t group = 0) {
  GridSpec s;
  s.bits = bits;
  s.symmetric = symmetric;
  s.granularity = g;
  s.groupSize = group;
  return s;
}

QuantScheme schemeFor(const GridSpec &spec) {
  QuantScheme s;
  s.name = "custom";
  s.weight = spec;
  return s;
}

// Heavy-tailed test weights with a few outliers per row (seeded).
at::Tensor testMatrix(int64_t rows, int64_t cols, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::Tensor w = at::randn({rows, cols}, gen, at::kFloat) * 0.02;
  at::Tensor spikes = at::rand({rows, cols}, gen, at::kFloat) < 0.01;
  return at::where(spikes, w * 8.0, w).contiguous();
}

at::Tensor readRaw(const QString &path, at::ScalarType type, int64_t rows, int64_t cols) {
  return lrq::test::readRaw(path, type, {rows, cols});
}

bool writeRaw(const QString &path, const at::Tensor &t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  QFile f(path);
  if (!f.open(QIODevice::WriteOnly))
    return false;
  return f.write(reinterpret_cast<const char *>(c.data_ptr<float>()),
                 qint64(c.numel() * sizeof(float))) == qint64(c.numel() * sizeof(float));
}

double peakRssMb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0)
      return std::stod(line.substr(6)) / 1024.0;
  return 0.0;
}

struct LossRecorder : ProgressObserver {
  std::vector<double> losses;
  std::vector<int> blocks;
  std::vector<std::string> logs;
  void iterationLoss(int block, int, double loss) override {
    losses.push_back(loss);
    blocks.push_back(block);
  }
  bool echo = false;
  void log(LogLevel, const std::string &m) override {
    logs.push_back(m);
    if (echo)
      qInfo("%s", m.c_str());
  }
};

// Mean next-token NLL of the model over windows [N, T] (what LR-QAT minimises).
double meanLoss(const DecoderModel &model, const at::Tensor &windows) {
  at::NoGradGuard noGrad;
  double sum = 0.0;
  for (int64_t i = 0; i < windows.size(0); ++i) { // one window at a time: logits stay small
    const at::Tensor w = windows.narrow(0, i, 1);
    const at::Tensor logits = model.forward(w);
    const int64_t T = w.size(1), V = logits.size(-1);
    const at::Tensor lp = at::log_softmax(logits.narrow(1, 0, T - 1).reshape({-1, V}), -1);
    sum += at::nll_loss(lp, w.narrow(1, 1, T - 1).reshape({-1})).item<double>();
  }
  return sum / double(windows.size(0));
}

std::map<std::string, at::Tensor> cloneTensors(const std::map<std::string, at::Tensor> &t) {
  std::map<std::string, at::Tensor> out;
  for (const auto &[k, v] : t)
    out[k] = v.clone();
  return out;
}

} // namespace

class TestLrqat : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  test::TinyModel tiny_;
  std::unique_ptr<LoadedModel> real_;

  QString tmp(const QString &name) const { return dir_.filePath(name); }

  std::unique_ptr<DecoderModel> tinyModel() const {
    return std::make_unique<DecoderModel>(
        tiny_.config, ModelWeights::fromHfTensors(tiny_.config, cloneTensors(tiny_.tensors)));
  }

  const LoadedModel &real() {
    if (!real_)
      real_ = std::make_unique<LoadedModel>(loadModel(test::defaultModelPath()));
    return *real_;
  }

  MethodReport runLrqat(DecoderModel &model, const QuantScheme &scheme, const CalibrationSet &calib,
                        const nlohmann::json &user, ProgressObserver *obs = nullptr,
                        const CancelToken *cancel = nullptr, uint64_t seed = 7,
                        WeightStash *stash = nullptr) {
    std::unique_ptr<QuantMethod> m = createMethod("lrqat");
    MethodContext ctx{model, scheme, calib, mergeHyperparameters(*m, user), seed, obs, cancel, ""};
    ctx.stash = stash;
    return m->run(ctx);
  }

  // An LR-QAT state (rank 4, alpha 4) for every linear of the model, A moved
  // away from zero so that every term of the gradient counts; the linears and
  // their weights W0.
  static std::tuple<std::vector<LrqatLayer>, std::vector<Linear *>, std::vector<at::Tensor>>
  statesAwayFromZero(DecoderModel &model, const GridSpec &spec, uint64_t seed) {
    std::vector<LrqatLayer> layers;
    std::vector<Linear *> linears;
    std::vector<at::Tensor> originals;
    for (auto &b : model.weights().blocks)
      for (auto &[role, lin] : blockLinears(model.config(), b)) {
        (void)role;
        layers.push_back(initLrqatLayer(lin->weight, spec, 4, 4.0, seed + layers.size()));
        at::NoGradGuard noGrad;
        layers.back().a.copy_(at::randn_like(layers.back().a) * 0.3);
        linears.push_back(lin);
        originals.push_back(lin->weight);
      }
    return {std::move(layers), std::move(linears), std::move(originals)};
  }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    test::writeAndReadTinyModel(dir_.path(), "llama_gqa", tiny_);
    QVERIFY(tiny_.longTokens.defined());
  }

  void registered() {
    QVERIFY(methodNames().size() >= 2);
    std::unique_ptr<QuantMethod> m = createMethod("LRQAT");
    QCOMPARE(m->name(), std::string("lrqat"));
    QVERIFY(QString::fromStdString(m->help()).contains("2406.06385"));
    const nlohmann::json d = m->defaults();
    // The reference's settings: rank 32, alpha 1 (alpha / r = 1/32), clipping at 1.
    QCOMPARE(d.at("rank").get<int>(), 32);
    QCOMPARE(d.at("alpha").get<double>(), 1.0);
    QCOMPARE(d.at("grad_clip").get<double>(), 1.0);
    QCOMPARE(d.at("quantize_activations").get<bool>(), true);
    QCOMPARE(d.at("lr").get<double>(), 1e-3);
    QCOMPARE(d.at("lr_scale").get<double>(), 1e-5);
    QCOMPARE(d.at("beta2").get<double>(), 0.95);
    QVERIFY_THROWS_EXCEPTION(Error, mergeHyperparameters(*m, {{"ranks", 4}}));
  }

  // Φ0 = W0/s0 to int8 with 8 - b fractional bits, by hand. W4 symmetric,
  // one row whose largest |w| is 7/8, so s0 = 1/8 exactly and Φ0 = 8 w.
  void downcastByHand() {
    const std::vector<float> row = {0.875f,         0.2f,    -0.3f, 0.0f,
                                    0.0625f / 8.0f, -0.875f, 0.19f, 0.5f / 8.0f * 2.5f};
    const at::Tensor w = at::tensor(row, at::kFloat).view({1, -1});
    const GridSpec spec = makeSpec(4, true, Granularity::PerChannel);
    QCOMPARE(lrqatFractionalBits(spec), 4);
    const LrqatLayer l = initLrqatLayer(w, spec, 2, 2.0, 1);
    QCOMPARE(l.scale.item<float>(), 0.125f);
    // Φ0 = [7, 1.6, -2.4, 0, 0.0625, -7, 1.52, 1.25]; times 16 rounded (halves to even):
    // [112, 25.6->26, -38.4->-38, 0, 1, -112, 24.32->24, 20]
    const std::vector<int> expectStored = {112, 26, -38, 0, 1, -112, 24, 20};
    QCOMPARE(l.phi0.scalar_type(), at::kChar);
    for (size_t i = 0; i < row.size(); ++i)
      QCOMPARE(int(l.phi0[0][int64_t(i)].item<int8_t>()), expectStored[i]);
    // Φ0_d = stored / 16 = [7, 1.625, -2.375, 0, 0.0625, -7, 1.5, 1.25]; codes:
    // round -> [7, 2, -2, 0, 0, -7, 2 (1.5 half to even), 1]; plain RTN of Φ0 gives
    // 1.52 -> 2 as well.
    const std::vector<int> expectCodes = {7, 2, -2, 0, 0, -7, 2, 1};
    const at::Tensor codes = lrqatMergedCodes(l);
    for (size_t i = 0; i < row.size(); ++i)
      QCOMPARE(codes[0][int64_t(i)].item<int>(), expectCodes[i]);
    // Asymmetric W3: the byte holds Φ0 + z - 4 with 5 fractional bits.
    const at::Tensor w2 =
        at::tensor(std::vector<float>{-0.25f, 0.625f, 0.1f, 0.0f}, at::kFloat).view({1, -1});
    // lo = -0.25, hi = 0.625, s = 0.875 / 7 = 0.125, z = round(2) = 2;
    // Φ0 = [-2, 5, 0.8, 0]; stored = round(32 Φ0) + (2 - 4) * 32 = [-128, 96, -38, -64].
    const GridSpec a3 = makeSpec(3, false, Granularity::PerChannel);
    const LrqatLayer l2 = initLrqatLayer(w2, a3, 1, 1.0, 1);
    QCOMPARE(lrqatFractionalBits(a3), 5);
    QCOMPARE(l2.zeroPoint.item<float>(), 2.0f);
    const std::vector<int> expect2 = {-128, 96, -38, -64};
    for (size_t i = 0; i < expect2.size(); ++i)
      QCOMPARE(int(l2.phi0[0][int64_t(i)].item<int8_t>()), expect2[i]);
    // Φ0_d = stored / 32 + 2 = [-2, 5, 0.8125, 0]; codes round + z = [0, 7, 3, 2].
    const at::Tensor phiD = lrqatPhi(l2);
    QCOMPARE(phiD[0][2].item<float>(), 0.8125f);
    const std::vector<int> expectCodes2 = {0, 7, 3, 2};
    const at::Tensor codes2 = lrqatMergedCodes(l2);
    for (size_t i = 0; i < expectCodes2.size(); ++i)
      QCOMPARE(codes2[0][int64_t(i)].item<int>(), expectCodes2[i]);
  }

  void downcastAndInitialCodesMatchNumpy_data() {
    QTest::addColumn<int>("bits");
    QTest::addColumn<bool>("symmetric");
    QTest::addColumn<int>("granularity");
    QTest::addColumn<int>("group");
    QTest::newRow("W4 sym per-channel") << 4 << true << int(Granularity::PerChannel) << 0;
    QTest::newRow("W4 asym per-channel") << 4 << false << int(Granularity::PerChannel) << 0;
    QTest::newRow("W3 asym per-channel") << 3 << false << int(Granularity::PerChannel) << 0;
    QTest::newRow("W3 sym g64") << 3 << true << int(Granularity::PerGroup) << 64;
    QTest::newRow("W2 asym g64") << 2 << false << int(Granularity::PerGroup) << 64;
    QTest::newRow("W8 asym per-tensor") << 8 << false << int(Granularity::PerTensor) << 0;
    QTest::newRow("W4 sym g96 (ragged)") << 4 << true << int(Granularity::PerGroup) << 96;
  }
  // Initial state vs numpy: the stored bytes, the codes (= RTN of the downcast
  // Φ0) and Ŵ bit for bit; the fixed-point precision; the provable relation to
  // plain RTN: codes differ only where Φ0_d is exactly half-way and Φ0 is not,
  // by one level.
  void downcastAndInitialCodesMatchNumpy() {
    QFETCH(int, bits);
    QFETCH(bool, symmetric);
    QFETCH(int, granularity);
    QFETCH(int, group);
    const GridSpec spec = makeSpec(bits, symmetric, Granularity(granularity), group);
    const int64_t rows = 48, cols = 256;
    const at::Tensor w = testMatrix(rows, cols, 100 + uint64_t(bits));
    QVERIFY(writeRaw(tmp("w.bin"), w));
    QString error;
    const QByteArray out = test::runReference(
        "lrqat_reference.py",
        {"downcast", tmp("w.bin"), QString::number(rows), QString::number(cols),
         QString::number(bits), symmetric ? "1" : "0",
         QString::fromUtf8(granularityName(spec.granularity)), QString::number(group), tmp("ref")},
        &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    const QJsonObject ref = QJsonDocument::fromJson(out).object();

    const LrqatLayer l = initLrqatLayer(w, spec, 4, 4.0, 11);
    const int f = lrqatFractionalBits(spec);
    QCOMPARE(ref.value("frac_bits").toInt(), f);
    const at::Tensor stored = readRaw(tmp("ref.stored"), at::kChar, rows, cols);
    const at::Tensor codesRef = readRaw(tmp("ref.codes"), at::kInt, rows, cols);
    const at::Tensor rtnRef = readRaw(tmp("ref.rtn"), at::kInt, rows, cols);
    const at::Tensor valuesRef = readRaw(tmp("ref.values"), at::kFloat, rows, cols);
    QVERIFY(stored.defined() && codesRef.defined() && rtnRef.defined() && valuesRef.defined());
    QVERIFY(at::equal(l.phi0, stored));
    QVERIFY(at::all(l.a == 0).item<bool>());
    const at::Tensor codes = lrqatMergedCodes(l);
    QVERIFY(at::equal(codes, codesRef));
    QVERIFY(at::equal(lrqatMergedWeight(l), valuesRef));
    // The training-time Ŵ at A = 0 is the same tensor.
    {
      at::NoGradGuard noGrad;
      QVERIFY(at::equal(lrqatFakeWeight(l), valuesRef));
    }
    // Fixed-point precision: multiples of 2^-f, within half a unit of Φ0 unless
    // clamped to the int8 range.
    const double maxErr = ref.value("max_downcast_error").toDouble();
    QVERIFY2(maxErr <= std::ldexp(1.0, -(f + 1)) + 1e-7, qPrintable(QString::number(maxErr)));
    const at::Tensor phiD = lrqatPhi(l);
    QVERIFY(at::equal((phiD * std::ldexp(1.0, f)).round(), phiD * std::ldexp(1.0, f)));
    const GridParams p = computeGridParams(w, spec);
    const at::Tensor phi = w / expandToWeight(p.scale, spec, cols);

    // Relation to plain RTN (grid.h's roundToNearest).
    const at::Tensor rtnCodes = quantizeWeight(w, p, spec);
    QVERIFY(at::equal(rtnCodes, rtnRef));
    const at::Tensor differ = codes != rtnCodes;
    const at::Tensor halfway = (phiD - phiD.floor()) == 0.5;
    QVERIFY(
        at::all(halfway.logical_and(phi != phiD).logical_or(differ.logical_not())).item<bool>());
    QVERIFY((codes - rtnCodes).abs().max().item<int>() <= 1);
    const int64_t nDiffer = differ.sum().item<int64_t>();
    QCOMPARE(nDiffer, int64_t(ref.value("codes_differing_from_rtn").toInt()));
    qInfo("%s: %lld of %lld codes differ from plain RTN (double rounding at Phi0_d = k + 1/2), "
          "max |Phi0 - Phi0_d| %.5f, %d clamped",
          qPrintable(QString::fromStdString(spec.describe())), (long long)nDiffer,
          (long long)(rows * cols), maxErr, ref.value("clamped").toInt());
    // Where the codes agree, Ŵ equals RTN's Ŵ exactly.
    const at::Tensor rtnW = roundToNearest(w, spec);
    QVERIFY(at::equal(at::where(differ, rtnW, lrqatMergedWeight(l)), rtnW));
  }

  // When Φ0 is already a multiple of 2^-f the downcast is lossless and the
  // initial LR-QAT weights are exactly plain RTN (halves included).
  void losslessDowncastGivesPlainRtn() {
    for (bool symmetric : {true, false}) {
      for (int bits : {3, 4}) {
        const GridSpec spec = makeSpec(bits, symmetric, Granularity::PerChannel);
        const int64_t n = int64_t(1) << bits, rows = 16, cols = 128;
        const int f = 8 - bits;
        at::Generator gen = at::detail::createCPUGenerator(5 + uint64_t(bits));
        // Per row a power-of-two step and values k 2^-f steps within the grid.
        const int64_t lo = symmetric ? -(n / 2 - 1) : -3, hi = symmetric ? n / 2 - 1 : n - 4;
        const int64_t unit = int64_t(1) << f;
        at::Tensor k = at::randint(lo * unit, hi * unit + 1, {rows, cols}, gen, at::kFloat);
        k.select(1, 0).fill_(double(hi * unit)); // the range ends pin s0 to the step
        k.select(1, 1).fill_(double(lo * unit));
        const at::Tensor step = at::pow(2.0, at::randint(-8, -3, {rows, 1}, gen, at::kFloat));
        const at::Tensor w = k * std::ldexp(1.0, -f) * step;
        const GridParams p = computeGridParams(w, spec);
        QVERIFY(at::equal(p.scale, step));
        const LrqatLayer l = initLrqatLayer(w, spec, 2, 2.0, 3);
        QVERIFY(at::equal(lrqatPhi(l), w / step));
        QVERIFY(at::equal(lrqatMergedCodes(l), quantizeWeight(w, p, spec)));
        QVERIFY(at::equal(lrqatMergedWeight(l), roundToNearest(w, spec)));
        // Half-way values were present, so the equality covered the tie rule.
        QVERIFY(at::any(((w / step) - (w / step).floor()) == 0.5).item<bool>());
      }
    }
  }

  // Straight-through gradients of Ŵ = s (clamp(round(Φ0 + c A B) + z) - z): autograd
  // through lrqatFakeWeight against their closed form (written out here) at A = 0
  // (LoRA-style: dA != 0, dB == 0) and at A != 0; the trainer's fused forward and
  // closed-form backward (lrqatForward / lrqatBackward) against both.
  void steGradientsReachABAndS_data() {
    QTest::addColumn<int>("bits");
    QTest::addColumn<bool>("symmetric");
    QTest::addColumn<int>("granularity");
    QTest::addColumn<int>("group");
    QTest::addColumn<bool>("offsetForm"); // gguf-q4_k's grid: Ŵ = s q − M
    QTest::newRow("W3 sym g32") << 3 << true << int(Granularity::PerGroup) << 32 << false;
    QTest::newRow("W3 asym g32") << 3 << false << int(Granularity::PerGroup) << 32 << false;
    QTest::newRow("W4 asym per-channel")
        << 4 << false << int(Granularity::PerChannel) << 0 << false;
    QTest::newRow("W4 sym per-tensor") << 4 << true << int(Granularity::PerTensor) << 0 << false;
    QTest::newRow("W2 asym g40 (ragged)")
        << 2 << false << int(Granularity::PerGroup) << 40 << false;
    QTest::newRow("Q4_K offsets") << 4 << false << int(Granularity::PerGroup) << 32 << true;
  }
  void steGradientsReachABAndS() {
    QFETCH(int, bits);
    QFETCH(bool, symmetric);
    QFETCH(int, granularity);
    QFETCH(int, group);
    QFETCH(bool, offsetForm);
    const GridSpec spec = offsetForm ? presetScheme("gguf-q4_k").weight
                                     : makeSpec(bits, symmetric, Granularity(granularity), group);
    QCOMPARE(spec.offsetForm(), offsetForm);
    QCOMPARE(spec.groupSize, int64_t(group));
    const int64_t rows = 24, cols = offsetForm ? 256 : 96; // Q4_K: super-blocks of 256
    LrqatLayer l = initLrqatLayer(testMatrix(rows, cols, 9), spec, 4, 8.0, 21);
    at::Generator gen = at::detail::createCPUGenerator(77);
    const at::Tensor G = at::randn({rows, cols}, gen, at::kFloat);
    for (int round = 0; round < 2; ++round) {
      if (round == 1) {
        at::NoGradGuard noGrad;
        l.a.copy_(at::randn({rows, 4}, gen, at::kFloat) * 0.3);
      }
      for (at::Tensor *p : {&l.a, &l.b, &l.scale})
        p->mutable_grad() = at::Tensor();
      lrqatFakeWeight(l).backward(G);
      at::NoGradGuard noGrad;
      QVERIFY(l.a.grad().defined() && l.b.grad().defined() && l.scale.grad().defined());
      QVERIFY(l.a.grad().abs().max().item<float>() > 0);
      QVERIFY(l.scale.grad().abs().max().item<float>() > 0);
      if (round == 0)
        QVERIFY(at::all(l.b.grad() == 0).item<bool>()); // A = 0 blocks B's gradient
      else
        QVERIFY(l.b.grad().abs().max().item<float>() > 0);

      // Closed form: u = Φ0_d + c A B; inside = qmin <= round(u) + z <= qmax.
      // In offset form z = 0 (zeroPoint holds M, which only shifts Ŵ).
      const double c = l.scaling;
      QCOMPARE(c, 2.0);
      const at::Tensor u = lrqatPhi(l) + c * at::mm(l.a, l.b);
      const at::Tensor z = offsetForm ? at::zeros({1, 1}) : expandToWeight(l.zeroPoint, spec, cols);
      const at::Tensor q = at::round(u) + z;
      const at::Tensor inside = (q >= double(spec.qmin())) & (q <= double(spec.qmax()));
      const at::Tensor s = expandToWeight(lrqatStep(l).detach(), spec, cols);
      const at::Tensor du = G * s * inside.to(at::kFloat);
      QVERIFY(at::allclose(l.a.grad(), c * at::mm(du, l.b.t()), 1e-4, 1e-5));
      QVERIFY(at::allclose(l.b.grad(), c * at::mm(l.a.t(), du), 1e-4, 1e-5));
      const at::Tensor dsFull = G * (q.clamp(double(spec.qmin()), double(spec.qmax())) - z);
      at::Tensor ds = at::zeros_like(l.scale);
      for (int64_t r = 0; r < rows; ++r) // unit by unit, by hand
        for (int64_t col = 0; col < cols; ++col) {
          const int64_t gi = spec.granularity == Granularity::PerGroup ? col / group : 0;
          const int64_t ri = spec.granularity == Granularity::PerTensor ? 0 : r;
          ds[ri][gi] += dsFull[r][col];
        }
      QVERIFY(at::allclose(l.scale.grad(), ds, 1e-4, 1e-4));

      // Ŵ is the grid's value of the clamped codes: s (q − z), or fl(s q − M).
      {
        const at::Tensor qc = q.clamp(double(spec.qmin()), double(spec.qmax()));
        const at::Tensor wHat = lrqatFakeWeight(l).detach();
        if (offsetForm)
          QVERIFY(at::equal(wHat, qc * s - expandToWeight(l.zeroPoint, spec, cols)));
        else
          QVERIFY(at::equal(wHat, (qc - z) * s));
      }

      // The trainer's path: the same Ŵ bit for bit, the same gradients.
      const LrqatForward f = lrqatForward(l);
      QVERIFY(at::equal(f.weight, lrqatFakeWeight(l)));
      QVERIFY(at::equal(f.codes.to(at::kFloat), q));
      const LrqatGradients g = lrqatBackward(l, f.codes, G);
      QVERIFY(at::allclose(g.a, l.a.grad(), 1e-5, 1e-6));
      QVERIFY(at::allclose(g.b, l.b.grad(), 1e-5, 1e-6));
      QVERIFY(at::allclose(g.scale, l.scale.grad(), 1e-5, 1e-5));
      if (round == 0)
        QVERIFY(at::all(g.b == 0).item<bool>());
    }
  }

  // Through the whole (tiny) model: the decoder's backward delivers dL/dŴ to
  // every linear and from there gradients reach A and s of all of them, B none.
  void gradientsThroughTheModel() {
    std::unique_ptr<DecoderModel> model = tinyModel();
    const GridSpec spec = makeSpec(4, true, Granularity::PerChannel);
    std::vector<LrqatLayer> layers;
    std::vector<Linear *> linears;
    for (auto &b : model->weights().blocks)
      for (auto &[role, lin] : blockLinears(model->config(), b)) {
        (void)role;
        layers.push_back(initLrqatLayer(lin->weight, spec, 4, 4.0, layers.size()));
        linears.push_back(lin);
      }
    QCOMPARE(int(layers.size()), int(model->numBlocks() * 7));
    for (size_t i = 0; i < layers.size(); ++i) {
      at::NoGradGuard noGrad;
      linears[i]->weight = lrqatFakeWeight(layers[i]).requires_grad_(true);
    }
    const at::Tensor tokens = tiny_.longTokens.narrow(1, 0, 32);
    const at::Tensor logits = model->forward(tokens);
    const at::Tensor loss =
        at::nll_loss(at::log_softmax(logits.narrow(1, 0, 31).reshape({31, -1}), -1),
                     tokens.narrow(1, 1, 31).reshape({-1}));
    loss.backward();
    for (size_t i = 0; i < layers.size(); ++i) {
      const at::Tensor g = linears[i]->weight.grad();
      QVERIFY(g.defined() && g.abs().max().item<float>() > 0);
      lrqatFakeWeight(layers[i]).backward(g);
      QVERIFY(layers[i].a.grad().abs().max().item<float>() > 0);
      QVERIFY(at::all(layers[i].b.grad() == 0).item<bool>());
      QVERIFY(layers[i].scale.grad().abs().max().item<float>() > 0);
    }
  }

  // The training kernels (Ŵ derived in each linear's forward and again in its
  // backward, gradients in closed form) against autograd through
  // lrqatFakeWeight on the whole tiny model, with A away from zero so that
  // every term of the gradient counts (asymmetric groups of 16): the same loss
  // to the bit and the same gradients of A, B and s for every layer, though all
  // layers share one set of scratch buffers.
  void kernelsGiveAutogradsGradients() {
    std::unique_ptr<DecoderModel> model = tinyModel();
    std::vector<LrqatLayer> layers;
    std::vector<Linear *> linears;
    std::vector<at::Tensor> originals;
    std::tie(layers, linears, originals) =
        statesAwayFromZero(*model, makeSpec(3, false, Granularity::PerGroup, 16), 11);
    const at::Tensor tokens = tiny_.longTokens.narrow(1, 0, 32);
    auto lossOf = [&] {
      const at::Tensor logits = model->forward(tokens);
      return at::nll_loss(at::log_softmax(logits.narrow(1, 0, 31).reshape({31, -1}), -1),
                          tokens.narrow(1, 1, 31).reshape({-1}));
    };

    // Autograd: Ŵ with its graph into A, B and s.
    for (size_t i = 0; i < layers.size(); ++i)
      linears[i]->weight = lrqatFakeWeight(layers[i]);
    const at::Tensor reference = lossOf();
    reference.backward();

    // The kernels, the model's weights back to W0 (unused while a kernel is set).
    std::vector<LrqatGradients> grads(layers.size());
    LrqatScratch scratch;
    std::vector<LrqatLinearState> states(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      linears[i]->weight = originals[i];
      states[i].layer = &layers[i];
      states[i].grads = &grads[i];
      states[i].scratch = &scratch;
      linears[i]->kernel = makeLrqatKernel(&states[i]);
    }
    const at::Tensor loss = lossOf();
    loss.backward();
    for (Linear *l : linears)
      l->kernel.reset();
    QCOMPARE(loss.item<double>(), reference.item<double>());
    auto close = [](const at::Tensor &got, const at::Tensor &want) {
      const double scale = want.abs().max().item<double>();
      return scale > 0 && (got - want).abs().max().item<double>() <= 1e-5 * scale;
    };
    for (size_t i = 0; i < layers.size(); ++i) {
      QVERIFY2(close(grads[i].a, layers[i].a.grad()), qPrintable(QString::number(i)));
      QVERIFY2(close(grads[i].b, layers[i].b.grad()), qPrintable(QString::number(i)));
      QVERIFY2(close(grads[i].scale, layers[i].scale.grad()), qPrintable(QString::number(i)));
    }
  }

  // The loss over chunks of positions is the loss over all of them at once,
  // and so is the gradient it sends back, for any chunk size; a loss that is
  // not finite is returned and sends nothing back.
  void chunkedLossMatchesTheWholeOne() {
    std::unique_ptr<DecoderModel> model = tinyModel();
    const at::Tensor tokens = tiny_.longTokens.narrow(1, 0, 32).reshape({2, 16});
    at::Generator gen = at::detail::createCPUGenerator(41);
    const at::Tensor values = at::randn({2, 16, model->config().hiddenSize}, gen);
    at::AutoGradMode grad(true);
    const at::Tensor whole = values.clone().requires_grad_(true);
    const at::Tensor logits = model->head(whole);
    const at::Tensor loss =
        at::nll_loss(at::log_softmax(logits.narrow(1, 0, 15).reshape({30, -1}), -1),
                     tokens.narrow(1, 1, 15).reshape({-1}));
    loss.backward();
    for (int64_t chunk : {1, 7, 30, 1000}) {
      const at::Tensor chunked = values.clone().requires_grad_(true);
      const double value = nextTokenLossBackward(*model, chunked, tokens, chunk);
      const QByteArray where = QByteArray::number(qlonglong(chunk));
      QVERIFY2(std::abs(value - loss.item<double>()) <= 1e-5 * std::abs(loss.item<double>()),
               where);
      QVERIFY2(chunked.grad().defined(), where);
      QVERIFY2(at::allclose(chunked.grad(), whole.grad(), 1e-4, 1e-7), where);
      QVERIFY2(at::all(chunked.grad().select(1, 15) == 0).item<bool>(), where); // predicts nothing
    }
    const at::Tensor broken = values.clone();
    broken[1][3][0] = std::numeric_limits<float>::quiet_NaN();
    broken.requires_grad_(true);
    QVERIFY(std::isnan(nextTokenLossBackward(*model, broken, tokens, 7)));
    QVERIFY(!broken.grad().defined());
  }

  // Recomputing each block in the backward (core/quant/block_checkpoint.h)
  // against keeping every block's activations, on the tiny model with the
  // training kernels and with Ŵ as an autograd leaf: the same loss and the
  // same gradients of A, B and s (kernels) or of Ŵ (leaves), to the bit.
  void recomputedBlocksGiveTheSameGradients() {
    std::unique_ptr<DecoderModel> model = tinyModel();
    std::vector<LrqatLayer> layers;
    std::vector<Linear *> linears;
    std::vector<at::Tensor> originals;
    std::tie(layers, linears, originals) =
        statesAwayFromZero(*model, makeSpec(3, false, Granularity::PerGroup, 16), 29);
    const at::Tensor tokens = tiny_.longTokens.narrow(1, 0, 32).reshape({2, 16});
    auto lossOf = [&](bool recompute, int64_t firstTrained = 0) {
      const at::Tensor logits =
          recompute
              ? model->head(hiddenRecomputingBlocks(*model, tokens, layers[0].scale, firstTrained))
              : model->forward(tokens);
      if (!logits.requires_grad())
        throw Error("the logits need no gradient");
      const at::Tensor loss =
          at::nll_loss(at::log_softmax(logits.narrow(1, 0, 15).reshape({30, -1}), -1),
                       tokens.narrow(1, 1, 15).reshape({-1}));
      loss.backward();
      return loss.item<double>();
    };

    // Kernels: gradients delivered through the states.
    LrqatScratch scratch;
    std::vector<LrqatLinearState> states(layers.size());
    std::vector<LrqatGradients> kept(layers.size()), recomputed(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      states[i].layer = &layers[i];
      states[i].scratch = &scratch;
      linears[i]->kernel = makeLrqatKernel(&states[i]);
    }
    for (size_t i = 0; i < layers.size(); ++i)
      states[i].grads = &kept[i];
    const double keptLoss = lossOf(false);
    for (size_t i = 0; i < layers.size(); ++i)
      states[i].grads = &recomputed[i];
    QVERIFY(lossOf(true) == keptLoss);
    for (size_t i = 0; i < layers.size(); ++i) {
      const QByteArray where = QByteArray::number(qulonglong(i));
      QVERIFY2(kept[i].a.defined() && recomputed[i].a.defined(), where);
      QVERIFY2(at::equal(kept[i].a, recomputed[i].a), where);
      QVERIFY2(at::equal(kept[i].b, recomputed[i].b), where);
      QVERIFY2(at::equal(kept[i].scale, recomputed[i].scale), where);
      QVERIFY2(!layers[i].scale.grad().defined(), where); // the anchor gets nothing
      linears[i]->kernel.reset();
    }

    // Leaves: Ŵ as a tensor requiring grad, its .grad accumulated by the
    // recomputed graph as by the kept one.
    std::vector<at::Tensor> keptGrads;
    for (size_t i = 0; i < layers.size(); ++i) {
      at::NoGradGuard noGrad;
      linears[i]->weight = lrqatFakeWeight(layers[i]).requires_grad_(true);
    }
    const double leafLoss = lossOf(false);
    for (Linear *l : linears) {
      keptGrads.push_back(l->weight.grad().clone());
      l->weight.mutable_grad() = at::Tensor();
    }
    QVERIFY(lossOf(true) == leafLoss);
    for (size_t i = 0; i < linears.size(); ++i)
      QVERIFY2(at::equal(linears[i]->weight.grad(), keptGrads[i]),
               QByteArray::number(qulonglong(i)));

    // A layer sees recomputingForBackward() only while its block runs again
    // for the backward (where the LR-QAT kernel keeps Ŵ for it).
    struct Probe : LinearKernel {
      const Linear *linear = nullptr;
      mutable std::vector<bool> seen;
      at::Tensor apply(const at::Tensor &x2d) const override {
        seen.push_back(recomputingForBackward());
        return at::mm(x2d, linear->weight.t());
      }
    };
    auto probe = std::make_shared<Probe>();
    probe->linear = linears.back();
    linears.back()->kernel = probe;
    lossOf(false);
    QCOMPARE(probe->seen, std::vector<bool>({false}));
    probe->seen.clear();
    lossOf(true);
    QCOMPARE(probe->seen, std::vector<bool>({false, true}));
    QVERIFY(!recomputingForBackward());
    linears.back()->kernel.reset();

    // Blocks before the first trained one run once and are not run again; the
    // gradients are the same bits either way.
    QVERIFY(model->numBlocks() >= 2);
    const size_t perBlock = blockLinears(model->config(), model->weights().blocks.front()).size();
    for (size_t i = 0; i < perBlock; ++i)
      linears[i]->weight = originals[i]; // nothing trained in block 0
    for (Linear *l : linears)
      l->weight.mutable_grad() = at::Tensor();
    auto blockZero = std::make_shared<Probe>();
    blockZero->linear = linears.front();
    linears.front()->kernel = blockZero;
    const double everyBlock = lossOf(true, 0);
    QCOMPARE(blockZero->seen, std::vector<bool>({false, true}));
    std::vector<at::Tensor> everyBlockGrads;
    for (size_t i = perBlock; i < linears.size(); ++i) {
      everyBlockGrads.push_back(linears[i]->weight.grad().clone());
      linears[i]->weight.mutable_grad() = at::Tensor();
    }
    blockZero->seen.clear();
    QVERIFY(lossOf(true, 1) == everyBlock);
    QCOMPARE(blockZero->seen, std::vector<bool>({false}));
    for (size_t i = perBlock; i < linears.size(); ++i)
      QVERIFY2(at::equal(linears[i]->weight.grad(), everyBlockGrads[i - perBlock]),
               QByteArray::number(qulonglong(i)));
    linears.front()->kernel.reset();
  }

  // Training on the tiny model: the loss on the training windows falls, events
  // arrive, the merge leaves plain weights on the grid, same seed -> same bits.
  void trainsMergesAndReproducesOnTinyModel() {
    std::vector<int32_t> stream;
    for (int64_t i = 0; i < tiny_.longTokens.size(1); ++i)
      stream.push_back(int32_t(tiny_.longTokens[0][i].item<int64_t>()));
    const CalibrationSet calib = makeCalibrationSet(stream, 4, 32, 1, "tiny");
    for (bool symmetric : {true, false}) {
      const GridSpec spec = makeSpec(3, symmetric, Granularity::PerChannel);
      const QuantScheme scheme = schemeFor(spec);
      // lr 0: nothing moves, the model is the initial state (RTN on the downcast grid).
      std::unique_ptr<DecoderModel> init = tinyModel();
      runLrqat(*init, scheme, calib, {{"steps", 1}, {"lr", 0.0}, {"lr_scale", 0.0}});
      const double before = meanLoss(*init, calib.tokens);

      const nlohmann::json hyper = {{"steps", 60},           {"batch_size", 2}, {"lr", 1e-2},
                                    {"lr_scale", 1e-3},      {"rank", 4},       {"alpha", 4.0},
                                    {"warmup_fraction", 0.1}};
      std::unique_ptr<DecoderModel> m1 = tinyModel();
      const at::Tensor q0 = m1->weights().blocks[0].q.weight;
      LossRecorder rec;
      const MethodReport r1 = runLrqat(*m1, scheme, calib, hyper, &rec);
      const double after = meanLoss(*m1, calib.tokens);
      qInfo("tiny model %s: loss on the training windows %.4f -> %.4f; step losses %.4f -> "
            "%.4f; %.2f%% codes moved",
            qPrintable(QString::fromStdString(spec.describe())), before, after, rec.losses.front(),
            rec.losses.back(), 100.0 * r1.extra.at("codes_changed_fraction").get<double>());
      QVERIFY2(after < before - 0.01, qPrintable(QString("%1 -> %2").arg(before).arg(after)));
      QCOMPARE(int(rec.losses.size()), 60);
      QVERIFY(std::all_of(rec.blocks.begin(), rec.blocks.end(), [](int b) { return b == 0; }));
      QVERIFY(!rec.logs.empty());
      qInfo("%s", rec.logs.back().c_str());
      QCOMPARE(r1.extra.at("loss_start").get<double>(), rec.losses.front());
      QVERIFY(r1.extra.at("codes_changed_fraction").get<double>() > 0);

      // Report: every linear, with A + B + s counted.
      QCOMPARE(int64_t(r1.layers.size()), m1->numBlocks() * 7);
      const ModelConfig &c = m1->config();
      const LayerReport &qr = r1.layers[0];
      QCOMPARE(qr.error.layer, std::string("q_proj"));
      const int64_t qOut = c.numHeads * c.headDim, qIn = c.hiddenSize;
      QCOMPARE(qr.learnableParams, qOut * 4 + 4 * qIn + qOut);
      // Merged: a plain float weight (no adapters, no graph) whose rows hold at
      // most 2^bits levels that are integer multiples of one step.
      for (auto &b : m1->weights().blocks)
        for (auto &[role, lin] : blockLinears(c, b)) {
          QVERIFY2(!lin->lowRankA.defined() && !lin->lowRankB.defined(), role.c_str());
          QVERIFY(!lin->weight.requires_grad());
          QCOMPARE(lin->weight.scalar_type(), at::kFloat);
          for (int64_t r = 0; r < 4; ++r) {
            const at::Tensor levels = std::get<0>(at::_unique(lin->weight[r]));
            QVERIFY(levels.size(0) <= 8);
          }
        }
      QVERIFY(!m1->weights().blocks[0].q.weight.is_same(q0));

      // Same seed: identical losses and weights, though this run keeps every
      // block's activations where the first ran each block again in the
      // backward; another seed: different.
      auto recomputes = [](const LossRecorder &r) {
        return std::any_of(r.logs.begin(), r.logs.end(), [](const std::string &m) {
          return m.find("each block run again in the backward") != std::string::npos;
        });
      };
      QVERIFY(recomputes(rec));
      std::unique_ptr<DecoderModel> m2 = tinyModel();
      LossRecorder rec2;
      nlohmann::json keeping = hyper;
      keeping["recompute_blocks"] = false;
      runLrqat(*m2, scheme, calib, keeping, &rec2);
      QVERIFY(!recomputes(rec2));
      QVERIFY(rec2.losses == rec.losses);
      for (int64_t b = 0; b < m1->numBlocks(); ++b)
        for (const auto &[a, bb] : {std::make_pair(&m1->weights().blocks[size_t(b)].down,
                                                   &m2->weights().blocks[size_t(b)].down),
                                    std::make_pair(&m1->weights().blocks[size_t(b)].q,
                                                   &m2->weights().blocks[size_t(b)].q)})
          QVERIFY(at::equal(a->weight, bb->weight));
      // Training the last block only (the blocks before it are not run again
      // in the backward): the same bits as keeping the activations.
      QuantScheme last = scheme;
      last.layers.blocks = {m1->numBlocks() - 1};
      std::vector<std::vector<double>> lastLosses;
      std::vector<std::unique_ptr<DecoderModel>> lastModels;
      for (bool recompute : {true, false}) {
        lastModels.push_back(tinyModel());
        LossRecorder r;
        nlohmann::json h = hyper;
        h["recompute_blocks"] = recompute;
        runLrqat(*lastModels.back(), last, calib, h, &r);
        QCOMPARE(recomputes(r), recompute);
        lastLosses.push_back(r.losses);
      }
      QVERIFY(!lastLosses[0].empty());
      QVERIFY(lastLosses[0] == lastLosses[1]);
      QVERIFY(lastLosses[0] != rec.losses);
      for (Linear BlockWeights::*w : {&BlockWeights::q, &BlockWeights::down})
        QVERIFY(at::equal((lastModels[0]->weights().blocks.back().*w).weight,
                          (lastModels[1]->weights().blocks.back().*w).weight));
      std::unique_ptr<DecoderModel> m3 = tinyModel();
      LossRecorder rec3;
      runLrqat(*m3, scheme, calib, hyper, &rec3, nullptr, 8);
      QVERIFY(rec3.losses != rec.losses);
    }
  }

  // A8 schemes train on quantized activations, as the evaluation sees them:
  // the first step's loss (lr 0, one window) is the loss of the initial
  // weights with the evaluation's per-token and KV quantizers installed, not
  // the full-precision-activation one (quantize_activations false); no
  // transform is left on the model afterwards.
  void trainsWithQuantizedActivations() {
    std::vector<int32_t> stream;
    for (int64_t i = 0; i < tiny_.longTokens.size(1); ++i)
      stream.push_back(int32_t(tiny_.longTokens[0][i].item<int64_t>()));
    const CalibrationSet calib = makeCalibrationSet(stream, 1, 32, 1, "tiny");
    QuantScheme scheme = schemeFor(makeSpec(4, true, Granularity::PerChannel));
    scheme.activation.mode = ActivationMode::PerTokenDynamic;
    scheme.activation.bits = 4; // coarse: the quantizers change the loss clearly
    scheme.kv8 = true;
    for (bool quantize : {true, false}) {
      std::unique_ptr<DecoderModel> m = tinyModel();
      LossRecorder rec;
      const MethodReport r = runLrqat(
          *m, scheme, calib,
          {{"steps", 1}, {"lr", 0.0}, {"lr_scale", 0.0}, {"quantize_activations", quantize}}, &rec);
      QCOMPARE(r.extra.at("activations_quantized_in_training").get<bool>(), quantize);
      for (auto &b : m->weights().blocks)
        for (auto &[role, lin] : blockLinears(m->config(), b))
          QVERIFY2(!lin->inputTransform && !lin->outputTransform, role.c_str());
      const double fpActivations = meanLoss(*m, calib.tokens);
      const ActivationInstallReport installed = installActivationQuantizers(*m, scheme, calib);
      QCOMPARE(installed.inputTransforms, m->numBlocks() * 7);
      const double quantizedActivations = meanLoss(*m, calib.tokens);
      QVERIFY(std::abs(quantizedActivations - fpActivations) > 1e-3);
      const double expected = quantize ? quantizedActivations : fpActivations;
      QVERIFY2(std::abs(rec.losses.front() - expected) < 1e-4,
               qPrintable(QString("first step %1, expected %2 (other %3)")
                              .arg(rec.losses.front())
                              .arg(expected)
                              .arg(quantize ? fpActivations : quantizedActivations)));
    }
  }

  // Gradient clipping in training: the norms are recorded, a tiny limit
  // clips every step, and 0 turns it off.
  void gradientClippingInTraining() {
    std::vector<int32_t> stream;
    for (int64_t i = 0; i < tiny_.longTokens.size(1); ++i)
      stream.push_back(int32_t(tiny_.longTokens[0][i].item<int64_t>()));
    const CalibrationSet calib = makeCalibrationSet(stream, 2, 32, 1, "tiny");
    const QuantScheme scheme = schemeFor(makeSpec(4, true, Granularity::PerChannel));
    std::unique_ptr<DecoderModel> m = tinyModel();
    const MethodReport clipped =
        runLrqat(*m, scheme, calib, {{"steps", 3}, {"grad_clip", 1e-6}, {"rank", 4}});
    QCOMPARE(clipped.extra.at("steps_clipped").get<int64_t>(), int64_t(3));
    QVERIFY(clipped.extra.at("grad_norm_first").get<double>() > 1e-6);
    m = tinyModel();
    const MethodReport off =
        runLrqat(*m, scheme, calib, {{"steps", 3}, {"grad_clip", 0.0}, {"rank", 4}});
    QCOMPARE(off.extra.at("steps_clipped").get<int64_t>(), int64_t(0));
    QCOMPARE(off.extra.at("grad_norm_first").get<double>(),
             clipped.extra.at("grad_norm_first").get<double>());
  }

  // Merged codes: the integer codes are within the grid and reproduce the weight.
  void mergedCodesWithinGrid() {
    for (bool symmetric : {true, false}) {
      const GridSpec spec = makeSpec(4, symmetric, Granularity::PerGroup, 64);
      LrqatLayer l = initLrqatLayer(testMatrix(32, 128, 4), spec, 8, 8.0, 2);
      {
        at::NoGradGuard noGrad;
        at::Generator gen = at::detail::createCPUGenerator(3);
        l.a.copy_(at::randn({32, 8}, gen, at::kFloat) * 4.0); // push many codes past the ends
        l.scale.mul_(1.1);
      }
      const at::Tensor codes = lrqatMergedCodes(l);
      QCOMPARE(codes.scalar_type(), at::kInt);
      QVERIFY(codes.min().item<int>() >= spec.qmin() && codes.max().item<int>() <= spec.qmax());
      QVERIFY(codes.min().item<int>() == spec.qmin() && codes.max().item<int>() == spec.qmax());
      const GridParams p{l.scale.detach(), l.zeroPoint, {}};
      QVERIFY(at::equal(lrqatMergedWeight(l), dequantizeWeight(codes, p, spec)));
      at::NoGradGuard noGrad;
      QVERIFY(at::equal(lrqatMergedWeight(l), lrqatFakeWeight(l)));
    }
  }

  // W0 handed to the run's stash as each layer's state is made: a run with a
  // stash trains to the same bits as one without, and a run that fails in its
  // steps (NaN) or is cancelled before them gives every linear its W0 back from
  // the stash, bit for bit.
  void stashedWeightsComeBackAfterAFailure() {
    struct MapStash : WeightStash {
      DecoderModel *model = nullptr;
      std::map<std::pair<int64_t, std::string>, at::Tensor> kept;
      int broughtBack = 0;
      bool setAside(int64_t block, const std::string &role) override {
        for (auto &[r, lin] : blockLinears(model->config(), model->weights().blocks[size_t(block)]))
          if (r == role) {
            kept[{block, role}] = lin->weight.clone();
            lin->weight = at::Tensor();
            return true;
          }
        return false;
      }
      at::Tensor bringBack(int64_t block, const std::string &role) override {
        ++broughtBack;
        return kept.at({block, role}).clone();
      }
    };
    std::vector<int32_t> stream;
    for (int64_t i = 0; i < tiny_.longTokens.size(1); ++i)
      stream.push_back(int32_t(tiny_.longTokens[0][i].item<int64_t>()));
    const CalibrationSet calib = makeCalibrationSet(stream, 2, 32, 1, "tiny");
    const QuantScheme scheme = schemeFor(makeSpec(4, true, Granularity::PerChannel));
    const nlohmann::json hyper = {{"steps", 3}, {"rank", 4}, {"lr", 1e-2}};
    auto weightsOf = [](DecoderModel &m) {
      std::vector<at::Tensor> out;
      for (auto &b : m.weights().blocks)
        for (auto &[role, lin] : blockLinears(m.config(), b)) {
          (void)role;
          out.push_back(lin->weight.defined() ? lin->weight.clone() : at::Tensor());
        }
      return out;
    };
    auto same = [](const std::vector<at::Tensor> &a, const std::vector<at::Tensor> &b) {
      if (a.size() != b.size())
        return false;
      for (size_t i = 0; i < a.size(); ++i)
        if (!a[i].defined() || !b[i].defined() || !at::equal(a[i], b[i]))
          return false;
      return true;
    };

    std::unique_ptr<DecoderModel> plain = tinyModel(), stashed = tinyModel();
    const std::vector<at::Tensor> w0 = weightsOf(*plain);
    LossRecorder a, b;
    runLrqat(*plain, scheme, calib, hyper, &a);
    MapStash stash;
    stash.model = stashed.get();
    runLrqat(*stashed, scheme, calib, hyper, &b, nullptr, 7, &stash);
    QCOMPARE(int(stash.kept.size()), int(w0.size()));
    QCOMPARE(stash.broughtBack, int(w0.size())); // the merge's error figures
    QVERIFY(a.losses == b.losses);
    QVERIFY(same(weightsOf(*plain), weightsOf(*stashed)));
    QVERIFY(!same(weightsOf(*plain), w0));

    // Failures: every W0 back from the stash.
    std::unique_ptr<DecoderModel> failing = tinyModel();
    CancelToken cancel;
    cancel.cancel();
    MapStash cancelled;
    cancelled.model = failing.get();
    QVERIFY_THROWS_EXCEPTION(
        Cancelled, runLrqat(*failing, scheme, calib, hyper, nullptr, &cancel, 7, &cancelled));
    QCOMPARE(int(cancelled.kept.size()), int(w0.size()));
    QVERIFY(same(weightsOf(*failing), w0));
    failing->weights().blocks[0].attnNorm.weight[0] = std::nan("");
    MapStash nan;
    nan.model = failing.get();
    QVERIFY_THROWS_EXCEPTION(Error,
                             runLrqat(*failing, scheme, calib, hyper, nullptr, nullptr, 7, &nan));
    QCOMPARE(int(nan.kept.size()), int(w0.size()));
    QCOMPARE(nan.broughtBack, int(w0.size()));
    QVERIFY(same(weightsOf(*failing), w0));
  }

  void cancelAndNanLeaveTheModelIntact() {
    std::vector<int32_t> stream;
    for (int64_t i = 0; i < tiny_.longTokens.size(1); ++i)
      stream.push_back(int32_t(tiny_.longTokens[0][i].item<int64_t>()));
    const CalibrationSet calib = makeCalibrationSet(stream, 2, 32, 1, "tiny");
    const QuantScheme scheme = schemeFor(makeSpec(4, true, Granularity::PerChannel));
    std::unique_ptr<DecoderModel> m = tinyModel();
    const at::Tensor q = m->weights().blocks[1].q.weight;
    CancelToken cancel;
    cancel.cancel();
    QVERIFY_THROWS_EXCEPTION(Cancelled,
                             runLrqat(*m, scheme, calib, {{"steps", 3}}, nullptr, &cancel));
    QVERIFY(m->weights().blocks[1].q.weight.is_same(q));
    m->weights().blocks[0].attnNorm.weight[0] = std::nan("");
    try {
      runLrqat(*m, scheme, calib, {{"steps", 3}});
      QFAIL("expected lrq::Error");
    } catch (const Cancelled &) {
      QFAIL("not a cancellation");
    } catch (const Error &e) {
      const QString msg = QString::fromUtf8(e.what());
      QVERIFY2(msg.contains("lrqat: step 1") && msg.contains("NaN"), qPrintable(msg));
      QVERIFY(!msg.contains('\n'));
    }
    QVERIFY(m->weights().blocks[1].q.weight.is_same(q));
    QuantScheme withHead = scheme;
    withHead.layers.lmHead = true;
    QVERIFY_THROWS_EXCEPTION(Error, runLrqat(*m, withHead, calib, {{"steps", 1}}));
  }

  // SmolLM2-135M: a few steps on real text at W4 and W3 per-channel (the
  // presets' asymmetric grids, and the paper's symmetric W4): the loss on the
  // training windows falls; held-out perplexity of FP, RTN and LR-QAT reported.
  // For figures: LRQ_LRQAT_STEPS / _SAMPLES / _SEQ / _EVAL_WINDOWS lengthen the run, _ALL=1 adds
  // the FP perplexity and symmetric grids, _LR / _LR_SCALE / _CASE for ablations.
  void defaultModel() {
    const LoadedModel &lm = real();
    QVERIFY(lm.tokenizer);
    const TextSplit text = defaultText();
    const std::vector<int32_t> calibTokens = lm.tokenizer->encode(text.calibration, false);
    const std::vector<int32_t> evalTokens = lm.tokenizer->encode(text.evaluation, false);
    const int64_t seqLen = 128; // held-out windows
    const int64_t trainLen = qEnvironmentVariableIntValue("LRQ_LRQAT_SEQ") > 0
                                 ? qEnvironmentVariableIntValue("LRQ_LRQAT_SEQ")
                                 : 64;
    const int64_t steps = qEnvironmentVariableIntValue("LRQ_LRQAT_STEPS") > 0
                              ? qEnvironmentVariableIntValue("LRQ_LRQAT_STEPS")
                              : 4;
    const int64_t samples = qEnvironmentVariableIntValue("LRQ_LRQAT_SAMPLES") > 0
                                ? qEnvironmentVariableIntValue("LRQ_LRQAT_SAMPLES")
                                : 2;
    // Held-out perplexity is asserted finite only (the figures are for
    // reading), which one window shows; LRQ_LRQAT_EVAL_WINDOWS=8 for figures.
    const int64_t evalWindows = qEnvironmentVariableIntValue("LRQ_LRQAT_EVAL_WINDOWS") > 0
                                    ? qEnvironmentVariableIntValue("LRQ_LRQAT_EVAL_WINDOWS")
                                    : 1;
    const bool all = qEnvironmentVariableIntValue("LRQ_LRQAT_ALL") > 0;
    const double lr = qEnvironmentVariableIsSet("LRQ_LRQAT_LR")
                          ? qEnvironmentVariable("LRQ_LRQAT_LR").toDouble()
                          : 1e-3;
    const double lrScale = qEnvironmentVariableIsSet("LRQ_LRQAT_LR_SCALE")
                               ? qEnvironmentVariable("LRQ_LRQAT_LR_SCALE").toDouble()
                               : 1e-5;
    const CalibrationSet calib = makeCalibrationSet(calibTokens, samples, trainLen, 3, "jargon");
    if (all) {
      DecoderModel fp(lm.config, ModelWeights::fromHfTensors(lm.config, lm.tensors));
      const PerplexityResult r =
          evaluatePerplexity(fp, evalTokens, seqLen, nullptr, nullptr, evalWindows);
      qInfo("SmolLM2-135M FP: held-out perplexity %.3f (%lld windows of %lld)", r.perplexity,
            (long long)r.windows, (long long)seqLen);
    }
    struct Case {
      const char *name;
      GridSpec spec;
    };
    // The presets' grids with min/max steps named explicitly (their "auto"
    // would give LR-QAT's reference grid, symmetric with an Lp-4 search).
    auto minmax = [](GridSpec g) {
      g.init = StepInit::MinMax;
      return g;
    };
    std::vector<Case> cases = {
        {"W4A16 (asym per-channel)", minmax(presetScheme("W4A16").weight)},
        {"W3A16 (asym per-channel)", minmax(presetScheme("W3A16").weight)},
    };
    if (all) {
      cases.push_back({"W4 sym per-channel (paper)", makeSpec(4, true, Granularity::PerChannel)});
      cases.push_back({"W3 sym per-channel", makeSpec(3, true, Granularity::PerChannel)});
    }
    if (qEnvironmentVariableIsSet("LRQ_LRQAT_CASE")) // one case only, for ablations
      cases = {cases.at(size_t(qEnvironmentVariableIntValue("LRQ_LRQAT_CASE")))};
    for (const Case &c : cases) {
      const QuantScheme scheme = schemeFor(c.spec);
      DecoderModel rtn(lm.config, ModelWeights::fromHfTensors(lm.config, lm.tensors));
      quantizeModelRtn(rtn.weights(), rtn.config(), scheme);
      const double rtnPpl =
          evaluatePerplexity(rtn, evalTokens, seqLen, nullptr, nullptr, evalWindows).perplexity;
      const double rtnTrainLoss = meanLoss(rtn, calib.tokens);

      DecoderModel model(lm.config, ModelWeights::fromHfTensors(lm.config, lm.tensors));
      LossRecorder rec;
      rec.echo = all;
      QElapsedTimer timer;
      timer.start();
      const MethodReport r =
          runLrqat(model, scheme, calib,
                   {{"steps", steps}, {"batch_size", 1}, {"lr", lr}, {"lr_scale", lrScale}}, &rec);
      const double seconds = double(timer.elapsed()) / 1000.0;
      const double trainLoss = meanLoss(model, calib.tokens);
      const double ppl =
          evaluatePerplexity(model, evalTokens, seqLen, nullptr, nullptr, evalWindows).perplexity;
      int64_t learnable = 0;
      for (const LayerReport &l : r.layers)
        learnable += l.learnableParams;
      qInfo("%s: %lld steps of 1 x %lld tokens (%lld windows) in %.1f s (%.2f s/step, method's own "
            "%.2f), "
            "step loss %.4f -> %.4f; loss on the training windows RTN %.4f -> LR-QAT %.4f; "
            "held-out perplexity RTN %.3f, LR-QAT %.3f; %.3f%% codes moved; %lld learnable "
            "parameters (q_proj %lld); peak RSS %.0f MB",
            c.name, (long long)steps, (long long)trainLen, (long long)samples, seconds,
            seconds / double(steps), r.extra.at("seconds_per_step").get<double>(),
            rec.losses.front(), rec.losses.back(), rtnTrainLoss, trainLoss, rtnPpl, ppl,
            100.0 * r.extra.at("codes_changed_fraction").get<double>(), (long long)learnable,
            (long long)r.layers[0].learnableParams, peakRssMb());
      qInfo("%s", rec.logs.back().c_str());
      QCOMPARE(int64_t(r.layers.size()), lm.config.numLayers * 7);
      QCOMPARE(r.layers[0].learnableParams, int64_t(576 * 32 + 32 * 576 + 576));
      QVERIFY(std::isfinite(ppl));
      QVERIFY2(trainLoss < rtnTrainLoss,
               qPrintable(QString("%1 -> %2").arg(rtnTrainLoss).arg(trainLoss)));
    }
  }
};

QTEST_GUILESS_MAIN(TestLrqat)
#include "test_lrqat.moc"
