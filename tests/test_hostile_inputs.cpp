// Crafted inputs an attacker (or a broken converter) could hand the workbench,
// each small and generated here. Every case once gave a silently wrong result,
// a message without a file name, or output that drove the terminal; each must
// now be refused with a precise error, or be read correctly.
#include <ATen/ATen.h>
#include <QDir>
#include <QFile>
#include <QFileInfo>
#include <QProcess>
#include <QStandardPaths>
#include <QTemporaryDir>
#include <QtTest>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "byte_writer.h"
#include "core/common/error.h"
#include "core/common/text_escape.h"
#include "core/data/default_assets.h"
#include "core/io/export.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "core/io/hf_config.h"
#include "core/io/model_loader.h"
#include "core/io/safetensors.h"
#include "core/quant/scheme.h"
#include "core/runs/run_store.h"
#include "core/session/quantize_job.h"
#include "core/tokenizer/tokenizer.h"
#include "core/tokenizer/tokenizer_json.h"
#include "test_support.h"

using namespace lrq;
using json = nlohmann::json;

namespace {

bool writeBytes(const QString &path, const std::string &bytes) {
  QFile f(path);
  if (!f.open(QIODevice::WriteOnly))
    return false;
  return f.write(bytes.data(), qint64(bytes.size())) == qint64(bytes.size());
}

std::string readBytes(const QString &path) {
  QFile f(path);
  if (!f.open(QIODevice::ReadOnly))
    return {};
  const QByteArray b = f.readAll();
  return std::string(b.constData(), size_t(b.size()));
}

// The message of the lrq::Error fn throws ("" when it throws none).
template <typename Fn> QString errorOf(Fn &&fn) {
  try {
    fn();
  } catch (const Error &e) {
    return QString::fromUtf8(e.what());
  }
  return {};
}

// --- GGUF files built field by field -----------------------------------------------

using lrq::test::put;
using lrq::test::putString;

struct Gguf {
  std::string kvs;
  uint64_t kvCount = 0;
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims; // GGUF order: innermost first
  };
  std::vector<Tensor> tensors;

  void key(const std::string &k, uint32_t type) {
    putString(kvs, k);
    put<uint32_t>(kvs, type);
    ++kvCount;
  }
  void u32(const std::string &k, uint32_t v) { key(k, 4), put<uint32_t>(kvs, v); }
  void i32(const std::string &k, int32_t v) { key(k, 5), put<int32_t>(kvs, v); }
  void f32(const std::string &k, float v) { key(k, 6), put<float>(kvs, v); }
  void boolean(const std::string &k, bool v) { key(k, 7), put<uint8_t>(kvs, v ? 1 : 0); }
  void str(const std::string &k, const std::string &v) { key(k, 8), putString(kvs, v); }
  void strings(const std::string &k, const std::vector<std::string> &v) {
    key(k, 9);
    put<uint32_t>(kvs, 8);
    put<uint64_t>(kvs, v.size());
    for (const std::string &s : v)
      putString(kvs, s);
  }
  void tensor(const std::string &name, std::vector<uint64_t> dims) {
    tensors.push_back({name, std::move(dims)});
  }
  std::string build() const {
    std::string out = "GGUF";
    put<uint32_t>(out, 3);
    put<uint64_t>(out, tensors.size());
    put<uint64_t>(out, kvCount);
    out += kvs;
    std::vector<uint64_t> bytes;
    uint64_t offset = 0;
    for (const Tensor &t : tensors) {
      uint64_t n = 1;
      for (uint64_t d : t.dims)
        n *= d;
      putString(out, t.name);
      put<uint32_t>(out, uint32_t(t.dims.size()));
      for (uint64_t d : t.dims)
        put<uint64_t>(out, d);
      put<uint32_t>(out, 0); // F32
      put<uint64_t>(out, offset);
      bytes.push_back(n * 4);
      offset += (n * 4 + 31) / 32 * 32;
    }
    out.append((32 - out.size() % 32) % 32, '\0');
    for (size_t i = 0; i < tensors.size(); ++i) {
      for (uint64_t k = 0; k < bytes[i] / 4; ++k)
        put<float>(out, 0.01f * float(k % 17) - 0.05f);
      out.append((32 - bytes[i] % 32) % 32, '\0');
    }
    return out;
  }
};

