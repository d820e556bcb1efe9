// GGUF reader and ggml dequantization, checked against gguf-py (the reference
// implementation llama.cpp ships): dequantization of random blocks, a file
// written by gguf-py's GGUFWriter, the real default model's metadata and
// tensor table, and corrupt files that must give one-line FileErrors.
#include <ATen/ATen.h>

#include <QCryptographicHash>
#include <QElapsedTimer>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>

#include "byte_writer.h"
#include "core/common/error.h"
#include "core/io/ggml_quants.h"
#include "core/io/gguf.h"
#include "test_support.h"

using namespace lrq;

namespace {

// --- little-endian byte building ------------------------------------------------

using lrq::test::put;
using lrq::test::putString;

// Builds GGUF files field by field, so tests can get every field wrong.
struct GgufBuilder {
  std::string magic = "GGUF";
  uint32_t version = 3;
  std::string kvs;
  uint64_t kvCount = 0;
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::string data;
    int64_t offsetOverride = -1;
  };
  std::vector<Tensor> tensors;
  int64_t tensorCountOverride = -1;
  uint64_t alignment = 32;

  void kvU32(const std::string &key, uint32_t v) {
    putString(kvs, key);
    put<uint32_t>(kvs, 4);
    put<uint32_t>(kvs, v);
    ++kvCount;
  }
  void kvString(const std::string &key, const std::string &v) {
    putString(kvs, key);
    put<uint32_t>(kvs, 8);
    putString(kvs, v);
    ++kvCount;
  }
  // Raw entry: key, type and already-encoded value bytes.
  void kvRaw(const std::string &key, uint32_t type, const std::string &value) {
    putString(kvs, key);
    put<uint32_t>(kvs, type);
    kvs += value;
    ++kvCount;
  }
  void tensorF32(const std::string &name, std::vector<uint64_t> dims) {
    uint64_t n = 1;
    for (uint64_t d : dims)
      n *= d;
    std::string data;
    for (uint64_t i = 0; i < n; ++i)
      put<float>(data, static_cast<float>(i) * 0.5f - 1.0f);
    tensors.push_back({name, std::move(dims), 0, data});
  }

  std::string build() const {
    std::string out = magic;
    put<uint32_t>(out, version);
    put<uint64_t>(out, tensorCountOverride >= 0 ? static_cast<uint64_t>(tensorCountOverride)
                                                : tensors.size());
    put<uint64_t>(out, kvCount);
    out += kvs;
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const Tensor &t : tensors) {
      offsets.push_back(offset);
      offset += (t.data.size() + alignment - 1) / alignment * alignment;
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const Tensor &t = tensors[i];
      putString(out, t.name);
      put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims)
        put<uint64_t>(out, d);
      put<uint32_t>(out, t.type);
      put<uint64_t>(out,
                    t.offsetOverride >= 0 ? static_cast<uint64_t>(t.offsetOverride) : offsets[i]);
    }
    out.append((alignment - out.size() % alignment) % alignment, '\0');
    for (const Tensor &t : tensors) {
      out += t.data;
      out.append((alignment - t.data.size() % alignment) % alignment, '\0');
    }
    return out;
  }
};

bool writeFile(const QString &path, const std::string &bytes) {
  QFile f(path);
  if (!f.open(QIODevice::WriteOnly))
    return false;
  return f.write(bytes.data(), static_cast<qint64>(bytes.size())) ==
         static_cast<qint64>(bytes.size());
}

std::vector<float> readFloats(const QString &path) {
  QFile f(path);
  if (!f.open(QIODevice::ReadOnly))
    return {};
  const QByteArray bytes = f.readAll();
  std::vector<float> out(static_cast<size_t>(bytes.size()) / sizeof(float));
  std::memcpy(out.data(), bytes.constData(), out.size() * sizeof(float));
  return out;
}

