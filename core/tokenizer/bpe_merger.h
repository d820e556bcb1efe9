#pragma once
// Rank-ordered BPE merging over token ids (internal to core/tokenizer).
#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace lrq {

// Merges adjacent symbol pairs in order of merge rank (lowest first; among
// equal ranks the leftmost pair first), as GPT-2 / HF BPE do.
class BpeMerger {
public:
  // Registers merge (left, right) -> merged with the given rank; a pair seen
  // again keeps its first (lowest) rank.
  void add(int32_t left, int32_t right, int32_t merged, int32_t rank);
  bool empty() const { return table_.empty(); }
  std::size_t size() const { return table_.size(); }

  // Rewrites symbols in place until no registered pair is adjacent.
  void apply(std::vector<int32_t> &symbols) const;

private:
  struct Entry {
    int32_t rank;
    int32_t merged;
  };
  static uint64_t key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  const Entry *find(int32_t left, int32_t right) const {
    auto it = table_.find(key(left, right));
    return it == table_.end() ? nullptr : &it->second;
  }
  void applyLong(std::vector<int32_t> &symbols) const;

  std::unordered_map<uint64_t, Entry> table_;
};

} // namespace lrq
