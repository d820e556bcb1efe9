#pragma once
// Limits for JSON that comes from outside the program (model files, run
// stores, schemes): size, nesting depth and element count are checked on the
// raw text before nlohmann's parser allocates anything, and error messages
// show values through a short, depth-bounded preview instead of a recursive
// dump() (which, like every recursive walk, overflows the stack on deeply
// nested input).
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/common/error.h"
#include "core/common/regular_file.h"

namespace lrq {

struct JsonLimits {
  size_t maxBytes = size_t(64) << 20;    // 64 MiB
  int maxDepth = 64;                     // arrays and objects inside each other
  size_t maxElements = size_t(16) << 20; // values, roughly: commas + openings + 1
};

// Files as large as a 256k-token tokenizer.json still fit the defaults.
inline JsonLimits defaultJsonLimits() {
  return {};
}

// The shape of JSON text without parsing it. Brackets and commas inside
// strings do not count; the text need not be valid JSON.
struct JsonTextShape {
  int depth = 0;       // deepest nesting of arrays/objects seen
  size_t elements = 0; // commas + openings + 1
};

inline JsonTextShape scanJsonText(std::string_view text) {
  JsonTextShape shape;
  int depth = 0;
  bool inString = false;
  size_t elements = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (inString) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        inString = false;
      continue;
    }
    switch (c) {
    case '"':
      inString = true;
      break;
    case '[':
    case '{':
      ++elements;
      if (++depth > shape.depth)
        shape.depth = depth;
      break;
    case ']':
    case '}':
      if (depth > 0)
        --depth;
      break;
    case ',':
      ++elements;
      break;
    default:
      break;
    }
  }
  shape.elements = elements;
  return shape;
}

inline std::string megabytesText(size_t bytes) {
  return std::to_string(bytes >> 20) + " MiB";
}

// Empty when text is within the limits, else the problem in words.
inline std::string jsonLimitProblem(std::string_view text, const JsonLimits &limits) {
  if (text.size() > limits.maxBytes)
    return "is " + std::to_string(text.size()) + " bytes, over the " +
           megabytesText(limits.maxBytes) + " limit for this kind of JSON";
  const JsonTextShape shape = scanJsonText(text);
  if (shape.depth > limits.maxDepth)
    return "JSON nests arrays/objects deeper than " + std::to_string(limits.maxDepth) + " levels";
  if (shape.elements > limits.maxElements)
    return "JSON holds more than " + std::to_string(limits.maxElements) + " elements";
  return {};
}

// Throws Error("<what>: <problem>") when text exceeds the limits.
inline void checkJsonLimits(std::string_view text, const std::string &what,
                            const JsonLimits &limits = {}) {
  const std::string problem = jsonLimitProblem(text, limits);
  if (!problem.empty())
    throw FileError(what, problem);
}

// Reads at most maxBytes of a file (so /dev/zero or a huge file cannot fill
// memory); throws FileError when it is larger, missing or unreadable.
inline std::string readTextFileLimited(const std::string &path, size_t maxBytes) {
  const int fd = openRegularFile(path); // a FIFO or a directory is named, never waited on
  std::FILE *f = ::fdopen(fd, "rb");
  if (!f) {
    const int err = errno;
    ::close(fd);
    throw FileError(path, std::string("cannot open: ") + std::strerror(err));
  }
  std::string text;
  char buffer[1 << 16];
  bool tooLarge = false;
  while (true) {
    const size_t n = std::fread(buffer, 1, sizeof buffer, f);
    if (text.size() + n > maxBytes) {
      tooLarge = true;
      break;
    }
    text.append(buffer, n);
    if (n < sizeof buffer)
      break;
  }
  const bool failed = std::ferror(f) != 0;
  const int readErrno = errno;
  std::fclose(f);
  if (tooLarge)
    throw FileError(path, "is larger than the " + megabytesText(maxBytes) +
                              " limit for this kind of file");
  if (failed)
    throw FileError(path, std::string("read failed: ") + std::strerror(readErrno));
  return text;
}

namespace json_limits_detail {

inline void preview(const nlohmann::json &v, int depth, size_t budget, std::string &out) {
  if (out.size() > budget)
    return;
  if (v.is_array() || v.is_object()) {
    const bool array = v.is_array();
    if (v.empty()) {
      out += array ? "[]" : "{}";
      return;
    }
    if (depth >= 3) {
      out += array ? "[...]" : "{...}";
      return;
    }
    out += array ? '[' : '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (out.size() > budget) {
        out += ", ...";
        break;
      }
      if (!first)
        out += ", ";
      first = false;
      if (!array) {
        preview(nlohmann::json(it.key()), depth + 1, budget, out);
        out += ": ";
      }
      preview(*it, depth + 1, budget, out);
    }
    out += array ? ']' : '}';
    return;
  }
  if (v.is_string()) {
    const std::string &s = v.get_ref<const std::string &>();
    const size_t keep = std::min<size_t>(s.size(), 40);
    std::string shown = nlohmann::json(s.substr(0, keep))
                            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (keep < s.size())
      shown.insert(shown.size() - 1, "...");
    out += shown;
    return;
  }
  out += v.dump(); // a number, bool or null: short
}

} // namespace json_limits_detail

// A short text of a value for error messages: scalars as JSON (long strings
// cut), arrays and objects at most three levels deep and about maxChars long.
inline std::string jsonPreview(const nlohmann::json &v, size_t maxChars = 60) {
  std::string out;
  json_limits_detail::preview(v, 0, maxChars, out);
  return out;
}

} // namespace lrq
