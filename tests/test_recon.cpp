// Block-wise reconstruction (core/recon) and the methods built on it
// (FlexRound, LRQ, the learned-step ablation). Independent checks: zero-
// initialised layers against RTN bit for bit, their gradients against the
// hand-derived formulas, full-rank LRQ against FlexRound, the engine's losses
// against a direct computation with RTN weights, Adam's first step against
// -lr·sign(g) of an independently computed gradient.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/function.h>

#include <QDir>
#include <QElapsedTimer>
#include <QTemporaryDir>
#include <QtTest>

#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/common/progress.h"
#include "core/data/default_assets.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/export_glue.h"
#include "core/quant/grid.h"
#include "core/quant/learned_rounding.h"
#include "core/quant/method.h"
#include "core/quant/rtn.h"
#include "core/quant/scheme.h"
#include "core/recon/adam.h"
#include "core/recon/block_reconstructor.h"
#include "decoder_test_models.h"
#include "test_support.h"

using namespace lrq;
using namespace lrq::quant;

namespace {

GridSpec makeSpec(int bits, bool symmetric, Granularity g, int64_t groupSize,
                  StepInit init = StepInit::MinMax) {
  GridSpec s;
  s.bits = bits;
  s.symmetric = symmetric;
  s.granularity = g;
  s.groupSize = groupSize;
  s.init = init;
  return s;
}

QuantScheme weightOnly(const GridSpec &spec) {
  QuantScheme s;
  s.name = "test";
  s.weight = spec;
  return s;
}

at::Tensor param(const LearnedRoundingLayer &layer, const std::string &name) {
  for (const auto &[n, p] : layer.parameters())
    if (n == name)
      return p;
  return at::Tensor();
}

void setParam(const LearnedRoundingLayer &layer, const std::string &name, const at::Tensor &v) {
  at::NoGradGuard noGrad;
  param(layer, name).copy_(v);
}

// Every block linear's weight, cloned.
std::vector<at::Tensor> linearWeights(DecoderModel &model) {
  std::vector<at::Tensor> out;
  for (BlockWeights &b : model.weights().blocks)
    for (const auto &entry : blockLinears(model.config(), b))
      out.push_back(entry.second->weight.clone());
  return out;
}

bool sameWeights(const std::vector<at::Tensor> &a, const std::vector<at::Tensor> &b) {
  if (a.size() != b.size())
    return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!at::equal(a[i], b[i]))
      return false;
  return true;
}

// Records every event as a string, in order; optional hook per iteration.
struct Recorder : ProgressObserver {
  std::vector<std::string> events;
  std::vector<std::vector<double>> curves;
  std::function<void(int, int)> onIteration;
  void started(const std::string &task, int64_t total) override {
    events.push_back("started " + task + " " + std::to_string(total));
  }
  void blockStarted(int block, int count) override {
    events.push_back("block " + std::to_string(block) + "/" + std::to_string(count));
    if (int(curves.size()) <= block)
      curves.resize(size_t(block) + 1);
  }
  void iterationLoss(int block, int it, double loss) override {
    events.push_back("iter " + std::to_string(block) + " " + std::to_string(it));
    curves[size_t(block)].push_back(loss);
    if (onIteration)
      onIteration(block, it);
  }
  void blockFinished(int block, double, double, double) override {
    events.push_back("done " + std::to_string(block));
  }
  std::vector<std::pair<double, double>> heldout; // by block: initial, final
  void blockHeldOut(int block, double initial, double final) override {
    if (int(heldout.size()) <= block)
      heldout.resize(size_t(block) + 1, {-1.0, -1.0});
    heldout[size_t(block)] = {initial, final};
  }
  void finished() override { events.push_back("finished"); }
  void log(LogLevel level, const std::string &message) override {
    if (level == LogLevel::Debug && qEnvironmentVariableIsSet("LRQ_TEST_VERBOSE"))
      qInfo().noquote() << QString::fromStdString(message);
  }
};

MethodReport runMethod(const std::string &name, DecoderModel &model, const QuantScheme &scheme,
                       const at::Tensor &tokens, const nlohmann::json &user,
                       const std::string &workDir = "", ProgressObserver *observer = nullptr,
                       const CancelToken *cancel = nullptr, uint64_t seed = 0,
                       const at::Tensor &heldout = {}) {
  std::unique_ptr<QuantMethod> method = createMethod(name);
  CalibrationSet calibration{tokens, "test", heldout};
  // "resume" is how a run starts, not a hyperparameter: the job adds it after merging.
  nlohmann::json hyper = user;
  const bool resume = hyper.is_object() && hyper.value("resume", false);
  if (hyper.is_object())
    hyper.erase("resume");
  nlohmann::json merged = mergeHyperparameters(*method, hyper);
  if (resume)
    merged["resume"] = true;
  MethodContext ctx{model, scheme, calibration, merged, seed, observer, cancel, workDir};
  return method->run(ctx);
}

// A layer the test keeps a handle on after the engine is done with it.
struct Shared : recon::LearnableLayer {
  std::shared_ptr<LearnedRoundingLayer> inner;
  std::vector<std::pair<std::string, at::Tensor>> parameters() const override {
    return inner->parameters();
  }
  at::Tensor weight() const override { return inner->weight(); }
};

double mean(const std::vector<double> &v, size_t from, size_t count) {
  double s = 0;
  for (size_t i = from; i < from + count; ++i)
    s += v[i];
  return s / double(count);
}

} // namespace

class TestRecon : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  lrq::test::TinyModel tiny_;

  DecoderModel tinyModel() const {
    std::map<std::string, at::Tensor> tensors;
    for (const auto &[k, v] : tiny_.tensors)
      tensors[k] = v.clone();
    return DecoderModel(tiny_.config, ModelWeights::fromHfTensors(tiny_.config, tensors));
  }
  at::Tensor tinyTokens(int64_t samples, int64_t seqLen) const {
    at::Generator gen = at::detail::createCPUGenerator(7);
    return at::randint(tiny_.config.vocabSize, {samples, seqLen}, gen, at::kLong);
  }
  QString dir(const QString &name) const { return tmp_.filePath(name); }

