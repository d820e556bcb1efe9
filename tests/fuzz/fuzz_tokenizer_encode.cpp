// The tokenizer's encode on arbitrary bytes with real vocabularies: the
// default model's byte-level BPE (49,152 tokens, read from the GGUF in the
// cache, or a small built-in byte-level vocabulary when the cache has no
// model) and a built-in SentencePiece vocabulary with byte fallback.
//
// Input: one flags byte (bit 0: add BOS, bit 1: parse special tokens,
// bit 2: SentencePiece), then the text. With special tokens off, the bytes of
// the tokens must spell the text exactly, less the bytes the vocabulary has
// no token for (SmolLM2 lacks 21, such as 0x04 and 0xC0, which are dropped).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <sys/stat.h>

#include "core/common/error.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "core/tokenizer/tokenizer.h"
#include "core/tokenizer/utf8.h"
#include "fuzz_common.h"

namespace {

std::unique_ptr<lrq::Tokenizer> byteLevel;
std::unique_ptr<lrq::Tokenizer> sentencePiece;
bool byteLevelCovers[256];

bool isFile(const std::string &path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The default model as packaging/install-deps.sh and `lrq` cache it.
std::string defaultModelPath() {
  if (const char *explicitPath = std::getenv("LRQ_FUZZ_VOCAB_GGUF"))
    return explicitPath;
  std::string cache;
  if (const char *dir = std::getenv("LRQ_CACHE_DIR"))
    cache = dir;
  else if (const char *xdg = std::getenv("XDG_CACHE_HOME"))
    cache = std::string(xdg) + "/lrq-workbench";
  else if (const char *home = std::getenv("HOME"))
    cache = std::string(home) + "/.cache/lrq-workbench";
  return cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// GPT-2's printable stand-in for each byte.
std::string byteLevelText(unsigned byte) {
  uint32_t extra = 256;
  for (unsigned b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    const uint32_t cp = printable ? b : extra++;
    if (b == byte) {
      std::string s;
      lrq::utf8::append(s, cp);
      return s;
    }
  }
  return {};
}

// Every byte, a few merges spelling common English, and a control token.
lrq::TokenizerSpec builtinByteLevelSpec() {
  lrq::TokenizerSpec spec;
  spec.kind = lrq::TokenizerKind::ByteLevelBpe;
  spec.source = "built-in byte-level vocabulary";
  for (unsigned b = 0; b < 256; ++b)
    spec.tokens.push_back(byteLevelText(b));
  const std::string space = byteLevelText(' ');
  for (const char *merge : {"t h", "th e", "i n", "e r", "a n", "o n", "in g"}) {
    const std::string m = merge;
    const size_t cut = m.find(' ');
    spec.merges.push_back(m);
    spec.tokens.push_back(m.substr(0, cut) + m.substr(cut + 1));
  }
  spec.merges.push_back(space + " the");
  spec.tokens.push_back(space + "the");
  spec.tokens.push_back("<|endoftext|>");
  spec.tokenTypes.assign(spec.tokens.size(), lrq::TokenType::Normal);
  spec.tokenTypes.back() = lrq::TokenType::Control;
  spec.eosId = static_cast<int32_t>(spec.tokens.size() - 1);
  return spec;
}

// LLaMA-style: <unk> <s> </s>, 256 byte tokens, "▁" and a few merges.
lrq::TokenizerSpec builtinSentencePieceSpec() {
  lrq::TokenizerSpec spec;
  spec.kind = lrq::TokenizerKind::SentencePieceBpe;
  spec.source = "built-in SentencePiece vocabulary";
  spec.tokens = {"<unk>", "<s>", "</s>"};
  spec.tokenTypes = {lrq::TokenType::Unknown, lrq::TokenType::Control, lrq::TokenType::Control};
  for (unsigned b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    spec.tokens.push_back(name);
    spec.tokenTypes.push_back(lrq::TokenType::Byte);
  }
  const std::string mark = "\xE2\x96\x81";
  for (const char *t : {"a", "e", "h", "i", "n", "t", "\xC3\xA9"}) {
    spec.tokens.push_back(t);
    spec.tokenTypes.push_back(lrq::TokenType::Normal);
  }
  spec.tokens.push_back(mark);
  spec.tokenTypes.push_back(lrq::TokenType::Normal);
  for (const std::string &m :
       std::vector<std::string>{mark + " t", "h e", mark + "t he", "i n", mark + " a"}) {
    const size_t cut = m.find(' ');
    spec.merges.push_back(m);
    spec.tokens.push_back(m.substr(0, cut) + m.substr(cut + 1));
    spec.tokenTypes.push_back(lrq::TokenType::Normal);
  }
  spec.unkId = 0;
  spec.bosId = 1;
  spec.eosId = 2;
  spec.addBos = true;
  spec.addSpacePrefix = true;
  return spec;
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  const std::string model = defaultModelPath();
  if (isFile(model)) {
    const lrq::GgufReader reader(model);
    byteLevel = lrq::Tokenizer::create(lrq::tokenizerSpecFromGguf(reader));
    std::fprintf(stderr, "fuzz_tokenizer_encode: vocabulary of %d tokens from %s\n",
                 byteLevel->vocabSize(), model.c_str());
  } else {
    byteLevel = lrq::Tokenizer::create(builtinByteLevelSpec());
    std::fprintf(stderr, "fuzz_tokenizer_encode: %s not found, using a built-in vocabulary\n",
                 model.c_str());
  }
  sentencePiece = lrq::Tokenizer::create(builtinSentencePieceSpec());
  for (int b = 0; b < 256; ++b)
    byteLevelCovers[b] = !byteLevel->encode(std::string(1, char(b)), false, false).empty();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0)
    return 0;
  const bool addBos = data[0] & 1;
  const bool parseSpecial = data[0] & 2;
  const bool spm = data[0] & 4;
  const std::string_view text(reinterpret_cast<const char *>(data + 1), size - 1);
  const lrq::Tokenizer &tokenizer = spm ? *sentencePiece : *byteLevel;
  std::vector<int32_t> ids;
  try {
    ids = tokenizer.encode(text, addBos, parseSpecial);
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
    return 0; // e.g. the regex CPU budget; a refusal, not a crash
  }
  std::string spelled;
  for (int32_t id : ids) {
    FUZZ_CHECK(id >= 0 && id < tokenizer.vocabSize());
    spelled += tokenizer.tokenBytes(id);
  }
  if (!parseSpecial) {
    std::string expected;
    if (spm) {
      // SentencePiece writes spaces as U+2581, so a U+2581 in the text comes back as a space.
      if (!text.empty())
        expected = " " + std::string(text);
      const std::string mark = "\xE2\x96\x81";
      for (size_t at = expected.find(mark); at != std::string::npos; at = expected.find(mark, at))
        expected.replace(at, mark.size(), " ");
    } else {
      for (char c : text)
        if (byteLevelCovers[static_cast<unsigned char>(c)])
          expected += c;
    }
    FUZZ_CHECK(spelled == expected);
  }
  (void)tokenizer.decode(ids);
  return 0;
}
