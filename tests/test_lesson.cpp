// The "Learn" playground's numbers (core/lesson) against independent
// computations: the engine's RTN on the same grid, LQER / L²QER factors from
// lqerFactorize and a full SVD, and the one-layer FlexRound / LRQ fit.
#include <QTest>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/common/error.h"
#include "core/lesson/lesson.h"
#include "core/quant/activation_stats.h"
#include "core/quant/grid.h"
#include "core/quant/lqer.h"
#include "test_support.h"

using namespace lrq;
using namespace lrq::lesson;

namespace {

at::Tensor tensorOf(const Matrix &m) {
  return at::from_blob(const_cast<float *>(m.values.data()), {m.rows, m.cols}, at::kFloat).clone();
}

quant::GridSpec specOf(int bits, int64_t groupSize, bool symmetric) {
  quant::GridSpec spec;
  spec.bits = bits;
  spec.symmetric = symmetric;
  spec.granularity = groupSize > 0 ? quant::Granularity::PerGroup : quant::Granularity::PerChannel;
  spec.groupSize = groupSize;
  return spec;
}

double fro(const at::Tensor &t) {
  return t.to(at::kDouble).norm().item<double>();
}

LessonLayer smallSynthetic() {
  SyntheticOptions o;
  o.rows = 384;
  o.cols = 320;
  o.tokens = 96;
  o.seed = 5;
  return syntheticLayer(o);
}

class Progress : public ProgressObserver {
public:
  void progress(int64_t done, int64_t total, const std::string &) override {
    ++calls;
    last = done;
    lastTotal = total;
  }
  int calls = 0;
  int64_t last = 0, lastTotal = 0;
};

class CancelAfter : public ProgressObserver {
public:
  CancelAfter(CancelToken *token, int64_t after) : token_(token), after_(after) {}
  void progress(int64_t done, int64_t, const std::string &) override {
    if (done >= after_)
      token_->cancel();
  }

private:
  CancelToken *token_;
  int64_t after_;
};

} // namespace

class TestLesson : public QObject {
  Q_OBJECT

private slots:
  void syntheticIsDeterministic() {
    const LessonLayer a = smallSynthetic(), b = smallSynthetic();
    QCOMPARE(a.weight.rows, int64_t(384));
    QCOMPARE(a.weight.cols, int64_t(320));
    QCOMPARE(a.activations.rows, int64_t(96));
    QVERIFY(a.weight.values == b.weight.values);
    QVERIFY(a.activations.values == b.activations.values);
    // A few columns are outliers: the largest column norm is far above the median.
    const at::Tensor norms = tensorOf(a.weight).norm(2, {0});
    QVERIFY(norms.max().item<double>() > 4.0 * norms.median().item<double>());
  }

  // Ŵ and E on the tiles are the engine's RTN on the same grid, bit for bit;
  // the figures are recomputed from that RTN.
  void gridMatchesRtn() {
    const LessonLayer layer = smallSynthetic();
    const at::Tensor w = tensorOf(layer.weight);
    for (int bits : {2, 3, 4, 8})
      for (int64_t g : {int64_t(0), int64_t(64), int64_t(32)})
        for (bool sym : {false, true}) {
          GridOptions o;
          o.bits = bits;
          o.groupSize = g;
          o.symmetric = sym;
          o.tileRow = 17;
          o.tileCol = 250;
          const GridLessonResult r = gridLesson(layer, o);
          const quant::GridSpec spec = specOf(bits, g, sym);
          const at::Tensor rtn = quant::roundToNearest(w, spec);
          QCOMPARE(r.quantized.row0, int64_t(17));
          QCOMPARE(r.quantized.col0, int64_t(250));
          for (int64_t i = 0; i < r.quantized.rows; ++i)
            for (int64_t j = 0; j < r.quantized.cols; ++j) {
              const double ref = rtn[17 + i][250 + j].item<double>();
              QCOMPARE(r.quantized.at(i, j), ref);
              QCOMPARE(r.error.at(i, j), double(w[17 + i][250 + j].item<float>() - float(ref)));
            }
          const at::Tensor e = (w - rtn).to(at::kDouble);
          const double mse = e.pow(2).mean().item<double>();
          QVERIFY(std::abs(r.mse - mse) <= 1e-9 * mse);
          const double sqnr = 10 * std::log10(w.to(at::kDouble).pow(2).sum().item<double>() /
                                              e.pow(2).sum().item<double>());
          QVERIFY(std::abs(r.sqnrDb - sqnr) < 1e-6);
          QVERIFY(std::abs(r.relativeError - fro(e) / fro(w)) < 1e-6 * r.relativeError);
          QCOMPARE(r.levels.size(), size_t(1) << bits);
          QCOMPARE(r.clippedFraction, 0.0); // min/max grids clip nothing
          // Every weight of the shown unit sits on one of its levels after rounding.
          for (int64_t j = 0; j < r.unitCols; j += 7) {
            const double v = rtn[r.unitRow][r.unitCol0 + j].item<double>();
            double nearest = 1e9;
            for (double l : r.levels)
              nearest = std::min(nearest, std::abs(l - v));
            QVERIFY2(nearest <= 1e-6 * (std::abs(v) + std::abs(r.step)),
                     qPrintable(QString("bits %1 g %2 sym %3: %4 is %5 from a level (step %6)")
                                    .arg(bits)
                                    .arg(g)
                                    .arg(sym)
                                    .arg(v)
                                    .arg(nearest)
                                    .arg(r.step)));
          }
        }
  }

