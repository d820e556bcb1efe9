// The Runs browser over a hand-made run store: RunsTableModel (item-model
// conformance, values equal to the store's, numeric sorting, rows kept by id
// while a second writer adds and finishes runs, store errors), the bits per
// weight estimate against hand-counted shapes, RunsView (filters, actions,
// detail plots, delete) and a real `lrq quantize` run appearing while watched.
#include <QAbstractItemModelTester>
#include <QComboBox>
#include <QDir>
#include <QElapsedTimer>
#include <QFile>
#include <QItemSelectionModel>
#include <QJsonDocument>
#include <QJsonObject>
#include <QProcess>
#include <QPushButton>
#include <QSignalSpy>
#include <QSortFilterProxyModel>
#include <QTabWidget>
#include <QTableView>
#include <QtTest>

#include <qcustomplot.h>

#include <cmath>

#include <unistd.h>

#include "core/quant/scheme.h"
#include "core/runs/run_store.h"
#include "test_support.h"
#include "widgets/run_bits.h"
#include "widgets/runs_table_model.h"
#include "widgets/runs_view.h"

using lrq::BlockRecord;
using lrq::LayerStats;
using lrq::RunInfo;
using lrq::RunStatus;
using lrq::RunStore;
using lrq::SpectrumRecord;
using lrq::ui::RunsTableModel;
using lrq::ui::RunsView;

namespace {

// A tiny LLaMA-shaped model: hidden 64, 4 heads of 16, 2 KV heads, MLP 128, 3 blocks.
const char *kTinyConfig = R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
  "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 3, "vocab_size": 100})";

QString scheme(const QString &name, int bits, const QString &granularity, int group,
               bool symmetric) {
  return QStringLiteral("{\"name\": \"%1\", \"weight\": {\"bits\": %2, \"granularity\": \"%3\", "
                        "\"group_size\": %4, \"symmetric\": %5}, \"layers\": {\"blocks\": \"all\", "
                        "\"linears\": \"all\", \"embeddings\": false, \"lm_head\": false}}")
      .arg(name)
      .arg(bits)
      .arg(granularity)
      .arg(group)
      .arg(symmetric ? "true" : "false");
}

const QStringList kRoles{"q_proj",    "k_proj",  "v_proj",   "o_proj",
                         "gate_proj", "up_proj", "down_proj"};

} // namespace

