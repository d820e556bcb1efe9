// lrq::loadModel: the real default GGUF (config, names, q/k un-permutation
// against gguf-py + numpy), tiny GGUFs converted the way llama.cpp does, HF
// directories written by our own writers, config.json parsing, and the errors
// users see for malformed or missing files.
#include <ATen/ATen.h>

#include <QDir>
#include <QElapsedTimer>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <cstring>
#include <fstream>

#include "core/common/error.h"
#include "core/io/gguf_model.h"
#include "core/io/hf_config.h"
#include "core/io/model_loader.h"
#include "core/io/safetensors.h"
#include "test_support.h"

using namespace lrq;

namespace {

at::Tensor readFloatTensor(const QString &path, const std::vector<int64_t> &shape) {
  QFile f(path);
  if (!f.open(QIODevice::ReadOnly))
    return {};
  const QByteArray bytes = f.readAll();
  at::Tensor t = at::empty(shape, at::kFloat);
  if (bytes.size() != t.numel() * 4)
    return {};
  std::memcpy(t.data_ptr<float>(), bytes.constData(), static_cast<size_t>(bytes.size()));
  return t;
}

bool writeText(const QString &path, const QByteArray &text) {
  QFile f(path);
  return f.open(QIODevice::WriteOnly) && f.write(text) == text.size();
}

// Resident set figures from /proc (kB).
int64_t procStatusKb(const char *field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0)
      return std::stoll(line.substr(prefix.size()));
  return -1;
}

// max |a-b| / max |b| style check; exact matches give 0.
bool sameValues(const at::Tensor &ours, const at::Tensor &ref, double relTol = 1e-6) {
  if (!ours.defined() || !ref.defined() || ours.sizes() != ref.sizes())
    return false;
  const at::Tensor diff = (ours.to(at::kDouble) - ref.to(at::kDouble)).abs();
  const at::Tensor bound = ref.to(at::kDouble).abs() * relTol;
  return diff.le(bound).all().item<bool>();
}

struct RecordingObserver : ProgressObserver {
  std::string task;
  int64_t startedTotal = -1;
  std::vector<int64_t> done;
  int64_t lastTotal = -1;
  bool finishedCalled = false;
  CancelToken *cancelAfter = nullptr;
  int64_t cancelAt = -1;
  void started(const std::string &t, int64_t total) override {
    task = t;
    startedTotal = total;
  }
  void progress(int64_t d, int64_t total, const std::string &) override {
    done.push_back(d);
    lastTotal = total;
    if (cancelAfter && d == cancelAt)
      cancelAfter->cancel();
  }
  void finished() override { finishedCalled = true; }
};

// A small LLaMA-family config for HF directories written by the tests.
ModelConfig tinyConfig(const std::string &architecture) {
  ModelConfig c;
  c.arch = Architecture::Llama;
  c.architectureName = architecture;
  c.vocabSize = 50;
  c.hiddenSize = 32;
  c.intermediateSize = 48;
  c.numLayers = 2;
  c.numHeads = 4;
  c.numKvHeads = 2;
  c.headDim = 8;
  c.maxPositions = 256;
  c.normEps = 1e-6;
  c.ropeTheta = 10000.0;
  c.tieEmbeddings = false;
  c.bosTokenId = 1;
  c.eosTokenId = 2;
  if (architecture == "Qwen2ForCausalLM")
    c.attentionBias = true;
  return c;
}

// HF-named random tensors for a LLaMA-family config (some stored as F16/BF16).
std::vector<std::pair<std::string, at::Tensor>> tinyTensors(const ModelConfig &c) {
  at::manual_seed(11);
  const int64_t h = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  std::vector<std::pair<std::string, at::Tensor>> t;
  t.emplace_back("model.embed_tokens.weight", at::randn({c.vocabSize, h}).to(at::kBFloat16));
  for (int64_t i = 0; i < c.numLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t.emplace_back(p + "input_layernorm.weight", at::randn({h}));
    t.emplace_back(p + "self_attn.q_proj.weight", at::randn({q, h}));
    t.emplace_back(p + "self_attn.k_proj.weight", at::randn({kv, h}).to(at::kHalf));
    t.emplace_back(p + "self_attn.v_proj.weight", at::randn({kv, h}));
    if (c.attentionBias) {
      t.emplace_back(p + "self_attn.q_proj.bias", at::randn({q}));
      t.emplace_back(p + "self_attn.k_proj.bias", at::randn({kv}));
      t.emplace_back(p + "self_attn.v_proj.bias", at::randn({kv}));
    }
    t.emplace_back(p + "self_attn.o_proj.weight", at::randn({h, q}));
    t.emplace_back(p + "post_attention_layernorm.weight", at::randn({h}));
    t.emplace_back(p + "mlp.gate_proj.weight", at::randn({c.intermediateSize, h}));
    t.emplace_back(p + "mlp.up_proj.weight", at::randn({c.intermediateSize, h}));
    t.emplace_back(p + "mlp.down_proj.weight", at::randn({h, c.intermediateSize}));
  }
  t.emplace_back("model.norm.weight", at::randn({h}));
  t.emplace_back("lm_head.weight", at::randn({c.vocabSize, h}));
  return t;
}