  // Clipping: the levels shrink by the ratio and some weights fall outside.
  void clippingShrinksTheGrid() {
    const LessonLayer layer = smallSynthetic();
    GridOptions o;
    o.bits = 4;
    const GridLessonResult full = gridLesson(layer, o);
    o.clipRatio = 0.6;
    const GridLessonResult clipped = gridLesson(layer, o);
    QVERIFY(clipped.step < full.step);
    QVERIFY(clipped.clippedFraction > 0.0);
    const double span = full.levels.back() - full.levels.front();
    const double spanClipped = clipped.levels.back() - clipped.levels.front();
    QVERIFY(std::abs(spanClipped / span - 0.6) < 0.05);
  }

  // Lower bits cost more; smaller groups cost less.
  void errorFallsWithBitsAndGroups() {
    const LessonLayer layer = smallSynthetic();
    const ErrorSweep s = errorSweep(layer, false, 1.0);
    QCOMPARE(s.bits.size(), size_t(7));
    QCOMPARE(s.labels.size(), size_t(4));
    for (size_t g = 0; g < s.labels.size(); ++g)
      for (size_t b = 1; b < s.bits.size(); ++b)
        QVERIFY(s.relativeError[g][b] < s.relativeError[g][b - 1]);
    // g32 beats per-channel at every width (the outlier columns stretch whole rows).
    for (size_t b = 0; b < s.bits.size(); ++b)
      QVERIFY(s.relativeError[3][b] < s.relativeError[0][b]);
    // The sweep's 4-bit per-channel figure is the grid lesson's.
    GridOptions o;
    const GridLessonResult r = gridLesson(layer, o);
    QVERIFY(std::abs(s.relativeError[0][2] - r.relativeError) < 1e-9);
  }

