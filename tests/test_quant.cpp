// Weight grids, activation quantizers, schemes and RTN against the independent
// numpy reference in tests/reference/quant_reference.py.
#include <ATen/ATen.h>

#include <QElapsedTimer>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/io/model_loader.h"
#include "core/model/weights.h"
#include "core/quant/activation_quantizer.h"
#include "core/quant/grid.h"
#include "core/quant/rtn.h"
#include "core/quant/scheme.h"
#include "tensor_files.h"
#include "test_support.h"

using namespace lrq;
using namespace lrq::quant;

namespace {

using lrq::test::readRaw;
using lrq::test::writeRaw;

QJsonObject runRef(const QStringList &args) {
  QString error;
  const QByteArray out = lrq::test::runReference("quant_reference.py", args, &error);
  if (out.isEmpty())
    qWarning().noquote() << error;
  return QJsonDocument::fromJson(out).object();
}

const char *granName(Granularity g) {
  return granularityName(g);
}

// A test matrix with what makes grids interesting: rows of different scales, a
// heavy tail, an outlier, a row without negative values, a constant row and an
// all-zero row (zero range).
at::Tensor testMatrix(int64_t rows, int64_t cols, uint64_t seed, bool heavyTail) {
  at::manual_seed(seed);
  at::Tensor w = at::randn({rows, cols}) * (at::rand({rows, 1}) * 0.09 + 0.01);
  if (heavyTail) // Student-t like: heavy tails make clipping worthwhile
    w = w / (at::randn({rows, cols}).pow(2) + at::randn({rows, cols}).pow(2) + 0.2).sqrt();
  w[0][3] = 0.9;
  w[1] = w[1].abs();
  w[2].fill_(0.0375);
  w[3].zero_();
  return w.contiguous();
}

struct GridCase {
  GridSpec spec;
  QStringList refArgs(const QString &input, int64_t rows, int64_t cols,
                      const QString &prefix) const {
    return {QStringLiteral("grid"),
            input,
            QString::number(rows),
            QString::number(cols),
            QString::number(spec.bits),
            spec.fullRange   ? QStringLiteral("full")
            : spec.symmetric ? QStringLiteral("1")
                             : QStringLiteral("0"),
            QString::fromUtf8(granName(spec.granularity)),
            QString::number(spec.groupSize),
            QString::fromUtf8(stepInitName(spec.init)),
            QString::number(spec.clipSteps),
            QString::number(spec.clipNorm, 'g', 17),
            prefix};
  }
};

// Codes must agree exactly, except where the reference marks a near half-way
// point (float noise may round either way); there they may differ by one.
void compareCodes(const at::Tensor &codes, const at::Tensor &refCodes, const at::Tensor &tie,
                  int64_t *tieDiffs) {
  const at::Tensor diff = (codes - refCodes).abs();
  const at::Tensor bad = (diff > 0) & (tie == 0);
  QCOMPARE(bad.sum().item<int64_t>(), int64_t(0));
  QVERIFY(diff.max().item<int>() <= 1);
  *tieDiffs = (diff > 0).sum().item<int64_t>();
}

void compareValues(const at::Tensor &values, const at::Tensor &refValues, const at::Tensor &tie,
                   double tol = 1e-6) {
  const at::Tensor err = (values - refValues).abs();
  const at::Tensor bound = refValues.abs().clamp_min(1.0) * tol;
  const at::Tensor bad = (err > bound) & (tie == 0);
  if (bad.sum().item<int64_t>() != 0)
    qWarning() << "max value difference" << err.max().item<double>();
  QCOMPARE(bad.sum().item<int64_t>(), int64_t(0));
}

GridSpec makeSpec(int bits, bool sym, Granularity g, int64_t group, StepInit init) {
  GridSpec s;
  s.bits = bits;
  s.symmetric = sym;
  s.granularity = g;
  s.groupSize = group;
  s.init = init;
  return s;
}

void addGridRows(StepInit init, const std::vector<int> &bits) {
  QTest::addColumn<int>("bits");
  QTest::addColumn<int>("symmetry"); // 0 asymmetric, 1 symmetric, 2 symmetric full range
  QTest::addColumn<int>("granularity");
  QTest::addColumn<int>("group");
  for (int b : bits)
    for (int sym : {0, 1, 2})
      for (auto [g, group] : {std::pair<Granularity, int>{Granularity::PerTensor, 0},
                              {Granularity::PerChannel, 0},
                              {Granularity::PerGroup, 32},
                              {Granularity::PerGroup, 48}}) { // 256 = 5 x 48 + 16: ragged
        const QByteArray name = QStringLiteral("W%1 %2 %3%4 %5")
                                    .arg(b)
                                    .arg(sym == 2 ? "sym-full"
                                         : sym    ? "sym"
                                                  : "asym")
                                    .arg(granName(g))
                                    .arg(group ? QStringLiteral(" g%1").arg(group) : QString())
                                    .arg(stepInitName(init))
                                    .toUtf8();
        QTest::newRow(name.constData()) << b << sym << int(g) << group;
      }
}

} // namespace

class TestQuant : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  QString tmpPath(const QString &name) const { return tmp_.filePath(name); }

