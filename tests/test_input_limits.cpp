// Hostile inputs of a few kilobytes that used to cost gigabytes, crash with a
// stack overflow or take minutes: each is generated here and must give a clear
// error. Memory bombs run in a forked child whose address space may grow by at
// most 1 GiB (setrlimit RLIMIT_AS), so an allocation by a claimed size fails
// loudly instead of exhausting the machine; stack bombs run in a child too, so
// a regression reports the signal instead of killing the test. Nothing here
// asserts wall time.
#include <ATen/ATen.h>
#include <QDir>
#include <QFile>
#include <QTemporaryDir>
#include <QtTest>

#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <limits>
#include <string>

#include "byte_writer.h"
#include "core/common/error.h"
#include "core/common/json_limits.h"
#include "core/io/export.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "core/io/hf_config.h"
#include "core/io/model_loader.h"
#include "core/io/safetensors.h"
#include "core/quant/grid.h"
#include "core/quant/scheme.h"
#include "core/runs/run_store.h"
#include "core/tokenizer/pre_tokenizers.h"
#include "core/tokenizer/regex_splitter.h"
#include "core/tokenizer/tokenizer.h"
#include "core/tokenizer/tokenizer_json.h"
#include "forked_child.h"
#include "test_support.h"

using namespace lrq;

namespace {

size_t mappedBytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0;
  statm >> pages;
  return pages * size_t(sysconf(_SC_PAGESIZE));
}

// Runs f in a forked child whose address space may grow by at most
// extraBytes; returns "error: <message>" for an lrq::Error, "no error",
// "bad_alloc", "crashed (signal N)" or "other: <what>".
template <typename F> QString runInChild(F f, size_t extraBytes = size_t(1) << 30) {
  return lrq::test::runInForkedChild(
      [&] {
        rlimit limit{};
        limit.rlim_cur = limit.rlim_max = mappedBytes() + extraBytes;
        ::setrlimit(RLIMIT_AS, &limit);
        f();
      },
      600);
}

void writeBytes(const QString &path, const std::string &bytes) {
  QFile f(path);
  QVERIFY(f.open(QIODevice::WriteOnly));
  QCOMPARE(f.write(bytes.data(), qint64(bytes.size())), qint64(bytes.size()));
}

std::string nested(const std::string &open, const std::string &inner, const std::string &close,
                   int depth) {
  std::string s;
  s.reserve((open.size() + close.size()) * size_t(depth) + inner.size());
  for (int i = 0; i < depth; ++i)
    s += open;
  s += inner;
  for (int i = 0; i < depth; ++i)
    s += close;
  return s;
}

// --- GGUF built by hand ---------------------------------------------------------

using lrq::test::put;
using lrq::test::putString;

// A LLaMA GGUF with the given block count and only a token embedding of
// `vocabulary` rows.
std::string ggufWithBlockCount(uint32_t blocks, uint64_t vocabulary = 10) {
  std::string kv;
  int count = 0;
  auto u32 = [&](const std::string &key, uint32_t v) {
    putString(kv, key);
    put<uint32_t>(kv, 4);
    put<uint32_t>(kv, v);
    ++count;
  };
  putString(kv, "general.architecture");
  put<uint32_t>(kv, 8);
  putString(kv, "llama");
  ++count;
  u32("llama.block_count", blocks);
  u32("llama.embedding_length", 8);
  u32("llama.feed_forward_length", 16);
  u32("llama.attention.head_count", 2);
  putString(kv, "llama.attention.layer_norm_rms_epsilon");
  put<uint32_t>(kv, 6);
  put<float>(kv, 1e-5f);
  ++count;

  std::string out = "GGUF";
  put<uint32_t>(out, 3);
  put<uint64_t>(out, 1); // one tensor
  put<uint64_t>(out, uint64_t(count));
  out += kv;
  putString(out, "token_embd.weight");
  put<uint32_t>(out, 2);
  put<uint64_t>(out, 8); // embedding length
  put<uint64_t>(out, vocabulary);
  put<uint32_t>(out, 0); // F32
  put<uint64_t>(out, 0);
  out.append((32 - out.size() % 32) % 32, '\0');
  out.append(size_t(8 * vocabulary * 4), '\0');
  return out;
}