// A one-block LLaMA GGUF: hidden h, heads n (head size h / n), FFN 2h, vocab 16.
Gguf llamaGguf(uint32_t hidden, uint32_t heads) {
  Gguf g;
  g.str("general.architecture", "llama");
  g.u32("llama.block_count", 1);
  g.u32("llama.embedding_length", hidden);
  g.u32("llama.feed_forward_length", 2 * hidden);
  g.u32("llama.attention.head_count", heads);
  g.u32("llama.context_length", 64);
  g.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  const uint64_t h = hidden, ff = 2 * hidden;
  g.tensor("token_embd.weight", {h, 16});
  g.tensor("output_norm.weight", {h});
  g.tensor("blk.0.attn_norm.weight", {h});
  g.tensor("blk.0.ffn_norm.weight", {h});
  for (const char *n : {"attn_q", "attn_k", "attn_v", "attn_output"})
    g.tensor(std::string("blk.0.") + n + ".weight", {h, h});
  g.tensor("blk.0.ffn_gate.weight", {h, ff});
  g.tensor("blk.0.ffn_up.weight", {h, ff});
  g.tensor("blk.0.ffn_down.weight", {ff, h});
  return g;
}

// --- packed exports ---------------------------------------------------------------

ModelConfig tinyConfig() {
  ModelConfig c;
  c.architectureName = "LlamaForCausalLM";
  c.vocabSize = 16;
  c.hiddenSize = 8;
  c.intermediateSize = 16;
  c.numLayers = 1;
  c.numHeads = 2;
  c.numKvHeads = 2;
  c.headDim = 4;
  c.maxPositions = 32;
  return c;
}

// One asymmetric W4 per-channel linear, codes 0..15, zero points 8.
PackedModelContents tinyPacked() {
  PackedModelContents c;
  c.config = tinyConfig();
  PackedTensor t;
  t.name = "model.layers.0.mlp.up_proj";
  t.codes = at::arange(16 * 8, at::kLong).remainder(16).view({16, 8});
  t.scales = at::full({16, 1}, 0.01f);
  t.zeroPoints = at::full({16, 1}, 8.0f);
  t.bits = 4;
  t.qmin = 0;
  c.quantized.push_back(t);
  c.schemeJson = quant::presetScheme("W4A16").toJson();
  c.method = "rtn";
  return c;
}

// Rewrites the JSON header of a safetensors file (offsets are relative to the
// data, so the data section stays valid).
void editHeader(const QString &path, const std::function<void(json &)> &edit) {
  const std::string bytes = readBytes(path);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  json header = json::parse(bytes.substr(8, len));
  edit(header);
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out;
  put<uint64_t>(out, text.size());
  out += text + bytes.substr(8 + len);
  QVERIFY(writeBytes(path, out));
}

void editLayer(const QString &path, const std::function<void(json &)> &edit) {
  editHeader(path, [&](json &header) {
    json layers = json::parse(header["__metadata__"]["layers"].get<std::string>());
    edit(layers["model.layers.0.mlp.up_proj"]);
    header["__metadata__"]["layers"] = layers.dump();
  });
}

