// safetensors reader and writer: round trips, a file from an independent
// Python writer (tests/reference/safetensors_ref.py), our files read by the
// Python reader, sharded indexes, and corrupt files giving clear FileErrors.
#include <ATen/ATen.h>

#include <QDir>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <cstring>

#include "core/common/error.h"
#include "core/io/safetensors.h"
#include "test_support.h"

using namespace lrq;

namespace {

bool writeFile(const QString &path, const std::string &bytes) {
  QFile f(path);
  if (!f.open(QIODevice::WriteOnly))
    return false;
  return f.write(bytes.data(), static_cast<qint64>(bytes.size())) ==
         static_cast<qint64>(bytes.size());
}

// header JSON text + raw data -> file bytes (length prefix, no padding).
std::string safetensorsBytes(const std::string &header, const std::string &data,
                             int64_t lengthOverride = -1) {
  std::string out(8, '\0');
  const uint64_t len = lengthOverride >= 0 ? static_cast<uint64_t>(lengthOverride) : header.size();
  std::memcpy(&out[0], &len, 8);
  return out + header + data;
}

std::vector<uint32_t> floatBits(const at::Tensor &t) {
  const at::Tensor c = t.contiguous();
  std::vector<uint32_t> out(static_cast<size_t>(c.numel()));
  if (!out.empty())
    std::memcpy(out.data(), c.data_ptr<float>(), out.size() * 4);
  return out;
}

std::vector<uint32_t> jsonBits(const QJsonValue &v) {
  std::vector<uint32_t> out;
  for (const QJsonValue &b : v.toArray())
    out.push_back(static_cast<uint32_t>(b.toInteger()));
  return out;
}

std::vector<int64_t> jsonShape(const QJsonValue &v) {
  std::vector<int64_t> out;
  for (const QJsonValue &d : v.toArray())
    out.push_back(d.toInteger());
  return out;
}

} // namespace

