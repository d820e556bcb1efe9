#pragma once
// Finds special (control / user-defined) tokens written in text (internal).
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lrq {

// A piece of input: either plain text to tokenize or one special token.
struct TextFragment {
  std::string_view text; // empty for a token
  int32_t token = -1;    // >= 0 for a special token
};

class SpecialTokenMatcher {
public:
  // always: recognised even when the caller does not ask for special tokens
  // (user-defined tokens, as llama.cpp and HF treat them).
  void add(const std::string &text, int32_t id, bool always);
  bool empty() const { return count_ == 0; }

  // Splits text at the special tokens it contains, scanning left to right and
  // taking the longest token that starts at each position (HF's added-token
  // matching is leftmost-longest).
  void split(std::string_view text, bool parseSpecial, std::vector<TextFragment> &out) const;

private:
  struct Entry {
    std::string text;
    int32_t id;
    bool always;
  };
  std::array<std::vector<Entry>, 256> byFirstByte_; // each sorted longest first
  size_t count_ = 0;
};

} // namespace lrq