// Strings from files that would drive a terminal (kept out of the test class,
// whose body Qt's moc parses).
constexpr char kEsc = 0x1b, kBel = 0x07;
const char *const kTitleMethod = "rtn\x1b]0;title\x07";
const char *const kRedModelPath = "/models/\x1b[31mred";
const char *const kEvilConfig =
    R"({"architectures": ["\u001b[2J\u001b[31mEvil"], "vocab_size": 4})";
const char *const kWipingScheme = R"({"name": "\u001b[2Jwiped"})";

} // namespace

class TestHostileInputs : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  QString path(const QString &name) const { return dir_.filePath(name); }

private slots:
  // --- schemes --------------------------------------------------------------------

  void emptyLayerSelectionIsRefused() {
    for (const char *text : {R"({"layers": {"linears": []}})", R"({"layers": {"blocks": []}})"}) {
      const QString msg = errorOf([&] { quant::QuantScheme::fromJson(text); });
      QVERIFY2(msg.contains("empty list selects no"), qPrintable(text + (": " + msg)));
    }
    // "all" and a real list still work.
    QCOMPARE(quant::QuantScheme::fromJson(R"({"layers": {"blocks": [1]}})").layers.blocks.size(),
             size_t(1));
  }

  void clipNormOutOfRangeIsRefused() {
    for (const char *text :
         {R"({"weight": {"init": "clip-search", "clip_norm": 1e-308}})",
          R"({"activation": {"mode": "per-tensor-static", "clip_norm": 1e-308}})",
          R"({"weight": {"clip_norm": 1e300}})"}) {
      const QString msg = errorOf([&] { quant::QuantScheme::fromJson(text); });
      QVERIFY2(msg.contains("clip_norm") &&
                   msg.contains("1e-308") == QString(text).contains("1e-308"),
               qPrintable(text + (": " + msg)));
    }
    quant::GridSpec spec;
    spec.init = quant::StepInit::ClippingSearch;
    spec.clipNorm = 1e-308;
    QVERIFY(!errorOf([&] { spec.validate(); }).isEmpty());
    QVERIFY(errorOf([] {
              quant::QuantScheme::fromJson(R"({"weight": {"clip_norm": 2.4}})");
            }).isEmpty());
  }

  void groupSizeWithoutPerGroupIsRefused() {
    const QString msg = errorOf([] {
      quant::QuantScheme::fromJson(
          R"({"weight": {"granularity": "per-channel", "group_size": 128}})");
    });
    QVERIFY2(msg.contains("weight.group_size") && msg.contains("per-group"), qPrintable(msg));
    quant::QuantScheme scheme;
    scheme.weight.granularity = quant::Granularity::PerTensor;
    scheme.weight.groupSize = 64;
    QVERIFY(!errorOf([&] { scheme.validate(); }).isEmpty());
  }

  // --- packed exports -------------------------------------------------------------

  void packedReaderRefusesWhatTheWriterRefuses() {
    const QString good = path("good.packed.safetensors");
    writePackedModel(good.toStdString(), tinyPacked());
    const PackedModel pm = loadPackedModel(good.toStdString());
    QCOMPARE(pm.quantizedNames.size(), size_t(1));

    struct Case {
      const char *name;
      std::function<void(const QString &)> spoil;
      const char *mentions;
    };
    const std::vector<Case> cases = {
        {"signed qmin on an unsigned grid",
         [](const QString &p) { editLayer(p, [](json &l) { l["qmin"] = -8; }); }, "qmin -8"},
        {"qmin of no grid", [](const QString &p) { editLayer(p, [](json &l) { l["qmin"] = 3; }); },
         "qmin 3"},
        {"bits 2^32 + 4",
         [](const QString &p) {
           editLayer(p, [](json &l) { l["bits"] = (uint64_t(1) << 32) + 4; });
         },
         "out of range"},
        {"bits 4.7", [](const QString &p) { editLayer(p, [](json &l) { l["bits"] = 4.7; }); },
         "bits is not an integer"},
        {"format_version 1abc",
         [](const QString &p) {
           editHeader(p, [](json &h) { h["__metadata__"]["format_version"] = "1abc"; });
         },
         "format_version '1abc'"},
        {"in * bits overflows",
         [](const QString &p) {
           editLayer(p, [](json &l) { l["shape"] = {16, int64_t(1) << 62}; });
         },
         "out of range"},
    };
    for (const Case &c : cases) {
      const QString p = path(QString("spoiled-%1.safetensors").arg(c.name).replace(' ', '_'));
      QFile::remove(p);
      QVERIFY(QFile::copy(good, p));
      c.spoil(p);
      const QString msg = errorOf([&] { loadPackedModel(p.toStdString()); });
      QVERIFY2(msg.startsWith(p) && msg.contains(c.mentions),
               qPrintable(QString(c.name) + ": " + msg));
    }

    // Zero points off the integer grid (the writer of the file does not check them;
    // the quantizer's packing does).
    PackedModelContents half = tinyPacked();
    half.quantized[0].zeroPoints = at::full({16, 1}, 100.5f);
    const QString p = path("half-zero.packed.safetensors");
    writePackedModel(p.toStdString(), half);
    const QString msg = errorOf([&] { loadPackedModel(p.toStdString()); });
    QVERIFY2(msg.startsWith(p) && msg.contains("zero point"), qPrintable(msg));
  }

  // Found by reading the packed reader for fuzz_packed: values that overflow
  // once dequantized and factors that are not finite were accepted (inf or
  // NaN weights); steps of a shape that matches no granularity are now refused
  // from the header (before, mostly by the dequantization, and one row of
  // steps for several groups was read).
  void packedReaderRefusesOverflowsAndMisfits() {
    struct Case {
      const char *name;
      std::function<void(PackedModelContents &)> spoil;
      std::function<void(const QString &)> edit;
      const char *mentions;
    };
    const std::vector<Case> cases = {
        // 1e38 * (0 - 8) is -8e38: infinite in float32.
        {"step past float32", [](PackedModelContents &c) { c.quantized[0].scales.fill_(1e38f); },
         nullptr, "overflow float32"},
        // 10000 * (0 - 8) = -80000 rounds to infinity in float16 (largest 65504).
        {"step past float16",
         [](PackedModelContents &c) {
           c.quantized[0].scales.fill_(10000.0f);
           c.quantized[0].valueDtype = at::kHalf;
         },
         nullptr, "overflow F16"},
        {"NaN in a low-rank factor",
         [](PackedModelContents &c) {
           c.quantized[0].lowRankA = at::zeros({8, 2});
           c.quantized[0].lowRankB = at::zeros({2, 16});
           c.quantized[0].lowRankA[3][1] = NAN;
         },
         nullptr, "not finite"},
        {"two columns of steps without a group size",
         [](PackedModelContents &c) {
           c.quantized[0].scales = at::full({16, 2}, 0.01f);
           c.quantized[0].zeroPoints = at::full({16, 2}, 8.0f);
           c.quantized[0].groupSize = 4;
         },
         [](const QString &p) { editLayer(p, [](json &l) { l["group_size"] = 0; }); },
         "does not fit 1 group(s)"},
        {"one row of steps for groups",
         [](PackedModelContents &c) {
           c.quantized[0].scales = at::full({1, 2}, 0.01f);
           c.quantized[0].zeroPoints = at::full({1, 2}, 8.0f);
           c.quantized[0].groupSize = 4;
         },
         nullptr, "does not fit 2 group(s)"},
        {"zero points shaped unlike the steps",
         [](PackedModelContents &c) {
           c.quantized[0].zeroPoints = at::full({16, 1}, 8.0f);
         },
         [](const QString &p) {
           editHeader(p, [](json &h) {
             h["model.layers.0.mlp.up_proj.zero_points"]["shape"] = {1, 16};
           });
         },
         "zero_points does not have the shape of its scales"},
    };
    for (const Case &c : cases) {
      PackedModelContents contents = tinyPacked();
      c.spoil(contents);
      const QString p = path(QString("misfit-%1.safetensors").arg(c.name).replace(' ', '_'));
      QFile::remove(p);
      writePackedModel(p.toStdString(), contents);
      if (c.edit)
        c.edit(p);
      const QString msg = errorOf([&] { loadPackedModel(p.toStdString()); });
      QVERIFY2(msg.startsWith(p) && msg.contains(c.mentions),
               qPrintable(QString(c.name) + ": " + msg));
    }
    // The largest step that stays finite in float16 is still read.
    PackedModelContents edge = tinyPacked();
    edge.quantized[0].scales.fill_(8000.0f); // 8000 * 8 = 64000 < 65504
    edge.quantized[0].valueDtype = at::kHalf;
    const QString p = path("edge-f16.safetensors");
    writePackedModel(p.toStdString(), edge);
    const PackedModel pm = loadPackedModel(p.toStdString());
    QVERIFY(
        at::isfinite(pm.model.tensors.at("model.layers.0.mlp.up_proj.weight")).all().item<bool>());
    QCOMPARE(pm.model.tensors.at("model.layers.0.mlp.up_proj.weight").abs().max().item<float>(),
             64000.0f);
  }

  // --- tokenizers -----------------------------------------------------------------

  void templateBosIdIsCheckedBeforeNarrowing() {
    // 2^32 + 1 used to become token 1 ("a").
    const json tok = {
        {"model",
         {{"type", "BPE"}, {"vocab", {{"<s>", 0}, {"a", 1}, {"b", 2}}}, {"merges", json::array()}}},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
        {"post_processor",
         {{"type", "TemplateProcessing"},
          {"single",
           {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
            {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
          {"special_tokens",
           {{"<s>", {{"id", "<s>"}, {"ids", {(uint64_t(1) << 32) + 1}}, {"tokens", {"<s>"}}}}}}}}};
    const QString p = path("bos-template/tokenizer.json");
    QVERIFY(QDir().mkpath(path("bos-template")));
    QVERIFY(writeBytes(p, tok.dump()));
    const QString msg = errorOf([&] { tokenizerSpecFromJsonFiles(p.toStdString(), ""); });
    QVERIFY2(msg.startsWith(p) && msg.contains("template token '<s>' is not a token"),
             qPrintable(msg));
  }

  void byteLevelVocabularyWithoutByteTokensIsRefused() {
    TokenizerSpec spec;
    spec.kind = TokenizerKind::ByteLevelBpe;
    spec.source = "crafted.gguf";
    spec.tokens = {"hello", "world", "<|endoftext|>"};
    spec.tokenTypes = {TokenType::Normal, TokenType::Normal, TokenType::Control};
    const QString msg = errorOf([&] { Tokenizer::create(spec); });
    QVERIFY2(msg.startsWith("crafted.gguf: ") && msg.contains("no token for 96"), qPrintable(msg));
  }

  // --- GGUF metadata --------------------------------------------------------------

  void ggufRopeFreqBaseOutOfRangeIsRefused() {
    for (float base : {std::numeric_limits<float>::infinity(), 1e-30f,
                       std::numeric_limits<float>::quiet_NaN()}) {
      Gguf g = llamaGguf(8, 2);
      g.f32("llama.rope.freq_base", base);
      const QString p = path("rope.gguf");
      QVERIFY(writeBytes(p, g.build()));
      const QString msg = errorOf([&] { modelConfigFromGguf(GgufReader(p.toStdString())); });
      QVERIFY2(msg.startsWith(p) && msg.contains("rope.freq_base"), qPrintable(msg));
    }
    Gguf ok = llamaGguf(8, 2);
    ok.f32("llama.rope.freq_base", 500000.0f);
    QVERIFY(writeBytes(path("rope-ok.gguf"), ok.build()));
    QCOMPARE(modelConfigFromGguf(GgufReader(path("rope-ok.gguf").toStdString())).ropeTheta,
             500000.0);
  }

  void ggufAddBosWithoutBosIsRefused() {
    Gguf g = llamaGguf(8, 2);
    g.str("tokenizer.ggml.model", "gpt2");
    g.strings("tokenizer.ggml.tokens", {"a", "b", "c"});
    g.boolean("tokenizer.ggml.add_bos_token", true);
    g.i32("tokenizer.ggml.bos_token_id", -1);
    const QString p = path("bos.gguf");
    QVERIFY(writeBytes(p, g.build()));
    const QString msg = errorOf([&] { tokenizerSpecFromGguf(GgufReader(p.toStdString())); });
    QVERIFY2(msg.startsWith(p) && msg.contains("BOS"), qPrintable(msg));
  }

  void rotaryPermutationErrorNamesTheFile() {
    // Head size 3: q rows (6) are not whole pairs for 2 heads.
    const QString p = path("rotary.gguf");
    QVERIFY(writeBytes(p, llamaGguf(6, 2).build()));
    const QString msg = errorOf([&] { loadModel(p.toStdString()); });
    QVERIFY2(msg.startsWith(p) && msg.contains("blk.0.attn_q.weight") &&
                 msg.contains("rotary permutation"),
             qPrintable(msg));
  }

  // --- config.json ----------------------------------------------------------------

  void configJsonProblemsNameTheFile() {
    const std::string base = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 16,
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2)";
    struct Case {
      std::string extra;
      const char *mentions;
    };
    const std::vector<Case> cases = {
        {R"(, "rms_norm_eps": 1e400})", "1e400"},
        {R"(, "rope_theta": 1e-30})", "rope_theta"},
        {R"(, "rope_scaling": {"rope_type": 5}})", "rope_scaling"},
        {R"(, "rope_scaling": {"factor": 8.0}})", "rope_scaling"},
        {R"(, "rope_scaling": {"rope_type": "linear", "type": "default", "factor": 8.0}})",
         "linear"},
        // Found by fuzz_hf_config: a negative id was kept, then written as no id at all.
        {R"(, "bos_token_id": -2})", "bos_token_id"},
        {R"(, "eos_token_id": [-5, 2]})", "eos_token_id"},
        {R"(, "eos_token_id": [18446744073709551615]})", "eos_token_id"},
    };
    for (const Case &c : cases) {
      const std::string text = base + c.extra;
      const QString msg =
          errorOf([&] { modelConfigFromHfConfigJson(text, "crafted/config.json"); });
      QVERIFY2(msg.startsWith("crafted/config.json: ") && msg.contains(c.mentions),
               qPrintable(QString::fromStdString(c.extra) + ": " + msg));
    }
    QVERIFY(errorOf([&] {
              modelConfigFromHfConfigJson(base + R"(, "rope_scaling": {"rope_type": "default"}})",
                                          "ok/config.json");
            }).isEmpty());
    // -1 and null still mean "no such token".
    const ModelConfig none = modelConfigFromHfConfigJson(
        base + R"(, "bos_token_id": -1, "eos_token_id": null})", "ok/config.json");
    QCOMPARE(none.bosTokenId, int64_t(-1));
    QCOMPARE(none.eosTokenId, int64_t(-1));
  }

  // --- text -----------------------------------------------------------------------

  void textValidationRefusesIllFormedUtf8() {
    const std::vector<std::string> bad = {
        "ab\xC0\xAF",         // overlong '/'
        "ab\xE0\x80\xAF",     // overlong '/' in three bytes
        "ab\xF0\x80\x80\xAF", // and in four
        "ab\xED\xA0\x80",     // surrogate U+D800
        "ab\xF4\x90\x80\x80", // U+110000
        "ab\xF7\xBF\xBF\xBF", // past U+10FFFF
    };
    for (const std::string &text : bad) {
      const QString p = path("bad.txt");
      QVERIFY(writeBytes(p, text));
      const QString msg = errorOf([&] { readTextFile(p.toStdString()); });
      QVERIFY2(
          msg.contains("not valid UTF-8 at byte 2"),
          qPrintable(QString::fromLatin1(QByteArray::fromStdString(text).toHex()) + ": " + msg));
    }
    const QString p = path("good.txt");
    QVERIFY(
        writeBytes(p, "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9D\x84\x9E \xEF\xBF\xBD \xF4\x8F\xBF\xBF"));
    QVERIFY(errorOf([&] { readTextFile(p.toStdString()); }).isEmpty());
  }

  // --- safetensors ----------------------------------------------------------------

  void zeroLengthTensorIsRead() {
    // Written in this order, "zz" (empty) shares its offset with "b" that follows.
    const QString p = path("empty-tensor.safetensors");
    writeSafetensors(p.toStdString(),
                     {{"a", at::ones({4})}, {"zz", at::ones({0})}, {"b", at::ones({2})}});
    SafetensorsReader r(p.toStdString());
    QCOMPARE(r.tensors().size(), size_t(3));
    QCOMPARE(r.load("zz").numel(), int64_t(0));
    QVERIFY(at::equal(r.load("b"), at::ones({2})));
  }

  // --- terminal output ------------------------------------------------------------

  void printableTextEscapesControls() {
    QCOMPARE(QString::fromStdString(printableText("a\x1b[31mb\tc\nd\x7f\xC2\x9B"
                                                  "e \xC3\xA9")),
             QString::fromUtf8("a\\x1b[31mb\tc\nd\\x7f\\u009be \xC3\xA9"));
  }

  void cliEscapesControlCharactersFromFiles() {
    // An architecture name holding an escape sequence, in an error message.
    const QString model = path("ansi-model");
    QVERIFY(QDir().mkpath(model));
    QVERIFY(writeBytes(model + "/config.json", kEvilConfig));
    writeSafetensors((model + "/model.safetensors").toStdString(), {{"x", at::ones({1})}});
    const test::Result info = test::runLrq({"info", model});
    QCOMPARE(info.exitCode, 1);
    QVERIFY2(!info.err.contains(QChar(kEsc)) && info.err.contains("\\x1b[31mEvil"),
             qPrintable(info.err));

    // A scheme name holding one, in a listing.
    const QString storePath = path("ansi-store/runs.sqlite");
    {
      RunStore store = RunStore::open(storePath.toStdString());
      RunInfo run;
      run.method = kTitleMethod;
      run.schemeJson = kWipingScheme;
      run.model.path = kRedModelPath;
      store.createRun(run);
    }
    const test::Result list = test::runLrq({"runs", "list", "--store", storePath});
    QCOMPARE(list.exitCode, 0);
    QVERIFY2(!list.out.contains(kEsc) && !list.out.contains(kBel) &&
                 list.out.contains("\\x1b[2Jwiped"),
             list.out.constData());
    const QString id = QString::fromUtf8(list.out.split('\n').value(1).split(' ').value(0));
    const test::Result show = test::runLrq({"runs", "show", id, "--store", storePath});
    QCOMPARE(show.exitCode, 0);
    QVERIFY2(!show.out.contains(kEsc) && show.out.contains("\\x1b[31mred"), show.out.constData());
  }

  // --- run store ------------------------------------------------------------------

  void runIdsFromAStoreAreNotPaths() {
    const QString cache = path("cache");
    QVERIFY(QDir().mkpath(cache));
    qputenv("LRQ_CACHE_DIR", cache.toUtf8());
    const QString storePath = path("evil-store/runs.sqlite");
    {
      RunStore store = RunStore::open(storePath.toStdString());
      RunInfo run;
      run.id = "../../escaped";
      run.method = "rtn";
      run.schemeJson = quant::presetScheme("W4A16").toJson();
      store.createRun(run);
    }
    const QString resume =
        errorOf([&] { resumeRequest("../../escaped", storePath.toStdString(), ""); });
    QVERIFY2(resume.contains("cannot name a folder"), qPrintable(resume));
    const QString rerun = errorOf([&] { requestForRun("../../escaped", storePath.toStdString()); });
    QVERIFY2(rerun.contains("cannot name a folder"), qPrintable(rerun));
    QVERIFY(!QFileInfo::exists(path("escaped.json")));
    QVERIFY(!QFileInfo::exists(cache + "/escaped.json"));
    QVERIFY(errorOf([] { defaultWorkDir("20261130-043707-ab12"); }).isEmpty());
    qunsetenv("LRQ_CACHE_DIR");
  }

  void listingAMissingStoreCreatesNothing() {
    const QString missing = path("nonexistent/a/b/x.sqlite");
    const test::Result r = test::runLrq({"runs", "list", "--store", missing});
    QCOMPARE(r.exitCode, 0);
    QVERIFY2(r.out.contains("no runs"), r.out.constData());
    QVERIFY(!QFileInfo::exists(path("nonexistent")));
    const test::Result show = test::runLrq({"runs", "show", "x", "--store", missing});
    QCOMPARE(show.exitCode, 1);
    QVERIFY2(show.err.contains("no such run store"), qPrintable(show.err));
    QVERIFY(!QFileInfo::exists(path("nonexistent")));
  }

  void storeInAReadOnlyDirectoryCanBeListed() {
    const QString storeDir = path("locked-store");
    const QString storePath = storeDir + "/runs.sqlite";
    {
      RunStore store = RunStore::open(storePath.toStdString());
      RunInfo run;
      run.method = "rtn";
      run.schemeJson = R"({"name": "W4A16"})";
      store.createRun(run);
    }
    QVERIFY(!QFileInfo::exists(storePath + "-shm")); // SQLite must make it anew to read
    // The directory and the store are read-only to the reader. Root ignores file
    // permissions, so as root the reader runs as nobody (setpriv, util-linux).
    const auto rx = QFile::ReadOwner | QFile::ExeOwner | QFile::ReadGroup | QFile::ExeGroup |
                    QFile::ReadOther | QFile::ExeOther;
    const auto r = QFile::ReadOwner | QFile::ReadGroup | QFile::ReadOther;
    QVERIFY(QFile::setPermissions(dir_.path(), rx | QFile::WriteOwner));
    QVERIFY(QFile::setPermissions(storePath, r));
    QVERIFY(QFile::setPermissions(storeDir, rx));
    QStringList args{"runs", "list", "--store", storePath};
    QString program = QDir(QStringLiteral(LRQ_BINARY_DIR)).filePath("app/lrq");
    if (::geteuid() == 0) {
      const QString setpriv = QStandardPaths::findExecutable("setpriv");
      if (setpriv.isEmpty()) {
        QFile::setPermissions(storeDir, rx | QFile::WriteOwner);
        QSKIP("running as root without setpriv: cannot make a directory read-only");
      }
      args.prepend(program);
      args = QStringList{"--reuid=65534", "--regid=65534", "--clear-groups"} + args;
      program = setpriv;
    }
    QProcess proc;
    proc.start(program, args);
    QVERIFY(proc.waitForFinished(120000));
    const QByteArray out = proc.readAllStandardOutput();
    const QString err = QString::fromUtf8(proc.readAllStandardError());
    QFile::setPermissions(storeDir, rx | QFile::WriteOwner);
    QVERIFY2(proc.exitCode() == 0 && out.contains("W4A16"), qPrintable(err + out));
    QVERIFY(!QFileInfo::exists(storePath + "-shm") && !QFileInfo::exists(storePath + "-wal"));
  }
};

QTEST_GUILESS_MAIN(TestHostileInputs)
#include "test_hostile_inputs.moc"
