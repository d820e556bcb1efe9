// Step initialisation of the weight grid (ALGORITHMS.md, "Uniform grid"): the
// LRQ / FlexRound reference's 2-D clipping search (clip-search-2d) against an
// explicit brute force in double precision; the "auto" init each method
// resolves to; and LR-QAT's gradient-norm clipping.
#include <ATen/ATen.h>

#include <QtTest>

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/quant/grid.h"
#include "core/quant/lrqat_layer.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"

using namespace lrq;
using namespace lrq::quant;

namespace {

GridSpec spec2d(int bits, Granularity g, int64_t group = 0) {
  GridSpec s;
  s.bits = bits;
  s.symmetric = false;
  s.granularity = g;
  s.groupSize = group;
  s.init = StepInit::ClippingSearch2D;
  return s;
}

// sum |x - s (clamp(round(x / s) + z, 0, n-1) - z)|^p in double, one unit.
double unitError(const std::vector<double> &x, double s, double z, int64_t levels, double p) {
  double e = 0.0;
  for (double v : x) {
    const double q = std::min(std::max(std::nearbyint(v / s) + z, 0.0), double(levels - 1));
    e += std::pow(std::abs(v - s * (q - z)), p);
  }
  return e;
}

struct Brute {
  double error = std::numeric_limits<double>::infinity();
  double scale = 1.0, zero = 0.0;
};

// Every candidate of the reference's search, in double: two-sided units try
// steps (hi - lo) (k / K) / (n - 1), k = 1..K, with every zero point
// 0..n-1; one-sided units the 1-D fractions (range [lo f, hi f]); zero units
// step 1.
Brute bruteForce(const std::vector<double> &x, int64_t levels, int steps, double p) {
  double lo = 0.0, hi = 0.0;
  for (double v : x) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  Brute best;
  if (lo == 0.0 && hi == 0.0) {
    best.error = unitError(x, 1.0, 0.0, levels, p);
    return best;
  }
  const bool twoSided = lo < 0.0 && hi > 0.0;
  for (int k = 1; k <= steps; ++k) {
    const double f = double(k) / double(steps);
    const double s = (hi - lo) * f / double(levels - 1);
    if (twoSided) {
      for (int64_t z = 0; z < levels; ++z) {
        const double e = unitError(x, s, double(z), levels, p);
        if (e < best.error)
          best = {e, s, double(z)};
      }
    } else {
      const double z = lo < 0.0 ? double(levels - 1) : 0.0;
      const double e = unitError(x, s, z, levels, p);
      if (e < best.error)
        best = {e, s, z};
    }
  }
  return best;
}

// Rows covering the cases: two-sided (skewed both ways, heavy tail, one
// outlier), one-sided positive and negative, constants, zeros.
at::Tensor testRows(int64_t cols, uint64_t seed) {
  at::manual_seed(int64_t(seed));
  at::Tensor w = at::randn({12, cols}, at::kFloat);
  w[1].add_(0.8);                            // mostly positive
  w[2].sub_(1.5);                            // mostly negative
  w[3].copy_(at::randn({cols}).pow(3));      // heavy tails
  w[4][cols / 2] = 9.0;                      // one outlier
  w[5].mul_(1e-3);                           // small values
  w[6].copy_(at::randn({cols}).abs());       // one-sided positive
  w[7].copy_(at::randn({cols}).abs().neg()); // one-sided negative
  w[8].fill_(0.3);                           // constant positive
  w[9].zero_();                              // zeros
  w[10].fill_(-2.0);                         // constant negative
  w[11].copy_(at::rand({cols}) * 2.0 - 0.1); // barely two-sided
  return w;
}

// The units of w under spec, as vectors (per-group: each row's groups, the
// last one shorter when the group size does not divide the row).
std::vector<std::vector<double>> unitsOf(const at::Tensor &w, const GridSpec &spec) {
  const at::Tensor d = w.to(at::kDouble).contiguous();
  const int64_t out = d.size(0), in = d.size(1);
  std::vector<std::vector<double>> units;
  auto slice = [&](int64_t r, int64_t c0, int64_t n) {
    std::vector<double> u(static_cast<size_t>(n));
    for (int64_t c = 0; c < n; ++c)
      u[size_t(c)] = d[r][c0 + c].item<double>();
    return u;
  };
  if (spec.granularity == Granularity::PerTensor) {
    std::vector<double> all;
    for (int64_t r = 0; r < out; ++r)
      for (double v : slice(r, 0, in))
        all.push_back(v);
    units.push_back(all);
  } else if (spec.granularity == Granularity::PerChannel) {
    for (int64_t r = 0; r < out; ++r)
      units.push_back(slice(r, 0, in));
  } else {
    for (int64_t r = 0; r < out; ++r)
      for (int64_t c0 = 0; c0 < in; c0 += spec.groupSize)
        units.push_back(slice(r, c0, std::min(spec.groupSize, in - c0)));
  }
  return units;
}

// Each unit's error at the grid params (flattened in unit order) in double.
std::vector<double> errorsAt(const std::vector<std::vector<double>> &units, const GridParams &p,
                             int64_t levels, double norm) {
  const at::Tensor s = p.scale.reshape({-1}).to(at::kDouble);
  const at::Tensor z = p.zeroPoint.reshape({-1}).to(at::kDouble);
  std::vector<double> e;
  for (size_t i = 0; i < units.size(); ++i)
    e.push_back(unitError(units[i], s[int64_t(i)].item<double>(), z[int64_t(i)].item<double>(),
                          levels, norm));
  return e;
}

} // namespace

