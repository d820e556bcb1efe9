// Perplexity and generation: the real model against the numpy reference,
// perplexity arithmetic by hand on a tiny model, greedy decoding against
// step-by-step argmax, seeded sampling, cancellation.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <cmath>
#include <memory>

#include "core/common/error.h"
#include "core/eval/generate.h"
#include "core/eval/perplexity.h"
#include "core/io/model_loader.h"
#include "decoder_test_models.h"
#include "test_support.h"

using namespace lrq;

namespace {

struct RecordingObserver : ProgressObserver {
  std::string task;
  int64_t total = -1;
  std::vector<int64_t> done;
  std::map<std::string, double> metrics;
  bool finishedCalled = false;
  CancelToken *cancelAfterFirst = nullptr;

  void started(const std::string &t, int64_t n) override {
    task = t;
    total = n;
  }
  void progress(int64_t d, int64_t, const std::string &) override {
    done.push_back(d);
    if (cancelAfterFirst)
      cancelAfterFirst->cancel();
  }
  void metric(const std::string &name, double value) override { metrics[name] = value; }
  void finished() override { finishedCalled = true; }
};

// Mean NLL computed the long way: full forward per window, then for every
// position from `first` on, log(sum exp(logits)) - logit[target] in double, element
// by element. bos >= 0 replaces each window's first token.
double handMeanNll(const DecoderModel &model, const std::vector<int32_t> &tokens, int64_t seqLen,
                   int64_t windows, int64_t *count, int64_t first = 0, int32_t bos = -1) {
  double sum = 0;
  *count = 0;
  for (int64_t w = 0; w < windows; ++w) {
    std::vector<int64_t> ids(tokens.begin() + w * seqLen, tokens.begin() + (w + 1) * seqLen);
    if (bos >= 0)
      ids[0] = bos;
    const at::Tensor logits =
        model.forward(at::tensor(ids, at::kLong).view({1, -1}))[0].to(at::kDouble).contiguous();
    const int64_t V = logits.size(1);
    const double *p = logits.data_ptr<double>();
    for (int64_t t = first; t + 1 < seqLen; ++t) {
      const double *row = p + t * V;
      double mx = row[0];
      for (int64_t v = 1; v < V; ++v)
        mx = std::max(mx, row[v]);
      double s = 0;
      for (int64_t v = 0; v < V; ++v)
        s += std::exp(row[v] - mx);
      sum += mx + std::log(s) - row[ids[size_t(t + 1)]];
      ++*count;
    }
  }
  return sum / double(*count);
}

} // namespace