private slots:
  void initTestCase() {
    QVERIFY(tmp_.isValid());
    QString error;
    const QStringList names = lrq::test::writeTinyModels(tmp_.filePath("tiny"), &error);
    QVERIFY2(names.contains("llama_gqa"), qPrintable(error));
    tiny_ = lrq::test::readTinyModel(tmp_.filePath("tiny"), "llama_gqa");
    QVERIFY(!tiny_.tensors.empty());
  }

  void methodsAreRegistered() {
    const std::vector<std::string> names = methodNames();
    for (const char *n : {"flexround", "lrq", "rtn-learned-step"}) {
      QVERIFY(std::find(names.begin(), names.end(), n) != names.end());
      auto m = createMethod(n);
      QCOMPARE(m->name(), std::string(n));
      QVERIFY(!m->help().empty());
      for (const char *key : {"iters", "lr", "batch_size", "cache_mb"})
        QVERIFY(m->defaults().contains(key));
      QVERIFY(m->canResume());
      QVERIFY(m->trainsBlocks());
    }
    QCOMPARE(createMethod("lrq")->defaults().at("lr").get<double>(), 9e-4);
    QCOMPARE(createMethod("flexround")->defaults().at("lr").get<double>(), 3e-3);
    QVERIFY(createMethod("lrq")->defaults().contains("rank"));
  }

  // S2 = r3 = L2 = c3 = δ = 0: Ŵ is the RTN weight bit for bit, on every grid;
  // the first gradients match the hand-derived formulas.
  void zeroInitialisedLayersEqualRtn() {
    at::Generator gen = at::detail::createCPUGenerator(11);
    const std::vector<GridSpec> specs = {
        makeSpec(4, false, Granularity::PerChannel, 0),
        makeSpec(3, true, Granularity::PerChannel, 0, StepInit::ClippingSearch),
        makeSpec(3, false, Granularity::PerChannel, 0, StepInit::ClippingSearch),
        makeSpec(4, false, Granularity::PerGroup, 32),
        makeSpec(2, false, Granularity::PerGroup, 16, StepInit::ClippingSearch),
        makeSpec(8, true, Granularity::PerTensor, 0)};
    for (const std::vector<int64_t> &shape :
         std::vector<std::vector<int64_t>>{{48, 96}, {96, 64}}) {
      const at::Tensor w = at::randn(shape, gen) * 0.05;
      for (const GridSpec &spec : specs) {
        const QString what = QString::fromStdString(spec.describe()) +
                             QStringLiteral(" [%1,%2]").arg(shape[0]).arg(shape[1]);
        const at::Tensor rtn = roundToNearest(w, spec);
        std::vector<std::unique_ptr<LearnedRoundingLayer>> layers;
        layers.push_back(makeFlexRoundLayer(w, spec));
        layers.push_back(makeLrqLayer(w, spec, 0, 3));
        layers.push_back(makeLrqLayer(w, spec, 1000, 4)); // full rank
        layers.push_back(makeLearnedStepLayer(w, spec));
        for (const auto &layer : layers) {
          const at::Tensor what1 = layer->weight(); // parameters require grad: STE path
          QVERIFY2(what1.requires_grad(), qPrintable(what));
          QVERIFY2(at::equal(what1.detach(), rtn), qPrintable(what));
          at::NoGradGuard noGrad;
          QVERIFY2(at::equal(layer->weight(), rtn), qPrintable(what));
        }

        // Gradients of sum(Ŵ) at the start, by hand: with u = W / s the
        // unclamped code, inside = (round(u) + z within the grid),
        //   dŴ/dE = -W·inside, so  dS2 = -W·inside, dr3 = row sums, dc3 = column sums,
        //   dL2 = (-W·inside) U2ᵀ, dU2 = L2ᵀ(...) = 0,  dδ = Σ_row (Ŵ - W·inside).
        const GridParams p = computeGridParams(w, spec);
        const at::Tensor s = expandToWeight(p.scale, spec, w.size(1));
        const at::Tensor z = expandToWeight(p.zeroPoint, spec, w.size(1));
        const at::Tensor u = at::round(w / s) + z;
        const at::Tensor inside =
            ((u >= double(spec.qmin())) & (u <= double(spec.qmax()))).to(at::kFloat);
        const at::Tensor dE = -w * inside;
        auto rowsOf = [&](const at::Tensor &perElement) {
          // Σ over each quantization unit, shaped like the steps.
          if (spec.granularity == Granularity::PerTensor)
            return perElement.sum().reshape({1, 1});
          if (spec.granularity == Granularity::PerChannel)
            return perElement.sum(1, true);
          return perElement.reshape({w.size(0), -1, spec.groupSize}).sum(2);
        };
        auto close = [](const at::Tensor &a, const at::Tensor &b) {
          return at::allclose(a, b, 1e-4, 1e-5);
        };
        auto &flex = *layers[0];
        flex.weight().sum().backward();
        QVERIFY2(close(param(flex, "S2").grad(), dE), qPrintable(what));
        QVERIFY2(close(param(flex, "r3").grad(), dE.sum(1, true)), qPrintable(what));
        QVERIFY2(close(param(flex, "log_s1").grad(), rowsOf(rtn - w * inside)), qPrintable(what));
        auto &lrq = *layers[1];
        lrq.weight().sum().backward();
        QVERIFY2(close(param(lrq, "L2").grad(), at::mm(dE, param(lrq, "U2").detach().t())),
                 qPrintable(what));
        QVERIFY2(at::equal(param(lrq, "U2").grad(), at::zeros_like(param(lrq, "U2"))),
                 qPrintable(what));
        QVERIFY2(close(param(lrq, "c3").grad(), dE.sum(0, true)), qPrintable(what));
        QVERIFY2(close(param(lrq, "r3").grad(), dE.sum(1, true)), qPrintable(what));
      }
    }
  }

  // Away from the start (random S2, r3, L2, U2, c3 and δ; codes pushed off the
  // grid on both sides), FlexRound's and LRQ's Ŵ and gradients against the
  // header's formula written here as tensor ops under autograd:
  //   Ŵ = s1 (clamp(roundSte(W / (s1 e^E)) + z, qmin, qmax) − z),  s1 = s0 e^δ.
  // Ŵ must be the same bits, the gradients equal to float rounding. The layers
  // take the one-pass kernel on the CPU (checked by their autograd node).
  void onePassWeightMatchesAutogradFormula() {
    at::Generator gen = at::detail::createCPUGenerator(23);
    GridSpec halfSteps = makeSpec(4, false, Granularity::PerGroup, 32);
    halfSteps.stepFormat = StepFormat::Fp16;
    const std::vector<GridSpec> specs = {
        makeSpec(3, false, Granularity::PerChannel, 0),
        makeSpec(4, true, Granularity::PerChannel, 0),
        makeSpec(4, false, Granularity::PerGroup, 32), // 100 = 3 x 32 + a ragged 4
        makeSpec(2, false, Granularity::PerGroup, 16, StepInit::ClippingSearch),
        makeSpec(8, true, Granularity::PerTensor, 0),
        halfSteps};
    const at::Tensor w = at::randn({40, 100}, gen) * 0.05;
    const at::Tensor upstream = at::randn({40, 100}, gen); // dL/dŴ
    for (const GridSpec &spec : specs) {
      std::vector<std::unique_ptr<LearnedRoundingLayer>> layers;
      layers.push_back(makeFlexRoundLayer(w, spec));
      layers.push_back(makeLrqLayer(w, spec, 6, 3));
      for (const auto &layer : layers) {
        const QString what = QString::fromStdString(spec.describe()) +
                             (layer->parameters().size() == 3 ? " flexround" : " lrq");
        std::map<std::string, at::Tensor> leaf; // the reference's own copies
        for (const auto &[name, p] : layer->parameters()) {
          setParam(*layer, name, at::randn(p.sizes(), gen) * (name == "log_s1" ? 0.1 : 0.5));
          leaf[name] = p.detach().clone().requires_grad_(true);
        }
        const at::Tensor fused = layer->weight();
        QVERIFY2(fused.grad_fn() &&
                     fused.grad_fn()->name().find("ScaledRounding") != std::string::npos,
                 qPrintable(what));
        (fused * upstream).sum().backward();

        const GridParams p0 = computeGridParams(w, spec);
        const at::Tensor s1 =
            expandToWeight(applyStepFormat(p0.scale * at::exp(leaf["log_s1"]), spec), spec, 100);
        const at::Tensor z = expandToWeight(p0.zeroPoint, spec, 100);
        const at::Tensor e = leaf.count("S2")
                                 ? leaf["S2"] + leaf["r3"]
                                 : at::mm(leaf["L2"], leaf["U2"]) + leaf["r3"] + leaf["c3"];
        const at::Tensor t = w / (s1 * at::exp(e));
        const at::Tensor x = t + (at::round(t) - t).detach() + z;
        const at::Tensor reference = (x.clamp(double(spec.qmin()), double(spec.qmax())) - z) * s1;
        (reference * upstream).sum().backward();
        QVERIFY2(at::equal(fused.detach(), reference.detach()), qPrintable(what));
        // Both edges of the grid are reached, and most codes lie inside.
        const at::Tensor codes = x.detach();
        const int64_t below = (codes < double(spec.qmin())).sum().item<int64_t>();
        const int64_t above = (codes > double(spec.qmax())).sum().item<int64_t>();
        QVERIFY2(below > 0 && above > 0 && below + above < codes.numel() / 2, qPrintable(what));
        for (const auto &[name, p] : layer->parameters()) {
          const at::Tensor expect = leaf[name].grad();
          const double tolerance = 1e-5 * expect.abs().max().item<double>();
          QVERIFY2(at::allclose(p.grad(), expect, 1e-4, tolerance),
                   qPrintable(what + " " + QString::fromStdString(name)));
        }
      }
    }
  }

  // Parameter shapes and counts, and LRQ's kaiming-uniform U2.
  void parameterCountsAndInit() {
    const at::Tensor w = at::randn({96, 64}) * 0.05;
    const GridSpec pc = makeSpec(4, false, Granularity::PerChannel, 0);
    const GridSpec g16 = makeSpec(4, false, Granularity::PerGroup, 16);
    QCOMPARE(makeFlexRoundLayer(w, pc)->parameterCount(), int64_t(96 + 96 * 64 + 96));
    QCOMPARE(makeFlexRoundLayer(w, g16)->parameterCount(), int64_t(96 * 4 + 96 * 64 + 96));
    QCOMPARE(defaultLrqRank(96, 64), int64_t(16));
    QCOMPARE(makeLrqLayer(w, pc, 0, 1)->parameterCount(),
             int64_t(96 + 96 * 16 + 16 * 64 + 96 + 64));
    QCOMPARE(makeLrqLayer(w, pc, 5, 1)->parameterCount(), int64_t(96 + 96 * 5 + 5 * 64 + 96 + 64));
    QCOMPARE(makeLearnedStepLayer(w, pc)->parameterCount(), int64_t(96));
    const auto lrq = makeLrqLayer(w, pc, 0, 42);
    const at::Tensor u2 = param(*lrq, "U2");
    QCOMPARE(u2.size(0), int64_t(16));
    QCOMPARE(u2.size(1), int64_t(64));
    const double bound = 1.0 / std::sqrt(64.0);
    QVERIFY(u2.abs().max().item<double>() <= bound);
    QVERIFY(u2.abs().max().item<double>() > 0.9 * bound); // spread over the range
    QVERIFY(std::abs(u2.pow(2).mean().item<double>() - bound * bound / 3) < 0.1 * bound * bound);
    QVERIFY(at::equal(u2, param(*makeLrqLayer(w, pc, 0, 42), "U2"))); // seeded
    QVERIFY(!at::equal(u2, param(*makeLrqLayer(w, pc, 0, 43), "U2")));
  }

  // LRQ at full rank can represent any FlexRound S2: with L2·U2 = S2 (an
  // identity factor: exact) Ŵ is identical; with an SVD factorisation it agrees
  // up to float rounding.
  void fullRankLrqExpressesFlexRound() {
    at::Generator gen = at::detail::createCPUGenerator(5);
    for (const std::vector<int64_t> &shape :
         std::vector<std::vector<int64_t>>{{48, 96}, {96, 48}}) {
      for (const GridSpec &spec : {makeSpec(4, false, Granularity::PerChannel, 0),
                                   makeSpec(3, true, Granularity::PerGroup, 16)}) {
        const QString what = QString::fromStdString(spec.describe()) +
                             QStringLiteral(" [%1,%2]").arg(shape[0]).arg(shape[1]);
        const int64_t out = shape[0], in = shape[1], r = std::min(out, in);
        const at::Tensor w = at::randn(shape, gen) * 0.05;
        const at::Tensor s2 = at::randn(shape, gen) * 0.3;
        const at::Tensor r3 = at::randn({out, 1}, gen) * 0.1;
        auto flex = makeFlexRoundLayer(w, spec);
        const at::Tensor delta = at::randn(param(*flex, "log_s1").sizes(), gen) * 0.1;
        setParam(*flex, "S2", s2);
        setParam(*flex, "r3", r3);
        setParam(*flex, "log_s1", delta);
        const at::Tensor target = flex->weight().detach();
        QVERIFY2(!at::equal(target, roundToNearest(w, spec)), qPrintable(what));

        auto lrq = makeLrqLayer(w, spec, r, 9);
        QCOMPARE(param(*lrq, "L2").size(1), r);
        setParam(*lrq, "r3", r3);
        setParam(*lrq, "log_s1", delta);
        if (out <= in) {
          setParam(*lrq, "L2", at::eye(out));
          setParam(*lrq, "U2", s2);
        } else {
          setParam(*lrq, "L2", s2);
          setParam(*lrq, "U2", at::eye(in));
        }
        QVERIFY2(at::equal(lrq->weight().detach(), target), qPrintable(what));
        QVERIFY2(at::equal(lrq->scaleExponentMatrix(), flex->scaleExponentMatrix()),
                 qPrintable(what));

        // SVD: L2 = U Σ, U2 = Vᵀ.
        const auto [U, S, Vh] = at::linalg_svd(s2.to(at::kDouble), false);
        setParam(*lrq, "L2", (U * S.unsqueeze(0)).to(at::kFloat));
        setParam(*lrq, "U2", Vh.to(at::kFloat));
        const double expErr = (lrq->scaleExponentMatrix() - s2).abs().max().item<double>();
        const at::Tensor svdW = lrq->weight().detach();
        const double differing = (svdW != target).to(at::kDouble).mean().item<double>();
        qInfo().noquote() << what
                          << QStringLiteral(": SVD factors: max |L2·U2 - S2| = %1, "
                                            "%2% of Ŵ differ (rounding ties)")
                                 .arg(expErr, 0, 'g', 3)
                                 .arg(100 * differing, 0, 'f', 4);
        QVERIFY2(expErr < 1e-5, qPrintable(what));
        QVERIFY2(differing < 1e-3, qPrintable(what));
      }
    }
  }

  // The reference code's hybrid rule, shape by shape (ALGORITHMS.md "LRQ"),
  // written out by hand rather than recomputed from the rule's conditions.
  void referenceRankRule() {
    struct Case {
      int64_t out, in;
      bool fullS2;
      int64_t rank;
    };
    const std::vector<Case> cases = {
        {4096, 11008, true, 0},    // LLaMA-2-7B gate/up: exactly one side > 4096
        {11008, 4096, true, 0},    // 7B down
        {4096, 4096, false, 1024}, // 7B q/k/v/o
        {4097, 4096, true, 0},     // one past the threshold
        {4096, 4097, true, 0},      {4097, 4097, false, 1024},  // both wide, not both >= 8192
        {5120, 13824, false, 1024}, {8192, 8192, true, 0},      // 70B q/o: the exact square
        {1024, 8192, true, 0},                                  // 70B k/v
        {8192, 1024, true, 0},      {28672, 8192, false, 2048}, // 70B down/up: both >= 8192
        {8192, 28672, false, 2048}, {8192, 8193, false, 2048},  {8191, 8192, false, 1024},
        {576, 576, false, 576}, // SmolLM2-135M: 1024 reduced to min(out, in)
        {192, 576, false, 192},     {1536, 576, false, 576},    {576, 1536, false, 576},
        {2048, 2048, false, 1024},  {1, 5000, true, 0},
    };
    const auto method = createMethod("lrq");
    const nlohmann::json reference = mergeHyperparameters(*method, {{"rank_rule", "reference"}});
    const nlohmann::json fixed = mergeHyperparameters(*method, {{"rank", 7}});
    for (const Case &c : cases) {
      const QString what = QStringLiteral("%1 x %2").arg(c.out).arg(c.in);
      const LrqLayerShape shape = lrqReferenceShape(c.out, c.in);
      QVERIFY2(shape.fullS2 == c.fullS2, qPrintable(what));
      if (!c.fullS2)
        QVERIFY2(shape.rank == c.rank, qPrintable(what + ": rank " + QString::number(shape.rank)));
      const LrqLayerShape viaRule = lrqLayerShape(LrqRankRule::Reference, 0, c.out, c.in);
      QVERIFY(viaRule.fullS2 == shape.fullS2 && viaRule.rank == shape.rank);
      // Parameter counts: FlexRound's for full S2, LRQ's formula otherwise.
      const int64_t expected =
          c.fullS2 ? c.out * c.in + 2 * c.out : c.rank * (c.out + c.in) + 2 * c.out + c.in;
      QCOMPARE(method->learnableParameters(c.out, c.in, reference), expected);
      if (c.fullS2)
        QCOMPARE(method->learnableParameters(c.out, c.in, reference),
                 createMethod("flexround")->learnableParameters(c.out, c.in, {}));
      // The fixed rule ignores shapes: rank 7 everywhere (at most min(out, in)).
      const int64_t r7 = std::min<int64_t>(7, std::min(c.out, c.in));
      const LrqLayerShape f = lrqLayerShape(LrqRankRule::Fixed, 7, c.out, c.in);
      QVERIFY(!f.fullS2 && f.rank == r7);
      QCOMPARE(method->learnableParameters(c.out, c.in, fixed),
               r7 * (c.out + c.in) + 2 * c.out + c.in);
    }
    // The default is today's fixed rule; bad values are refused when merged.
    QCOMPARE(method->defaults().at("rank_rule").get<std::string>(), std::string("fixed"));
    QVERIFY_THROWS_EXCEPTION(Error, mergeHyperparameters(*method, {{"rank_rule", "hybrid"}}));
    QVERIFY_THROWS_EXCEPTION(
        Error, mergeHyperparameters(*method, {{"rank_rule", "reference"}, {"rank", 16}}));
    QCOMPARE(parseLrqRankRule("reference"), LrqRankRule::Reference);
    QCOMPARE(std::string(lrqRankRuleName(LrqRankRule::Fixed)), std::string("fixed"));
  }

  // LRQ's full-S2 branch is FlexRound: same parameters (names, shapes, count),
  // RTN at the start, and for the same random values the same Ŵ bit for bit
  // and the same gradients.
  void lrqFullS2BranchIsFlexRound() {
    at::Generator gen = at::detail::createCPUGenerator(17);
    for (const GridSpec &spec : {makeSpec(4, false, Granularity::PerChannel, 0),
                                 makeSpec(3, true, Granularity::PerGroup, 16),
                                 makeSpec(2, false, Granularity::PerTensor, 0)}) {
      const QString what = QString::fromStdString(spec.describe());
      const at::Tensor w = at::randn({40, 48}, gen) * 0.05;
      auto flex = makeFlexRoundLayer(w, spec);
      auto lrq = makeLrqLayer(w, spec, LrqLayerShape{true, 0}, 5);
      QCOMPARE(lrq->parameterCount(), flex->parameterCount());
      const auto fp = flex->parameters(), lp = lrq->parameters();
      QCOMPARE(lp.size(), fp.size());
      for (size_t i = 0; i < fp.size(); ++i) {
        QCOMPARE(lp[i].first, fp[i].first);
        QCOMPARE(lp[i].second.sizes(), fp[i].second.sizes());
      }
      QVERIFY2(at::equal(lrq->weight().detach(), roundToNearest(w, spec)), qPrintable(what));
      for (const auto &[name, p] : fp) {
        const at::Tensor v = at::randn(p.sizes(), gen) * (name == "S2" ? 0.3 : 0.1);
        setParam(*flex, name, v);
        setParam(*lrq, name, v);
      }
      const at::Tensor wf = flex->weight(), wl = lrq->weight();
      QVERIFY2(!at::equal(wf.detach(), roundToNearest(w, spec)), qPrintable(what));
      QVERIFY2(at::equal(wl.detach(), wf.detach()), qPrintable(what));
      QVERIFY2(at::equal(lrq->scaleExponentMatrix(), flex->scaleExponentMatrix()),
               qPrintable(what));
      const at::Tensor upstream = at::randn(w.sizes(), gen);
      (wf * upstream).sum().backward();
      (wl * upstream).sum().backward();
      for (const auto &[name, p] : fp)
        QVERIFY2(at::equal(param(*lrq, name).grad(), p.grad()),
                 qPrintable(what + " d/d" + QString::fromStdString(name)));
    }
  }

  // A run under the reference rule records the rule and, per linear, what it got.
  void lrqRunRecordsItsRankRule() {
    const QuantScheme scheme = weightOnly(makeSpec(4, false, Granularity::PerChannel, 0));
    DecoderModel model = tinyModel();
    const MethodReport report = runMethod("lrq", model, scheme, tinyTokens(2, 16),
                                          {{"iters", 2}, {"rank_rule", "reference"}});
    QCOMPARE(report.extra.at("rank_rule").get<std::string>(), std::string("reference"));
    const nlohmann::json &layers = report.extra.at("layers");
    int64_t perBlock = 0;
    for (const auto &[role, linear] : blockLinears(model.config(), model.weights().blocks[0])) {
      const int64_t out = linear->weight.size(0), in = linear->weight.size(1);
      const nlohmann::json &l = layers.at(role);
      // The tiny model's layers are all narrower than 1024: full rank, low-rank form.
      QCOMPARE(l.at("parameterisation").get<std::string>(), std::string("low_rank"));
      QCOMPARE(l.at("rank").get<int64_t>(), std::min(out, in));
      const int64_t params = std::min(out, in) * (out + in) + 2 * out + in;
      QCOMPARE(l.at("learnable_params").get<int64_t>(), params);
      perBlock += params;
    }
    QCOMPARE(report.extra.at("blocks")[0].at("learnable_params").get<int64_t>(), perBlock);
  }

  // Loss decreases on a tiny model; the engine's losses match a direct
  // computation; events come in order; Ŵ lies on the grid.
  void reconstructionOnTinyModel() {
    const QuantScheme scheme = weightOnly(makeSpec(3, false, Granularity::PerChannel, 0));
    const at::Tensor tokens = tinyTokens(8, 32);
    for (const char *name : {"lrq", "flexround", "rtn-learned-step"}) {
      DecoderModel model = tinyModel();
      Recorder rec;
      const MethodReport report = runMethod(name, model, scheme, tokens, {{"iters", 40}}, "", &rec);
      const nlohmann::json &blocks = report.extra.at("blocks");
      QCOMPARE(int(blocks.size()), 2);
      for (const auto &b : blocks) {
        const double first = b.at("initial_loss").get<double>(),
                     last = b.at("final_loss").get<double>();
        qInfo().noquote() << QStringLiteral("tiny %1 block %2: loss %3 -> %4, %5 learnable")
                                 .arg(name)
                                 .arg(b.at("block").get<int>())
                                 .arg(first, 0, 'g', 5)
                                 .arg(last, 0, 'g', 5)
                                 .arg(b.at("learnable_params").get<int64_t>());
        QVERIFY2(last < first, name);
      }
      for (const std::vector<double> &curve : rec.curves) {
        QCOMPARE(int(curve.size()), 40);
        QVERIFY2(mean(curve, 30, 10) < mean(curve, 0, 10), name);
      }

      // Events: started, then per block: start, 40 iterations, done; finished.
      std::vector<std::string> expected{std::string("started ") + name + " 2"};
      for (int b = 0; b < 2; ++b) {
        expected.push_back("block " + std::to_string(b) + "/2");
        for (int i = 0; i < 40; ++i)
          expected.push_back("iter " + std::to_string(b) + " " + std::to_string(i));
        expected.push_back("done " + std::to_string(b));
      }
      expected.push_back("finished");
      QVERIFY(rec.events == expected);

      // One report per linear, with its learnable count.
      QCOMPARE(int(report.layers.size()), 14);
      for (const LayerReport &l : report.layers) {
        QVERIFY(l.learnableParams > 0);
        QVERIFY(std::isfinite(l.error.sqnrDb) && l.error.sqnrDb > 0);
      }

      // Independent losses: FP blocks vs blocks with RTN weights (initial) or
      // with the trained weights (final), computed directly with the decoder.
      DecoderModel fp = tinyModel();
      DecoderModel rtn = tinyModel();
      quantizeModelRtn(rtn.weights(), rtn.config(), scheme);
      at::NoGradGuard noGrad;
      auto loss = [](const at::Tensor &a, const at::Tensor &b) {
        return (a - b).pow(2).sum(-1).mean().item<double>();
      };
      double init0 = 0, final0 = 0, init1 = 0, final1 = 0;
      // Block 1's initial loss: trained block 0, RTN block 1.
      DecoderModel mixed = tinyModel();
      for (int64_t l = 0; l < 7; ++l) {
        *blockLinears(mixed.config(), mixed.weights().blocks[0])[size_t(l)].second =
            *blockLinears(model.config(), model.weights().blocks[0])[size_t(l)].second;
        *blockLinears(mixed.config(), mixed.weights().blocks[1])[size_t(l)].second =
            *blockLinears(rtn.config(), rtn.weights().blocks[1])[size_t(l)].second;
      }
      for (int64_t s = 0; s < tokens.size(0); ++s) {
        const at::Tensor x = fp.embed(tokens.narrow(0, s, 1));
        const at::Tensor y0 = fp.runBlock(0, x), y1 = fp.runBlock(1, y0);
        init0 += loss(rtn.runBlock(0, x), y0);
        const at::Tensor q0 = model.runBlock(0, x);
        final0 += loss(q0, y0);
        init1 += loss(mixed.runBlock(1, q0), y1);
        final1 += loss(model.runBlock(1, q0), y1);
      }
      const double n = double(tokens.size(0));
      auto near = [](double a, double b) { return std::abs(a - b) <= 1e-5 * std::abs(b); };
      QVERIFY2(near(blocks[0].at("initial_loss").get<double>(), init0 / n), name);
      QVERIFY2(near(blocks[0].at("final_loss").get<double>(), final0 / n), name);
      QVERIFY2(near(blocks[1].at("initial_loss").get<double>(), init1 / n), name);
      QVERIFY2(near(blocks[1].at("final_loss").get<double>(), final1 / n), name);

      // Ŵ on the 3-bit grid of each row, and moved away from RTN.
      const at::Tensor up = model.weights().blocks[1].up.weight;
      for (int64_t r = 0; r < up.size(0); r += 7)
        QVERIFY(std::get<0>(at::_unique(up[r])).size(0) <= 8);
      QVERIFY(!at::equal(up, rtn.weights().blocks[1].up.weight));
    }
  }

  // Held-out windows continue the training windows' draw: the training set is
  // the one of heldout = 0, the held-out windows are other slots, and a text too
  // short for both says so with its numbers.
  void heldoutWindowsAreDisjoint() {
    std::vector<int32_t> stream(40 * 8); // token i at position i: a window names its slot
    for (size_t i = 0; i < stream.size(); ++i)
      stream[i] = int32_t(i);
    const CalibrationSet plain = makeCalibrationSet(stream, 12, 8, 5, "t");
    const CalibrationSet with = makeCalibrationSet(stream, 12, 8, 5, "t", 6);
    QVERIFY(!plain.heldoutTokens.defined());
    QVERIFY(at::equal(plain.tokens, with.tokens));
    QCOMPARE(with.heldoutTokens.size(0), int64_t(6));
    QCOMPARE(with.heldoutTokens.size(1), int64_t(8));
    std::set<int64_t> trainSlots, heldoutSlots;
    for (int64_t s = 0; s < 12; ++s)
      trainSlots.insert(with.tokens[s][0].item<int64_t>() / 8);
    for (int64_t s = 0; s < 6; ++s) {
      const at::Tensor row = with.heldoutTokens[s];
      QCOMPARE(row[0].item<int64_t>() % 8, int64_t(0)); // a whole slot
      QVERIFY(at::equal(row, at::arange(row[0].item<int64_t>(), row[0].item<int64_t>() + 8)));
      heldoutSlots.insert(row[0].item<int64_t>() / 8);
    }
    QCOMPARE(int(trainSlots.size()), 12);
    QCOMPARE(int(heldoutSlots.size()), 6);
    for (int64_t slot : heldoutSlots)
      QVERIFY(!trainSlots.count(slot));
    // All 40 slots used: still disjoint; one more is refused with the numbers.
    const CalibrationSet full = makeCalibrationSet(stream, 12, 8, 5, "t", 28);
    QCOMPARE(full.heldoutTokens.size(0), int64_t(28));
    try {
      makeCalibrationSet(stream, 12, 8, 5, "t", 29);
      QFAIL("expected lrq::Error");
    } catch (const Error &e) {
      const QString msg = e.what();
      QVERIFY2(msg.contains("320 tokens") && msg.contains("40 windows") &&
                   msg.contains("12 training") && msg.contains("29 held-out"),
               e.what());
    }
  }

  // The held-out loss of each block, before and after training, against the
  // same loss computed here with the decoder directly: held-out windows through
  // the FP blocks (target) and through the quantized blocks before (input).
  // Training figures and weights are those of a run without held-out windows.
  void heldoutLossMatchesDirectComputation() {
    const QuantScheme scheme = weightOnly(makeSpec(3, false, Granularity::PerChannel, 0));
    const at::Tensor tokens = tinyTokens(8, 32);
    at::Generator gen = at::detail::createCPUGenerator(99);
    const at::Tensor heldout = at::randint(tiny_.config.vocabSize, {3, 20}, gen, at::kLong);
    for (const char *name : {"lrq", "flexround"}) {
      DecoderModel model = tinyModel(), plainModel = tinyModel();
      Recorder rec, plainRec;
      const MethodReport report =
          runMethod(name, model, scheme, tokens, {{"iters", 30}}, "", &rec, nullptr, 3, heldout);
      const MethodReport plain =
          runMethod(name, plainModel, scheme, tokens, {{"iters", 30}}, "", &plainRec, nullptr, 3);
      // (b) Training unchanged.
      QVERIFY2(sameWeights(linearWeights(model), linearWeights(plainModel)), name);
      QVERIFY(rec.curves == plainRec.curves);
      QVERIFY(rec.events == plainRec.events);
      const nlohmann::json &blocks = report.extra.at("blocks");
      for (size_t b = 0; b < 2; ++b) {
        for (const char *key : {"initial_loss", "final_loss"})
          QCOMPARE(blocks[b].at(key).get<double>(),
                   plain.extra.at("blocks")[b].at(key).get<double>());
        QVERIFY(!plain.extra.at("blocks")[b].contains("heldout_final_loss"));
      }
      QCOMPARE(report.extra.at("heldout_samples").get<int>(), 3);
      QVERIFY(!plain.extra.contains("recon_heldout_loss_mean"));

      // (a) Independent computation.
      DecoderModel fp = tinyModel(), rtn = tinyModel(), mixed = tinyModel();
      quantizeModelRtn(rtn.weights(), rtn.config(), scheme);
      for (int64_t l = 0; l < 7; ++l) { // trained block 0, RTN block 1
        *blockLinears(mixed.config(), mixed.weights().blocks[0])[size_t(l)].second =
            *blockLinears(model.config(), model.weights().blocks[0])[size_t(l)].second;
        *blockLinears(mixed.config(), mixed.weights().blocks[1])[size_t(l)].second =
            *blockLinears(rtn.config(), rtn.weights().blocks[1])[size_t(l)].second;
      }
      at::NoGradGuard noGrad;
      auto loss = [](const at::Tensor &a, const at::Tensor &b) {
        return (a - b).pow(2).sum(-1).mean().item<double>();
      };
      double init0 = 0, final0 = 0, init1 = 0, final1 = 0;
      for (int64_t s = 0; s < heldout.size(0); ++s) {
        const at::Tensor x = fp.embed(heldout.narrow(0, s, 1));
        const at::Tensor y0 = fp.runBlock(0, x), y1 = fp.runBlock(1, y0);
        init0 += loss(rtn.runBlock(0, x), y0);
        const at::Tensor q0 = model.runBlock(0, x);
        final0 += loss(q0, y0);
        init1 += loss(mixed.runBlock(1, q0), y1);
        final1 += loss(model.runBlock(1, q0), y1);
      }
      const double n = double(heldout.size(0));
      auto near = [](double a, double b) { return std::abs(a - b) <= 1e-5 * std::abs(b); };
      const double want[2][2] = {{init0 / n, final0 / n}, {init1 / n, final1 / n}};
      for (size_t b = 0; b < 2; ++b) {
        const double gotInit = blocks[b].at("heldout_initial_loss").get<double>();
        const double gotFinal = blocks[b].at("heldout_final_loss").get<double>();
        qInfo().noquote() << QStringLiteral("tiny %1 block %2: train %3 -> %4, held-out %5 -> %6")
                                 .arg(name)
                                 .arg(b)
                                 .arg(blocks[b].at("initial_loss").get<double>(), 0, 'g', 5)
                                 .arg(blocks[b].at("final_loss").get<double>(), 0, 'g', 5)
                                 .arg(gotInit, 0, 'g', 5)
                                 .arg(gotFinal, 0, 'g', 5);
        QVERIFY2(near(gotInit, want[b][0]), name);
        QVERIFY2(near(gotFinal, want[b][1]), name);
        QVERIFY(gotInit != gotFinal); // training moved them
        // The observer saw the same figures.
        QCOMPARE(rec.heldout.at(b).first, gotInit);
        QCOMPARE(rec.heldout.at(b).second, gotFinal);
      }
      QVERIFY(plainRec.heldout.empty());
      // Means over the blocks, as the run's metrics.
      QCOMPARE(report.extra.at("recon_heldout_loss_mean").get<double>(),
               (blocks[0].at("heldout_final_loss").get<double>() +
                blocks[1].at("heldout_final_loss").get<double>()) /
                   2);
      QCOMPARE(
          report.extra.at("recon_train_loss_mean").get<double>(),
          (blocks[0].at("final_loss").get<double>() + blocks[1].at("final_loss").get<double>()) /
              2);
    }
  }

  // (c) Interrupted in block 1 and resumed: every held-out figure equals the
  // uninterrupted run's (block 0's from the checkpoint), and the held-out
  // windows stay in memory whatever cache_mb says.
  void heldoutLossSurvivesResume() {
    const QuantScheme scheme = weightOnly(makeSpec(3, false, Granularity::PerChannel, 0));
    const at::Tensor tokens = tinyTokens(6, 24);
    at::Generator gen = at::detail::createCPUGenerator(5);
    const at::Tensor heldout = at::randint(tiny_.config.vocabSize, {2, 24}, gen, at::kLong);
    const nlohmann::json hyper = {{"iters", 10}, {"cache_mb", 0}};
    DecoderModel straight = tinyModel();
    const MethodReport a =
        runMethod("lrq", straight, scheme, tokens, hyper, dir("heldout_straight").toStdString(),
                  nullptr, nullptr, 0, heldout);
    const std::string work = dir("heldout_interrupted").toStdString();
    DecoderModel first = tinyModel();
    CancelToken cancel;
    Recorder rec;
    int spillFiles = -1;
    rec.onIteration = [&](int block, int it) {
      if (block == 1 && it == 0)
        spillFiles =
            int(QDir(QString::fromStdString(work) + "/recon/cache").entryList(QDir::Files).size());
      if (block == 1 && it == 3)
        cancel.cancel();
    };
    try {
      runMethod("lrq", first, scheme, tokens, hyper, work, &rec, &cancel, 0, heldout);
      QFAIL("expected lrq::Cancelled");
    } catch (const Cancelled &) {
    }
    QCOMPARE(spillFiles, 12); // the 6 training samples x 2 streams; held-out ones stay in memory
    DecoderModel resumed = tinyModel();
    nlohmann::json resumeHyper = hyper;
    resumeHyper["resume"] = true;
    Recorder rec2;
    const MethodReport b =
        runMethod("lrq", resumed, scheme, tokens, resumeHyper, work, &rec2, nullptr, 0, heldout);
    QCOMPARE(b.extra.at("resumed_blocks").get<int>(), 1);
    QVERIFY(sameWeights(linearWeights(straight), linearWeights(resumed)));
    for (size_t i = 0; i < 2; ++i)
      for (const char *key :
           {"initial_loss", "final_loss", "heldout_initial_loss", "heldout_final_loss"})
        QCOMPARE(b.extra.at("blocks").at(i).at(key).get<double>(),
                 a.extra.at("blocks").at(i).at(key).get<double>());
    QCOMPARE(rec2.heldout.size(), size_t(2)); // the restored block's figures are sent too
    QCOMPARE(b.extra.at("recon_heldout_loss_mean").get<double>(),
             a.extra.at("recon_heldout_loss_mean").get<double>());

    // A checkpoint resumed with other held-out windows: the restored block
    // reports none (they were measured on other samples), the next block does.
    DecoderModel third = tinyModel();
    CancelToken cancel3;
    Recorder rec3;
    rec3.onIteration = [&](int block, int it) {
      if (block == 1 && it == 3)
        cancel3.cancel();
    };
    const std::string work3 = dir("heldout_changed").toStdString();
    try {
      runMethod("lrq", third, scheme, tokens, hyper, work3, &rec3, &cancel3, 0, heldout);
      QFAIL("expected lrq::Cancelled");
    } catch (const Cancelled &) {
    }
    DecoderModel other = tinyModel();
    const MethodReport c = runMethod("lrq", other, scheme, tokens, resumeHyper, work3, nullptr,
                                     nullptr, 0, heldout.narrow(0, 0, 1));
    QVERIFY(sameWeights(linearWeights(straight), linearWeights(other)));
    QVERIFY(!c.extra.at("blocks").at(0).contains("heldout_final_loss"));
    QVERIFY(c.extra.at("blocks").at(1).contains("heldout_final_loss"));
    QVERIFY(!c.extra.contains("recon_heldout_loss_mean")); // not every block has one
  }

  // The fused Adam update against the tensor-op update over several steps with
  // varying gradients: the same parameters to float rounding.
  void fusedAdamMatchesTensorOps() {
    at::Generator gen = at::detail::createCPUGenerator(31);
    const at::Tensor start = at::randn({37, 53}, gen);
    std::vector<at::Tensor> grads;
    for (int k = 0; k < 6; ++k)
      grads.push_back(at::randn({37, 53}, gen) * (k + 1));
    auto train = [&](bool fused) {
      const bool previous = recon::setAdamFused(fused);
      at::Tensor p = start.clone().requires_grad_(true);
      recon::Adam adam({p});
      for (const at::Tensor &g : grads) {
        p.mutable_grad() = g.clone();
        adam.step(1e-2);
      }
      recon::setAdamFused(previous);
      return p.detach();
    };
    const at::Tensor fused = train(true), tensorOps = train(false);
    QVERIFY(!at::equal(fused, start));
    QVERIFY(at::allclose(fused, tensorOps, 1e-5, 1e-6));
  }

  // Adam's first step moves every parameter by -lr·sign(g) (the cosine factor
  // is 1 at iteration 0), g computed here independently.
  void adamFirstStepMatchesIndependentGradient() {
    DecoderModel model = tinyModel();
    const at::Tensor tokens = tinyTokens(4, 16);
    const GridSpec spec = makeSpec(3, false, Granularity::PerChannel, 0);
    recon::ReconOptions options;
    options.iters = 1;
    options.lr = 1e-3;
    options.batchSize = 4; // the whole set
    options.blocks = {0};
    recon::BlockReconstructor rec(model, tokens, options);
    rec.run([&](int64_t, const std::string &, const at::Tensor &w) {
      return std::unique_ptr<recon::LearnableLayer>(makeFlexRoundLayer(w, spec));
    });
    // The same run again, keeping handles on the layers.
    DecoderModel model2 = tinyModel();
    std::vector<std::shared_ptr<LearnedRoundingLayer>> kept;
    recon::BlockReconstructor rec2(model2, tokens, options);
    rec2.run([&](int64_t, const std::string &, const at::Tensor &w) {
      auto s = std::make_unique<Shared>();
      s->inner = std::shared_ptr<LearnedRoundingLayer>(makeFlexRoundLayer(w, spec));
      kept.push_back(s->inner);
      return std::unique_ptr<recon::LearnableLayer>(std::move(s));
    });
    QCOMPARE(int(kept.size()), 7);
    QVERIFY(sameWeights(linearWeights(model), linearWeights(model2))); // deterministic

    // Independent gradient at the start on the whole set.
    DecoderModel fp = tinyModel();
    std::vector<std::unique_ptr<LearnedRoundingLayer>> fresh;
    const auto linears = blockLinears(fp.config(), fp.weights().blocks[0]);
    at::Tensor x, y;
    {
      at::NoGradGuard noGrad;
      x = fp.embed(tokens);
      y = fp.runBlock(0, x);
    }
    for (const auto &[role, linear] : linears) {
      fresh.push_back(makeFlexRoundLayer(linear->weight, spec));
      linear->weight = fresh.back()->weight();
    }
    (fp.runBlock(0, x) - y).pow(2).sum(-1).mean().backward();
    int64_t checked = 0;
    for (size_t l = 0; l < fresh.size(); ++l) {
      const auto before = fresh[l]->parameters(), after = kept[l]->parameters();
      for (size_t k = 0; k < before.size(); ++k) {
        const at::Tensor g = before[k].second.grad();
        const at::Tensor moved = after[k].second.detach() - before[k].second.detach();
        const at::Tensor big = g.abs() > std::max(1e-3 * g.abs().max().item<double>(), 1e-5);
        const at::Tensor expect = -1e-3 * at::sign(g);
        const at::Tensor err = (moved - expect).abs().masked_select(big);
        checked += err.numel();
        QVERIFY2(err.numel() == 0 || err.max().item<double>() < 1e-5,
                 qPrintable(QString::fromStdString(before[k].first)));
        // Elements with no gradient do not move.
        QVERIFY(
            at::equal(moved.masked_select(g == 0), at::zeros({(g == 0).sum().item<int64_t>()})));
      }
    }
    QVERIFY(checked > 1000);
  }

  void fixedSeedGivesIdenticalResults() {
    const QuantScheme scheme = weightOnly(makeSpec(3, false, Granularity::PerChannel, 0));
    const at::Tensor tokens = tinyTokens(8, 24);
    auto once = [&](uint64_t seed) {
      DecoderModel model = tinyModel();
      runMethod("lrq", model, scheme, tokens, {{"iters", 15}}, "", nullptr, nullptr, seed);
      return linearWeights(model);
    };
    const auto a = once(1), b = once(1), c = once(2);
    QVERIFY(sameWeights(a, b));
    QVERIFY(!sameWeights(a, c));
  }

  // Cancel in the middle of block 1, resume from the checkpoint: the final
  // weights are those of an uninterrupted run, bit for bit.
  void resumeAfterCancelIsBitIdentical() {
    const QuantScheme scheme = weightOnly(makeSpec(3, false, Granularity::PerChannel, 0));
    const at::Tensor tokens = tinyTokens(6, 24);
    const nlohmann::json hyper = {{"iters", 12}, {"cache_mb", 0}}; // spilled too
    for (const char *name : {"lrq", "flexround"}) {
      DecoderModel straight = tinyModel();
      runMethod(name, straight, scheme, tokens, hyper,
                dir(QString("straight_") + name).toStdString());

      const std::string work = dir(QString("interrupted_") + name).toStdString();
      DecoderModel first = tinyModel();
      CancelToken cancel;
      Recorder rec;
      rec.onIteration = [&](int block, int it) {
        if (block == 1 && it == 4)
          cancel.cancel();
      };
      bool cancelled = false;
      try {
        runMethod(name, first, scheme, tokens, hyper, work, &rec, &cancel);
      } catch (const Cancelled &) {
        cancelled = true;
      }
      QVERIFY(cancelled);
      QVERIFY(QFile::exists(QString::fromStdString(work) + "/recon/state.json"));
      // The interrupted block got its full-precision weights back.
      QVERIFY(
          at::equal(first.weights().blocks[1].q.weight, tinyModel().weights().blocks[1].q.weight));

      // A checkpoint of other settings is refused.
      DecoderModel other = tinyModel();
      nlohmann::json otherHyper = hyper;
      otherHyper["resume"] = true;
      otherHyper["lr"] = 1e-2;
      try {
        runMethod(name, other, scheme, tokens, otherHyper, work);
        QFAIL("expected lrq::FileError");
      } catch (const FileError &e) {
        QVERIFY2(QString(e.what()).contains("different run"), e.what());
      }
      DecoderModel resumed = tinyModel();
      nlohmann::json resumeHyper = hyper;
      resumeHyper["resume"] = true;
      Recorder rec2;
      const MethodReport report =
          runMethod(name, resumed, scheme, tokens, resumeHyper, work, &rec2);
      QCOMPARE(report.extra.at("resumed_blocks").get<int>(), 1);
      QVERIFY2(sameWeights(linearWeights(straight), linearWeights(resumed)), name);
      QCOMPARE(int(report.layers.size()), 14);
      // The restored block's grids are recovered from its Ŵ: the packed export
      // of the resumed run reproduces every Ŵ exactly.
      QCOMPARE(int(report.grids.size()), 14);
      PackStats packStats;
      packQuantizedModel(resumed.config(), resumed.weights(), tinyModel().weights(), scheme, name,
                         &report.grids, &packStats);
      QCOMPARE(packStats.layers, int64_t(14));
      QCOMPARE(packStats.maxDeviation, 0.0);
      // The restored block's curve is replayed, so the events are complete.
      QCOMPARE(int(rec2.curves.size()), 2);
      QCOMPARE(int(rec2.curves[0].size()), 12);
      QVERIFY(rec2.curves[0] == rec.curves[0]);
      QVERIFY(!QDir(QString::fromStdString(work) + "/recon").exists()); // finished: removed
    }
  }

  void spillingGivesIdenticalResults() {
    const QuantScheme scheme = weightOnly(makeSpec(3, false, Granularity::PerChannel, 0));
    const at::Tensor tokens = tinyTokens(6, 24);
    DecoderModel inMemory = tinyModel(), spilled = tinyModel(), noFolder = tinyModel();
    const MethodReport a = runMethod("lrq", inMemory, scheme, tokens,
                                     {{"iters", 10}, {"cache_mb", 2048}}, dir("mem").toStdString());
    Recorder rec;
    int spillFiles = -1;
    rec.onIteration = [&](int block, int it) {
      if (block == 1 && it == 0)
        spillFiles = int(QDir(dir("spill") + "/recon/cache").entryList(QDir::Files).size());
    };
    // The default (cache_mb -1) spills every sample where there is a work
    // folder, and keeps them all where there is none.
    const MethodReport b = runMethod("lrq", spilled, scheme, tokens, {{"iters", 10}},
                                     dir("spill").toStdString(), &rec);
    const MethodReport c = runMethod("lrq", noFolder, scheme, tokens, {{"iters", 10}});
    QCOMPARE(spillFiles, 12); // 6 samples x 2 streams
    QCOMPARE(a.extra.at("spilled_samples").get<int>(), 0);
    QCOMPARE(b.extra.at("spilled_samples").get<int>(), 6);
    QCOMPARE(c.extra.at("spilled_samples").get<int>(), 0);
    QVERIFY(sameWeights(linearWeights(inMemory), linearWeights(spilled)));
    QVERIFY(sameWeights(linearWeights(inMemory), linearWeights(noFolder)));
    for (size_t i = 0; i < 2; ++i)
      for (const char *key : {"initial_loss", "final_loss"})
        QCOMPARE(a.extra.at("blocks").at(i).at(key).get<double>(),
                 b.extra.at("blocks").at(i).at(key).get<double>());
    // Spill files and the checkpoint are gone after a finished run.
    QVERIFY(!QDir(dir("spill") + "/recon").exists());
    QVERIFY(!QDir(dir("mem") + "/recon").exists());

    // Without a work directory there is nowhere to spill: a clear error.
    DecoderModel nowhere = tinyModel();
    try {
      runMethod("lrq", nowhere, scheme, tokens, {{"iters", 1}, {"cache_mb", 0}});
      QFAIL("expected lrq::Error");
    } catch (const Error &e) {
      QVERIFY2(QString(e.what()).contains("work directory"), e.what());
    }
  }

  // NaN in a parameter mid-run, or in a full-precision weight: an error naming
  // block and layer; the block keeps its full-precision weights.
  void nonFiniteValuesStopWithNamedError() {
    const GridSpec spec = makeSpec(3, false, Granularity::PerChannel, 0);
    const at::Tensor tokens = tinyTokens(4, 16);
    {
      DecoderModel model = tinyModel();
      const at::Tensor fpUp = model.weights().blocks[1].up.weight;
      std::map<std::string, std::shared_ptr<LearnedRoundingLayer>> layers;
      Recorder rec;
      rec.onIteration = [&](int block, int it) {
        if (block == 1 && it == 2) {
          at::NoGradGuard noGrad;
          param(*layers.at("up_proj"), "S2")[3][5] = std::numeric_limits<float>::quiet_NaN();
        }
      };
      recon::ReconOptions options;
      options.iters = 6;
      options.observer = &rec;
      recon::BlockReconstructor engine(model, tokens, options);
      try {
        engine.run([&](int64_t, const std::string &role, const at::Tensor &w) {
          auto s = std::make_unique<Shared>();
          s->inner = std::shared_ptr<LearnedRoundingLayer>(makeFlexRoundLayer(w, spec));
          layers[role] = s->inner;
          return std::unique_ptr<recon::LearnableLayer>(std::move(s));
        });
        QFAIL("expected lrq::Error");
      } catch (const Error &e) {
        const QString msg = e.what();
        qInfo().noquote() << "NaN parameter:" << msg;
        QVERIFY2(msg.contains("block 1") && msg.contains("up_proj") && msg.contains("S2") &&
                     msg.contains("iteration 3"),
                 e.what());
        QVERIFY(!msg.contains('\n'));
      }
      QVERIFY(model.weights().blocks[1].up.weight.is_same(fpUp));
      QCOMPARE(rec.events.back(), std::string("iter 1 2"));
    }
    {
      DecoderModel model = tinyModel();
      model.weights().blocks[1].down.weight[2][7] = std::numeric_limits<float>::infinity();
      try {
        runMethod("lrq", model, weightOnly(spec), tokens, {{"iters", 3}});
        QFAIL("expected lrq::Error");
      } catch (const Error &e) {
        const QString msg = e.what();
        qInfo().noquote() << "Inf weight:" << msg;
        QVERIFY2(msg.contains("block 1") && msg.contains("down_proj"), e.what());
      }
    }
  }

  // The default model: block 0 under W3 per-channel with LRQ and FlexRound.
  // Figures: loss start/end, learnable parameters per block, seconds per
  // iteration at batch 2 / seq 512 and the GFLOP/s achieved vs a plain GEMM.
  void defaultModelBlock0() {
    const LoadedModel m = loadModel(lrq::test::defaultModelPath());
    QVERIFY(m.tokenizer);
    const TextSplit text = defaultText();
    const std::vector<int32_t> stream =
        m.tokenizer->encode(text.calibration.substr(0, 60000), false);
    QuantScheme scheme = presetScheme("W3A16");
    scheme.layers.blocks = {0};
    const CalibrationSet calib = makeCalibrationSet(stream, 16, 128, 0, "default text");

    std::map<std::string, int64_t> perBlock;
    for (const char *name : {"lrq", "flexround"}) {
      DecoderModel model(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
      const at::Tensor up1 = model.weights().blocks[1].up.weight;
      Recorder rec;
      QElapsedTimer timer;
      timer.start();
      const MethodReport report =
          runMethod(name, model, scheme, calib.tokens, {{"iters", 30}}, "", &rec);
      const qint64 ms = timer.elapsed();
      const nlohmann::json &b0 = report.extra.at("blocks").at(0);
      const double first = b0.at("initial_loss").get<double>(),
                   last = b0.at("final_loss").get<double>();
      const std::vector<double> &curve = rec.curves.at(0);
      qInfo().noquote() << QStringLiteral(
                               "default model block 0, %1 W3 per-channel, 16x128 tokens, 30 iters: "
                               "calibration loss %2 -> %3 (%4%), batch loss %5 -> %6 "
                               "(first/last 5 iters), %7 learnable, %8 ms")
                               .arg(name)
                               .arg(first, 0, 'g', 5)
                               .arg(last, 0, 'g', 5)
                               .arg(100.0 * (last - first) / first, 0, 'f', 1)
                               .arg(mean(curve, 0, 5), 0, 'g', 5)
                               .arg(mean(curve, 25, 5), 0, 'g', 5)
                               .arg(b0.at("learnable_params").get<int64_t>())
                               .arg(ms);
      QVERIFY2(last < first, name);
      QVERIFY2(mean(curve, 25, 5) < mean(curve, 0, 5), name);
      QCOMPARE(int(report.layers.size()), 7);
      QVERIFY(model.weights().blocks[1].up.weight.is_same(up1)); // block 1 untouched
      perBlock[name] = b0.at("learnable_params").get<int64_t>();
    }
    // Hand count for block 0 (hidden 576, kv 192, ffn 1536), per-channel steps.
    struct Shape {
      int64_t out, in;
    };
    const std::vector<Shape> shapes = {{576, 576},  {192, 576},  {192, 576}, {576, 576},
                                       {1536, 576}, {1536, 576}, {576, 1536}};
    int64_t flex = 0, lrq = 0;
    for (const Shape &s : shapes) {
      const int64_t r = std::min(s.out, s.in) / 4;
      flex += s.out + s.out * s.in + s.out;
      lrq += s.out + s.out * r + r * s.in + s.out + s.in;
    }
    QCOMPARE(perBlock["flexround"], flex);
    QCOMPARE(perBlock["lrq"], lrq);
    qInfo().noquote() << QStringLiteral(
                             "learnable per block: FlexRound %1, LRQ %2 (%3%), weights %4")
                             .arg(flex)
                             .arg(lrq)
                             .arg(100.0 * double(lrq) / double(flex), 0, 'f', 1)
                             .arg(flex - 2 * (576 + 192 + 192 + 576 + 1536 + 1536 + 576));

    // Speed: batch 2 of 512-token sequences.
    const CalibrationSet big = makeCalibrationSet(stream, 4, 512, 1, "default text");
    const int64_t T = 512, B = 2, H = 576;
    const double linearMacs = 576.0 * 576 * 2 + 192.0 * 576 * 2 + 1536.0 * 576 * 3;
    // Causal attention as computed (128-query chunks against the keys up to the
    // chunk's end): QKᵀ and PV, 2 FLOPs per multiply-add.
    double attnMacs = 0;
    for (int64_t t0 = 0; t0 < T; t0 += 128)
      attnMacs += 2.0 * 128 * double(t0 + 128) * H;
    const double forwardFlops = B * (2.0 * linearMacs * T + 2.0 * attnMacs);
    const double iterFlops = 3.0 * forwardFlops; // forward + backward (dX and dW)
    at::Tensor a = at::randn({1024, 576}), w = at::randn({1536, 576});
    at::mm(a, w.t());
    const auto t0 = std::chrono::steady_clock::now();
    const int reps = 20;
    for (int i = 0; i < reps; ++i)
      at::mm(a, w.t());
    const double gemmSeconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    const double gemmGflops = 2.0 * 1024 * 576 * 1536 / gemmSeconds / 1e9;
    for (const char *name : {"lrq", "flexround"}) {
      DecoderModel model(m.config, ModelWeights::fromHfTensors(m.config, m.tensors));
      const MethodReport report = runMethod(name, model, scheme, big.tokens, {{"iters", 6}});
      const double spi = report.extra.at("seconds_per_iteration").get<double>();
      qInfo().noquote()
          << QStringLiteral("%1 on a default-model block, batch 2 x 512 tokens: %2 s/iteration, "
                            "%3 GFLOP/iteration (block GEMMs + attention, fwd+bwd) = %4 GFLOP/s; "
                            "plain GEMM 1024x576x1536: %5 GFLOP/s (%6 threads) -> %7% of GEMM")
                 .arg(name)
                 .arg(spi, 0, 'f', 3)
                 .arg(iterFlops / 1e9, 0, 'f', 1)
                 .arg(iterFlops / spi / 1e9, 0, 'f', 1)
                 .arg(gemmGflops, 0, 'f', 1)
                 .arg(at::get_num_threads())
                 .arg(100.0 * iterFlops / spi / 1e9 / gemmGflops, 0, 'f', 0);
      QVERIFY(spi > 0);
    }
  }
};

QTEST_GUILESS_MAIN(TestRecon)
#include "test_recon.moc"