// |a - b| <= 1e-6 |b| elementwise (bit-exact results pass trivially); returns
// the index of the first mismatch or -1.
int64_t firstMismatch(const float *ours, const float *ref, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double a = ours[i], b = ref[i];
    if (std::isnan(a) || std::isnan(b) || std::fabs(a - b) > 1e-6 * std::fabs(b))
      return i;
  }
  return -1;
}

uint16_t halfBits(float x) { // round-to-nearest via ATen's own conversion
  const c10::Half h(x);
  return h.x;
}

// Byte offsets of the f16 scale fields inside one block; random bytes there
// could encode Inf/NaN, so tests write sane values instead.
std::vector<int> scaleFields(GgmlType t) {
  switch (t) {
  case GgmlType::Q4_0:
  case GgmlType::Q5_0:
  case GgmlType::Q8_0:
    return {0};
  case GgmlType::Q4_1:
  case GgmlType::Q5_1:
  case GgmlType::Q4_K:
  case GgmlType::Q5_K:
    return {0, 2};
  case GgmlType::Q2_K:
    return {80, 82};
  case GgmlType::Q3_K:
    return {108};
  case GgmlType::Q6_K:
    return {208};
  default:
    return {};
  }
}

std::string randomBlocks(GgmlType type, int64_t blocks, std::mt19937 &rng) {
  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(type));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-2.0f, 2.0f);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::string out;
  for (int64_t b = 0; b < blocks; ++b) {
    std::string block;
    if (type == GgmlType::F32) {
      put<float>(block, normal(rng));
    } else if (type == GgmlType::F16) {
      put<uint16_t>(block, halfBits(normal(rng)));
    } else if (type == GgmlType::BF16) {
      float f = normal(rng);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      put<uint16_t>(block, static_cast<uint16_t>(bits >> 16));
    } else {
      for (int64_t i = 0; i < traits->typeSize; ++i)
        block.push_back(static_cast<char>(byte(rng)));
      for (int off : scaleFields(type)) {
        const uint16_t h = halfBits(scale(rng));
        std::memcpy(&block[static_cast<size_t>(off)], &h, 2);
      }
    }
    out += block;
  }
  return out;
}

// Re-encodes an array element little-endian in its own type, as
// tests/reference/gguf_dump.py does for its digests.
void encodeItem(const GgufValue &v, GgufValueType type, QByteArray &out) {
  int64_t i = 0;
  uint64_t u = 0;
  double d = 0;
  auto raw = [&out](const void *p, int n) { out.append(static_cast<const char *>(p), n); };
  switch (type) {
  case GgufValueType::String:
    out.append(v.str().data(), static_cast<int>(v.str().size()));
    out.append('\0');
    return;
  case GgufValueType::Bool: {
    bool b = false;
    v.toBool(&b);
    const uint8_t x = b ? 1 : 0;
    raw(&x, 1);
    return;
  }
  case GgufValueType::Float32: {
    v.toDouble(&d);
    const auto f = static_cast<float>(d);
    raw(&f, 4);
    return;
  }
  case GgufValueType::Float64:
    v.toDouble(&d);
    raw(&d, 8);
    return;
  case GgufValueType::UInt8:
  case GgufValueType::UInt16:
  case GgufValueType::UInt32:
  case GgufValueType::UInt64: {
    v.toUInt64(&u);
    const int n = type == GgufValueType::UInt8    ? 1
                  : type == GgufValueType::UInt16 ? 2
                  : type == GgufValueType::UInt32 ? 4
                                                  : 8;
    raw(&u, n); // little-endian host: the low bytes come first
    return;
  }
  default: {
    v.toInt64(&i);
    const int n = type == GgufValueType::Int8    ? 1
                  : type == GgufValueType::Int16 ? 2
                  : type == GgufValueType::Int32 ? 4
                                                 : 8;
    raw(&i, n);
    return;
  }
  }
}

