// Tokenizers checked id for id against Hugging Face `tokenizers` (run by
// tests/reference/tokenizer_reference.py on the default model's vocabulary and on
// a small synthetic SentencePiece-style vocabulary), plus round trips, hand
// computed SentencePiece score merges and error reporting.
#include <QElapsedTimer>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QtTest>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/tokenizer/tokenizer.h"
#include "core/tokenizer/tokenizer_json.h"
#include "test_support.h"

namespace {

struct Case {
  std::string text;
  std::vector<int32_t> ids;        // special-token text encoded as text
  std::vector<int32_t> idsSpecial; // special tokens parsed
  std::vector<int32_t> idsBos;     // with BOS (SentencePiece cases only)
  bool roundTrips = true;          // HF decodes its ids back to the text
};

std::string toStd(const QString &s) {
  const QByteArray utf8 = s.toUtf8();
  return std::string(utf8.constData(), static_cast<size_t>(utf8.size()));
}

QString show(const std::string &s) {
  return QString::fromUtf8(QByteArray(s.data(), static_cast<int>(s.size())).toPercentEncoding(" "))
      .left(200);
}

QString show(const std::vector<int32_t> &ids) {
  QStringList parts;
  for (size_t i = 0; i < ids.size() && i < 40; ++i)
    parts << QString::number(ids[i]);
  if (ids.size() > 40)
    parts << QStringLiteral("... (%1 ids)").arg(ids.size());
  return parts.join(' ');
}

QJsonObject readJsonObject(const QString &path) {
  QFile file(path);
  if (!file.open(QIODevice::ReadOnly))
    return {};
  return QJsonDocument::fromJson(file.readAll()).object();
}

std::vector<int32_t> toIds(const QJsonValue &value) {
  std::vector<int32_t> ids;
  for (const auto &v : value.toArray())
    ids.push_back(v.toInt());
  return ids;
}

std::vector<Case> loadCases(const QString &path) {
  std::vector<Case> cases;
  for (const auto &v : readJsonObject(path).value("cases").toArray()) {
    const QJsonObject o = v.toObject();
    cases.push_back(Case{toStd(o.value("text").toString()), toIds(o.value("ids")),
                         toIds(o.value("ids_special")), toIds(o.value("ids_bos")),
                         o.value("round_trips").toBool(true)});
  }
  return cases;
}

// The spec a GGUF loader builds from tokenizer.ggml.* (dumped by the gguf package).
lrq::TokenizerSpec specFromGgufDump(const QString &path) {
  const QJsonObject o = readJsonObject(path);
  lrq::TokenizerSpec spec;
  spec.kind = o.value("model").toString() == "llama" ? lrq::TokenizerKind::SentencePieceBpe
                                                     : lrq::TokenizerKind::ByteLevelBpe;
  spec.preTokenizer = toStd(o.value("pre").toString());
  for (const auto &t : o.value("tokens").toArray())
    spec.tokens.push_back(toStd(t.toString()));
  for (const auto &t : o.value("types").toArray())
    spec.tokenTypes.push_back(static_cast<lrq::TokenType>(t.toInt()));
  for (const auto &m : o.value("merges").toArray())
    spec.merges.push_back(toStd(m.toString()));
  spec.bosId = o.value("bos").toInt(-1);
  spec.eosId = o.value("eos").toInt(-1);
  spec.unkId = o.value("unk").toInt(-1);
  spec.padId = o.value("pad").toInt(-1);
  spec.addBos = o.value("add_bos").toBool();
  spec.addSpacePrefix = false;
  spec.source = toStd(path);
  return spec;
}

// Compares ids for every case; returns the number matched and reports the first mismatch.
int compareIds(const lrq::Tokenizer &tok, const std::vector<Case> &cases, bool addBos,
               bool parseSpecial, std::vector<int32_t> Case::*expected, QString *firstMismatch) {
  int matched = 0;
  for (const auto &c : cases) {
    const auto ours = tok.encode(c.text, addBos, parseSpecial);
    if (ours == c.*expected) {
      ++matched;
    } else if (firstMismatch->isEmpty()) {
      *firstMismatch = QStringLiteral("text '%1'\n ours: %2\n   HF: %3")
                           .arg(show(c.text), show(ours), show(c.*expected));
    }
  }
  return matched;
}

void writeFile(const QString &path, const QByteArray &content) {
  QFile f(path);
  QVERIFY(f.open(QIODevice::WriteOnly | QIODevice::Truncate));
  f.write(content);
}

} // namespace

