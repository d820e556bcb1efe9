// CompareModel, bits per weight and CompareView over a hand-made run store:
// three trained or corrected runs (LRQ, FlexRound, L²QER at W3A16-g128) plus
// RTN without curves, an unselected GPTQ run and a failed run.
#include <QAbstractItemModelTester>
#include <QFile>
#include <QFont>
#include <QImage>
#include <QLabel>
#include <QSignalSpy>
#include <QTabWidget>
#include <QTableView>
#include <QTemporaryDir>
#include <QtTest>

#include <qcustomplot.h>

#include <cmath>
#include <map>

#include "core/quant/scheme.h"
#include "core/runs/run_store.h"
#include "test_support.h"
#include "widgets/compare_model.h"
#include "widgets/compare_view.h"
#include "widgets/run_metrics.h"

using namespace lrq;
using lrq::ui::CompareModel;
using lrq::ui::CompareView;

namespace {

const char *kSchemeW3g128 =
    R"({"name":"W3A16-g128","weight":{"bits":3,"symmetric":false,"granularity":"per-group",)"
    R"("group_size":128,"init":"minmax","clip_steps":100,"clip_norm":2},)"
    R"("activation":{"mode":"none","bits":8,"init":"minmax","clip_steps":100,"clip_norm":2},)"
    R"("kv8":false,"layers":{"blocks":"all","linears":"all","embeddings":false,"lm_head":false}})";

const int kBlocks = 12;
const char *kRoles[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                        "gate_proj", "up_proj", "down_proj"};

struct Shape {
  int out, in;
};
Shape shapeOf(const std::string &role) {
  if (role == "k_proj" || role == "v_proj")
    return {192, 576};
  if (role == "gate_proj" || role == "up_proj")
    return {1536, 576};
  if (role == "down_proj")
    return {576, 1536};
  return {576, 576};
}

// A per-method SQNR that varies with depth and role, so that lines differ.
double sqnrOf(const std::string &method, int block, int roleIndex) {
  static const std::map<std::string, double> base = {
      {"rtn", 9.4}, {"flexround", 12.1}, {"lrq", 11.5}, {"l2qer", 12.4}, {"gptq", 10.6}};
  const double depth = 0.9 * std::sin(0.45 * block) - (block == 0 ? 1.2 : 0.0);
  return base.at(method) + depth - 0.35 * roleIndex + 0.05 * roleIndex * block / kBlocks;
}

struct Made {
  QString path;
  QString lrq, flexround, l2qer, rtn, gptq, failed;
};

std::vector<double> noiseSpectrum(int n, double scale) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i)
    v.push_back(scale * (std::sqrt(1.0 - double(i) / n) + 0.04));
  return v;
}

std::string makeRun(RunStore &store, const std::string &method, const std::string &hyper,
                    double ppl, double kl, double top1, double seconds, double rss, bool curves,
                    bool blocks, bool spectra) {
  RunInfo info;
  info.method = method;
  info.model = {"/cache/SmolLM2-135M-Instruct-Q4_1.gguf", "size=1;mtime=2"};
  info.schemeJson = kSchemeW3g128;
  info.hyperparametersJson = hyper;
  info.status = RunStatus::Running;
  info.notes = "full-precision reference: dequantized from Q4_1";
  const std::string id = store.createRun(info);
  store.setMetric(id, "perplexity", ppl);
  store.setMetric(id, "reference_perplexity", 56.97);
  store.setMetric(id, "kl", kl);
  store.setMetric(id, "top1", top1);
  store.setMetric(id, "peak_rss_mib", rss);
  if (blocks) {
    std::vector<BlockRecord> records;
    for (int b = 0; b < kBlocks; ++b) {
      BlockRecord r;
      r.index = b;
      r.initialLoss = 0.02 * (1 + b) * (method == "l2qer" ? 0.5 : 1.0);
      const double floor = r.initialLoss * (method == "flexround" ? 0.18 : 0.24);
      if (curves) {
        for (int it = 0; it <= 50; it += 2)
          r.curve.push_back({it, float(floor + (r.initialLoss - floor) * std::exp(-it / 9.0) *
                                                   (1 + 0.04 * std::sin(it + b)))});
        r.finalLoss = r.curve.back().loss;
        // Held-out samples: FlexRound fits its training samples more closely.
        r.heldoutInitialLoss = r.initialLoss * 1.05;
        r.heldoutFinalLoss = r.finalLoss * (method == "flexround" ? 1.6 : 1.15);
      } else {
        r.finalLoss = r.initialLoss * 0.4;
      }
      r.seconds = 2.0;
      records.push_back(r);
    }
    store.appendBlocks(id, records);
  }
  std::vector<LayerStats> layers;
  std::vector<SpectrumRecord> spec;
  for (int b = 0; b < kBlocks; ++b)
    for (int k = 0; k < 7; ++k) {
      const std::string role = kRoles[k];
      const Shape s = shapeOf(role);
      const double sqnr = sqnrOf(method, b, k);
      int64_t params = 0;
      const int n = std::min(s.out, s.in);
      const int rank = n / 4;
      if (method == "flexround")
        params = int64_t(s.out) * s.in + s.out + s.in;
      if (method == "lrq")
        params = int64_t(rank) * (s.out + s.in) + s.out + s.in;
      layers.push_back({b, role, 1e-3 * std::pow(10.0, -sqnr / 10.0), sqnr, params});
      if (!spectra)
        continue;
      std::vector<double> w;
      for (int i = 0; i < n; ++i)
        w.push_back(12.0 * std::pow(i + 1.0, -0.45) + 0.3 + 0.01 * b);
      spec.push_back({b, role, "W", w});
      const double level = std::pow(10.0, -sqnr / 20.0) * 3.0;
      std::vector<double> e = noiseSpectrum(n, level);
      if (method == "l2qer") {
        std::vector<double> raw = noiseSpectrum(n, std::pow(10.0, -sqnrOf("rtn", b, k) / 20) * 3);
        std::vector<double> scaled;
        for (int i = 0; i < n; ++i)
          scaled.push_back(raw[i] * (1.0 + 4.0 * std::exp(-i / 12.0)));
        spec.push_back({b, role, "scaled_E", scaled});
        e.assign(raw.begin() + 32, raw.end());
        e.resize(n, raw.back());
      }
      spec.push_back({b, role, "E", e});
      if (method == "flexround") {
        std::vector<double> x;
        for (int i = 0; i < n; ++i)
          x.push_back(0.6 * std::pow(i + 1.0, -0.25));
        spec.push_back({b, role, "scale_exponent", x});
      }
      if (method == "lrq") {
        std::vector<double> x;
        for (int i = 0; i < n; ++i)
          x.push_back(i < rank ? 0.9 * std::pow(i + 1.0, -0.5) : 2e-9 * (1.0 - 0.5 * i / n));
        spec.push_back({b, role, "scale_exponent", x});
      }
    }
  store.appendLayerStats(id, layers);
  if (!spec.empty())
    store.appendSpectra(id, spec);
  store.finishRun(id, RunStatus::Finished, {}, seconds);
  return id;
}