class TestGridInit : public QObject {
  Q_OBJECT

private slots:
  void searchMatchesBruteForce_data() {
    QTest::addColumn<int>("bits");
    QTest::addColumn<int>("granularity");
    QTest::addColumn<int>("group");
    QTest::addColumn<double>("norm");
    QTest::addColumn<int>("kernel");
    for (auto [kernel, name] :
         {std::pair<Search2DKernel, const char *>{Search2DKernel::Batched, "batched"},
          {Search2DKernel::BranchAndBound, "branch and bound"}}) {
      const int k = int(kernel);
      for (int bits : {2, 3, 4}) {
        QTest::addRow("%s W%d per-channel", name, bits)
            << bits << int(Granularity::PerChannel) << 0 << 2.4 << k;
        QTest::addRow("%s W%d g16 (ragged)", name, bits)
            << bits << int(Granularity::PerGroup) << 16 << 2.4 << k;
      }
      QTest::addRow("%s W3 per-tensor", name) << 3 << int(Granularity::PerTensor) << 0 << 2.4 << k;
      QTest::addRow("%s W3 per-channel p=2", name)
          << 3 << int(Granularity::PerChannel) << 0 << 2.0 << k;
      QTest::addRow("%s W8 per-channel", name)
          << 8 << int(Granularity::PerChannel) << 0 << 2.4 << k;
    }
  }

