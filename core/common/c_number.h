#pragma once
// Numbers as text in C notation ('.' as the decimal separator) whatever the
// process locale: Qt applications call setlocale(LC_ALL, "") at start-up,
// after which printf and strtod use the user's separator (a comma in de_DE).
#include <clocale>
#include <cstddef>
#include <cstdio>
#include <locale>
#include <sstream>
#include <string>

namespace lrq {

// snprintf with one double argument (format such as "%g" or "%.2f"), '.' as
// the decimal separator.
inline std::string formatNumberC(const char *format, double value) {
  char text[64];
  std::snprintf(text, sizeof text, format, value);
  std::string out = text;
  const char *point = std::localeconv()->decimal_point;
  if (point && point[0] != '\0' && point[0] != '.' && point[1] == '\0')
    for (char &c : out)
      if (c == point[0]) {
        c = '.';
        break;
      }
  return out;
}

// A decimal number in C notation at the start of text; *used is the number of
// characters read (0 when there is none or it is out of range).
inline double parseNumberC(const std::string &text, size_t *used) {
  std::istringstream in(text);
  in.imbue(std::locale::classic());
  double value = 0;
  in >> value;
  if (in.fail()) {
    *used = 0;
    return 0;
  }
  *used = in.eof() ? text.size() : size_t(in.tellg());
  return value;
}

} // namespace lrq