class TestRunsView : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  QString store_;
  QString modelDir_;
  QString rtn_, lrq_, lqer_, cancelled_, failed_, running_;

  // A second writer, as the command line would be.
  static RunStore writer(const QString &path) { return RunStore::open(path.toStdString()); }

  static QString text(const QAbstractItemModel *m, int row, int column) {
    return m->index(row, column).data().toString();
  }

  RunInfo baseInfo(const QString &method, const QString &schemeJson, const QString &hyper) const {
    RunInfo info;
    info.model = {modelDir_.toStdString(), "size=1;mtime=1"};
    info.method = method.toStdString();
    info.schemeJson = schemeJson.toStdString();
    info.hyperparametersJson = hyper.toStdString();
    return info;
  }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    modelDir_ = dir_.filePath("tiny-model");
    QVERIFY(QDir().mkpath(modelDir_));
    QFile config(QDir(modelDir_).filePath("config.json"));
    QVERIFY(config.open(QIODevice::WriteOnly));
    config.write(kTinyConfig);
    config.close();

    store_ = dir_.filePath("runs.sqlite");
    RunStore s = writer(store_);
    auto created = [](int minute) {
      return QStringLiteral("2026-11-23T10:%1:00.000Z")
          .arg(minute, 2, 10, QLatin1Char('0'))
          .toStdString();
    };

    // RTN: per-channel W4, layers and spectra, no reconstruction.
    RunInfo rtn = baseInfo("rtn", scheme("W4 per-channel", 4, "per-channel", 0, false), "{}");
    rtn.created = created(1);
    rtn.status = RunStatus::Finished;
    rtn.totalSeconds = 12.5;
    rtn.metrics = {{"perplexity", 70.25}, {"kl", 0.2134}, {"top1", 0.812}, {"peak_rss_mib", 910}};
    rtn_ = QString::fromStdString(s.createRun(rtn));
    std::vector<LayerStats> layers;
    for (int b = 0; b < 3; ++b)
      for (int r = 0; r < kRoles.size(); ++r)
        layers.push_back({b, kRoles[r].toStdString(), 1e-5 * (r + 1), 18.0 + b + 0.5 * r, 0});
    layers.push_back({-1, "lm_head", 1e-6, 25.0, 0});
    s.appendLayerStats(rtn_.toStdString(), layers);
    std::vector<SpectrumRecord> spectra;
    for (int b = 0; b < 2; ++b)
      for (const char *role : {"q_proj", "down_proj"}) {
        std::vector<double> w, e;
        for (int i = 0; i < 64; ++i) {
          w.push_back(10.0 * std::exp(-0.05 * i));
          e.push_back(0.05 * std::exp(-0.01 * i));
        }
        spectra.push_back({b, role, "W", w});
        spectra.push_back({b, role, "E", e});
      }
    s.appendSpectra(rtn_.toStdString(), spectra);

    // LRQ: per-group W4 g32, curves for three blocks.
    RunInfo lrq = baseInfo("lrq", scheme("W4 g32", 4, "per-group", 32, false),
                           "{\"rank\": 8, \"iters\": 60, \"lr\": 0.0009}");
    lrq.created = created(2);
    lrq.status = RunStatus::Finished;
    lrq.totalSeconds = 241.0;
    lrq.metrics = {{"perplexity", 9.5}, {"kl", 0.0412}, {"top1", 0.93}, {"peak_rss_mib", 1520}};
    lrq_ = QString::fromStdString(s.createRun(lrq));
    for (int b = 0; b < 3; ++b) {
      BlockRecord block{b, 0.02 * (b + 1), 0.004 * (b + 1), 20.0, {}};
      for (int it = 0; it < 60; ++it)
        block.curve.push_back({it, float(0.02 * (b + 1) * (0.2 + 0.8 * std::exp(-it / 12.0)))});
      s.appendBlock(lrq_.toStdString(), block);
    }
    s.appendLayerStats(lrq_.toStdString(), layers);

    // LQER: per-channel W4 with rank-8 factors.
    RunInfo lqer = baseInfo("lqer", scheme("W4 per-channel", 4, "per-channel", 0, false),
                            "{\"rank\": 8, \"factor_bits\": 0}");
    lqer.created = created(3);
    lqer.status = RunStatus::Finished;
    lqer.totalSeconds = 30.0;
    lqer.metrics = {{"perplexity", 100.375}, {"kl", 0.35}, {"top1", 0.75}, {"peak_rss_mib", 800}};
    lqer_ = QString::fromStdString(s.createRun(lqer));

    RunInfo cancelled =
        baseInfo("flexround", scheme("W3 g32", 3, "per-group", 32, true), "{\"iters\": 500}");
    cancelled.created = created(4);
    cancelled_ = QString::fromStdString(s.createRun(cancelled));
    s.finishRun(cancelled_.toStdString(), RunStatus::Cancelled, "cancelled by the user", 55.0);

    RunInfo failed = baseInfo("gptq", scheme("W2 g32", 2, "per-group", 32, false), "{}");
    failed.created = created(5);
    failed_ = QString::fromStdString(s.createRun(failed));
    s.finishRun(failed_.toStdString(), RunStatus::Failed, "out of memory", 3.0);

    RunInfo running =
        baseInfo("flexround", scheme("W4 g32", 4, "per-group", 32, false), "{\"iters\": 500}");
    running.created = created(6);
    running_ = QString::fromStdString(s.createRun(running));
  }

  void modelConformsAndShowsTheStore() {
    RunsTableModel model;
    QAbstractItemModelTester tester(&model, QAbstractItemModelTester::FailureReportingMode::QtTest);
    model.setStorePath(store_);
    QVERIFY2(model.lastError().isEmpty(), qPrintable(model.lastError()));
    QCOMPARE(model.rowCount(), 6);
    QCOMPARE(model.columnCount(), int(RunsTableModel::ColumnCount));

    RunStore s = writer(store_);
    for (int row = 0; row < model.rowCount(); ++row) {
      const lrq::RunRecord run = s.getRun(model.runId(row).toStdString());
      QCOMPARE(text(&model, row, RunsTableModel::StatusColumn),
               QString::fromLatin1(lrq::runStatusName(run.status)));
      QCOMPARE(text(&model, row, RunsTableModel::MethodColumn), QString::fromStdString(run.method));
      QCOMPARE(text(&model, row, RunsTableModel::SchemeColumn),
               QJsonDocument::fromJson(QByteArray::fromStdString(run.schemeJson))
                   .object()["name"]
                   .toString());
      const QList<QPair<int, const char *>> metrics{
          {RunsTableModel::PerplexityColumn, "perplexity"},
          {RunsTableModel::KlColumn, "kl"},
          {RunsTableModel::Top1Column, "top1"},
          {RunsTableModel::PeakRssColumn, "peak_rss_mib"}};
      for (const auto &[column, name] : metrics) {
        const QVariant v = model.index(row, column).data(Qt::EditRole);
        if (run.metrics.count(name)) {
          QCOMPARE(v.typeId(), QMetaType::Double);
          QCOMPARE(v.toDouble(), run.metrics.at(name));
        } else {
          QVERIFY(!v.isValid());
          QVERIFY(text(&model, row, column).isEmpty());
        }
      }
      if (run.totalSeconds > 0)
        QCOMPARE(model.index(row, RunsTableModel::SecondsColumn).data(Qt::EditRole).toDouble(),
                 run.totalSeconds);
    }
    // Displayed text, spot checks.
    const int rtnRow = model.rowOfRun(rtn_), lrqRow = model.rowOfRun(lrq_);
    QCOMPARE(text(&model, rtnRow, RunsTableModel::PerplexityColumn), QString("70.250"));
    QCOMPARE(text(&model, rtnRow, RunsTableModel::Top1Column), QString("81.2 %"));
    QCOMPARE(text(&model, rtnRow, RunsTableModel::PeakRssColumn), QString("910"));
    QCOMPARE(text(&model, lrqRow, RunsTableModel::RankColumn), QString("8"));
    QCOMPARE(text(&model, rtnRow, RunsTableModel::RankColumn), QString());
    QCOMPARE(model.index(lrqRow, RunsTableModel::CreatedColumn).data(Qt::EditRole).toString(),
             QString("2026-11-23T10:02:00.000Z"));
    QCOMPARE(model.index(lrqRow, 3).data(RunsTableModel::RunIdRole).toString(), lrq_);
  }

  // The estimate against matrices counted by hand for the tiny config:
  // q, o 64x64; k, v 32x64; gate, up 128x64; down 64x128 (out x in).
  void bitsPerWeightEstimate() {
    struct M {
      double out, in;
    };
    const QList<M> block{{64, 64}, {32, 64}, {32, 64}, {64, 64}, {128, 64}, {128, 64}, {64, 128}};
    double n = 0, rows = 0, factors = 0;
    for (const M &m : block) {
      n += m.out * m.in;
      rows += m.out;
      factors += 8 * (m.in + m.out); // rank 8
    }
    RunsTableModel model;
    model.setStorePath(store_);
    // Per-channel asymmetric W4: one fp16 step and a 4-bit zero per output row.
    const double rtnExpected = 4 + rows * (16 + 4) / n;
    QVERIFY(std::abs(*model.bitsPerWeight(model.rowOfRun(rtn_)) - rtnExpected) < 1e-12);
    QCOMPARE(text(&model, model.rowOfRun(rtn_), RunsTableModel::BitsColumn),
             QString::number(rtnExpected, 'f', 2));
    // Per-group g32 asymmetric W4: 4 + 20/32, with or without shapes.
    QVERIFY(std::abs(*model.bitsPerWeight(model.rowOfRun(lrq_)) - 4.625) < 1e-12);
    QCOMPARE(*lrq::ui::estimateBitsPerWeight("lrq", scheme("g", 4, "per-group", 32, false), "{}",
                                             nullptr),
             4.625);
    // Symmetric W3 g32: no zero point.
    QVERIFY(std::abs(*model.bitsPerWeight(model.rowOfRun(cancelled_)) - (3 + 16.0 / 32)) < 1e-12);
    // LQER: plus rank·(in + out) fp16 factor entries per linear.
    const double lqerExpected = rtnExpected + factors * 16 / n;
    QVERIFY(std::abs(*model.bitsPerWeight(model.rowOfRun(lqer_)) - lqerExpected) < 1e-12);
    // 8-bit factors cost half.
    lrq::ui::ModelShape shape{64, 128, 4, 2, 16, 3, 100, false};
    QVERIFY(
        std::abs(*lrq::ui::estimateBitsPerWeight("l2qer", scheme("g", 4, "per-channel", 0, false),
                                                 "{\"rank\": 8, \"factor_bits\": 8}", &shape) -
                 (rtnExpected + factors * 8 / n)) < 1e-12);
    // LR-QAT merges its adapters: no overhead.
    QVERIFY(
        std::abs(*lrq::ui::estimateBitsPerWeight("lrqat", scheme("g", 4, "per-channel", 0, false),
                                                 "{\"rank\": 8}", &shape) -
                 rtnExpected) < 1e-12);
    // Without shapes, per-channel and low-rank estimates are left empty.
    QVERIFY(!lrq::ui::estimateBitsPerWeight("rtn", scheme("g", 4, "per-channel", 0, false), "{}",
                                            nullptr));
    QVERIFY(!lrq::ui::estimateBitsPerWeight("rtn", "not json", "{}", &shape));

    // The GGUF metadata reader on the default model (SmolLM2-135M).
    const std::optional<lrq::ui::ModelShape> smol =
        lrq::ui::readModelShape(QString::fromStdString(lrq::test::defaultModelPath()));
    QVERIFY(smol);
    QCOMPARE(smol->hidden, 576);
    QCOMPARE(smol->intermediate, 1536);
    QCOMPARE(smol->heads, 9);
    QCOMPARE(smol->kvHeads, 3);
    QCOMPARE(smol->headDim, 64);
    QCOMPARE(smol->blocks, 30);
    QCOMPARE(smol->vocab, 49152);
    QVERIFY(!lrq::ui::readModelShape(dir_.filePath("no-such-model.gguf")));
  }

  void sortingByPerplexityIsNumeric() {
    RunsView view;
    view.setStorePath(store_);
    QAbstractItemModel *proxy = view.table()->model();
    view.table()->sortByColumn(RunsTableModel::PerplexityColumn, Qt::AscendingOrder);
    QStringList shown;
    for (int r = 0; r < proxy->rowCount(); ++r)
      shown << proxy->index(r, RunsTableModel::PerplexityColumn).data().toString();
    // Numeric: 9.5 < 70.25 < 100.375 (as text "100.375" would come first); runs without a
    // perplexity last.
    QCOMPARE(shown, QStringList({"9.500", "70.250", "100.375", "", "", ""}));
    view.table()->sortByColumn(RunsTableModel::PerplexityColumn, Qt::DescendingOrder);
    shown.clear();
    for (int r = 0; r < proxy->rowCount(); ++r)
      shown << proxy->index(r, RunsTableModel::PerplexityColumn).data().toString();
    QCOMPARE(shown, QStringList({"100.375", "70.250", "9.500", "", "", ""}));
  }

  void filtersMatchMethodSchemeAndStatus() {
    RunsView view;
    view.setStorePath(store_);
    QAbstractItemModel *proxy = view.table()->model();
    view.setFilterText("flexround");
    QCOMPARE(proxy->rowCount(), 2);
    view.setFilterText("g32");
    QCOMPARE(proxy->rowCount(), 4); // lrq, flexround x2, gptq
    view.setFilterText("");
    view.setStatusFilter("failed");
    QCOMPARE(proxy->rowCount(), 1);
    QCOMPARE(proxy->index(0, 0).data(RunsTableModel::RunIdRole).toString(), failed_);
    view.setStatusFilter("");
    QCOMPARE(proxy->rowCount(), 6);
  }

  void actionsFollowTheSelection() {
    RunsView view;
    view.setStorePath(store_);
    QSignalSpy resume(&view, &RunsView::resumeRequested);
    QSignalSpy exportSpy(&view, &RunsView::exportRequested);
    QSignalSpy exportGguf(&view, &RunsView::exportGgufRequested);
    QSignalSpy compare(&view, &RunsView::compareRequested);
    QSignalSpy selected(&view, &RunsView::runSelected);

    view.selectRun(cancelled_);
    QCOMPARE(view.selectedRunIds(), QStringList{cancelled_});
    QCOMPARE(selected.count(), 1);
    QCOMPARE(selected.last().at(0).toString(), cancelled_);
    QVERIFY(view.resumeButton()->isEnabled());
    QVERIFY(!view.exportButton()->isEnabled());
    QVERIFY(!view.exportGgufButton()->isEnabled());
    QVERIFY(!view.compareButton()->isEnabled());
    view.resumeButton()->click();
    QCOMPARE(resume.count(), 1);
    QCOMPARE(resume.last().at(0).toString(), cancelled_);

    view.selectRun(failed_);
    QVERIFY(view.resumeButton()->isEnabled());
    view.selectRun(running_);
    QVERIFY(!view.resumeButton()->isEnabled());
    view.selectRun(rtn_);
    QVERIFY(!view.resumeButton()->isEnabled());
    QVERIFY(view.exportButton()->isEnabled());
    view.exportButton()->click();
    QCOMPARE(exportSpy.count(), 1);
    QCOMPARE(exportSpy.last().at(0).toString(), rtn_);
    // W4 per-channel is no llama.cpp block grid: the tooltip names the preset.
    QVERIFY(!view.exportGgufButton()->isEnabled());
    QVERIFY2(view.exportGgufButton()->toolTip().contains("--scheme gguf-q4_1"),
             qPrintable(view.exportGgufButton()->toolTip()));

    // Add the LRQ run to the selection: compare two.
    auto *proxy = qobject_cast<QSortFilterProxyModel *>(view.table()->model());
    auto *source = view.model();
    view.table()->selectionModel()->select(
        proxy->mapFromSource(source->index(source->rowOfRun(lrq_), 0)),
        QItemSelectionModel::Select | QItemSelectionModel::Rows);
    QCOMPARE(view.selectedRunIds().size(), 2);
    QVERIFY(view.compareButton()->isEnabled());
    QVERIFY(!view.resumeButton()->isEnabled());
    view.compareButton()->click();
    QCOMPARE(compare.count(), 1);
    QStringList ids = compare.last().at(0).toStringList();
    ids.sort();
    QStringList expected{rtn_, lrq_};
    expected.sort();
    QCOMPARE(ids, expected);
  }

  void exportGgufFollowsTheScheme() {
    QTemporaryDir dir;
    const QString path = dir.filePath("gguf-runs.sqlite");
    RunStore s = writer(path);
    const QString q40 =
        "{\"name\": \"gguf-q4_0\", \"weight\": {\"bits\": 4, \"granularity\": "
        "\"per-group\", \"group_size\": 32, \"symmetric\": true, \"step_format\": \"f16\"}}";
    auto finished = [&](const QString &method, const QString &schemeJson) {
      RunInfo info = baseInfo(method, schemeJson, "{}");
      const std::string id = s.createRun(info);
      s.finishRun(id, RunStatus::Finished, {}, 1.0);
      return QString::fromStdString(id);
    };
    const QString rtn = finished("rtn", q40);
    const QString lqer = finished("lqer", q40);
    const QString w4 = finished("rtn", scheme("W4 g32", 4, "per-group", 32, true));
    // gguf-q6_k as a run records it: Q6_K where rows allow, its Q8_0 fallback elsewhere.
    const QString q6k =
        finished("gptq", QString::fromStdString(lrq::quant::presetScheme("gguf-q6_k").toJson()));
    std::string q6kFallbackF32 = lrq::quant::presetScheme("gguf-q6_k").toJson();
    q6kFallbackF32.replace(q6kFallbackF32.rfind("\"step_format\":\"f16\""),
                           std::string("\"step_format\":\"f16\"").size(),
                           "\"step_format\":\"f32\"");
    const QString q6kBadFallback = finished("rtn", QString::fromStdString(q6kFallbackF32));
    // gguf-q4_k: Q4_K with its Q5_0 fallback; LR-QAT never runs it, LRQ does.
    const QString q4k =
        finished("lrq", QString::fromStdString(lrq::quant::presetScheme("gguf-q4_k").toJson()));
    std::string q4kFallbackF32 = lrq::quant::presetScheme("gguf-q4_k").toJson();
    q4kFallbackF32.replace(q4kFallbackF32.rfind("\"step_format\":\"f16\""),
                           std::string("\"step_format\":\"f16\"").size(),
                           "\"step_format\":\"f32\"");
    const QString q4kBadFallback = finished("rtn", QString::fromStdString(q4kFallbackF32));

    RunsView view;
    view.setStorePath(path);
    QSignalSpy exportGguf(&view, &RunsView::exportGgufRequested);
    view.selectRun(rtn);
    QVERIFY(view.exportGgufButton()->isEnabled());
    view.exportGgufButton()->click();
    QCOMPARE(exportGguf.count(), 1);
    QCOMPARE(exportGguf.last().at(0).toString(), rtn);
    // LQER's factors have no place in GGUF.
    view.selectRun(lqer);
    QVERIFY(!view.exportGgufButton()->isEnabled());
    QVERIFY(view.exportGgufButton()->toolTip().contains("low-rank"));
    // The block's shape with float32 steps: the half-precision preset is named.
    view.selectRun(w4);
    QVERIFY(!view.exportGgufButton()->isEnabled());
    QVERIFY2(view.exportGgufButton()->toolTip().contains("gguf-q4_0"),
             qPrintable(view.exportGgufButton()->toolTip()));
    view.selectRun(q6k);
    QVERIFY(view.exportGgufButton()->isEnabled());
    // A fallback grid with float32 steps has no block type: the whole run is refused.
    view.selectRun(q6kBadFallback);
    QVERIFY(!view.exportGgufButton()->isEnabled());
    QVERIFY2(view.exportGgufButton()->toolTip().contains("fallback") &&
                 view.exportGgufButton()->toolTip().contains("gguf-q6_k"),
             qPrintable(view.exportGgufButton()->toolTip()));
    view.selectRun(q4k);
    QVERIFY(view.exportGgufButton()->isEnabled());
    view.selectRun(q4kBadFallback);
    QVERIFY(!view.exportGgufButton()->isEnabled());
    QVERIFY2(view.exportGgufButton()->toolTip().contains("gguf-q4_k"),
             qPrintable(view.exportGgufButton()->toolTip()));
  }

  void detailPlotsShowTheRun() {
    RunsView view;
    view.setStorePath(store_);
    const QList<QCustomPlot *> plots = view.plots();
    QCOMPARE(plots.size(), 3);
    QCustomPlot *loss = plots[0], *sqnr = plots[1], *spectrum = plots[2];

    view.selectRun(lrq_);
    QCOMPARE(view.shownRunId(), lrq_);
    QCOMPARE(loss->graphCount(), 3); // one per block
    QCOMPARE(loss->yAxis->scaleType(), QCPAxis::stLogarithmic);
    QVERIFY(!loss->xAxis->label().isEmpty() && !loss->yAxis->label().isEmpty());
    QVERIFY(loss->legend->visible());
    QCOMPARE(loss->graph(2)->dataCount(), 60);
    QCOMPARE(loss->graph(1)->data()->at(0)->value, double(float(0.04)));
    QCOMPARE(sqnr->graphCount(), 7); // one per role, block -1 left out
    QCOMPARE(sqnr->graph(0)->dataCount(), 3);
    QCOMPARE(sqnr->graph(0)->data()->at(2)->value, 20.0); // block 2, q_proj

    view.selectRun(rtn_);
    QCOMPARE(loss->graphCount(), 0); // RTN has no reconstruction
    QCOMPARE(view.spectrumLayerCombo()->count(), 4);
    QCOMPARE(view.spectrumKindCombo()->count(), 3); // all, W, E
    QCOMPARE(spectrum->graphCount(), 2);
    QCOMPARE(spectrum->yAxis->scaleType(), QCPAxis::stLogarithmic);
    view.spectrumKindCombo()->setCurrentIndex(view.spectrumKindCombo()->findData("E"));
    QCOMPARE(spectrum->graphCount(), 1);
    QCOMPARE(spectrum->graph(0)->dataCount(), 64);
    QCOMPARE(spectrum->graph(0)->data()->at(0)->value, 0.05);
    for (QCustomPlot *p : plots)
      QVERIFY(!p->xAxis->label().isEmpty() && !p->yAxis->label().isEmpty());
  }

  void screenshot() {
    RunsView view;
    view.resize(1280, 720);
    view.setStorePath(store_);
    view.show();
    view.selectRun(lrq_);
    QVERIFY(QTest::qWaitForWindowExposed(&view));
    QTest::qWait(50);
    const QString out = lrq::test::outputDir();
    QImage shot = view.grab().toImage();
    QCOMPARE(shot.size(), QSize(1280, 720));
    QVERIFY(shot.save(QDir(out).filePath("runs_view.png")));
    view.plotTabs()->setCurrentIndex(1);
    QTest::qWait(20);
    QVERIFY(view.grab().save(QDir(out).filePath("runs_view_sqnr.png")));
    view.selectRun(rtn_);
    view.plotTabs()->setCurrentIndex(2);
    QTest::qWait(20);
    QVERIFY(view.grab().save(QDir(out).filePath("runs_view_spectra.png")));

    // A full-size run: 30 blocks of curves, 30 x 7 layers.
    const QString path = dir_.filePath("thirty.sqlite");
    QString id;
    {
      RunStore s = writer(path);
      RunInfo info = baseInfo("lrq", scheme("W3 g128", 3, "per-group", 128, false),
                              "{\"rank\": 0, \"iters\": 200}");
      info.status = RunStatus::Finished;
      info.metrics = {{"perplexity", 71.3}};
      id = QString::fromStdString(s.createRun(info));
      std::vector<LayerStats> layers;
      for (int b = 0; b < 30; ++b) {
        BlockRecord block{b, 0, 0, 1, {}};
        const double start = 1e-3 * std::exp(0.2 * b);
        for (int it = 0; it < 200; it += 2)
          block.curve.push_back({it, float(start * (0.3 + 0.7 * std::exp(-it / 40.0)))});
        s.appendBlock(id.toStdString(), block);
        for (int r = 0; r < kRoles.size(); ++r)
          layers.push_back({b, kRoles[r].toStdString(), 0, 14.0 + 0.1 * b + 0.4 * r, 0});
      }
      s.appendLayerStats(id.toStdString(), layers);
      // Spectra as a default run records them: W and E of every linear (SmolLM2 widths).
      std::vector<SpectrumRecord> spectra;
      for (const LayerStats &l : layers)
        for (const char *kind : {"W", "E"}) {
          std::vector<double> v(576);
          for (size_t i = 0; i < v.size(); ++i)
            v[i] = (kind[0] == 'W' ? 2.0 : 0.05) / (1.0 + 0.02 * double(i));
          spectra.push_back({l.block, l.role, kind, v});
        }
      s.appendSpectra(id.toStdString(), spectra);
    }
    view.setStorePath(path);
    QElapsedTimer t;
    t.start();
    view.selectRun(id);
    qInfo("showing a 30-block run with 420 spectra of 576 values: %.1f ms",
          double(t.nsecsElapsed()) / 1e6);
    QCOMPARE(view.plots()[0]->graphCount(), 30);
    QCOMPARE(view.spectrumLayerCombo()->count(), 210);
    view.plotTabs()->setCurrentIndex(0);
    QTest::qWait(20);
    QVERIFY(view.grab().save(QDir(out).filePath("runs_view_30_blocks.png")));
    view.plotTabs()->setCurrentIndex(1);
    QTest::qWait(20);
    QVERIFY(view.grab().save(QDir(out).filePath("runs_view_30_blocks_sqnr.png")));
    qInfo("screenshots in %s", qPrintable(out));
  }

  // A second RunStore object (as the command line) adds a run, then finishes it.
  void secondWriterAppearsAndUpdates() {
    const QString path = dir_.filePath("watched.sqlite");
    QVERIFY(QFile::copy(store_, path));
    RunsView view;
    RunsTableModel *model = view.model();
    QAbstractItemModelTester tester(model, QAbstractItemModelTester::FailureReportingMode::QtTest);
    model->setPollInterval(200);
    view.setStorePath(path);
    QCOMPARE(model->rowCount(), 6);
    view.selectRun(rtn_);
    QSignalSpy resets(model, &QAbstractItemModel::modelReset);
    QSignalSpy inserted(model, &QAbstractItemModel::rowsInserted);

    RunStore cli = writer(path);
    RunInfo info = baseInfo("rtn", scheme("W8 per-channel", 8, "per-channel", 0, true), "{}");
    const QString id = QString::fromStdString(cli.createRun(info));
    QTRY_VERIFY_WITH_TIMEOUT(model->rowOfRun(id) >= 0, 5000);
    QCOMPARE(text(model, model->rowOfRun(id), RunsTableModel::StatusColumn), QString("running"));
    QCOMPARE(inserted.count(), 1);
    QCOMPARE(view.selectedRunIds(), QStringList{rtn_}); // selection kept

    QSignalSpy changed(model, &QAbstractItemModel::dataChanged);
    cli.setMetric(id.toStdString(), "perplexity", 58.5);
    cli.finishRun(id.toStdString(), RunStatus::Finished, {}, 4.0);
    QTRY_COMPARE_WITH_TIMEOUT(text(model, model->rowOfRun(id), RunsTableModel::StatusColumn),
                              QString("finished"), 5000);
    QTRY_COMPARE_WITH_TIMEOUT(text(model, model->rowOfRun(id), RunsTableModel::PerplexityColumn),
                              QString("58.500"), 5000);
    QVERIFY(changed.count() >= 1);
    for (const QList<QVariant> &args : changed) // only the changed run's row
      QCOMPARE(args.at(0).toModelIndex().row(), model->rowOfRun(id));
    QCOMPARE(resets.count(), 0);
    QCOMPARE(view.selectedRunIds(), QStringList{rtn_});

    // Deleted by the other writer: the row goes away.
    cli.deleteRun(lrq_.toStdString());
    QTRY_VERIFY_WITH_TIMEOUT(model->rowOfRun(lrq_) < 0, 5000);
    QCOMPARE(model->rowCount(), 6);
    QCOMPARE(resets.count(), 0);
    QVERIFY(model->lastError().isEmpty());

    // Nothing changes: no reload.
    QSignalSpy refreshed(model, &RunsTableModel::refreshed);
    QTest::qWait(700);
    QCOMPARE(refreshed.count(), 0);
  }

  void deleteRemovesFromTheStore() {
    const QString path = dir_.filePath("delete.sqlite");
    QVERIFY(QFile::copy(store_, path));
    RunsView view;
    view.setStorePath(path);
    view.setConfirmDeletes(false);
    view.selectRun(failed_);
    QVERIFY(view.deleteButton()->isEnabled());
    view.deleteButton()->click();
    QCOMPARE(view.model()->rowOfRun(failed_), -1);
    QCOMPARE(view.model()->rowCount(), 5);
    QVERIFY(!writer(path).hasRun(failed_.toStdString()));
    QVERIFY(writer(path).hasRun(rtn_.toStdString()));
    QVERIFY(view.shownRunId().isEmpty());
  }

  void damagedStoreGivesAnError() {
    const QString path = dir_.filePath("damaged.sqlite");
    QFile f(path);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write(QByteArray(8192, 'x'));
    f.close();
    RunsView view;
    QSignalSpy errors(view.model(), &RunsTableModel::storeError);
    view.setStorePath(path);
    QCOMPARE(view.model()->rowCount(), 0);
    QVERIFY(!view.model()->lastError().isEmpty());
    QCOMPARE(errors.count(), 1);
    QVERIFY(errors.first().at(0).toString().contains(path));
    QVERIFY(!view.errorText().isEmpty());
    qInfo("damaged store: %s", qPrintable(view.model()->lastError()));
    // Polling goes on without repeating the same error ...
    view.model()->setPollInterval(100);
    QTest::qWait(350);
    QCOMPARE(errors.count(), 1);
    // ... and picks the store up once it is repaired.
    QSignalSpy recovered(view.model(), &RunsTableModel::storeRecovered);
    QVERIFY(QFile::remove(path));
    QVERIFY(QFile::copy(store_, path));
    QTRY_COMPARE_WITH_TIMEOUT(view.model()->rowCount(), 6, 5000);
    QCOMPARE(recovered.count(), 1);
    QVERIFY(view.errorText().isEmpty());

    // A directory where the file should be: an error, no crash.
    const QString dirPath = dir_.filePath("a-directory.sqlite");
    QVERIFY(QDir().mkpath(dirPath));
    view.setStorePath(dirPath);
    QCOMPARE(view.model()->rowCount(), 0);
    QVERIFY(!view.model()->lastError().isEmpty());
  }

  // Listing 200 runs: how long the UI thread spends in a reload.
  void refreshTimeOn200Runs() {
    const QString path = dir_.filePath("many.sqlite");
    {
      RunStore s = writer(path);
      for (int i = 0; i < 200; ++i) {
        RunInfo info =
            baseInfo(i % 2 ? "lrq" : "rtn", scheme("W4 g128", 4, "per-group", 128, false),
                     "{\"rank\": 16, \"iters\": 500, \"lr\": 0.0009}");
        info.model.path = lrq::test::defaultModelPath();
        info.status = RunStatus::Finished;
        info.totalSeconds = i;
        info.metrics = {{"perplexity", 60 + i * 0.1},
                        {"kl", 0.1},
                        {"top1", 0.9},
                        {"peak_rss_mib", 1000},
                        {"reference_perplexity", 57}};
        s.createRun(info);
      }
    }
    RunsTableModel model;
    QElapsedTimer t;
    t.start();
    model.setStorePath(path);
    const double first = double(t.nsecsElapsed()) / 1e6;
    QCOMPARE(model.rowCount(), 200);
    const double firstList = model.lastRefreshMs();
    double total = 0;
    for (int i = 0; i < 5; ++i) {
      model.refresh();
      total += model.lastRefreshMs();
    }
    qInfo("200 runs: first load %.1f ms (open + list + rows %.1f ms, incl. reading the model's "
          "GGUF metadata once), reload %.2f ms",
          first, firstList, total / 5);
    QVERIFY(model.lastError().isEmpty());
  }

  // A real command-line run writing to the watched store shows up, finished.
  void cliRunAppears() {
    const QString path = dir_.filePath("cli.sqlite");
    const QString schemePath = dir_.filePath("w4-block0.json");
    QFile f(schemePath);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write("{\"name\": \"W4 block 0\", \"weight\": {\"bits\": 4, \"granularity\": "
            "\"per-channel\"}, \"layers\": {\"blocks\": [0]}}");
    f.close();
    RunsView view;
    view.model()->setPollInterval(250);
    view.setStorePath(path);
    QCOMPARE(view.model()->rowCount(), 0);

    QProcess lrq;
    lrq.start(QDir(QStringLiteral(LRQ_BINARY_DIR)).filePath("app/lrq"), {"quantize",
                                                                         "default",
                                                                         "--method",
                                                                         "rtn",
                                                                         "--scheme",
                                                                         schemePath,
                                                                         "--nsamples",
                                                                         "2",
                                                                         "--seq-len",
                                                                         "32",
                                                                         "--eval-seq-len",
                                                                         "64",
                                                                         "--eval-windows",
                                                                         "1",
                                                                         "--no-spectra",
                                                                         "--store",
                                                                         path,
                                                                         "--quiet",
                                                                         "--threads",
                                                                         "2"});
    QVERIFY(lrq.waitForStarted());
    QElapsedTimer t;
    t.start();
    QTRY_VERIFY_WITH_TIMEOUT(view.model()->rowCount() == 1, 180000);
    const double appeared = double(t.elapsed()) / 1000;
    QTRY_VERIFY_WITH_TIMEOUT(text(view.model(), 0, RunsTableModel::StatusColumn) == "finished",
                             180000);
    const double finished = double(t.elapsed()) / 1000;
    // "finished" is the job's last write: the process may already have exited.
    if (lrq.state() != QProcess::NotRunning)
      QVERIFY(lrq.waitForFinished(180000));
    QCOMPARE(lrq.exitStatus(), QProcess::NormalExit);
    QCOMPARE(lrq.exitCode(), 0);
    // A finished run has its evaluation's metrics.
    QTRY_VERIFY_WITH_TIMEOUT(
        view.model()->index(0, RunsTableModel::PerplexityColumn).data(Qt::EditRole).toDouble() > 1,
        5000);
    qInfo("lrq quantize (rtn, block 0): row shown after %.1f s, finished after %.1f s, process "
          "ended after %.1f s",
          appeared, finished, double(t.elapsed()) / 1000);
    QCOMPARE(text(view.model(), 0, RunsTableModel::MethodColumn), QString("rtn"));
    QCOMPARE(text(view.model(), 0, RunsTableModel::SchemeColumn), QString("W4 block 0"));
    // Bits from the default model's real shapes: W4 per-channel, asymmetric by default.
    QVERIFY(view.model()->bitsPerWeight(0));
    QVERIFY(*view.model()->bitsPerWeight(0) > 4.0 && *view.model()->bitsPerWeight(0) < 4.1);
    view.selectRun(view.model()->runId(0));
    QCOMPARE(view.plots()[1]->graphCount(), 7); // block 0's seven linears
  }

  // Liveness and exports: a run whose process is gone shows as interrupted
  // (also when its process dies while the table is watched) and is offered for
  // resume; a live one is refused with its pid; Open Export follows what the
  // run recorded.
  void interruptedRunsAndOpenExport() {
    const QString path = dir_.filePath("liveness.sqlite");
    const QString exportDir = dir_.filePath("export-hf");
    QVERIFY(QDir().mkpath(exportDir));
    QVERIFY(QFile::copy(QDir(modelDir_).filePath("config.json"),
                        QDir(exportDir).filePath("config.json")));
    QProcess gone, sleeper;
    gone.start("true");
    QVERIFY(gone.waitForStarted());
    const qint64 deadPid = gone.processId();
    QVERIFY(gone.waitForFinished());
    sleeper.start("sleep", {"120"});
    QVERIFY(sleeper.waitForStarted());
    const QString w4 = scheme("W4", 4, "per-channel", 0, false);
    QString alive, dead, dying, exported, missing, none;
    {
      RunStore s = writer(path);
      alive = QString::fromStdString(s.createRun(baseInfo("lrq", w4, "{}"))); // this process
      RunInfo d = baseInfo("flexround", w4, "{}");
      d.owner = lrq::currentRunOwner();
      d.owner.pid = deadPid;
      dead = QString::fromStdString(s.createRun(d));
      RunInfo l = baseInfo("lrq", w4, "{}");
      l.owner = lrq::currentRunOwner();
      l.owner.pid = sleeper.processId();
      l.owner.start = l.owner.start.substr(0, l.owner.start.find(";start=")); // pid alone
      dying = QString::fromStdString(s.createRun(l));
      RunInfo e = baseInfo("rtn", w4, "{}");
      e.status = RunStatus::Finished;
      e.exportDir = exportDir.toStdString();
      exported = QString::fromStdString(s.createRun(e));
      e.exportDir.clear();
      e.packedPath = dir_.filePath("deleted.safetensors").toStdString();
      missing = QString::fromStdString(s.createRun(e));
      e.packedPath.clear();
      none = QString::fromStdString(s.createRun(e));
    }
    RunsView view;
    view.setStorePath(path);
    RunsTableModel *model = view.model();
    auto status = [&](const QString &id) {
      return text(model, model->rowOfRun(id), RunsTableModel::StatusColumn);
    };
    QCOMPARE(status(alive), QString("running"));
    QCOMPARE(status(dying), QString("running"));
    QCOMPARE(status(dead), QString("interrupted"));
    QCOMPARE(model->index(model->rowOfRun(dead), RunsTableModel::MethodColumn)
                 .data(RunsTableModel::StatusRole)
                 .toString(),
             QString("interrupted"));
    QVERIFY(model->index(model->rowOfRun(dead), 0)
                .data(Qt::ToolTipRole)
                .toString()
                .contains(QString("Interrupted: its process (%1").arg(deadPid)));
    view.setStatusFilter("interrupted");
    QCOMPARE(view.table()->model()->rowCount(), 1);
    view.setStatusFilter("");

    QSignalSpy resume(&view, &RunsView::resumeRequested);
    QSignalSpy open(&view, &RunsView::openModelRequested);
    view.selectRun(dead);
    QVERIFY(view.resumeButton()->isEnabled());
    view.resumeButton()->click();
    QCOMPARE(resume.count(), 1);
    QCOMPARE(resume.last().at(0).toString(), dead);
    QVERIFY(!view.openExportButton()->isEnabled());
    view.selectRun(alive);
    QVERIFY(!view.resumeButton()->isEnabled());
    QVERIFY2(view.resumeButton()->toolTip().contains(
                 QString("run %1 is still running in process %2").arg(alive).arg(::getpid())),
             qPrintable(view.resumeButton()->toolTip()));
    QVERIFY(!view.openExportButton()->isEnabled());
    QVERIFY2(view.openExportButton()->toolTip().contains("has no export"),
             qPrintable(view.openExportButton()->toolTip()));

    view.selectRun(exported);
    QVERIFY(view.openExportButton()->isEnabled());
    view.openExportButton()->click();
    QCOMPARE(open.count(), 1);
    QCOMPARE(open.last().at(0).toString(), exportDir);
    view.selectRun(missing);
    QVERIFY(!view.openExportButton()->isEnabled());
    QVERIFY2(view.openExportButton()->toolTip().contains("no longer on disk"),
             qPrintable(view.openExportButton()->toolTip()));
    view.selectRun(none);
    QVERIFY(!view.openExportButton()->isEnabled());
    QVERIFY(view.openExportButton()->toolTip().contains("has no export"));

    // The owner dies while the table is watched: no write to the store, yet the
    // row turns interrupted by itself.
    view.selectRun(dying);
    QVERIFY(!view.resumeButton()->isEnabled());
    sleeper.kill();
    QVERIFY(sleeper.waitForFinished());
    QTRY_COMPARE_WITH_TIMEOUT(status(dying), QString("interrupted"), 10000);
    QTRY_VERIFY_WITH_TIMEOUT(view.resumeButton()->isEnabled(), 5000);

    view.resize(1280, 720);
    view.show();
    view.selectRun(dead);
    QVERIFY(QTest::qWaitForWindowExposed(&view));
    QTest::qWait(50);
    QVERIFY(view.grab().save(QDir(lrq::test::outputDir()).filePath("runs_view_interrupted.png")));
  }
};

QTEST_MAIN(TestRunsView)
#include "test_runs_view.moc"