  // The vectorised search finds the brute force's minimum (the same candidate,
  // or one of equal error); its error is at most min/max's and the 1-D
  // search's; one-sided units get exactly the 1-D search's step and zero point.
  void searchMatchesBruteForce() {
    QFETCH(int, bits);
    QFETCH(int, granularity);
    QFETCH(int, group);
    QFETCH(double, norm);
    QFETCH(int, kernel);
    const at::Tensor w = testRows(40, 5 + uint64_t(bits));
    GridSpec spec = spec2d(bits, Granularity(granularity), group);
    spec.clipNorm = norm;
    const int64_t levels = spec.levels();
    const Search2DKernel previous = setClipSearch2DKernel(Search2DKernel(kernel));
    const GridParams p = computeGridParams(w, spec);
    setClipSearch2DKernel(previous);
    QVERIFY(p.clipFraction.defined());
    const std::vector<std::vector<double>> units = unitsOf(w, spec);
    QCOMPARE(int64_t(units.size()), p.scale.numel());

    GridSpec minmax = spec, oneD = spec;
    minmax.init = StepInit::MinMax;
    oneD.init = StepInit::ClippingSearch;
    const GridParams pOneD = computeGridParams(w, oneD);
    const std::vector<double> found = errorsAt(units, p, levels, norm);
    const std::vector<double> errMinmax =
        errorsAt(units, computeGridParams(w, minmax), levels, norm);
    const std::vector<double> errOneD = errorsAt(units, pOneD, levels, norm);
    double sum2d = 0.0, sum1d = 0.0;
    for (size_t i = 0; i < units.size(); ++i) {
      const Brute b = bruteForce(units[i], levels, spec.clipSteps, norm);
      // Relative, and absolute for exactly representable units (float32 steps).
      double maxAbs = 0.0;
      for (double v : units[i])
        maxAbs = std::max(maxAbs, std::abs(v));
      const double tol =
          1e-5 * b.error + double(units[i].size()) * std::pow(1e-6 * maxAbs, norm) + 1e-300;
      const QByteArray what = QByteArray("unit ") + QByteArray::number(int(i)) + ": found " +
                              QByteArray::number(found[i], 'g', 12) + ", brute force " +
                              QByteArray::number(b.error, 'g', 12) + " (s " +
                              QByteArray::number(b.scale, 'g', 9) + ", z " +
                              QByteArray::number(b.zero) + ")";
      QVERIFY2(std::abs(found[i] - b.error) <= tol, what.constData());
      QVERIFY2(found[i] <= errMinmax[i] * (1 + 1e-6) + 1e-30, what.constData());
      QVERIFY2(found[i] <= errOneD[i] * (1 + 1e-6) + 1e-30, what.constData());
      // A candidate of the search: an integer zero point on the grid, and a
      // step that is k / 100 of the min/max step.
      const double z = p.zeroPoint.reshape({-1})[int64_t(i)].item<double>();
      QVERIFY(z == std::nearbyint(z) && z >= 0 && z <= double(levels - 1));
      double lo = 0.0, hi = 0.0;
      for (double v : units[i])
        lo = std::min(lo, v), hi = std::max(hi, v);
      const double s = p.scale.reshape({-1})[int64_t(i)].item<double>();
      if (hi > lo) {
        const double k = s / ((hi - lo) / double(levels - 1)) * spec.clipSteps;
        QVERIFY2(std::abs(k - std::nearbyint(k)) < 1e-3 && k >= 0.5, what.constData());
      }
      if (!(lo < 0 && hi > 0)) { // one-sided: the 1-D search's own result
        QCOMPARE(s, pOneD.scale.reshape({-1})[int64_t(i)].item<double>());
        QCOMPARE(z, pOneD.zeroPoint.reshape({-1})[int64_t(i)].item<double>());
      } else {
        sum2d += found[i];
        sum1d += errOneD[i];
      }
    }
    // The zero-point dimension pays off somewhere on these 40-wide rows at 2 to
    // 4 bits (on 16-element groups the extremes dominate and the 1-D optimum
    // is often the 2-D one too; at 8 bits min/max is already the best).
    if (spec.granularity != Granularity::PerGroup && bits <= 4)
      QVERIFY2(sum2d < sum1d, qPrintable(QString("%1 vs %2").arg(sum2d).arg(sum1d)));
    // Codes stay on the grid; zero units stay exactly zero.
    const at::Tensor codes = quantizeWeight(w, p, spec);
    QVERIFY(codes.min().item<int>() >= 0 && codes.max().item<int>() < levels);
    QVERIFY(at::isfinite(p.scale).all().item<bool>());
    QCOMPARE(fakeQuantizeWeight(w, p, spec)[9].abs().max().item<float>(), 0.0f);
  }

