// GGUF export: each llama.cpp block type encodes hand-built codes, steps and
// zero points so that both the project's reader and gguf-py (the reference
// implementation llama.cpp ships) decode s (q - z) exactly (Q6_K also through
// llama.cpp's own dequantize_row_q6_K loop, and in a model mixing Q6_K with
// its Q8_0 fallback); the writer's
// metadata of every value type, alignment, tensor names, q/k row order and
// tokenizer keys read back; unrepresentable grids, LQER factors, existing
// files and failures half way are refused and leave no file.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <QDir>
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QProcess>
#include <QTemporaryDir>
#include <QtTest>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/io/export.h"
#include "core/io/ggml_quants.h"
#include "core/io/gguf.h"
#include "core/io/gguf_export.h"
#include "core/io/gguf_model.h"
#include "core/io/gguf_writer.h"
#include "core/io/model_loader.h"
#include "test_support.h"
#include "tiny_llama.h"

using namespace lrq;

namespace {

// Vocabulary 264: the byte alphabet plus a few merged and special tokens.
ModelConfig tinyConfig() {
  return lrq::test::tinyLlamaConfig({264, 64, 96, 16, 256});
}

struct BlockCase {
  GgmlType type;
  int bits;
  bool symmetric;
};

const BlockCase kCases[] = {
    {GgmlType::Q8_0, 8, true},  {GgmlType::Q4_0, 4, true},  {GgmlType::Q5_0, 5, true},
    {GgmlType::Q4_1, 4, false}, {GgmlType::Q5_1, 5, false},
};

// A quantized [out, in] tensor on a group-32 grid whose steps are exact halves
// (k * 2^-e with k < 64, so -s z is a half too for every zero point); on a
// symmetric grid about half the units have zero point -1 (full range).
PackedTensor handBuilt(const std::string &name, int64_t out, int64_t in, int bits, bool symmetric,
                       uint64_t seed) {
  std::mt19937_64 rng(seed);
  PackedTensor t;
  t.name = name;
  t.bits = bits;
  t.qmin = symmetric ? -(int64_t(1) << (bits - 1)) : 0;
  t.groupSize = 32;
  const int64_t levels = int64_t(1) << bits;
  t.codes = at::empty({out, in}, at::kInt);
  for (int64_t i = 0; i < out * in; ++i)
    t.codes.data_ptr<int32_t>()[i] = int32_t(t.qmin + int64_t(rng() % uint64_t(levels)));
  const int64_t groups = in / 32;
  t.scales = at::empty({out, groups}, at::kFloat);
  t.zeroPoints = at::zeros({out, groups}, at::kFloat);
  for (int64_t i = 0; i < out * groups; ++i) {
    const int k = 1 + int(rng() % 63);
    const int e = 6 + int(rng() % 8);
    t.scales.data_ptr<float>()[i] = std::ldexp(float(k), -e);
    if (!symmetric)
      t.zeroPoints.data_ptr<float>()[i] = float(rng() % uint64_t(levels));
    else if (rng() % 2) // a full-range unit on the positive side: stored with d = -s
      t.zeroPoints.data_ptr<float>()[i] = -1.0f;
  }
  return t;
}

// A quantized [out, in] tensor on llama.cpp's Q6_K grid: 6-bit symmetric
// codes in groups of 16 whose steps are d sc, d a half per 256 columns (normal
// and subnormal ones) and sc an integer in 1..127 per group; about half the
// groups have zero point -1 (full range).
PackedTensor handBuiltQ6K(const std::string &name, int64_t out, int64_t in, uint64_t seed) {
  std::mt19937_64 rng(seed);
  PackedTensor t;
  t.name = name;
  t.bits = 6;
  t.qmin = -32;
  t.groupSize = 16;
  t.codes = at::empty({out, in}, at::kInt);
  for (int64_t i = 0; i < out * in; ++i)
    t.codes.data_ptr<int32_t>()[i] = int32_t(int64_t(rng() % 64) - 32);
  const int64_t groups = in / 16;
  t.scales = at::empty({out, groups}, at::kFloat);
  t.zeroPoints = at::zeros({out, groups}, at::kFloat);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t b = 0; b < groups / 16; ++b) {
      // k 2^(m - 24) with k < 2048: always a half; subnormal for small k 2^m.
      const float d = std::ldexp(float(1 + rng() % 2047), int(rng() % 15) - 24);
      for (int64_t j = 0; j < 16; ++j) {
        t.scales.data_ptr<float>()[r * groups + b * 16 + j] = d * float(1 + rng() % 127);
        if (rng() % 2) // a full-range group on the positive side: stored with sc < 0
          t.zeroPoints.data_ptr<float>()[r * groups + b * 16 + j] = -1.0f;
      }
    }
  return t;
}

