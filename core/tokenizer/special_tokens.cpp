#include "core/tokenizer/special_tokens.h"

#include <algorithm>

namespace lrq {

void SpecialTokenMatcher::add(const std::string &text, int32_t id, bool always) {
  if (text.empty())
    return;
  auto &bucket = byFirstByte_[static_cast<unsigned char>(text[0])];
  for (const auto &e : bucket)
    if (e.text == text)
      return; // first id wins for duplicate texts
  bucket.push_back(Entry{text, id, always});
  std::stable_sort(bucket.begin(), bucket.end(),
                   [](const Entry &a, const Entry &b) { return a.text.size() > b.text.size(); });
  ++count_;
}

void SpecialTokenMatcher::split(std::string_view text, bool parseSpecial,
                                std::vector<TextFragment> &out) const {
  size_t start = 0;
  size_t i = 0;
  while (i < text.size()) {
    const auto &bucket = byFirstByte_[static_cast<unsigned char>(text[i])];
    const Entry *hit = nullptr;
    for (const auto &e : bucket) {
      if ((parseSpecial || e.always) && text.compare(i, e.text.size(), e.text) == 0) {
        hit = &e;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    if (i > start)
      out.push_back(TextFragment{text.substr(start, i - start), -1});
    out.push_back(TextFragment{{}, hit->id});
    i += hit->text.size();
    start = i;
  }
  if (start < text.size())
    out.push_back(TextFragment{text.substr(start), -1});
}

} // namespace lrq