  // Chunks of any size give the same result: units, steps and elements split
  // (a 64-element budget splits every row of 300 into 5 pieces).
  void chunkingKeepsTheResult() {
    const Search2DKernel previousKernel = setClipSearch2DKernel(Search2DKernel::Batched);
    at::manual_seed(3);
    const at::Tensor w = at::randn({9, 300}) + at::linspace(-1, 1, 9).unsqueeze(1);
    for (Granularity g : {Granularity::PerChannel, Granularity::PerTensor}) {
      const GridSpec spec = spec2d(3, g);
      const GridParams whole = computeGridParams(w, spec);
      for (int64_t budget : {int64_t(64), int64_t(700), int64_t(5000)}) {
        const int64_t previous = setClipSearchChunkElements(budget);
        const GridParams chunked = computeGridParams(w, spec);
        setClipSearchChunkElements(previous);
        const at::Tensor e1 = unitLpError(w, fakeQuantizeWeight(w, whole, spec), spec, 2.4);
        const at::Tensor e2 = unitLpError(w, fakeQuantizeWeight(w, chunked, spec), spec, 2.4);
        QVERIFY(at::allclose(e1, e2, 1e-9, 0.0));
      }
    }
    // A row alone gives what it gets among the others.
    const GridSpec spec = spec2d(4, Granularity::PerChannel);
    const GridParams all = computeGridParams(w, spec);
    for (int64_t r = 0; r < w.size(0); ++r) {
      const GridParams one = computeGridParams(w.narrow(0, r, 1), spec);
      QCOMPARE(one.scale.item<float>(), all.scale[r][0].item<float>());
      QCOMPARE(one.zeroPoint.item<float>(), all.zeroPoint[r][0].item<float>());
    }
    // The branch and bound on the same rows: the same errors.
    setClipSearch2DKernel(Search2DKernel::BranchAndBound);
    const GridParams pruned = computeGridParams(w, spec);
    setClipSearch2DKernel(previousKernel);
    const at::Tensor e1 = unitLpError(w, fakeQuantizeWeight(w, all, spec), spec, 2.4);
    const at::Tensor e2 = unitLpError(w, fakeQuantizeWeight(w, pruned, spec), spec, 2.4);
    QVERIFY(at::allclose(e1, e2, 1e-6, 0.0));
  }

  // The 1-D search in row blocks, one thread each (which keeps its temporaries
  // in cache), finds exactly, bit for bit, what one pass of multi-threaded
  // operations over the whole tensor finds: every grid kind the search serves,
  // one-row blocks, a remainder block larger than the others, and a
  // per-tensor unit (one row, never split).
  void oneDimensionalBlocksKeepTheResult() {
    at::manual_seed(5);
    const at::Tensor w = at::randn({61, 96}) * at::linspace(0.1, 3, 96);
    const int64_t previous = setClipSearchBlockElements(int64_t(1) << 40);
    struct Case {
      Granularity granularity;
      bool symmetric;
      StepFormat format;
    };
    for (const Case &c : {Case{Granularity::PerChannel, true, StepFormat::Float32},
                          Case{Granularity::PerChannel, false, StepFormat::Float32},
                          Case{Granularity::PerGroup, true, StepFormat::Fp16},
                          Case{Granularity::PerGroup, false, StepFormat::Fp16Offset},
                          Case{Granularity::PerTensor, true, StepFormat::Float32}}) {
      GridSpec spec = spec2d(4, c.granularity);
      spec.init = StepInit::ClippingSearch;
      spec.symmetric = c.symmetric;
      spec.stepFormat = c.format;
      spec.groupSize = 32;
      spec.clipNorm = 4.0;
      spec.clipSteps = 20; // each candidate the same arithmetic; fewer keep the test quick
      setClipSearchBlockElements(int64_t(1) << 40);
      const GridParams whole = computeGridParams(w, spec);
      for (int64_t budget : {int64_t(1), int64_t(700), int64_t(5000)}) {
        setClipSearchBlockElements(budget);
        const GridParams blocked = computeGridParams(w, spec);
        QVERIFY(at::equal(blocked.scale, whole.scale));
        QVERIFY(at::equal(blocked.zeroPoint, whole.zeroPoint));
        QVERIFY(at::equal(blocked.clipFraction, whole.clipFraction));
      }
    }
    setClipSearchBlockElements(previous);
  }

