#include "core/tokenizer/tokenizer.h"

#include <algorithm>

#include "core/common/error.h"
#include "core/tokenizer/bpe_merger.h"
#include "core/tokenizer/tokenizer_base.h"

namespace lrq {

namespace {

constexpr size_t kPreviewBytes = 64;

// The start of a long text for a message, cut at a UTF-8 character boundary.
std::string previewText(const std::string &text) {
  if (text.size() <= kPreviewBytes)
    return text;
  size_t end = kPreviewBytes;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
    --end;
  return text.substr(0, end) + "...";
}

} // namespace

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
  // A merge's halves and their concatenation (the line less one space) are
  // tokens, so no candidate is longer than the longest token. With that bound,
  // and a budget on the bytes looked up over all lines, a line of many spaces
  // costs time linear in the file instead of quadratic in the line.
  size_t longest = 0;
  for (const std::string &t : spec_.tokens)
    longest = std::max(longest, t.size());
  uint64_t budget = uint64_t(64) << 20;
  for (const std::string &line : spec_.merges)
    budget += 16 * uint64_t(line.size());
  uint64_t spent = 0;
  for (size_t rank = 0; rank < spec_.merges.size(); ++rank) {
    const std::string &line = spec_.merges[rank];
    // Tokens may themselves contain spaces (HF's pair form); take the first split
    // whose halves and whose concatenation are all tokens.
    bool found = false;
    if (line.size() >= 3 && line.size() - 1 <= longest) {
      for (size_t pos = line.find(' ', 1); pos != std::string::npos && pos <= longest && !found;
           pos = line.find(' ', pos + 1)) {
        if (line.size() - pos - 1 > longest)
          continue;
        spent += 2 * uint64_t(line.size());
        if (spent > budget)
          fail("merge " + std::to_string(rank) + " '" + previewText(line) + "' (" +
               std::to_string(line.size()) +
               " bytes): too many ways to split the merges into tokens");
        const std::string left = line.substr(0, pos);
        const int32_t l = findToken(left);
        if (l < 0)
          continue;
        const std::string right = line.substr(pos + 1);
        const int32_t r = findToken(right);
        if (r < 0)
          continue;
        const int32_t m = findToken(left + right);
        if (m >= 0) {
          merger.add(l, r, m, static_cast<int32_t>(rank));
          found = true;
        }
      }
    }
    if (!found)
      fail("merge " + std::to_string(rank) + " '" + previewText(line) + "'" +
           (line.size() > kPreviewBytes ? " (" + std::to_string(line.size()) + " bytes)" : "") +
           " does not name two tokens whose concatenation is a token");
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