class TestTokenizer : public QObject {
  Q_OBJECT

private:
  QTemporaryDir dir_;
  std::vector<Case> smollmCases_;
  std::vector<Case> spmCases_;
  std::string prose_;
  std::vector<int32_t> proseIds_;
  lrq::TokenizerSpec ggufSpec_;
  QJsonObject variants_; // pre-tokenizer name -> HF ids per corpus string

  QString path(const QString &name) const { return dir_.filePath(name); }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    // About 1 MB of English prose, cut at a paragraph boundary.
    const lrq::TextSplit text = lrq::defaultText();
    prose_ = text.calibration;
    if (prose_.size() > 1000000)
      prose_.resize(prose_.rfind('\n', 1000000) + 1);
    QVERIFY2(prose_.size() > 900000, "default text is shorter than 0.9 MB");
    writeFile(path("prose.txt"), QByteArray(prose_.data(), static_cast<int>(prose_.size())));

    QString error;
    const QByteArray summary = lrq::test::runReference(
        "tokenizer_reference.py",
        {QString::fromStdString(lrq::test::defaultModelPath()), dir_.path(), path("prose.txt")},
        &error);
    QVERIFY2(!summary.isEmpty(), qPrintable(error));
    qInfo().noquote() << "reference:" << summary.trimmed();