Made makeStore(const QString &dir) {
  Made m;
  m.path = dir + "/runs.sqlite";
  RunStore store = RunStore::open(m.path.toStdString());
  m.gptq = QString::fromStdString(makeRun(store, "gptq", R"({"damp":0.01,"block_size":128})",
                                          180.747, 1.2705, 0.4459, 43, 1707, false, false, false));
  m.rtn = QString::fromStdString(
      makeRun(store, "rtn", "{}", 251.261, 1.7168, 0.3452, 17, 1508, false, false, true));
  m.flexround = QString::fromStdString(
      makeRun(store, "flexround", R"({"lr":0.003,"iterations":50,"batch_size":4})", 98.380, 0.6527,
              0.5797, 121, 1940, true, true, true));
  m.lrq = QString::fromStdString(makeRun(store, "lrq",
                                         R"({"lr":0.003,"iterations":50,"batch_size":4,"rank":0})",
                                         115.838, 0.8294, 0.5330, 125, 1857, true, true, true));
  m.l2qer = QString::fromStdString(makeRun(store, "l2qer",
                                           R"({"rank":32,"factor_bits":0,"batch_size":4})", 103.985,
                                           0.6422, 0.5917, 41, 1546, false, true, true));
  RunInfo failed;
  failed.method = "lrqat";
  failed.schemeJson = kSchemeW3g128;
  failed.hyperparametersJson = R"({"rank":16})";
  m.failed = QString::fromStdString(store.createRun(failed));
  store.setMetric(m.failed.toStdString(), "perplexity", 20.0);
  store.finishRun(m.failed.toStdString(), RunStatus::Failed, "out of memory", 5);
  return m;
}

QCPGraph *findGraph(QCustomPlot *plot, const QString &runId, const QString &kind) {
  for (int i = 0; i < plot->graphCount(); ++i) {
    QCPGraph *g = plot->graph(i);
    if (g->property("kind").toString() == kind &&
        (runId.isEmpty() || g->property("runId").toString() == runId))
      return g;
  }
  return nullptr;
}

QCPBars *findBars(QCustomPlot *plot, const QString &runId, const QString &metric = {}) {
  for (int i = 0; i < plot->plottableCount(); ++i)
    if (auto *b = qobject_cast<QCPBars *>(plot->plottable(i)))
      if (b->property("runId").toString() == runId &&
          (metric.isEmpty() || b->property("metric").toString() == metric))
        return b;
  return nullptr;
}

// The run a spectrum came from, read back from the store.
std::vector<double> storedSpectrum(const QString &path, const QString &id, int block,
                                   const std::string &role, const std::string &kind) {
  const RunRecord r = RunStore::open(path.toStdString()).getRun(id.toStdString());
  for (const SpectrumRecord &s : r.spectra)
    if (s.block == block && s.role == role && s.kind == kind)
      return s.values;
  return {};
}

void compareGraph(const QCPGraph *g, const std::vector<double> &xs, const std::vector<double> &ys,
                  double tolerance = 1e-12) {
  QVERIFY(g);
  QCOMPARE(g->dataCount(), int(ys.size()));
  int i = 0;
  for (auto it = g->data()->constBegin(); it != g->data()->constEnd(); ++it, ++i) {
    QCOMPARE(it->key, xs[i]);
    QVERIFY2(std::fabs(it->value - ys[i]) <= tolerance * std::max(1.0, std::fabs(ys[i])),
             qPrintable(QString("point %1: %2 vs %3").arg(i).arg(it->value).arg(ys[i])));
  }
}

} // namespace

class TestCompareView : public QObject {
  Q_OBJECT
private slots:
  void initTestCase();
  void bitsPerWeightByHand();
  void bitsPerWeightDefaultModel();
  void schemeLabels();
  void modelValuesAndDifferences();
  void modelErrors();
  void accuracyBars();
  void outOfDomainBars();
  void depthProfile();
  void lossCurves();
  void heldoutLosses();
  void spectraAndEnergy();
  void pareto();
  void missingData();
  void reportAndScreenshots();
  void reloadKeepsChoices();
  void storeFromEnvironment();

private:
  QTemporaryDir dir_;
  Made made_;
};

void TestCompareView::initTestCase() {
  QVERIFY(dir_.isValid());
  made_ = makeStore(dir_.path());
}

