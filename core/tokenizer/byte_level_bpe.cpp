// GPT-2 style byte-level BPE: every byte maps to a printable code point, the
// text is cut into words by the pre-tokenizer regexes, and each word's bytes are
// merged by merge rank.
#include <array>
#include <atomic>
#include <mutex>

#include <spdlog/spdlog.h>

#include "core/common/error.h"
#include "core/common/text_escape.h"
#include "core/tokenizer/bpe_merger.h"
#include "core/tokenizer/pre_tokenizers.h"
#include "core/tokenizer/regex_splitter.h"
#include "core/tokenizer/tokenizer_base.h"
#include "core/tokenizer/utf8.h"

namespace lrq {

namespace {

// GPT-2's table: printable Latin-1 bytes stand for themselves, the other 68
// bytes take the code points 256, 257, ... in byte order.
std::array<uint32_t, 256> byteToCodePoint() {
  std::array<uint32_t, 256> table{};
  uint32_t extra = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    table[b] = printable ? b : extra++;
  }
  return table;
}

// Words longer than this are not cached (they are rare and would bloat the cache).
constexpr size_t kMaxCachedWord = 64;
constexpr size_t kMaxCacheEntries = 1 << 18;

class ByteLevelBpe final : public TokenizerBase {
public:
  explicit ByteLevelBpe(const TokenizerSpec &spec) : TokenizerBase(spec) {
    const auto table = byteToCodePoint();
    std::array<int, 512> codePointToByte;
    codePointToByte.fill(-1);
    for (int b = 0; b < 256; ++b) {
      codePointToByte[table[b]] = b;
      std::string s;
      utf8::append(s, table[b]);
      byteText_[b] = s;
      byteIds_[b] = findToken(s);
    }
    // A byte without a token is dropped from the text (below). That is harmless
    // for a rare byte, but a vocabulary lacking the bytes of plain ASCII text
    // would lose most of any text and yield a meaningless perplexity.
    int missingText = 0;
    std::string example;
    for (int b = 0; b < 128; ++b) {
      const bool textByte = (b >= 0x20 && b < 0x7F) || b == '\n';
      if (textByte && byteIds_[b] < 0) {
        if (example.empty())
          example = b == '\n' ? std::string("newline") : "'" + std::string(1, char(b)) + "'";
        ++missingText;
      }
    }
    if (missingText > 0)
      fail("byte-level vocabulary has no token for " + std::to_string(missingText) +
           " of the 95 printable ASCII bytes and newline (e.g. " + example +
           "); text holding them would be silently dropped");

    PreTokenizerRecipe recipe;
    if (!spec_.preTokenizerRegexes.empty()) {
      recipe.regexes = spec_.preTokenizerRegexes;
    } else if (!preTokenizerRecipe(spec_.preTokenizer, recipe)) {
      spdlog::warn("{}: unknown pre-tokenizer '{}', using 'default'",
                   spec_.source.empty() ? "tokenizer" : spec_.source, spec_.preTokenizer);
      preTokenizerRecipe("default", recipe);
    }
    ignoreMerges_ = spec_.ignoreMerges || recipe.ignoreMerges;
    try {
      splitter_ = std::make_unique<RegexSplitter>(recipe.regexes);
    } catch (const Error &e) {
      fail(e.what());
    }
    loadMerges(merger_);

    pieces_.resize(spec_.tokens.size());
    for (size_t i = 0; i < spec_.tokens.size(); ++i) {
      const auto id = static_cast<int32_t>(i);
      const TokenType type = typeOf(id);
      const std::string &text = spec_.tokens[i];
      if (type == TokenType::Control || type == TokenType::Unknown)
        continue;
      if (type == TokenType::UserDefined) { // stored as raw text, not byte-mapped
        pieces_[i] = text;
        continue;
      }
      std::string bytes;
      for (size_t pos = 0; pos < text.size();) {
        const size_t len = utf8::sequenceLength(text, pos);
        const uint32_t cp = utf8::decodeAt(text, pos, len);
        if (cp < codePointToByte.size() && codePointToByte[cp] >= 0 && len > 0)
          bytes.push_back(static_cast<char>(codePointToByte[cp]));
        else
          bytes.append(text, pos, len);
        pos += len;
      }
      pieces_[i] = std::move(bytes);
    }
  }

protected:
  void encodeText(std::string_view text, std::vector<int32_t> &out) const override {
    warnAboutDroppedBytes(text);
    std::vector<std::string_view> words;
    splitter_->split(text, words);
    std::vector<int32_t> symbols;
    for (const auto &word : words) {
      if (word.size() <= kMaxCachedWord) {
        std::string key(word);
        {
          std::lock_guard<std::mutex> lock(cacheMutex_);
          auto it = cache_.find(key);
          if (it != cache_.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            continue;
          }
        }
        encodeWord(word, symbols);
        out.insert(out.end(), symbols.begin(), symbols.end());
        std::lock_guard<std::mutex> lock(cacheMutex_);
        if (cache_.size() >= kMaxCacheEntries)
          cache_.clear();
        cache_.emplace(std::move(key), symbols);
      } else {
        encodeWord(word, symbols);
        out.insert(out.end(), symbols.begin(), symbols.end());
      }
    }
  }

private:
  // Bytes without a token are dropped (see encodeWord); says how many, once.
  void warnAboutDroppedBytes(std::string_view text) const {
    if (warnedDropped_.load(std::memory_order_relaxed))
      return;
    size_t dropped = 0;
    for (char c : text)
      dropped += byteIds_[static_cast<unsigned char>(c)] < 0;
    if (dropped == 0 || warnedDropped_.exchange(true))
      return;
    spdlog::warn("{}: {} of {} bytes of the text ({:.2f}%) have no token in the vocabulary and "
                 "are dropped",
                 printableText(spec_.source.empty() ? std::string("tokenizer") : spec_.source),
                 dropped, text.size(), 100.0 * double(dropped) / double(text.size()));
  }

  void encodeWord(std::string_view word, std::vector<int32_t> &symbols) const {
    symbols.clear();
    if (ignoreMerges_) {
      std::string mapped;
      for (char c : word)
        mapped += byteText_[static_cast<unsigned char>(c)];
      const int32_t id = findToken(mapped);
      if (id >= 0) {
        symbols.push_back(id);
        return;
      }
    }
    // A byte whose character is not in the vocabulary is dropped, as llama.cpp
    // does and as HF does for byte-level models (they set no unk_token).
    for (char c : word) {
      const int32_t id = byteIds_[static_cast<unsigned char>(c)];
      if (id >= 0)
        symbols.push_back(id);
    }
    merger_.apply(symbols);
  }

  std::array<std::string, 256> byteText_;
  std::array<int32_t, 256> byteIds_{};
  std::unique_ptr<RegexSplitter> splitter_;
  BpeMerger merger_;
  bool ignoreMerges_ = false;
  mutable std::atomic<bool> warnedDropped_{false};
  mutable std::mutex cacheMutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

} // namespace

std::unique_ptr<Tokenizer> makeByteLevelBpe(const TokenizerSpec &spec) {
  return std::make_unique<ByteLevelBpe>(spec);
}

} // namespace lrq