  // Remaining error after rank k: the SVD identity and the engine's LQER /
  // L²QER factors give the same curve.
  void rankCurvesMatchLqer() {
    const LessonLayer layer = smallSynthetic();
    GridOptions o;
    o.bits = 3;
    o.maxRank = 40;
    const GridLessonResult r = gridLesson(layer, o);
    QVERIFY(r.activationScaled);
    QCOMPARE(r.lqerRemaining.size(), size_t(41));
    QCOMPARE(r.l2qerRemaining.size(), size_t(41));
    QCOMPARE(r.errorSpectrum.size(), size_t(320));

    const at::Tensor w = tensorOf(layer.weight).to(at::kDouble);
    const at::Tensor e =
        w - quant::roundToNearest(w.to(at::kFloat), specOf(3, 0, false)).to(at::kDouble);
    const at::Tensor sigma = at::linalg_svdvals(e);
    QVERIFY(std::abs(r.errorSpectrum[0] - sigma[0].item<double>()) < 1e-7 * r.errorSpectrum[0]);
    QVERIFY(std::abs(r.errorSpectrum[100] - sigma[100].item<double>()) < 1e-6 * r.errorSpectrum[0]);
    const at::Tensor x = tensorOf(layer.activations).to(at::kDouble);
    const at::Tensor s = quant::normaliseActivationScale(x.abs().mean(0));
    const double wNorm = fro(w), wsNorm = fro(w * s.unsqueeze(0));
    for (int64_t k : {0, 1, 4, 16, 40}) {
      // ||E − E_k||² = Σ_{i ≥ k} σ_i².
      const double tail =
          std::sqrt(sigma.narrow(0, k, sigma.size(0) - k).pow(2).sum().item<double>());
      QVERIFY2(
          std::abs(r.lqerRemaining[size_t(k)] - tail / wNorm) < 1e-6 * tail / wNorm,
          qPrintable(
              QString("k=%1 %2 vs %3").arg(k).arg(r.lqerRemaining[size_t(k)]).arg(tail / wNorm)));
      if (k == 0)
        continue;
      const quant::LqerFactors plain = quant::lqerFactorize(e, at::Tensor(), k);
      const double lqer = fro(e.t() - at::mm(plain.a, plain.b)) / wNorm;
      QVERIFY(std::abs(r.lqerRemaining[size_t(k)] - lqer) < 1e-6 * lqer);
      const quant::LqerFactors scaled = quant::lqerFactorize(e, s, k);
      const double l2 = fro(s.unsqueeze(1) * (e.t() - at::mm(scaled.a, scaled.b))) / wsNorm;
      QVERIFY2(
          std::abs(r.l2qerRemaining[size_t(k)] - l2) < 1e-6 * l2,
          qPrintable(QString("k=%1 %2 vs %3").arg(k).arg(r.l2qerRemaining[size_t(k)]).arg(l2)));
    }
    for (size_t k = 1; k < r.lqerRemaining.size(); ++k) {
      QVERIFY(r.lqerRemaining[k] <= r.lqerRemaining[k - 1]);
      QVERIFY(r.l2qerRemaining[k] <= r.l2qerRemaining[k - 1]);
    }
    QVERIFY(std::abs(r.lqerRemaining[0] - r.relativeError) < 1e-6 * r.relativeError);
    qInfo("synthetic W3: error left at k = 8: LQER %.3f, L2QER %.3f",
          r.lqerRemaining[8] / r.lqerRemaining[0], r.l2qerRemaining[8] / r.l2qerRemaining[0]);
    // The lesson's point: the activation-scaled error is nearly low rank (a few
    // outlier channels dominate it), the plain error is not.
    QVERIFY(r.l2qerRemaining[8] / r.l2qerRemaining[0] < 0.85);
    QVERIFY(r.lqerRemaining[8] / r.lqerRemaining[0] > 0.9);
    QVERIFY(r.l2qerRemaining[8] / r.l2qerRemaining[0] <
            r.lqerRemaining[8] / r.lqerRemaining[0] - 0.1);
  }

  void withoutActivationsTheCurvesCoincide() {
    LessonLayer layer = smallSynthetic();
    layer.activations = Matrix();
    const GridLessonResult r = gridLesson(layer, GridOptions());
    QVERIFY(!r.activationScaled);
    QCOMPARE(r.outputRelError, -1.0);
    QVERIFY(r.l2qerRemaining == r.lqerRemaining);
    QVERIFY(!r.scaleNote.empty());
  }

  void badOptionsThrow() {
    const LessonLayer layer = smallSynthetic();
    GridOptions o;
    o.bits = 1;
    QVERIFY_THROWS_EXCEPTION(lrq::Error, gridLesson(layer, o));
    o.bits = 4;
    o.clipRatio = 0.0;
    QVERIFY_THROWS_EXCEPTION(lrq::Error, gridLesson(layer, o));
  }