void TestCompareView::bitsPerWeightByHand() {
  using lrq::ui::estimateBitsPerWeight;
  const QList<lrq::ui::LinearShape> one{{"a", 256, 512}};
  auto scheme = [](int bits, bool sym, const char *gran, int group) {
    return QString(R"({"weight":{"bits":%1,"symmetric":%2,"granularity":"%3","group_size":%4}})")
        .arg(bits)
        .arg(sym ? "true" : "false")
        .arg(gran)
        .arg(group);
  };
  // 4 bits + one 16-bit scale per 128 weights (+ a zero point as wide as a code when
  // asymmetric).
  auto b = estimateBitsPerWeight("rtn", scheme(4, true, "per-group", 128), "{}", one);
  QVERIFY(b.valid);
  QCOMPARE(b.total(), 4.0 + 16.0 / 128);
  b = estimateBitsPerWeight("lrq", scheme(4, false, "per-group", 128), R"({"rank":64})", one);
  QCOMPARE(b.total(), 4.0 + 20.0 / 128); // LRQ's scales fold into Ŵ: no factors
  // Per-channel: one scale and zero per output row of 512 weights.
  b = estimateBitsPerWeight("rtn", scheme(3, false, "per-channel", 0), "{}", one);
  QCOMPARE(b.total(), 3.0 + 19.0 / 512);
  // Group size not dividing the row: ⌈512/96⌉ = 6 groups per row.
  b = estimateBitsPerWeight("rtn", scheme(3, true, "per-group", 96), "{}", one);
  QCOMPARE(b.scaleBits, 6.0 * 16 / 512);
  // L²QER rank 16: 16·(256+512)·16 bits over 256·512 weights = 1.5.
  b = estimateBitsPerWeight("l2qer", scheme(4, true, "per-group", 128), R"({"rank":16})", one);
  QCOMPARE(b.lowRankBits, 1.5);
  QCOMPARE(b.total(), 4.0 + 0.125 + 1.5);
  b = estimateBitsPerWeight("lqer", scheme(4, true, "per-group", 128),
                            R"({"rank":16,"factor_bits":8})", one);
  QCOMPARE(b.lowRankBits, 0.75);
  // The rank is capped by the matrix: rank 1000 on 256×512 keeps 256.
  b = estimateBitsPerWeight("l2qer", scheme(4, true, "per-group", 128), R"({"rank":1000})", one);
  QCOMPARE(b.lowRankBits, 256.0 * 768 * 16 / (256.0 * 512));
  // LR-QAT merges its adapters into the codes.
  b = estimateBitsPerWeight("lrqat", scheme(4, true, "per-group", 128), R"({"rank":16})", one);
  QCOMPARE(b.lowRankBits, 0.0);
  // Only the selected linears count.
  const QList<lrq::ui::LinearShape> two{{"a", 256, 512}, {"b", 64, 64}};
  b = estimateBitsPerWeight(
      "l2qer",
      R"({"weight":{"bits":4,"symmetric":true,"granularity":"per-group","group_size":128},)"
      R"("layers":{"linears":["a"]}})",
      R"({"rank":16})", two);
  QCOMPARE(b.lowRankBits, 1.5);
  // Broken schemes are reported, not guessed.
  QVERIFY(!estimateBitsPerWeight("rtn", "not json", "{}", one).valid);
  QVERIFY(
      !estimateBitsPerWeight("rtn", R"({"weight":{"bits":4,"granularity":"per-group"}})", "{}", one)
           .valid);
}

void TestCompareView::bitsPerWeightDefaultModel() {
  // SmolLM2-135M block, W3A16-g128 (asymmetric), worked out by hand:
  // weights 2·576² + 2·192·576 + 3·1536·576 = 3 538 944; groups of 128 per row:
  // ⌈576/128⌉ = 5, ⌈1536/128⌉ = 12 → 5·(576+192+192+576+1536+1536) + 12·576 = 29 952
  // units of 16 + 3 bits.
  const double weights = 3538944.0, units = 29952.0;
  auto b = lrq::ui::estimateBitsPerWeight("lrq", kSchemeW3g128, "{}");
  QVERIFY(b.valid);
  QVERIFY(std::fabs(b.total() - (3.0 + units * 19 / weights)) < 1e-12);
  // L²QER rank 32: Σ 32·(m+n) = 32·10176 factor values of 16 bits.
  b = lrq::ui::estimateBitsPerWeight("l2qer", kSchemeW3g128, R"({"rank":32})");
  QVERIFY(std::fabs(b.lowRankBits - 32.0 * 10176 * 16 / weights) < 1e-12);
  // gguf-q6_k: down_proj (1536 inputs = 6 super-blocks) in Q6_K, 210 bytes per
  // 256 weights; the rest (576 inputs) in the Q8_0 fallback, 34 bytes per 32.
  const double down = 1536.0 * 576;
  b = lrq::ui::estimateBitsPerWeight(
      "rtn", QString::fromStdString(lrq::quant::presetScheme("gguf-q6_k").toJson()), "{}");
  QVERIFY(b.valid);
  QVERIFY(std::fabs(b.weightBits - (6.0 * down + 8.0 * (weights - down)) / weights) < 1e-12);
  QVERIFY(std::fabs(b.total() - (6.5625 * down + 8.5 * (weights - down)) / weights) < 1e-12);
  // gguf-q4_k: down_proj in Q4_K, 144 bytes per 256 weights; the rest in the
  // Q5_0 fallback, 22 bytes per 32.
  b = lrq::ui::estimateBitsPerWeight(
      "rtn", QString::fromStdString(lrq::quant::presetScheme("gguf-q4_k").toJson()), "{}");
  QVERIFY(b.valid);
  QVERIFY(std::fabs(b.weightBits - (4.0 * down + 5.0 * (weights - down)) / weights) < 1e-12);
  QVERIFY(std::fabs(b.total() - (4.5 * down + 5.5 * (weights - down)) / weights) < 1e-12);
}

void TestCompareView::schemeLabels() {
  QCOMPARE(lrq::ui::schemeLabel(kSchemeW3g128), QString("W3A16-g128"));
  QCOMPARE(lrq::ui::schemeLabel(R"({"name":"custom","weight":{"bits":4,"granularity":"per-group",)"
                                R"("group_size":64},"activation":{"mode":"per-token-dynamic",)"
                                R"("bits":8},"kv8":true})"),
           QString("W4A8-g64-KV8 (custom)"));
}