// dequantize_row_q6_K of llama.cpp's ggml-quants.c, line by line: the
// reference layout the encoder must match.
std::vector<float> llamaDequantizeQ6K(const std::vector<uint8_t> &blocks, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n / 256; ++i) {
    const uint8_t *x = blocks.data() + i * 210;
    const uint8_t *ql = x, *qh = x + 128;
    const auto *sc = reinterpret_cast<const int8_t *>(x + 192);
    uint16_t dBits = 0;
    std::memcpy(&dBits, x + 208, 2);
    const float d = halfBitsToFloat(dBits);
    float *y = out.data() + i * 256;
    for (int half = 0; half < 256; half += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int8_t q1 = int8_t((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int8_t q2 = int8_t((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int8_t q3 = int8_t((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int8_t q4 = int8_t((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
  return out;
}

std::vector<float> readF32(const QString &path) {
  QFile f(path);
  if (!f.open(QIODevice::ReadOnly))
    return {};
  const QByteArray b = f.readAll();
  std::vector<float> v(size_t(b.size()) / 4);
  std::memcpy(v.data(), b.constData(), v.size() * 4);
  return v;
}

// Exact element-wise equality of a float tensor and a vector.
bool sameValues(const at::Tensor &t, const std::vector<float> &v, QString *why) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  if (size_t(c.numel()) != v.size()) {
    *why = QString("%1 values vs %2").arg(c.numel()).arg(v.size());
    return false;
  }
  for (size_t i = 0; i < v.size(); ++i)
    if (!(c.data_ptr<float>()[i] == v[i])) {
      *why = QString("element %1: %2 vs %3").arg(i).arg(c.data_ptr<float>()[i]).arg(v[i]);
      return false;
    }
  return true;
}

// A byte-level spec (ids, merges and special ids to compare): the 256 bytes,
// two control tokens, three merges and filler up to `vocab`.
TokenizerSpec tinySpec(int64_t vocab) {
  TokenizerSpec s;
  s.kind = TokenizerKind::ByteLevelBpe;
  s.preTokenizer = "smollm";
  s.tokens = lrq::test::gpt2ByteAlphabet();
  s.tokens.push_back("<|endoftext|>");
  s.tokens.push_back("<pad>");
  s.tokens.push_back("he");
  s.tokens.push_back("ll");
  s.tokens.push_back("hell");
  while (int64_t(s.tokens.size()) < vocab)
    s.tokens.push_back("zz" + std::to_string(s.tokens.size()));
  s.tokenTypes.assign(s.tokens.size(), TokenType::Normal);
  s.tokenTypes[256] = TokenType::Control;
  s.tokenTypes[257] = TokenType::Control;
  s.merges = {"h e", "l l", "he ll"};
  s.bosId = 256;
  s.eosId = 256;
  s.padId = 257;
  s.addBos = false;
  return s;
}

// A packed tiny model: every linear quantized, each role on another block type.
PackedModelContents tinyPacked(const ModelConfig &c) {
  PackedModelContents p;
  p.config = c;
  p.method = "rtn";
  p.schemeJson = R"({"weight":{"bits":4}})";
  at::Generator gen = at::detail::createCPUGenerator(5);
  const int64_t h = c.hiddenSize, kv = c.numKvHeads * c.headDim, f = c.intermediateSize;
  p.tensors.emplace_back("model.embed_tokens.weight", at::randn({c.vocabSize, h}, gen));
  const std::vector<std::tuple<std::string, int64_t, int64_t, int, bool>> roles = {
      {"self_attn.q_proj", h, h, 4, true},  {"self_attn.k_proj", kv, h, 5, true},
      {"self_attn.v_proj", kv, h, 8, true}, {"self_attn.o_proj", h, h, 4, false},
      {"mlp.gate_proj", f, h, 5, false},    {"mlp.up_proj", f, h, 4, true},
      {"mlp.down_proj", h, f, 4, true}};
  uint64_t seed = 100;
  for (int64_t i = 0; i < c.numLayers; ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    p.tensors.emplace_back(prefix + "input_layernorm.weight", 1 + 0.1 * at::randn({h}, gen));
    p.tensors.emplace_back(prefix + "post_attention_layernorm.weight",
                           1 + 0.1 * at::randn({h}, gen));
    for (const auto &[role, out, in, bits, sym] : roles)
      p.quantized.push_back(handBuilt(prefix + role, out, in, bits, sym, ++seed));
  }
  p.tensors.emplace_back("model.norm.weight", 1 + 0.1 * at::randn({h}, gen));
  p.tensors.emplace_back("lm_head.weight", at::randn({c.vocabSize, h}, gen));
  return p;
}

at::Tensor dequantized(const PackedTensor &t) {
  return dequantizeCodes(t.codes, t.scales, t.zeroPoints, t.groupSize);
}

// gguf-py (in the reference venv) reads `file` and writes each tensor to
// dir/NAME.f32; every quantized tensor of `packed` must hold s (q - z) in
// GGUF's own row order (q and k rows permuted). Returns "" or what differs;
// *info gets gguf-py's table of tensors.
QString ggufPyMismatch(const QString &file, const QString &dir, const PackedModelContents &packed,
                       const ModelConfig &config, QJsonObject *info) {
  QString error;
  const QByteArray out = test::runReference("gguf_read_tensors.py", {file, dir}, &error);
  if (out.isEmpty())
    return "gguf_read_tensors.py: " + error;
  *info = QJsonDocument::fromJson(out).object();
  for (const PackedTensor &t : packed.quantized) {
    const std::string name = ggufTensorNameFromHf(t.name + ".weight");
    at::Tensor expect = dequantized(t);
    if (name.find("attn_q") != std::string::npos)
      expect = permuteGgufRotary(expect, config.numHeads);
    if (name.find("attn_k") != std::string::npos)
      expect = permuteGgufRotary(expect, config.numKvHeads);
    QString why;
    if (!sameValues(expect, readF32(dir + "/" + QString::fromStdString(name) + ".f32"), &why))
      return QString::fromStdString(name) + ": " + why;
  }
  return "";
}

// Q8_0 round to nearest as ggml's reference quantizer defines it, written out
// here: per 32 values the step amax / 127 kept as a half, each code the value
// times the reciprocal of the unrounded step, rounded half away from zero.
// Returns the decoded values (half step times code).
std::vector<float> q8_0RoundToNearest(const at::Tensor &t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  const float *x = c.data_ptr<float>();
  std::vector<float> out(size_t(c.numel()));
  for (int64_t b = 0; b < c.numel() / 32; ++b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j)
      amax = std::fabs(x[b * 32 + j]) > amax ? std::fabs(x[b * 32 + j]) : amax;
    const float step = amax / 127.0f;
    const float inverse = step == 0.0f ? 0.0f : 1.0f / step;
    const float storedStep = static_cast<float>(at::Half(step));
    for (int j = 0; j < 32; ++j)
      out[size_t(b * 32 + j)] = storedStep * std::round(x[b * 32 + j] * inverse);
  }
  return out;
}

// The bytes of a file.
QByteArray fileBytes(const QString &path) {
  QFile f(path);
  return f.open(QIODevice::ReadOnly) ? f.readAll() : QByteArray();
}

// Files in a folder (a failed export must leave none behind, temporaries too).
QStringList filesIn(const QString &dir) {
  return QDir(dir).entryList(QDir::Files | QDir::Hidden | QDir::NoDotAndDotDot);
}

} // namespace

class TestGgufExport : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;

  QString path(const QString &name) const { return tmp_.filePath(name); }

private slots:
  void initTestCase() { QVERIFY(tmp_.isValid()); }

  // One block by hand: Q4_0 stores d, then code j + 8 in the low nibble of
  // byte j and code j + 16 + 8 in the high nibble.
  void q4_0BlockByHand() {
    PackedTensor t = handBuilt("x", 1, 32, 4, true, 1);
    for (int j = 0; j < 32; ++j)
      t.codes.data_ptr<int32_t>()[j] = (j % 16) - 8; // u = j % 16
    t.scales.fill_(0.25f);
    const std::vector<uint8_t> b = encodeGgufBlocks(t, GgmlType::Q4_0);
    QCOMPARE(b.size(), size_t(18));
    QCOMPARE(int(b[0]), 0x00); // 0.25 = half 0x3400, little-endian
    QCOMPARE(int(b[1]), 0x34);
    for (int j = 0; j < 16; ++j)
      QCOMPARE(int(b[size_t(2 + j)]), j | (j << 4));
    // Q5_1: the fifth bits of u land in a 32-bit word, bit j for value j.
    PackedTensor a = handBuilt("y", 1, 32, 5, false, 2);
    for (int j = 0; j < 32; ++j)
      a.codes.data_ptr<int32_t>()[j] = j;
    a.scales.fill_(0.5f);
    a.zeroPoints.fill_(3.0f);
    const std::vector<uint8_t> c = encodeGgufBlocks(a, GgmlType::Q5_1);
    QCOMPARE(c.size(), size_t(24));
    uint16_t m = 0;
    std::memcpy(&m, c.data() + 2, 2);
    QCOMPARE(halfBitsToFloat(m), -1.5f); // -s z
    uint32_t qh = 0;
    std::memcpy(&qh, c.data() + 4, 4);
    QCOMPARE(qh, 0xFFFF0000u);         // codes 16..31 have bit 4 set
    QCOMPARE(int(c[8]), 0 | (0 << 4)); // codes 0 and 16: low nibbles 0 and 0
    QCOMPARE(int(c[9]), 1 | (1 << 4));
  }

  // Every block type: random codes and half steps decode to s (q - z) exactly,
  // in the project's dequantizer (checked inside the encoder too) and in gguf-py.
  void everyBlockTypeDecodesExactly() {
    const QString dir = path("blocks");
    QDir().mkpath(dir);
    std::map<std::string, at::Tensor> expected;
    uint64_t seed = 7;
    for (const BlockCase &c : kCases) {
      GgmlType type{};
      const PackedTensor t =
          handBuilt("model.layers.0.mlp.up_proj", 8, 96, c.bits, c.symmetric, ++seed);
      QVERIFY(ggufBlockTypeForGrid(c.bits, t.qmin, 32, &type));
      QCOMPARE(int(type), int(c.type));
      const std::vector<uint8_t> blocks = encodeGgufBlocks(t, c.type);
      const GgmlTypeTraits *traits = ggmlTypeTraits(uint32_t(c.type));
      QCOMPARE(int64_t(blocks.size()), 8 * 96 / 32 * traits->typeSize);
      std::vector<float> ours(8 * 96);
      dequantizeGgml(c.type, blocks.data(), ours.data(), 8 * 96);
      QString why;
      QVERIFY2(sameValues(dequantized(t), ours, &why), qPrintable(why));
      QFile f(dir + "/" + QString::fromStdString(ggmlTypeName(c.type)) + ".bin");
      QVERIFY(f.open(QIODevice::WriteOnly));
      f.write(reinterpret_cast<const char *>(blocks.data()), qint64(blocks.size()));
      expected[ggmlTypeName(c.type)] = dequantized(t);
    }
    {
      const PackedTensor t = handBuiltQ6K("model.layers.0.mlp.down_proj", 8, 512, 99);
      GgmlType type{};
      QVERIFY(ggufBlockTypeForGrid(6, -32, 16, &type));
      QCOMPARE(int(type), int(GgmlType::Q6_K));
      const std::vector<uint8_t> blocks = encodeGgufBlocks(t, GgmlType::Q6_K);
      QCOMPARE(blocks.size(), size_t(8 * 2 * 210));
      QString why;
      QVERIFY2(sameValues(dequantized(t), llamaDequantizeQ6K(blocks, 8 * 512), &why),
               qPrintable("llama.cpp's loop: " + why));
      QFile f(dir + "/Q6_K.bin");
      QVERIFY(f.open(QIODevice::WriteOnly));
      f.write(reinterpret_cast<const char *>(blocks.data()), qint64(blocks.size()));
      expected["Q6_K"] = dequantized(t);
    }
    QString error;
    const QByteArray out = test::runReference("gguf_dequant.py", {dir}, &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    for (const auto &[name, values] : expected) {
      QString why;
      QVERIFY2(sameValues(values, readF32(dir + "/" + QString::fromStdString(name) + ".f32"), &why),
               qPrintable(QString::fromStdString(name) + ": " + why));
    }
  }

  // One Q6_K block by hand: d at byte 208, sc_j at 192 + j, value e's low
  // four bits in ql and high two in qh (llama.cpp's interleaved order).
  void q6_KBlockByHand() {
    PackedTensor t = handBuiltQ6K("x", 1, 256, 1);
    t.zeroPoints.zero_();
    for (int e = 0; e < 256; ++e)
      t.codes.data_ptr<int32_t>()[e] = (e % 64) - 32; // u = e % 64
    for (int j = 0; j < 16; ++j)
      t.scales.data_ptr<float>()[j] = 0.25f * float(j + 1); // d = 0.25, sc = j + 1 ... 16
    const std::vector<uint8_t> b = encodeGgufBlocks(t, GgmlType::Q6_K);
    QCOMPARE(b.size(), size_t(210));
    // d: the half whose multiples are the steps with sc <= 127; the encoder
    // takes the smallest, s_max / 127 when that is a half, else the next.
    uint16_t dBits = 0;
    std::memcpy(&dBits, b.data() + 208, 2);
    const float d = halfBitsToFloat(dBits);
    for (int j = 0; j < 16; ++j) {
      const int sc = int(static_cast<int8_t>(b[size_t(192 + j)]));
      QVERIFY(sc >= 1 && sc <= 127);
      QCOMPARE(d * float(sc), 0.25f * float(j + 1));
    }
    // Value 0 (u 0), 32 (u 32: ql[32] low nibble 0, qh[0] bits 2..3 = 2),
    // 64 (u 0, ql[0] high nibble), 100 (u 36: ql[36] high nibble 4, qh[4]
    // bits 6..7 = 2), 200 (u 8: n 1, k 2, l 8: ql[72] high nibble 8).
    QCOMPARE(int(b[0]) & 0x0F, 0);
    QCOMPARE(int(b[32]) & 0x0F, 0);
    QCOMPARE((int(b[128]) >> 2) & 3, 2);
    QCOMPARE(int(b[36]) >> 4, 4);
    QCOMPARE((int(b[128 + 4]) >> 6) & 3, 2);
    QCOMPARE(int(b[72]) >> 4, 8);
    QCOMPARE((int(b[128 + 32 + 8]) >> 4) & 3, 0);
    QString why;
    QVERIFY2(sameValues(dequantized(t), llamaDequantizeQ6K(b, 256), &why), qPrintable(why));
    // Group 0 on the positive side of a full range (z = -1): sc negated and
    // codes stored as -(q + 1), so value 0 (q -32) is u = 31 + 32 = 63.
    t.zeroPoints.data_ptr<float>()[0] = -1.0f;
    const std::vector<uint8_t> f = encodeGgufBlocks(t, GgmlType::Q6_K);
    QCOMPARE(int(static_cast<int8_t>(f[192])), -int(static_cast<int8_t>(b[192])));
    QCOMPARE(int(f[0]) & 0x0F, 63 & 0x0F);
    QCOMPARE(int(f[128]) & 3, 63 >> 4);
    QVERIFY2(sameValues(dequantized(t), llamaDequantizeQ6K(f, 256), &why), qPrintable(why));
    // Steps that are no d sc: 0.1 beside 1000 would need sc < 1 ...
    PackedTensor bad = t;
    bad.scales = t.scales.clone();
    bad.scales.fill_(0.1f);
    bad.scales[0][3] = 1000.0f;
    try {
      encodeGgufBlocks(bad, GgmlType::Q6_K);
      QFAIL("steps that are not d*sc were stored as Q6_K");
    } catch (const Error &e) {
      const QString m = QString::fromUtf8(e.what());
      QVERIFY2(m.contains("d*sc") && m.contains("gguf-q6_k") && m.contains("super-block 0"),
               qPrintable(m));
    }
    // ... nor do rows that are not whole super-blocks, or a Q8_0 grid.
    PackedTensor shortRow = handBuiltQ6K("y", 1, 512, 2);
    shortRow.codes = shortRow.codes.narrow(1, 0, 384).contiguous();
    shortRow.scales = shortRow.scales.narrow(1, 0, 24).contiguous();
    shortRow.zeroPoints = shortRow.zeroPoints.narrow(1, 0, 24).contiguous();
    QVERIFY_THROWS_EXCEPTION(Error, encodeGgufBlocks(shortRow, GgmlType::Q6_K));
    QVERIFY_THROWS_EXCEPTION(Error,
                             encodeGgufBlocks(handBuilt("z", 1, 256, 8, true, 3), GgmlType::Q6_K));
  }

  // gguf-q6_k's shape of model: down_proj (256 inputs) in Q6_K, the other
  // linears in the Q8_0 fallback; the file is labelled MOSTLY_Q6_K (18) and
  // both loadModel and gguf-py read every value back exactly.
  void q6_KModelRoundTrip() {
    const ModelConfig config = lrq::test::tinyLlamaConfig({264, 64, 256, 16, 256});
    PackedModelContents packed;
    packed.config = config;
    packed.method = "rtn";
    packed.schemeJson = R"({"name": "gguf-q6_k"})";
    at::Generator gen = at::detail::createCPUGenerator(9);
    for (const auto &[name, t] : lrq::test::tinyLlamaTensors(config, 9)) {
      if (name.find("_proj") == std::string::npos) {
        packed.tensors.emplace_back(name, t.to(at::kFloat));
        continue;
      }
      const std::string prefix = name.substr(0, name.size() - 7);
      packed.quantized.push_back(
          t.size(1) == 256
              ? handBuiltQ6K(prefix, t.size(0), t.size(1), 40 + packed.quantized.size())
              : handBuilt(prefix, t.size(0), t.size(1), 8, true, 40 + packed.quantized.size()));
    }
    const TokenizerSpec spec = tinySpec(config.vocabSize);
    GgufExportSource source;
    source.tokenizer = &spec;
    const QString file = path("tiny-q6k.gguf");
    exportGguf(file.toStdString(), packed, source);
    const GgufReader g(file.toStdString());
    QCOMPARE(g.getInt("general.file_type"), int64_t(18)); // LLAMA_FTYPE_MOSTLY_Q6_K
    QCOMPARE(g.findTensor("blk.0.ffn_down.weight")->type, GgmlType::Q6_K);
    QCOMPARE(g.findTensor("blk.1.ffn_up.weight")->type, GgmlType::Q8_0);
    QCOMPARE(g.findTensor("blk.0.attn_q.weight")->type, GgmlType::Q8_0);
    const LoadedModel m = loadModel(file.toStdString());
    for (const PackedTensor &t : packed.quantized)
      QVERIFY2(at::equal(m.tensors.at(t.name + ".weight"), dequantized(t)), t.name.c_str());
    QJsonObject info;
    const QString mismatch = ggufPyMismatch(file, path("tiny-q6k-py"), packed, config, &info);
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));
    QCOMPARE(info["blk.1.ffn_down.weight"].toObject()["type"].toString(), QString("Q6_K"));
    QCOMPARE(ggufFileTypeFor(GgmlType::Q6_K), uint32_t(18));
    QCOMPARE(ggufSchemeFor(GgmlType::Q6_K), std::string("gguf-q6_k"));
  }

  void rotaryPermutationIsTheInverseOfTheReaders() {
    const at::Tensor rows = at::arange(4, at::kFloat).reshape({4, 1});
    // One head of 4 rows: HF (j, i) -> GGUF (i, j): rows 0, 2, 1, 3.
    const at::Tensor p = permuteGgufRotary(rows, 1);
    QCOMPARE(p.flatten()[1].item<float>(), 2.0f);
    QCOMPARE(p.flatten()[2].item<float>(), 1.0f);
    const at::Tensor w = at::randn({48, 5});
    QVERIFY(at::equal(unpermuteGgufRotary(permuteGgufRotary(w, 3), 3), w));
    QVERIFY(!at::equal(permuteGgufRotary(w, 3), w));
  }

  void namesMapBothWays() {
    for (const char *g :
         {"token_embd.weight", "output_norm.weight", "output.weight", "blk.0.attn_q.weight",
          "blk.11.attn_k.weight", "blk.2.attn_v.weight", "blk.2.attn_output.weight",
          "blk.3.ffn_gate.weight", "blk.3.ffn_up.weight", "blk.3.ffn_down.weight",
          "blk.4.attn_norm.weight", "blk.4.ffn_norm.weight", "blk.5.attn_q.bias"}) {
      const std::string hf = hfNameFromGgufTensor(g);
      QVERIFY2(!hf.empty(), g);
      QCOMPARE(ggufTensorNameFromHf(hf), std::string(g));
    }
    QCOMPARE(ggufTensorNameFromHf("model.decoder.layers.0.fc1.weight"), std::string());
  }

  // Metadata of every value type, arrays of each and nested ones, written and
  // read back by our reader and by gguf-py; the alignment honoured.
  void writerRoundTripsEveryValueType() {
    std::vector<std::pair<std::string, GgufValue>> meta;
    meta.emplace_back("t.u8", GgufValue::unsignedInt(GgufValueType::UInt8, 200));
    meta.emplace_back("t.i8", GgufValue::signedInt(GgufValueType::Int8, -100));
    meta.emplace_back("t.u16", GgufValue::unsignedInt(GgufValueType::UInt16, 60000));
    meta.emplace_back("t.i16", GgufValue::signedInt(GgufValueType::Int16, -30000));
    meta.emplace_back("t.u32", ggufUInt32(4000000000u));
    meta.emplace_back("t.i32", ggufInt32(-2000000000));
    meta.emplace_back("t.u64", ggufUInt64(uint64_t(1) << 40));
    meta.emplace_back("t.i64", GgufValue::signedInt(GgufValueType::Int64, -(int64_t(1) << 40)));
    meta.emplace_back("t.f32", ggufFloat32(0.1f));
    meta.emplace_back("t.f64", GgufValue::floating(GgufValueType::Float64, 0.1));
    meta.emplace_back("t.bool", GgufValue::boolean(true));
    meta.emplace_back("t.str", ggufString("héllo"));
    meta.emplace_back("t.strs", ggufStringArray({"a", "", "ßc"}));
    meta.emplace_back("t.f32s", ggufFloat32Array({1.5f, -2.0f}));
    meta.emplace_back("t.i32s", ggufInt32Array({1, -2, 3}));
    meta.emplace_back("t.bools", GgufValue::packedArray(GgufValueType::Bool, {1, 0, 1}));
    meta.emplace_back("t.nested",
                      GgufValue::nestedArray({ggufInt32Array({1, 2}), ggufStringArray({"x"})}));
    meta.emplace_back("general.alignment", ggufUInt32(32));
    const std::vector<GgufTensorSpec> tensors = {
        {"a", {3}, GgmlType::F32}, {"b", {32, 2}, GgmlType::Q8_0}, {"c", {5, 1}, GgmlType::F16}};
    const QString file = path("values.gguf");
    GgufWriteOptions options;
    options.alignment = 64;
    writeGgufFile(
        file.toStdString(), meta, tensors,
        [&](size_t i) {
          std::vector<uint8_t> b(ggufTensorBytes(tensors[i]));
          for (size_t k = 0; k < b.size(); ++k)
            b[k] = uint8_t(i * 16 + k % 7);
          if (i == 1) // Q8_0 block scales: 1.0 as a half
            for (size_t blk = 0; blk < 2; ++blk)
              b[blk * 34] = 0x00, b[blk * 34 + 1] = 0x3C;
          return b;
        },
        options);
    const GgufReader g(file.toStdString());
    QCOMPARE(g.version(), uint32_t(3));
    QCOMPARE(g.alignment(), uint64_t(64));
    QCOMPARE(g.dataOffset() % 64, uint64_t(0));
    QCOMPARE(g.metadata().size(), meta.size());
    for (size_t i = 0; i < meta.size(); ++i) {
      const auto &[key, value] = g.metadata()[i];
      QCOMPARE(key, meta[i].first);
      QCOMPARE(int(value.type()), int(meta[i].second.type()));
      if (key != "general.alignment")
        QCOMPARE(value.describe(), meta[i].second.describe());
    }
    QCOMPARE(g.getInt("t.i8"), int64_t(-100));
    QCOMPARE(g.getInt("t.u64"), int64_t(1) << 40);
    QCOMPARE(float(g.getFloat("t.f32")), 0.1f);
    QCOMPARE(g.getFloat("t.f64"), 0.1);
    QCOMPARE(g.getStringArray("t.strs"), (std::vector<std::string>{"a", "", "ßc"}));
    QCOMPARE(g.getIntArray("t.i32s"), (std::vector<int64_t>{1, -2, 3}));
    QCOMPARE(g.find("t.nested")->item(1).strings(), std::vector<std::string>{"x"});
    QCOMPARE(g.find("t.bools")->item(1).describe(), std::string("false"));
    for (const GgufTensorInfo &t : g.tensors())
      QCOMPARE(t.offset % 64, uint64_t(0));
    QCOMPARE(g.tensors()[1].type, GgmlType::Q8_0);
    QCOMPARE(g.tensorData(g.tensors()[2])[0], uint8_t(32));

    QString error;
    const QByteArray out = test::runReference("gguf_dump.py", {file}, &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    const QJsonObject dump = QJsonDocument::fromJson(out).object();
    QCOMPARE(dump["alignment"].toInt(), 64);
    QCOMPARE(qint64(dump["data_offset"].toInteger()), qint64(g.dataOffset()));
    QCOMPARE(dump["metadata"].toArray().size(), int(meta.size()));
    std::map<QString, QJsonObject> byKey;
    for (const auto &v : dump["metadata"].toArray())
      byKey[v.toObject()["key"].toString()] = v.toObject();
    QCOMPARE(byKey["t.i16"]["value"].toString(), QString("-30000"));
    QCOMPARE(byKey["t.u64"]["value"].toString(), QString::number(qint64(1) << 40));
    QCOMPARE(byKey["t.str"]["value"].toString(), QString::fromUtf8("héllo"));
    QCOMPARE(byKey["t.f32s"]["value"].toObject()["count"].toInt(), 2);
    QCOMPARE(byKey["t.nested"]["element_type"].toString(), QString("array"));
    const QJsonArray ts = dump["tensors"].toArray();
    QCOMPARE(ts.size(), 3);
    for (int i = 0; i < 3; ++i) {
      QCOMPARE(qint64(ts[i].toObject()["offset"].toInteger()),
               qint64(g.dataOffset() + g.tensors()[size_t(i)].offset));
      QCOMPARE(ts[i].toObject()["name"].toString(),
               QString::fromStdString(tensors[size_t(i)].name));
    }
  }

  // A whole tiny model with an HF-style source: every block type, the q/k
  // order, metadata and tokenizer; read back by loadModel and by gguf-py.
  void modelRoundTrip() {
    const ModelConfig config = tinyConfig();
    const PackedModelContents packed = tinyPacked(config);
    const TokenizerSpec spec = tinySpec(config.vocabSize);
    GgufExportSource source;
    source.tokenizer = &spec;
    source.chatTemplate = "{{ messages }}";
    source.name = "tiny";
    GgufExportOptions options;
    options.runId = "run-42";
    options.floatTypes = {{"output.weight", GgmlType::F16}, {"*", GgmlType::F32}};
    const QString file = path("tiny.gguf");
    const ExportResult r = exportGguf(file.toStdString(), packed, source, options);
    QCOMPARE(r.tensors, int64_t(packed.tensors.size() + packed.quantized.size()));
    // Left for people to try in llama.cpp (every block type in one file).
    const QString kept = QDir(test::outputDir()).filePath("gguf-export-tiny.gguf");
    QFile::remove(kept);
    QFile::copy(file, kept);

    const GgufReader g(file.toStdString());
    QCOMPARE(g.getString("general.architecture"), std::string("llama"));
    QCOMPARE(g.getInt("general.file_type"), int64_t(2)); // mostly Q4_0
    QCOMPARE(g.getInt("general.quantization_version"), int64_t(2));
    QCOMPARE(g.getString("lrq.method"), std::string("rtn"));
    QCOMPARE(g.getString("lrq.scheme"), packed.schemeJson);
    QCOMPARE(g.getString("lrq.run_id"), std::string("run-42"));
    QCOMPARE(g.getString("tokenizer.chat_template"), std::string("{{ messages }}"));
    QCOMPARE(g.getInt("llama.rope.dimension_count"), int64_t(16));
    QCOMPARE(g.findTensor("blk.1.attn_k.weight")->type, GgmlType::Q5_0);
    QCOMPARE(g.findTensor("blk.1.attn_v.weight")->type, GgmlType::Q8_0);
    QCOMPARE(g.findTensor("blk.0.attn_output.weight")->type, GgmlType::Q4_1);
    QCOMPARE(g.findTensor("blk.0.ffn_gate.weight")->type, GgmlType::Q5_1);
    QCOMPARE(g.findTensor("output.weight")->type, GgmlType::F16);
    QCOMPARE(g.findTensor("token_embd.weight")->type, GgmlType::F32);
    QCOMPARE(g.findTensor("output_norm.weight")->type, GgmlType::F32);
    QCOMPARE(g.tensors().front().name, std::string("token_embd.weight"));
    for (const GgufTensorInfo &t : g.tensors())
      QCOMPARE(t.offset % 32, uint64_t(0));

    // The config and tokenizer as the loader sees them.
    const ModelConfig back = modelConfigFromGguf(g);
    QCOMPARE(back.numLayers, config.numLayers);
    QCOMPARE(back.hiddenSize, config.hiddenSize);
    QCOMPARE(back.intermediateSize, config.intermediateSize);
    QCOMPARE(back.numHeads, config.numHeads);
    QCOMPARE(back.numKvHeads, config.numKvHeads);
    QCOMPARE(back.headDim, config.headDim);
    QCOMPARE(back.maxPositions, config.maxPositions);
    QCOMPARE(back.vocabSize, config.vocabSize);
    QCOMPARE(back.tieEmbeddings, false);
    QCOMPARE(float(back.normEps), float(config.normEps));
    const TokenizerSpec tok = tokenizerSpecFromGguf(g);
    QCOMPARE(tok.tokens, spec.tokens);
    QCOMPARE(tok.merges, spec.merges);
    QCOMPARE(tok.preTokenizer, spec.preTokenizer);
    QCOMPARE(tok.bosId, spec.bosId);
    QCOMPARE(tok.eosId, spec.eosId);
    QCOMPARE(tok.padId, spec.padId);
    QCOMPARE(tok.unkId, -1);
    QCOMPARE(tok.addBos, false);
    QCOMPARE(int(tok.tokenTypes[257]), int(TokenType::Control));

    // loadModel: HF names and order, exactly s (q - z) for every quantized linear.
    const LoadedModel m = loadModel(file.toStdString());
    QVERIFY(m.tokenizer);
    QCOMPARE(m.tokenizer->encode("hello", false), (std::vector<int32_t>{260, 'o'}));
    for (const PackedTensor &t : packed.quantized) {
      const auto it = m.tensors.find(t.name + ".weight");
      QVERIFY2(it != m.tensors.end(), t.name.c_str());
      QVERIFY2(at::equal(it->second, dequantized(t)), t.name.c_str());
    }
    for (const auto &[name, t] : packed.tensors) {
      const at::Tensor expect = name == "lm_head.weight" ? t.to(at::kHalf).to(at::kFloat) : t;
      QVERIFY2(at::equal(m.tensors.at(name), expect), name.c_str());
    }

    // gguf-py: the same values in GGUF's own row order (q and k permuted).
    QJsonObject info;
    const QString mismatch = ggufPyMismatch(file, path("tiny-py"), packed, config, &info);
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));
    QCOMPARE(info["blk.0.attn_q.weight"].toObject()["type"].toString(), QString("Q4_0"));
  }

  // A GGUF source: every key carried, the ones the export changes updated.
  void ggufSourceMetadataIsCarried() {
    const ModelConfig config = tinyConfig();
    const PackedModelContents packed = tinyPacked(config);
    const TokenizerSpec spec = tinySpec(config.vocabSize);
    GgufExportSource hf;
    hf.tokenizer = &spec;
    const QString first = path("source.gguf");
    exportGguf(first.toStdString(), packed, hf);
    // Make the "source" carry keys of its own, as real files do.
    const GgufReader original(first.toStdString());
    std::vector<std::pair<std::string, GgufValue>> meta = original.metadata();
    for (auto &[key, value] : meta)
      if (key == "general.file_type")
        value = ggufUInt32(15);
      else if (key == "lrq.run_id")
        value = ggufString("old");
    meta.emplace_back("general.license", ggufString("apache-2.0"));
    meta.emplace_back("custom.nested", GgufValue::nestedArray({ggufInt32Array({7})}));
    const QString source = path("source2.gguf");
    std::vector<GgufTensorSpec> specs;
    for (const GgufTensorInfo &t : original.tensors())
      specs.push_back({t.name, t.dims, t.type});
    writeGgufFile(source.toStdString(), meta, specs, [&](size_t i) {
      const GgufTensorInfo &t = original.tensors()[i];
      const uint8_t *p = original.tensorData(t);
      return std::vector<uint8_t>(p, p + t.nbytes);
    });

    GgufExportSource fromGguf;
    fromGguf.sourceGguf = source.toStdString();
    GgufExportOptions options;
    options.runId = "new";
    const QString file = path("carried.gguf");
    exportGguf(file.toStdString(), packed, fromGguf, options);
    const GgufReader g(file.toStdString());
    const GgufReader s(source.toStdString());
    for (const auto &[key, value] : s.metadata()) {
      const GgufValue *v = g.find(key);
      QVERIFY2(v, key.c_str());
      if (key == "general.file_type" || key.compare(0, 4, "lrq.") == 0)
        continue;
      QCOMPARE(int(v->type()), int(value.type()));
      QCOMPARE(v->describe(), value.describe());
      if (v->isArray() && value.elementType() == GgufValueType::String)
        QCOMPARE(v->strings(), value.strings());
      else if (v->isArray())
        QCOMPARE(v->packedBytes(), value.packedBytes());
    }
    QCOMPARE(g.getInt("general.file_type"), int64_t(2));
    QCOMPARE(g.getString("lrq.run_id"), std::string("new"));
    QCOMPARE(g.getString("general.license"), std::string("apache-2.0"));
    QCOMPARE(g.find("custom.nested")->item(0).describe(), std::string("[int32 x 1]"));
  }

  void unrepresentableGridsAreRefused() {
    // 3-bit per channel: no block type.
    PackedModelContents p = tinyPacked(tinyConfig());
    PackedTensor &q = p.quantized[0];
    q.bits = 3;
    q.qmin = 0;
    q.groupSize = 0;
    q.scales = q.scales.narrow(1, 0, 1).contiguous();
    q.zeroPoints = q.zeroPoints.narrow(1, 0, 1).contiguous();
    q.codes = q.codes.clamp(0, 7);
    const QString file = path("refused.gguf");
    try {
      exportGguf(file.toStdString(), p, {});
      QFAIL("3-bit per-channel weights were exported");
    } catch (const Error &e) {
      const QString m = QString::fromUtf8(e.what());
      QVERIFY2(m.contains("model.layers.0.self_attn.q_proj") && m.contains("3-bit per-channel") &&
                   m.contains("cannot be stored") && m.contains("--scheme gguf-"),
               qPrintable(m));
    }
    QVERIFY(!QFile::exists(file));

    // A step that is not a half.
    PackedTensor t = handBuilt("model.layers.0.mlp.up_proj", 2, 32, 4, true, 3);
    t.scales.fill_(0.1f);
    try {
      encodeGgufBlocks(t, GgmlType::Q4_0);
      QFAIL("a float32 step was stored as a half");
    } catch (const Error &e) {
      const QString m = QString::fromUtf8(e.what());
      QVERIFY2(m.contains("mlp.up_proj") && m.contains("half") && m.contains("gguf-q4_0"),
               qPrintable(m));
    }
    // Q4_1 whose -s z is not a half: s = 1 + 2^-10 (a half), z = 7.
    PackedTensor a = handBuilt("model.layers.0.mlp.up_proj", 1, 32, 4, false, 4);
    a.scales.fill_(1.0f + std::ldexp(1.0f, -10));
    a.zeroPoints.fill_(7.0f);
    QVERIFY_THROWS_EXCEPTION(Error, encodeGgufBlocks(a, GgmlType::Q4_1));
    // Rows that are not whole blocks.
    PackedTensor odd = handBuilt("model.layers.0.mlp.up_proj", 1, 64, 4, true, 5);
    odd.codes = odd.codes.narrow(1, 0, 48).contiguous();
    QVERIFY_THROWS_EXCEPTION(Error, encodeGgufBlocks(odd, GgmlType::Q4_0));
  }

  // tests/fuzz/seeds/fuzz_gguf/export-*.gguf are files this exporter writes, so
  // fuzz_gguf starts from them: a full-range Q4_0 layer (units on the positive
  // side of the grid are stored with a negative d) and a Q6_K layer beside a
  // Q8_0 one. They must stay what the exporter writes; after an intended
  // change, LRQ_UPDATE_FUZZ_SEEDS=1 rewrites them.
  void fuzzSeedsAreWhatTheExporterWrites() {
    ModelConfig config = lrq::test::tinyLlamaConfig({64, 64, 256, 16, 256});
    config.numLayers = 1;
    auto contentsWith = [&](std::vector<PackedTensor> quantized, const char *scheme) {
      PackedModelContents c;
      c.config = config;
      c.method = "rtn";
      c.schemeJson = scheme;
      c.tensors.emplace_back("model.norm.weight", at::ones({4}));
      c.quantized = std::move(quantized);
      return c;
    };
    const std::vector<std::pair<QString, PackedModelContents>> seeds = {
        {"export-q4_0-full-range.gguf",
         contentsWith({handBuilt("model.layers.0.self_attn.o_proj", 4, 64, 4, true, 71)},
                      R"({"name": "gguf-q4_0"})")},
        {"export-q6_k.gguf",
         contentsWith({handBuiltQ6K("model.layers.0.mlp.down_proj", 2, 256, 72),
                       handBuilt("model.layers.0.mlp.up_proj", 2, 64, 8, true, 73)},
                      R"({"name": "gguf-q6_k"})")},
    };
    const bool update = qEnvironmentVariableIsSet("LRQ_UPDATE_FUZZ_SEEDS");
    for (const auto &[name, contents] : seeds) {
      const QString file = path(name);
      exportGguf(file.toStdString(), contents, GgufExportSource{});
      const GgufReader g(file.toStdString());
      if (name.contains("q4_0")) {
        // The case the seed is there for: some d below zero.
        const GgufTensorInfo *t = g.findTensor("blk.0.attn_output.weight");
        QVERIFY(t && t->type == GgmlType::Q4_0);
        int negative = 0;
        for (uint64_t b = 0; b < t->nbytes; b += 18) {
          uint16_t d = 0;
          std::memcpy(&d, g.tensorData(*t) + b, 2);
          negative += halfBitsToFloat(d) < 0;
        }
        QVERIFY2(negative > 0, "no Q4_0 block with a negative d");
      } else {
        QCOMPARE(g.findTensor("blk.0.ffn_down.weight")->type, GgmlType::Q6_K);
      }
      QFile written(file);
      QVERIFY(written.open(QIODevice::ReadOnly));
      const QByteArray bytes = written.readAll();
      const QString seed = QString(LRQ_SOURCE_DIR) + "/tests/fuzz/seeds/fuzz_gguf/" + name;
      if (update) {
        QFile::remove(seed);
        QVERIFY(QFile::copy(file, seed));
      }
      QFile kept(seed);
      QVERIFY2(kept.open(QIODevice::ReadOnly), qPrintable(seed));
      QVERIFY2(kept.readAll() == bytes,
               qPrintable(seed + " is not what the exporter writes now; if the change is "
                                 "intended, run this test with LRQ_UPDATE_FUZZ_SEEDS=1"));
    }
  }

  void lowRankFactorsAreRefused() {
    PackedModelContents p = tinyPacked(tinyConfig());
    p.quantized[2].lowRankA = at::zeros({64, 8});
    p.quantized[2].lowRankB = at::zeros({8, 32});
    const QString file = path("lqer.gguf");
    try {
      exportGguf(file.toStdString(), p, {});
      QFAIL("LQER factors were dropped silently");
    } catch (const Error &e) {
      const QString m = QString::fromUtf8(e.what());
      QVERIFY2(m.contains("low-rank") && m.contains("LQER") && m.contains("v_proj"), qPrintable(m));
    }
    QVERIFY(!QFile::exists(file));
  }

  void existingFilesFailuresAndCancelLeaveNothing() {
    const QString dir = path("atomic");
    QDir().mkpath(dir);
    const QString file = dir + "/m.gguf";
    const PackedModelContents p = tinyPacked(tinyConfig());
    {
      QFile f(file);
      QVERIFY(f.open(QIODevice::WriteOnly));
      f.write("keep me");
    }
    QVERIFY_THROWS_EXCEPTION(FileError, exportGguf(file.toStdString(), p, {}));
    QCOMPARE(readF32(file).size(), size_t(1)); // untouched ("keep me" is 7 bytes)

    // A failure half way: the previous file stays, no temporary is left.
    GgufExportOptions failing;
    failing.overwrite = true;
    int steps = 0;
    failing.beforeStep = [&](const std::string &) {
      if (++steps == 5)
        throw Error("disk full (simulated)");
    };
    QVERIFY_THROWS_EXCEPTION(Error, exportGguf(file.toStdString(), p, {}, failing));
    QCOMPARE(filesIn(dir), QStringList{"m.gguf"});
    QCOMPARE(QFileInfo(file).size(), qint64(7));

    // Cancelled between tensors.
    CancelToken cancel;
    GgufExportOptions cancelling;
    cancelling.beforeStep = [&](const std::string &step) {
      if (step == "blk.0.attn_v.weight")
        cancel.cancel();
    };
    QVERIFY_THROWS_EXCEPTION(Cancelled, exportGguf((dir + "/c.gguf").toStdString(), p, {},
                                                   cancelling, nullptr, &cancel));
    QCOMPARE(filesIn(dir), QStringList{"m.gguf"});

    // Overwriting replaces it with a readable file.
    GgufExportOptions overwrite;
    overwrite.overwrite = true;
    exportGguf(file.toStdString(), p, {}, overwrite);
    QCOMPARE(GgufReader(file.toStdString()).tensors().size(),
             p.tensors.size() + p.quantized.size());
    QCOMPARE(filesIn(dir), QStringList{"m.gguf"});
  }

  // --gguf-float token_embd.weight=q8_0: the embedding rounded at export by
  // ggml's reference Q8_0 (the bytes gguf-py's quantizer gives, a half-way
  // case rounded away from zero, an all-zero block), decoded by the reader and
  // by gguf-py to a Q8_0 round to nearest computed here; output.weight=q6_k on
  // rows of 64 falls back to Q8_0 and says so; the warning names both.
  void floatTensorsRoundedToQ8_0() {
    const ModelConfig config = tinyConfig();
    PackedModelContents packed = tinyPacked(config);
    at::Tensor &embedding = packed.tensors.front().second;
    QCOMPARE(packed.tensors.front().first, std::string("model.embed_tokens.weight"));
    embedding[0].slice(0, 0, 32).zero_(); // d = 0
    // amax 127: step 1, so 2.5 -> 3 and -3.5 -> -4 (half away from zero, not to even).
    embedding[1].slice(0, 0, 4) = at::tensor({127.0f, 2.5f, -3.5f, 0.5f});
    GgufExportOptions options;
    options.floatTypes = parseGgufFloatTypes("token_embd.weight=q8_0,output.weight=Q6_K");
    std::vector<std::pair<LogLevel, std::string>> notes;
    options.note = [&notes](LogLevel level, const std::string &line) {
      notes.emplace_back(level, line);
    };
    const QString file = path("embd-q8_0.gguf");
    exportGguf(file.toStdString(), packed, {}, options);

    QCOMPARE(notes.size(), size_t(2));
    QCOMPARE(int(notes[0].first), int(LogLevel::Info));
    QVERIFY2(notes[0].second.find("output.weight: rows of 64 values are not whole 256-value Q6_K "
                                  "super-blocks; stored as Q8_0") != std::string::npos,
             notes[0].second.c_str());
    QCOMPARE(int(notes[1].first), int(LogLevel::Warning));
    QVERIFY2(notes[1].second.find("token_embd.weight (Q8_0), output.weight (Q8_0)") !=
                     std::string::npos &&
                 notes[1].second.find("no longer exactly the evaluated model") !=
                     std::string::npos &&
                 notes[1].second.find("lrq eval " + file.toStdString()) != std::string::npos,
             notes[1].second.c_str());

    const GgufReader g(file.toStdString());
    QCOMPARE(g.findTensor("token_embd.weight")->type, GgmlType::Q8_0);
    QCOMPARE(g.findTensor("output.weight")->type, GgmlType::Q8_0);
    QCOMPARE(g.findTensor("output_norm.weight")->type, GgmlType::F32);
    QCOMPARE(g.getInt("general.file_type"), int64_t(2)); // still mostly Q4_0

    const at::Tensor &head = packed.tensors.back().second;
    QCOMPARE(packed.tensors.back().first, std::string("lm_head.weight"));
    const std::vector<float> embeddingExpected = q8_0RoundToNearest(embedding);
    const std::vector<float> headExpected = q8_0RoundToNearest(head);
    QCOMPARE(embeddingExpected[1 * 64 + 1], 3.0f);
    QCOMPARE(embeddingExpected[1 * 64 + 2], -4.0f);
    QCOMPARE(embeddingExpected[0], 0.0f);

    // The reader: the rounded values, which differ from the float ones.
    const LoadedModel m = loadModel(file.toStdString());
    QString why;
    QVERIFY2(sameValues(m.tensors.at("model.embed_tokens.weight"), embeddingExpected, &why),
             qPrintable(why));
    QVERIFY2(sameValues(m.tensors.at("lm_head.weight"), headExpected, &why), qPrintable(why));
    QVERIFY(!at::equal(m.tensors.at("model.embed_tokens.weight"), embedding));
    // Round to nearest: within half a step (amax / 254) of the float value, plus
    // the step's rounding to a half (2^-11 relative) times up to 127.
    const at::Tensor blocks = embedding.reshape({-1, 32});
    const at::Tensor error =
        (m.tensors.at("model.embed_tokens.weight").reshape({-1, 32}) - blocks).abs().amax(1);
    QVERIFY((error <= blocks.abs().amax(1) / 127 * (0.5 + 127.0 / 2048)).all().item<bool>());
    QVERIFY((error > blocks.abs().amax(1) / 127 * 0.4).any().item<bool>()); // really rounded
    for (const PackedTensor &t : packed.quantized) // the quantized linears untouched
      QVERIFY2(at::equal(m.tensors.at(t.name + ".weight"), dequantized(t)), t.name.c_str());

    // gguf-py decodes the same values...
    QJsonObject info;
    const QString mismatch = ggufPyMismatch(file, path("embd-q8_0-py"), packed, config, &info);
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));
    QCOMPARE(info["token_embd.weight"].toObject()["type"].toString(), QString("Q8_0"));
    QVERIFY2(sameValues(at::tensor(at::ArrayRef<float>(embeddingExpected)),
                        readF32(path("embd-q8_0-py/token_embd.weight.f32")), &why),
             qPrintable(why));
    QVERIFY2(sameValues(at::tensor(at::ArrayRef<float>(headExpected)),
                        readF32(path("embd-q8_0-py/output.weight.f32")), &why),
             qPrintable(why));
    // ... and its quantizer (bit-exact with ggml's reference) gives the very bytes.
    const at::Tensor values = embedding.contiguous();
    QFile raw(path("embd.f32"));
    QVERIFY(raw.open(QIODevice::WriteOnly));
    raw.write(reinterpret_cast<const char *>(values.data_ptr<float>()), values.numel() * 4);
    raw.close();
    QString error2;
    QVERIFY2(!test::runReference("ggml_quantize.py",
                                 {"Q8_0", path("embd.f32"), "64", path("embd.q8_0")}, &error2)
                  .isEmpty(),
             qPrintable(error2));
    const QByteArray reference = fileBytes(path("embd.q8_0"));
    const GgufTensorInfo *info2 = g.findTensor("token_embd.weight");
    QCOMPARE(uint64_t(reference.size()), ggufTensorBytes({"", {64, 264}, GgmlType::Q8_0}));
    const QByteArray ours =
        fileBytes(file).mid(qsizetype(g.dataOffset() + info2->offset), reference.size());
    QVERIFY(ours == reference);
  }

  // An embedding already on the Q8_0 grid (a model dequantized from a file
  // that stored it Q8_0, as the default model's) comes through unchanged: no
  // warning, a note that the values are exactly the evaluated ones.
  void floatTensorsOnTheGridAreNotWarnedAbout() {
    const ModelConfig config = tinyConfig();
    PackedModelContents packed = tinyPacked(config);
    at::Tensor &embedding = packed.tensors.front().second;
    const std::vector<float> onGrid = q8_0RoundToNearest(embedding);
    embedding = at::tensor(at::ArrayRef<float>(onGrid)).reshape(embedding.sizes());
    GgufExportOptions options;
    options.floatTypes = parseGgufFloatTypes("token_embd.weight=q8_0");
    std::vector<std::pair<LogLevel, std::string>> notes;
    options.note = [&notes](LogLevel level, const std::string &line) {
      notes.emplace_back(level, line);
    };
    const QString file = path("embd-on-grid.gguf");
    exportGguf(file.toStdString(), packed, {}, options);
    QCOMPARE(notes.size(), size_t(1));
    QCOMPARE(int(notes[0].first), int(LogLevel::Info));
    QVERIFY2(notes[0].second.find("token_embd.weight (Q8_0) already on that grid") !=
                 std::string::npos,
             notes[0].second.c_str());
    QCOMPARE(GgufReader(file.toStdString()).findTensor("token_embd.weight")->type, GgmlType::Q8_0);
    QVERIFY(at::equal(loadModel(file.toStdString()).tensors.at("model.embed_tokens.weight"),
                      embedding));
  }

  // --gguf-float token_embd.weight=q6_k on rows of 256: ggml's reference Q6_K.
  // Values already on a Q6_K grid (a power-of-two step, codes -32..31) come
  // back exactly, an all-zero super-block as zeros; random rows within 6-bit
  // accuracy; the reader, gguf-py and dequantizeGgml agree.
  void floatTensorsRoundedToQ6_K() {
    const ModelConfig config = lrq::test::tinyLlamaConfig({264, 256, 96, 64, 256});
    PackedModelContents packed = tinyPacked(config);
    at::Tensor &embedding = packed.tensors.front().second;
    // Each 16-value group holds -32 c (c = 2^-7), so its least-squares step is c.
    for (int64_t j = 0; j < 256; ++j)
      embedding[0][j] = std::ldexp(j % 16 == 0 ? -32.0f : float((j * 7) % 63 - 31), -7);
    embedding[1].zero_();
    GgufExportOptions options;
    options.floatTypes = parseGgufFloatTypes("token_embd.weight=q6_k");
    std::vector<std::string> notes;
    options.note = [&notes](LogLevel, const std::string &line) { notes.push_back(line); };
    const QString file = path("embd-q6_k.gguf");
    exportGguf(file.toStdString(), packed, {}, options);
    QCOMPARE(notes.size(), size_t(1));
    QVERIFY2(notes[0].find("token_embd.weight (Q6_K)") != std::string::npos, notes[0].c_str());

    const GgufReader g(file.toStdString());
    QCOMPARE(g.findTensor("token_embd.weight")->type, GgmlType::Q6_K);
    QCOMPARE(g.findTensor("output.weight")->type, GgmlType::F32);
    const at::Tensor back = loadModel(file.toStdString()).tensors.at("model.embed_tokens.weight");
    QVERIFY(at::equal(back[0], embedding[0]));
    QVERIFY((back[1] == 0).all().item<bool>());
    const at::Tensor rest = embedding.slice(0, 2), restBack = back.slice(0, 2);
    const double rms = (restBack - rest).pow(2).mean().sqrt().item<double>();
    const double scale = rest.pow(2).mean().sqrt().item<double>();
    qInfo("Q6_K round to nearest of N(0,1) values: rms error %.4g of rms %.4g", rms, scale);
    QVERIFY(rms > 0 && rms < 0.03 * scale);

    const at::Tensor values = embedding.contiguous();
    const std::vector<uint8_t> blocks =
        quantizeGgmlReference(GgmlType::Q6_K, values.data_ptr<float>(), values.numel());
    std::vector<float> decoded(size_t(values.numel()));
    dequantizeGgml(GgmlType::Q6_K, blocks.data(), decoded.data(), values.numel());
    QString why;
    QVERIFY2(sameValues(back, decoded, &why), qPrintable(why));
    QVERIFY2(sameValues(back, llamaDequantizeQ6K(blocks, values.numel()), &why), qPrintable(why));
    QJsonObject info;
    const QString mismatch = ggufPyMismatch(file, path("embd-q6_k-py"), packed, config, &info);
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));
    QVERIFY2(sameValues(back, readF32(path("embd-q6_k-py/token_embd.weight.f32")), &why),
             qPrintable(why));

    // Bad input to the quantizer itself.
    const float nan[32] = {std::nanf("")};
    QVERIFY_THROWS_EXCEPTION(Error, quantizeGgmlReference(GgmlType::Q8_0, nan, 32));
    QVERIFY_THROWS_EXCEPTION(Error, quantizeGgmlReference(GgmlType::Q8_0, nan + 1, 16));
    QVERIFY_THROWS_EXCEPTION(Error, quantizeGgmlReference(GgmlType::Q4_0, nan + 1, 0));
    const float huge[32] = {1e10f};
    QVERIFY_THROWS_EXCEPTION(Error, quantizeGgmlReference(GgmlType::Q8_0, huge, 32));
  }

  // The rounding is llama-quantize's, byte for byte: a float model written F32
  // and quantized by llama.cpp's own llama-quantize (Q6_K, token embedding
  // Q8_0, output Q6_K; rows of 96 fall back to Q8_0) has the very tensor data
  // of the export rounding the same float tensors with --gguf-float. Skipped
  // without llama.cpp's binaries (LRQ_LLAMA_CPP_BIN, default the workbench
  // cache's llama.cpp-0.3.36/bin).
  void roundedTensorsAreLlamaQuantizes() {
    QString bin = qEnvironmentVariable("LRQ_LLAMA_CPP_BIN");
    if (bin.isEmpty())
      bin = QDir::home().filePath(".cache/lrq-workbench/llama.cpp-0.3.36/bin");
    const QString quantizeTool = QDir(bin).filePath("llama-quantize");
    if (!QFileInfo(quantizeTool).isExecutable())
      QSKIP("llama-quantize not found (LRQ_LLAMA_CPP_BIN)");
    const ModelConfig config = lrq::test::tinyLlamaConfig({264, 256, 96, 64, 256});
    PackedModelContents floats;
    floats.config = config;
    floats.method = "none";
    floats.tensors = lrq::test::tinyLlamaTensors(config, 11);
    floats.tensors.front().second[0].zero_(); // an all-zero super-block and blocks
    const TokenizerSpec spec = tinySpec(config.vocabSize);
    GgufExportSource source;
    source.tokenizer = &spec;
    const QString f32 = path("floats-f32.gguf"), theirs = path("floats-llama.gguf"),
                  ours = path("floats-ours.gguf");
    exportGguf(f32.toStdString(), floats, source);
    QProcess tool;
    tool.start(quantizeTool, {"--token-embedding-type", "q8_0", "--output-tensor-type", "q6_k", f32,
                              theirs, "Q6_K", "1"});
    QVERIFY(tool.waitForFinished(120000));
    QVERIFY2(tool.exitCode() == 0, tool.readAllStandardError().constData());
    GgufExportOptions options;
    options.floatTypes = parseGgufFloatTypes("token_embd.weight=q8_0,re:.*=q6_k");
    exportGguf(ours.toStdString(), floats, source, options);

    const GgufReader a(theirs.toStdString()), b(ours.toStdString());
    const QByteArray aBytes = fileBytes(theirs), bBytes = fileBytes(ours);
    QCOMPARE(a.tensors().size(), b.tensors().size());
    std::map<std::string, int> types;
    for (const GgufTensorInfo &t : a.tensors()) {
      const GgufTensorInfo *mine = b.findTensor(t.name);
      QVERIFY2(mine, t.name.c_str());
      QVERIFY2(mine->type == t.type,
               (t.name + ": " + mine->typeName() + " vs " + t.typeName() + " from llama-quantize")
                   .c_str());
      const qsizetype size = qsizetype(t.nbytes);
      QVERIFY2(aBytes.mid(qsizetype(a.dataOffset() + t.offset), size) ==
                   bBytes.mid(qsizetype(b.dataOffset() + mine->offset), size),
               t.name.c_str());
      ++types[t.typeName()];
    }
    QCOMPARE(types["Q6_K"], 2 * 6 + 1); // q, k, v, o, gate, up of each layer; output
    QCOMPARE(types["Q8_0"], 2 * 1 + 1); // down (rows of 96); token_embd
  }

  void floatOverridesParse() {
    const auto [pattern, type] = parseGgufFloatOverride("re:blk\\.[0-9]+\\.ffn_.*=F16");
    QCOMPARE(pattern, std::string("re:blk\\.[0-9]+\\.ffn_.*"));
    QCOMPARE(int(type), int(GgmlType::F16));
    QCOMPARE(int(parseGgufFloatOverride("token_embd.weight=q8_0").second), int(GgmlType::Q8_0));
    QCOMPARE(int(parseGgufFloatOverride("output.weight=Q6_K").second), int(GgmlType::Q6_K));
    QVERIFY_THROWS_EXCEPTION(Error, parseGgufFloatOverride("token_embd.weight=q4_0"));
    QVERIFY_THROWS_EXCEPTION(Error, parseGgufFloatOverride("token_embd.weight=banana"));
    GgufExportOptions refused;
    refused.floatTypes = {{"token_embd.weight", GgmlType::Q4_0}};
    QVERIFY_THROWS_EXCEPTION(Error, exportGguf(path("refused.gguf").toStdString(),
                                               tinyPacked(tinyConfig()), {}, refused));
    QVERIFY(!QFile::exists(path("refused.gguf")));
    QVERIFY_THROWS_EXCEPTION(Error, parseGgufFloatOverride("re:([=f16"));
    // Norms stay F32 whatever matches; a 2-D float tensor follows the regex.
    const ModelConfig config = tinyConfig();
    const PackedModelContents p = tinyPacked(config);
    GgufExportOptions options;
    options.floatTypes = {parseGgufFloatOverride("re:.*=f16")};
    const QString file = path("f16.gguf");
    exportGguf(file.toStdString(), p, {}, options);
    const GgufReader g(file.toStdString());
    QCOMPARE(g.findTensor("token_embd.weight")->type, GgmlType::F16);
    QCOMPARE(g.findTensor("blk.0.attn_norm.weight")->type, GgmlType::F32);
    QCOMPARE(g.findTensor("blk.0.attn_q.weight")->type, GgmlType::Q4_0);
    QCOMPARE(g.getInt("general.file_type"), int64_t(2));
  }
};

QTEST_APPLESS_MAIN(TestGgufExport)
#include "test_gguf_export.moc"
