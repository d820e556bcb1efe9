// The compressed-tensors export (docs/EXPORT_FORMAT.md section 3): the int32
// packing against hand-computed words, every storable scheme decoded by an
// independent numpy decoder (tests/reference/compressed_tensors_decode.py)
// back to the run's Ŵ bit for bit, config.json against the published schema,
// the refusals (low-rank factors, schemes the format cannot hold, an existing
// folder, a failure half way), the quantize job's and the CLI's wiring; and
// the HF export's tokenizer.json merges as "a b" strings, read by the oldest
// installable `tokenizers` release and the current one alike.
#include <QDir>
#include <QFile>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QProcess>
#include <QProcessEnvironment>
#include <QTemporaryDir>
#include <QtTest>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/io/export.h"
#include "core/io/hf_config.h"
#include "core/io/model_loader.h"
#include "core/io/safetensors.h"
#include "core/quant/activation_install.h"
#include "core/quant/activation_quantizer.h"
#include "core/quant/compressed_tensors.h"
#include "core/quant/rtn.h"
#include "core/quant/scheme.h"
#include "core/runs/run_store.h"
#include "core/session/quantize_job.h"
#include "core/session/quantize_request.h"
#include "core/tokenizer/tokenizer.h"
#include "tensor_files.h"
#include "test_support.h"
#include "tiny_llama.h"

using namespace lrq;
using lrq::test::tinyLlamaConfig;
using lrq::test::tinyLlamaTensors;
using lrq::test::writeFile;

namespace {

ModelWeights tinyWeights(const ModelConfig &c) {
  std::map<std::string, at::Tensor> m;
  for (auto &[n, t] : tinyLlamaTensors(c, 5, 3))
    m[n] = t;
  return ModelWeights::fromHfTensors(c, m);
}

// A deep copy (RTN quantizes in place).
ModelWeights copyOf(const ModelConfig &c, const ModelWeights &w) {
  std::map<std::string, at::Tensor> m;
  for (auto &[n, t] : hfTensorsFromWeights(c, w))
    m[n] = t.clone();
  return ModelWeights::fromHfTensors(c, m);
}

quant::QuantScheme weightScheme(int bits, bool symmetric, int64_t group) {
  quant::QuantScheme s;
  s.weight.bits = bits;
  s.weight.symmetric = symmetric;
  // group: > 0 per group, 0 per channel, -1 per tensor.
  s.weight.granularity = group > 0    ? quant::Granularity::PerGroup
                         : group == 0 ? quant::Granularity::PerChannel
                                      : quant::Granularity::PerTensor;
  s.weight.groupSize = std::max<int64_t>(group, 0);
  s.weight.init = quant::StepInit::MinMax;
  return s;
}

QJsonObject readJson(const QString &path) {
  QFile f(path);
  if (!f.open(QIODevice::ReadOnly))
    return {};
  return QJsonDocument::fromJson(f.readAll()).object();
}

// GPT-2's printable form of byte b (the byte-level BPE alphabet).
std::string byteToken(int b) {
  static std::vector<uint32_t> map;
  if (map.empty()) {
    int shifted = 0;
    for (int i = 0; i < 256; ++i) {
      const bool printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE;
      map.push_back(printable ? uint32_t(i) : uint32_t(0x100 + shifted++));
    }
  }
  const uint32_t cp = map[size_t(b)];
  std::string text;
  if (cp < 0x80) {
    text += char(cp);
  } else {
    text += char(0xC0 | (cp >> 6));
    text += char(0x80 | (cp & 0x3F));
  }
  return text;
}

// Runs a reference script, optionally with extra PYTHONPATH entries first.
QByteArray runPython(const QString &script, const QStringList &args, const QString &pythonPath,
                     QString *error) {
  QProcess proc;
  if (!pythonPath.isEmpty()) {
    QProcessEnvironment env = QProcessEnvironment::systemEnvironment();
    env.insert("PYTHONPATH", pythonPath);
    proc.setProcessEnvironment(env);
  }
  proc.start(
      QStringLiteral(LRQ_PYTHON),
      QStringList{QDir(QStringLiteral(LRQ_SOURCE_DIR)).filePath("tests/reference/" + script)} +
          args);
  if (!proc.waitForFinished(120000) || proc.exitStatus() != QProcess::NormalExit ||
      proc.exitCode() != 0) {
    *error = script + " failed: " + QString::fromUtf8(proc.readAllStandardError());
    return {};
  }
  return proc.readAllStandardOutput();
}

// Where packaging/install-deps.sh puts the oldest tokenizers release it could install.
QString oldTokenizersPath() {
  const QString dir = QDir::homePath() + "/.cache/lrq-workbench/tokenizers-old";
  return QFileInfo::exists(dir + "/tokenizers") ? dir : QString();
}

} // namespace

