// Exports: the HF directory and the packed integer file of an RTN-quantized
// default model reload bit for bit (tensors, tokenizer ids, perplexity); the
// bit packing matches an independent numpy implementation of the documented
// layout (tests/reference/pack_reference.py), which also dequantizes a layer of
// the packed file by itself; cancelled or failing exports leave nothing behind.
#include <ATen/ATen.h>

#include <QDir>
#include <QElapsedTimer>
#include <QFile>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <memory>

#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/eval/perplexity.h"
#include "core/io/export.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/export_glue.h"
#include "core/quant/learned_rounding.h"
#include "core/quant/method.h"
#include "core/quant/rtn.h"
#include "core/quant/scheme.h"
#include "decoder_test_models.h"
#include "test_support.h"
#include "tiny_llama.h"

using namespace lrq;

namespace {

QByteArray readAll(const QString &path) {
  QFile f(path);
  return f.open(QIODevice::ReadOnly) ? f.readAll() : QByteArray();
}

// Every entry of a directory, hidden ones included.
QStringList entries(const QString &dir) {
  return QDir(dir).entryList(QDir::AllEntries | QDir::Hidden | QDir::System | QDir::NoDotAndDotDot);
}

struct CancelAfter : ProgressObserver {
  CancelToken *token = nullptr;
  int64_t after = 0;
  int64_t calls = 0;
  void progress(int64_t, int64_t, const std::string &) override {
    if (++calls == after)
      token->cancel();
  }
};

std::string sampleText() {
  std::string text = defaultText().evaluation.substr(0, 3000);
  text += "\nNumbers 12345 and 3.14159, code: for (int i = 0; i < n; ++i) {}\n"
          "Unicode: caf\xC3\xA9 na\xC3\xAFve \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC "
          "<|im_start|>user\nHi<|im_end|>";
  return text;
}

} // namespace

class TestExport : public QObject {
  Q_OBJECT

  std::unique_ptr<LoadedModel> source_;
  ModelWeights original_, quantized_;
  quant::QuantScheme scheme_;
  std::vector<int32_t> evalTokens_;
  QTemporaryDir work_;
  uint64_t hfBytes_ = 0;

  void checkSameTensors(const LoadedModel &back, const ModelWeights &expected) {
    const auto named = hfTensorsFromWeights(source_->config, expected);
    QCOMPARE(back.tensors.size(), named.size());
    for (const auto &[name, t] : named) {
      auto it = back.tensors.find(name);
      QVERIFY2(it != back.tensors.end(), name.c_str());
      QVERIFY2(at::equal(it->second, t.to(at::kFloat)), name.c_str());
    }
  }

  void checkTokenizer(const LoadedModel &back) {
    QVERIFY(back.tokenizer);
    const std::string text = sampleText();
    const auto want = source_->tokenizer->encode(text, true, true);
    const auto got = back.tokenizer->encode(text, true, true);
    QVERIFY(want.size() > 500);
    QCOMPARE(got, want);
    const auto plain = back.tokenizer->encode(text, false, false);
    QCOMPARE(plain, source_->tokenizer->encode(text, false, false));
    QCOMPARE(back.tokenizer->bosId(), source_->tokenizer->bosId());
    QCOMPARE(back.tokenizer->eosId(), source_->tokenizer->eosId());
    QCOMPARE(back.tokenizer->decode(got), source_->tokenizer->decode(want));
  }

  void checkPerplexity(const LoadedModel &back) {
    const DecoderModel inMemory(source_->config, quantized_);
    const DecoderModel reloaded(back.config,
                                ModelWeights::fromHfTensors(back.config, back.tensors));
    const PerplexityResult a = evaluatePerplexity(inMemory, evalTokens_, 128, nullptr, nullptr, 1);
    const PerplexityResult b = evaluatePerplexity(reloaded, evalTokens_, 128, nullptr, nullptr, 1);
    qInfo().noquote() << QStringLiteral("perplexity, 1 window of 128: in memory %1, reloaded %2")
                             .arg(a.perplexity, 0, 'g', 10)
                             .arg(b.perplexity, 0, 'g', 10);
    QCOMPARE(b.perplexity, a.perplexity);
  }

private slots:
  void initTestCase() {
    QVERIFY(work_.isValid());
    // LRQ_TEST_KEEP_EXPORTS=1 keeps the exports for a look (lrq info / lrq eval on them).
    if (qEnvironmentVariableIsSet("LRQ_TEST_KEEP_EXPORTS")) {
      work_.setAutoRemove(false);
      qInfo().noquote() << "exports kept in" << work_.path();
    }
    source_ = std::make_unique<LoadedModel>(loadModel(lrq::test::defaultModelPath()));
    QVERIFY(source_->tokenizer);
    original_ = ModelWeights::fromHfTensors(source_->config, source_->tensors);
    quantized_ = original_;
    scheme_ = quant::presetScheme("W4A16");
    quant::quantizeModelRtn(quantized_, source_->config, scheme_);
    evalTokens_ = source_->tokenizer->encode(defaultText().evaluation, false);
  }