void expectSameConfig(const ModelConfig &a, const ModelConfig &b) {
  QCOMPARE(a.arch, b.arch);
  QCOMPARE(a.architectureName, b.architectureName);
  QCOMPARE(a.vocabSize, b.vocabSize);
  QCOMPARE(a.hiddenSize, b.hiddenSize);
  QCOMPARE(a.intermediateSize, b.intermediateSize);
  QCOMPARE(a.numLayers, b.numLayers);
  QCOMPARE(a.numHeads, b.numHeads);
  QCOMPARE(a.numKvHeads, b.numKvHeads);
  QCOMPARE(a.headDim, b.headDim);
  QCOMPARE(a.maxPositions, b.maxPositions);
  QCOMPARE(a.normEps, b.normEps);
  QCOMPARE(a.ropeTheta, b.ropeTheta);
  QCOMPARE(a.tieEmbeddings, b.tieEmbeddings);
  QCOMPARE(a.attentionBias, b.attentionBias);
  QCOMPARE(a.attentionOutBias, b.attentionOutBias);
  QCOMPARE(a.mlpBias, b.mlpBias);
  QCOMPARE(a.doLayerNormBefore, b.doLayerNormBefore);
  QCOMPARE(a.wordEmbedProjDim, b.wordEmbedProjDim);
  QCOMPARE(a.activation, b.activation);
  QCOMPARE(a.bosTokenId, b.bosTokenId);
  QCOMPARE(a.eosTokenId, b.eosTokenId);
}

} // namespace

