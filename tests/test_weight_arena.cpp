// The weight arena (core/model/weight_arena.h): where a method's Ŵ are placed
// changes nothing of their values. Every method, run with and without an
// arena on a tiny model, must give the same weights to the bit, and with one
// every weight it replaced must lie in the arena. The tensor spill
// (core/model/tensor_spill.h) gives back what it was given, bit for bit, and
// SpilledBlockLinears brings a model's linears back from it block by block.
#include <ATen/ATen.h>

#include <QDir>
#include <QTemporaryDir>
#include <QtTest>

#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/eval/block_stream.h"
#include "core/io/export.h"
#include "core/model/tensor_spill.h"
#include "core/model/weight_arena.h"
#include "core/quant/method.h"
#include "core/quant/rtn.h"
#include "core/quant/scheme.h"
#include "decoder_test_models.h"
#include "quick_method_run.h"

using namespace lrq;
using namespace lrq::quant;

namespace {

uintptr_t address(const at::Tensor &t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr());
}

} // namespace

class TestWeightArena : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  test::TinyModel tiny_;

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    test::writeAndReadTinyModel(dir_.path(), "llama_gqa", tiny_);
    QVERIFY(!tiny_.tensors.empty());
  }

  // Values of every kind (NaN payloads, -0, subnormals, a transposed view,
  // integer and half types) come back to the bit, in any order, and the file
  // never shows up in its folder.
  void spillGivesBackTheSameBits() {
    QTemporaryDir folder;
    QVERIFY(folder.isValid());
    TensorSpill spill(folder.path().toStdString());
    QCOMPARE(QDir(folder.path())
                 .entryList(QDir::AllEntries | QDir::NoDotAndDotDot | QDir::Hidden)
                 .size(),
             0);
    at::Tensor special = at::randn({5, 7});
    const float odd[] = {-0.0f, 1e-40f, std::numeric_limits<float>::quiet_NaN(),
                         std::numeric_limits<float>::infinity()};
    for (int i = 0; i < 4; ++i)
      special.view(-1)[i] = odd[i];
    const std::vector<at::Tensor> given = {
        special,
        at::randn({64, 48}).t(), // not contiguous
        at::randint(-128, 127, {3, 1000}, at::kChar),
        at::randn({17}).to(at::kHalf),
        at::randn({4, 9}).to(at::kBFloat16),
        at::randn({2, 3, 4}, at::kDouble),
        at::empty({0, 5}),
    };
    std::vector<size_t> handles;
    int64_t bytes = 0;
    for (const at::Tensor &t : given) {
      handles.push_back(spill.put(t));
      bytes += int64_t(t.numel()) * int64_t(t.element_size());
    }
    QCOMPARE(spill.bytes(), bytes);
    for (size_t k = given.size(); k-- > 0;) { // backwards: order does not matter
      const at::Tensor back = spill.get(handles[k]);
      const at::Tensor want = given[k].contiguous();
      QCOMPARE(back.scalar_type(), want.scalar_type());
      QCOMPARE(back.sizes().vec(), want.sizes().vec());
      QVERIFY(back.is_contiguous());
      // (An empty tensor has no data: memcmp may not be given its null pointer.)
      QVERIFY2(want.numel() == 0 || std::memcmp(back.data_ptr(), want.data_ptr(),
                                                size_t(want.numel()) * want.element_size()) == 0,
               qPrintable(QString("tensor %1").arg(k)));
    }
    QVERIFY_EXCEPTION_THROWN(spill.get(handles.size()), Error);
    // getInto: into the buffer given when it fits (same storage, no new one),
    // else into a new tensor; the same bits either way.
    for (size_t k = 0; k < given.size(); ++k) {
      const at::Tensor want = given[k].contiguous();
      const at::Tensor fits = at::full(want.sizes(), 7, want.options());
      const at::Tensor wrongShape = at::empty({want.numel() + 1}, want.options());
      const at::Tensor wrongType = at::empty(
          want.sizes(),
          want.options().dtype(want.scalar_type() == at::kFloat ? at::kDouble : at::kFloat));
      for (const at::Tensor &buffer : {fits, wrongShape, wrongType, at::Tensor()}) {
        const at::Tensor back = spill.getInto(handles[k], buffer);
        QCOMPARE(back.is_same(buffer), buffer.is_same(fits));
        QCOMPARE(back.scalar_type(), want.scalar_type());
        QCOMPARE(back.sizes().vec(), want.sizes().vec());
        QVERIFY2(want.numel() == 0 || std::memcmp(back.data_ptr(), want.data_ptr(),
                                                  size_t(want.numel()) * want.element_size()) == 0,
                 qPrintable(QString("getInto, tensor %1").arg(k)));
      }
    }
    QCOMPARE(QDir(folder.path())
                 .entryList(QDir::AllEntries | QDir::NoDotAndDotDot | QDir::Hidden)
                 .size(),
             0);
    // A folder that is not there is named in the error.
    try {
      TensorSpill nowhere(folder.filePath("missing/deeper").toStdString());
      QFAIL("a spill in a missing folder was made");
    } catch (const FileError &e) {
      QVERIFY2(QString(e.what()).contains("missing/deeper"), e.what());
    }
  }

  // Block b's linears, and only those, come back on load and go on unload; a
  // role's weight is read into the same storage at each load while nothing
  // else holds it, into new storage when something does; restoreAll gives
  // each linear a tensor of its own.
  void spilledBlockLinearsComeBackBlockByBlock() {
    QTemporaryDir folder;
    QVERIFY(folder.isValid());
    TensorSpill spill(folder.path().toStdString());
    SpilledBlockLinears blocks(spill);
    at::Generator gen = at::detail::createCPUGenerator(5);
    constexpr int64_t n = 3;
    std::vector<Linear> q(n), k(n);
    std::vector<at::Tensor> wq, wk;
    for (size_t b = 0; b < size_t(n); ++b) {
      wq.push_back(at::randn({4, 6}, gen));
      wk.push_back(at::randn({2, 6}, gen));
      blocks.add(int64_t(b), "q", &q[b], spill.put(wq[b]));
      blocks.add(int64_t(b), "k", &k[b], spill.put(wk[b]));
    }
    QCOMPARE(blocks.size(), size_t(2 * n));
    QCOMPARE(blocks.bytesAside(), int64_t(n * (24 + 12) * 4));
    QVERIFY(blocks.handleOf(1, "k"));
    QVERIFY(!blocks.handleOf(n, "q"));
    QVERIFY(!blocks.handleOf(0, "v"));
    const void *storage = nullptr;
    for (size_t b = 0; b < size_t(n); ++b) {
      blocks.load(int64_t(b));
      for (size_t other = 0; other < size_t(n); ++other) {
        QCOMPARE(q[other].weight.defined(), other == b);
        QCOMPARE(k[other].weight.defined(), other == b);
      }
      QVERIFY(at::equal(q[b].weight, wq[b]));
      QVERIFY(at::equal(k[b].weight, wk[b]));
      if (storage)
        QCOMPARE(static_cast<const void *>(q[b].weight.data_ptr()), storage);
      storage = q[b].weight.data_ptr();
      blocks.unload(int64_t(b));
      QVERIFY(!q[b].weight.defined());
      QVERIFY(!k[b].weight.defined());
    }
    // Block 0's weight still held elsewhere: block 1's load must not write over it.
    blocks.load(0);
    const at::Tensor held = q[0].weight;
    blocks.unload(0);
    blocks.load(1);
    QVERIFY(q[1].weight.data_ptr() != held.data_ptr());
    QVERIFY(at::equal(held, wq[0]));
    QVERIFY(at::equal(q[1].weight, wq[1]));
    blocks.unload(1);
    // A linear forgotten is no longer brought back.
    blocks.forget(2, "k");
    QVERIFY(!blocks.handleOf(2, "k"));
    QCOMPARE(blocks.bytesAside(), int64_t((n * (24 + 12) - 12) * 4));
    blocks.load(2);
    QVERIFY(!k[2].weight.defined());
    QVERIFY(at::equal(q[2].weight, wq[2]));
    blocks.unload(2);
    int restored = 0;
    blocks.restoreAll([&](Linear &l) {
      QVERIFY(l.weight.defined());
      ++restored;
    });
    QCOMPARE(restored, int(2 * n - 1));
    QCOMPARE(blocks.size(), size_t(0));
    for (size_t b = 0; b < size_t(n); ++b) {
      QVERIFY(at::equal(q[b].weight, wq[b]));
      for (size_t other = 0; other < b; ++other)
        QVERIFY(q[b].weight.data_ptr() != q[other].weight.data_ptr());
    }
    QVERIFY(!k[2].weight.defined());
  }

  void placesCopiesSideBySideAligned() {
    at::Generator gen = at::detail::createCPUGenerator(3);
    const at::Tensor a = at::randn({5, 7}, gen);
    const at::Tensor b = at::randn({3, 4}, gen).t(); // not contiguous
    WeightArena arena(WeightArena::slotElements(a) + WeightArena::slotElements(b), a.options());
    // 35 floats round up to 48 (64-byte slots), 12 to 16.
    QCOMPARE(WeightArena::slotElements(a), int64_t(48));
    QCOMPARE(WeightArena::slotElements(b), int64_t(16));
    const at::Tensor pa = arena.place(a);
    const at::Tensor pb = arena.place(b);
    QVERIFY(at::equal(pa, a));
    QVERIFY(at::equal(pb, b));
    QCOMPARE(pa.sizes().vec(), a.sizes().vec());
    QCOMPARE(pb.sizes().vec(), b.sizes().vec());
    QVERIFY(pa.is_contiguous() && pb.is_contiguous());
    QVERIFY(arena.holds(pa) && arena.holds(pb));
    QVERIFY(!arena.holds(a));
    QCOMPARE(address(pa) % WeightArena::kAlignBytes, uintptr_t(0));
    QCOMPARE(address(pb) - address(pa), uintptr_t(48 * sizeof(float)));
    QCOMPARE(arena.placedElements(), int64_t(64));
    // A copy, not a view of the source.
    QVERIFY(address(pa) != address(a));

    // Full: the tensor itself comes back.
    const at::Tensor c = at::ones({2, 2});
    QVERIFY(arena.place(c).is_same(c));
    // Another dtype: the tensor itself.
    WeightArena roomy(1024, a.options());
    const at::Tensor d = at::ones({2, 2}, at::kDouble);
    QVERIFY(roomy.place(d).is_same(d));
    QCOMPARE(roomy.placedElements(), int64_t(0));
    // No arena: placeWeight passes the tensor through.
    QVERIFY(placeWeight(nullptr, c).is_same(c));
    WeightArena none;
    QVERIFY(none.place(c).is_same(c));
    QVERIFY(!none.holds(c));
  }

  void sizedForTheSelection() {
    const ModelConfig &config = tiny_.config;
    std::map<std::string, at::Tensor> copy;
    for (const auto &[name, t] : tiny_.tensors)
      copy[name] = t.clone();
    ModelWeights w = ModelWeights::fromHfTensors(config, copy);
    LayerSelection sel;
    sel.blocks = {1};
    sel.linears = {"q_proj", "down_proj"};
    WeightArena arena = weightArenaFor(config, w, sel);
    Linear *q = nullptr, *down = nullptr;
    for (const auto &[role, linear] : blockLinears(config, w.blocks[1])) {
      if (role == "q_proj")
        q = linear;
      if (role == "down_proj")
        down = linear;
    }
    QVERIFY(q && down);
    // Exactly room for the two: a third weight no longer fits.
    QVERIFY(arena.holds(arena.place(q->weight)));
    QVERIFY(arena.holds(arena.place(down->weight)));
    QCOMPARE(arena.placedElements(),
             WeightArena::slotElements(q->weight) + WeightArena::slotElements(down->weight));
    QVERIFY(!arena.holds(arena.place(q->weight)));
    // Nothing selected: no arena.
    LayerSelection nothing;
    nothing.blocks = {99};
    QVERIFY(!weightArenaFor(config, w, nothing).holds(w.blocks[0].down.weight));
  }

  void everyMethodGivesTheSameWeightsInTheArena() {
    const ModelConfig &config = tiny_.config;
    const std::map<std::string, nlohmann::json> quick = test::quickHyperparameters(32);
    at::Generator gen = at::detail::createCPUGenerator(11);
    const at::Tensor tokens = at::randint(config.vocabSize, {2, 16}, gen, at::kLong);
    const CalibrationSet calibration{tokens, "test"};
    QuantScheme perChannel = presetScheme("W4A16");
    QuantScheme grouped = presetScheme("W3A16-g128");
    grouped.weight.groupSize = 32; // the tiny model's rows are 64 and 128 wide
    grouped.layers.embeddings = true;
    grouped.layers.lmHead = true;
    int64_t cells = 0, placedTensors = 0, embeddingCells = 0;
    for (const std::string &methodName : methodNames())
      for (const QuantScheme &scheme : {perChannel, grouped}) {
        std::unique_ptr<QuantMethod> method = createMethod(methodName);
        const std::string cell =
            methodName + " " + scheme.name + (scheme.layers.embeddings ? " with embeddings" : "");
        try {
          method->checkScheme(scheme);
        } catch (const Error &) {
          continue; // the method refuses this scheme; another test checks the refusal
        }
        test::QuickRun plain =
            test::runQuick(config, tiny_.tensors, *method, methodName, scheme, calibration, quick);
        std::map<std::string, at::Tensor> copy;
        for (const auto &[name, t] : tiny_.tensors)
          copy[name] = t.clone();
        ModelWeights shapes = ModelWeights::fromHfTensors(config, copy);
        WeightArena arena = weightArenaFor(config, shapes, scheme.layers);
        test::QuickRun placed = test::runQuick(config, tiny_.tensors, *method, methodName, scheme,
                                               calibration, quick, &arena);
        ++cells;

        const auto plainTensors = hfTensorsFromWeights(config, plain.model->weights());
        const auto placedMap = hfTensorsFromWeights(config, placed.model->weights());
        QCOMPARE(placedMap.size(), plainTensors.size());
        for (size_t i = 0; i < plainTensors.size(); ++i) {
          const auto &[name, t] = plainTensors[i];
          QCOMPARE(placedMap[i].first, name);
          QVERIFY2(at::equal(placedMap[i].second, t), (cell + ": " + name + " differs").c_str());
        }
        for (size_t b = 0; b < plain.model->weights().blocks.size(); ++b) {
          const auto plainLinears = blockLinears(config, plain.model->weights().blocks[b]);
          const auto placedLinears = blockLinears(config, placed.model->weights().blocks[b]);
          for (size_t i = 0; i < plainLinears.size(); ++i) {
            const Linear &p = *plainLinears[i].second, &q = *placedLinears[i].second;
            const std::string where =
                cell + ": block " + std::to_string(b) + " " + plainLinears[i].first;
            QVERIFY2(arena.holds(q.weight), (where + " is not in the arena").c_str());
            ++placedTensors;
            QCOMPARE(q.lowRankA.defined(), p.lowRankA.defined());
            if (p.lowRankA.defined()) {
              QVERIFY2(at::equal(q.lowRankA, p.lowRankA), where.c_str());
              QVERIFY2(at::equal(q.lowRankB, p.lowRankB), where.c_str());
            }
          }
        }
        if (scheme.layers.embeddings) {
          QVERIFY2(arena.holds(placed.model->weights().tokenEmbedding),
                   (cell + ": the embeddings are not in the arena").c_str());
          ++placedTensors;
          // Every method rounds the embeddings and LM head to nearest: what
          // quantizeModelRtn makes of them, to the bit.
          std::map<std::string, at::Tensor> fresh;
          for (const auto &[name, t] : tiny_.tensors)
            fresh[name] = t.clone();
          ModelWeights rtn = ModelWeights::fromHfTensors(config, fresh);
          quantizeModelRtn(rtn, config, scheme);
          QVERIFY2(at::equal(plain.model->weights().tokenEmbedding, rtn.tokenEmbedding),
                   (cell + ": embeddings differ from RTN's").c_str());
          QVERIFY2(at::equal(plain.model->weights().lmHead, rtn.lmHead),
                   (cell + ": LM head differs from RTN's").c_str());
          ++embeddingCells;
        }
        // Grids recorded for the exports are the same too.
        QCOMPARE(placed.report.grids.size(), plain.report.grids.size());
        for (const auto &[key, g] : plain.report.grids) {
          const GridParams &h = placed.report.grids.at(key);
          QVERIFY2(at::equal(h.scale, g.scale), (cell + ": " + key).c_str());
          QCOMPARE(h.zeroPoint.defined(), g.zeroPoint.defined());
          if (g.zeroPoint.defined())
            QVERIFY2(at::equal(h.zeroPoint, g.zeroPoint), (cell + ": " + key).c_str());
        }
      }
    // Every method ran at least at W4A16 (LR-QAT takes both schemes too).
    QVERIFY2(cells >= int64_t(methodNames().size()), qPrintable(QString::number(cells)));
    QVERIFY2(embeddingCells >= 6, qPrintable(QString::number(embeddingCells)));
    qInfo("%lld method and scheme cells (%lld with embeddings), %lld weights placed",
          static_cast<long long>(cells), static_cast<long long>(embeddingCells),
          static_cast<long long>(placedTensors));
  }
};

QTEST_GUILESS_MAIN(TestWeightArena)
#include "test_weight_arena.moc"