  void packingMatchesNumpy() {
    QTemporaryDir dir;
    QString error;
    const QByteArray out =
        lrq::test::runReference("pack_reference.py", {"pack", dir.path()}, &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    const QJsonArray cases = QJsonDocument::fromJson(out).array();
    QCOMPARE(cases.size(), 24);
    for (const auto &v : cases) {
      const QJsonObject c = v.toObject();
      const int bits = c.value("bits").toInt();
      const int64_t qmin = c.value("qmin").toInteger(), rows = c.value("rows").toInteger(),
                    cols = c.value("cols").toInteger(), rowBytes = c.value("row_bytes").toInteger();
      const QString name = c.value("name").toString();
      const QByteArray codesBytes = readAll(dir.path() + "/" + name + ".codes");
      const QByteArray packedBytes = readAll(dir.path() + "/" + name + ".packed");
      QCOMPARE(codesBytes.size(), int(rows * cols * 4));
      QCOMPARE(packedBytes.size(), int(rows * rowBytes));
      QCOMPARE(rowBytes, (cols * bits + 7) / 8);
      const at::Tensor codes =
          at::from_blob(const_cast<char *>(codesBytes.constData()), {rows, cols}, at::kInt).clone();
      const at::Tensor ref =
          at::from_blob(const_cast<char *>(packedBytes.constData()), {rows, rowBytes}, at::kByte)
              .clone();
      const at::Tensor packed = packCodes(codes, bits, qmin);
      QVERIFY2(at::equal(packed, ref), qPrintable(name + " bits " + QString::number(bits)));
      QVERIFY2(at::equal(unpackCodes(ref, bits, qmin, cols), codes), qPrintable(name));
    }
    // Hand check of the documented 4-bit layout: first code in the low nibble.
    const at::Tensor two = at::tensor(std::vector<int32_t>{0x3, 0xA, 0x5}, at::kInt).view({1, 3});
    const at::Tensor p4 = packCodes(two, 4, 0);
    QCOMPARE(p4.size(1), int64_t(2));
    QCOMPARE(int(p4[0][0].item<uint8_t>()), 0xA3);
    QCOMPARE(int(p4[0][1].item<uint8_t>()), 0x05);
    // Codes outside the grid are refused.
    QVERIFY_THROWS_EXCEPTION(Error, packCodes(two, 3, 0));
    QVERIFY_THROWS_EXCEPTION(Error, packCodes(two, 4, -8));
  }

  void hfExportRoundTrip() {
    const QString dir = work_.filePath("smollm-w4-hf");
    QElapsedTimer timer;
    timer.start();
    const ExportResult r = exportHfDirectory(
        dir.toStdString(), source_->config, quantized_, exportTokenizerFor(*source_),
        R"({"scheme": )" + scheme_.toJson() + R"(, "method": "rtn"})");
    const qint64 ms = timer.elapsed();
    hfBytes_ = r.weightsBytes;
    qInfo().noquote() << QStringLiteral("HF export (F32): %1 tensors, model.safetensors %2 MB, "
                                        "all files %3 MB, %4 s")
                             .arg(r.tensors)
                             .arg(double(r.weightsBytes) / 1e6, 0, 'f', 1)
                             .arg(double(r.bytes) / 1e6, 0, 'f', 1)
                             .arg(double(ms) / 1000.0, 0, 'f', 2);
    for (const char *f : {"config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json", "lrq_metadata.json"})
      QVERIFY2(QFileInfo::exists(dir + "/" + f), f);
    QCOMPARE(entries(work_.path()).filter(".lrq-tmp").size(), 0);
    const QJsonObject meta = QJsonDocument::fromJson(readAll(dir + "/lrq_metadata.json")).object();
    QCOMPARE(meta.value("method").toString(), QStringLiteral("rtn"));
    QCOMPARE(meta.value("scheme").toObject().value("weight").toObject().value("bits").toInt(), 4);

    // HF tokenizers reads the tokenizer.json rebuilt from the GGUF spec and
    // encodes like the source tokenizer.
    {
      const std::string text = sampleText();
      QFile tf(work_.filePath("sample.txt"));
      QVERIFY(tf.open(QIODevice::WriteOnly));
      tf.write(text.data(), qint64(text.size()));
      tf.close();
      QString error;
      const QByteArray out = lrq::test::runReference(
          "tokenizer_file_encode.py", {dir + "/tokenizer.json", tf.fileName()}, &error);
      QVERIFY2(!out.isEmpty(), qPrintable(error));
      std::vector<int32_t> hf;
      for (const auto &v : QJsonDocument::fromJson(out).object().value("ids").toArray())
        hf.push_back(v.toInt());
      QCOMPARE(hf, source_->tokenizer->encode(text, false, true));
    }

    const LoadedModel back = loadModel(dir.toStdString());
    QCOMPARE(back.format, std::string("safetensors"));
    QCOMPARE(back.config.numLayers, source_->config.numLayers);
    QCOMPARE(back.config.tieEmbeddings, true);
    checkSameTensors(back, quantized_);
    checkTokenizer(back);
    checkPerplexity(back);

    // A second export to the same place is refused unless asked to overwrite.
    QVERIFY_THROWS_EXCEPTION(FileError,
                             exportHfDirectory(dir.toStdString(), source_->config, quantized_,
                                               exportTokenizerFor(*source_), "{}"));
    ExportOptions bf16;
    bf16.dtype = at::kBFloat16;
    bf16.overwrite = true;
    const ExportResult rb = exportHfDirectory(dir.toStdString(), source_->config, quantized_,
                                              exportTokenizerFor(*source_), "{}", bf16);
    qInfo().noquote() << QStringLiteral("HF export (BF16): model.safetensors %1 MB")
                             .arg(double(rb.weightsBytes) / 1e6, 0, 'f', 1);
    QVERIFY(rb.weightsBytes < r.weightsBytes * 6 / 10);
    const LoadedModel half = loadModel(dir.toStdString());
    const at::Tensor q0 = quantized_.blocks[0].q.weight;
    QVERIFY(at::equal(half.tensors.at("model.layers.0.self_attn.q_proj.weight"),
                      q0.to(at::kBFloat16).to(at::kFloat)));
  }

  void packedExportRoundTrip() {
    quant::PackStats stats;
    PackedModelContents contents = quant::packQuantizedModel(source_->config, quantized_, original_,
                                                             scheme_, "rtn", nullptr, &stats);
    embedTokenizer(contents, exportTokenizerFor(*source_));
    QCOMPARE(stats.layers, source_->config.numLayers * 7);
    QCOMPARE(stats.maxDeviation, 0.0);
    const QString path = work_.filePath("smollm-w4.packed.safetensors");
    QElapsedTimer timer;
    timer.start();
    const ExportResult r = writePackedModel(path.toStdString(), contents);
    const qint64 ms = timer.elapsed();
    qInfo().noquote() << QStringLiteral("packed W4 export: %1 MB (%2 s) vs F32 HF %3 MB: %4x "
                                        "smaller")
                             .arg(double(r.bytes) / 1e6, 0, 'f', 1)
                             .arg(double(ms) / 1000.0, 0, 'f', 2)
                             .arg(double(hfBytes_) / 1e6, 0, 'f', 1)
                             .arg(hfBytes_ ? double(hfBytes_) / double(r.bytes) : 0.0, 0, 'f', 2);
    QVERIFY(isPackedModelFile(path.toStdString()));
    QVERIFY(!isPackedModelFile(work_.filePath("smollm-w4-hf/model.safetensors").toStdString()));

    timer.restart();
    const LoadedModel back = loadModel(path.toStdString());
    qInfo().noquote() << QStringLiteral("packed load: %1 s").arg(timer.elapsed() / 1000.0);
    QCOMPARE(back.format, std::string("lrq-packed"));
    checkSameTensors(back, quantized_);
    checkTokenizer(back);
    checkPerplexity(back);

    // numpy reads the file by the documented layout and dequantizes a layer itself.
    for (const char *layer : {"model.layers.0.self_attn.q_proj", "model.layers.29.mlp.down_proj"}) {
      QString error;
      const QString out = work_.filePath("numpy_layer.bin");
      const QByteArray json =
          lrq::test::runReference("pack_reference.py", {"dequant", path, layer, out}, &error);
      QVERIFY2(!json.isEmpty(), qPrintable(error));
      const QJsonObject info = QJsonDocument::fromJson(json).object();
      QCOMPARE(info.value("format").toString(), QStringLiteral("lrq-packed"));
      QCOMPARE(info.value("layer").toObject().value("bits").toInt(), 4);
      const at::Tensor expected = back.tensors.at(std::string(layer) + ".weight");
      const QByteArray bytes = readAll(out);
      QCOMPARE(bytes.size(), int(expected.numel() * 4));
      const at::Tensor numpyW =
          at::from_blob(const_cast<char *>(bytes.constData()), expected.sizes(), at::kFloat);
      QVERIFY2(at::equal(numpyW, expected), layer);
    }
  }

  // 2-, 3- and 8-bit grids, symmetric and per-group (ragged g128 on 576 columns
  // included), and LQER factors, on block 0.
  void packedOtherGridsAndLowRank() {
    struct Case {
      int bits;
      bool symmetric;
      int64_t group;
    };
    for (const Case c :
         {Case{3, false, 64}, Case{2, false, 64}, Case{8, true, 0}, Case{3, true, 128}}) {
      quant::QuantScheme s = quant::presetScheme("W4A16");
      s.weight.bits = c.bits;
      s.weight.symmetric = c.symmetric;
      if (c.group > 0) {
        s.weight.granularity = quant::Granularity::PerGroup;
        s.weight.groupSize = c.group;
      }
      s.layers.blocks = {0};
      ModelWeights q = original_;
      quant::quantizeModelRtn(q, source_->config, s);
      // An LQER-style correction on one linear.
      q.blocks[0].up.lowRankA = at::randn({source_->config.hiddenSize, 4}) * 0.01;
      q.blocks[0].up.lowRankB = at::randn({4, source_->config.intermediateSize}) * 0.01;
      PackedModelContents contents =
          quant::packQuantizedModel(source_->config, q, original_, s, "rtn+lqer");
      QCOMPARE(int(contents.quantized.size()), 7);
      // Codes held in one byte until written: unsigned for asymmetric grids.
      for (const PackedTensor &t : contents.quantized)
        QCOMPARE(t.codes.scalar_type(), c.symmetric ? at::kChar : at::kByte);
      const QString path = work_.filePath(
          QStringLiteral("b0-w%1-%2-g%3.safetensors").arg(c.bits).arg(c.symmetric).arg(c.group));
      const ExportResult r = writePackedModel(path.toStdString(), contents);
      qInfo().noquote() << QStringLiteral("packed %1 on block 0: %2 MB")
                               .arg(QString::fromStdString(s.weight.describe()))
                               .arg(double(r.bytes) / 1e6, 0, 'f', 1);
      const PackedModel pm = loadPackedModel(path.toStdString());
      QCOMPARE(pm.formatVersion, kPackedFormatVersion);
      QCOMPARE(pm.method, std::string("rtn+lqer"));
      QCOMPARE(quant::QuantScheme::fromJson(pm.schemeJson).weight.bits, c.bits);
      QVERIFY(!pm.model.tokenizer); // none embedded
      QCOMPARE(int(pm.lowRank.size()), 1);
      const auto &lr = pm.lowRank.at("model.layers.0.mlp.up_proj");
      QVERIFY(at::equal(lr.first, q.blocks[0].up.lowRankA));
      QVERIFY(at::equal(lr.second, q.blocks[0].up.lowRankB));
      ModelWeights back = ModelWeights::fromHfTensors(pm.model.config, pm.model.tensors);
      installLowRank(pm.model.config, back, pm.lowRank);
      QVERIFY(back.blocks[0].up.lowRankA.defined());
      QVERIFY(!back.blocks[0].q.lowRankA.defined());
      const auto linears = hfLinearsFromWeights(source_->config, q);
      const auto backLinears = hfLinearsFromWeights(source_->config, back);
      for (size_t i = 0; i < linears.size(); ++i)
        QVERIFY2(at::equal(linears[i].second->weight, backLinears[i].second->weight),
                 linears[i].first.c_str());
      // loadModel folds the correction into the weight.
      const LoadedModel folded = loadModel(path.toStdString());
      const at::Tensor want =
          q.blocks[0].up.weight + at::matmul(q.blocks[0].up.lowRankA, q.blocks[0].up.lowRankB).t();
      QVERIFY(at::allclose(folded.tensors.at("model.layers.0.mlp.up_proj.weight"), want, 0, 1e-7));
      QVERIFY(QFile::remove(path));
    }
    // The original is read only for a tensor whose grid the method did not
    // report: with every grid reported, an original without block linears does.
    {
      quant::QuantScheme s = quant::presetScheme("W4A16");
      s.layers.blocks = {0};
      std::map<std::string, quant::GridParams> grids;
      ModelWeights q = original_;
      quant::quantizeModelRtn(q, source_->config, s, nullptr, nullptr, &grids);
      QCOMPARE(int(grids.size()), 7);
      QVERIFY(!quant::packNeedsOriginalLinears(source_->config, s, &grids));
      QVERIFY(quant::packNeedsOriginalLinears(source_->config, s, nullptr));
      ModelWeights bare = original_;
      for (auto &block : bare.blocks)
        for (auto &[role, l] : blockLinears(source_->config, block))
          l->weight = at::Tensor();
      const PackedModelContents withGrids =
          quant::packQuantizedModel(source_->config, q, bare, s, "rtn", &grids);
      const PackedModelContents fromOriginal =
          quant::packQuantizedModel(source_->config, q, original_, s, "rtn");
      QCOMPARE(withGrids.quantized.size(), fromOriginal.quantized.size());
      for (size_t i = 0; i < withGrids.quantized.size(); ++i)
        QVERIFY(at::equal(withGrids.quantized[i].codes, fromOriginal.quantized[i].codes));
      QVERIFY_THROWS_EXCEPTION(Error,
                               quant::packQuantizedModel(source_->config, q, bare, s, "rtn"));
      grids.erase("model.layers.0.mlp.down_proj");
      QVERIFY(quant::packNeedsOriginalLinears(source_->config, s, &grids));
      // Only the selected blocks count.
      s.layers.blocks = {1};
      QVERIFY(quant::packNeedsOriginalLinears(source_->config, s, &grids));
      std::map<std::string, quant::GridParams> none;
      s.layers.blocks = {0};
      s.layers.linears = {"q_proj"};
      QVERIFY(!quant::packNeedsOriginalLinears(source_->config, s, &grids));
      QVERIFY(quant::packNeedsOriginalLinears(source_->config, s, &none));
    }
    // A weight that is not on the grid of its original's steps is refused.
    ModelWeights off = quantized_;
    off.blocks[3].v.weight = off.blocks[3].v.weight + 1e-3;
    QVERIFY_THROWS_EXCEPTION(
        Error, quant::packQuantizedModel(source_->config, off, original_, scheme_, "rtn"));
  }

  // Every registered method, with tiny settings on blocks 0 and 1 of the default
  // model, W4 per group of 128 (ragged 576 = 4 x 128 + 64): the grids it reports
  // put its Ŵ exactly on integer codes; the packed file, loaded back, holds the
  // in-memory Ŵ (and low-rank factors) and gives the in-memory model's logits; an
  // independent look at the loaded weights finds at most 2^bits distinct values
  // per row and group, and numpy's own dequantization of a layer equals Ŵ.
  void everyMethodPacksExactly() {
    // A tiny seeded LLaMA: what is checked is exactness, for every method. Its
    // widths (192, 320) end in a partial group of 64 at group size 128, as the
    // default model's 576 does; token ids are the default text's modulo its
    // vocabulary of 256.
    const ModelConfig config = lrq::test::tinyLlamaConfig({256, 192, 320, 48, 256});
    std::map<std::string, at::Tensor> fpTensors;
    for (const auto &[n, t] : lrq::test::tinyLlamaTensors(config, 29))
      fpTensors[n] = t;
    const ModelWeights original = ModelWeights::fromHfTensors(config, fpTensors);
    std::vector<int32_t> tokens;
    for (const int32_t id : evalTokens_)
      tokens.push_back(id % int32_t(config.vocabSize));
    quant::QuantScheme scheme = quant::presetScheme("W4A16-g128");
    scheme.layers.blocks = {0, 1};
    const int64_t group = scheme.weight.groupSize;
    const quant::CalibrationSet calib = quant::makeCalibrationSet(tokens, 2, 32, 7, "test-export");
    std::vector<int64_t> probeIds(tokens.begin() + 500, tokens.begin() + 548);
    const at::Tensor probe = at::tensor(probeIds, at::kLong).reshape({1, 48});
    const std::map<std::string, nlohmann::json> tiny = {
        {"gptq", {{"block_size", 64}}},
        {"flexround", {{"iters", 2}, {"batch_size", 1}}},
        {"lrq", {{"iters", 2}, {"batch_size", 1}}},
        {"rtn-learned-step", {{"iters", 3}, {"batch_size", 1}}},
        {"lrqat", {{"steps", 2}, {"rank", 4}, {"lr", 1e-2}, {"lr_scale", 1e-3}}},
        {"lqer", {{"rank", 8}}},
        {"l2qer", {{"rank", 8}, {"batch_size", 2}}}};
    const std::vector<std::string> names = quant::methodNames();
    QVERIFY(names.size() >= 8);
    for (const std::string &name : names) {
      // A deep copy: every method starts from the full-precision weights.
      std::map<std::string, at::Tensor> fp;
      for (const auto &[n, t] : hfTensorsFromWeights(config, original))
        fp[n] = t.clone();
      DecoderModel model(config, ModelWeights::fromHfTensors(config, fp));
      std::unique_ptr<quant::QuantMethod> method = quant::createMethod(name);
      const auto it = tiny.find(name);
      quant::MethodContext ctx{model,
                               scheme,
                               calib,
                               quant::mergeHyperparameters(*method, it == tiny.end()
                                                                        ? nlohmann::json::object()
                                                                        : it->second),
                               3,
                               nullptr,
                               nullptr,
                               ""};
      const quant::MethodReport report = method->run(ctx);
      QVERIFY2(report.grids.size() == 14, name.c_str());

      // The grid the method used: "auto" init resolves per method, as the
      // quantize job resolves it before the method runs and before packing
      // (LR-QAT's reference grid is symmetric).
      const quant::QuantScheme used = quant::resolveReferenceGrid(*method, scheme);
      quant::PackStats stats;
      PackedModelContents contents = quant::packQuantizedModel(config, model.weights(), original,
                                                               used, name, &report.grids, &stats);
      QCOMPARE(stats.layers, int64_t(14));
      QVERIFY2(stats.maxDeviation == 0.0, name.c_str());
      for (const PackedTensor &t : contents.quantized) {
        QVERIFY(t.codes.min().item<int64_t>() >= used.weight.qmin());
        QVERIFY(t.codes.max().item<int64_t>() <= used.weight.qmax());
      }
      const QString path = work_.filePath(QString::fromStdString("every-" + name + ".safetensors"));
      const ExportResult r = writePackedModel(path.toStdString(), contents);

      // Unfolded: the very tensors, low-rank factors apart.
      const PackedModel pm = loadPackedModel(path.toStdString());
      QCOMPARE(pm.method, name);
      ModelWeights back = ModelWeights::fromHfTensors(pm.model.config, pm.model.tensors);
      installLowRank(pm.model.config, back, pm.lowRank);
      const auto want = hfLinearsFromWeights(config, model.weights());
      const auto got = hfLinearsFromWeights(config, back);
      QCOMPARE(got.size(), want.size());
      double maxDiff = 0;
      int64_t lowRank = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        const Linear &a = *want[i].second, &b = *got[i].second;
        maxDiff =
            std::max(maxDiff, (a.weight.to(at::kFloat) - b.weight).abs().max().item<double>());
        QCOMPARE(a.lowRankA.defined(), b.lowRankA.defined());
        if (a.lowRankA.defined()) {
          ++lowRank;
          QVERIFY(at::equal(a.lowRankA.to(at::kFloat), b.lowRankA));
          QVERIFY(at::equal(a.lowRankB.to(at::kFloat), b.lowRankB));
        }
      }
      QVERIFY2(maxDiff == 0.0, name.c_str());
      QCOMPARE(lowRank, (name == "lqer" || name == "l2qer") ? int64_t(14) : int64_t(0));

      // Independent of the grids: each row's group of 128 (64 for the last)
      // holds at most 2^bits distinct values.
      int64_t maxLevels = 0;
      for (const PackedTensor &t : contents.quantized) {
        const at::Tensor &w = pm.model.tensors.at(t.name + ".weight");
        for (int64_t c = 0; c < w.size(1); c += group) {
          const at::Tensor sorted =
              std::get<0>(w.narrow(1, c, std::min(group, w.size(1) - c)).sort(1));
          const at::Tensor levels =
              (sorted.narrow(1, 1, sorted.size(1) - 1) != sorted.narrow(1, 0, sorted.size(1) - 1))
                  .sum(1) +
              1;
          maxLevels = std::max(maxLevels, levels.max().item<int64_t>());
        }
      }
      QVERIFY2(maxLevels <= 16 && maxLevels >= 8, qPrintable(QString::number(maxLevels)));

      // Logits of the reloaded model: unfolded (factors on the linears) and as
      // lrq eval loads it (factors folded into the weights).
      const DecoderModel unfolded(pm.model.config, back);
      const LoadedModel foldedFile = loadModel(path.toStdString());
      const DecoderModel folded(foldedFile.config,
                                ModelWeights::fromHfTensors(foldedFile.config, foldedFile.tensors));
      at::Tensor ref, a, b;
      {
        at::NoGradGuard noGrad;
        ref = model.forward(probe);
        a = unfolded.forward(probe);
        b = folded.forward(probe);
      }
      const double scale = ref.abs().max().item<double>();
      const double dUnfolded = (a - ref).abs().max().item<double>();
      const double dFolded = (b - ref).abs().max().item<double>();
      qInfo().noquote() << QStringLiteral("%1: packed %2 MB, max levels per group %3, logits max "
                                          "|diff| unfolded %4, folded %5 (of %6)")
                               .arg(QString::fromStdString(name))
                               .arg(double(r.bytes) / 1e6, 0, 'f', 2)
                               .arg(maxLevels)
                               .arg(dUnfolded, 0, 'g', 3)
                               .arg(dFolded, 0, 'g', 3)
                               .arg(scale, 0, 'g', 3);
      QVERIFY2(dUnfolded <= 1e-5 * scale, name.c_str());
      QVERIFY2(dFolded <= 1e-4 * scale, name.c_str());

      // numpy reads one layer by the documented layout.
      const std::string layer = "model.layers.1.mlp.down_proj";
      QString error;
      const QString out = work_.filePath("numpy_every.bin");
      const QByteArray json = lrq::test::runReference(
          "pack_reference.py", {"dequant", path, QString::fromStdString(layer), out}, &error);
      QVERIFY2(!json.isEmpty(), qPrintable(error));
      const at::Tensor expected = model.weights().blocks[1].down.weight.to(at::kFloat);
      const QByteArray bytes = readAll(out);
      QCOMPARE(bytes.size(), int(expected.numel() * 4));
      const at::Tensor numpyW =
          at::from_blob(const_cast<char *>(bytes.constData()), expected.sizes(), at::kFloat);
      QVERIFY2(at::equal(numpyW, expected), name.c_str());
      QVERIFY(QFile::remove(path));
    }

    // GPTQ with act-order on a per-group grid has no [rows, groups] grid (its
    // groups run over permuted columns): the export is refused, naming the layer.
    std::map<std::string, at::Tensor> fp;
    for (const auto &[n, t] : hfTensorsFromWeights(config, original))
      fp[n] = t.clone();
    DecoderModel model(config, ModelWeights::fromHfTensors(config, fp));
    quant::QuantScheme one = scheme;
    one.layers.blocks = {0};
    auto gptq = quant::createMethod("gptq");
    quant::MethodContext ctx{
        model, one,     calib,   quant::mergeHyperparameters(*gptq, {{"act_order", true}}),
        3,     nullptr, nullptr, ""};
    const quant::MethodReport report = gptq->run(ctx);
    QVERIFY(report.grids.empty());
    try {
      quant::packQuantizedModel(config, model.weights(), original, one, "gptq", &report.grids);
      QFAIL("packing GPTQ act-order per-group codes should fail");
    } catch (const Error &e) {
      QVERIFY2(QString(e.what()).contains("model.layers.0.self_attn.q_proj"), e.what());
    }
    // A reported grid Ŵ is not on is refused too.
    quant::QuantScheme rtnScheme = one;
    ModelWeights q = original;
    std::map<std::string, quant::GridParams> grids;
    quant::quantizeModelRtn(q, config, rtnScheme, nullptr, nullptr, &grids);
    QCOMPARE(int(grids.size()), 7);
    quant::packQuantizedModel(config, q, original, rtnScheme, "rtn", &grids);
    grids.at("model.layers.0.mlp.up_proj").scale *= 1.01;
    QVERIFY_THROWS_EXCEPTION(
        Error, quant::packQuantizedModel(config, q, original, rtnScheme, "rtn", &grids));
  }