void TestCompareView::modelValuesAndDifferences() {
  CompareModel model;
  QAbstractItemModelTester tester(&model, QAbstractItemModelTester::FailureReportingMode::QtTest);
  const QStringList ids{made_.lrq, made_.flexround, made_.l2qer, made_.rtn};
  QVERIFY2(model.setRuns(made_.path, ids), qPrintable(model.lastError()));
  QCOMPARE(model.columnCount(), 4);
  for (int c = 0; c < 4; ++c)
    QVERIFY(model.headerData(c, Qt::Horizontal).toString().contains(ids[c]));

  // Values equal the store's.
  const RunStore store = RunStore::open(made_.path.toStdString());
  auto value = [&](const QString &key, int c) {
    const int row = model.rowOf(key);
    return row < 0 ? QVariant() : model.index(row, c).data(CompareModel::ValueRole);
  };
  for (int c = 0; c < 4; ++c) {
    const RunInfo info = store.getRunInfo(ids[c].toStdString());
    QCOMPARE(value("summary:perplexity", c).toDouble(), info.metrics.at("perplexity"));
    QCOMPARE(value("summary:kl", c).toDouble(), info.metrics.at("kl"));
    QCOMPARE(value("summary:top1", c).toDouble(), info.metrics.at("top1"));
    QCOMPARE(value("summary:seconds", c).toDouble(), info.totalSeconds);
    QCOMPARE(value("summary:peak_rss", c).toDouble(), info.metrics.at("peak_rss_mib"));
    QCOMPARE(model.index(model.rowOf("summary:method"), c).data().toString(),
             QString::fromStdString(info.method));
  }
  QCOMPARE(model.index(model.rowOf("summary:perplexity"), 0).data().toString(), QString("115.84"));
  QCOMPARE(model.index(model.rowOf("summary:top1"), 1).data().toString(), QString("58.0 %"));
  QCOMPARE(model.index(model.rowOf("summary:scheme"), 2).data().toString(), QString("W3A16-g128"));
  // Bits: the same grid for all; L²QER adds its factors.
  const double w3 = value("summary:bits", 0).toDouble();
  QVERIFY(std::fabs(w3 - (3.0 + 29952.0 * 19 / 3538944.0)) < 1e-12);
  QCOMPARE(value("summary:bits", 3).toDouble(), w3);
  QVERIFY(value("summary:bits", 2).toDouble() > w3 + 1.0);

  // Best cells: FlexRound's perplexity, L²QER's KL and top-1.
  auto best = [&](const QString &key) {
    int found = -1;
    for (int c = 0; c < 4; ++c)
      if (model.index(model.rowOf(key), c).data(Qt::BackgroundRole).isValid())
        found = found < 0 ? c : 99;
    return found;
  };
  QCOMPARE(best("summary:perplexity"), 1);
  QCOMPARE(best("summary:kl"), 2);
  QCOMPARE(best("summary:top1"), 2);

  // Differing settings are flagged (bold); equal ones are not.
  const int rank = model.rowOf("hyperparameter:rank");
  QVERIFY(rank >= 0);
  QVERIFY(model.index(rank, 0).data(CompareModel::DiffersRole).toBool());
  QVERIFY(model.index(rank, 0).data(Qt::FontRole).value<QFont>().bold());
  QCOMPARE(model.index(rank, 2).data().toString(), QString("32"));
  QCOMPARE(model.index(rank, 3).data().toString(), QString());
  const int bits = model.rowOf("scheme:weight.bits");
  QVERIFY(bits >= 0);
  QVERIFY(!model.index(bits, 0).data(CompareModel::DiffersRole).toBool());
  QVERIFY(!model.index(bits, 0).data(Qt::FontRole).isValid());
  QCOMPARE(model.index(bits, 0).data().toString(), QString("3"));

  // Differences only: equal settings go, summary and differing rows stay.
  const int all = model.rowCount();
  model.setDifferencesOnly(true);
  QVERIFY(model.rowCount() < all);
  QCOMPARE(model.rowOf("scheme:weight.bits"), -1);
  QVERIFY(model.rowOf("hyperparameter:rank") >= 0);
  QVERIFY(model.rowOf("summary:scheme") >= 0);
  for (int r = 0; r < model.rowCount(); ++r) {
    const QString key = model.index(r, 0).data(CompareModel::KeyRole).toString();
    QVERIFY(key.startsWith("summary:") ||
            model.index(r, 0).data(CompareModel::DiffersRole).toBool());
  }
  model.setDifferencesOnly(false);
  QCOMPARE(model.rowCount(), all);
  QCOMPARE(model.allRuns().size(), size_t(6));
}

void TestCompareView::modelErrors() {
  CompareModel model;
  QAbstractItemModelTester tester(&model, QAbstractItemModelTester::FailureReportingMode::QtTest);
  QSignalSpy errors(&model, &CompareModel::errorOccurred);
  // An unknown id is reported; the known runs stay.
  QVERIFY(!model.setRuns(made_.path, {made_.lrq, "no-such-run"}));
  QCOMPARE(errors.count(), 1);
  QVERIFY(model.lastError().contains("no-such-run"));
  QCOMPARE(model.columnCount(), 1);
  // No store at all.
  QVERIFY(!model.setRuns(dir_.path() + "/missing/runs.sqlite", {made_.lrq}));
  QCOMPARE(errors.count(), 2);
  QVERIFY(model.lastError().contains("missing"));
  QCOMPARE(model.columnCount(), 0);
  QCOMPARE(model.rowCount(), 0);
  QVERIFY(!QFile::exists(dir_.path() + "/missing/runs.sqlite")); // not created
  // A file that is not a run store.
  const QString junk = dir_.path() + "/junk.sqlite";
  {
    QFile f(junk);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write("this is not an SQLite database, just text long enough to be read as a header");
  }
  QVERIFY(!model.setRuns(junk, {made_.lrq}));
  QCOMPARE(errors.count(), 3);
  QCOMPARE(model.columnCount(), 0);
  // And back to a good selection: the error clears.
  QVERIFY(model.setRuns(made_.path, {made_.lrq, made_.rtn}));
  QVERIFY(model.lastError().isEmpty());
  QCOMPARE(model.columnCount(), 2);
}