class TestModelLoader : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  LoadedModel model_;
  RecordingObserver observer_;
  QString path(const QString &name) const { return dir_.filePath(name); }

  // Expects loadModel(p) to throw a FileError whose message contains all fragments.
  void expectLoadError(const QString &p, const QStringList &fragments) {
    try {
      loadModel(p.toStdString());
      QFAIL(qPrintable("no error loading " + p));
    } catch (const FileError &e) {
      const QString msg = QString::fromUtf8(e.what());
      qInfo("%s", qPrintable(msg));
      QVERIFY2(!msg.contains('\n'), qPrintable(msg));
      for (const QString &f : fragments)
        QVERIFY2(msg.contains(f), qPrintable(msg + "  (expected: " + f + ")"));
    }
  }

  void expectConfigError(const QByteArray &json, const QStringList &fragments) {
    const QString p = path("bad/config.json");
    QVERIFY(QDir().mkpath(path("bad")));
    QVERIFY(writeText(p, json));
    try {
      modelConfigFromHfConfigFile(p.toStdString());
      QFAIL(qPrintable("no error for " + json));
    } catch (const FileError &e) {
      const QString msg = QString::fromUtf8(e.what());
      qInfo("%s", qPrintable(msg));
      QVERIFY2(msg.startsWith(p + ": "), qPrintable(msg));
      for (const QString &f : fragments)
        QVERIFY2(msg.contains(f), qPrintable(msg + "  (expected: " + f + ")"));
    }
  }

  // Writes an HF directory: config.json + one or two safetensors shards.
  void writeHfDir(const QString &sub, const ModelConfig &c,
                  const std::vector<std::pair<std::string, at::Tensor>> &tensors, bool sharded) {
    QVERIFY(QDir().mkpath(path(sub)));
    writeHfConfig((path(sub) + "/config.json").toStdString(), c);
    if (!sharded) {
      writeSafetensors((path(sub) + "/model.safetensors").toStdString(), tensors,
                       {{"format", "pt"}});
      return;
    }
    const size_t half = tensors.size() / 2;
    std::vector<std::pair<std::string, at::Tensor>> a(tensors.begin(), tensors.begin() + half);
    std::vector<std::pair<std::string, at::Tensor>> b(tensors.begin() + half, tensors.end());
    SafetensorsIndex index;
    for (const auto &t : a)
      index.weightMap[t.first] = "model-00001-of-00002.safetensors";
    for (const auto &t : b)
      index.weightMap[t.first] = "model-00002-of-00002.safetensors";
    writeSafetensors((path(sub) + "/model-00001-of-00002.safetensors").toStdString(), a);
    writeSafetensors((path(sub) + "/model-00002-of-00002.safetensors").toStdString(), b);
    writeSafetensorsIndex((path(sub) + "/model.safetensors.index.json").toStdString(), index, 0);
  }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    const std::string modelPath = test::defaultModelPath();
    const int64_t rssBefore = procStatusKb("VmRSS");
    QElapsedTimer timer;
    timer.start();
    model_ = loadModel(modelPath, &observer_);
    const qint64 ms = timer.elapsed();
    qInfo("loaded %s in %lld ms; RSS %lld MB before, %lld MB after, peak %lld MB",
          modelPath.c_str(), static_cast<long long>(ms), static_cast<long long>(rssBefore / 1024),
          static_cast<long long>(procStatusKb("VmRSS") / 1024),
          static_cast<long long>(procStatusKb("VmHWM") / 1024));
    QVERIFY(procStatusKb("VmHWM") < 1500 * 1024); // well under 1.5 GB
  }

  void defaultModelConfig() {
    const ModelConfig &c = model_.config;
    QCOMPARE(model_.format, std::string("gguf"));
    QVERIFY(c.arch == Architecture::Llama);
    QCOMPARE(c.architectureName, std::string("LlamaForCausalLM"));
    QCOMPARE(c.numLayers, int64_t(30));
    QCOMPARE(c.hiddenSize, int64_t(576));
    QCOMPARE(c.numHeads, int64_t(9));
    QCOMPARE(c.numKvHeads, int64_t(3));
    QCOMPARE(c.headDim, int64_t(64));
    QCOMPARE(c.intermediateSize, int64_t(1536));
    QCOMPARE(c.vocabSize, int64_t(49152));
    QCOMPARE(c.maxPositions, int64_t(8192));
    QCOMPARE(c.ropeTheta, 100000.0);
    QCOMPARE(c.normEps, static_cast<double>(1e-5f)); // stored as float32
    QVERIFY(c.tieEmbeddings);
    QVERIFY(!c.attentionBias && !c.attentionOutBias && !c.mlpBias);
    QCOMPARE(c.bosTokenId, int64_t(1));
    QCOMPARE(c.eosTokenId, int64_t(2));
    QCOMPARE(model_.baselineNote, std::string("dequantized from Q4_1"));
  }

  void defaultModelTensors() {
    QCOMPARE(model_.tensors.size(), size_t(30 * 9 + 2));
    QCOMPARE(model_.sources.size(), model_.tensors.size());
    QVERIFY(!model_.tensors.count("lm_head.weight")); // tied
    const std::map<std::string, std::vector<int64_t>> shapes = {
        {"model.embed_tokens.weight", {49152, 576}},
        {"model.norm.weight", {576}},
        {"model.layers.0.input_layernorm.weight", {576}},
        {"model.layers.0.post_attention_layernorm.weight", {576}},
        {"model.layers.0.self_attn.q_proj.weight", {576, 576}},
        {"model.layers.0.self_attn.k_proj.weight", {192, 576}},
        {"model.layers.0.self_attn.v_proj.weight", {192, 576}},
        {"model.layers.0.self_attn.o_proj.weight", {576, 576}},
        {"model.layers.29.mlp.gate_proj.weight", {1536, 576}},
        {"model.layers.29.mlp.up_proj.weight", {1536, 576}},
        {"model.layers.29.mlp.down_proj.weight", {576, 1536}},
    };
    for (const auto &[name, shape] : shapes) {
      QVERIFY2(model_.tensors.count(name), name.c_str());
      const at::Tensor &t = model_.tensors.at(name);
      QCOMPARE(t.sizes().vec(), shape);
      QCOMPARE(t.scalar_type(), at::kFloat);
      QVERIFY(t.is_contiguous());
      QVERIFY2(t.isfinite().all().item<bool>(), name.c_str());
    }
    std::map<std::string, const TensorSource *> byName;
    for (const TensorSource &s : model_.sources)
      byName[s.name] = &s;
    QCOMPARE(byName.at("model.layers.7.self_attn.q_proj.weight")->sourceName,
             std::string("blk.7.attn_q.weight"));
    QCOMPARE(byName.at("model.layers.7.self_attn.q_proj.weight")->sourceType, std::string("Q4_1"));
    QCOMPARE(byName.at("model.embed_tokens.weight")->sourceType, std::string("Q8_0"));
    QCOMPARE(byName.at("model.norm.weight")->sourceName, std::string("output_norm.weight"));
    QCOMPARE(byName.at("model.norm.weight")->sourceType, std::string("F32"));
    QCOMPARE(byName.at("model.layers.3.post_attention_layernorm.weight")->sourceName,
             std::string("blk.3.ffn_norm.weight"));
    QCOMPARE(byName.at("model.layers.3.mlp.down_proj.weight")->shape,
             (std::vector<int64_t>{576, 1536}));
    // Progress: one step per tensor, in order, then finished.
    QCOMPARE(observer_.task, std::string("load"));
    QCOMPARE(observer_.startedTotal, int64_t(272));
    QCOMPARE(observer_.done.size(), size_t(272));
    QCOMPARE(observer_.done.back(), int64_t(272));
    QVERIFY(std::is_sorted(observer_.done.begin(), observer_.done.end()));
    QVERIFY(observer_.finishedCalled);
  }

  void defaultModelTokenizer() {
    QVERIFY(model_.tokenizer != nullptr);
    QCOMPARE(model_.tokenizer->vocabSize(), 49152);
    QCOMPARE(model_.tokenizer->bosId(), 1);
    QCOMPARE(model_.tokenizer->eosId(), 2);
    const TokenizerSpec &s = model_.tokenizer->spec();
    QVERIFY(s.kind == TokenizerKind::ByteLevelBpe);
    QCOMPARE(s.preTokenizer, std::string("smollm"));
    QCOMPARE(s.merges.size(), size_t(48900));
    QCOMPARE(s.tokenTypes.size(), size_t(49152));
    QVERIFY(!s.addBos);
  }

  // q/k rows back in HF order, against gguf-py's dequantization and an
  // index-formula inverse checked with the converter's own permutation.
  void unpermutationMatchesNumpy() {
    QString error;
    const QString out = path("unpermute");
    const QByteArray printed = test::runReference(
        "gguf_unpermute.py",
        {QString::fromStdString(test::defaultModelPath()), out, "0", "13", "29"}, &error);
    QVERIFY2(!printed.isEmpty(), qPrintable(error));
    const QJsonObject desc = QJsonDocument::fromJson(printed).object();
    QCOMPARE(desc["heads"].toInt(), 9);
    QCOMPARE(desc["kv_heads"].toInt(), 3);
    QCOMPARE(desc["head_dim"].toInt(), 64);
    const QJsonArray files = desc["files"].toArray();
    QCOMPARE(files.size(), 9);
    const GgufReader gguf(test::defaultModelPath());
    for (const QJsonValue &v : files) {
      const QJsonObject f = v.toObject();
      const std::string role = f["role"].toString().toStdString();
      const std::string name = "model.layers." + std::to_string(f["layer"].toInt()) +
                               ".self_attn." + role + "_proj.weight";
      std::vector<int64_t> shape;
      for (const QJsonValue &d : f["shape"].toArray())
        shape.push_back(d.toInteger());
      const at::Tensor ref = readFloatTensor(out + "/" + f["file"].toString(), shape);
      QVERIFY(ref.defined());
      const at::Tensor &ours = model_.tensors.at(name);
      QVERIFY2(sameValues(ours, ref), name.c_str());
      // The file's own row order differs for q and k (the permutation really
      // moved rows) and is kept for v.
      const at::Tensor raw = gguf.loadTensor("blk." + std::to_string(f["layer"].toInt()) +
                                             ".attn_" + role + ".weight");
      QCOMPARE(at::equal(raw, ours), role == "v");
    }
  }

  // The inverse of the converter's permutation on random data, weights and biases.
  void unpermuteInvertsConverterPermutation() {
    at::manual_seed(1);
    for (int64_t heads : {1, 3, 9}) {
      const int64_t d = 8;
      const at::Tensor hf = at::randn({heads * d, 5});
      // converter: reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape
      const at::Tensor stored = hf.reshape({heads, 2, d / 2, 5}).transpose(1, 2).reshape({-1, 5});
      QVERIFY(at::equal(unpermuteGgufRotary(stored, heads), hf));
      const at::Tensor bias = at::randn({heads * d});
      const at::Tensor storedBias = bias.reshape({heads, 2, d / 2}).transpose(1, 2).reshape({-1});
      QVERIFY(at::equal(unpermuteGgufRotary(storedBias, heads), bias));
      // Row by row, per the formula: HF row h*d + j*d/2 + i <- stored row h*d + 2i + j.
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t j = 0; j < 2; ++j)
          for (int64_t i = 0; i < d / 2; ++i)
            QVERIFY(at::equal(hf[h * d + j * d / 2 + i], stored[h * d + 2 * i + j]));
    }
    QVERIFY_THROWS_EXCEPTION(Error, unpermuteGgufRotary(at::zeros({10, 3}), 3));
  }

  // Tiny models converted like llama.cpp does (gguf-py writer): every tensor
  // comes back in HF layout; unsupported architectures are refused.
  void tinyConvertedGgufs() {
    QString error;
    const QString out = path("tiny");
    const QByteArray printed = test::runReference("gguf_tiny_model.py", {out}, &error);
    QVERIFY2(!printed.isEmpty(), qPrintable(error));
    const QJsonObject all = QJsonDocument::fromJson(printed).object();
    for (const QString variant : {"llama", "qwen2"}) {
      const QJsonObject desc = all[variant].toObject();
      const QJsonObject cfg = desc["config"].toObject();
      RecordingObserver obs;
      LoadedModel m = loadModel((out + "/" + variant + ".gguf").toStdString(), &obs);
      QCOMPARE(m.config.numLayers, cfg["layers"].toInteger());
      QCOMPARE(m.config.hiddenSize, cfg["hidden"].toInteger());
      QCOMPARE(m.config.numHeads, cfg["heads"].toInteger());
      QCOMPARE(m.config.numKvHeads, cfg["kv_heads"].toInteger());
      QCOMPARE(m.config.intermediateSize, cfg["ffn"].toInteger());
      QCOMPARE(m.config.vocabSize, cfg["vocab"].toInteger());
      QCOMPARE(m.config.tieEmbeddings, cfg["tie"].toBool());
      QCOMPARE(m.config.ropeTheta, cfg["rope_theta"].toDouble());
      QCOMPARE(m.config.normEps, static_cast<double>(static_cast<float>(cfg["eps"].toDouble())));
      QCOMPARE(m.config.maxPositions, cfg["context"].toInteger());
      QVERIFY(m.config.attentionBias);
      QCOMPARE(m.config.attentionOutBias, variant == "llama");
      QCOMPARE(m.config.architectureName,
               std::string(variant == "llama" ? "LlamaForCausalLM" : "Qwen2ForCausalLM"));
      QCOMPARE(m.baselineNote, std::string()); // all float
      const QJsonArray tensors = desc["tensors"].toArray();
      QCOMPARE(static_cast<qsizetype>(m.tensors.size()), tensors.size());
      QCOMPARE(obs.startedTotal, static_cast<int64_t>(tensors.size()));
      for (const QJsonValue &tv : tensors) {
        const QJsonObject t = tv.toObject();
        const std::string name = t["name"].toString().toStdString();
        std::vector<int64_t> shape;
        for (const QJsonValue &d : t["shape"].toArray())
          shape.push_back(d.toInteger());
        const at::Tensor ref = readFloatTensor(out + "/" + t["file"].toString(), shape);
        QVERIFY2(m.tensors.count(name), name.c_str());
        QVERIFY2(at::equal(m.tensors.at(name), ref), qPrintable(variant + ": " + name.c_str()));
      }
      QVERIFY(m.tokenizer != nullptr);
      const TokenizerSpec &s = m.tokenizer->spec();
      if (variant == "llama") {
        QVERIFY(s.kind == TokenizerKind::SentencePieceBpe);
        QVERIFY(s.addBos && s.addSpacePrefix); // llama.cpp's defaults for SPM
        QCOMPARE(s.scores.size(), size_t(300));
        QVERIFY(s.tokenTypes[3] == TokenType::Byte);
        QCOMPARE(s.unkId, 0);
      } else {
        QVERIFY(s.kind == TokenizerKind::ByteLevelBpe);
        QCOMPARE(s.preTokenizer, std::string("qwen2"));
        QVERIFY(!s.addBos && !s.addSpacePrefix);
        QCOMPARE(s.merges, std::vector<std::string>{"\u0120 \u0120"});
        QCOMPARE(s.eosId, 257);
      }
    }
    expectLoadError(out + "/gpt2.gguf", {"gpt2.gguf", "architecture 'gpt2' is not supported"});
  }

  void hfConfigParsing() {
    const ModelConfig llama = modelConfigFromHfConfigJson(
        R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
            "rope_theta": 100000, "tie_word_embeddings": true, "hidden_act": "silu",
            "rope_scaling": null, "bos_token_id": 1, "eos_token_id": [2, 5],
            "torch_dtype": "bfloat16"})",
        "config.json");
    QCOMPARE(llama.headDim, int64_t(64));
    QCOMPARE(llama.numKvHeads, int64_t(3));
    QCOMPARE(llama.ropeTheta, 100000.0);
    QCOMPARE(llama.normEps, 1e-5);
    QVERIFY(llama.tieEmbeddings && !llama.attentionBias);
    QCOMPARE(llama.eosTokenId, int64_t(2));

    const ModelConfig qwen = modelConfigFromHfConfigJson(
        R"({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
            "tie_word_embeddings": true, "sliding_window": 32768, "use_sliding_window": false})",
        "config.json");
    QVERIFY(qwen.attentionBias && !qwen.attentionOutBias && !qwen.mlpBias);
    QCOMPARE(qwen.headDim, int64_t(64));

    const ModelConfig opt = modelConfigFromHfConfigJson(
        R"({"architectures": ["OPTForCausalLM"], "vocab_size": 50272, "hidden_size": 1024,
            "ffn_dim": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
            "max_position_embeddings": 2048, "do_layer_norm_before": false,
            "word_embed_proj_dim": 512, "activation_function": "relu", "enable_bias": true,
            "bos_token_id": 2, "eos_token_id": 2})",
        "config.json");
    QVERIFY(opt.arch == Architecture::Opt);
    QCOMPARE(opt.intermediateSize, int64_t(4096));
    QCOMPARE(opt.wordEmbedProjDim, int64_t(512));
    QVERIFY(!opt.doLayerNormBefore);
    QCOMPARE(opt.activation, std::string("relu"));
    QVERIFY(opt.attentionBias && opt.attentionOutBias && opt.mlpBias);
    QVERIFY(opt.tieEmbeddings); // HF's default for OPT
    QCOMPARE(opt.headDim, int64_t(64));

    const ModelConfig opt125 = modelConfigFromHfConfigJson(
        R"({"model_type": "opt", "vocab_size": 50272, "hidden_size": 768, "ffn_dim": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12, "word_embed_proj_dim": 768})",
        "config.json");
    QCOMPARE(opt125.wordEmbedProjDim, int64_t(0)); // same as hidden: no projections
    QVERIFY(opt125.doLayerNormBefore);

    // Writer -> reader gives back the same config, for each family.
    for (const ModelConfig &c : {llama, qwen, opt, opt125, tinyConfig("MistralForCausalLM")}) {
      const std::string text = hfConfigJson(c);
      expectSameConfig(modelConfigFromHfConfigJson(text, "written.json"), c);
    }
  }

  void malformedConfigJson() {
    const QByteArray base =
        R"("vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
           "num_hidden_layers": 1, "num_attention_heads": 2)";
    expectConfigError("{ \"architectures\": [", {"not valid JSON"});
    expectConfigError("[1]", {"not a JSON object"});
    expectConfigError(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10,
                          "intermediate_size": 16, "num_hidden_layers": 1,
                          "num_attention_heads": 2})",
                      {"missing key 'hidden_size'"});
    expectConfigError(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10,
                          "hidden_size": "8", "intermediate_size": 16, "num_hidden_layers": 1,
                          "num_attention_heads": 2})",
                      {"key 'hidden_size' must be an integer, not a string"});
    expectConfigError("{\"architectures\": [\"LlamaForCausalLM\"], " + base +
                          ", \"tie_word_embeddings\": 1}",
                      {"key 'tie_word_embeddings' must be true or false"});
    expectConfigError("{\"architectures\": [\"GPT2LMHeadModel\"], " + base + "}",
                      {"architecture 'GPT2LMHeadModel' is not supported"});
    expectConfigError("{" + base + "}", {"missing key 'architectures'"});
    expectConfigError("{\"architectures\": [\"LlamaForCausalLM\"], " + base +
                          ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}",
                      {"rope_scaling", "llama3"});
    expectConfigError("{\"architectures\": [\"LlamaForCausalLM\"], " + base +
                          ", \"hidden_act\": \"gelu\"}",
                      {"hidden_act", "gelu"});
    expectConfigError("{\"architectures\": [\"LlamaForCausalLM\"], " + base +
                          ", \"num_key_value_heads\": 3}",
                      {"num_key_value_heads"});
    expectConfigError(R"({"architectures": ["OPTForCausalLM"], "vocab_size": 10,
                          "hidden_size": 8, "ffn_dim": 16, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "activation_function": "gelu"})",
                      {"activation_function", "gelu"});
    expectConfigError(R"({"architectures": ["OPTForCausalLM"], "vocab_size": 10,
                          "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2})",
                      {"missing key 'ffn_dim'"});
    expectConfigError("{\"architectures\": [\"LlamaForCausalLM\"], " + base +
                          ", \"vocab_size\": -4}",
                      {"vocab_size"});
  }

  void missingFiles() {
    expectLoadError(path("nothing-here"), {"nothing-here: no such file or directory"});
    QVERIFY(QDir().mkpath(path("emptydir")));
    expectLoadError(path("emptydir"), {"emptydir", "no model.safetensors"});
    QVERIFY(writeText(path("notes.txt"), "hello"));
    expectLoadError(path("notes.txt"), {"notes.txt", "neither a GGUF file nor a safetensors"});
    QVERIFY(writeText(path("fake.gguf"), "not really a gguf file"));
    expectLoadError(path("fake.gguf"), {"fake.gguf", "bad magic"});

    // safetensors without config.json beside it
    QVERIFY(QDir().mkpath(path("noconfig")));
    writeSafetensors((path("noconfig") + "/model.safetensors").toStdString(),
                     {{"model.norm.weight", at::ones({4})}});
    expectLoadError(path("noconfig"), {"noconfig/config.json", "no such file"});
    expectLoadError(path("noconfig/model.safetensors"), {"noconfig/config.json"});

    // an index naming a shard that is not there
    const ModelConfig c = tinyConfig("LlamaForCausalLM");
    writeHfDir("missingshard", c, tinyTensors(c), true);
    QVERIFY(QFile::remove(path("missingshard/model-00002-of-00002.safetensors")));
    expectLoadError(path("missingshard"),
                    {"model-00002-of-00002.safetensors", "no such file", "index.json"});
  }

  void hfDirectoryRoundTrip_data() {
    QTest::addColumn<QString>("architecture");
    QTest::addColumn<bool>("sharded");
    QTest::newRow("llama single") << "LlamaForCausalLM" << false;
    QTest::newRow("llama sharded") << "LlamaForCausalLM" << true;
    QTest::newRow("qwen2 single") << "Qwen2ForCausalLM" << false;
    QTest::newRow("mistral sharded") << "MistralForCausalLM" << true;
  }

  void hfDirectoryRoundTrip() {
    QFETCH(QString, architecture);
    QFETCH(bool, sharded);
    const ModelConfig c = tinyConfig(architecture.toStdString());
    const auto tensors = tinyTensors(c);
    const QString sub = "hf-" + architecture + (sharded ? "-sharded" : "");
    writeHfDir(sub, c, tensors, sharded);
    RecordingObserver obs;
    const LoadedModel m = loadModel(path(sub).toStdString(), &obs);
    QCOMPARE(m.format, std::string("safetensors"));
    QCOMPARE(m.baselineNote, std::string());
    expectSameConfig(m.config, c);
    QCOMPARE(m.tensors.size(), tensors.size());
    for (const auto &[name, t] : tensors) {
      QVERIFY2(m.tensors.count(name), name.c_str());
      QCOMPARE(m.tensors.at(name).scalar_type(), at::kFloat);
      QVERIFY2(at::equal(m.tensors.at(name), t.to(at::kFloat)), name.c_str());
    }
    std::map<std::string, std::string> types;
    for (const TensorSource &s : m.sources)
      types[s.name] = s.sourceType;
    QCOMPARE(types.at("model.embed_tokens.weight"), std::string("BF16"));
    QCOMPARE(types.at("model.layers.1.self_attn.k_proj.weight"), std::string("F16"));
    QCOMPARE(types.at("lm_head.weight"), std::string("F32"));
    QCOMPARE(obs.startedTotal, static_cast<int64_t>(tensors.size()));
    QCOMPARE(obs.done.size(), tensors.size());
    QVERIFY(m.tokenizer == nullptr); // no tokenizer.json written
    if (!sharded) {                  // the .safetensors file itself, config.json beside it
      const LoadedModel direct = loadModel((path(sub) + "/model.safetensors").toStdString());
      QCOMPARE(direct.tensors.size(), tensors.size());
    }
  }

  void hfDirectoryWithWrongTensors() {
    ModelConfig c = tinyConfig("LlamaForCausalLM");
    auto tensors = tinyTensors(c);
    {
      auto wrong = tensors;
      wrong[3].second = at::zeros({5, 5}); // k_proj of layer 0
      writeHfDir("wrongshape", c, wrong, false);
      expectLoadError(path("wrongshape"),
                      {"model.safetensors", "tensor model.layers.0.self_attn.k_proj.weight",
                       "shape [5, 5], expected [16, 32]"});
    }
    {
      auto missing = tensors;
      missing.erase(missing.begin() + 5);
      writeHfDir("missingtensor", c, missing, false);
      expectLoadError(path("missingtensor"), {"missing tensor model.layers.0.self_attn.o_proj"});
    }
    {
      auto extra = tensors;
      extra.emplace_back("model.layers.0.self_attn.q_norm.weight", at::ones({8}));
      writeHfDir("extratensor", c, extra, false);
      expectLoadError(path("extratensor"),
                      {"model.layers.0.self_attn.q_norm.weight", "not expected"});
    }
    {
      // Buffers older checkpoints carry are skipped.
      auto buffers = tensors;
      buffers.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", at::ones({4}));
      writeHfDir("buffers", c, buffers, false);
      QCOMPARE(loadModel(path("buffers").toStdString()).tensors.size(), tensors.size());
    }
    {
      writeHfDir("badconfig", c, tensors, false);
      QVERIFY(
          writeText(path("badconfig/config.json"), R"({"architectures": ["LlamaForCausalLM"]})"));
      expectLoadError(path("badconfig"), {"badconfig/config.json", "missing key 'vocab_size'"});
    }
  }

  // OPT checkpoints, with and without projections, named with or without the
  // "model." prefix (checkpoints saved from the bare OPTModel lack it).
  void optDirectory_data() {
    QTest::addColumn<bool>("projected");
    QTest::addColumn<QString>("prefix");
    QTest::newRow("opt-125m style") << false << "model.";
    QTest::newRow("opt-350m style, bare names") << true << "";
  }

  void optDirectory() {
    QFETCH(bool, projected);
    QFETCH(QString, prefix);
    ModelConfig c;
    c.arch = Architecture::Opt;
    c.architectureName = "OPTForCausalLM";
    c.vocabSize = 40;
    c.hiddenSize = 16;
    c.intermediateSize = 32;
    c.numLayers = 2;
    c.numHeads = 2;
    c.numKvHeads = 2;
    c.headDim = 8;
    c.maxPositions = 64;
    c.normEps = 1e-5;
    c.activation = "relu";
    c.attentionBias = c.attentionOutBias = c.mlpBias = true;
    c.tieEmbeddings = true;
    c.doLayerNormBefore = !projected;
    c.wordEmbedProjDim = projected ? 8 : 0;
    c.bosTokenId = 2;
    c.eosTokenId = 2;
    const int64_t h = 16, e = projected ? 8 : 16;
    const std::string d = prefix.toStdString() + "decoder.";
    at::manual_seed(4);
    std::vector<std::pair<std::string, at::Tensor>> t;
    t.emplace_back(d + "embed_tokens.weight", at::randn({40, e}).to(at::kHalf));
    t.emplace_back(d + "embed_positions.weight", at::randn({66, h}));
    if (projected) {
      t.emplace_back(d + "project_in.weight", at::randn({h, e}));
      t.emplace_back(d + "project_out.weight", at::randn({e, h}));
    } else {
      t.emplace_back(d + "final_layer_norm.weight", at::randn({h}));
      t.emplace_back(d + "final_layer_norm.bias", at::randn({h}));
    }
    for (int i = 0; i < 2; ++i) {
      const std::string p = d + "layers." + std::to_string(i) + ".";
      for (const char *proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
        t.emplace_back(p + "self_attn." + proj + ".weight", at::randn({h, h}));
        t.emplace_back(p + "self_attn." + proj + ".bias", at::randn({h}));
      }
      for (const char *norm : {"self_attn_layer_norm", "final_layer_norm"}) {
        t.emplace_back(p + norm + ".weight", at::randn({h}));
        t.emplace_back(p + norm + ".bias", at::randn({h}));
      }
      t.emplace_back(p + "fc1.weight", at::randn({32, h}));
      t.emplace_back(p + "fc1.bias", at::randn({32}));
      t.emplace_back(p + "fc2.weight", at::randn({h, 32}));
      t.emplace_back(p + "fc2.bias", at::randn({h}));
    }
    const QString sub = projected ? "opt-proj" : "opt-plain";
    writeHfDir(sub, c, t, false);
    const LoadedModel m = loadModel(path(sub).toStdString());
    expectSameConfig(m.config, c);
    QCOMPARE(m.tensors.size(), t.size());
    for (const auto &[name, tensor] : t) {
      const std::string hf = name.rfind("model.", 0) == 0 ? name : "model." + name;
      QVERIFY2(m.tensors.count(hf), hf.c_str());
      QVERIFY2(at::equal(m.tensors.at(hf), tensor.to(at::kFloat)), hf.c_str());
    }
  }

  // tokenizer.json (+ tokenizer_config.json) beside the weights becomes the
  // model's tokenizer; its ids match HF `tokenizers` on the same files.
  void hfDirectoryWithTokenizer() {
    ModelConfig c = tinyConfig("LlamaForCausalLM");
    c.vocabSize = 300;
    writeHfDir("withtok", c, tinyTensors(c), false);
    const QStringList texts = {"hello world", "the world, hello!"};
    QString error;
    const QByteArray printed =
        test::runReference("hf_tokenizer_files.py", QStringList{path("withtok")} + texts, &error);
    QVERIFY2(!printed.isEmpty(), qPrintable(error));
    const QJsonObject desc = QJsonDocument::fromJson(printed).object();
    const LoadedModel m = loadModel(path("withtok").toStdString());
    QVERIFY(m.tokenizer != nullptr);
    QCOMPARE(static_cast<qint64>(m.tokenizer->vocabSize()), desc["vocab_size"].toInteger());
    const QJsonArray ids = desc["ids"].toArray();
    for (qsizetype i = 0; i < texts.size(); ++i) {
      std::vector<int32_t> want;
      for (const QJsonValue &id : ids[i].toArray())
        want.push_back(static_cast<int32_t>(id.toInt()));
      QCOMPARE(m.tokenizer->encode(texts[i].toStdString(), false), want);
    }
    // A tokenizer larger than the embedding is refused.
    c.vocabSize = 100;
    writeHfConfig((path("withtok") + "/config.json").toStdString(), c);
    writeSafetensors((path("withtok") + "/model.safetensors").toStdString(), tinyTensors(c));
    expectLoadError(path("withtok"),
                    {"tokenizer.json", "264 tokens but the model's embedding has only 100 rows"});
  }

  void cancellation() {
    const ModelConfig c = tinyConfig("LlamaForCausalLM");
    writeHfDir("cancel", c, tinyTensors(c), false);
    CancelToken token;
    token.cancel();
    QVERIFY_THROWS_EXCEPTION(Cancelled, loadModel(path("cancel").toStdString(), nullptr, &token));
    token.reset();
    RecordingObserver obs;
    obs.cancelAfter = &token;
    obs.cancelAt = 5;
    QVERIFY_THROWS_EXCEPTION(Cancelled, loadModel(path("cancel").toStdString(), &obs, &token));
    QCOMPARE(obs.done.size(), size_t(5));
    QVERIFY(!obs.finishedCalled);
    // The real model too, between tensors.
    token.reset();
    RecordingObserver real;
    real.cancelAfter = &token;
    real.cancelAt = 10;
    QVERIFY_THROWS_EXCEPTION(Cancelled, loadModel(test::defaultModelPath(), &real, &token));
    QCOMPARE(real.done.size(), size_t(10));
  }
};

QTEST_GUILESS_MAIN(TestModelLoader)
#include "test_model_loader.moc"