// A safetensors file with one small F32 tensor.
std::string smallSafetensors(const std::string &name) {
  std::string header =
      "{\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
  std::string out;
  put<uint64_t>(out, header.size());
  out += header + std::string(16, '\0');
  return out;
}

std::string safetensorsWithHeader(const std::string &header) {
  std::string out;
  put<uint64_t>(out, header.size());
  return out + header;
}

// A byte-level tokenizer.json around the given model.vocab, merges and extra keys.
std::string tokenizerJson(const std::string &vocab, const std::string &merges = "[]",
                          const std::string &extra = "") {
  return "{\"model\":{\"type\":\"BPE\",\"vocab\":" + vocab + ",\"merges\":" + merges +
         "},\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false}" + extra + "}";
}

// GPT-2's byte alphabet as JSON vocabulary entries (ids 0..255).
std::string byteVocabEntries() {
  std::string out;
  int id = 0;
  auto add = [&](uint32_t cp) {
    std::string text;
    if (cp < 0x80) {
      text += char(cp);
    } else {
      text += char(0xC0 | (cp >> 6));
      text += char(0x80 | (cp & 0x3F));
    }
    out += (id ? "," : "") + nlohmann::json(text).dump() + ":" + std::to_string(id);
    ++id;
  };
  // Printable bytes map to themselves, the rest to U+0100 + n (GPT-2's table).
  std::vector<bool> printable(256, false);
  for (int b = '!'; b <= '~'; ++b)
    printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b)
    printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b)
    printable[b] = true;
  int n = 0;
  for (int b = 0; b < 256; ++b)
    add(printable[b] ? uint32_t(b) : uint32_t(0x100 + n++));
  return out;
}

} // namespace

class TestInputLimits : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  QString path(const QString &name) const { return tmp_.filePath(name); }

  QString loadError(const QString &file) {
    const std::string p = file.toStdString();
    return runInChild([p] { loadModel(p); });
  }

  QString tokenizerError(const QString &file) {
    const std::string p = file.toStdString();
    return runInChild([p] { Tokenizer::create(tokenizerSpecFromJsonFiles(p, "")); });
  }