private slots:
  void initTestCase() {
    QVERIFY(tmp_.isValid());
    at::set_num_threads(2);
  }

  // at::round and np.round both round halves to even.
  void roundHalfToEven() {
    const std::vector<float> v{0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f, 2.4999998f};
    const QJsonObject ref = runRef({"round", "0.5", "1.5", "2.5", "-0.5", "-1.5", "-2.5", "3.5",
                                    QString::number(double(v.back()), 'g', 9)});
    const QJsonArray r = ref.value("rounded").toArray();
    QCOMPARE(r.size(), int(v.size()));
    const at::Tensor ours = at::round(at::tensor(v));
    const std::vector<double> byHand{0, 2, 2, -0.0, -2, -2, 4, 2};
    for (size_t i = 0; i < v.size(); ++i) {
      QCOMPARE(ours[int64_t(i)].item<double>(), byHand[i]);
      QCOMPARE(r[int(i)].toDouble(), byHand[i]);
    }
  }

  void gridMinMaxMatchesNumpy_data() { addGridRows(StepInit::MinMax, {2, 3, 4, 8}); }
  void gridMinMaxMatchesNumpy() { checkGridAgainstNumpy(StepInit::MinMax); }

  void gridClipSearchMatchesNumpy_data() { addGridRows(StepInit::ClippingSearch, {2, 3, 4, 8}); }
  void gridClipSearchMatchesNumpy() { checkGridAgainstNumpy(StepInit::ClippingSearch); }

  // A group size that does not divide the row: the last group is shorter
  // (96 with g64: 64 + 32) and behaves exactly like a grid of its own span.
  void raggedLastGroup() {
    at::manual_seed(11);
    const at::Tensor w = at::randn({4, 96});
    for (StepInit init : {StepInit::MinMax, StepInit::ClippingSearch})
      for (bool sym : {false, true}) {
        const GridSpec spec = makeSpec(3, sym, Granularity::PerGroup, 64, init);
        const GridParams p = computeGridParams(w, spec);
        QCOMPARE(p.scale.sizes().vec(), (std::vector<int64_t>{4, 2}));
        QCOMPARE(p.zeroPoint.sizes().vec(), (std::vector<int64_t>{4, 2}));
        // Each part quantized on its own as one group spanning it (g = its width).
        const at::Tensor head = w.narrow(1, 0, 64).contiguous();
        const at::Tensor tail = w.narrow(1, 64, 32).contiguous();
        const GridParams ph =
            computeGridParams(head, makeSpec(3, sym, Granularity::PerGroup, 64, init));
        const GridParams pt =
            computeGridParams(tail, makeSpec(3, sym, Granularity::PerGroup, 32, init));
        QVERIFY(at::equal(p.scale.narrow(1, 0, 1), ph.scale));
        QVERIFY(at::equal(p.scale.narrow(1, 1, 1), pt.scale));
        QVERIFY(at::equal(p.zeroPoint.narrow(1, 1, 1), pt.zeroPoint));
        const at::Tensor what = fakeQuantizeWeight(w, p, spec);
        QCOMPARE(what.sizes().vec(), w.sizes().vec());
        QVERIFY(at::equal(
            what.narrow(1, 64, 32),
            fakeQuantizeWeight(tail, pt, makeSpec(3, sym, Granularity::PerGroup, 32, init))));
        const at::Tensor codes = quantizeWeight(w, p, spec);
        QVERIFY(at::equal(dequantizeWeight(codes, p, spec), what));
        // The expanded step covers 64 + 32 columns.
        const at::Tensor sx = expandToWeight(p.scale, spec, 96);
        QCOMPARE(sx.sizes().vec(), w.sizes().vec());
        QVERIFY(at::equal(sx.narrow(1, 95, 1), p.scale.narrow(1, 1, 1)));
        QVERIFY(at::equal(sx.narrow(1, 63, 1), p.scale.narrow(1, 0, 1)));
        QVERIFY_THROWS_EXCEPTION(Error, expandToWeight(p.scale, spec, 200));
        // The clipping-search error per unit: 8 units, the tail ones over 32 elements.
        const at::Tensor e = unitLpError(w, what, spec, 2.0);
        QCOMPARE(e.size(0), int64_t(8));
        const double tailByHand = (w[0].narrow(0, 64, 32) - what[0].narrow(0, 64, 32))
                                      .to(at::kDouble)
                                      .pow(2)
                                      .sum()
                                      .item<double>();
        QVERIFY(std::abs(e[1].item<double>() - tailByHand) <= 1e-12 * tailByHand);
      }
    // A group wider than the row: one group per row.
    const GridSpec wide = makeSpec(4, false, Granularity::PerGroup, 128, StepInit::MinMax);
    const GridSpec channel = makeSpec(4, false, Granularity::PerChannel, 0, StepInit::MinMax);
    QVERIFY(at::equal(roundToNearest(w, wide), roundToNearest(w, channel)));

    GridSpec bad = makeSpec(4, false, Granularity::PerGroup, 64, StepInit::MinMax);
    bad.bits = 9;
    QVERIFY_THROWS_EXCEPTION(Error, computeGridParams(w, bad));
    bad.bits = 4;
    bad.groupSize = 0;
    QVERIFY_THROWS_EXCEPTION(Error, computeGridParams(w, bad));
    QVERIFY_THROWS_EXCEPTION(
        Error, computeGridParams(at::randn({96}),
                                 makeSpec(4, false, Granularity::PerChannel, 0, StepInit::MinMax)));
  }

  // Zero and constant ranges: finite everywhere, zeros stay exactly zero.
  void zeroRangesStayFinite() {
    at::Tensor w = at::zeros({6, 64});
    w[1].fill_(0.25);
    w[2].fill_(-3.0);
    w[4].slice(0, 0, 32).fill_(1e-30);
    for (int bits : {2, 4, 8})
      for (bool sym : {false, true})
        for (Granularity g :
             {Granularity::PerTensor, Granularity::PerChannel, Granularity::PerGroup})
          for (StepInit init : {StepInit::MinMax, StepInit::ClippingSearch}) {
            const GridSpec spec = makeSpec(bits, sym, g, 16, init);
            const GridParams p = computeGridParams(w, spec);
            const at::Tensor q = fakeQuantizeWeight(w, p, spec);
            QVERIFY(at::isfinite(p.scale).all().item<bool>());
            QVERIFY(at::isfinite(q).all().item<bool>());
            QCOMPARE(q[0].abs().max().item<float>(), 0.0f);
            QCOMPARE(q[3].abs().max().item<float>(), 0.0f);
            const at::Tensor codes = quantizeWeight(w, p, spec);
            QVERIFY(codes.min().item<int>() >= spec.qmin());
            QVERIFY(codes.max().item<int>() <= spec.qmax());
          }
    // Per-channel asymmetric: a constant row is represented exactly.
    const GridSpec spec = makeSpec(4, false, Granularity::PerChannel, 0, StepInit::MinMax);
    const at::Tensor q = roundToNearest(w, spec);
    QVERIFY(at::allclose(q[1], w[1], 0, 1e-7));
    QVERIFY(at::allclose(q[2], w[2], 0, 1e-6));
  }

  // round_STE passes the gradient through unchanged; clamp stops it outside the grid.
  void straightThroughGradients() {
    at::manual_seed(5);
    const at::Tensor x = (at::randn({7, 9}) * 4).requires_grad_(true);
    const at::Tensor y = roundSte(x);
    QVERIFY(at::equal(y.detach(), at::round(x.detach())));
    const at::Tensor upstream = at::randn({7, 9});
    (y * upstream).sum().backward();
    QVERIFY(at::equal(x.grad(), upstream));

    for (bool sym : {false, true}) {
      const GridSpec spec = makeSpec(3, sym, Granularity::PerGroup, 8, StepInit::MinMax);
      const at::Tensor w0 = at::randn({6, 32});
      // Half the range: many elements fall outside the grid and are clamped.
      GridParams p = gridParamsForFraction(w0, spec, 0.5);
      const at::Tensor w = w0.clone().requires_grad_(true);
      p.scale = p.scale.clone().requires_grad_(true);
      const at::Tensor what = fakeQuantizeWeight(w, p, spec);
      QVERIFY(at::equal(what.detach(), fakeQuantizeWeight(w0, p, spec)));
      const at::Tensor g = at::randn({6, 32});
      (what * g).sum().backward();
      // Inside: dŴ/dW = s · 1/s (the STE); outside: 0. Mask computed by hand.
      const at::Tensor s = expandToWeight(p.scale.detach(), spec, 32);
      const at::Tensor z = expandToWeight(p.zeroPoint, spec, 32);
      const at::Tensor unclamped = at::round(w0 / s) + z;
      const at::Tensor inside =
          (unclamped >= double(spec.qmin())) & (unclamped <= double(spec.qmax()));
      QVERIFY(inside.logical_not().sum().item<int64_t>() > 10);
      QVERIFY(inside.sum().item<int64_t>() > 10);
      QVERIFY(at::allclose(w.grad(), g * inside.to(at::kFloat), 1e-6, 1e-6));
      QVERIFY(at::isfinite(p.scale.grad()).all().item<bool>());
      QVERIFY(p.scale.grad().abs().sum().item<double>() > 0);
    }
  }

  void perTokenMatchesNumpy_data() {
    QTest::addColumn<int>("bits");
    QTest::newRow("A8") << 8;
    QTest::newRow("A4") << 4;
    QTest::newRow("A16") << 16;
  }
  void perTokenMatchesNumpy() {
    QFETCH(int, bits);
    at::manual_seed(11);
    const int64_t rows = 37, cols = 96;
    at::Tensor x = at::randn({rows, cols}) * (at::rand({rows, 1}) * 3 + 0.1) + 0.3;
    x[5] = x[5].abs() + 1; // positive token: range still starts at 0
    x[6].zero_();
    const QString in = tmpPath("act.bin"), out = tmpPath("act_ref.bin");
    writeRaw(in, x);
    const QJsonObject ref = runRef(
        {"pertoken", in, QString::number(rows), QString::number(cols), QString::number(bits), out});
    QVERIFY(!ref.isEmpty());
    const at::Tensor refValues = readRaw(out, at::kFloat, {rows, cols});
    const at::Tensor tie = readRaw(out + ".tie", at::kByte, {rows, cols});
    QVERIFY(refValues.defined() && tie.defined());
    const at::Tensor ours = fakeQuantizePerToken(x, bits);
    compareValues(ours, refValues, tie);
    // Any leading shape: each token on its own.
    const at::Tensor ours3 = fakeQuantizePerToken(x.reshape({1, rows, cols}), bits);
    QVERIFY(at::equal(ours3.reshape({rows, cols}), ours));
    const at::Tensor halfOnly = fakeQuantizePerToken(x.slice(0, 0, 10), bits);
    QVERIFY(at::equal(halfOnly, ours.slice(0, 0, 10)));
    // The dynamic quantizer and KV8 helper are the same per-token grid.
    ActivationQuantizer dyn(ActivationSpec{ActivationMode::PerTokenDynamic, bits});
    QVERIFY(!dyn.needsCalibration());
    QVERIFY(at::equal(dyn(x), ours));
    if (bits == 8) {
      QVERIFY(at::equal(quantizeKv(x), ours));
      QVERIFY(!at::equal(quantizeKv(x), x));
    }
    ActivationQuantizer none(ActivationSpec{ActivationMode::None, 8});
    QVERIFY(at::equal(none(x), x));
  }

  void perTensorStaticMatchesNumpy() {
    at::manual_seed(12);
    ActivationQuantizer q(ActivationSpec{ActivationMode::PerTensorStatic, 8});
    QVERIFY(q.needsCalibration());
    QVERIFY_THROWS_EXCEPTION(Error, q(at::ones({2, 2})));
    QVERIFY_THROWS_EXCEPTION(Error, q.freeze());
    QStringList calib;
    for (int i = 0; i < 3; ++i) {
      const at::Tensor batch = at::randn({4, 10, 48}) * (0.5 + i) + 0.7 * i;
      q.observe(batch);
      calib << tmpPath(QStringLiteral("calib%1.bin").arg(i));
      writeRaw(calib.back(), batch);
    }
    q.freeze();
    QVERIFY(q.frozen() && !q.needsCalibration());
    QVERIFY_THROWS_EXCEPTION(Error, q.observe(at::ones({2})));
    // Applied to new data reaching beyond the calibrated range (clamped).
    const at::Tensor x = at::randn({21, 48}) * 4;
    const QString in = tmpPath("static_x.bin"), out = tmpPath("static_ref.bin");
    writeRaw(in, x);
    QStringList args{"static", "8", out, in, "21", "48"};
    args << calib;
    const QJsonObject ref = runRef(args);
    QVERIFY(!ref.isEmpty());
    QCOMPARE(q.observedMin(), ref.value("min").toDouble());
    QCOMPARE(q.observedMax(), ref.value("max").toDouble());
    QCOMPARE(float(q.scale()), float(ref.value("scale").toDouble()));
    QCOMPARE(q.zeroPoint(), ref.value("zero_point").toDouble());
    const at::Tensor refValues = readRaw(out, at::kFloat, {21, 48});
    const at::Tensor tie = readRaw(out + ".tie", at::kByte, {21, 48});
    QVERIFY(refValues.defined() && tie.defined());
    const at::Tensor ours = q(x);
    compareValues(ours, refValues, tie);
    // Clamping really happened: the largest inputs lie outside the range.
    QVERIFY(x.max().item<double>() > q.observedMax());
    QVERIFY(ours.max().item<double>() <= q.observedMax() + q.scale());
    // A saved calibration gives the same quantizer.
    ActivationQuantizer restored(ActivationSpec{ActivationMode::PerTensorStatic, 8});
    restored.setStatic(q.scale(), q.zeroPoint());
    QVERIFY(at::equal(restored(x), ours));
    QVERIFY_THROWS_EXCEPTION(Error, restored.setStatic(0.0, 3));
  }

  void presetsAreTheIssuesSchemes() {
    const std::vector<std::string> expected{"W8A8",       "W4A8-KV8",   "W4A16",     "W3A16",
                                            "W4A16-g128", "W3A16-g128", "W2A16-g64", "gguf-q8_0",
                                            "gguf-q5_0",  "gguf-q4_0",  "gguf-q5_1", "gguf-q4_1",
                                            "gguf-q6_k",  "gguf-q4_k"};
    QCOMPARE(presetNames(), expected);
    const QuantScheme w8a8 = presetScheme("w8a8");
    QCOMPARE(w8a8.weight.bits, 8);
    QCOMPARE(w8a8.weight.granularity, Granularity::PerChannel);
    QCOMPARE(w8a8.activation.mode, ActivationMode::PerTensorStatic);
    QCOMPARE(w8a8.activation.bits, 8);
    QVERIFY(!w8a8.kv8);
    const QuantScheme w4a8 = presetScheme("W4a8-kv8");
    QCOMPARE(w4a8.name, std::string("W4A8-KV8"));
    QCOMPARE(w4a8.weight.bits, 4);
    QCOMPARE(w4a8.activation.mode, ActivationMode::PerTokenDynamic);
    QVERIFY(w4a8.kv8);
    const QuantScheme w3 = presetScheme("W3A16");
    QCOMPARE(w3.weight.granularity, Granularity::PerChannel);
    QCOMPARE(w3.activation.mode, ActivationMode::None);
    const QuantScheme g128 = presetScheme("w3a16-G128");
    QCOMPARE(g128.weight.bits, 3);
    QCOMPARE(g128.weight.granularity, Granularity::PerGroup);
    QCOMPARE(g128.weight.groupSize, int64_t(128));
    const QuantScheme g64 = presetScheme("W2A16-g64");
    QCOMPARE(g64.weight.bits, 2);
    QCOMPARE(g64.weight.groupSize, int64_t(64));
    for (const std::string &n : presetNames()) {
      const QuantScheme s = presetScheme(n);
      QVERIFY(s.layers.blocks.empty() && s.layers.linears.empty());
      QVERIFY(!s.layers.embeddings && !s.layers.lmHead);
    }
    try {
      presetScheme("W5A5");
      QFAIL("expected lrq::Error");
    } catch (const Error &e) {
      QVERIFY(QString::fromUtf8(e.what()).contains("W5A5"));
      QVERIFY(QString::fromUtf8(e.what()).contains("W2A16-g64"));
    }
  }

  void schemeJsonRoundTrip() {
    std::vector<QuantScheme> schemes;
    for (const std::string &n : presetNames())
      schemes.push_back(presetScheme(n));
    QuantScheme custom;
    custom.name = "my scheme";
    custom.weight = makeSpec(3, true, Granularity::PerGroup, 32, StepInit::ClippingSearch);
    custom.weight.clipSteps = 40;
    custom.weight.clipNorm = 2.0;
    custom.activation = {ActivationMode::PerTokenDynamic, 6};
    custom.kv8 = true;
    custom.layers.blocks = {0, 3, 29};
    custom.layers.linears = {"q_proj", "down_proj"};
    custom.layers.embeddings = true;
    custom.layers.lmHead = true;
    schemes.push_back(custom);
    for (const QuantScheme &s : schemes) {
      const std::string json = s.toJson(2);
      const QuantScheme back = QuantScheme::fromJson(json);
      QCOMPARE(back.toJson(2), json);
      QCOMPARE(back.name, s.name);
      QCOMPARE(back.weight.bits, s.weight.bits);
      QCOMPARE(back.weight.symmetric, s.weight.symmetric);
      QCOMPARE(back.weight.granularity, s.weight.granularity);
      QCOMPARE(back.weight.groupSize, s.weight.groupSize);
      QCOMPARE(back.weight.init, s.weight.init);
      QCOMPARE(back.weight.clipSteps, s.weight.clipSteps);
      QCOMPARE(back.weight.clipNorm, s.weight.clipNorm);
      QCOMPARE(back.activation.mode, s.activation.mode);
      QCOMPARE(back.activation.bits, s.activation.bits);
      QCOMPARE(back.kv8, s.kv8);
      QCOMPARE(back.layers.blocks, s.layers.blocks);
      QCOMPARE(back.layers.linears, s.layers.linears);
      QCOMPARE(back.layers.embeddings, s.layers.embeddings);
      QCOMPARE(back.layers.lmHead, s.layers.lmHead);
    }
    // Missing keys keep their defaults.
    const QuantScheme partial = QuantScheme::fromJson(R"({"weight": {"bits": 3}})");
    QCOMPARE(partial.weight.bits, 3);
    QCOMPARE(partial.weight.granularity, GridSpec().granularity);
    QCOMPARE(partial.activation.mode, ActivationMode::None);
  }

  void schemeJsonRejectsMalformed_data() {
    QTest::addColumn<QString>("json");
    QTest::addColumn<QString>("mentions");
    QTest::newRow("not json") << R"({"weight": )"
                              << "not valid JSON";
    QTest::newRow("top level array") << "[1, 2]"
                                     << "(top level)";
    QTest::newRow("unknown key") << R"({"wieght": {}})"
                                 << "unknown key 'wieght'";
    QTest::newRow("unknown nested key") << R"({"weight": {"bitz": 4}})"
                                        << "unknown key 'weight.bitz'";
    QTest::newRow("bits too large") << R"({"weight": {"bits": 9}})"
                                    << "weight.bits";
    QTest::newRow("bits as string") << R"({"weight": {"bits": "4"}})"
                                    << "weight.bits";
    QTest::newRow("bits fractional") << R"({"weight": {"bits": 4.5}})"
                                     << "weight.bits";
    QTest::newRow("bad granularity") << R"({"weight": {"granularity": "per-row"}})"
                                     << "weight.granularity";
    QTest::newRow("group without size") << R"({"weight": {"granularity": "per-group"}})"
                                        << "weight.group_size";
    QTest::newRow("negative group") << R"({"weight": {"group_size": -128}})"
                                    << "weight.group_size";
    QTest::newRow("bad init") << R"({"weight": {"init": "mse"}})"
                              << "weight.init";
    QTest::newRow("bad clip norm") << R"({"weight": {"clip_norm": 0}})"
                                   << "weight.clip_norm";
    QTest::newRow("bad activation mode") << R"({"activation": {"mode": "dynamic"}})"
                                         << "activation.mode";
    QTest::newRow("activation bits") << R"({"activation": {"bits": 1}})"
                                     << "activation.bits";
    QTest::newRow("kv8 not bool") << R"({"kv8": "yes"})"
                                  << "kv8";
    QTest::newRow("weight not object") << R"({"weight": 4})"
                                       << "weight";
    QTest::newRow("unknown linear") << R"({"layers": {"linears": ["qproj"]}})"
                                    << "layers.linears";
    QTest::newRow("bad blocks") << R"({"layers": {"blocks": "some"}})"
                                << "layers.blocks";
    QTest::newRow("negative block") << R"({"layers": {"blocks": [0, -1]}})"
                                    << "layers.blocks";
    QTest::newRow("unknown layers key") << R"({"layers": {"norms": true}})"
                                        << "layers.norms";
    QTest::newRow("name not string") << R"({"name": 3})"
                                     << "name";
  }
  void schemeJsonRejectsMalformed() {
    QFETCH(QString, json);
    QFETCH(QString, mentions);
    try {
      QuantScheme::fromJson(json.toStdString());
      QFAIL("expected lrq::Error");
    } catch (const Error &e) {
      const QString msg = QString::fromUtf8(e.what());
      QVERIFY2(msg.startsWith("scheme JSON: "), qPrintable(msg));
      QVERIFY2(msg.contains(mentions), qPrintable(msg));
      QVERIFY2(!msg.contains('\n'), qPrintable(msg));
    }
  }

  // RTN of real linears of the default model against numpy on the same weights.
  void rtnOnDefaultModelMatchesNumpy() {
    const LoadedModel m = loadModel(lrq::test::defaultModelPath());
    ModelWeights weights = ModelWeights::fromHfTensors(m.config, m.tensors);
    BlockWeights &b0 = weights.blocks.at(0);
    const at::Tensor q0 = b0.q.weight.clone(), down0 = b0.down.weight.clone();
    const at::Tensor k0 = b0.k.weight;
    const at::Tensor q1 = weights.blocks.at(1).q.weight;

    // W3 g128 on q_proj (576 columns): groups of 128,128,128,128,64, as numpy does.
    QuantScheme g128 = presetScheme("W3A16-g128");
    {
      ModelWeights copy = weights;
      BlockWeights &c0 = copy.blocks.at(0);
      c0.q.weight = q0.clone();
      g128.layers.blocks = {0};
      g128.layers.linears = {"q_proj"};
      const std::vector<LayerErrorStats> sq = quantizeModelRtn(copy, m.config, g128);
      QCOMPARE(int(sq.size()), 1);
      checkRealLayer(q0, c0.q.weight, g128.weight, sq[0], "q_proj W3 g128 (ragged)");
    }
    QVERIFY(at::equal(b0.q.weight, q0) && at::equal(b0.down.weight, down0));

    QuantScheme w4 = presetScheme("W4A16");
    w4.layers.blocks = {0};
    w4.layers.linears = {"q_proj"};
    const std::vector<LayerErrorStats> s4 = quantizeModelRtn(weights, m.config, w4);
    QCOMPARE(int(s4.size()), 1);
    QCOMPARE(s4[0].layer, std::string("q_proj"));
    QCOMPARE(s4[0].block, int64_t(0));
    QVERIFY(b0.k.weight.is_same(k0));                   // not selected
    QVERIFY(weights.blocks.at(1).q.weight.is_same(q1)); // not selected
    QVERIFY(!at::equal(b0.q.weight, q0));
    checkRealLayer(q0, b0.q.weight, w4.weight, s4[0], "q_proj W4 per-channel");

    g128.layers.blocks = {0};
    g128.layers.linears = {"down_proj"};
    const std::vector<LayerErrorStats> s3 = quantizeModelRtn(weights, m.config, g128);
    QCOMPARE(int(s3.size()), 1);
    checkRealLayer(down0, b0.down.weight, g128.weight, s3[0], "down_proj W3 g128");

    // More figures for the report: W3 per-channel / g64 on q_proj, and what the
    // clipping search gains there.
    for (const GridSpec &spec :
         {makeSpec(3, false, Granularity::PerChannel, 0, StepInit::MinMax),
          makeSpec(3, false, Granularity::PerGroup, 64, StepInit::MinMax),
          makeSpec(4, false, Granularity::PerChannel, 0, StepInit::ClippingSearch),
          makeSpec(3, false, Granularity::PerChannel, 0, StepInit::ClippingSearch),
          makeSpec(4, true, Granularity::PerChannel, 0, StepInit::MinMax),
          makeSpec(4, true, Granularity::PerChannel, 0, StepInit::ClippingSearch)}) {
      QElapsedTimer timer;
      timer.start();
      const at::Tensor what = roundToNearest(q0, spec);
      const qint64 ms = timer.elapsed();
      GridSpec mm = spec;
      mm.init = StepInit::MinMax;
      const double errClip = unitLpError(q0, what, spec, 2.4).sum().item<double>();
      const double errMinMax =
          unitLpError(q0, roundToNearest(q0, mm), spec, 2.4).sum().item<double>();
      QVERIFY(errClip <= errMinMax);
      qInfo().noquote() << QStringLiteral(
                               "block 0 q_proj %1: SQNR %2 dB, sum|e|^2.4 %3 (min/max %4), %5 ms")
                               .arg(QString::fromStdString(spec.describe()))
                               .arg(weightErrorStats(q0, what).sqnrDb, 0, 'f', 2)
                               .arg(errClip, 0, 'g', 5)
                               .arg(errMinMax, 0, 'g', 5)
                               .arg(ms);
    }
  }

  // The whole model with a preset: every block linear replaced, nothing else.
  void rtnWholeModel() {
    const LoadedModel m = loadModel(lrq::test::defaultModelPath());
    ModelWeights weights = ModelWeights::fromHfTensors(m.config, m.tensors);
    const at::Tensor emb = weights.tokenEmbedding, head = weights.lmHead;
    const at::Tensor norm = weights.blocks[5].attnNorm.weight;
    const at::Tensor up7 = weights.blocks[7].up.weight.clone();
    struct Counter : ProgressObserver {
      int64_t last = 0, total = 0;
      void progress(int64_t done, int64_t t, const std::string &) override {
        last = done;
        total = t;
      }
    } counter;
    QElapsedTimer timer;
    timer.start();
    const std::vector<LayerErrorStats> stats =
        quantizeModelRtn(weights, m.config, presetScheme("W4A16"), &counter);
    const qint64 ms = timer.elapsed();
    QCOMPARE(int64_t(stats.size()), m.config.numLayers * 7);
    QCOMPARE(counter.last, int64_t(stats.size()));
    QVERIFY(weights.tokenEmbedding.is_same(emb) && weights.lmHead.is_same(head));
    QVERIFY(weights.blocks[5].attnNorm.weight.is_same(norm));
    // Block 7's up_proj: the recorded stats are those of the new weight, and it
    // lies on a 16-level grid per row.
    const LayerErrorStats &up = stats[size_t(7 * 7 + 5)];
    QCOMPARE(up.layer, std::string("up_proj"));
    QCOMPARE(up.block, int64_t(7));
    const LayerErrorStats again = weightErrorStats(up7, weights.blocks[7].up.weight);
    QCOMPARE(up.mse, again.mse);
    for (int64_t r = 0; r < 8; ++r)
      QVERIFY(std::get<0>(at::_unique(weights.blocks[7].up.weight[r])).size(0) <= 16);
    double mean = 0, worst = 1e9;
    for (const LayerErrorStats &s : stats) {
      QVERIFY(std::isfinite(s.sqnrDb) && s.sqnrDb > 0);
      mean += s.sqnrDb / double(stats.size());
      worst = std::min(worst, s.sqnrDb);
    }
    qInfo().noquote() << QStringLiteral(
                             "W4A16 RTN of %1 linears in %2 ms: mean SQNR %3 dB, worst %4 dB")
                             .arg(stats.size())
                             .arg(ms)
                             .arg(mean, 0, 'f', 2)
                             .arg(worst, 0, 'f', 2);

    // The LM head alone (tied here): untied, the embedding stays full precision.
    QuantScheme headOnly = presetScheme("W8A8");
    headOnly.layers.blocks = {0};
    headOnly.layers.linears = {"k_proj"};
    headOnly.layers.lmHead = true;
    const std::vector<LayerErrorStats> hs = quantizeModelRtn(weights, m.config, headOnly);
    QCOMPARE(int(hs.size()), 2);
    QCOMPARE(hs[1].layer, std::string("lm_head"));
    QVERIFY(weights.tokenEmbedding.is_same(emb));
    QVERIFY(!weights.lmHead.is_same(emb));
    QVERIFY(hs[1].sqnrDb > 30);

    // W3A16-g128: 576-wide rows get a ragged last group of 64,
    // 1536-wide rows (down_proj) divide evenly.
    ModelWeights fresh = ModelWeights::fromHfTensors(m.config, m.tensors);
    const at::Tensor o3 = fresh.blocks[3].o.weight.clone();
    timer.restart();
    // (two blocks: every linear shape of the model; the whole model takes ~10 s more)
    QuantScheme w3g128 = presetScheme("W3A16-g128");
    w3g128.layers.blocks = {3, 29};
    const std::vector<LayerErrorStats> g3 = quantizeModelRtn(fresh, m.config, w3g128);
    const qint64 msG = timer.elapsed();
    QCOMPARE(int64_t(g3.size()), int64_t(14));
    double meanG = 0;
    for (const LayerErrorStats &s : g3) {
      QVERIFY(std::isfinite(s.sqnrDb) && s.sqnrDb > 0);
      meanG += s.sqnrDb / double(g3.size());
    }
    // The last group of a row (columns 512..575) holds at most 8 distinct values
    // and equals that span quantized on its own.
    const at::Tensor o3q = fresh.blocks[3].o.weight;
    QCOMPARE(o3q.sizes().vec(), o3.sizes().vec());
    GridSpec tailSpec = presetScheme("W3A16-g128").weight;
    tailSpec.groupSize = 64;
    QVERIFY(at::equal(o3q.narrow(1, 512, 64),
                      roundToNearest(o3.narrow(1, 512, 64).contiguous(), tailSpec)));
    for (int64_t r = 0; r < 4; ++r)
      QVERIFY(std::get<0>(at::_unique(o3q[r].narrow(0, 512, 64))).size(0) <= 8);
    qInfo().noquote() << QStringLiteral("W3A16-g128 RTN of %1 linears in %2 ms: mean SQNR %3 dB")
                             .arg(g3.size())
                             .arg(msG)
                             .arg(meanG, 0, 'f', 2);
  }

