// Disks that fill up. Every writer of the workbench (the GGUF, packed and HF
// exports, the reconstruction checkpoint, the hidden-state spill, the tensor
// spill of the reference and the run store) must fail with an lrq::Error naming the path, keep what
// was there before and leave no partial or temporary file.
//
// A full disk without root or a mount: RLIMIT_FSIZE, lowered for this process
// while the writer runs (SIGXFSZ ignored), makes every write past the limit
// fail with EFBIG, and a write across it short, exactly as a filling disk
// does with ENOSPC. The limit is restored after each case.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <QDir>
#include <QDirIterator>
#include <QFile>
#include <QTemporaryDir>
#include <QtTest>

#include <signal.h>
#include <sqlite3.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/common/progress.h"
#include "core/io/export.h"
#include "core/io/gguf_export.h"
#include "core/model/decoder.h"
#include "core/model/tensor_spill.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"
#include "core/recon/hidden_state_store.h"
#include "core/runs/run_store.h"
#include "core/session/model_session.h"
#include "tiny_model_files.h"

using namespace lrq;

namespace {

// Writes past `bytes` in any one file fail with EFBIG while this lives.
class FileSizeLimit {
public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &limit) == 0;
    savedHandler_ = ::signal(SIGXFSZ, SIG_IGN);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    ::signal(SIGXFSZ, savedHandler_);
  }
  bool ok() const { return ok_; }
  FileSizeLimit(const FileSizeLimit &) = delete;
  FileSizeLimit &operator=(const FileSizeLimit &) = delete;

private:
  rlimit saved_{};
  sighandler_t savedHandler_ = SIG_DFL;
  bool ok_ = false;
};

// The message of the lrq::Error f throws under the limit ("" when none).
template <typename F> QString errorUnderLimit(rlim_t bytes, F f) {
  FileSizeLimit limit(bytes);
  if (!limit.ok())
    return "setrlimit failed";
  try {
    f();
  } catch (const Error &e) {
    return QString::fromUtf8(e.what());
  }
  return {};
}

// Every file below dir, relative, with its size (temporaries and hidden files too).
QMap<QString, qint64> filesBelow(const QString &dir) {
  QMap<QString, qint64> out;
  QDirIterator it(dir, QDir::Files | QDir::Hidden | QDir::System | QDir::NoDotAndDotDot,
                  QDirIterator::Subdirectories);
  while (it.hasNext()) {
    it.next();
    out[QDir(dir).relativeFilePath(it.filePath())] = it.fileInfo().size();
  }
  return out;
}

QByteArray readAll(const QString &path) {
  QFile f(path);
  return f.open(QIODevice::ReadOnly) ? f.readAll() : QByteArray();
}

const char *kTooLarge = "File too large"; // strerror(EFBIG)

struct CancelAt : ProgressObserver {
  CancelToken *cancel = nullptr;
  int block = 0, iteration = 0;
  void iterationLoss(int b, int it, double) override {
    if (b == block && it == iteration)
      cancel->cancel();
  }
};

} // namespace

class TestFullDisk : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  QString path(const QString &name) const { return tmp_.filePath(name); }

  // A previous export, then the same export again (overwrite) with a disk
  // that fills after `limit` bytes: the message names the file, the folder
  // holds exactly what it held, the previous file is byte for byte intact.
  template <typename Export> void checkFileExport(const QString &name, rlim_t limit, Export run) {
    const QString dir = path(name);
    QVERIFY(QDir().mkpath(dir));
    const QString file = dir + "/" + name;
    run(file.toStdString()); // the previous state: a complete export
    const QByteArray before = readAll(file);
    QVERIFY(before.size() > qint64(limit) * 2);
    const QMap<QString, qint64> filesBefore = filesBelow(dir);
    const QString message = errorUnderLimit(limit, [&] { run(file.toStdString()); });
    QVERIFY2(message.startsWith(file + ": "), qPrintable(message));
    QVERIFY2(message.contains(kTooLarge), qPrintable(message));
    QCOMPARE(filesBelow(dir), filesBefore);
    QVERIFY(readAll(file) == before);
    qInfo("%s: %s", qPrintable(name), qPrintable(message.mid(file.size() + 2)));
  }

