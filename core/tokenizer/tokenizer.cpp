#include "core/tokenizer/tokenizer.h"

#include "core/common/error.h"
#include "core/tokenizer/bpe_merger.h"
#include "core/tokenizer/tokenizer_base.h"

namespace lrq {

std::unique_ptr<Tokenizer> Tokenizer::create(const TokenizerSpec &spec) {
  switch (spec.kind) {
  case TokenizerKind::ByteLevelBpe:
    return makeByteLevelBpe(spec);
  case TokenizerKind::SentencePieceBpe:
    return makeSentencePieceBpe(spec);
  }
  throw FileError(spec.source, "unknown tokenizer kind");
}

TokenizerBase::TokenizerBase(TokenizerSpec spec) : spec_(std::move(spec)) {
  const size_t n = spec_.tokens.size();
  if (n == 0)
    fail("tokenizer has no tokens");
  if (n > static_cast<size_t>(INT32_MAX))
    fail("tokenizer has too many tokens");
  if (!spec_.tokenTypes.empty() && spec_.tokenTypes.size() != n)
    fail("tokenizer has " + std::to_string(spec_.tokenTypes.size()) + " token types for " +
         std::to_string(n) + " tokens");
  if (!spec_.scores.empty() && spec_.scores.size() != n)
    fail("tokenizer has " + std::to_string(spec_.scores.size()) + " scores for " +
         std::to_string(n) + " tokens");
  const std::pair<const char *, int32_t> specialIds[] = {
      {"BOS", spec_.bosId}, {"EOS", spec_.eosId}, {"UNK", spec_.unkId}, {"PAD", spec_.padId}};
  for (const auto &[name, id] : specialIds)
    if (id < -1 || id >= static_cast<int32_t>(n))
      fail(std::string(name) + " token id " + std::to_string(id) +
           " is outside the vocabulary of " + std::to_string(n));

  tokenToId_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(i);
    tokenToId_.emplace(spec_.tokens[i], id); // first id wins for duplicate texts
    const TokenType type = typeOf(id);
    if (type == TokenType::Control || type == TokenType::Unknown)
      specials_.add(spec_.tokens[i], id, false);
    else if (type == TokenType::UserDefined)
      specials_.add(spec_.tokens[i], id, true);
  }
}

void TokenizerBase::fail(const std::string &problem) const {
  throw FileError(spec_.source.empty() ? std::string("tokenizer") : spec_.source, problem);
}

void TokenizerBase::loadMerges(BpeMerger &merger) const {
  for (size_t rank = 0; rank < spec_.merges.size(); ++rank) {
    const std::string &line = spec_.merges[rank];
    // Tokens may themselves contain spaces (HF's pair form); take the first split
    // whose halves and whose concatenation are all tokens.
    bool found = false;
    for (size_t pos = line.find(' ', 1); pos != std::string::npos && !found;
         pos = line.find(' ', pos + 1)) {
      const std::string left = line.substr(0, pos);
      const std::string right = line.substr(pos + 1);
      const int32_t l = findToken(left);
      const int32_t r = findToken(right);
      const int32_t m = findToken(left + right);
      if (l >= 0 && r >= 0 && m >= 0) {
        merger.add(l, r, m, static_cast<int32_t>(rank));
        found = true;
      }
    }
    if (!found)
      fail("merge " + std::to_string(rank) + " '" + line +
           "' does not name two tokens whose concatenation is a token");
  }
}

std::vector<int32_t> TokenizerBase::encode(std::string_view text, bool addBos,
                                           bool parseSpecial) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (addBos && spec_.addBos && spec_.bosId >= 0)
    out.push_back(spec_.bosId);
  if (specials_.empty()) {
    if (!text.empty())
      encodeText(text, out);
    return out;
  }
  std::vector<TextFragment> fragments;
  specials_.split(text, parseSpecial, fragments);
  for (const auto &f : fragments) {
    if (f.token >= 0)
      out.push_back(f.token);
    else
      encodeText(f.text, out);
  }
  return out;
}

std::string TokenizerBase::tokenBytes(int32_t id) const {
  if (id < 0 || id >= vocabSize())
    return {};
  return pieces_[id];
}

std::string TokenizerBase::decode(const std::vector<int32_t> &ids) const {
  std::string text;
  for (int32_t id : ids)
    if (id >= 0 && id < vocabSize())
      text += pieces_[id];
  finishDecode(text);
  return text;
}

} // namespace lrq