    smollmCases_ = loadCases(path("smollm_cases.json"));
    spmCases_ = loadCases(path("spm_cases.json"));
    const QJsonObject smollm = readJsonObject(path("smollm_cases.json"));
    proseIds_ = toIds(smollm.value("prose_ids"));
    variants_ = smollm.value("variants").toObject();
    QCOMPARE(variants_.size(), 3);
    QVERIFY(smollmCases_.size() > 400);
    QVERIFY(spmCases_.size() > 400);
    QVERIFY(proseIds_.size() > 100000);
    ggufSpec_ = specFromGgufDump(path("gguf_vocab.json"));
    QCOMPARE(ggufSpec_.tokens.size(), size_t(49152));
    QCOMPARE(ggufSpec_.preTokenizer, std::string("smollm"));
  }

  // The path a GGUF loader takes: tokenizer.ggml.* with pre-tokenizer "smollm".
  void byteLevelFromGgufMatchesHf() {
    const auto tok = lrq::Tokenizer::create(ggufSpec_);
    QCOMPARE(tok->vocabSize(), 49152);
    QString mismatch;
    const int matched = compareIds(*tok, smollmCases_, true, false, &Case::ids, &mismatch);
    qInfo() << "SmolLM2 (GGUF vocab): ids match HF on" << matched << "of" << smollmCases_.size()
            << "strings";
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));
  }

  // The same vocabulary read back from the tokenizer.json HF itself saved.
  void byteLevelFromTokenizerJsonMatchesHf() {
    const lrq::TokenizerSpec spec = lrq::tokenizerSpecFromJsonFiles(
        toStd(path("smollm/tokenizer.json")), toStd(path("smollm/tokenizer_config.json")));
    QVERIFY(spec.kind == lrq::TokenizerKind::ByteLevelBpe);
    QCOMPARE(spec.preTokenizer, std::string("smollm"));
    QCOMPARE(spec.tokens, ggufSpec_.tokens);
    QCOMPARE(spec.merges.size(), ggufSpec_.merges.size());
    QCOMPARE(spec.bosId, ggufSpec_.bosId);
    QCOMPARE(spec.eosId, ggufSpec_.eosId);
    QCOMPARE(spec.addBos, false);
    QVERIFY(spec.tokenTypes[1] == lrq::TokenType::Control);
    const auto tok = lrq::Tokenizer::create(spec);
    QString mismatch;
    const int matched = compareIds(*tok, smollmCases_, false, false, &Case::ids, &mismatch);
    qInfo() << "SmolLM2 (tokenizer.json): ids match HF on" << matched << "of" << smollmCases_.size()
            << "strings";
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));
  }

  void specialTokensMatchHf() {
    const auto tok = lrq::Tokenizer::create(ggufSpec_);
    QString mismatch;
    const int matched = compareIds(*tok, smollmCases_, false, true, &Case::idsSpecial, &mismatch);
    qInfo() << "SmolLM2 with special tokens parsed: ids match HF on" << matched << "of"
            << smollmCases_.size() << "strings";
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));

    const auto chat = tok->encode("<|im_start|>user\nHi<|im_end|>", false, true);
    QVERIFY(chat.size() >= 3);
    QCOMPARE(ggufSpec_.tokens[chat.front()], std::string("<|im_start|>"));
    QCOMPARE(ggufSpec_.tokens[chat.back()], std::string("<|im_end|>"));
    QCOMPARE(tok->decode(chat), std::string("user\nHi")); // control tokens decode to ""
    const auto plain = tok->encode("<|im_start|>user\nHi<|im_end|>", false, false);
    QVERIFY(plain.size() > chat.size());
    QCOMPARE(tok->decode(plain), std::string("<|im_start|>user\nHi<|im_end|>"));
  }

  // Other families' pre-tokenizers (by llama.cpp name, and read from tokenizer.json)
  // behind the same vocabulary, against HF with the families' own configuration.
  void preTokenizerFamiliesMatchHf_data() {
    QTest::addColumn<QString>("name");
    for (const char *name : {"gpt2", "llama3", "qwen2"})
      QTest::newRow(name) << QString(name);
  }

  void preTokenizerFamiliesMatchHf() {
    QFETCH(QString, name);
    const QJsonArray expected = variants_.value(name).toArray();
    QCOMPARE(size_t(expected.size()), smollmCases_.size());
    lrq::TokenizerSpec byName = ggufSpec_;
    byName.preTokenizer = toStd(name);
    const lrq::TokenizerSpec fromJson = lrq::tokenizerSpecFromJsonFiles(
        toStd(path(QStringLiteral("variant_%1.json").arg(name))), "");
    QCOMPARE(QString::fromStdString(fromJson.preTokenizer), name);
    QCOMPARE(fromJson.ignoreMerges, name == "llama3");
    for (const auto &spec : {byName, fromJson}) {
      const auto tok = lrq::Tokenizer::create(spec);
      int matched = 0;
      for (size_t i = 0; i < smollmCases_.size(); ++i) {
        const auto ours = tok->encode(smollmCases_[i].text, false, false);
        const auto theirs = toIds(expected[static_cast<int>(i)]);
        QVERIFY2(ours == theirs,
                 qPrintable(QStringLiteral("text '%1'\n ours: %2\n   HF: %3")
                                .arg(show(smollmCases_[i].text), show(ours), show(theirs))));
        ++matched;
      }
      qInfo().noquote() << QStringLiteral("pre-tokenizer %1 (%2): ids match HF on %3 strings")
                               .arg(name,
                                    spec.preTokenizerRegexes.empty() ? "by name" : "from json")
                               .arg(matched);
    }
  }

  void byteLevelRoundTrip() {
    const auto tok = lrq::Tokenizer::create(ggufSpec_);
    int checked = 0;
    for (const auto &c : smollmCases_) {
      // Text with bytes the vocabulary cannot spell (SmolLM2 lacks a few control bytes
      // and the UTF-8 lead bytes of planes 4-11) cannot come back, with HF either;
      // those cases are covered by the id comparison with HF.
      if (!c.roundTrips)
        continue;
      const std::string back = tok->decode(tok->encode(c.text, true, false));
      QVERIFY2(back == c.text, qPrintable(show(c.text)));
      std::string joined;
      for (int32_t id : tok->encode(c.text, false, false))
        joined += tok->tokenBytes(id);
      QVERIFY2(joined == c.text, qPrintable(show(c.text)));
      ++checked;
    }
    QVERIFY(checked > 100);
    QCOMPARE(tok->decode(tok->encode(prose_, false, false)), prose_);
    qInfo() << "byte-level round trip holds on" << checked << "of" << smollmCases_.size()
            << "strings (the others hold bytes the vocabulary lacks) and on the prose";
  }

  // With every byte spelled by some token (SmolLM2's vocabulary plus the 21 byte
  // characters it lacks) decode(encode(s)) == s for every string, even invalid UTF-8.
  void byteLevelRoundTripWithAllBytes() {
    lrq::TokenizerSpec spec = ggufSpec_;
    // GPT-2's byte -> character table, written out independently of the library.
    int next = 256;
    int added = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const QString ch(QChar(printable ? b : next++));
      const std::string text = toStd(ch);
      if (std::find(spec.tokens.begin(), spec.tokens.end(), text) == spec.tokens.end()) {
        spec.tokens.push_back(text);
        spec.tokenTypes.push_back(lrq::TokenType::Normal);
        ++added;
      }
    }
    QCOMPARE(next, 256 + 68);
    QVERIFY(added > 0);
    const auto tok = lrq::Tokenizer::create(spec);
    for (const auto &c : smollmCases_)
      QVERIFY2(tok->decode(tok->encode(c.text, true, false)) == c.text, qPrintable(show(c.text)));
    std::mt19937 rng(12345);
    for (int n = 0; n < 300; ++n) {
      std::string bytes(1 + rng() % 40, '\0');
      for (auto &b : bytes)
        b = static_cast<char>(rng() % 256);
      QVERIFY2(tok->decode(tok->encode(bytes, true, false)) == bytes, qPrintable(show(bytes)));
    }
    qInfo() << "byte-level round trip with all bytes holds on" << smollmCases_.size()
            << "corpus strings and 300 random byte strings";
  }

  // Encoding ~1 MB of prose from a cold tokenizer: ids equal HF's; the speed is reported.
  void proseMatchesHfAndSpeed() {
    const auto tok = lrq::Tokenizer::create(ggufSpec_);
    QElapsedTimer timer;
    timer.start();
    const auto ids = tok->encode(prose_, false, false);
    const double seconds = timer.nsecsElapsed() / 1e9;
    const double mb = prose_.size() / 1e6;
    qInfo().noquote() << QStringLiteral("encoded %1 MB (%2 tokens) in %3 s: %4 MB/s on one core")
                             .arg(mb, 0, 'f', 3)
                             .arg(ids.size())
                             .arg(seconds, 0, 'f', 3)
                             .arg(mb / seconds, 0, 'f', 2);
    QCOMPARE(ids.size(), proseIds_.size());
    size_t firstDiff = 0;
    while (firstDiff < ids.size() && ids[firstDiff] == proseIds_[firstDiff])
      ++firstDiff;
    QVERIFY2(firstDiff == ids.size(),
             qPrintable(QStringLiteral("first difference at token %1").arg(firstDiff)));
  }

  void concurrentEncodesAgree() {
    const auto tok = lrq::Tokenizer::create(ggufSpec_);
    const std::string part = prose_.substr(0, 200000);
    std::vector<int32_t> a, b;
    std::thread t1([&] { a = tok->encode(part, false, false); });
    std::thread t2([&] { b = tok->encode(part, false, false); });
    t1.join();
    t2.join();
    QVERIFY(!a.empty());
    QVERIFY(a == b);
    QVERIFY(a == tok->encode(part, false, false));
  }

  void sentencePieceFromJsonMatchesHf() {
    const lrq::TokenizerSpec spec = lrq::tokenizerSpecFromJsonFiles(
        toStd(path("spm/tokenizer.json")), toStd(path("spm/tokenizer_config.json")));
    QVERIFY(spec.kind == lrq::TokenizerKind::SentencePieceBpe);
    QVERIFY(spec.addSpacePrefix);
    QVERIFY(spec.addBos);
    QCOMPARE(spec.tokens[spec.bosId], std::string("<s>"));
    QCOMPARE(spec.tokens[spec.eosId], std::string("</s>"));
    QCOMPARE(spec.tokens[spec.unkId], std::string("<unk>"));
    QVERIFY(spec.tokenTypes[3 + 0x41] == lrq::TokenType::Byte);
    const auto tok = lrq::Tokenizer::create(spec);

    QString mismatch;
    int matched = compareIds(*tok, spmCases_, false, false, &Case::ids, &mismatch);
    qInfo() << "SentencePiece BPE: ids match HF on" << matched << "of" << spmCases_.size()
            << "strings";
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));
    matched = compareIds(*tok, spmCases_, true, false, &Case::idsBos, &mismatch);
    qInfo() << "SentencePiece BPE with BOS: ids match HF on" << matched << "strings";
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));
    matched = compareIds(*tok, spmCases_, false, true, &Case::idsSpecial, &mismatch);
    qInfo() << "SentencePiece BPE with special tokens parsed: ids match HF on" << matched
            << "strings";
    QVERIFY2(mismatch.isEmpty(), qPrintable(mismatch));

    // The corpus really exercises byte fallback.
    const auto cjk = tok->encode("\xe4\xb8\xad", false, false);
    QCOMPARE(cjk.size(), size_t(4)); // "▁" then three <0xNN>
    QVERIFY(spec.tokenTypes[cjk[1]] == lrq::TokenType::Byte);
  }

  void sentencePieceRoundTrip() {
    const auto tok = lrq::Tokenizer::create(lrq::tokenizerSpecFromJsonFiles(
        toStd(path("spm/tokenizer.json")), toStd(path("spm/tokenizer_config.json"))));
    int checked = 0;
    for (const auto &c : spmCases_) {
      // "▁" in the input is a space to SentencePiece: such text cannot come back.
      if (c.text.find("\xE2\x96\x81") != std::string::npos)
        continue;
      QVERIFY2(tok->decode(tok->encode(c.text, true, false)) == c.text, qPrintable(show(c.text)));
      ++checked;
    }
    QVERIFY(checked > 400);
    qInfo() << "SentencePiece round trip holds on" << checked << "strings";
  }

  // llama.cpp's score-driven SPM merging on a vocabulary small enough to follow by hand.
  void sentencePieceScoresByHand() {
    lrq::TokenizerSpec spec;
    spec.kind = lrq::TokenizerKind::SentencePieceBpe;
    spec.tokens = {"<unk>",
                   "<s>",
                   "</s>",
                   "\xE2\x96\x81",
                   "a",
                   "b",
                   "c",
                   "ab",
                   "bc",
                   "\xE2\x96\x81"
                   "a",
                   "\xE2\x96\x81"
                   "ab",
                   "abc"};
    spec.scores = {0, 0, 0, -1, -2, -2, -2, -1, -2, -5, -3, -10};
    spec.tokenTypes = {lrq::TokenType::Unknown, lrq::TokenType::Control, lrq::TokenType::Control};
    spec.tokenTypes.resize(spec.tokens.size(), lrq::TokenType::Normal);
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      spec.tokens.push_back(name);
      spec.scores.push_back(0);
      spec.tokenTypes.push_back(lrq::TokenType::Byte);
    }
    spec.bosId = 1;
    spec.eosId = 2;
    spec.unkId = 0;
    spec.addBos = true;
    const auto tok = lrq::Tokenizer::create(spec);
    auto byte = [](int b) { return 12 + b; };
    // "▁abc": ab (-1) beats bc (-2) and ▁a (-5); then ▁ab (-3) beats abc (-10); ▁abc is no token.
    QCOMPARE(tok->encode("abc", false), (std::vector<int32_t>{10, 6}));
    // "▁cab": only "ab" merges; ▁ and c stay.
    QCOMPARE(tok->encode("cab", false), (std::vector<int32_t>{3, 6, 7}));
    // "▁az": ▁a merges; z is no token and falls back to its byte.
    QCOMPARE(tok->encode("az", true), (std::vector<int32_t>{1, 9, byte('z')}));
    // "▁bc▁a": bc (-2) merges first, then ▁a (-5); ▁bc and bc▁ are no tokens.
    QCOMPARE(tok->encode("bc a", false), (std::vector<int32_t>{3, 8, 9}));
    QCOMPARE(tok->decode(tok->encode("bc az", true)), std::string("bc az"));
  }

  // Every llama.cpp name we know compiles and keeps every byte (pieces are only split).
  void everyNamedPreTokenizerKeepsAllBytes() {
    lrq::TokenizerSpec spec = ggufSpec_;
    for (const char *name :
         {"default",   "gpt2",   "gpt-2",      "mpt",    "olmo",           "smollm",
          "starcoder", "refact", "command-r",  "llama3", "llama-bpe",      "dbrx",
          "smaug-bpe", "qwen2",  "stablelm2",  "falcon", "deepseek-coder", "bloom",
          "poro-chat", "viking", "chatglm-bpe"}) {
      spec.preTokenizer = name;
      const auto tok = lrq::Tokenizer::create(spec);
      for (const auto &c : smollmCases_) {
        if (!c.roundTrips)
          continue;
        QVERIFY2(tok->decode(tok->encode(c.text, false, false)) == c.text,
                 qPrintable(QStringLiteral("%1: %2").arg(name, show(c.text))));
      }
    }
  }

  void unknownPreTokenizerFallsBackToDefault() {
    lrq::TokenizerSpec unknown = ggufSpec_;
    unknown.preTokenizer = "no-such-pre-tokenizer";
    lrq::TokenizerSpec fallback = ggufSpec_;
    fallback.preTokenizer = "default";
    const auto a = lrq::Tokenizer::create(unknown);
    const auto b = lrq::Tokenizer::create(fallback);
    for (const auto &c : smollmCases_)
      QVERIFY(a->encode(c.text, false) == b->encode(c.text, false));
    // "default" isolates punctuation runs first, so " (" cannot become one token there.
    const auto smollm = lrq::Tokenizer::create(ggufSpec_);
    QVERIFY(b->encode(" (x)", false).size() > smollm->encode(" (x)", false).size());
  }

  void createRejectsInconsistentSpecs() {
    auto expectFileError = [](const lrq::TokenizerSpec &spec, const char *needle) {
      try {
        lrq::Tokenizer::create(spec);
      } catch (const lrq::FileError &e) {
        QCOMPARE(e.path(), spec.source);
        QVERIFY2(QString::fromUtf8(e.what()).contains(needle), e.what());
        return;
      }
      QFAIL(qPrintable(QStringLiteral("no FileError for %1").arg(needle)));
    };
    lrq::TokenizerSpec spec = ggufSpec_;
    spec.merges.push_back("\xC4\xA0t nosuchtoken");
    expectFileError(spec, "nosuchtoken");
    spec = ggufSpec_;
    spec.bosId = 49152;
    expectFileError(spec, "BOS");
    spec = ggufSpec_;
    spec.tokenTypes.pop_back();
    expectFileError(spec, "token types");
    spec = ggufSpec_;
    spec.kind = lrq::TokenizerKind::SentencePieceBpe;
    spec.merges.clear();
    expectFileError(spec, "neither merges nor scores");
    spec = ggufSpec_;
    spec.preTokenizerRegexes = {"(unclosed"};
    expectFileError(spec, "(unclosed");
  }

  void malformedTokenizerFiles_data() {
    QTest::addColumn<QByteArray>("json");
    QTest::addColumn<QString>("needle");
    const QByteArray pre = R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false})";
    QTest::newRow("truncated") << QByteArray(R"({"model": {"type": "BPE", "vocab": )")
                               << "invalid JSON";
    QTest::newRow("not an object") << QByteArray("[1, 2]") << "not a JSON object";
    QTest::newRow("no model") << QByteArray("{}") << "'model'";
    QTest::newRow("no vocab") << QByteArray(R"({"model": {"type": "BPE", "merges": []}})")
                              << "'model.vocab'";
    QTest::newRow("no merges") << QByteArray(R"({"model": {"type": "BPE", "vocab": {"a": 0}}})")
                               << "'model.merges'";
    QTest::newRow("bad id")
        << QByteArray(R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})")
        << "model.vocab['a']";
    QTest::newRow("unigram") << QByteArray(R"({"model": {"type": "Unigram", "vocab": []}})")
                             << "model.type";
    QTest::newRow("bad merge")
        << QByteArray(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [[1, 2]]}, )" +
                      pre + "}")
        << "model.merges[0]";
    QTest::newRow("id gap")
        << QByteArray(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2}, "merges": []}, )" +
                      pre + "}")
        << "token id 1";
    QTest::newRow("added token without id")
        << QByteArray(R"({"added_tokens": [{"content": "<s>"}], "model": {"type": "BPE", )"
                      R"("vocab": {"a": 0}, "merges": []}, )" +
                      pre + "}")
        << "added_tokens[0].id";
    QTest::newRow("unknown kind")
        << QByteArray(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})")
        << "cannot tell the tokenizer kind";
    QTest::newRow("unsupported split")
        << QByteArray(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, )"
                      R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, )"
                      R"("behavior": "Removed", "invert": false}})")
        << "pre_tokenizer";
  }

  void malformedTokenizerFiles() {
    QFETCH(QByteArray, json);
    QFETCH(QString, needle);
    const QString file = path("bad_tokenizer.json");
    writeFile(file, json);
    try {
      lrq::tokenizerSpecFromJsonFiles(toStd(file), "");
      QFAIL("no FileError");
    } catch (const lrq::FileError &e) {
      QCOMPARE(QString::fromStdString(e.path()), file);
      QVERIFY2(QString::fromUtf8(e.what()).contains(needle), e.what());
      QVERIFY2(QString::fromUtf8(e.what()).startsWith(file), e.what());
    }
  }

  void malformedConfigAndMissingFiles() {
    const std::string json = toStd(path("spm/tokenizer.json"));
    const QString config = path("bad_config.json");
    auto expect = [](const std::string &j, const std::string &c, const std::string &file,
                     const char *needle) {
      try {
        lrq::tokenizerSpecFromJsonFiles(j, c);
        QFAIL("no FileError");
      } catch (const lrq::FileError &e) {
        QCOMPARE(e.path(), file);
        QVERIFY2(QString::fromUtf8(e.what()).contains(needle), e.what());
      }
    };
    writeFile(config, "{\"add_bos_token\": tru");
    expect(json, toStd(config), toStd(config), "invalid JSON");
    writeFile(config, R"({"bos_token": "<nope>"})");
    expect(json, toStd(config), toStd(config), "bos_token");
    writeFile(config, R"({"add_bos_token": "yes"})");
    expect(json, toStd(config), toStd(config), "add_bos_token");
    expect(toStd(path("missing.json")), "", toStd(path("missing.json")), "no such file");
  }
};

QTEST_GUILESS_MAIN(TestTokenizer)
#include "test_tokenizer.moc"
