#pragma once
// Strings taken from files (names, paths, ids) can hold terminal control
// sequences. printableText() writes every control character as an escape, so
// a message or listing shows what the file holds instead of acting on the
// terminal.
#include <cstdio>
#include <string>
#include <string_view>

namespace lrq {

// C0 controls except newline and tab, DEL, and the C1 controls U+0080..U+009F
// (UTF-8 C2 80..C2 9F) become "\x1b" / "\u009b"; a backslash stays as it is, so
// the result is for people to read, not to parse back. Other bytes, invalid
// UTF-8 included, pass unchanged.
inline std::string printableText(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  char buf[8];
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7F) {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else if (c == 0xC2 && i + 1 < text.size() &&
               static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(text[i + 1]) <= 0x9F) {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(text[i + 1]));
      out += buf;
      ++i;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

} // namespace lrq