private slots:
  void initTestCase() { QVERIFY(tmp_.isValid()); }

  void ggufExport() {
    const PackedModelContents contents = lrq::test::tinyPackedContents();
    GgufExportOptions options;
    options.overwrite = true;
    checkFileExport("m.gguf", 16 * 1024,
                    [&](const std::string &file) { exportGguf(file, contents, {}, options); });
  }

  void packedExport() {
    const PackedModelContents contents = lrq::test::tinyPackedContents();
    ExportOptions options;
    options.overwrite = true;
    checkFileExport("m.safetensors", 16 * 1024,
                    [&](const std::string &file) { writePackedModel(file, contents, options); });
  }

  // The HF folder (and the compressed-tensors export, which shares its
  // writer): the previous folder stays, no temporary folder is left, and the
  // message names the file under the export's own path.
  void hfDirectoryExport() {
    const QString parent = path("hf");
    QVERIFY(QDir().mkpath(parent));
    const QString dir = parent + "/out";
    HfStyleDirectory files;
    files.configJson = hfConfigJson(lrq::test::tinyLlamaConfig());
    for (auto &[name, t] : lrq::test::tinyLlamaTensors(lrq::test::tinyLlamaConfig(), 5))
      files.tensors.push_back({name, t, at::kFloat});
    ExportOptions options;
    options.overwrite = true;
    writeHfStyleDirectory(dir.toStdString(), files, options);
    const QMap<QString, qint64> before = filesBelow(parent);
    const QByteArray weights = readAll(dir + "/model.safetensors");
    const QString message = errorUnderLimit(
        16 * 1024, [&] { writeHfStyleDirectory(dir.toStdString(), files, options); });
    QVERIFY2(message.startsWith(dir + "/model.safetensors: "), qPrintable(message));
    QVERIFY2(message.contains(kTooLarge), qPrintable(message));
    QCOMPARE(filesBelow(parent), before);
    QCOMPARE(QDir(parent).entryList(QDir::AllEntries | QDir::Hidden | QDir::NoDotAndDotDot),
             QStringList{"out"});
    QVERIFY(readAll(dir + "/model.safetensors") == weights);
    qInfo("HF folder: %s", qPrintable(message.mid(dir.size() + 1)));
  }

  // An interrupted reconstruction has block 0 checkpointed; resuming it on a
  // full disk fails at block 1's checkpoint naming the file, leaves block 0's
  // checkpoint as it was with no temporary file, and a later resume with room
  // finishes bit-identical to an uninterrupted run.
  void reconstructionCheckpoint() {
    const ModelConfig config = lrq::test::tinyLlamaConfig();
    std::map<std::string, at::Tensor> hf;
    for (auto &[name, t] : lrq::test::tinyLlamaTensors(config, 9))
      hf[name] = t;
    auto model = [&] { return DecoderModel(config, ModelWeights::fromHfTensors(config, hf)); };
    quant::QuantScheme scheme;
    scheme.name = "test";
    scheme.weight.bits = 4;
    scheme.weight.symmetric = false;
    scheme.weight.granularity = quant::Granularity::PerChannel;
    at::Generator gen = at::detail::createCPUGenerator(7);
    const quant::CalibrationSet calibration{
        at::randint(config.vocabSize, {4, 16}, gen, at::kLong), "test", {}};
    auto run = [&](DecoderModel &m, const std::string &workDir, bool resume,
                   ProgressObserver *observer = nullptr, const CancelToken *cancel = nullptr) {
      auto method = quant::createMethod("flexround");
      nlohmann::json hyper = quant::mergeHyperparameters(*method, {{"iters", 6}});
      if (resume)
        hyper["resume"] = true;
      quant::MethodContext ctx{m, scheme, calibration, hyper, 0, observer, cancel, workDir};
      ctx.spectra = false;
      method->run(ctx);
    };
    DecoderModel straight = model();
    run(straight, path("ck-straight").toStdString(), false);

    const std::string work = path("ck").toStdString();
    const QString ck = path("ck") + "/recon";
    {
      DecoderModel first = model();
      CancelToken cancel;
      CancelAt at;
      at.cancel = &cancel;
      at.block = 1;
      at.iteration = 2;
      QVERIFY_THROWS_EXCEPTION(Cancelled, run(first, work, false, &at, &cancel));
    }
    const QMap<QString, qint64> before = filesBelow(ck);
    QVERIFY2(before.contains("state.json") && before.contains("block_0.bin"),
             qPrintable(QStringList(before.keys()).join(", ")));
    QVERIFY(!before.contains("block_1.bin"));
    const QByteArray state = readAll(ck + "/state.json"), block0 = readAll(ck + "/block_0.bin");
    // Room for state.json (about 1 KB), not for a block's weights (36 KB).
    const QString message = errorUnderLimit(8 * 1024, [&] {
      DecoderModel resumed = model();
      run(resumed, work, true);
    });
    QVERIFY2(message.startsWith(ck + "/block_1.bin: cannot write the checkpoint"),
             qPrintable(message));
    QVERIFY2(message.contains(kTooLarge), qPrintable(message));
    QCOMPARE(filesBelow(ck), before);
    QVERIFY(readAll(ck + "/state.json") == state);
    QVERIFY(readAll(ck + "/block_0.bin") == block0);
    qInfo("checkpoint: %s", qPrintable(message.mid(ck.size() + 1)));

    DecoderModel resumed = model();
    run(resumed, work, true);
    for (size_t b = 0; b < straight.weights().blocks.size(); ++b)
      QVERIFY(at::equal(straight.weights().blocks[b].down.weight,
                        resumed.weights().blocks[b].down.weight));
  }

  // Hidden states spilled to files: a slot whose file cannot be written is
  // left empty (no partial file), the other slots read back intact.
  void hiddenStateSpill() {
    const QString dir = path("spill");
    at::Generator gen = at::detail::createCPUGenerator(2);
    const at::Tensor first = at::randn({8, 32}, gen), second = at::randn({8, 32}, gen);
    recon::HiddenStateStore store("fp", 3, {8, 32}, at::kFloat, 0, dir.toStdString());
    QCOMPARE(store.spilled(), int64_t(3));
    store.set(0, first);
    const QMap<QString, qint64> before = filesBelow(dir);
    QCOMPARE(before.size(), 1);
    // A sample is 1 KB: half of it fits.
    QString message = errorUnderLimit(512, [&] { store.set(1, second); });
    QVERIFY2(message.startsWith(dir + "/fp_1.bin: cannot spill hidden states"),
             qPrintable(message));
    QVERIFY2(message.contains(kTooLarge), qPrintable(message));
    QCOMPARE(filesBelow(dir), before);
    QVERIFY(at::equal(store.get(0), first));
    QVERIFY_THROWS_EXCEPTION(Error, store.get(1)); // empty, not half written
    // Rewriting a slot that fails leaves it empty too, never stale or partial.
    message = errorUnderLimit(512, [&] { store.set(0, second); });
    QVERIFY2(message.startsWith(dir + "/fp_0.bin: "), qPrintable(message));
    QVERIFY(filesBelow(dir).isEmpty());
    QVERIFY_THROWS_EXCEPTION(Error, store.get(0));
    qInfo("spill: %s", qPrintable(message.mid(dir.size() + 1)));
    store.set(1, second); // room again
    QVERIFY(at::equal(store.get(1), second));
  }

  // The reference's tensor spill: a tensor that does not fit is refused naming
  // the folder, what was set aside before still reads back, and once there is
  // room again the next tensor goes where the failed one would have.
  void tensorSpill() {
    const QString dir = path("tensor-spill");
    QVERIFY(QDir().mkpath(dir));
    at::Generator gen = at::detail::createCPUGenerator(4);
    const at::Tensor first = at::randn({16, 16}, gen), big = at::randn({32, 32}, gen);
    TensorSpill spill(dir.toStdString());
    const size_t a = spill.put(first); // 1 KB
    // The file may grow to 2 KB: the 4 KB tensor is written in part, then refused.
    const QString message = errorUnderLimit(2048, [&] { spill.put(big); });
    QVERIFY2(message.startsWith(dir + ": cannot set 4096 bytes aside"), qPrintable(message));
    QVERIFY2(message.contains(kTooLarge), qPrintable(message));
    QCOMPARE(spill.bytes(), int64_t(1024));
    QVERIFY(at::equal(spill.get(a), first));
    QVERIFY(filesBelow(dir).isEmpty()); // the file has no name
    const size_t b = spill.put(big);
    QCOMPARE(spill.bytes(), int64_t(1024 + 4096));
    QVERIFY(at::equal(spill.get(b), big));
    QVERIFY(at::equal(spill.get(a), first));
    qInfo("tensor spill: %s", qPrintable(message.mid(dir.size() + 2)));
  }

  // A session's block weights set aside on a disk that fills: opened with them
  // aside, the linears that do not fit stay in memory (a warning) and the
  // session evaluates as a whole one; set aside from a whole session, the
  // failure leaves it whole.
  void sessionBlocksAside() {
    const QString modelDir = path("session-model");
    const std::map<std::string, at::Tensor> tensors = test::writeTinyHfDirectory(modelDir, false);
    int64_t linearBytes = 0;
    for (const auto &[name, t] : tensors)
      if (name.find(".layers.") != std::string::npos && t.dim() == 2)
        linearBytes += t.numel() * 4;
    const QString spillDir = path("session-spill");
    QVERIFY(QDir().mkpath(spillDir));
    std::string text;
    for (int i = 0; i < 12; ++i)
      text += "A disk that fills up halfway through the weights. ";
    const auto whole = ModelSession::open(modelDir.toStdString());
    const double wholeNll = whole->perplexity(text, 16, nullptr, nullptr, 4).meanNll;
    const rlim_t limit = rlim_t(linearBytes / 2);

    std::unique_ptr<ModelSession> opened;
    QCOMPARE(errorUnderLimit(limit,
                             [&] {
                               opened = ModelSession::openBlocksAside(modelDir.toStdString(),
                                                                      spillDir.toStdString());
                             }),
             QString());
    QVERIFY(opened);
    const int64_t onDisk = opened->setBlocksAside(spillDir.toStdString()); // what is there
    QVERIFY2(onDisk > 0 && onDisk <= int64_t(limit),
             qPrintable(QString("%1 of %2 bytes").arg(onDisk).arg(linearBytes)));
    QVERIFY(opened->perplexity(text, 16, nullptr, nullptr, 4).meanNll == wholeNll);

    const auto session = ModelSession::open(modelDir.toStdString());
    const QString message =
        errorUnderLimit(limit, [&] { session->setBlocksAside(spillDir.toStdString()); });
    QVERIFY2(message.startsWith(spillDir + ": cannot set"), qPrintable(message));
    QVERIFY2(message.contains(kTooLarge), qPrintable(message));
    QCOMPARE(session->singularValues("model.layers.1.mlp.up_proj.weight"),
             whole->singularValues("model.layers.1.mlp.up_proj.weight"));
    QVERIFY(session->perplexity(text, 16, nullptr, nullptr, 4).meanNll == wholeNll);
    QVERIFY(filesBelow(spillDir).isEmpty());
    qInfo("session set aside: %lld of %lld bytes on disk, then %s", (long long)onDisk,
          (long long)linearBytes, qPrintable(message.mid(spillDir.size() + 2)));
  }

  // The run store: a write that does not fit is refused naming the store, the
  // transaction is rolled back, and every run recorded before is intact.
  void runStore() {
    const std::string file = path("runs.sqlite").toStdString();
    std::string kept;
    {
      RunStore store = RunStore::open(file);
      RunInfo info;
      info.method = "rtn";
      info.model = {"/models/tiny", "size=1"};
      info.schemeJson = R"({"weight":{"bits":4}})";
      info.hyperparametersJson = R"({"iters":0})";
      info.metrics["perplexity"] = 21.5;
      kept = store.createRun(info);
      store.finishRun(kept, RunStatus::Finished, {}, 2.5);
    }
    // Room for what the store holds now (database and write-ahead log) and 64 KB more.
    const qint64 size = std::max(QFileInfo(QString::fromStdString(file)).size(),
                                 QFileInfo(QString::fromStdString(file + "-wal")).size());
    RunInfo big;
    big.method = "lrq";
    big.hyperparametersJson = "{\"blob\":\"" + std::string(2 << 20, 'x') + "\"}";
    const QString message = errorUnderLimit(rlim_t(size) + 64 * 1024, [&] {
      RunStore store = RunStore::open(file);
      store.createRun(big);
    });
    QVERIFY2(message.startsWith(QString::fromStdString(file) + ": "), qPrintable(message));
    QVERIFY2(message.contains("disk full while"), qPrintable(message));
    qInfo("run store: %s", qPrintable(message.mid(int(file.size()) + 2)));

    sqlite3 *db = nullptr;
    QCOMPARE(sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt *st = nullptr;
    QCOMPARE(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, nullptr), SQLITE_OK);
    QCOMPARE(sqlite3_step(st), SQLITE_ROW);
    const QString integrity =
        QString::fromUtf8(reinterpret_cast<const char *>(sqlite3_column_text(st, 0)));
    sqlite3_finalize(st);
    sqlite3_close(db);
    QCOMPARE(integrity, QString("ok"));
    RunStore store = RunStore::open(file);
    const std::vector<RunInfo> runs = store.listRuns();
    QCOMPARE(runs.size(), size_t(1));
    QCOMPARE(runs[0].id, kept);
    QCOMPARE(runs[0].status, RunStatus::Finished);
    QCOMPARE(runs[0].metrics.at("perplexity"), 21.5);
    QCOMPARE(runs[0].hyperparametersJson, std::string(R"({"iters":0})"));
  }
};

QTEST_GUILESS_MAIN(TestFullDisk)
#include "test_full_disk.moc"