  // SmoothQuant on the synthetic layer: the identity in full precision, flat
  // activations afterwards, and a smaller A8 output error.
  void smoothQuantHelps() {
    const LessonLayer layer = smallSynthetic();
    ActivationOptions o;
    const ActivationLessonResult r = activationLesson(layer, o);
    QCOMPARE(r.tokens, int64_t(96));
    QCOMPARE(r.activationBits.size(), size_t(5));
    QCOMPARE(r.actAbsMax.size(), size_t(320));
    const at::Tensor w = tensorOf(layer.weight).to(at::kDouble);
    const at::Tensor x = tensorOf(layer.activations).to(at::kDouble);
    // Independent: s from the formula, X/s·(W·s)ᵀ = X Wᵀ, max |x_j / s_j|.
    const at::Tensor xMax = x.abs().amax(0), wMax = w.abs().amax(0);
    const at::Tensor s = xMax.sqrt() / wMax.sqrt();
    QVERIFY(at::allclose(at::mm(x / s, (w * s).t()), at::mm(x, w.t()), 1e-9, 1e-9));
    for (int64_t j : {0, 17, 200})
      QVERIFY(std::abs(r.actAbsMaxSmoothed[size_t(j)] -
                       (x.select(1, j).abs().max() / s[j]).item<double>()) <
              1e-5 * r.actAbsMaxSmoothed[size_t(j)]);
    auto ratio = [](const std::vector<double> &v) {
      return *std::max_element(v.begin(), v.end()) /
             (std::accumulate(v.begin(), v.end(), 0.0) / double(v.size()));
    };
    QVERIFY(ratio(r.actAbsMaxSmoothed) < 0.5 * ratio(r.actAbsMax)); // outliers flattened
    for (size_t b = 0; b < r.activationBits.size(); ++b) {
      QVERIFY(r.actOnlySmoothed[b] < r.actOnly[b]);
      if (b > 0)
        QVERIFY(r.actOnly[b] < r.actOnly[b - 1]);
    }
    // α = 1 moves all the range into the weights (every channel's max |x| is 1),
    // α = 0 all into the activations (every column's max |w| is 1).
    o.alpha = 1.0;
    for (double v : activationLesson(layer, o).actAbsMaxSmoothed)
      QVERIFY(std::abs(v - 1.0) < 1e-5);
    o.alpha = 0.0;
    for (double v : activationLesson(layer, o).weightAbsMaxSmoothed)
      QVERIFY(std::abs(v - 1.0) < 1e-5);
    qInfo("synthetic A8 output error: %.4f plain, %.4f with SmoothQuant; W8A8 %.4f / %.4f",
          r.actOnly[4], r.actOnlySmoothed[4], r.weightAndAct[4], r.weightAndActSmoothed[4]);
    LessonLayer bare = layer;
    bare.activations = Matrix();
    QVERIFY_THROWS_EXCEPTION(lrq::Error, activationLesson(bare, ActivationOptions()));
  }

  // No steps: both methods are RTN (LRQ's L2 starts at 0, FlexRound's S2 too).
  void zeroStepsIsRtn() {
    const LessonLayer layer = smallSynthetic();
    FitOptions o;
    o.steps = 0;
    const FitLessonResult r = fitLesson(layer, o);
    const at::Tensor w = tensorOf(layer.weight);
    const at::Tensor x = tensorOf(layer.activations);
    const at::Tensor rtn = quant::roundToNearest(w, specOf(3, 0, false));
    const double ref =
        at::mm(x.to(at::kDouble), (w - rtn).to(at::kDouble).t()).pow(2).sum().item<double>() /
        double(x.size(0));
    QVERIFY(std::abs(r.rtnLoss - ref) < 1e-5 * ref);
    QCOMPARE(r.lossFlexRound.size(), size_t(1));
    QVERIFY(std::abs(r.lossFlexRound[0] - r.rtnLoss) < 1e-6 * ref);
    QVERIFY(std::abs(r.lossLrq[0] - r.rtnLoss) < 1e-6 * ref);
    QCOMPARE(r.flippedFlexRound, 0.0);
    QCOMPARE(r.flippedLrq, 0.0);
    for (double v : r.scaleLrq.values)
      QCOMPARE(v, 0.0);
    QCOMPARE(r.paramsFlexRound, 384 * 320 + 384 + 384); // S2, r3, log s1
    QCOMPARE(r.paramsLrq, 384 * 16 + 16 * 320 + 384 + 320 + 384);
  }