class TestEval : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  std::unique_ptr<DecoderModel> tiny_;    // LLaMA with GQA
  std::unique_ptr<DecoderModel> tinyOpt_; // OPT, pre-LN
  std::unique_ptr<DecoderModel> real_;

  static std::unique_ptr<DecoderModel> build(const test::TinyModel &m) {
    return std::make_unique<DecoderModel>(m.config,
                                          ModelWeights::fromHfTensors(m.config, m.tensors));
  }

  DecoderModel &realModel() {
    if (!real_) {
      LoadedModel loaded = loadModel(test::defaultModelPath());
      real_ = std::make_unique<DecoderModel>(
          loaded.config, ModelWeights::fromHfTensors(loaded.config, loaded.tensors));
    }
    return *real_;
  }

  static std::vector<int32_t> randomTokens(int64_t n, int64_t vocab, uint64_t seed) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
    const at::Tensor t = at::randint(vocab, {n}, g, at::kLong);
    std::vector<int32_t> out;
    for (int64_t i = 0; i < n; ++i)
      out.push_back(int32_t(t[i].item<int64_t>()));
    return out;
  }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    QString error;
    const QStringList names = test::writeTinyModels(dir_.path(), &error);
    QVERIFY2(names.contains("llama_gqa") && names.contains("opt_pre"), qPrintable(error));
    tiny_ = build(test::readTinyModel(dir_.path(), "llama_gqa"));
    tinyOpt_ = build(test::readTinyModel(dir_.path(), "opt_pre"));
  }

  void perplexityArithmetic_data() {
    QTest::addColumn<bool>("opt");
    QTest::newRow("llama") << false;
    QTest::newRow("opt") << true;
  }

  void perplexityArithmetic() {
    QFETCH(bool, opt);
    const DecoderModel &model = opt ? *tinyOpt_ : *tiny_;
    // 3 full windows of 10 and a partial one that must be dropped.
    const auto tokens = randomTokens(34, model.config().vocabSize, 11);
    RecordingObserver obs;
    const PerplexityResult r = evaluatePerplexity(model, tokens, 10, &obs);
    int64_t count = 0;
    c10::InferenceMode guard;
    const double hand = handMeanNll(model, tokens, 10, 3, &count);
    QCOMPARE(r.windows, int64_t(3));
    QCOMPARE(r.tokens, int64_t(27));
    QCOMPARE(count, r.tokens);
    QCOMPARE(r.seqLen, int64_t(10));
    QVERIFY2(std::abs(r.meanNll - hand) < 1e-5,
             qPrintable(QString("%1 vs %2").arg(r.meanNll).arg(hand)));
    QVERIFY(std::abs(r.perplexity - std::exp(hand)) < 1e-5 * std::exp(hand));
    QVERIFY(r.tokensPerSecond > 0);
    // Observer: total in tokens, one progress per window, metrics, finished.
    QCOMPARE(QString::fromStdString(obs.task), QString("perplexity"));
    QCOMPARE(obs.total, int64_t(30));
    QCOMPARE(obs.done, (std::vector<int64_t>{10, 20, 30}));
    QVERIFY(obs.finishedCalled);
    QCOMPARE(obs.metrics.at("perplexity"), r.perplexity);

    const PerplexityResult two = evaluatePerplexity(model, tokens, 10, nullptr, nullptr, 2);
    const double hand2 = handMeanNll(model, tokens, 10, 2, &count);
    QCOMPARE(two.windows, int64_t(2));
    QCOMPARE(two.tokens, int64_t(18));
    QVERIFY(std::abs(two.meanNll - hand2) < 1e-5);
  }

  // llama-perplexity's rule: only positions from seqLen/2 on are scored, and BOS
  // replaces each window's first token. Checked against the long way, and shown to
  // differ from scoring every position (so the rule is really applied).
  void perplexityScoresSecondHalf() {
    const DecoderModel &model = *tiny_;
    const auto tokens = randomTokens(40, model.config().vocabSize, 17);
    int64_t count = 0;
    for (int32_t bos : {-1, 3}) {
      PerplexityScoring scoring;
      scoring.firstScored = 5;
      scoring.windowBos = bos;
      const PerplexityResult r =
          evaluatePerplexity(model, tokens, 10, nullptr, nullptr, 0, scoring);
      c10::InferenceMode guard;
      const double hand = handMeanNll(model, tokens, 10, 4, &count, 5, bos);
      QCOMPARE(r.firstScored, int64_t(5));
      QCOMPARE(r.tokens, int64_t(4 * 4)); // positions 5..8 of each window
      QCOMPARE(count, r.tokens);
      QVERIFY2(std::abs(r.meanNll - hand) < 1e-5,
               qPrintable(QString("bos %1: %2 vs %3").arg(bos).arg(r.meanNll).arg(hand)));
      const double all = handMeanNll(model, tokens, 10, 4, &count, 0, bos);
      QVERIFY(std::abs(all - hand) > 1e-3);
    }
    // The BOS only changes the context: with a different first token, the NLL moves.
    PerplexityScoring withBos;
    withBos.firstScored = 5;
    withBos.windowBos = tokens[0] == 3 ? 4 : 3;
    PerplexityScoring plain;
    plain.firstScored = 5;
    QVERIFY(std::abs(evaluatePerplexity(model, tokens, 10, nullptr, nullptr, 0, withBos).meanNll -
                     evaluatePerplexity(model, tokens, 10, nullptr, nullptr, 0, plain).meanNll) >
            1e-7);
    // Nothing left to score, or a BOS outside the vocabulary: clear errors.
    PerplexityScoring bad;
    bad.firstScored = 9;
    QVERIFY_THROWS_EXCEPTION(Error,
                             evaluatePerplexity(model, tokens, 10, nullptr, nullptr, 0, bad));
    bad.firstScored = -1;
    QVERIFY_THROWS_EXCEPTION(Error,
                             evaluatePerplexity(model, tokens, 10, nullptr, nullptr, 0, bad));
    bad.firstScored = 5;
    bad.windowBos = int32_t(model.config().vocabSize);
    QVERIFY_THROWS_EXCEPTION(Error,
                             evaluatePerplexity(model, tokens, 10, nullptr, nullptr, 0, bad));
  }

  void perplexityNeedsAWindow() {
    const auto tokens = randomTokens(9, tiny_->config().vocabSize, 3);
    QVERIFY_THROWS_EXCEPTION(Error, evaluatePerplexity(*tiny_, tokens, 10));
    QVERIFY_THROWS_EXCEPTION(Error, evaluatePerplexity(*tiny_, tokens, 1));
  }

  void cancelStopsBetweenWindows() {
    const auto tokens = randomTokens(40, tiny_->config().vocabSize, 5);
    CancelToken cancel;
    RecordingObserver obs;
    obs.cancelAfterFirst = &cancel;
    QVERIFY_THROWS_EXCEPTION(Cancelled, evaluatePerplexity(*tiny_, tokens, 10, &obs, &cancel));
    QCOMPARE(obs.done.size(), size_t(1)); // the first window ran, the second did not
    QVERIFY(!obs.finishedCalled);
  }

  void greedyEqualsStepwiseArgmax_data() { perplexityArithmetic_data(); }
  void greedyEqualsStepwiseArgmax() {
    QFETCH(bool, opt);
    const DecoderModel &model = opt ? *tinyOpt_ : *tiny_;
    const std::vector<int32_t> prompt = randomTokens(5, model.config().vocabSize, 9);
    SamplingOptions o;
    o.maxNewTokens = 12;
    std::vector<int32_t> streamed;
    const auto out = generateTokens(model, prompt, o, [&](int32_t t) { streamed.push_back(t); });
    QCOMPARE(out.size(), size_t(12));
    QCOMPARE(streamed, out);
    // Recompute each step without a cache: full forward, argmax of the last row.
    c10::InferenceMode guard;
    std::vector<int64_t> seq(prompt.begin(), prompt.end());
    for (size_t i = 0; i < out.size(); ++i) {
      const at::Tensor logits = model.forward(at::tensor(seq, at::kLong).view({1, -1}));
      const int64_t expected = logits[0][int64_t(seq.size()) - 1].argmax().item<int64_t>();
      QCOMPARE(int64_t(out[i]), expected);
      seq.push_back(expected);
    }
  }

  void generationStopsAtEos() {
    const std::vector<int32_t> prompt = randomTokens(5, tiny_->config().vocabSize, 9);
    SamplingOptions o;
    o.maxNewTokens = 12;
    const auto greedy = generateTokens(*tiny_, prompt, o);
    // Take the token at step 4 as EOS: generation ends where it first appears.
    const int32_t eos = greedy[4];
    const size_t first = size_t(std::find(greedy.begin(), greedy.end(), eos) - greedy.begin());
    o.eosId = eos;
    const auto stopped = generateTokens(*tiny_, prompt, o);
    QCOMPARE(stopped, std::vector<int32_t>(greedy.begin(), greedy.begin() + long(first)));
  }

  void samplingIsSeededAndTopK1IsGreedy() {
    const std::vector<int32_t> prompt = randomTokens(4, tiny_->config().vocabSize, 21);
    SamplingOptions greedyOpts;
    greedyOpts.maxNewTokens = 16;
    const auto greedy = generateTokens(*tiny_, prompt, greedyOpts);

    SamplingOptions o = greedyOpts;
    o.temperature = 1.5; // flat enough that samples differ from greedy
    o.seed = 42;
    const auto a = generateTokens(*tiny_, prompt, o);
    const auto b = generateTokens(*tiny_, prompt, o);
    QCOMPARE(a, b);
    QVERIFY(a != greedy);
    int differing = 0;
    for (uint64_t seed : {1, 2, 3}) {
      o.seed = seed;
      differing += generateTokens(*tiny_, prompt, o) != a;
    }
    QVERIFY(differing >= 2);

    o.topK = 1;
    QCOMPARE(generateTokens(*tiny_, prompt, o), greedy);
    o.topK = 0;
    o.topP = 1e-6; // only the most probable token survives
    QCOMPARE(generateTokens(*tiny_, prompt, o), greedy);
  }

  void generationStopsAtTheContextLength() {
    // The tiny LLaMA has 64 positions: generation ends there (as OPT's does at its
    // learned positions), and a prompt longer than that is refused.
    const int64_t context = tiny_->config().maxPositions;
    QVERIFY(context > 8);
    SamplingOptions o;
    o.maxNewTokens = 20;
    const auto out =
        generateTokens(*tiny_, randomTokens(context - 5, tiny_->config().vocabSize, 3), o);
    QCOMPARE(int64_t(out.size()), int64_t(5));
    QVERIFY_THROWS_EXCEPTION(
        Error, generateTokens(*tiny_, randomTokens(context + 1, tiny_->config().vocabSize, 3), o));
  }

  void topKRestrictsChoices() {
    // With top-k = 3 every sampled token is among the 3 largest logits of its step.
    const std::vector<int32_t> prompt = randomTokens(4, tiny_->config().vocabSize, 8);
    SamplingOptions o;
    o.maxNewTokens = 10;
    o.temperature = 2.0;
    o.topK = 3;
    o.seed = 5;
    const auto out = generateTokens(*tiny_, prompt, o);
    c10::InferenceMode guard;
    std::vector<int64_t> seq(prompt.begin(), prompt.end());
    for (int32_t t : out) {
      const at::Tensor logits = tiny_->forward(at::tensor(seq, at::kLong).view({1, -1}));
      const at::Tensor top = std::get<1>(logits[0][int64_t(seq.size()) - 1].topk(3));
      QVERIFY(top.eq(int64_t(t)).any().item<bool>());
      seq.push_back(t);
    }
  }

  void generationCancels() {
    CancelToken cancel;
    SamplingOptions o;
    o.maxNewTokens = 10;
    int produced = 0;
    const std::vector<int32_t> prompt = randomTokens(4, tiny_->config().vocabSize, 1);
    QVERIFY_THROWS_EXCEPTION(Cancelled, generateTokens(
                                            *tiny_, prompt, o,
                                            [&](int32_t) {
                                              if (++produced == 3)
                                                cancel.cancel();
                                            },
                                            &cancel));
    QCOMPARE(produced, 3);
    QVERIFY_THROWS_EXCEPTION(Error, generateTokens(*tiny_, {}, o));
  }

  // Real SmolLM2-135M: our perplexity over 4 windows of 192 tokens of the
  // reference script's text vs its numpy forward's mean NLL.
  void realModelPerplexityMatchesNumpy() {
    QString error;
    const QByteArray json = test::runReference(
        "decoder_reference.py",
        {"gguf-ppl", QString::fromStdString(test::defaultModelPath()), "192", "4"}, &error);
    QVERIFY2(!json.isEmpty(), qPrintable(error));
    const QJsonObject ref = QJsonDocument::fromJson(json).object();
    std::vector<int32_t> tokens;
    for (const auto &v : ref.value("tokens").toArray())
      tokens.push_back(int32_t(v.toInteger()));
    QCOMPARE(tokens.size(), size_t(768));
    const PerplexityResult r = evaluatePerplexity(realModel(), tokens, 192);
    const double refPpl = ref.value("perplexity").toDouble();
    qInfo("SmolLM2-135M, 4 x 192 tokens: perplexity ours %.5f, numpy %.5f (mean NLL %.6f vs "
          "%.6f)",
          r.perplexity, refPpl, r.meanNll, ref.value("mean_nll").toDouble());
    QCOMPARE(r.tokens, int64_t(4 * 191));
    QVERIFY(refPpl > 1.0 && refPpl < 1000.0);
    QVERIFY2(std::abs(r.perplexity / refPpl - 1.0) < 0.01,
             qPrintable(QString("%1 vs %2").arg(r.perplexity).arg(refPpl)));
  }

  // Throughput at seq-len 512, printed as tokens/s and GFLOP/s (a figure, not a
  // pass/fail criterion). FLOPs: 2 per linear weight per token (LM head
  // included) plus the causal part of QK^T and PV: 2 * 2 * heads * headDim *
  // T(T+1)/2 per block and window.
  void realModelThroughputAt512() {
    DecoderModel &model = realModel();
    const ModelConfig &c = model.config();
    const std::vector<int32_t> tokens = randomTokens(512, c.vocabSize, 17);
    int64_t linearParams = model.weights().lmHead.numel();
    for (auto &b : model.weights().blocks)
      for (auto &[role, l] : blockLinears(c, b))
        linearParams += l->weight.numel();
    const double T = 512;
    const double flops = 2.0 * double(linearParams) * T +
                         2.0 * double(c.numHeads * c.headDim) * T * (T + 1) * double(c.numLayers);
    const int saved = at::get_num_threads();
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      evaluatePerplexity(model, tokens, 64, nullptr, nullptr, 1); // warm-up
      const PerplexityResult r = evaluatePerplexity(model, tokens, 512);
      QCOMPARE(r.windows, int64_t(1));
      QVERIFY(std::isfinite(r.perplexity));
      qInfo("seq-len 512, %d thread(s): %.1f tokens/s, %.1f GFLOP/s (%.3g GFLOP per window)",
            threads, r.tokensPerSecond, flops / r.seconds / 1e9, flops / 1e9);
    }
    at::set_num_threads(saved);
  }
};

QTEST_GUILESS_MAIN(TestEval)
#include "test_eval.moc"
