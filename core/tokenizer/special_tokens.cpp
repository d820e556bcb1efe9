#include "core/tokenizer/special_tokens.h"

namespace lrq {

int32_t SpecialTokenMatcher::child(int32_t node, unsigned char byte) const {
  if (node == 0)
    return rootChildren_[byte];
  auto it = edges_.find(edgeKey(node, byte));
  return it == edges_.end() ? -1 : it->second;
}

void SpecialTokenMatcher::add(const std::string &text, int32_t id, bool always) {
  if (text.empty())
    return;
  int32_t node = 0;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    int32_t next = child(node, byte);
    if (next < 0) {
      next = static_cast<int32_t>(nodes_.size());
      nodes_.push_back(Entry{});
      if (node == 0)
        rootChildren_[byte] = next;
      else
        edges_.emplace(edgeKey(node, byte), next);
    }
    node = next;
  }
  if (nodes_[node].id >= 0)
    return; // first id wins for duplicate texts
  nodes_[node] = Entry{id, always};
  ++count_;
}

void SpecialTokenMatcher::split(std::string_view text, bool parseSpecial,
                                std::vector<TextFragment> &out) const {
  size_t start = 0;
  size_t i = 0;
  while (i < text.size()) {
    // The longest token starting at i that may be matched here.
    const Entry *hit = nullptr;
    size_t hitLength = 0;
    int32_t node = 0;
    for (size_t j = i; j < text.size(); ++j) {
      node = child(node, static_cast<unsigned char>(text[j]));
      if (node < 0)
        break;
      const Entry &e = nodes_[node];
      if (e.id >= 0 && (parseSpecial || e.always)) {
        hit = &e;
        hitLength = j + 1 - i;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    if (i > start)
      out.push_back(TextFragment{text.substr(start, i - start), -1});
    out.push_back(TextFragment{{}, hit->id});
    i += hitLength;
    start = i;
  }
  if (start < text.size())
    out.push_back(TextFragment{text.substr(start), -1});
}

} // namespace lrq
