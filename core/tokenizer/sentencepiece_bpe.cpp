// SentencePiece-style BPE (LLaMA-1/2): spaces become "▁", an optional "▁" is
// prepended, characters are merged either by merge rank (HF tokenizer.json) or
// by the score of the merged token (llama.cpp's SPM tokenizer, GGUF scores), and
// characters missing from the vocabulary fall back to <0xNN> byte tokens.
#include <array>
#include <cstdio>
#include <queue>

#include "core/tokenizer/bpe_merger.h"
#include "core/tokenizer/tokenizer_base.h"
#include "core/tokenizer/utf8.h"

namespace lrq {

namespace {

const std::string kSpaceMark = "\xE2\x96\x81"; // U+2581

class SentencePieceBpe final : public TokenizerBase {
public:
  explicit SentencePieceBpe(const TokenizerSpec &spec) : TokenizerBase(spec) {
    byteIds_.fill(-1);
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      const int32_t id = findToken(name);
      if (id >= 0 && (typeOf(id) == TokenType::Byte || typeOf(id) == TokenType::Normal))
        byteIds_[b] = id;
    }
    useMerges_ = !spec_.merges.empty();
    if (useMerges_)
      loadMerges(merger_);
    else if (spec_.scores.empty())
      fail("SentencePiece tokenizer has neither merges nor scores");

    pieces_.resize(spec_.tokens.size());
    for (size_t i = 0; i < spec_.tokens.size(); ++i) {
      const auto id = static_cast<int32_t>(i);
      const TokenType type = typeOf(id);
      if (type == TokenType::Control || type == TokenType::Unknown)
        continue;
      const std::string &text = spec_.tokens[i];
      if (type == TokenType::Byte) {
        unsigned value = 0;
        if (text.size() == 6 && std::sscanf(text.c_str(), "<0x%2X>", &value) == 1) {
          pieces_[i] = std::string(1, static_cast<char>(value));
          continue;
        }
      }
      std::string piece;
      for (size_t pos = 0; pos < text.size();) {
        if (text.compare(pos, kSpaceMark.size(), kSpaceMark) == 0) {
          piece.push_back(' ');
          pos += kSpaceMark.size();
        } else {
          piece.push_back(text[pos++]);
        }
      }
      pieces_[i] = std::move(piece);
    }
    for (int b = 0; b < 256; ++b)
      if (byteIds_[b] >= 0)
        pieces_[byteIds_[b]] = std::string(1, static_cast<char>(b));
  }

protected:
  void encodeText(std::string_view text, std::vector<int32_t> &out) const override {
    std::string normalized;
    normalized.reserve(text.size() + text.size() / 4 + 3);
    if (spec_.addSpacePrefix)
      normalized = kSpaceMark;
    for (char c : text) {
      if (c == ' ')
        normalized += kSpaceMark;
      else
        normalized.push_back(c);
    }
    if (useMerges_)
      encodeByMerges(normalized, out);
    else
      encodeByScores(normalized, out);
  }

  void finishDecode(std::string &text) const override {
    if (spec_.addSpacePrefix && !text.empty() && text[0] == ' ')
      text.erase(0, 1);
  }

private:
  // HF BPE: characters are the initial symbols, merged by merge rank.
  void encodeByMerges(const std::string &text, std::vector<int32_t> &out) const {
    std::vector<int32_t> symbols;
    symbols.reserve(text.size());
    bool previousUnk = false;
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = utf8::sequenceLength(text, pos);
      const int32_t id = findToken(text.substr(pos, len));
      if (id >= 0) {
        symbols.push_back(id);
        previousUnk = false;
      } else {
        bool all = true;
        for (size_t k = 0; k < len; ++k)
          all = all && byteIds_[static_cast<unsigned char>(text[pos + k])] >= 0;
        if (all) {
          for (size_t k = 0; k < len; ++k)
            symbols.push_back(byteIds_[static_cast<unsigned char>(text[pos + k])]);
          previousUnk = false;
        } else if (spec_.unkId >= 0 && !previousUnk) { // consecutive UNKs fuse (fuse_unk)
          symbols.push_back(spec_.unkId);
          previousUnk = true;
        }
      }
      pos += len;
    }
    merger_.apply(symbols);
    out.insert(out.end(), symbols.begin(), symbols.end());
  }

  // llama.cpp's SPM tokenizer: repeatedly merge the adjacent pair whose
  // concatenation is the token with the highest score (leftmost on ties).
  void encodeByScores(const std::string &text, std::vector<int32_t> &out) const {
    struct Symbol {
      size_t start;
      size_t len;
      int prev;
      int next;
    };
    std::vector<Symbol> symbols;
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = utf8::sequenceLength(text, pos);
      const int index = static_cast<int>(symbols.size());
      symbols.push_back(Symbol{pos, len, index - 1, -1});
      if (index > 0)
        symbols[index - 1].next = index;
      pos += len;
    }
    struct Bigram {
      float score;
      int left;
      int right;
      size_t size;
      bool operator<(const Bigram &o) const { // top = highest score, then leftmost
        return score != o.score ? score < o.score : left > o.left;
      }
    };
    std::priority_queue<Bigram> queue;
    auto tryAdd = [&](int left, int right) {
      if (left < 0 || right < 0)
        return;
      const size_t size = symbols[left].len + symbols[right].len;
      const int32_t id = findToken(text.substr(symbols[left].start, size));
      if (id >= 0)
        queue.push(Bigram{spec_.scores[id], left, right, size});
    };
    for (size_t i = 1; i < symbols.size(); ++i)
      tryAdd(static_cast<int>(i) - 1, static_cast<int>(i));
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol &l = symbols[b.left];
      Symbol &r = symbols[b.right];
      // Symbols only grow, so matching sizes mean neither side changed.
      if (l.len == 0 || r.len == 0 || l.len + r.len != b.size)
        continue;
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0)
        symbols[r.next].prev = b.left;
      tryAdd(l.prev, b.left);
      tryAdd(b.left, l.next);
    }
    bool previousUnk = false;
    for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
      const std::string piece = text.substr(symbols[i].start, symbols[i].len);
      const int32_t id = findToken(piece);
      if (id >= 0) {
        out.push_back(id);
        previousUnk = false;
        continue;
      }
      bool all = true;
      for (char c : piece)
        all = all && byteIds_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : piece)
          out.push_back(byteIds_[static_cast<unsigned char>(c)]);
        previousUnk = false;
      } else if (spec_.unkId >= 0 && !previousUnk) {
        out.push_back(spec_.unkId);
        previousUnk = true;
      }
    }
  }

  std::array<int32_t, 256> byteIds_{};
  BpeMerger merger_;
  bool useMerges_ = false;
};

} // namespace

std::unique_ptr<Tokenizer> makeSentencePieceBpe(const TokenizerSpec &spec) {
  return std::make_unique<SentencePieceBpe>(spec);
}

} // namespace lrq