private slots:
  void initTestCase() { QVERIFY(tmp_.isValid()); }

  // The child itself: an allocation past the limit fails, a small one works.
  // Under AddressSanitizer the failed allocation ends the child with the
  // sanitizer's out-of-memory report instead of throwing: still no silent
  // success for a memory bomb.
  void childLimitWorks() {
    const QString big = runInChild([] { std::vector<char> v(size_t(2) << 30, 1); });
#if defined(__SANITIZE_ADDRESS__)
    QVERIFY2(big.startsWith("exited with status "), qPrintable(big));
#else
    QCOMPARE(big, QString("bad_alloc"));
#endif
    QCOMPARE(runInChild([] { std::vector<char> v(size_t(64) << 20, 1); }), QString("no error"));
  }

  // --- declared counts against what the file holds ---

  void ggufBlockCountOf2To31() {
    const QString file = path("blocks.gguf");
    writeBytes(file, ggufWithBlockCount(0x80000000u));
    const QString e = loadError(file);
    QVERIFY2(e.startsWith("error: ") && e.contains("declares 2147483648 layers") &&
                 e.contains("1 tensors"),
             qPrintable(e));
  }

  // A token embedding with no rows (a vocabulary of 0; found by fuzz_gguf_model) is
  // refused when the hyperparameters are read, not passed on as vocabSize 0.
  void ggufEmptyVocabularyRefused() {
    const QString file = path("empty-vocabulary.gguf");
    writeBytes(file, ggufWithBlockCount(1, 0));
    const std::string p = file.toStdString();
    const QString e = runInChild([p] {
      GgufReader g(p);
      modelConfigFromGguf(g);
    });
    QVERIFY2(e.startsWith("error: ") && e.contains("token_embd.weight: no rows"), qPrintable(e));
    writeBytes(file, ggufWithBlockCount(1, 10));
    QCOMPARE(runInChild([p] {
               GgufReader g(p);
               if (modelConfigFromGguf(g).vocabSize != 10)
                 throw Error("vocabulary is not 10");
             }),
             QString("no error"));
  }

  void configNumHiddenLayersOf2To31_data() {
    QTest::addColumn<QString>("config");
    QTest::addColumn<QString>("tensor");
    const QString common = R"("vocab_size": 2, "hidden_size": 2, "num_attention_heads": 1, )"
                           R"("num_hidden_layers": 2147483648)";
    QTest::newRow("llama")
        << R"({"architectures": ["LlamaForCausalLM"], "intermediate_size": 4, )" + common + "}"
        << "model.embed_tokens.weight";
    QTest::newRow("opt") << R"({"architectures": ["OPTForCausalLM"], "ffn_dim": 4, )" + common + "}"
                         << "model.decoder.embed_tokens.weight";
  }
  void configNumHiddenLayersOf2To31() {
    QFETCH(QString, config);
    QFETCH(QString, tensor);
    const QString dir = path(QString("layers-") + QTest::currentDataTag());
    QVERIFY(QDir().mkpath(dir));
    writeBytes(dir + "/config.json", config.toStdString());
    writeBytes(dir + "/model.safetensors", smallSafetensors(tensor.toStdString()));
    const QString e = loadError(dir);
    QVERIFY2(e.startsWith("error: ") && e.contains("config.json") &&
                 e.contains("declares 2147483648 layers"),
             qPrintable(e));
  }

  // --- tokenizer.json ---

  void tokenIdOf1e8_data() {
    QTest::addColumn<QString>("json");
    QTest::newRow("model.vocab") << QString::fromStdString(
        tokenizerJson(R"({"a": 0, "b": 100000000})"));
    QTest::newRow("added_tokens") << QString::fromStdString(tokenizerJson(
        R"({"a": 0})", "[]", R"(,"added_tokens":[{"id":100000000,"content":"<x>"}])"));
  }
  void tokenIdOf1e8() {
    QFETCH(QString, json);
    const QString file = path(QString("id-%1.json").arg(QTest::currentDataTag()));
    writeBytes(file, json.toStdString());
    const QString e = tokenizerError(file);
    QVERIFY2(e.startsWith("error: ") && e.contains("token id 1 is in neither") &&
                 e.contains("ids go up to 100000000"),
             qPrintable(e));
  }

  void nestedSequencePreTokenizers_data() {
    QTest::addColumn<int>("depth");
    QTest::addColumn<QString>("expected");
    QTest::newRow("20000") << 20000 << "deeper than 64 levels";
    QTest::newRow("20") << 20 << "nests Sequence deeper than 16 levels";
  }
  void nestedSequencePreTokenizers() {
    QFETCH(int, depth);
    QFETCH(QString, expected);
    const std::string pre =
        nested(R"({"type":"Sequence","pretokenizers":[)", R"({"type":"ByteLevel"})", "]}", depth);
    const std::string json = R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]},)"
                             R"("pre_tokenizer":)" +
                             pre + "}";
    const QString file = path(QString("sequence-%1.json").arg(depth));
    writeBytes(file, json);
    const QString e = tokenizerError(file);
    QVERIFY2(e.startsWith("error: ") && e.contains(expected), qPrintable(e));
  }

  void jsonFileSizeCaps() {
    // Sparse files: the reader must stop at its cap, not read (or allocate) them whole.
    const QString tokenizer = path("huge-tokenizer.json");
    {
      QFile f(tokenizer);
      QVERIFY(f.open(QIODevice::WriteOnly));
      QVERIFY(f.resize(qint64(65) << 20));
    }
    QString e = tokenizerError(tokenizer);
    QVERIFY2(e.contains("larger than the 64 MiB limit"), qPrintable(e));

    const QString dir = path("huge-config");
    QVERIFY(QDir().mkpath(dir));
    {
      QFile f(dir + "/config.json");
      QVERIFY(f.open(QIODevice::WriteOnly));
      QVERIFY(f.resize(qint64(17) << 20));
    }
    writeBytes(dir + "/model.safetensors", smallSafetensors("model.embed_tokens.weight"));
    e = loadError(dir);
    QVERIFY2(e.contains("config.json") && e.contains("larger than the 16 MiB limit"),
             qPrintable(e));
  }

  void configNestingAndWidth() {
    const std::string deep = nested(R"({"a":)", "0", "}", 200);
    QString e = runInChild([&] { modelConfigFromHfConfigJson(deep, "config.json"); });
    QVERIFY2(e.contains("config.json: JSON nests arrays/objects deeper than 64 levels"),
             qPrintable(e));
    std::string wide = "[0";
    for (int i = 0; i < (1 << 20) + 10; ++i)
      wide += ",0";
    wide += "]";
    e = runInChild([&] { modelConfigFromHfConfigJson(wide, "config.json"); });
    QVERIFY2(e.contains("config.json: JSON holds more than 1048576 elements"), qPrintable(e));
  }

  void safetensorsHeaderBombs() {
    // 80 MB of nested arrays took 3.1 GB; a few thousand levels show the bound.
    const QString deep = path("deep.safetensors");
    writeBytes(deep, safetensorsWithHeader(nested("[", "", "]", 5000)));
    QString e = runInChild([&] { SafetensorsReader r(deep.toStdString()); });
    QVERIFY2(e.contains("header JSON nests arrays/objects deeper than 8 levels"), qPrintable(e));
    // Many tiny values: {"__metadata__": ..., "t": {"shape": [0,0,0,...]}}.
    std::string header = R"({"t":{"dtype":"F32","data_offsets":[0,0],"shape":[0)";
    for (int i = 0; i < (5 << 20); ++i)
      header += ",0";
    header += "]}}";
    const QString wide = path("wide.safetensors");
    writeBytes(wide, safetensorsWithHeader(header));
    e = runInChild([&] { SafetensorsReader r(wide.toStdString()); });
    QVERIFY2(e.contains("header JSON holds more than 4194304 elements"), qPrintable(e));
  }

  void packedDetectionIsBoundedLikeTheReader() {
    // loadModel asks isPackedModelFile of every .safetensors before reading it.
    // It parsed the whole header with no limits when the text named the packed
    // format: 40 MB of empty arrays took 1.1 GB (lrq info), so 64 MB fails the
    // child's 1 GiB allowance if the parse comes back.
    std::string header = R"({"__metadata__":{"format":"lrq-packed"},"x":[)";
    header.reserve(header.size() + (64u << 20));
    for (int i = 0; i < (64 << 20) / 3; ++i)
      header += "[],";
    header += "[]]}";
    const QString file = path("wide-packed.safetensors");
    writeBytes(file, safetensorsWithHeader(header));
    const QString e = runInChild([&] {
      if (isPackedModelFile(file.toStdString()))
        throw Error("recognised as packed");
    });
    QCOMPARE(e, QString("no error"));
    // A valid packed header is still recognised.
    nlohmann::json meta = {{"format", kPackedFormatName}};
    const QString small = path("small-packed.safetensors");
    writeBytes(small, safetensorsWithHeader(nlohmann::json{{"__metadata__", meta}}.dump()));
    QVERIFY(isPackedModelFile(small.toStdString()));
  }

  void packedExportWithDeepLayers() {
    // The packed reader copies each layer's JSON (recursively): a deep one is refused.
    const std::string config = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 4, )"
                               R"("hidden_size": 4, "intermediate_size": 8, )"
                               R"("num_hidden_layers": 1, "num_attention_heads": 1})";
    nlohmann::json meta = {{"format", kPackedFormatName},
                           {"format_version", "1"},
                           {"scheme", "{}"},
                           {"method", "rtn"},
                           {"config", config},
                           {"layers", "{\"a\": " + nested("[", "", "]", 50000) + "}"}};
    const QString file = path("deep-packed.safetensors");
    writeBytes(file, safetensorsWithHeader(nlohmann::json{{"__metadata__", meta}}.dump()));
    const QString e = runInChild([&] { loadPackedModel(file.toStdString()); });
    QVERIFY2(e.startsWith("error: ") &&
                 e.contains("__metadata__ layers JSON nests arrays/objects deeper than 64 levels"),
             qPrintable(e));
  }

  // --- tokenizer CPU bombs ---

  void catastrophicSplitRegexRefused() {
    const QString file = path("regex.json");
    // A full byte alphabet: the vocabulary itself is valid, only the pattern is not.
    const std::string json =
        R"({"model":{"type":"BPE","vocab":{)" + byteVocabEntries() +
        R"(},"merges":[]},"pre_tokenizer":{"type":)"
        R"("Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":".*.*.*.*Z|."},)"
        R"("behavior":"Isolated"},{"type":"ByteLevel","use_regex":false}]}})";
    writeBytes(file, json);
    const QString e = tokenizerError(file);
    QVERIFY2(e.startsWith("error: ") && e.contains("/.*.*.*.*Z|./") &&
                 e.contains("catastrophic backtracking") && e.contains("refused"),
             qPrintable(e));
    // The patterns tokenizers ship pass the same probe (all recipes compile).
    for (const char *name : {"default", "gpt2", "smollm", "llama3", "qwen2", "falcon",
                             "deepseek-coder", "bloom", "viking"}) {
      PreTokenizerRecipe recipe;
      QVERIFY(preTokenizerRecipe(name, recipe));
      RegexSplitter splitter(recipe.regexes);
    }
  }

  void splitBudgetAtRuntime() {
    // Exponential only on 'Q' runs, which the probe texts do not hold: PCRE2's
    // match limit stops it at run time.
    RegexSplitter exponential({"(?:Q+Q+)+R|."});
    std::vector<std::string_view> pieces;
    const std::string qs(40, 'Q');
    try {
      exponential.split(qs, pieces);
      QFAIL("no error");
    } catch (const Error &e) {
      QVERIFY2(QString(e.what()).contains("(?:Q+Q+)+R|."), e.what());
    }
    // The CPU-time budget: none at all fails after the first few matches.
    RegexSplitter gpt2({kGpt2Pattern});
    gpt2.setCpuBudget(0.0, 0.0);
    std::string words;
    for (int i = 0; i < 1000; ++i)
      words += " w";
    try {
      gpt2.split(words, pieces);
      QFAIL("no error");
    } catch (const Error &e) {
      QVERIFY2(QString(e.what()).contains("s of CPU time on 2000 bytes"), e.what());
    }
  }

  void mergeLineOfManySpaces() {
    // 300,000 spaces between two tokens: refused at once (no split can name a
    // token that long) with a message that does not print the line.
    const std::string vocab = "{" + byteVocabEntries() + "}";
    const std::string line = "a" + std::string(300000, ' ') + "b";
    const QString file = path("merge.json");
    writeBytes(file, tokenizerJson(vocab, "[" + nlohmann::json(line).dump() + "]"));
    QString e = tokenizerError(file);
    QVERIFY2(e.contains("merge 0 'a") && e.contains("(300002 bytes)"), qPrintable(e.left(300)));
    QVERIFY2(e.size() < 400, qPrintable(e.left(300)));

    // With a 100,000-space token in the vocabulary every split point is a
    // candidate: the lookup budget ends it.
    const std::string spaces(100000, ' ');
    const std::string vocab2 =
        "{" + byteVocabEntries() + "," + nlohmann::json(spaces).dump() + ":256}";
    const QString file2 = path("merge2.json");
    writeBytes(file2, tokenizerJson(vocab2, "[" + nlohmann::json(spaces + " ").dump() + "]"));
    e = tokenizerError(file2);
    QVERIFY2(e.contains("too many ways to split the merges into tokens") && e.size() < 400,
             qPrintable(e.left(300)));
  }

  void manyAddedTokensSharingAFirstByte() {
    // 20,000 added tokens starting with '<': matching is a trie walk per
    // position, and leftmost-longest as before.
    const std::string vocab = "{" + byteVocabEntries() + "}";
    std::string added = ",\"added_tokens\":[";
    for (int i = 0; i < 20000; ++i)
      added += (i ? "," : "") + std::string("{\"id\":") + std::to_string(256 + i) +
               ",\"content\":\"<t" + std::to_string(i) + ">\",\"special\":false}";
    added += "]";
    const QString file = path("added.json");
    writeBytes(file, tokenizerJson(vocab, "[]", added));
    const auto tok = Tokenizer::create(tokenizerSpecFromJsonFiles(file.toStdString(), ""));
    const std::vector<int32_t> ids = tok->encode("<t1><t19999><t12>x<t1", false, false);
    // Byte b has id b in this vocabulary.
    const std::vector<int32_t> expected = {256 + 1, 256 + 19999, 256 + 12, 'x', '<', 't', '1'};
    QCOMPARE(ids, expected);
    // A long text of near-misses stays one plain fragment per run of bytes.
    std::string text;
    for (int i = 0; i < 20000; ++i)
      text += "<t";
    const std::vector<int32_t> plain = tok->encode(text, false, false);
    QCOMPARE(plain.size(), size_t(40000));
  }

  // --- schemes ---

  void groupWiderThanTheRowIsNotPadded() {
    // The grid takes a group wider than the row as the row itself; it used to
    // pad every row up to the group size (4.9 TB asked for 2^31 - 1).
    const at::Tensor w = at::randn({4, 64});
    quant::GridSpec channel;
    quant::GridSpec wide;
    wide.granularity = quant::Granularity::PerGroup;
    wide.groupSize = std::numeric_limits<int32_t>::max();
    const QString e = runInChild([&] {
      if (!at::equal(quant::roundToNearest(w, wide), quant::roundToNearest(w, channel)))
        throw Error("differs from per-channel");
    });
    QCOMPARE(e, QString("no error"));
  }

  void deepSchemeJson() {
    // A wrong value in an error message went through a recursive dump().
    const std::string deep = "{\"name\": " + nested("[", "", "]", 100000) + "}";
    QString e = runInChild([&] { quant::QuantScheme::fromJson(deep); });
    QVERIFY2(e.contains("scheme JSON: JSON nests arrays/objects deeper than 16 levels"),
             qPrintable(e));
    // A wrong value is shown shortly: depth and length bounded.
    const std::string wrong =
        "{\"weight\": {\"bits\": [[[[[\"x\"]]]], \"" + std::string(500, 'y') + "\"]}}";
    e = runInChild([&] { quant::QuantScheme::fromJson(wrong); });
    QVERIFY2(e.contains("weight.bits: expected an integer, got [[[[...]]], \"yyy") &&
                 e.contains("...\"]") && e.size() < 200,
             qPrintable(e));
  }

  void jsonPreviewIsBounded() {
    nlohmann::json v = nlohmann::json::array();
    for (int i = 0; i < 1000; ++i)
      v.push_back(i);
    const std::string p = jsonPreview(v);
    QVERIFY2(p.size() < 80 && p.rfind("[0, 1, 2", 0) == 0 && p.find("...") != std::string::npos,
             p.c_str());
    QCOMPARE(jsonPreview(nlohmann::json("\xE2\x96\x81")), std::string("\"\xE2\x96\x81\""));
    QCOMPARE(jsonPreview(nlohmann::json::object()), std::string("{}"));
  }

  // --- run stores holding deep JSON ---

  void runStoreWithDeepJson() {
    const std::string storePath = path("deep.sqlite").toStdString();
    std::string a, b;
    {
      RunStore store = RunStore::open(storePath);
      RunInfo info;
      info.model = {"/models/a.gguf", "sha256:" + std::string(64, 'a')};
      info.method = "rtn";
      info.schemeJson = R"({"name":"W4A16"})";
      info.hyperparametersJson = R"({"seed":0})";
      a = store.createRun(info);
      b = store.createRun(info);
      // The store refuses to record such a document.
      info.hyperparametersJson = nested("[", "", "]", 1000);
      try {
        store.createRun(info);
        QFAIL("no error");
      } catch (const Error &e) {
        QVERIFY2(QString(e.what()).contains("deeper than 64 levels"), e.what());
      }
    }
    // Written behind the store's back, as an older or foreign writer might.
    sqlite3 *db = nullptr;
    QCOMPARE(sqlite3_open(storePath.c_str(), &db), SQLITE_OK);
    const std::string deep = nested(R"({"a":)", "0", "}", 50000);
    sqlite3_stmt *st = nullptr;
    QCOMPARE(sqlite3_prepare_v2(db, "UPDATE runs SET hyperparameters_json = ?", -1, &st, nullptr),
             SQLITE_OK);
    sqlite3_bind_text(st, 1, deep.c_str(), int(deep.size()), SQLITE_TRANSIENT);
    QCOMPARE(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);

    const QString e = runInChild([&] { RunStore::open(storePath).compareRuns({a, b}); });
    QVERIFY2(e.startsWith("error: ") && e.contains("hyperparameters of run") &&
                 e.contains("deeper than 64 levels"),
             qPrintable(e));

    const QString store = QString::fromStdString(storePath);
    for (const QStringList &args :
         {QStringList{"runs", "list", "--json", "--store", store},
          QStringList{"runs", "show", QString::fromStdString(a), "--json", "--store", store},
          QStringList{"runs", "compare", QString::fromStdString(a), QString::fromStdString(b),
                      "--json", "--store", store}}) {
      const test::Result r = test::runLrq(args);
      QVERIFY2(r.exitCode > 0 && r.err.contains("deeper than 64 levels"),
               qPrintable(args.join(' ') + ": " + QString::number(r.exitCode) + " " + r.err));
    }
  }

  void cliQuantizeWithDeepSchemeOrHugeGroup() {
    // 100,000 levels (200 KB) crashed lrq quantize before the model loaded.
    const QString deep = path("deep-scheme.json");
    writeBytes(deep, "{\"name\": " + nested("[", "", "]", 100000) + "}");
    test::Result r = test::runLrq({"quantize", "default", "--method", "rtn", "--scheme", deep,
                                   "--store", path("cli.sqlite"), "--no-eval", "--no-spectra"});
    QVERIFY2(r.exitCode > 0 && r.err.contains("deep-scheme.json") &&
                 r.err.contains("deeper than 16 levels"),
             qPrintable(QString::number(r.exitCode) + " " + r.err));

    // A group of 100,000 padded every row to 100,000 columns: refused after the
    // model loads and before calibration, naming the layer.
    const QString group = path("group-scheme.json");
    writeBytes(group, R"({"weight": {"granularity": "per-group", "group_size": 100000}})");
    r = test::runLrq({"quantize", "default", "--method", "rtn", "--scheme", group, "--store",
                      path("cli.sqlite"), "--no-eval", "--no-spectra"});
    QVERIFY2(r.exitCode > 0 && r.err.contains("weight.group_size 100000 is larger than the 576 "
                                              "in-features of q_proj"),
             qPrintable(QString::number(r.exitCode) + " " + r.err));
  }
};

QTEST_GUILESS_MAIN(TestInputLimits)
#include "test_input_limits.moc"