class TestCompressedTensors : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  ModelConfig config_ = tinyLlamaConfig();
  ModelWeights original_;

  // Decodes dir with the numpy decoder; returns its JSON (empty on failure).
  QJsonObject decode(const QString &dir, const QString &out) {
    QString error;
    const QByteArray text =
        lrq::test::runReference("compressed_tensors_decode.py", {dir, out}, &error);
    if (text.isEmpty()) {
      qWarning().noquote() << error;
      return {};
    }
    return QJsonDocument::fromJson(text).object();
  }

  // Every quantized linear of q decodes (numpy) to its weight bit for bit.
  void checkDecodesTo(const QJsonObject &decoded, const QString &out, const ModelWeights &q,
                      int64_t expectLayers) {
    const QJsonObject layers = decoded.value("layers").toObject();
    QCOMPARE(int64_t(layers.size()), expectLayers);
    for (const auto &[prefix, l] : hfLinearsFromWeights(config_, q)) {
      const QString p = QString::fromStdString(prefix);
      QVERIFY2(layers.contains(p), qPrintable(p));
      const at::Tensor w = l->weight.to(at::kFloat);
      const at::Tensor back =
          lrq::test::readRaw(out + "/" + p + ".f32", at::kFloat, w.sizes().vec());
      QVERIFY2(back.defined(), qPrintable(p));
      QVERIFY2(at::equal(back, w), qPrintable(p + ": decoded weight differs"));
    }
  }