  // The 1-D search with integer exponents (LR-QAT's p = 4 takes repeated
  // squaring instead of exp(p log)): the brute force's minimum over fractions.
  void oneDimensionalSearchIntegerNorms() {
    const at::Tensor w = testRows(40, 21);
    for (double norm : {4.0, 2.0, 3.0})
      for (bool symmetric : {true, false}) {
        GridSpec spec = spec2d(4, Granularity::PerChannel);
        spec.init = StepInit::ClippingSearch;
        spec.symmetric = symmetric;
        spec.clipNorm = norm;
        const int64_t levels = spec.levels();
        const GridParams p = computeGridParams(w, spec);
        const std::vector<std::vector<double>> units = unitsOf(w, spec);
        // The symmetric grid is the asymmetric formula with z = n/2.
        GridParams shifted = p;
        if (symmetric)
          shifted.zeroPoint = p.zeroPoint + double(levels / 2);
        const std::vector<double> found = errorsAt(units, shifted, levels, norm);
        for (size_t i = 0; i < units.size(); ++i) {
          double lo = 0.0, hi = 0.0;
          for (double v : units[i])
            lo = std::min(lo, v), hi = std::max(hi, v);
          double best = std::numeric_limits<double>::infinity();
          for (int k = 1; k <= spec.clipSteps; ++k) {
            const double f = double(k) / spec.clipSteps;
            double s, z;
            if (symmetric) {
              s = std::max(-lo, hi) * f / double(levels / 2 - 1);
              z = double(levels / 2);
            } else {
              s = (hi - lo) * f / double(levels - 1);
              z = s > 0 ? std::min(std::max(std::nearbyint(-lo * f / s), 0.0), double(levels - 1))
                        : 0.0;
            }
            if (!(s > 0))
              s = 1.0;
            best = std::min(best, unitError(units[i], s, z, levels, norm));
          }
          double maxAbs = 0.0;
          for (double v : units[i])
            maxAbs = std::max(maxAbs, std::abs(v));
          const double tol =
              1e-5 * best + double(units[i].size()) * std::pow(1e-6 * maxAbs, norm) + 1e-300;
          QVERIFY2(std::abs(found[i] - best) <= tol,
                   qPrintable(QString("p %1 %2 unit %3: found %4, brute force %5")
                                  .arg(norm)
                                  .arg(symmetric ? "sym" : "asym")
                                  .arg(i)
                                  .arg(found[i], 0, 'g', 12)
                                  .arg(best, 0, 'g', 12)));
        }
      }
  }