// Compares a value against gguf_sample.py's description (scalars as strings,
// arrays as JSON arrays); returns "" or what differs.
QString compareValue(const GgufValue &v, const QJsonValue &expected) {
  if (v.isArray()) {
    if (!expected.isArray())
      return "array where a scalar was expected";
    const QJsonArray a = expected.toArray();
    if (static_cast<qsizetype>(v.arraySize()) != a.size())
      return QString("array of %1, expected %2").arg(v.arraySize()).arg(a.size());
    for (qsizetype k = 0; k < a.size(); ++k) {
      const QString sub = compareValue(v.item(static_cast<size_t>(k)), a[k]);
      if (!sub.isEmpty())
        return QString("[%1] %2").arg(k).arg(sub);
    }
    return "";
  }
  const QString want = expected.toString();
  QString got;
  if (v.isString()) {
    got = QString::fromStdString(v.str());
  } else if (v.isBool()) {
    bool b = false;
    v.toBool(&b);
    got = b ? "true" : "false";
  } else if (v.isFloat()) {
    double d = 0;
    v.toDouble(&d);
    return d == want.toDouble() ? "" : QString("%1 != %2").arg(d, 0, 'g', 17).arg(want);
  } else {
    int64_t i = 0;
    uint64_t u = 0;
    if (v.toInt64(&i))
      got = QString::number(i);
    else if (v.toUInt64(&u))
      got = QString::number(u);
  }
  return got == want ? "" : QString("'%1' != '%2'").arg(got, want);
}

} // namespace

class TestGguf : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;

  QString path(const QString &name) const { return dir_.filePath(name); }

  // Writes bytes to a file and expects a FileError naming it and containing
  // every fragment.
  void expectFileError(const QString &name, const std::string &bytes,
                       const QStringList &fragments) {
    const QString p = path(name);
    QVERIFY(writeFile(p, bytes));
    try {
      GgufReader reader(p.toStdString());
      QFAIL(qPrintable("no error for " + name));
    } catch (const FileError &e) {
      const QString msg = QString::fromUtf8(e.what());
      qInfo("%s", qPrintable(msg));
      QVERIFY2(msg.startsWith(p + ": "), qPrintable(msg));
      QVERIFY2(!msg.contains('\n'), qPrintable(msg));
      for (const QString &f : fragments)
        QVERIFY2(msg.contains(f), qPrintable(msg + "  (expected: " + f + ")"));
    }
  }

  // A small valid file: some metadata and two F32 tensors.
  static GgufBuilder validBuilder() {
    GgufBuilder b;
    b.kvString("general.architecture", "llama");
    b.kvU32("llama.block_count", 2);
    b.tensorF32("w", {4, 2});
    b.tensorF32("v", {3});
    return b;
  }