void TestCompareView::accuracyBars() {
  CompareView view;
  view.setRuns(made_.path, {made_.lrq, made_.flexround, made_.l2qer, made_.rtn});
  QCOMPARE(view.plots().size(), 9);
  const RunStore store = RunStore::open(made_.path.toStdString());
  for (const QString &id : {made_.lrq, made_.flexround, made_.l2qer, made_.rtn}) {
    const RunInfo info = store.getRunInfo(id.toStdString());
    QCPBars *ppl = findBars(view.perplexityPlot(), id);
    QVERIFY(ppl);
    QCOMPARE(ppl->data()->constBegin()->value, info.metrics.at("perplexity"));
    QCOMPARE(findBars(view.klPlot(), id)->data()->constBegin()->value, info.metrics.at("kl"));
    QCOMPARE(findBars(view.top1Plot(), id)->data()->constBegin()->value,
             100.0 * info.metrics.at("top1"));
  }
  QCPGraph *ref = findGraph(view.perplexityPlot(), {}, "reference");
  QVERIFY(ref);
  QVERIFY2(ref->name().startsWith("full precision (dequantized Q4_1)"), qPrintable(ref->name()));
  QCOMPARE(ref->data()->constBegin()->value, 56.97);
  QVERIFY(view.perplexityPlot()->legend->visible());
  QVERIFY(view.perplexityPlot()->yAxis->range().upper > 251.261);
  QVERIFY(view.perplexityPlot()->yAxis->label().contains("perplexity"));
}

void TestCompareView::outOfDomainBars() {
  // Without out-of-domain figures: no paired bars and no empty summary rows.
  {
    CompareView view;
    view.setRuns(made_.path, {made_.lrq, made_.rtn});
    QCOMPARE(view.model()->rowOf("summary:ood_kl"), -1);
    QVERIFY(!findBars(view.klPlot(), made_.lrq, "ood_kl"));
    QCOMPARE(findBars(view.klPlot(), made_.lrq)->width(), 0.6);
  }
  const QString path = dir_.path() + "/ood.sqlite";
  QFile::remove(path);
  QVERIFY(QFile::copy(made_.path, path));
  {
    RunStore store = RunStore::open(path.toStdString());
    store.setMetric(made_.lrq.toStdString(), "ood_kl", 0.75);
    store.setMetric(made_.lrq.toStdString(), "ood_top1", 0.5);
    store.setMetric(made_.lrq.toStdString(), "ood_perplexity", 31.5);
    store.setMetric(made_.lrq.toStdString(), "ood_reference_perplexity", 20.25);
  }
  CompareView view;
  view.setRuns(path, {made_.lrq, made_.rtn});
  const RunInfo lrq = RunStore::open(path.toStdString()).getRunInfo(made_.lrq.toStdString());
  // Each run's in-domain bar left of its hatched out-of-domain bar.
  QCPBars *in = findBars(view.klPlot(), made_.lrq, "kl");
  QCPBars *out = findBars(view.klPlot(), made_.lrq, "ood_kl");
  QVERIFY(in && out);
  QCOMPARE(in->data()->constBegin()->value, lrq.metrics.at("kl"));
  QCOMPARE(out->data()->constBegin()->value, 0.75);
  QVERIFY(in->data()->constBegin()->key < out->data()->constBegin()->key);
  QCOMPARE(out->brush().style(), Qt::BDiagPattern);
  QCOMPARE(findBars(view.top1Plot(), made_.lrq, "ood_top1")->data()->constBegin()->value, 50.0);
  // The run without the second text keeps its in-domain bar only.
  QVERIFY(findBars(view.klPlot(), made_.rtn, "kl"));
  QVERIFY(!findBars(view.klPlot(), made_.rtn, "ood_kl"));
  QVERIFY(view.klPlot()->legend->visible());
  // Both reference perplexities are drawn and named.
  int refs = 0;
  for (int i = 0; i < view.perplexityPlot()->graphCount(); ++i) {
    QCPGraph *g = view.perplexityPlot()->graph(i);
    if (g->property("kind").toString() != "reference")
      continue;
    ++refs;
    if (g->name().contains("out of domain"))
      QCOMPARE(g->data()->constBegin()->value, 20.25);
  }
  QCOMPARE(refs, 2);
  // The summary rows: out-of-domain KL shown for the run that has it only.
  const int row = view.model()->rowOf("summary:ood_kl");
  QVERIFY(row >= 0);
  QCOMPARE(view.model()->index(row, 0).data().toString(), QString("0.7500"));
  QVERIFY(view.model()->index(row, 1).data().toString().isEmpty());
}