private:
  void checkGridAgainstNumpy(StepInit init) {
    QFETCH(int, bits);
    QFETCH(int, symmetry);
    QFETCH(int, granularity);
    QFETCH(int, group);
    GridSpec spec = makeSpec(bits, symmetry != 0, Granularity(granularity), group, init);
    spec.fullRange = symmetry == 2;
    const int64_t rows = 48, cols = 256;
    const at::Tensor w = testMatrix(rows, cols, 1000 + uint64_t(bits) * 10 + uint64_t(granularity),
                                    init == StepInit::ClippingSearch);
    const QString in = tmpPath("w.bin"), prefix = tmpPath("ref");
    writeRaw(in, w);
    const QJsonObject ref = runRef(GridCase{spec}.refArgs(in, rows, cols, prefix));
    QVERIFY(!ref.isEmpty());
    const int64_t units = ref.value("units").toInt();

    const GridParams p = computeGridParams(w, spec);
    QCOMPARE(p.scale.numel(), units);
    const at::Tensor codes = quantizeWeight(w, p, spec);
    const at::Tensor values = fakeQuantizeWeight(w, p, spec);
    const at::Tensor refCodes = readRaw(prefix + ".codes", at::kInt, {rows, cols});
    const at::Tensor refValues = readRaw(prefix + ".values", at::kFloat, {rows, cols});
    const at::Tensor refScale = readRaw(prefix + ".scale", at::kFloat, {units});
    const at::Tensor refZero = readRaw(prefix + ".zero", at::kFloat, {units});
    const at::Tensor refFraction = readRaw(prefix + ".fraction", at::kFloat, {units});
    const at::Tensor tie = readRaw(prefix + ".tie", at::kByte, {rows, cols});
    QVERIFY(refCodes.defined() && refValues.defined() && refScale.defined() && refZero.defined() &&
            refFraction.defined() && tie.defined());

    if (init == StepInit::ClippingSearch) {
      // The fraction numpy's brute force picks; a different pick is accepted
      // only where both fractions' errors agree to 1e-9 (a numerical tie).
      const at::Tensor losses =
          readRaw(prefix + ".losses", at::kDouble, {units, int64_t(spec.clipSteps)});
      QVERIFY(losses.defined());
      const at::Tensor ours = p.clipFraction.reshape({-1});
      int64_t differ = 0;
      for (int64_t u = 0; u < units; ++u) {
        const float a = ours[u].item<float>(), b = refFraction[u].item<float>();
        if (a == b)
          continue;
        ++differ;
        const auto index = [&](float f) {
          return int64_t(spec.clipSteps) - int64_t(std::lround(double(f) * spec.clipSteps));
        };
        const double la = losses[u][index(a)].item<double>();
        const double lb = losses[u][index(b)].item<double>();
        QVERIFY2(
            std::abs(la - lb) <= 1e-9 * std::max(lb, 1e-300),
            qPrintable(QStringLiteral("unit %1: fraction %2 vs numpy %3").arg(u).arg(a).arg(b)));
      }
      QCOMPARE(differ, int64_t(0));
      // Never worse than min/max, per unit, in our own error measure.
      GridSpec mm = spec;
      mm.init = StepInit::MinMax;
      const at::Tensor eClip = unitLpError(w, values, spec, spec.clipNorm);
      const at::Tensor eMinMax = unitLpError(w, roundToNearest(w, mm), spec, spec.clipNorm);
      QVERIFY((eClip <= eMinMax).all().item<bool>());
      const double gain = 1.0 - eClip.sum().item<double>() / eMinMax.sum().item<double>();
      QVERIFY(std::abs(eClip.sum().item<double>() - ref.value("chosen_error").toDouble()) <=
              1e-9 * ref.value("chosen_error").toDouble());
      qInfo().noquote() << QStringLiteral("%1: clip search lowers sum|e|^2.4 by %2%")
                               .arg(QString::fromStdString(spec.describe()))
                               .arg(100.0 * gain, 0, 'f', 1);
    }

    QVERIFY(at::equal(p.scale.reshape({-1}), refScale));
    QVERIFY(at::equal(p.zeroPoint.reshape({-1}), refZero));
    int64_t tieDiffs = 0;
    compareCodes(codes, refCodes, tie, &tieDiffs);
    compareValues(values, refValues, tie);
    if (tieDiffs)
      qInfo() << "codes differing at near half-way points:" << tieDiffs;
    // On the grid, and dequantize(codes) is the fake-quantized weight.
    QVERIFY(codes.min().item<int>() >= spec.qmin());
    QVERIFY(codes.max().item<int>() <= spec.qmax());
    QVERIFY(at::equal(dequantizeWeight(codes, p, spec), values));
    // Idempotent on the same grid.
    QVERIFY(at::equal(fakeQuantizeWeight(values, p, spec), values));
    QVERIFY(at::equal(quantizeWeight(values, p, spec), codes));
    // No more distinct values per unit than levels.
    // (the last unit: for per-group the last, possibly shorter, group of the last row)
    const at::Tensor lastUnit = spec.granularity == Granularity::PerGroup
                                    ? values[rows - 1].narrow(0, (units / rows - 1) * group,
                                                              cols - (units / rows - 1) * group)
                                    : values.reshape({units, -1})[units - 1];
    QVERIFY(std::get<0>(at::_unique(lastUnit)).size(0) <= spec.levels());
  }

  void checkRealLayer(const at::Tensor &original, const at::Tensor &quantized, const GridSpec &spec,
                      const LayerErrorStats &stats, const char *what) {
    const int64_t rows = original.size(0), cols = original.size(1);
    const QString in = tmpPath("real.bin"), prefix = tmpPath("real_ref");
    writeRaw(in, original);
    const QJsonObject ref = runRef(GridCase{spec}.refArgs(in, rows, cols, prefix));
    QVERIFY(!ref.isEmpty());
    const at::Tensor refValues = readRaw(prefix + ".values", at::kFloat, {rows, cols});
    const at::Tensor tie = readRaw(prefix + ".tie", at::kByte, {rows, cols});
    QVERIFY(refValues.defined() && tie.defined());
    compareValues(quantized, refValues, tie);
    const int64_t mismatches = (quantized != refValues).sum().item<int64_t>();
    QCOMPARE(stats.rows, rows);
    QCOMPARE(stats.cols, cols);
    QVERIFY(std::abs(stats.sqnrDb - ref.value("sqnr_db").toDouble()) < 1e-6);
    QVERIFY(std::abs(stats.mse - ref.value("mse").toDouble()) <= 1e-9 * stats.mse);
    qInfo().noquote() << QStringLiteral("block 0 %1: SQNR %2 dB (numpy %3), MSE %4, %5 of %6 "
                                        "values differ from numpy")
                             .arg(what)
                             .arg(stats.sqnrDb, 0, 'f', 3)
                             .arg(ref.value("sqnr_db").toDouble(), 0, 'f', 3)
                             .arg(stats.mse, 0, 'g', 4)
                             .arg(mismatches)
                             .arg(original.numel());
  }
};

QTEST_GUILESS_MAIN(TestQuant)
#include "test_quant.moc"