  // recoverLearnedGrid (for reconstruction blocks restored from a checkpoint)
  // finds, from Ŵ alone, a grid whose codes give Ŵ back exactly, for learned
  // steps and exponents far from their initial values; a Ŵ off every grid gets none.
  void recoveredLearnedGridsAreExact() {
    const at::Tensor w = original_.blocks[2].up.weight;
    for (const bool perGroup : {true, false}) {
      quant::GridSpec spec = quant::presetScheme("W4A16-g128").weight;
      if (!perGroup) {
        spec.granularity = quant::Granularity::PerChannel;
        spec.groupSize = 0;
        spec.bits = 3;
      }
      at::manual_seed(5);
      for (int kind = 0; kind < 3; ++kind) {
        auto layer = kind == 0   ? quant::makeLrqLayer(w, spec, 8, 11)
                     : kind == 1 ? quant::makeFlexRoundLayer(w, spec)
                                 : quant::makeLearnedStepLayer(w, spec);
        {
          at::NoGradGuard noGrad;
          for (auto &[pname, p] : layer->parameters())
            p.add_(at::randn_like(p) * (pname == "log_s1" ? 0.3 : 0.1));
        }
        at::Tensor wq;
        {
          at::NoGradGuard noGrad;
          wq = layer->weight().detach();
        }
        const quant::GridParams g = quant::recoverLearnedGrid(w, wq, spec);
        QVERIFY(g.scale.defined());
        QVERIFY(at::equal(g.zeroPoint, layer->grid().zeroPoint));
        const at::Tensor codes = quant::quantizeWeight(wq, g, spec);
        QVERIFY(codes.min().item<int64_t>() >= spec.qmin());
        QVERIFY(codes.max().item<int64_t>() <= spec.qmax());
        QVERIFY(at::equal(quant::dequantizeWeight(codes, g, spec), wq));
        // The layer's own grid is exact too (what a run that did not resume reports).
        QVERIFY(at::equal(quant::dequantizeWeight(quant::quantizeWeight(wq, layer->grid(), spec),
                                                  layer->grid(), spec),
                          wq));
        QVERIFY(
            !quant::recoverLearnedGrid(w, wq + 1e-3 * at::randn_like(wq), spec).scale.defined());
      }
    }
  }