void TestCompareView::depthProfile() {
  CompareView view;
  view.setRuns(made_.path, {made_.lrq, made_.flexround, made_.l2qer, made_.rtn});
  view.setDepthLayer("q_proj");
  view.setDepthMetric(CompareView::DepthMetric::SqnrDb);
  const RunStore store = RunStore::open(made_.path.toStdString());
  for (const QString &id : {made_.lrq, made_.flexround, made_.l2qer, made_.rtn}) {
    const RunRecord r = store.getRun(id.toStdString());
    std::vector<double> xs, sqnr, mse, mean;
    std::map<int, std::vector<double>> byBlock;
    for (const LayerStats &l : r.layers) {
      byBlock[l.block].push_back(l.sqnrDb);
      if (l.role == "q_proj") {
        xs.push_back(l.block);
        sqnr.push_back(l.sqnrDb);
        mse.push_back(std::pow(10.0, -l.sqnrDb / 10.0));
      }
    }
    for (const auto &[block, values] : byBlock) {
      double s = 0;
      for (double v : values)
        s += v;
      mean.push_back(s / values.size());
    }
    QCOMPARE(int(xs.size()), kBlocks);
    compareGraph(findGraph(view.depthPlot(), id, "depth"), xs, sqnr);
    view.setDepthMetric(CompareView::DepthMetric::RelativeMse);
    compareGraph(findGraph(view.depthPlot(), id, "depth"), xs, mse);
    QCOMPARE(view.depthPlot()->yAxis->scaleType(), QCPAxis::stLogarithmic);
    view.setDepthMetric(CompareView::DepthMetric::SqnrDb);
    view.setDepthLayer(QString());
    std::vector<double> blocks;
    for (int b = 0; b < kBlocks; ++b)
      blocks.push_back(b);
    compareGraph(findGraph(view.depthPlot(), id, "depth"), blocks, mean);
    view.setDepthLayer("q_proj");
  }
  QVERIFY(view.depthPlot()->legend->visible());
  QCOMPARE(view.depthPlot()->xAxis->label(), QString("block index"));
  QVERIFY(view.depthPlot()->yAxis->label().contains("dB"));
  QVERIFY(view.noteText(CompareView::DepthTab).isEmpty());
}

void TestCompareView::lossCurves() {
  CompareView view;
  view.setRuns(made_.path, {made_.lrq, made_.flexround, made_.l2qer, made_.rtn});
  view.setCurveBlock(5);
  const RunStore store = RunStore::open(made_.path.toStdString());
  for (const QString &id : {made_.lrq, made_.flexround}) {
    const RunRecord r = store.getRun(id.toStdString());
    std::vector<double> xs, ys;
    for (const LossPoint &p : r.blocks.at(5).curve) {
      xs.push_back(p.iteration);
      ys.push_back(p.loss);
    }
    compareGraph(findGraph(view.curvesPlot(), id, "curve"), xs, ys);
  }
  QCOMPARE(view.curvesPlot()->graphCount(), 2);
  const QString note = view.noteText(CompareView::CurvesTab);
  QVERIFY2(note.contains("no training") && note.contains("rtn") && note.contains("l2qer"),
           qPrintable(note));
  QVERIFY(!note.contains("lrq,") && !note.contains("flexround"));
  QCOMPARE(view.curvesPlot()->yAxis->scaleType(), QCPAxis::stLogarithmic);
  QVERIFY(view.curvesPlot()->legend->visible());
}

// Per run, the training final loss by block (solid) and the held-out one
// (dashed), as stored; runs without trained blocks are named in the note.
void TestCompareView::heldoutLosses() {
  CompareView view;
  view.setRuns(made_.path, {made_.lrq, made_.flexround, made_.l2qer, made_.rtn});
  QCustomPlot *plot = view.heldoutPlot();
  const RunStore store = RunStore::open(made_.path.toStdString());
  for (const QString &id : {made_.lrq, made_.flexround}) {
    const RunRecord r = store.getRun(id.toStdString());
    std::vector<double> xs, train, heldout;
    double trainSum = 0, heldoutSum = 0;
    for (const BlockRecord &b : r.blocks) {
      xs.push_back(b.index);
      train.push_back(b.finalLoss);
      heldout.push_back(b.heldoutFinalLoss.value());
      trainSum += b.finalLoss;
      heldoutSum += *b.heldoutFinalLoss;
    }
    QCOMPARE(int(xs.size()), kBlocks);
    compareGraph(findGraph(plot, id, "train_final"), xs, train);
    const QCPGraph *h = findGraph(plot, id, "heldout_final");
    compareGraph(h, xs, heldout);
    QCOMPARE(h->pen().style(), Qt::DashLine);
    // The legend gives held-out over training: 1.60 for FlexRound, 1.15 for LRQ.
    QVERIFY2(h->name().contains(QString::number(heldoutSum / trainSum, 'f', 2)),
             qPrintable(h->name()));
  }
  QVERIFY(findGraph(plot, made_.flexround, "heldout_final")->name().contains("1.60"));
  QCOMPARE(plot->graphCount(), 4);
  QCOMPARE(plot->yAxis->scaleType(), QCPAxis::stLogarithmic);
  QVERIFY(!plot->xAxis->label().isEmpty());
  QVERIFY(plot->yAxis->label().contains("log scale"));
  QVERIFY(plot->legend->visible());
  const QString note = view.heldoutNoteText();
  QVERIFY2(note.contains("no trained blocks") && note.contains("l2qer") && note.contains("rtn"),
           qPrintable(note));
  QVERIFY(!note.contains("no held-out samples"));

  // A run of trained blocks without held-out samples gets its training line only.
  QTemporaryDir dir;
  RunStore other = RunStore::open((dir.path() + "/runs.sqlite").toStdString());
  RunInfo info;
  info.method = "lrq";
  info.schemeJson = kSchemeW3g128;
  const std::string id = other.createRun(info);
  BlockRecord b;
  b.index = 0;
  b.initialLoss = 0.5;
  b.finalLoss = 0.2;
  b.curve = {{0, 0.5f}, {1, 0.2f}};
  other.appendBlock(id, b);
  CompareView alone;
  alone.setRuns(dir.path() + "/runs.sqlite", {QString::fromStdString(id)});
  QVERIFY(findGraph(alone.heldoutPlot(), {}, "train_final"));
  QVERIFY(!findGraph(alone.heldoutPlot(), {}, "heldout_final"));
  QVERIFY(alone.heldoutNoteText().contains("no held-out samples"));
}