class TestSafetensors : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  QString path(const QString &name) const { return dir_.filePath(name); }

  void expectFileError(const QString &name, const std::string &bytes,
                       const QStringList &fragments) {
    QVERIFY(writeFile(path(name), bytes));
    expectReaderError(name, fragments);
  }

  void expectReaderError(const QString &name, const QStringList &fragments) {
    const QString p = path(name);
    try {
      SafetensorsReader reader(p.toStdString());
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

  std::vector<std::pair<std::string, at::Tensor>> sampleTensors() {
    at::manual_seed(3);
    std::vector<std::pair<std::string, at::Tensor>> t;
    t.emplace_back("model.f32", at::randn({4, 5}));
    t.emplace_back("model.f16", (at::randn({3, 2, 8}) * 50).to(at::kHalf));
    t.emplace_back("model.bf16", (at::randn({7}) * 1e3).to(at::kBFloat16));
    t.emplace_back("model.transposed", at::randn({6, 3}).t()); // not contiguous
    t.emplace_back("model.scalar", at::full({}, 2.5f));
    t.emplace_back("model.empty", at::zeros({0, 4}));
    return t;
  }

private slots:
  void initTestCase() { QVERIFY(dir_.isValid()); }

  void writerReaderRoundTrip() {
    const auto tensors = sampleTensors();
    const QString p = path("round.safetensors");
    writeSafetensors(p.toStdString(), tensors, {{"format", "pt"}, {"source", "test"}});
    QVERIFY(QFile::exists(p));
    QCOMPARE(QDir(dir_.path()).entryList({"*.tmp-*"}).size(), 0); // temp file renamed away

    SafetensorsReader r(p.toStdString());
    QCOMPARE(r.dataOffset() % 8, uint64_t(0));
    QCOMPARE(r.metadata().at("format"), std::string("pt"));
    QCOMPARE(r.metadata().at("source"), std::string("test"));
    QCOMPARE(r.tensors().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto &[name, t] = tensors[i];
      QCOMPARE(r.tensors()[i].name, name); // data order = given order
      const at::Tensor back = r.load(name);
      QCOMPARE(back.scalar_type(), at::kFloat);
      QCOMPARE(back.sizes().vec(), t.sizes().vec());
      QVERIFY2(floatBits(back) == floatBits(t.to(at::kFloat)), name.c_str());
    }
    QCOMPARE(r.find("model.f16")->dtype, std::string("F16"));
    QCOMPARE(r.find("model.bf16")->dtype, std::string("BF16"));

    // The independent Python reader sees the same file.
    QString error;
    const QByteArray out = test::runReference("safetensors_ref.py", {"read", p}, &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    const QJsonObject desc = QJsonDocument::fromJson(out).object();
    QCOMPARE(desc["metadata"].toObject()["format"].toString(), QString("pt"));
    const QJsonArray listed = desc["tensors"].toArray();
    QCOMPARE(listed.size(), static_cast<qsizetype>(tensors.size()));
    for (qsizetype i = 0; i < listed.size(); ++i) {
      const QJsonObject t = listed[i].toObject();
      const auto &[name, tensor] = tensors[static_cast<size_t>(i)];
      QCOMPARE(t["name"].toString().toStdString(), name);
      QCOMPARE(jsonShape(t["shape"]), tensor.sizes().vec());
      QVERIFY2(jsonBits(t["bits"]) == floatBits(tensor.to(at::kFloat)), name.c_str());
    }
  }

  void readsIndependentPythonFile() {
    QString error;
    const QByteArray out = test::runReference("safetensors_ref.py", {"write", dir_.path()}, &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    const QJsonObject desc = QJsonDocument::fromJson(out).object();
    SafetensorsReader r(path("ref.safetensors").toStdString());
    QCOMPARE(QString::fromStdString(r.metadata().at("note")),
             desc["metadata"].toObject()["note"].toString());
    const QJsonArray listed = desc["tensors"].toArray();
    QCOMPARE(static_cast<qsizetype>(r.tensors().size()), listed.size());
    int compared = 0;
    for (const QJsonValue &v : listed) {
      const QJsonObject t = v.toObject();
      const std::string name = t["name"].toString().toStdString();
      const SafetensorsTensorInfo *info = r.find(name);
      QVERIFY2(info, name.c_str());
      QCOMPARE(QString::fromStdString(info->dtype), t["dtype"].toString());
      QCOMPARE(info->shape, jsonShape(t["shape"]));
      if (t["bits"].isNull()) { // I64: refused with a clear message
        try {
          r.load(*info);
          QFAIL("no error");
        } catch (const FileError &e) {
          QVERIFY2(QString(e.what()).contains("tensor " + t["name"].toString() + " has dtype I64"),
                   e.what());
        }
        continue;
      }
      QVERIFY2(floatBits(r.load(*info)) == jsonBits(t["bits"]), name.c_str());
      ++compared;
    }
    QCOMPARE(compared, 5);
  }

  void shardedIndex() {
    const QString sub = path("sharded");
    QVERIFY(QDir().mkpath(sub));
    at::manual_seed(5);
    const at::Tensor a = at::randn({3, 3}), b = at::randn({2}), c = at::randn({4});
    writeSafetensors((sub + "/model-00001-of-00002.safetensors").toStdString(),
                     {{"a", a}, {"b", b}});
    writeSafetensors((sub + "/model-00002-of-00002.safetensors").toStdString(), {{"c", c}});
    SafetensorsIndex index;
    index.weightMap = {{"a", "model-00001-of-00002.safetensors"},
                       {"b", "model-00001-of-00002.safetensors"},
                       {"c", "model-00002-of-00002.safetensors"}};
    const std::string indexPath = (sub + "/model.safetensors.index.json").toStdString();
    writeSafetensorsIndex(indexPath, index, 4 * (9 + 2 + 4));

    const SafetensorsIndex back = readSafetensorsIndex(indexPath);
    QCOMPARE(back.weightMap, index.weightMap);
    QCOMPARE(back.shards, (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                    "model-00002-of-00002.safetensors"}));
    for (const auto &[name, file] : back.weightMap) {
      SafetensorsReader r((sub + "/" + QString::fromStdString(file)).toStdString());
      QVERIFY2(r.find(name), name.c_str());
    }
    SafetensorsReader second((sub + "/model-00002-of-00002.safetensors").toStdString());
    QVERIFY(at::equal(second.load("c"), c));

    auto expectIndexError = [&](const QString &name, const std::string &text,
                                const QString &fragment) {
      const QString p = path(name);
      QVERIFY(writeFile(p, text));
      try {
        readSafetensorsIndex(p.toStdString());
        QFAIL("no error");
      } catch (const FileError &e) {
        qInfo("%s", e.what());
        QVERIFY2(QString(e.what()).startsWith(p) && QString(e.what()).contains(fragment), e.what());
      }
    };
    expectIndexError("bad1.index.json", "{ not json", "not valid JSON");
    expectIndexError("bad2.index.json", R"({"metadata": {}})", "weight_map");
    expectIndexError("bad3.index.json", R"({"weight_map": {"a": "../secret.safetensors"}})",
                     "not a file in the same directory");
    expectIndexError("bad4.index.json", R"({"weight_map": {"a": 3}})", "not a file name");
  }

  void corruptFiles() {
    const std::string data(64, '\0');
    expectFileError("short.safetensors", "abc", {"too short"});
    expectFileError("hugelen.safetensors", safetensorsBytes("{}", data, int64_t(1) << 40),
                    {"header length 1099511627776 runs past the end of the file (size"});
    {
      // A header length within the (sparse) file but beyond the limit.
      QVERIFY(writeFile(path("biglen.safetensors"), safetensorsBytes("{}", "", 150'000'000)));
      QVERIFY(QFile::resize(path("biglen.safetensors"), 150'000'100));
      expectReaderError("biglen.safetensors", {"header length 150000000", "100 MB"});
    }
    expectFileError("notjson.safetensors", safetensorsBytes("{\"a\": [", data),
                    {"header is not valid JSON"});
    expectFileError("array.safetensors", safetensorsBytes("[1, 2]", data), {"not a JSON object"});
    expectFileError("nodtype.safetensors",
                    safetensorsBytes(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", data),
                    {"tensor w", "dtype"});
    expectFileError(
        "baddtype.safetensors",
        safetensorsBytes(R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})", data),
        {"tensor w: unknown dtype 'Q4'"});
    expectFileError(
        "range.safetensors",
        safetensorsBytes(R"({"w": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}})",
                         data),
        {"tensor w: data_offsets [0, 128) lie past the end of the file (data section of 64"});
    expectFileError(
        "reversed.safetensors",
        safetensorsBytes(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", data),
        {"tensor w", "end before they begin"});
    expectFileError(
        "size.safetensors",
        safetensorsBytes(R"({"w": {"dtype": "F16", "shape": [3, 4], "data_offsets": [0, 16]}})",
                         data),
        {"tensor w: shape [3, 4] of F16 needs 12 x 2 bytes but data_offsets span 16"});
    expectFileError(
        "overlap.safetensors",
        safetensorsBytes(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                         data),
        {"tensors a and b overlap"});
    expectFileError(
        "negshape.safetensors",
        safetensorsBytes(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", data),
        {"tensor w", "non-negative"});
    expectFileError(
        "overflow.safetensors",
        safetensorsBytes(
            R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})",
            data),
        {"tensor w", "overflow"});
    expectFileError("meta.safetensors", safetensorsBytes(R"({"__metadata__": {"a": 1}})", data),
                    {"__metadata__"});
    try {
      SafetensorsReader r(path("missing.safetensors").toStdString());
      QFAIL("no error");
    } catch (const FileError &e) {
      QVERIFY2(QString(e.what()).contains("missing.safetensors: no such file"), e.what());
    }
  }

  void writerRefusesBadInput() {
    const QString p = path("refused.safetensors");
    writeSafetensors(p.toStdString(), {{"keep", at::ones({2})}});
    QVERIFY_THROWS_EXCEPTION(
        Error,
        writeSafetensors(p.toStdString(), {{"a", at::ones({2})}, {"ids", at::arange(3)}})); // int64
    QVERIFY_THROWS_EXCEPTION(
        Error, writeSafetensors(p.toStdString(), {{"a", at::ones({2})}, {"a", at::ones({2})}}));
    // The earlier file is untouched and no temporary file is left behind.
    SafetensorsReader r(p.toStdString());
    QCOMPARE(r.tensors().size(), size_t(1));
    QCOMPARE(r.tensors()[0].name, std::string("keep"));
    QCOMPARE(QDir(dir_.path()).entryList({"*.tmp-*"}).size(), 0);
    try {
      writeSafetensors(path("no/such/dir/x.safetensors").toStdString(), {{"a", at::ones({1})}});
      QFAIL("no error");
    } catch (const FileError &e) {
      QVERIFY2(QString(e.what()).contains("x.safetensors") &&
                   QString(e.what()).contains("cannot create"),
               e.what());
    }
  }
};

QTEST_GUILESS_MAIN(TestSafetensors)
#include "test_safetensors.moc"