  void schemeJson() {
    QuantScheme s = QuantScheme::fromJson(R"({"weight": {"bits": 3, "init": "clip-search-2d"}})");
    QCOMPARE(s.weight.init, StepInit::ClippingSearch2D);
    QVERIFY(QString::fromStdString(s.describe()).contains("clip-search-2d"));
    QCOMPARE(QuantScheme::fromJson(s.toJson()).weight.init, StepInit::ClippingSearch2D);
    // No init: the method decides ("auto"); written back as "auto".
    s = QuantScheme::fromJson(R"({"weight": {"bits": 3}})");
    QCOMPARE(s.weight.init, StepInit::MethodDefault);
    QVERIFY(QString::fromStdString(s.toJson()).contains(R"("init":"auto")"));
    QCOMPARE(QuantScheme::fromJson(R"({"weight": {"init": "minmax"}})").weight.init,
             StepInit::MinMax);
    for (const std::string &name : presetNames())
      QCOMPARE(presetScheme(name).weight.init, StepInit::MethodDefault);
    // Refused: a zero-point search on a symmetric grid, 2-D or auto for activations.
    try {
      QuantScheme::fromJson(R"({"weight": {"symmetric": true, "init": "clip-search-2d"}})");
      QFAIL("expected lrq::Error");
    } catch (const Error &e) {
      QVERIFY2(QString(e.what()).contains("asymmetric"), e.what());
    }
    QVERIFY_THROWS_EXCEPTION(
        Error, QuantScheme::fromJson(R"({"activation": {"init": "clip-search-2d"}})"));
    QVERIFY_THROWS_EXCEPTION(Error, QuantScheme::fromJson(R"({"activation": {"init": "auto"}})"));
    GridSpec sym = spec2d(4, Granularity::PerChannel);
    sym.symmetric = true;
    QVERIFY_THROWS_EXCEPTION(Error, computeGridParams(at::randn({2, 8}), sym));
    GridSpec badNorm = spec2d(4, Granularity::PerChannel);
    badNorm.clipNorm = 0.0;
    QVERIFY_THROWS_EXCEPTION(Error, badNorm.validate());
    // Unresolved "auto" outside a method is min/max.
    GridSpec autoSpec = spec2d(4, Granularity::PerChannel);
    autoSpec.init = StepInit::MethodDefault;
    GridSpec minmax = autoSpec;
    minmax.init = StepInit::MinMax;
    const at::Tensor w = at::randn({4, 32});
    QVERIFY(at::equal(computeGridParams(w, autoSpec).scale, computeGridParams(w, minmax).scale));
  }

  // "auto" resolves to the reference implementations' init.
  void methodsResolveTheReferenceInit_data() {
    QTest::addColumn<QString>("method");
    QTest::addColumn<QString>("preset");
    QTest::addColumn<int>("init");
    QTest::addColumn<bool>("symmetric");
    QTest::addColumn<double>("norm");
    const int minmax = int(StepInit::MinMax), twoD = int(StepInit::ClippingSearch2D),
              oneD = int(StepInit::ClippingSearch);
    QTest::newRow("lrq W3A16") << "lrq"
                               << "W3A16" << twoD << false << 2.4;
    QTest::newRow("lrq W4A8-KV8") << "lrq"
                                  << "W4A8-KV8" << twoD << false << 2.4;
    QTest::newRow("lrq W4A16") << "lrq"
                               << "W4A16" << minmax << false << 2.4;
    QTest::newRow("lrq W3A16-g128") << "lrq"
                                    << "W3A16-g128" << minmax << false << 2.4;
    QTest::newRow("flexround W4A8-KV8") << "flexround"
                                        << "W4A8-KV8" << twoD << false << 2.4;
    QTest::newRow("flexround W3A16") << "flexround"
                                     << "W3A16" << minmax << false << 2.4;
    QTest::newRow("rtn W3A16") << "rtn"
                               << "W3A16" << minmax << false << 2.4;
    QTest::newRow("gptq W4A8-KV8") << "gptq"
                                   << "W4A8-KV8" << minmax << false << 2.4;
    QTest::newRow("lrqat W4A16") << "lrqat"
                                 << "W4A16" << oneD << true << 4.0;
    QTest::newRow("lrqat W4A8-KV8") << "lrqat"
                                    << "W4A8-KV8" << oneD << true << 4.0;
  }
  void methodsResolveTheReferenceInit() {
    QFETCH(QString, method);
    QFETCH(QString, preset);
    QFETCH(int, init);
    QFETCH(bool, symmetric);
    QFETCH(double, norm);
    const std::unique_ptr<QuantMethod> m = createMethod(method.toStdString());
    const QuantScheme scheme = presetScheme(preset.toStdString());
    const QuantScheme resolved = resolveReferenceGrid(*m, scheme);
    QCOMPARE(int(resolved.weight.init), init);
    QCOMPARE(resolved.weight.symmetric, symmetric);
    QCOMPARE(resolved.weight.bits, scheme.weight.bits);
    QCOMPARE(resolved.weight.granularity, scheme.weight.granularity);
    if (resolved.weight.searchesClipping()) {
      QCOMPARE(resolved.weight.clipSteps, 100);
      QCOMPARE(resolved.weight.clipNorm, norm);
    }
    // The recorded scheme names the init actually used.
    QCOMPARE(QuantScheme::fromJson(resolved.toJson()).weight.init, StepInit(init));
    // A scheme that names its init keeps it, asymmetric LR-QAT grids included.
    for (StepInit named : {StepInit::MinMax, StepInit::ClippingSearch}) {
      QuantScheme explicitInit = scheme;
      explicitInit.weight.init = named;
      const QuantScheme kept = resolveReferenceGrid(*m, explicitInit);
      QCOMPARE(kept.weight.init, named);
      QCOMPARE(kept.weight.symmetric, scheme.weight.symmetric);
    }
  }

