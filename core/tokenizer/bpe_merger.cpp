#include "core/tokenizer/bpe_merger.h"

#include <cstddef>
#include <limits>
#include <queue>

namespace lrq {

namespace {
// Below this many symbols a rescan per merge beats a heap (most words are short).
constexpr size_t kShortWord = 24;
} // namespace

void BpeMerger::add(int32_t left, int32_t right, int32_t merged, int32_t rank) {
  table_.emplace(key(left, right), Entry{rank, merged});
}

void BpeMerger::apply(std::vector<int32_t> &s) const {
  if (s.size() < 2 || table_.empty())
    return;
  if (s.size() > kShortWord) {
    applyLong(s);
    return;
  }
  while (s.size() >= 2) {
    int32_t bestRank = std::numeric_limits<int32_t>::max();
    int32_t bestMerged = -1;
    size_t best = 0;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const Entry *e = find(s[i], s[i + 1]);
      if (e && e->rank < bestRank) {
        bestRank = e->rank;
        bestMerged = e->merged;
        best = i;
      }
    }
    if (bestMerged < 0)
      break;
    s[best] = bestMerged;
    s.erase(s.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
}

void BpeMerger::applyLong(std::vector<int32_t> &s) const {
  const auto n = static_cast<int32_t>(s.size());
  std::vector<int32_t> prev(n), next(n);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int32_t pos; // index of the left symbol; indices keep left-to-right order
    int32_t left;
    int32_t right;
    bool operator<(const Candidate &o) const { // priority_queue pops the largest
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  auto consider = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0)
      return;
    const int32_t l = s[pos];
    const int32_t r = s[next[pos]];
    if (const Entry *e = find(l, r))
      queue.push(Candidate{e->rank, pos, l, r});
  };
  for (int32_t i = 0; i + 1 < n; ++i)
    consider(i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    const int32_t r = next[c.pos];
    // Stale entries: the left symbol was absorbed or changed, or its neighbour changed.
    if (s[c.pos] != c.left || r < 0 || s[r] != c.right)
      continue;
    s[c.pos] = find(c.left, c.right)->merged;
    s[r] = -1;
    next[c.pos] = next[r];
    if (next[r] >= 0)
      prev[next[r]] = c.pos;
    consider(prev[c.pos]);
    consider(c.pos);
  }
  size_t out = 0;
  for (int32_t i = 0; i < n; ++i)
    if (s[i] >= 0)
      s[out++] = s[i];
  s.resize(out);
}

} // namespace lrq