void TestCompareView::spectraAndEnergy() {
  CompareView view;
  view.setRuns(made_.path, {made_.lrq, made_.flexround, made_.l2qer, made_.rtn});
  view.setSpectrumLayer(4, "gate_proj");
  QCustomPlot *plot = view.spectraPlot();
  int wCount = 0;
  for (int i = 0; i < plot->graphCount(); ++i)
    wCount += plot->graph(i)->property("kind").toString() == "W" ? 1 : 0;
  QCOMPARE(wCount, 1); // W once
  struct Expect {
    QString id;
    std::string kind;
  };
  const Expect expected[] = {{made_.lrq, "E"},       {made_.lrq, "scale_exponent"},
                             {made_.flexround, "E"}, {made_.flexround, "scale_exponent"},
                             {made_.l2qer, "E"},     {made_.l2qer, "scaled_E"},
                             {made_.rtn, "E"},       {made_.lrq, "W"}};
  for (const Expect &e : expected) {
    const std::vector<double> stored = storedSpectrum(made_.path, e.id, 4, "gate_proj", e.kind);
    QCOMPARE(int(stored.size()), 576);
    std::vector<double> xs;
    for (int i = 0; i < int(stored.size()); ++i)
      xs.push_back(i + 1);
    QCPGraph *g = findGraph(plot, e.kind == "W" ? QString() : e.id, QString::fromStdString(e.kind));
    compareGraph(g, xs, stored);
  }
  QCOMPARE(findGraph(plot, made_.rtn, "scale_exponent"), nullptr);
  QCOMPARE(findGraph(plot, made_.l2qer, "scale_exponent"), nullptr);
  // The legend tells the ranks apart: LRQ's exponent has rank 576/4, FlexRound's is full.
  QVERIFY2(findGraph(plot, made_.lrq, "scale_exponent")->name().contains("rank 144 of 576"),
           qPrintable(findGraph(plot, made_.lrq, "scale_exponent")->name()));
  QVERIFY(findGraph(plot, made_.flexround, "scale_exponent")->name().contains("rank 576 of 576"));
  QCOMPARE(plot->yAxis->scaleType(), QCPAxis::stLogarithmic);
  QVERIFY(plot->legend->visible());

  // Energy captured at rank k, computed here independently (long double).
  view.setEnergyRank(20);
  for (const Expect &e : expected) {
    const std::vector<double> s = storedSpectrum(made_.path, e.id, 4, "gate_proj", e.kind);
    long double head = 0, total = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      total += (long double)s[i] * s[i];
      if (i < 20)
        head += (long double)s[i] * s[i];
    }
    const double expectedPercent = double(100 * head / total);
    QCPGraph *g = findGraph(view.energyPlot(), e.kind == "W" ? QString() : e.id,
                            "energy:" + QString::fromStdString(e.kind));
    QVERIFY(g);
    auto it = g->data()->findBegin(20, false);
    QCOMPARE(it->key, 20.0);
    QVERIFY2(std::fabs(it->value - expectedPercent) < 1e-9,
             qPrintable(QString("%1 vs %2").arg(it->value).arg(expectedPercent)));
    QVERIFY2(g->name().endsWith(": " + QString::number(expectedPercent, 'f', 1) + " %"),
             qPrintable(g->name()));
  }
  // One marker per curve at k.
  int markers = 0;
  for (int i = 0; i < view.energyPlot()->graphCount(); ++i)
    if (view.energyPlot()->graph(i)->property("kind").toString() == "marker") {
      ++markers;
      QCOMPARE(view.energyPlot()->graph(i)->data()->constBegin()->key, 20.0);
    }
  QCOMPARE(markers, 8);
  // The rank defaults to L²QER's.
  CompareView fresh;
  fresh.setRuns(made_.path, {made_.l2qer, made_.lrq});
  QCOMPARE(fresh.findChild<QSpinBox *>("energyRank")->value(), 32);
}

void TestCompareView::pareto() {
  CompareView view;
  view.resize(1280, 720);
  view.show();
  view.setRuns(made_.path, {made_.lrq, made_.flexround, made_.l2qer, made_.rtn});
  view.tabs()->setCurrentIndex(CompareView::ParetoTab);
  QVERIFY(QTest::qWaitForWindowExposed(&view));
  QCustomPlot *plot = view.paretoPlot();
  int points = 0;
  QSet<QString> methods;
  for (int i = 0; i < plot->graphCount(); ++i)
    if (plot->graph(i)->property("kind").toString() == "pareto") {
      points += plot->graph(i)->dataCount();
      methods.insert(plot->graph(i)->property("method").toString());
    }
  QCOMPARE(points, 5); // every finished run, the unselected GPTQ one too; not the failed one
  QCOMPARE(methods, (QSet<QString>{"rtn", "gptq", "flexround", "lrq", "l2qer"}));
  QCOMPARE(findGraph(plot, {}, "selected")->dataCount(), 4);
  QCOMPARE(plot->yAxis->scaleType(), QCPAxis::stLogarithmic);
  // Tooltip of the GPTQ point (3.16 bits, perplexity 180.7).
  plot->replot();
  const double bits = 3.0 + 29952.0 * 19 / 3538944.0;
  const QPointF pixel(plot->xAxis->coordToPixel(bits), plot->yAxis->coordToPixel(180.747));
  const QString tip = view.paretoToolTipAt(pixel);
  QVERIFY2(tip.contains(made_.gptq) && tip.contains("gptq") && tip.contains("W3A16-g128"),
           qPrintable(tip));
  QVERIFY(view.paretoToolTipAt(QPointF(1, 1)).isEmpty());
  // KL mode.
  view.setParetoMetric(CompareView::ParetoMetric::Kl);
  QVERIFY(plot->yAxis->label().contains("KL"));
  double minKl = 1e9;
  for (int i = 0; i < plot->graphCount(); ++i)
    if (plot->graph(i)->property("kind").toString() == "pareto")
      for (auto it = plot->graph(i)->data()->constBegin(); it != plot->graph(i)->data()->constEnd();
           ++it)
        minKl = std::min(minKl, it->value);
  QCOMPARE(minKl, 0.6422);
}

