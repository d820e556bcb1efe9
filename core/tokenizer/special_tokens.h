#pragma once
// Finds special (control / user-defined) tokens written in text (internal).
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
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
  // matching is leftmost-longest). A byte trie keeps this linear in the number
  // of tokens: each position costs at most the length of the longest token
  // that shares its prefix, however many tokens share a first byte.
  void split(std::string_view text, bool parseSpecial, std::vector<TextFragment> &out) const;

private:
  struct Entry {
    int32_t id = -1; // -1: no token ends at this node
    bool always = false;
  };
  static uint64_t edgeKey(int32_t node, unsigned char byte) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(node)) << 8) | byte;
  }
  int32_t child(int32_t node, unsigned char byte) const;

  std::array<int32_t, 256> rootChildren_ = makeRoot();
  std::unordered_map<uint64_t, int32_t> edges_; // (node, byte) -> node, below the root
  std::vector<Entry> nodes_{Entry{}};           // node 0 is the root
  size_t count_ = 0;

  static std::array<int32_t, 256> makeRoot() {
    std::array<int32_t, 256> a{};
    a.fill(-1);
    return a;
  }
};

} // namespace lrq