  // Training lowers the loss, flips some roundings, and LRQ's scale has the
  // rank it was given while FlexRound's is full.
  void fitLowersTheLoss() {
    const LessonLayer layer = smallSynthetic();
    FitOptions o;
    o.steps = 80;
    o.lrqRank = 8;
    o.maxTokens = 64; // the other 32 rows are held out
    Progress progress;
    const FitLessonResult r = fitLesson(layer, o, &progress);
    QCOMPARE(r.lossFlexRound.size(), size_t(81));
    QCOMPARE(r.lossLrq.size(), size_t(81));
    QCOMPARE(progress.calls, 80);
    QCOMPARE(r.tokens, int64_t(64));
    QCOMPARE(r.heldOutTokens, int64_t(32));
    QCOMPARE(r.heldOutSteps.size(), size_t(9)); // 0, 10, ..., 70 and 80
    QCOMPARE(r.heldOutSteps.back(), 80);
    QCOMPARE(r.heldOutFlexRound.size(), size_t(9));
    QVERIFY(std::abs(r.heldOutFlexRound[0] - r.rtnHeldOutLoss) < 1e-6 * r.rtnHeldOutLoss);
    QVERIFY(std::abs(r.heldOutLrq[0] - r.rtnHeldOutLoss) < 1e-6 * r.rtnHeldOutLoss);
    QCOMPARE(progress.last, int64_t(80));
    qInfo("fit 384x320, 80 steps: RTN %.4g, FlexRound %.4g (%.2f%% flipped), LRQ r8 %.4g "
          "(%.2f%% flipped), %.2f s",
          r.rtnLoss, r.lossFlexRound.back(), 100 * r.flippedFlexRound, r.lossLrq.back(),
          100 * r.flippedLrq, r.seconds);
    QVERIFY(r.lossFlexRound.back() < 0.8 * r.rtnLoss);
    QVERIFY(r.lossLrq.back() < r.rtnLoss);
    QVERIFY(r.heldOutFlexRound.back() < r.rtnHeldOutLoss);
    QVERIFY(r.flippedFlexRound > 0.0 && r.flippedFlexRound < 0.5);
    QVERIFY(r.flippedLrq > 0.0 && r.flippedLrq < 0.5);
    QCOMPARE(r.scaleSpectrumLrq.size(), size_t(320));
    const double top = r.scaleSpectrumLrq[0];
    QVERIFY(top > 0.0);
    QVERIFY(r.scaleSpectrumLrq[8] < 1e-5 * top); // rank 8 exactly
    QVERIFY(r.scaleSpectrumFlexRound[8] > 0.05 * r.scaleSpectrumFlexRound[0]);
  }

  void fitCancels() {
    const LessonLayer layer = smallSynthetic();
    CancelToken token;
    CancelAfter observer(&token, 3);
    FitOptions o;
    o.steps = 100;
    QVERIFY_THROWS_EXCEPTION(lrq::Cancelled, fitLesson(layer, o, &observer, &token));
  }

  // The default model's down_proj of block 0, with its inputs on the
  // calibration text: the inputs reproduce the layer's output through the
  // decoder's own MLP (checked via the output error identity on real X).
  void modelLayer() {
    std::shared_ptr<LessonModel> model = LessonModel::open(test::defaultModelPath());
    QCOMPARE(model->numBlocks(), int64_t(30));
    QVERIFY(model->roles().size() == 7);
    QCOMPARE(QString::fromStdString(model->layerName(0, "down_proj")),
             QStringLiteral("model.layers.0.mlp.down_proj"));
    const LessonLayer layer = model->layer(0, "down_proj", 200);
    QCOMPARE(layer.weight.rows, int64_t(576));
    QCOMPARE(layer.weight.cols, int64_t(1536));
    QCOMPARE(layer.activations.rows, int64_t(200));
    QCOMPARE(layer.activations.cols, int64_t(1536));
    const at::Tensor x = tensorOf(layer.activations);
    QVERIFY(at::isfinite(x).all().item<bool>());
    QVERIFY(x.abs().max().item<double>() > 0.1);
    const LessonLayer q = model->layer(2, "q_proj", 64);
    QCOMPARE(q.weight.rows, int64_t(576));
    QCOMPARE(q.activations.cols, int64_t(576));
    QVERIFY_THROWS_EXCEPTION(lrq::Error, model->layer(99, "q_proj"));
    QVERIFY_THROWS_EXCEPTION(lrq::Error, model->layer(0, "nope"));

    GridOptions o;
    const GridLessonResult r = gridLesson(layer, o);
    QVERIFY(r.activationScaled);
    QVERIFY(r.outputRelError > 0.0 && r.outputRelError < 1.0);
    qInfo("down_proj 0 W4: rel err %.4f, output rel err %.4f, after rank 32 LQER %.4f, L2QER "
          "%.4f (of %.4f / %.4f)",
          r.relativeError, r.outputRelError, r.lqerRemaining[32], r.l2qerRemaining[32],
          r.lqerRemaining[0], r.l2qerRemaining[0]);
  }
};

QTEST_GUILESS_MAIN(TestLesson)
#include "test_lesson.moc"