void TestCompareView::missingData() {
  // RTN alone: no curves, but a visible reason instead of a blank plot.
  CompareView view;
  view.setRuns(made_.path, {made_.rtn, made_.gptq});
  QCOMPARE(view.curvesPlot()->graphCount(), 0);
  QVERIFY(view.noteText(CompareView::CurvesTab).contains("no training"));
  bool message = false;
  for (int i = 0; i < view.curvesPlot()->itemCount(); ++i)
    message = message || view.curvesPlot()->item(i)->objectName() == "message";
  QVERIFY(message);
  QVERIFY(view.noteText(CompareView::SpectraTab).contains("no spectra recorded: gptq"));
  view.resize(1280, 720);
  view.setDepthMetric(CompareView::DepthMetric::RelativeMse);
  view.show();
  QVERIFY(QTest::qWaitForWindowExposed(&view));
  view.tabs()->setCurrentIndex(CompareView::CurvesTab);
  QVERIFY(view.grab().save(lrq::test::outputDir() + "/compare_curves_untrained.png"));
  view.tabs()->setCurrentIndex(CompareView::DepthTab);
  QVERIFY(view.grab().save(lrq::test::outputDir() + "/compare_depth_mse.png"));
  // A broken store: an error line, no crash, empty plots with a message.
  CompareView broken;
  QSignalSpy errors(&broken, &CompareView::errorOccurred);
  broken.setRuns(dir_.path() + "/nowhere.sqlite", {"x"});
  QCOMPARE(errors.count(), 1);
  QVERIFY(broken.findChild<QLabel *>("compareError")->text().contains("no run store"));
  QCOMPARE(broken.depthPlot()->graphCount(), 0);
  QVERIFY(!broken.toHtmlReport().isEmpty());
}

void TestCompareView::reportAndScreenshots() {
  CompareView view;
  view.resize(1280, 720);
  view.setRuns(made_.path, {made_.lrq, made_.flexround, made_.l2qer, made_.rtn});
  view.setSpectrumLayer(4, "gate_proj");
  view.setDepthLayer("down_proj");
  view.setCurveBlock(5);
  view.show();
  QVERIFY(QTest::qWaitForWindowExposed(&view));

  const QString html = view.toHtmlReport();
  QVERIFY(html.startsWith("<!DOCTYPE html>"));
  for (const char *text : {"115.84", "98.38", "103.98", "251.26", "0.6422", "W3A16-g128"})
    QVERIFY2(html.contains(text), text);
  QCOMPARE(html.count("data:image/png;base64,"), view.plots().size());
  // The first image decodes to the perplexity chart.
  const int at = html.indexOf("data:image/png;base64,") + 22;
  const QByteArray png =
      QByteArray::fromBase64(html.mid(at, html.indexOf('"', at) - at).toLatin1());
  QImage image;
  QVERIFY(image.loadFromData(png, "PNG"));
  QCOMPARE(image.width(), 720);

  const char *names[] = {"compare_accuracy.png", "compare_depth.png", "compare_curves.png",
                         "compare_spectra.png", "compare_pareto.png"};
  const QString out = lrq::test::outputDir();
  for (int tab = 0; tab < 5; ++tab) {
    view.tabs()->setCurrentIndex(tab);
    QTest::qWait(50);
    const QPixmap shot = view.grab();
    QCOMPARE(shot.size(), QSize(1280, 720));
    const QString path = out + "/" + names[tab];
    QVERIFY(shot.save(path));
    qInfo() << "screenshot:" << path;
  }
  QFile report(out + "/compare_report.html");
  QVERIFY(report.open(QIODevice::WriteOnly));
  report.write(html.toUtf8());
}

void TestCompareView::reloadKeepsChoices() {
  CompareView view;
  view.setRuns(made_.path, {made_.lrq, made_.flexround});
  view.setDepthLayer("v_proj");
  view.setSpectrumLayer(3, "o_proj");
  view.setEnergyRank(7);
  QCOMPARE(view.model()->rowOf("metric:late_metric"), -1);
  RunStore::open(made_.path.toStdString()).setMetric(made_.lrq.toStdString(), "late_metric", 2.5);
  view.reload();
  const int row = view.model()->rowOf("metric:late_metric");
  QVERIFY(row >= 0);
  QCOMPARE(view.model()->index(row, 0).data(CompareModel::ValueRole).toDouble(), 2.5);
  QCOMPARE(view.findChild<QComboBox *>("depthLayer")->currentData().toString(), QString("v_proj"));
  QCOMPARE(view.findChild<QComboBox *>("spectrumBlock")->currentData().toInt(), 3);
  QCOMPARE(view.findChild<QComboBox *>("spectrumRole")->currentData().toString(),
           QString("o_proj"));
  QCOMPARE(view.findChild<QSpinBox *>("energyRank")->value(), 7);
}

// LRQ_COMPARE_STORE=<runs.sqlite> [LRQ_COMPARE_IDS=id,id,...]: screenshots of
// a real store (default: its newest four runs) as compare_store_<tab>.png.
void TestCompareView::storeFromEnvironment() {
  const QString path = qEnvironmentVariable("LRQ_COMPARE_STORE");
  if (path.isEmpty())
    QSKIP("LRQ_COMPARE_STORE not set");
  QStringList ids = qEnvironmentVariable("LRQ_COMPARE_IDS").split(',', Qt::SkipEmptyParts);
  if (ids.isEmpty())
    for (const RunInfo &r : RunStore::open(path.toStdString()).listRuns({"", "", {}, 4}))
      ids << QString::fromStdString(r.id);
  CompareView view;
  view.resize(1280, 720);
  view.setRuns(path, ids);
  QVERIFY2(view.model()->lastError().isEmpty(), qPrintable(view.model()->lastError()));
  view.show();
  QVERIFY(QTest::qWaitForWindowExposed(&view));
  const char *names[] = {"accuracy", "depth", "curves", "spectra", "pareto"};
  for (int tab = 0; tab < 5; ++tab) {
    view.tabs()->setCurrentIndex(tab);
    QVERIFY(view.grab().save(lrq::test::outputDir() + "/compare_store_" + names[tab] + ".png"));
  }
}

QTEST_MAIN(TestCompareView)
#include "test_compare_view.moc"