  // torch's clip_grad_norm_ over A, B and s of every layer: the total norm is
  // the 2-norm of all gradient elements together, and after clipping it is 1.
  void gradientNormClipping() {
    at::manual_seed(9);
    auto make = [](int64_t out, int64_t in, int64_t r) {
      LrqatGradients g;
      g.a = at::randn({out, r});
      g.b = at::randn({r, in}) * 3.0;
      g.scale = at::randn({out, 1}) * 0.1;
      return g;
    };
    std::vector<LrqatGradients> grads = {make(8, 12, 4), make(5, 7, 2), LrqatGradients{}};
    auto totalNorm = [](const std::vector<LrqatGradients> &gs) { // independent: one vector
      std::vector<at::Tensor> flat;
      for (const LrqatGradients &g : gs)
        for (const at::Tensor &t : {g.a, g.b, g.scale})
          if (t.defined())
            flat.push_back(t.reshape({-1}).to(at::kDouble));
      return at::cat(flat).norm().item<double>();
    };
    const std::vector<LrqatGradients> before = {
        {grads[0].a.clone(), grads[0].b.clone(), grads[0].scale.clone()},
        {grads[1].a.clone(), grads[1].b.clone(), grads[1].scale.clone()},
        {}};
    const double expected = totalNorm(grads);
    QVERIFY(expected > 1.0);
    const double total = clipGradientNorm(grads, 1.0);
    QVERIFY(std::abs(total - expected) <= 1e-9 * expected);
    QVERIFY(std::abs(totalNorm(grads) - 1.0) < 1e-5);
    // One factor for every tensor: directions kept.
    const double factor = 1.0 / (expected + 1e-6);
    for (size_t i = 0; i < 2; ++i)
      QVERIFY(at::allclose(grads[i].b, before[i].b * factor, 1e-6, 1e-7));
    QVERIFY(at::allclose(grads[1].scale, before[1].scale * factor, 1e-6, 1e-9));
    // Below the limit, or with clipping off: untouched.
    const at::Tensor a0 = grads[0].a.clone();
    QVERIFY(std::abs(clipGradientNorm(grads, 2.0) - 1.0) < 1e-5);
    QVERIFY(at::equal(grads[0].a, a0));
    std::vector<LrqatGradients> big = {make(4, 4, 2)};
    big[0].a.mul_(100.0);
    const at::Tensor bigA = big[0].a.clone();
    clipGradientNorm(big, 0.0);
    QVERIFY(at::equal(big[0].a, bigA));
  }
};

QTEST_GUILESS_MAIN(TestGridInit)
#include "test_grid_init.moc"
