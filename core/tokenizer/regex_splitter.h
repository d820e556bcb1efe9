#pragma once
// Regex pre-tokenization with PCRE2 (internal to core/tokenizer).
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lrq {

// Applies a chain of regexes to text: each regex splits every piece produced so
// far into its matches and the gaps between them, both kept, in order (HF Split
// with behavior "Isolated"; llama.cpp's unicode_regex_split). Patterns are
// compiled once, in UTF + Unicode-property mode, and JIT-compiled where PCRE2
// supports it. Invalid UTF-8 never matches and so ends up in gap pieces.
// Safe to use from several threads at once.
class RegexSplitter {
public:
  // Throws lrq::Error naming the pattern when one does not compile, or when
  // it backtracks catastrophically on short probe texts (such as /.*.*.*Z|./,
  // which would take minutes on a long text).
  explicit RegexSplitter(const std::vector<std::string> &patterns);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter &) = delete;
  RegexSplitter &operator=(const RegexSplitter &) = delete;

  // Appends the pieces of text to out (views into text). Throws lrq::Error
  // when splitting takes more CPU time than the budget allows (by default
  // 5 s plus 5 s per MiB of text, about a hundred times what the patterns
  // tokenizers ship need) or when PCRE2's own match limit is hit.
  void split(std::string_view text, std::vector<std::string_view> &out) const;

  // Sets the CPU time budget of one split() call.
  void setCpuBudget(double baseSeconds, double secondsPerMiB);

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace lrq