private slots:
  void initTestCase() {
    QVERIFY(tmp_.isValid());
    original_ = tinyWeights(config_);
  }

  void packInt32MatchesHandComputedWords() {
    // int4: u = c + 8; eight values per word, value i in bits 4i..4i+3.
    const at::Tensor codes =
        at::tensor(std::vector<int32_t>{1, -2, 7, -8, 0, 0, 0, 0, 3}, at::kInt).view({1, 9});
    const at::Tensor p = quant::packInt32(codes, 4, 1);
    QCOMPARE(p.sizes().vec(), (std::vector<int64_t>{1, 2}));
    QCOMPARE(p.scalar_type(), at::kInt);
    // u = 9, 6, 15, 0, 8, 8, 8, 8 -> 0x88880F69 (as signed int32), then u = 11.
    QCOMPARE(int64_t(p[0][0].item<int32_t>()), int64_t(0x88880F69) - (int64_t(1) << 32));
    QCOMPARE(p[0][1].item<int32_t>(), 11);
    QVERIFY(at::equal(quant::unpackInt32(p, 4, 1, 1, 9), codes));
    // int8 along dim 0 (zero points): four rows per word, row i in bits 8i..8i+7.
    const at::Tensor z =
        at::tensor(std::vector<int32_t>{-128, 5, 127, -1, 2}, at::kInt).view({5, 1});
    const at::Tensor pz = quant::packInt32(z, 8, 0);
    QCOMPARE(pz.sizes().vec(), (std::vector<int64_t>{2, 1}));
    // u = 0, 133, 255, 127 -> 0x7FFF8500, then u = 130.
    QCOMPARE(pz[0][0].item<int32_t>(), int32_t(0x7FFF8500));
    QCOMPARE(pz[1][0].item<int32_t>(), 130);
    QVERIFY(at::equal(quant::unpackInt32(pz, 8, 0, 5, 1), z));
    // Codes outside the signed range are refused.
    QVERIFY_THROWS_EXCEPTION(Error, quant::packInt32(codes + 1, 4, 1));
  }

  void weightOnlyDecodesExactly_data() {
    QTest::addColumn<int>("bits");
    QTest::addColumn<bool>("symmetric");
    QTest::addColumn<int>("group");
    QTest::addColumn<int>("valueType");
    QTest::newRow("int4 sym channel") << 4 << true << 0 << int(at::kFloat);
    QTest::newRow("int4 asym channel") << 4 << false << 0 << int(at::kFloat);
    QTest::newRow("int4 sym g16") << 4 << true << 16 << int(at::kFloat);
    QTest::newRow("int4 asym g16") << 4 << false << 16 << int(at::kFloat);
    QTest::newRow("int8 sym channel") << 8 << true << 0 << int(at::kFloat);
    QTest::newRow("int8 asym g8") << 8 << false << 8 << int(at::kFloat);
    QTest::newRow("int4 asym g16 bf16") << 4 << false << 16 << int(at::kBFloat16);
    QTest::newRow("int8 sym channel f16") << 8 << true << 0 << int(at::kHalf);
    QTest::newRow("int4 asym tensor") << 4 << false << -1 << int(at::kFloat);
  }

  void weightOnlyDecodesExactly() {
    QFETCH(int, bits);
    QFETCH(bool, symmetric);
    QFETCH(int, group);
    QFETCH(int, valueType);
    const auto type = at::ScalarType(valueType);
    const quant::QuantScheme scheme = weightScheme(bits, symmetric, group);
    ModelWeights q = copyOf(config_, original_);
    quant::quantizeModelRtn(q, config_, scheme);
    // A bf16 / f16 model: Ŵ rounded once to the source type, as the quantize job does.
    std::map<std::string, at::ScalarType> valueDtypes;
    if (type != at::kFloat)
      for (auto &[name, slot] : hfTensorSlotsOfWeights(config_, q)) {
        *slot = slot->to(type).to(at::kFloat);
        valueDtypes[name] = type;
      }
    quant::CompressedTensorsRun run;
    run.config = &config_;
    run.quantized = &q;
    run.original = &original_;
    run.scheme = &scheme;
    run.method = "rtn";
    run.valueDtypes = &valueDtypes;
    ExportOptions options;
    options.dtype = type;
    const QString tag = QString::fromLatin1(QTest::currentDataTag()).replace(' ', '-');
    const QString dir = tmp_.filePath("ct-" + tag);
    quant::CompressedTensorsStats stats;
    const ExportResult r =
        quant::exportCompressedTensors(dir.toStdString(), run, ExportTokenizer{}, options, &stats);
    QCOMPARE(stats.layers, int64_t(14));
    QCOMPARE(stats.inexactValues, int64_t(0));
    QVERIFY(r.bytes > r.weightsBytes && r.weightsBytes > 0);
    for (const char *f : {"config.json", "model.safetensors", "lrq_metadata.json"})
      QVERIFY2(QFileInfo::exists(dir + "/" + f), f);

    // config.json: the model's config plus quantization_config as published.
    const QJsonObject cfg = readJson(dir + "/config.json");
    QCOMPARE(cfg.value("architectures").toArray().at(0).toString(),
             QStringLiteral("LlamaForCausalLM"));
    const QJsonObject qc = cfg.value("quantization_config").toObject();
    QCOMPARE(qc.value("quant_method").toString(), QStringLiteral("compressed-tensors"));
    QCOMPARE(qc.value("format").toString(), QStringLiteral("pack-quantized"));
    QCOMPARE(qc.value("quantization_status").toString(), QStringLiteral("compressed"));
    QCOMPARE(qc.value("ignore").toArray(), QJsonArray{QStringLiteral("lm_head")});
    QVERIFY(qc.value("kv_cache_scheme").isNull());
    const QJsonObject g = qc.value("config_groups").toObject().value("group_0").toObject();
    QCOMPARE(g.value("targets").toArray(), QJsonArray{QStringLiteral("Linear")});
    QVERIFY(g.value("input_activations").isNull());
    const QJsonObject w = g.value("weights").toObject();
    QCOMPARE(w.value("num_bits").toInt(), bits);
    QCOMPARE(w.value("type").toString(), QStringLiteral("int"));
    QCOMPARE(w.value("symmetric").toBool(), symmetric);
    QCOMPARE(w.value("strategy").toString(), group > 0    ? QStringLiteral("group")
                                             : group == 0 ? QStringLiteral("channel")
                                                          : QStringLiteral("tensor"));
    if (group > 0)
      QCOMPARE(w.value("group_size").toInt(), group);
    else
      QVERIFY(w.value("group_size").isNull());
    QCOMPARE(w.value("dynamic").toBool(true), false);
    QCOMPARE(readJson(dir + "/lrq_metadata.json")
                 .value("lrq_export")
                 .toObject()
                 .value("scale_dtype")
                 .toString(),
             QStringLiteral("float32"));

    // The independent decoder gives Ŵ back bit for bit (after the model's own rounding).
    const QString out = tmp_.filePath("decoded-" + tag);
    const QJsonObject decoded = decode(dir, out);
    QVERIFY(!decoded.isEmpty());
    QCOMPARE(decoded.value("format").toString(), QStringLiteral("pack-quantized"));
    checkDecodesTo(decoded, out, q, 14);
    // The tensors left in full precision are there under their HF names.
    const QJsonArray other = decoded.value("other").toArray();
    for (const char *n : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                          "model.layers.1.post_attention_layernorm.weight"})
      QVERIFY2(other.contains(QString::fromLatin1(n)), n);
    QCOMPARE(other.size(), 2 + 1 + 2 * 2);
  }

  void partialSelectionListsIgnoredLinears() {
    quant::QuantScheme scheme = weightScheme(4, true, 0);
    scheme.layers.blocks = {1};
    scheme.layers.linears = {"q_proj", "down_proj"};
    ModelWeights q = copyOf(config_, original_);
    quant::quantizeModelRtn(q, config_, scheme);
    quant::CompressedTensorsRun run{&config_, &q, &original_, &scheme, "rtn"};
    const QString dir = tmp_.filePath("ct-partial");
    quant::exportCompressedTensors(dir.toStdString(), run, ExportTokenizer{});
    const QJsonArray ignore = readJson(dir + "/config.json")
                                  .value("quantization_config")
                                  .toObject()
                                  .value("ignore")
                                  .toArray();
    QCOMPARE(ignore.size(), 1 + 7 + 5);
    QVERIFY(ignore.contains(QStringLiteral("model.layers.0.self_attn.q_proj")));
    QVERIFY(ignore.contains(QStringLiteral("model.layers.1.mlp.up_proj")));
    QVERIFY(!ignore.contains(QStringLiteral("model.layers.1.mlp.down_proj")));
    const QString out = tmp_.filePath("decoded-partial");
    const QJsonObject decoded = decode(dir, out);
    QCOMPARE(decoded.value("layers").toObject().size(), 2);
    for (const char *p : {"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"})
      QVERIFY(decoded.value("layers").toObject().contains(QString::fromLatin1(p)));
    const at::Tensor back = lrq::test::readRaw(out + "/model.layers.1.mlp.down_proj.f32",
                                               at::kFloat, q.blocks[1].down.weight.sizes().vec());
    QVERIFY(at::equal(back, q.blocks[1].down.weight));
  }

  void w8a8IsIntQuantized_data() {
    QTest::addColumn<bool>("isStatic");
    QTest::addColumn<bool>("perTensor");
    QTest::addColumn<bool>("symmetric");
    QTest::newRow("dynamic per-token, sym per-channel weights") << false << false << true;
    QTest::newRow("static per-tensor, sym per-tensor weights") << true << true << true;
    QTest::newRow("static per-tensor, asym per-channel weights") << true << false << false;
    QTest::newRow("dynamic per-token, asym per-tensor weights") << false << true << false;
  }

  void w8a8IsIntQuantized() {
    QFETCH(bool, isStatic);
    QFETCH(bool, perTensor);
    QFETCH(bool, symmetric);
    quant::QuantScheme scheme = weightScheme(8, symmetric, 0);
    if (perTensor)
      scheme.weight.granularity = quant::Granularity::PerTensor;
    scheme.activation.mode =
        isStatic ? quant::ActivationMode::PerTensorStatic : quant::ActivationMode::PerTokenDynamic;
    ModelWeights q = copyOf(config_, original_);
    quant::quantizeModelRtn(q, config_, scheme);
    // Activation quantizers as installActivationQuantizers leaves them: static ones calibrated.
    int k = 0;
    for (auto &[prefix, l] : hfLinearsFromWeights(config_, q)) {
      quant::ActivationQuantizer a(scheme.activation);
      if (isStatic)
        a.setStatic(0.01 * (1 + k), double(100 + k));
      const_cast<Linear *>(l)->inputTransform = std::make_shared<quant::ActivationTransform>(a);
      ++k;
    }
    quant::CompressedTensorsRun run{&config_, &q, &original_, &scheme, "rtn"};
    const QString tag = QString::fromLatin1(QTest::currentDataTag()).replace(' ', '-');
    const QString dir = tmp_.filePath("ct-w8a8-" + tag);
    quant::CompressedTensorsStats stats;
    quant::exportCompressedTensors(dir.toStdString(), run, ExportTokenizer{}, {}, &stats);
    QCOMPARE(stats.inexactValues, int64_t(0));
    const QJsonObject qc = readJson(dir + "/config.json").value("quantization_config").toObject();
    QCOMPARE(qc.value("format").toString(), QStringLiteral("int-quantized"));
    const QJsonObject g = qc.value("config_groups").toObject().value("group_0").toObject();
    const QJsonObject in = g.value("input_activations").toObject();
    QCOMPARE(in.value("num_bits").toInt(), 8);
    QCOMPARE(in.value("symmetric").toBool(true), false); // ours is asymmetric
    QCOMPARE(in.value("strategy").toString(),
             isStatic ? QStringLiteral("tensor") : QStringLiteral("token"));
    QCOMPARE(in.value("dynamic").toBool(), !isStatic);
    QCOMPARE(g.value("weights").toObject().value("strategy").toString(),
             perTensor ? QStringLiteral("tensor") : QStringLiteral("channel"));
    QCOMPARE(g.value("weights").toObject().value("symmetric").toBool(), symmetric);
    // Asymmetric W8A8 weights are stored, with a note that vLLM will not run them.
    const QJsonArray caveats = readJson(dir + "/lrq_metadata.json")
                                   .value("lrq_export")
                                   .toObject()
                                   .value("vllm_caveats")
                                   .toArray();
    QCOMPARE(caveats.isEmpty(), symmetric);

    const QString out = tmp_.filePath("decoded-w8a8-" + tag);
    const QJsonObject decoded = decode(dir, out);
    QVERIFY(!decoded.isEmpty());
    checkDecodesTo(decoded, out, q, 14);
    if (isStatic) {
      // The steps as calibrated; the zero point in the format's signed range (z - 128).
      const QJsonObject first =
          decoded.value("layers").toObject().value("model.layers.0.self_attn.q_proj").toObject();
      QCOMPARE(first.value("input_scale").toDouble(), double(float(0.01)));
      QCOMPARE(first.value("input_zero_point").toInt(), 100 - 128);
    }
  }

  void refusesWhatItCannotHold() {
    using quant::compressedTensorsFormatFor;
    const quant::QuantScheme w4 = weightScheme(4, false, 0);
    QVERIFY_THROWS_EXCEPTION(Error, compressedTensorsFormatFor(w4, "lqer"));
    QVERIFY_THROWS_EXCEPTION(Error, compressedTensorsFormatFor(w4, "l2qer"));
    QVERIFY_THROWS_EXCEPTION(Error, compressedTensorsFormatFor(weightScheme(3, false, 0), "rtn"));
    QVERIFY_THROWS_EXCEPTION(Error, compressedTensorsFormatFor(weightScheme(2, true, 16), "rtn"));
    QVERIFY_THROWS_EXCEPTION(Error,
                             compressedTensorsFormatFor(quant::presetScheme("W4A8-KV8"), "rtn"));
    quant::QuantScheme w4a8 = quant::presetScheme("W4A8-KV8");
    w4a8.kv8 = false;
    QVERIFY_THROWS_EXCEPTION(Error, compressedTensorsFormatFor(w4a8, "rtn"));
    quant::QuantScheme a4 = quant::presetScheme("W8A8");
    a4.activation.bits = 4;
    QVERIFY_THROWS_EXCEPTION(Error, compressedTensorsFormatFor(a4, "rtn"));
    quant::QuantScheme embeddings = weightScheme(4, true, 0);
    embeddings.layers.embeddings = true;
    QVERIFY_THROWS_EXCEPTION(Error, compressedTensorsFormatFor(embeddings, "rtn"));
    // A full-range symmetric grid needs zero points (0 or -1) the symmetric form lacks.
    QVERIFY_THROWS_EXCEPTION(Error,
                             compressedTensorsFormatFor(quant::presetScheme("gguf-q4_0"), "rtn"));
    const Hyperparameters actOrder{{"act_order", OptionValue(true)}};
    QVERIFY_THROWS_EXCEPTION(
        Error, compressedTensorsFormatFor(weightScheme(4, true, 16), "gptq", &actOrder));
    QCOMPARE(int(compressedTensorsFormatFor(weightScheme(4, true, 16), "gptq")),
             int(quant::CompressedTensorsFormat::PackQuantized));
    QCOMPARE(int(compressedTensorsFormatFor(quant::presetScheme("W8A8"), "smoothquant")),
             int(quant::CompressedTensorsFormat::IntQuantized));
    try {
      compressedTensorsFormatFor(w4, "lqer");
    } catch (const Error &e) {
      QVERIFY2(std::string(e.what()).find("low-rank") != std::string::npos, e.what());
    }

    // LQER factors on a linear: refused, nothing written.
    const quant::QuantScheme scheme = weightScheme(4, true, 0);
    ModelWeights q = copyOf(config_, original_);
    quant::quantizeModelRtn(q, config_, scheme);
    q.blocks[0].q.lowRankA = at::ones({32, 2});
    q.blocks[0].q.lowRankB = at::ones({2, 32});
    quant::CompressedTensorsRun run{&config_, &q, &original_, &scheme, "rtn"};
    const QString dir = tmp_.filePath("ct-refused");
    QVERIFY_THROWS_EXCEPTION(Error, quant::exportCompressedTensors(dir.toStdString(), run, {}));
    QVERIFY(!QFileInfo::exists(dir));
    q.blocks[0].q.lowRankA = at::Tensor();
    q.blocks[0].q.lowRankB = at::Tensor();
    // An activation transform the scheme does not declare: refused.
    quant::ActivationSpec dynamicSpec;
    dynamicSpec.mode = quant::ActivationMode::PerTokenDynamic;
    q.blocks[0].k.inputTransform =
        std::make_shared<quant::ActivationTransform>(quant::ActivationQuantizer(dynamicSpec));
    QVERIFY_THROWS_EXCEPTION(Error, quant::exportCompressedTensors(dir.toStdString(), run, {}));
    q.blocks[0].k.inputTransform.reset();
    // Groups that do not divide the columns: refused.
    const quant::QuantScheme g24 = weightScheme(4, true, 24);
    ModelWeights q24 = copyOf(config_, original_);
    quant::quantizeModelRtn(q24, config_, g24);
    quant::CompressedTensorsRun run24{&config_, &q24, &original_, &g24, "rtn"};
    QVERIFY_THROWS_EXCEPTION(Error, quant::exportCompressedTensors(dir.toStdString(), run24, {}));
    QVERIFY(!QFileInfo::exists(dir));
    QCOMPARE(QDir(tmp_.path()).entryList({".ct-refused*"}, QDir::AllEntries | QDir::Hidden).size(),
             0);
  }

  void existingFolderAndFailureHalfWay() {
    const quant::QuantScheme scheme = weightScheme(4, true, 16);
    ModelWeights q = copyOf(config_, original_);
    quant::quantizeModelRtn(q, config_, scheme);
    quant::CompressedTensorsRun run{&config_, &q, &original_, &scheme, "rtn"};
    const QString dir = tmp_.filePath("ct-existing");
    QDir().mkpath(dir);
    writeFile(dir + "/marker", "old");
    QVERIFY_THROWS_EXCEPTION(FileError, quant::exportCompressedTensors(dir.toStdString(), run, {}));
    QVERIFY(QFileInfo::exists(dir + "/marker"));

    // A failure half way through the tensors leaves the old folder and no temporary.
    ExportOptions failing;
    failing.overwrite = true;
    int tensors = 0;
    failing.beforeStep = [&](const std::string &step) {
      if (step.find("weight_packed") != std::string::npos && ++tensors == 3)
        throw Error("disk full (simulated)");
    };
    QVERIFY_THROWS_EXCEPTION(Error,
                             quant::exportCompressedTensors(dir.toStdString(), run, {}, failing));
    QVERIFY(QFileInfo::exists(dir + "/marker"));
    QCOMPARE(QDir(tmp_.path()).entryList({".ct-existing*"}, QDir::AllEntries | QDir::Hidden).size(),
             0);
    // Overwriting replaces it.
    ExportOptions overwrite;
    overwrite.overwrite = true;
    quant::exportCompressedTensors(dir.toStdString(), run, {}, overwrite);
    QVERIFY(!QFileInfo::exists(dir + "/marker"));
    QVERIFY(QFileInfo::exists(dir + "/model.safetensors"));
    // A cancelled export leaves nothing either.
    const QString fresh = tmp_.filePath("ct-cancelled");
    CancelToken cancel;
    cancel.cancel();
    QVERIFY_THROWS_EXCEPTION(Cancelled,
                             quant::exportCompressedTensors(fresh.toStdString(), run, {}, {},
                                                            nullptr, nullptr, &cancel));
    QVERIFY(!QFileInfo::exists(fresh));
  }

  void quantizeJobWritesIt() {
    // A bf16 model through the job (RTN and GPTQ, asymmetric g16): the export
    // decodes to the weights of the run's HF export, which are the ones it evaluated.
    const QString model = tmp_.filePath("bf16-model");
    QDir().mkpath(model);
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (auto &[name, t] : tinyLlamaTensors(config_, 5, 3))
      tensors.emplace_back(name, t.to(at::kBFloat16));
    writeSafetensors(model.toStdString() + "/model.safetensors", tensors);
    writeHfConfig(model.toStdString() + "/config.json", config_, "bfloat16");
    std::string vocab = "{";
    for (int b = 0; b < 256; ++b) {
      std::string t = byteToken(b);
      std::string esc;
      for (char ch : t)
        esc += (ch == '"' || ch == '\\') ? std::string("\\") + ch : std::string(1, ch);
      vocab += (b ? ",\"" : "\"") + esc + "\":" + std::to_string(b);
    }
    vocab += "}";
    writeFile(
        model + "/tokenizer.json",
        R"({"model": {"type": "BPE", "vocab": )" + vocab +
            R"(, "merges": []}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}})");
    std::string words;
    for (int i = 0; i < 400; ++i)
      words += (i % 3 ? "grid " : "scale ");
    writeFile(tmp_.filePath("calibration.txt"), words);
    writeFile(tmp_.filePath("scheme-g16.json"),
              R"({"name": "W4A16-g16", "weight": {"bits": 4, "symmetric": false,
                  "granularity": "per-group", "group_size": 16, "init": "minmax"}})");
    struct Case {
      std::string method, scheme;
      bool smoothQuant;
    };
    const std::string g16 = tmp_.filePath("scheme-g16.json").toStdString();
    for (const Case &c :
         {Case{"rtn", g16, false}, Case{"gptq", g16, false}, Case{"rtn", "W8A8", true}}) {
      const QString tag = QString::fromStdString(c.method + (c.smoothQuant ? "-w8a8" : ""));
      QuantizeRequest r;
      r.model = model.toStdString();
      r.method = c.method;
      r.scheme = c.scheme;
      r.smoothQuant = c.smoothQuant;
      r.calibrationText = tmp_.filePath("calibration.txt").toStdString();
      r.samples = 2;
      r.seqLen = 32;
      r.heldoutSamples = 0;
      r.evaluate = false;
      r.spectra = false;
      r.storePath = tmp_.filePath("runs.sqlite").toStdString();
      r.workDir = tmp_.filePath("work-" + tag).toStdString();
      r.exportDir = tmp_.filePath("job-hf-" + tag).toStdString();
      r.compressedTensorsDir = tmp_.filePath("job-ct-" + tag).toStdString();
      const QuantizeOutcome o = runQuantizeJob(r);
      QCOMPARE(o.compressedTensorsDir, r.compressedTensorsDir);
      // Recorded with the run, like the other exports.
      QCOMPARE(RunStore::open(r.storePath).getRunInfo(o.runId).compressedTensorsDir,
               r.compressedTensorsDir);
      const QString out = tmp_.filePath("decoded-job-" + tag);
      const QJsonObject decoded = decode(QString::fromStdString(o.compressedTensorsDir), out);
      QCOMPARE(decoded.value("torch_dtype").toString(), QStringLiteral("bfloat16"));
      QCOMPARE(decoded.value("format").toString(),
               c.smoothQuant ? QStringLiteral("int-quantized") : QStringLiteral("pack-quantized"));
      const LoadedModel hf = loadModel(o.exportDir);
      const ModelWeights evaluated = ModelWeights::fromHfTensors(hf.config, hf.tensors);
      checkDecodesTo(decoded, out, evaluated, 14);
      QVERIFY(
          QFileInfo::exists(QString::fromStdString(o.compressedTensorsDir) + "/tokenizer.json"));
    }
  }

  void cliRefusesBeforeTheRun() {
    const QString model = tmp_.filePath("bf16-model");
    if (!QFileInfo::exists(model + "/config.json"))
      QSKIP("needs quantizeJobWritesIt's model");
    const QString store = tmp_.filePath("cli-runs.sqlite");
    lrq::test::Result r = lrq::test::runLrq(
        {"quantize", model, "--method", "lqer", "--scheme", "W4A16", "--compressed-tensors",
         tmp_.filePath("cli-ct"), "--store", store, "--no-eval", "--no-spectra"});
    QVERIFY(r.exitCode != 0);
    QVERIFY2(r.err.contains("compressed-tensors") && r.err.contains("low-rank"), qPrintable(r.err));
    QVERIFY(!QFileInfo::exists(store)); // refused before any run was recorded
    r = lrq::test::runLrq({"quantize", model, "--scheme", "W3A16", "--compressed-tensors",
                           tmp_.filePath("cli-ct"), "--store", store});
    QVERIFY(r.exitCode != 0);
    QVERIFY2(r.err.contains("4 or 8 bits"), qPrintable(r.err));
    // Groups that do not divide the model's 32 in-features: refused before any run.
    writeFile(tmp_.filePath("scheme-g24.json"),
              R"({"weight": {"bits": 4, "granularity": "per-group", "group_size": 24}})");
    r = lrq::test::runLrq({"quantize", model, "--scheme", tmp_.filePath("scheme-g24.json"),
                           "--compressed-tensors", tmp_.filePath("cli-ct"), "--store", store,
                           "--text", tmp_.filePath("calibration.txt"), "--calib",
                           tmp_.filePath("calibration.txt")});
    QVERIFY(r.exitCode != 0);
    QVERIFY2(r.err.contains("whole groups"), qPrintable(r.err));
    QVERIFY(!QFileInfo::exists(store));
    // An existing folder without --force.
    QDir().mkpath(tmp_.filePath("cli-ct-existing"));
    r = lrq::test::runLrq({"quantize", model, "--compressed-tensors",
                           tmp_.filePath("cli-ct-existing"), "--store", store});
    QVERIFY(r.exitCode != 0);
    QVERIFY2(r.err.contains("--force"), qPrintable(r.err));
  }

  void tokenizerMergesAsStrings() {
    // A byte-level BPE spec with a few merges: the exported tokenizer.json
    // writes them as "a b" strings, which tokenizers before 0.20 can read.
    TokenizerSpec spec;
    spec.kind = TokenizerKind::ByteLevelBpe;
    spec.preTokenizer = "default";
    for (int b = 0; b < 256; ++b)
      spec.tokens.push_back(byteToken(b));
    const std::string G = byteToken(' '); // "Ġ"
    const std::vector<std::pair<std::string, std::string>> merges = {
        {"t", "h"},    {"th", "e"},  {G, "the"}, {"r", "o"},  {"ro", "u"},  {"rou", "n"},
        {"roun", "d"}, {G, "round"}, {"g", "r"}, {"gr", "i"}, {"gri", "d"}, {G, "grid"}};
    for (const auto &[a, b] : merges) {
      spec.merges.push_back(a + " " + b);
      spec.tokens.push_back(a + b);
    }
    const std::string json = tokenizerJsonFromSpec(spec);
    const QJsonArray written = QJsonDocument::fromJson(QByteArray::fromStdString(json))
                                   .object()
                                   .value("model")
                                   .toObject()
                                   .value("merges")
                                   .toArray();
    QCOMPARE(written.size(), qsizetype(merges.size()));
    QCOMPARE(written.at(0).toString(), QStringLiteral("t h"));
    const QString file = tmp_.filePath("merges-tokenizer.json");
    writeFile(file, json);
    const std::string text = "the round grid, the grids round 1234 thé\n rounder";
    const QString textFile = tmp_.filePath("merges-text.txt");
    writeFile(textFile, text);
    const std::vector<int32_t> ours = Tokenizer::create(spec)->encode(text, false, true);
    QVERIFY(ours.size() < text.size()); // the merges were used
    auto idsOf = [](const QByteArray &out) {
      std::vector<int32_t> ids;
      for (const auto &v : QJsonDocument::fromJson(out).object().value("ids").toArray())
        ids.push_back(v.toInt());
      return ids;
    };
    QString error;
    const QByteArray current = runPython("tokenizer_file_encode.py", {file, textFile}, {}, &error);
    QVERIFY2(!current.isEmpty(), qPrintable(error));
    QCOMPARE(idsOf(current), ours);
    const QString old = oldTokenizersPath();
    if (old.isEmpty()) {
      qWarning("no old tokenizers release installed (packaging/install-deps.sh): checked the "
               "string form with the current release only");
    } else {
      const QByteArray version = runPython("tokenizer_file_encode.py", {"--version"}, old, &error);
      const QByteArray oldIds =
          runPython("tokenizer_file_encode.py", {file, textFile}, old, &error);
      QVERIFY2(!oldIds.isEmpty(), qPrintable(error));
      QCOMPARE(idsOf(oldIds), ours);
      qInfo().noquote() << "tokenizer.json read by tokenizers" << version.trimmed()
                        << "and the current release alike";
    }

    // A merged token holding a space cannot be written as "a b": pairs are kept.
    TokenizerSpec spaced = spec;
    spaced.tokens.push_back(" ");
    spaced.tokens.push_back(" t");
    spaced.merges.push_back("  t");
    const QJsonArray pairs =
        QJsonDocument::fromJson(QByteArray::fromStdString(tokenizerJsonFromSpec(spaced)))
            .object()
            .value("model")
            .toObject()
            .value("merges")
            .toArray();
    QVERIFY(pairs.at(0).isArray());
    QCOMPARE(pairs.at(0).toArray().at(1).toString(), QStringLiteral("h"));
    QCOMPARE(pairs.last().toArray().at(0).toString(), QStringLiteral(" "));
  }
};

QTEST_GUILESS_MAIN(TestCompressedTensors)
#include "test_compressed_tensors.moc"