private slots:
  void initTestCase() { QVERIFY(dir_.isValid()); }

  void typeTable() {
    // Block geometry must agree with ggml's (spot checks of the public values).
    QCOMPARE(ggmlTypeTraits(3)->typeSize, int64_t(20)); // Q4_1
    QCOMPARE(ggmlTypeTraits(12)->typeSize, int64_t(144));
    QCOMPARE(ggmlTypeTraits(14)->typeSize, int64_t(210));
    QCOMPARE(ggmlTypeTraits(10)->typeSize, int64_t(84));
    QCOMPARE(ggmlTypeTraits(11)->typeSize, int64_t(110));
    QCOMPARE(ggmlTypeTraits(13)->typeSize, int64_t(176));
    QVERIFY(ggmlTypeTraits(99) == nullptr);
    QCOMPARE(ggmlTypeName(99u), std::string("type 99"));
    GgmlType t{};
    QVERIFY(ggmlTypeFromName("q5_k", &t));
    QVERIFY(t == GgmlType::Q5_K);
    QCOMPARE(halfBitsToFloat(0x3C00), 1.0f);
    QCOMPARE(halfBitsToFloat(0xC000), -2.0f);
    QCOMPARE(halfBitsToFloat(0x0001), std::ldexp(1.0f, -24)); // smallest subnormal
    QVERIFY(std::isinf(halfBitsToFloat(0x7C00)));
  }

  // Random blocks of every supported type, dequantized by gguf-py and by us.
  void dequantizationMatchesGgufPy() {
    const std::vector<GgmlType> types = {
        GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
        GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K,
        GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};
    QDir().mkpath(path("dequant"));
    std::mt19937 rng(42);
    std::map<GgmlType, std::string> inputs;
    for (GgmlType t : types) {
      const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(t));
      QVERIFY(traits && traits->dequantizable);
      // 96 blocks (or 4096 scalars) so the parallel path splits work.
      const int64_t blocks = traits->blockSize == 1 ? 4096 : 96;
      inputs[t] = randomBlocks(t, blocks, rng);
      QVERIFY(writeFile(path("dequant/%1.bin").arg(traits->name), inputs[t]));
    }
    QString error;
    const QByteArray out = test::runReference("gguf_dequant.py", {path("dequant")}, &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    QCOMPARE(out.trimmed().toInt(), static_cast<int>(types.size()));

    for (GgmlType t : types) {
      const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(t));
      const std::vector<float> ref = readFloats(path("dequant/%1.f32").arg(traits->name));
      const std::string &raw = inputs[t];
      const int64_t n = static_cast<int64_t>(raw.size()) / traits->typeSize * traits->blockSize;
      QCOMPARE(static_cast<int64_t>(ref.size()), n);
      std::vector<float> ours(static_cast<size_t>(n));
      dequantizeGgml(t, reinterpret_cast<const uint8_t *>(raw.data()), ours.data(), n);
      const int64_t bad = firstMismatch(ours.data(), ref.data(), n);
      QVERIFY2(bad < 0, qPrintable(QString("%1 value %2: ours %3, gguf-py %4")
                                       .arg(traits->name)
                                       .arg(bad)
                                       .arg(ours[static_cast<size_t>(std::max<int64_t>(bad, 0))])
                                       .arg(ref[static_cast<size_t>(std::max<int64_t>(bad, 0))])));
      // The values are not degenerate (all-zero output would match nothing above,
      // but make sure the spread is real).
      float maxAbs = 0;
      for (float v : ref)
        maxAbs = std::max(maxAbs, std::fabs(v));
      QVERIFY2(maxAbs > 0.1f, traits->name);
      // The parallel tensor path gives the same values, in [rows, cols] shape.
      const int64_t cols = traits->blockSize == 1 ? 64 : traits->blockSize;
      const at::Tensor tensor =
          dequantizeGgmlTensor(t, reinterpret_cast<const uint8_t *>(raw.data()), {n / cols, cols});
      QCOMPARE(tensor.size(0), n / cols);
      QCOMPARE(tensor.size(1), cols);
      QVERIFY(std::memcmp(tensor.data_ptr<float>(), ours.data(), ours.size() * 4) == 0);
    }
  }

  void unsupportedTypeIsAnError() {
    std::vector<float> out(256);
    const std::string raw(66, '\0');
    QVERIFY_THROWS_EXCEPTION(Error, dequantizeGgml(GgmlType::IQ2_XXS,
                                                   reinterpret_cast<const uint8_t *>(raw.data()),
                                                   out.data(), 256));
    // n not a multiple of the block size
    QVERIFY_THROWS_EXCEPTION(Error, dequantizeGgml(GgmlType::Q4_0,
                                                   reinterpret_cast<const uint8_t *>(raw.data()),
                                                   out.data(), 33));
  }

  // A file written by gguf-py's GGUFWriter: every metadata type, nested
  // arrays, alignment 64, tensors of every type.
  void readsGgufPyWriterFile() {
    QString error;
    const QString out = path("sample");
    const QByteArray printed = test::runReference("gguf_sample.py", {out}, &error);
    QVERIFY2(!printed.isEmpty(), qPrintable(error));
    QFile jf(out + "/sample.json");
    QVERIFY(jf.open(QIODevice::ReadOnly));
    const QJsonObject desc = QJsonDocument::fromJson(jf.readAll()).object();

    GgufReader g((out + "/sample.gguf").toStdString());
    QCOMPARE(g.version(), 3u);
    QCOMPARE(static_cast<int>(g.alignment()), desc["alignment"].toInt());
    QCOMPARE(g.dataOffset() % 64, uint64_t(0));

    const QJsonArray meta = desc["metadata"].toArray();
    QCOMPARE(static_cast<qsizetype>(g.metadata().size()), meta.size());
    for (const QJsonValue &mv : meta) {
      const QJsonObject m = mv.toObject();
      const std::string key = m["key"].toString().toStdString();
      const GgufValue *v = g.find(key);
      QVERIFY2(v, key.c_str());
      QCOMPARE(QString(ggufValueTypeName(v->type())), m["type"].toString());
      if (v->isArray())
        QCOMPARE(QString(ggufValueTypeName(v->elementType())), m["element_type"].toString());
      const QString diff = compareValue(*v, m["value"]);
      QVERIFY2(diff.isEmpty(), qPrintable(QString::fromStdString(key) + ": " + diff));
    }
    // Typed getters and their errors.
    QCOMPARE(g.getInt("test.i8"), int64_t(-100));
    QCOMPARE(g.getInt("test.u32"), int64_t(4000000000));
    QCOMPARE(g.getFloat("test.f32"), static_cast<double>(3.14159f));
    QCOMPARE(g.getBool("test.bool_true", false), true);
    QCOMPARE(g.getInt("test.missing", 7), int64_t(7));
    QCOMPARE(g.getStringArray("test.arr_str").size(), size_t(3));
    QCOMPARE(g.getIntArray("test.arr_i32"), (std::vector<int64_t>{1, -2, 3, -4}));
    try {
      g.getInt("test.u64"); // 2^64 - 2 does not fit an int64
      QFAIL("no error");
    } catch (const FileError &e) {
      QVERIFY(QString(e.what()).contains("test.u64"));
    }
    try {
      g.getString("test.i32");
      QFAIL("no error");
    } catch (const FileError &e) {
      QVERIFY2(QString(e.what()).contains("test.i32") && QString(e.what()).contains("int32"),
               e.what());
    }
    QVERIFY_THROWS_EXCEPTION(FileError, g.getInt("test.absent"));

    const QJsonArray tensors = desc["tensors"].toArray();
    QCOMPARE(static_cast<qsizetype>(g.tensors().size()), tensors.size());
    for (qsizetype i = 0; i < tensors.size(); ++i) {
      const QJsonObject t = tensors[i].toObject();
      const GgufTensorInfo &info = g.tensors()[static_cast<size_t>(i)];
      QCOMPARE(QString::fromStdString(info.name), t["name"].toString());
      QCOMPARE(QString::fromStdString(info.typeName()), t["type"].toString());
      std::vector<int64_t> shape;
      for (const QJsonValue &d : t["shape"].toArray())
        shape.push_back(d.toInteger());
      QCOMPARE(info.shape(), shape);
      QCOMPARE(info.offset % 64, uint64_t(0));
      const at::Tensor ours = g.loadTensor(info);
      QCOMPARE(ours.sizes().vec(), shape);
      const std::vector<float> ref = readFloats(out + "/" + t["file"].toString());
      QCOMPARE(static_cast<int64_t>(ref.size()), ours.numel());
      const int64_t bad = firstMismatch(ours.data_ptr<float>(), ref.data(), ours.numel());
      QVERIFY2(bad < 0, qPrintable(t["name"].toString() + " differs at " + QString::number(bad)));
    }
  }

  // The real default model: metadata and tensor table as gguf-py reads them.
  void defaultModelMatchesGgufPy() {
    const std::string model = test::defaultModelPath();
    QElapsedTimer timer;
    timer.start();
    GgufReader g(model);
    qInfo("parsed %zu metadata entries and %zu tensor infos in %lld ms", g.metadata().size(),
          g.tensors().size(), static_cast<long long>(timer.elapsed()));
    QString error;
    const QByteArray printed =
        test::runReference("gguf_dump.py", {QString::fromStdString(model)}, &error);
    QVERIFY2(!printed.isEmpty(), qPrintable(error));
    const QJsonObject desc = QJsonDocument::fromJson(printed).object();
    QCOMPARE(static_cast<int>(g.version()), desc["version"].toInt());
    QCOMPARE(static_cast<qint64>(g.alignment()), desc["alignment"].toInteger());
    QCOMPARE(static_cast<qint64>(g.dataOffset()), desc["data_offset"].toInteger());

    const QJsonArray meta = desc["metadata"].toArray();
    QCOMPARE(static_cast<qsizetype>(g.metadata().size()), meta.size());
    for (qsizetype i = 0; i < meta.size(); ++i) {
      const QJsonObject m = meta[i].toObject();
      const auto &[key, v] = g.metadata()[static_cast<size_t>(i)];
      QCOMPARE(QString::fromStdString(key), m["key"].toString()); // file order kept
      QCOMPARE(QString(ggufValueTypeName(v.type())), m["type"].toString());
      if (v.isArray()) {
        QCOMPARE(QString(ggufValueTypeName(v.elementType())), m["element_type"].toString());
        const QJsonObject summary = m["value"].toObject();
        QCOMPARE(static_cast<qint64>(v.arraySize()), summary["count"].toInteger());
        QByteArray encoded;
        for (size_t k = 0; k < v.arraySize(); ++k)
          encodeItem(v.item(k), v.elementType(), encoded);
        const QByteArray digest =
            QCryptographicHash::hash(encoded, QCryptographicHash::Sha256).toHex();
        QVERIFY2(digest == summary["digest"].toString().toLatin1(), key.c_str());
      } else {
        const QString diff = compareValue(v, m["value"]);
        QVERIFY2(diff.isEmpty(), qPrintable(QString::fromStdString(key) + ": " + diff));
      }
    }

    const QJsonArray tensors = desc["tensors"].toArray();
    QCOMPARE(static_cast<qsizetype>(g.tensors().size()), tensors.size());
    for (qsizetype i = 0; i < tensors.size(); ++i) {
      const QJsonObject t = tensors[i].toObject();
      const GgufTensorInfo &info = g.tensors()[static_cast<size_t>(i)];
      QCOMPARE(QString::fromStdString(info.name), t["name"].toString());
      QCOMPARE(QString::fromStdString(info.typeName()), t["type"].toString());
      std::vector<uint64_t> ne;
      for (const QJsonValue &d : t["ne"].toArray())
        ne.push_back(static_cast<uint64_t>(d.toInteger()));
      QCOMPARE(info.dims, ne);
      QCOMPARE(static_cast<qint64>(g.dataOffset() + info.offset), t["offset"].toInteger());
      QCOMPARE(static_cast<qint64>(info.nbytes), t["nbytes"].toInteger());
    }
    // What the project knows about this model.
    QCOMPARE(g.getString("general.architecture"), std::string("llama"));
    QCOMPARE(g.getInt("llama.block_count"), int64_t(30));
    QCOMPARE(g.findTensor("token_embd.weight")->typeName(), std::string("Q8_0"));
    QCOMPARE(g.findTensor("blk.0.attn_q.weight")->typeName(), std::string("Q4_1"));
    QCOMPARE(g.findTensor("blk.0.attn_q.weight")->shape(), (std::vector<int64_t>{576, 576}));
    QVERIFY(g.findTensor("output.weight") == nullptr);
  }

  void validBuilderFileReads() {
    GgufBuilder b = validBuilder();
    const QString p = path("valid.gguf");
    QVERIFY(writeFile(p, b.build()));
    GgufReader g(p.toStdString());
    QCOMPARE(g.tensors().size(), size_t(2));
    const at::Tensor w = g.loadTensor("w");
    QCOMPARE(w.sizes().vec(), (std::vector<int64_t>{2, 4})); // ne = [4, 2] reversed
    QCOMPARE(w[1][0].item<float>(), 4 * 0.5f - 1.0f);        // element 4 in file order
    b.version = 2;
    QVERIFY(writeFile(p, b.build()));
    QCOMPARE(GgufReader(p.toStdString()).version(), 2u);
  }

  void corruptFiles() {
    {
      GgufBuilder b = validBuilder();
      b.magic = "GGML";
      expectFileError("magic.gguf", b.build(), {"bad magic"});
    }
    expectFileError("empty.gguf", "", {"too short"});
    {
      GgufBuilder b = validBuilder();
      b.version = 1;
      expectFileError("v1.gguf", b.build(), {"version 1", "not supported"});
      b.version = 7;
      expectFileError("v7.gguf", b.build(), {"unsupported GGUF version 7"});
      b.version = 0x03000000; // a big-endian file read little-endian
      expectFileError("vbig.gguf", b.build(), {"big-endian"});
    }
    {
      const std::string full = validBuilder().build();
      expectFileError("truncated.gguf", full.substr(0, 12),
                      {"tensor count", "past the end of the file (size 12)"});
    }
    {
      GgufBuilder b;
      put<uint64_t>(b.kvs, uint64_t(1) << 40); // key length far past the end
      b.kvs += "abc";
      b.kvCount = 1;
      expectFileError("keylen.gguf", b.build(), {"length 1099511627776", "past the end"});
    }
    {
      GgufBuilder b = validBuilder();
      std::string value;
      put<uint64_t>(value, 1000000); // string value longer than the file
      value += "short";
      b.kvRaw("general.name", 8, value);
      expectFileError("strlen.gguf", b.build(), {"general.name", "length 1000000", "past the end"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensorCountOverride = int64_t(1) << 50;
      expectFileError("tcount.gguf", b.build(), {"tensor count 1125899906842624", "impossible"});
    }
    {
      GgufBuilder b = validBuilder();
      std::string value;
      put<uint32_t>(value, 4);                 // uint32 elements
      put<uint64_t>(value, uint64_t(1) << 60); // absurd count
      b.kvRaw("tokenizer.ggml.token_type", 9, value);
      expectFileError("arrcount.gguf", b.build(), {"tokenizer.ggml.token_type", "array of"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensors[0].offsetOverride = 4096;
      expectFileError("offset.gguf", b.build(),
                      {"tensor w: data [", "lies past the end of the file (size"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensors[0].offsetOverride = static_cast<int64_t>(uint64_t(1) << 62);
      expectFileError("offset2.gguf", b.build(), {"tensor w", "past the end of the file"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensors[1].offsetOverride = 4; // not aligned
      expectFileError("misaligned.gguf", b.build(), {"tensor v", "alignment"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensors[1].offsetOverride = 0; // shares bytes with w
      expectFileError("overlap.gguf", b.build(), {"overlap"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensors[0].type = 99;
      expectFileError("ttype.gguf", b.build(), {"tensor w: unknown tensor type 99"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensors[0].dims = {uint64_t(1) << 40, uint64_t(1) << 40};
      expectFileError("dims.gguf", b.build(), {"tensor w", "overflow"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensors[0].dims = {1, 1, 1, 1, 8};
      expectFileError("ndims.gguf", b.build(), {"tensor w: 5 dimensions"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensors[0].type = 2; // Q4_0 with a row of 4 values
      expectFileError("blocksize.gguf", b.build(), {"tensor w", "block size 32"});
    }
    {
      GgufBuilder b = validBuilder();
      b.kvU32("general.alignment", 24);
      expectFileError("align.gguf", b.build(), {"general.alignment", "power of two"});
    }
    {
      GgufBuilder b = validBuilder();
      b.kvRaw("weird", 42, "xxxx");
      expectFileError("vtype.gguf", b.build(), {"weird", "unknown value type 42"});
    }
    {
      GgufBuilder b = validBuilder();
      b.kvU32("llama.block_count", 3);
      expectFileError("dupkey.gguf", b.build(), {"duplicate metadata key llama.block_count"});
    }
    {
      GgufBuilder b = validBuilder();
      b.tensors.push_back(b.tensors[1]);
      expectFileError("dupname.gguf", b.build(), {"duplicate tensor name v"});
    }
    {
      // Arrays nested deeper than any real file: refused, not a stack overflow.
      GgufBuilder b = validBuilder();
      std::string value;
      for (int i = 0; i < 100; ++i) {
        put<uint32_t>(value, 9);
        put<uint64_t>(value, 1);
      }
      put<uint32_t>(value, 4);
      put<uint64_t>(value, 0);
      b.kvRaw("deep", 9, value);
      expectFileError("deep.gguf", b.build(), {"deep", "nested"});
    }
    {
      GgufBuilder b = validBuilder();
      b.kvRaw("flag", 7, std::string(1, '\x05'));
      expectFileError("bool.gguf", b.build(), {"flag", "bool"});
    }
    // Missing and unreadable paths.
    try {
      GgufReader g(path("does-not-exist.gguf").toStdString());
      QFAIL("no error");
    } catch (const FileError &e) {
      QVERIFY2(QString(e.what()).contains("does-not-exist.gguf: no such file"), e.what());
    }
    try {
      GgufReader g(dir_.path().toStdString());
      QFAIL("no error");
    } catch (const FileError &e) {
      QVERIFY2(QString(e.what()).contains("directory"), e.what());
    }
  }

  void knownButUnsupportedTypeFailsOnLoad() {
    GgufBuilder b;
    b.tensors.push_back({"iq", {256, 1}, 16, std::string(66, '\0')}); // IQ2_XXS
    const QString p = path("iq.gguf");
    QVERIFY(writeFile(p, b.build()));
    GgufReader g(p.toStdString()); // the table is fine
    try {
      g.loadTensor("iq");
      QFAIL("no error");
    } catch (const FileError &e) {
      const QString msg = e.what();
      QVERIFY2(msg.startsWith(p) && msg.contains("tensor iq has type IQ2_XXS") &&
                   msg.contains("cannot be dequantized"),
               e.what());
    }
  }

  // Every truncation and thousands of random byte changes of a real file:
  // each either reads or gives a FileError; nothing else, never a crash.
  void truncationsAndMutationsNeverCrash() {
    const std::string full = validBuilder().build();
    int errors = 0, ok = 0;
    auto attempt = [&](const std::string &bytes) {
      const QString p = path("fuzz.gguf");
      if (!writeFile(p, bytes))
        return false;
      try {
        GgufReader g(p.toStdString());
        for (const GgufTensorInfo &t : g.tensors())
          (void)g.loadTensor(t);
        ++ok;
        return true;
      } catch (const FileError &e) {
        if (!QString(e.what()).startsWith(p))
          qWarning("unexpected message: %s", e.what());
        ++errors;
        return false;
      }
    };
    // The last tensor (3 floats) ends 20 bytes of padding before the end:
    // any shorter file must be refused.
    const size_t dataEnd = full.size() - 20;
    for (size_t len = 0; len < full.size(); ++len)
      QCOMPARE(attempt(full.substr(0, len)), len >= dataEnd);
    std::mt19937 rng(7);
    std::uniform_int_distribution<size_t> pos(0, full.size() - 1);
    std::uniform_int_distribution<int> byte(0, 255);
    for (int i = 0; i < 1200; ++i) {
      std::string bytes = full;
      for (int k = 0; k < 3; ++k)
        bytes[pos(rng)] = static_cast<char>(byte(rng));
      attempt(bytes);
    }
    qInfo("mutations: %d read, %d refused", ok, errors);
    QVERIFY(errors > 50);
  }
};

QTEST_GUILESS_MAIN(TestGguf)
#include "test_gguf.moc"