  void cancelledOrFailedExportLeavesNothing() {
    QTemporaryDir parent;
    const std::string hfDir = parent.filePath("out").toStdString();
    const std::string packedPath = parent.filePath("out.safetensors").toStdString();
    PackedModelContents contents =
        quant::packQuantizedModel(source_->config, quantized_, original_, scheme_, "rtn");

    // Injected failure half way through the tensors.
    ExportOptions failing;
    failing.beforeStep = [](const std::string &step) {
      if (step == "model.layers.12.mlp.up_proj.weight" ||
          step == "model.layers.12.mlp.up_proj.qweight")
        throw FileError(step, "injected write failure");
    };
    QVERIFY_THROWS_EXCEPTION(FileError,
                             exportHfDirectory(hfDir, source_->config, quantized_,
                                               exportTokenizerFor(*source_), "{}", failing));
    QVERIFY2(entries(parent.path()).isEmpty(), qPrintable(entries(parent.path()).join(", ")));
    QVERIFY_THROWS_EXCEPTION(FileError, writePackedModel(packedPath, contents, failing));
    QVERIFY2(entries(parent.path()).isEmpty(), qPrintable(entries(parent.path()).join(", ")));

    // Cancellation from the progress callback, after some tensors were written.
    for (int which = 0; which < 2; ++which) {
      CancelToken cancel;
      CancelAfter observer;
      observer.token = &cancel;
      observer.after = 40;
      if (which == 0)
        QVERIFY_THROWS_EXCEPTION(Cancelled, exportHfDirectory(hfDir, source_->config, quantized_,
                                                              exportTokenizerFor(*source_), "{}",
                                                              {}, &observer, &cancel));
      else
        QVERIFY_THROWS_EXCEPTION(Cancelled,
                                 writePackedModel(packedPath, contents, {}, &observer, &cancel));
      QVERIFY(observer.calls >= 40);
      QVERIFY2(entries(parent.path()).isEmpty(), qPrintable(entries(parent.path()).join(", ")));
    }

    // A failed overwrite keeps the previous export intact.
    const ExportResult first = writePackedModel(packedPath, contents);
    ExportOptions overwriteFailing = failing;
    overwriteFailing.overwrite = true;
    QVERIFY_THROWS_EXCEPTION(FileError, writePackedModel(packedPath, contents, overwriteFailing));
    QCOMPARE(entries(parent.path()), QStringList{"out.safetensors"});
    QCOMPARE(uint64_t(QFileInfo(QString::fromStdString(packedPath)).size()), first.bytes);
  }

