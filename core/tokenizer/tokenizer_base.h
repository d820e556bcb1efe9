#pragma once
// Shared part of the tokenizer implementations (internal to core/tokenizer).
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/tokenizer/special_tokens.h"
#include "core/tokenizer/tokenizer.h"

namespace lrq {

class BpeMerger;

class TokenizerBase : public Tokenizer {
public:
  // Checks the spec (throws lrq::FileError naming spec.source) and indexes the vocabulary.
  explicit TokenizerBase(TokenizerSpec spec);

  std::vector<int32_t> encode(std::string_view text, bool addBos, bool parseSpecial) const override;
  std::string decode(const std::vector<int32_t> &ids) const override;
  std::string tokenBytes(int32_t id) const override;
  int32_t vocabSize() const override { return static_cast<int32_t>(spec_.tokens.size()); }
  int32_t bosId() const override { return spec_.bosId; }
  int32_t eosId() const override { return spec_.eosId; }
  const TokenizerSpec &spec() const override { return spec_; }

protected:
  // Tokenizes one run of plain text (no special tokens in it), appending ids.
  virtual void encodeText(std::string_view text, std::vector<int32_t> &out) const = 0;
  // Final touch on decoded text (SentencePiece drops the prefix space).
  virtual void finishDecode(std::string &) const {}

  TokenType typeOf(int32_t id) const {
    return spec_.tokenTypes.empty() ? TokenType::Normal : spec_.tokenTypes[id];
  }
  int32_t findToken(const std::string &text) const {
    auto it = tokenToId_.find(text);
    return it == tokenToId_.end() ? -1 : it->second;
  }
  [[noreturn]] void fail(const std::string &problem) const;
  // Reads spec.merges ("a b", priority order) into merger, by token id.
  void loadMerges(BpeMerger &merger) const;

  TokenizerSpec spec_;
  std::unordered_map<std::string, int32_t> tokenToId_;
  std::vector<std::string> pieces_; // decoded bytes per id; filled by the subclass
  SpecialTokenMatcher specials_;
};

std::unique_ptr<Tokenizer> makeByteLevelBpe(const TokenizerSpec &spec);
std::unique_ptr<Tokenizer> makeSentencePieceBpe(const TokenizerSpec &spec);

} // namespace lrq
