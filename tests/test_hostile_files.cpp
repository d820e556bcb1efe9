// Model directories from strangers and model files that change under a run.
// - weight_map names that leave the directory stay refused;
// - symbolic links (the HF hub cache links snapshots to blobs) keep working;
// - a FIFO, a directory, /dev/zero or a broken link given as a shard, a
//   config or a tokenizer is named for what it is, never "no such file" and
//   never a hang (each case runs in a forked child with a time limit);
// - a model file truncated while mapped is an lrq::Error, not SIGBUS, and one
//   rewritten in place is an lrq::Error too (the risky part runs in a forked
//   child, so a regression fails the check).
#include <ATen/ATen.h>
#include <QDir>
#include <QFile>
#include <QTemporaryDir>
#include <QtTest>

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/common/progress.h"
#include "core/common/text_escape.h"
#include "core/io/export.h"
#include "core/io/gguf.h"
#include "core/io/gguf_writer.h"
#include "core/io/model_loader.h"
#include "core/io/safetensors.h"
#include "forked_child.h"
#include "tiny_model_files.h"

using namespace lrq;
using lrq::test::runInForkedChild;

namespace {

// Truncates a file to `bytes` the first time a loader reports progress: the
// file is then shorter than its mapping for every tensor still to come.
// With rewrite, the bytes from `bytes` on are zeroed in place instead: same
// size, new modification time.
struct TruncateOnProgress : ProgressObserver {
  std::string path;
  int64_t bytes = 0;
  int64_t afterSteps = 1;
  bool rewrite = false;
  bool done = false;
  void progress(int64_t step, int64_t, const std::string &) override {
    if (done || step < afterSteps)
      return;
    if (rewrite) {
      QFile f(QString::fromStdString(path));
      done = f.open(QIODevice::ReadWrite) && f.seek(bytes) &&
             f.write(QByteArray(int(f.size() - bytes), '\0')) == f.size() - bytes;
    } else {
      done = ::truncate(path.c_str(), off_t(bytes)) == 0;
    }
    if (!done)
      throw Error("test: cannot change " + path);
  }
};

// Dates a file back a day, so that a change now is a new modification time
// whatever the file system's timestamp granularity.
void ageFile(const std::string &path) {
  struct timespec times[2];
  ::clock_gettime(CLOCK_REALTIME, &times[0]);
  times[0].tv_sec -= 86400;
  times[1] = times[0];
  QCOMPARE(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

double checksum(const std::map<std::string, at::Tensor> &tensors) {
  double s = 0;
  for (const auto &[name, t] : tensors)
    s += t.to(at::kDouble).abs().sum().item<double>();
  return s;
}

} // namespace

class TestHostileFiles : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  QString path(const QString &name) const { return tmp_.filePath(name); }

private slots:
  void initTestCase() {
    QVERIFY(tmp_.isValid());
    at::set_num_threads(1); // the forked children below run LibTorch code
  }

  // --- weight_map names ---------------------------------------------------------------

  void weightMapNamesThatLeaveTheDirectoryAreRefused() {
    const QString dir = path("escape");
    lrq::test::writeTinyHfDirectory(dir, /*sharded=*/true);
    const std::vector<std::string> names = {"../model-00001-of-00002.safetensors",
                                            "/etc/passwd",
                                            "sub/model.safetensors",
                                            "./model-00001-of-00002.safetensors",
                                            "..",
                                            ".",
                                            "",
                                            std::string("model-00001-of-00002.safetensors\0x", 34),
                                            std::string("x\0/../../etc/passwd", 19)};
    for (const std::string &name : names) {
      nlohmann::json index = {{"weight_map", {{"model.embed_tokens.weight", name}}}};
      const std::string indexPath = (dir + "/model.safetensors.index.json").toStdString();
      lrq::test::writeFile(QString::fromStdString(indexPath), index.dump());
      const QString label = QString::fromStdString(printableText(name));
      try {
        readSafetensorsIndex(indexPath);
        QFAIL(qPrintable("accepted the shard name '" + label + "'"));
      } catch (const FileError &e) {
        const QString m = QString::fromUtf8(e.what());
        QVERIFY2(m.contains("not a file in the same directory"), qPrintable(label + ": " + m));
        QVERIFY2(!m.contains(QChar(0)), qPrintable(m)); // the NUL is shown escaped
      }
      // Through the loader as well (nothing outside the directory is opened).
      const QString viaLoader = runInForkedChild([&] { loadModel(dir.toStdString()); });
      QVERIFY2(viaLoader.contains("not a file in the same directory"),
               qPrintable(label + ": " + viaLoader));
    }
  }

  // --- symbolic links: the HF hub cache layout ------------------------------------------

  void hubCacheSymlinksLoad() {
    // snapshots/<rev>/<file> -> ../../blobs/<hash>, as huggingface_hub lays it out.
    const QString source = path("hub-source");
    const std::map<std::string, at::Tensor> written =
        lrq::test::writeTinyHfDirectory(source, /*sharded=*/true);
    const QString cache = path("hub-cache");
    QVERIFY(QDir().mkpath(cache + "/blobs"));
    QVERIFY(QDir().mkpath(cache + "/snapshots/0123abcd"));
    int blob = 0;
    for (const QString &name : QDir(source).entryList(QDir::Files)) {
      const QString hash = QString("b%1e5f").arg(++blob);
      QVERIFY(QFile::rename(source + "/" + name, cache + "/blobs/" + hash));
      const QString link = cache + "/snapshots/0123abcd/" + name;
      QCOMPARE(::symlink(("../../blobs/" + hash).toUtf8().constData(), link.toUtf8().constData()),
               0);
    }
    QCOMPARE(blob, 5); // config, tokenizer, index and two shards: all links
    const std::string snapshot = (cache + "/snapshots/0123abcd").toStdString();
    const LoadedModel m = loadModel(snapshot);
    QCOMPARE(m.tensors.size(), written.size());
    for (const auto &[name, t] : written)
      QVERIFY2(at::equal(m.tensors.at(name), t), name.c_str());
    QVERIFY(m.tokenizer != nullptr);
    QCOMPARE(int64_t(m.tokenizer->vocabSize()), int64_t(256));
    // A link to the snapshot directory itself works too.
    const QString dirLink = path("hub-link");
    QCOMPARE(::symlink(snapshot.c_str(), dirLink.toUtf8().constData()), 0);
    QCOMPARE(loadModel(dirLink.toStdString()).tensors.size(), written.size());
  }

  // --- FIFOs, directories, devices, broken links ------------------------------------------

  void nonRegularFilesAreNamedNotWaitedOn() {
    struct Kind {
      const char *name;
      QString expected; // after "<path>: "
    };
    const std::vector<Kind> kinds = {
        {"fifo", "is a FIFO, not a regular file"},
        {"directory", "is a directory, not a regular file"},
        {"devzero", "is a symbolic link to /dev/zero, which is a character device, not a "
                    "regular file"},
        {"broken", "is a symbolic link to ../blobs/gone, which does not exist"}};
    struct Role {
      const char *file;
      bool sharded;
      bool loadTheFile; // load that file's path instead of the directory
    };
    const std::vector<Role> roles = {{"config.json", false, false},
                                     {"tokenizer.json", false, false},
                                     {"tokenizer_config.json", false, false},
                                     {"model.safetensors", false, false},
                                     {"model.safetensors", false, true},
                                     {"config.json", false, true},
                                     {"model.safetensors.index.json", true, false},
                                     {"model-00002-of-00002.safetensors", true, false},
                                     {"m.gguf", false, false}};
    int cases = 0;
    QStringList wrong; // every case is tried, then all that went wrong are listed
    for (const Role &role : roles) {
      for (const Kind &kind : kinds) {
        if (role.loadTheFile && QString(kind.name) == "directory")
          continue; // a directory named directly is a model directory
        const QString dir = path(QString("odd-%1-%2-%3").arg(cases).arg(role.file, kind.name));
        if (QString(role.file) == "m.gguf")
          QVERIFY(QDir().mkpath(dir)); // a directory holding only the odd .gguf
        else
          lrq::test::writeTinyHfDirectory(dir, role.sharded);
        const QString file = dir + "/" + role.file;
        QFile::remove(file);
        const QByteArray f = file.toUtf8();
        if (QString(kind.name) == "fifo")
          QCOMPARE(::mkfifo(f.constData(), 0644), 0);
        else if (QString(kind.name) == "directory")
          QVERIFY(QDir().mkpath(file));
        else if (QString(kind.name) == "devzero")
          QCOMPARE(::symlink("/dev/zero", f.constData()), 0);
        else
          QCOMPARE(::symlink("../blobs/gone", f.constData()), 0);
        const std::string target = (role.loadTheFile ? file : dir).toStdString();
        const QString result = runInForkedChild([&] { loadModel(target); }, 30);
        const QString label =
            QString("%1 as %2%3: ")
                .arg(kind.name, role.file, role.loadTheFile ? " (named directly)" : "");
        if (!result.startsWith("error: ") || !result.contains(file + ": " + kind.expected) ||
            result.contains("no such file"))
          wrong << label + result;
        ++cases;
      }
    }
    QCOMPARE(cases, int(roles.size() * kinds.size()) - 2);
    QVERIFY2(wrong.isEmpty(), qPrintable(QString("%1 of %2 cases:\n").arg(wrong.size()).arg(cases) +
                                         wrong.join("\n")));
    qInfo("%d odd files in %zu roles, each named for what it is", cases, roles.size());
  }

  // --- model files changed under a run ---------------------------------------------------

  // Each tensor is copied out of the file as it loads: truncating the file in
  // the middle of the load is an error naming it, not SIGBUS; rewriting it in
  // place (same size) is an error too, not a model of mixed weights.
  void safetensorsChangedWhileLoading() {
    for (const at::ScalarType storage : {at::kFloat, at::kHalf}) {
      const QString dir = path(storage == at::kFloat ? "trunc-f32" : "trunc-f16");
      lrq::test::writeTinyHfDirectory(dir, /*sharded=*/false, storage);
      const std::string file = (dir + "/model.safetensors").toStdString();
      const int64_t dataOffset = int64_t(SafetensorsReader(file).dataOffset());
      for (const bool rewrite : {false, true}) {
        ageFile(file);
        const QString result = runInForkedChild([&] {
          TruncateOnProgress changing;
          changing.path = file;
          changing.bytes = dataOffset; // the header stays, the data is gone or zeroed
          changing.rewrite = rewrite;
          loadModel(dir.toStdString(), &changing);
        });
        QVERIFY2(result.startsWith("error: " + QString::fromStdString(file) +
                                   ": changed while being read: " +
                                   (rewrite ? "modified after it was opened" : "it is now")),
                 qPrintable(result));
        if (rewrite)
          continue;
        lrq::test::writeTinyHfDirectory(dir, /*sharded=*/false, storage); // whole again
      }
    }
  }

  // What a run does next once the model is loaded (every tensor read again)
  // does not touch the file: the loaded tensors are copies.
  void loadedModelOutlivesItsFile() {
    const QString dir = path("outlive");
    const std::map<std::string, at::Tensor> written =
        lrq::test::writeTinyHfDirectory(dir, /*sharded=*/false);
    const std::string file = (dir + "/model.safetensors").toStdString();
    const double expected = checksum(written);
    const QString result = runInForkedChild([&] {
      const LoadedModel m = loadModel(dir.toStdString());
      if (::truncate(file.c_str(), 0) != 0)
        throw Error("test: cannot truncate");
      if (checksum(m.tensors) != expected)
        throw Error("test: tensors changed");
    });
    QCOMPARE(result, QString("no error"));
  }

  void ggufTruncatedWhileLoading() {
    // One F32 and one Q8_0 tensor: both dequantization paths read the file.
    const std::string file = path("trunc.gguf").toStdString();
    const std::vector<GgufTensorSpec> specs = {{"a.weight", {64, 16}, GgmlType::F32},
                                               {"b.weight", {64, 16}, GgmlType::Q8_0}};
    auto writeIt = [&] {
      std::mt19937 rng(4);
      GgufWriteOptions options;
      options.overwrite = true;
      writeGgufFile(
          file, {{"general.architecture", ggufString("llama")}}, specs,
          [&](size_t i) {
            std::vector<uint8_t> bytes(size_t(ggufTensorBytes(specs[i])));
            for (size_t b = 0; b < bytes.size(); ++b) // Q8_0: small finite f16 steps
              bytes[b] = uint8_t(i == 1 && b % 34 == 1 ? 0x20 : rng() % 128);
            return bytes;
          },
          options);
    };
    writeIt();
    for (const char *tensor : {"a.weight", "b.weight"}) {
      const QString result = runInForkedChild([&] {
        GgufReader g(file);
        g.loadTensor(tensor); // reads fine before the change
        if (::truncate(file.c_str(), off_t(g.dataOffset())) != 0)
          throw Error("test: cannot truncate");
        g.loadTensor(tensor);
      });
      QVERIFY2(result.startsWith("error: " + QString::fromStdString(file) +
                                 ": changed while being read"),
               qPrintable(QString(tensor) + ": " + result));
      writeIt(); // the file back for the next tensor
    }
  }

  // The packed reader's integer codes come through the same checked read.
  void packedExportTruncatedWhileLoading() {
    const std::string file = path("trunc-packed.safetensors").toStdString();
    const PackedModelContents contents = lrq::test::tinyPackedContents();
    writePackedModel(file, contents);
    const PackedModel intact = loadPackedModel(file);
    QCOMPARE(intact.quantizedNames.size(), contents.quantized.size());
    const int64_t dataOffset = int64_t(SafetensorsReader(file).dataOffset());
    const QString result = runInForkedChild([&] {
      TruncateOnProgress truncating;
      truncating.path = file;
      truncating.bytes = dataOffset;
      // After the last float tensor: what is left to read is the packed codes.
      truncating.afterSteps = int64_t(contents.tensors.size());
      loadPackedModel(file, &truncating);
    });
    QVERIFY2(
        result.startsWith("error: " + QString::fromStdString(file) + ": changed while being read"),
        qPrintable(result));
  }
};

QTEST_GUILESS_MAIN(TestHostileFiles)
#include "test_hostile_files.moc"