  // HF names of LLaMA (biased, tied) and OPT (pre/post-norm, projected) weights:
  // ModelWeights -> names gives back the checkpoint's tensors, and an export
  // without tokenizer reloads with the same tensors.
  void hfNamesOfTinyModels() {
    QTemporaryDir dir;
    QString error;
    const QStringList names = lrq::test::writeTinyModels(dir.path(), &error);
    QVERIFY2(names.size() == 4, qPrintable(error));
    for (const QString &name : names) {
      const auto tiny = lrq::test::readTinyModel(dir.path(), name);
      const ModelWeights w = ModelWeights::fromHfTensors(tiny.config, tiny.tensors);
      bool tied = false;
      const auto named = hfTensorsFromWeights(tiny.config, w, &tied);
      std::map<std::string, at::Tensor> expected = tiny.tensors;
      if (tied)
        expected.erase("lm_head.weight");
      QCOMPARE(named.size(), expected.size());
      for (const auto &[n, t] : named) {
        QVERIFY2(expected.count(n), n.c_str());
        QVERIFY2(t.is_same(expected.at(n)), n.c_str());
      }
      const std::string out = dir.filePath(name + "-hf").toStdString();
      ModelConfig config = tiny.config;
      // q/k/v biases without an o_proj bias: what HF calls a Qwen2 model.
      if (config.arch == Architecture::Llama && config.attentionBias && !config.attentionOutBias)
        config.architectureName = "Qwen2ForCausalLM";
      // The tiny OPT configs leave the bias flags to the tensors: config.json must state them.
      if (config.arch == Architecture::Opt) {
        config.attentionBias = tiny.tensors.count("model.decoder.layers.0.self_attn.q_proj.bias");
        config.mlpBias = tiny.tensors.count("model.decoder.layers.0.fc1.bias");
      }
      exportHfDirectory(out, config, w, ExportTokenizer{}, "{}");
      const LoadedModel back = loadModel(out);
      QVERIFY(!back.tokenizer);
      QCOMPARE(back.tensors.size(), expected.size());
      for (const auto &[n, t] : expected)
        QVERIFY2(at::equal(back.tensors.at(n), t), n.c_str());
      const DecoderModel a(tiny.config, w);
      const DecoderModel b(back.config, ModelWeights::fromHfTensors(back.config, back.tensors));
      QVERIFY(at::equal(a.forward(tiny.tokens), b.forward(tiny.tokens)));

      // The packed form of an RTN W4 copy (OPT prefixes included) reloads to the same Ŵ.
      ModelWeights q = w;
      const quant::QuantScheme w4 = quant::presetScheme("W4A16");
      quant::quantizeModelRtn(q, config, w4);
      const PackedModelContents contents = quant::packQuantizedModel(config, q, w, w4, "rtn");
      QCOMPARE(int64_t(contents.quantized.size()),
               config.numLayers * (config.arch == Architecture::Opt ? 6 : 7));
      const std::string packed = dir.filePath(name + ".safetensors").toStdString();
      writePackedModel(packed, contents);
      const LoadedModel pb = loadModel(packed);
      const DecoderModel qa(config, q);
      const DecoderModel qb(pb.config, ModelWeights::fromHfTensors(pb.config, pb.tensors));
      QVERIFY(at::equal(qa.forward(tiny.tokens), qb.forward(tiny.tokens)));
    }
  }

  void reconstructedTokenizerOfGgufSpec() {
    // The GGUF source has no tokenizer.json: the export rebuilds it from the spec.
    const ExportTokenizer t = exportTokenizerFor(*source_);
    QVERIFY(t.tokenizerJsonPath.empty());
    QVERIFY(t.spec);
    const QJsonObject root =
        QJsonDocument::fromJson(QByteArray::fromStdString(tokenizerJsonFromSpec(*t.spec))).object();
    const QJsonArray steps =
        root.value("pre_tokenizer").toObject().value("pretokenizers").toArray();
    QCOMPARE(steps.size(), 2); // smollm: Digits(individual) + ByteLevel(use_regex)
    QCOMPARE(steps[0].toObject().value("type").toString(), QStringLiteral("Digits"));
    QCOMPARE(steps[1].toObject().value("type").toString(), QStringLiteral("ByteLevel"));
    QCOMPARE(root.value("model").toObject().value("merges").toArray().size(),
             qsizetype(t.spec->merges.size()));
  }
};

QTEST_GUILESS_MAIN(TestExport)
#include "test_export.moc"
