#include "core/tokenizer/regex_splitter.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <time.h>

#include "core/common/error.h"
#include "core/tokenizer/utf8.h"

namespace lrq {

namespace {

// Unicode's White_Space property, which Oniguruma (HF tokenizers) uses for \s.
// PCRE2's \s also takes U+180E, which has not been a space since Unicode 6.3.
const char *const kWhiteSpace =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Code points that Unicode 15.0 and 16.0 assigned to the letter, number and
// punctuation categories (all unassigned in Unicode 14.0, the version of PCRE2
// 10.42's tables). Adding them makes \p{L}, \p{N}, \p{P} follow Unicode 16 like
// the Oniguruma in HF tokenizers 0.2x; with newer PCRE2 tables they are redundant.
const char *const kNewLetters =
    R"(\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3})"
    R"(\x{10D4A}-\x{10D65}\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{1123F}-\x{11240})"
    R"(\x{11380}-\x{11389}\x{1138B}\x{1138E}\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3})"
    R"(\x{11BC0}-\x{11BE0}\x{11F02}\x{11F04}-\x{11F10}\x{11F12}-\x{11F33}\x{1342F})"
    R"(\x{13441}-\x{13446}\x{13460}-\x{143FA}\x{16100}-\x{1611D}\x{16D40}-\x{16D6C})"
    R"(\x{18CFF}\x{1B132}\x{1B155}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D}\x{1E4D0}-\x{1E4EB})"
    R"(\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{2B739}\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})";
const char *const kNewNumbers =
    R"(\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59})"
    R"(\x{16130}-\x{16139}\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1D2C0}-\x{1D2D3})"
    R"(\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA})";
const char *const kNewPunctuation =
    R"(\x{1B4E}-\x{1B4F}\x{1B7F}\x{10D6E}\x{113D4}-\x{113D5}\x{113D7}-\x{113D8})"
    R"(\x{11B00}-\x{11B09}\x{11BE1}\x{11F43}-\x{11F4F}\x{16D6D}-\x{16D6F}\x{1E5FF})";

// Rewrites \s, \S, \p{L}, \p{N} and \p{P} of an Oniguruma-flavoured pattern so
// that PCRE2 gives them Oniguruma's meaning (see above). Other syntax is kept.
std::string adaptPattern(const std::string &pattern) {
  std::string out;
  bool inClass = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      if (e == 's') {
        out += inClass ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
        ++i;
        continue;
      }
      if (e == 'S' && !inClass) { // inside a class PCRE2's \S stays (differs on U+180E only)
        out += "[^" + std::string(kWhiteSpace) + "]";
        ++i;
        continue;
      }
      if (e == 'p' &&
          (pattern.compare(i + 2, 3, "{L}") == 0 || pattern.compare(i + 2, 3, "{N}") == 0 ||
           pattern.compare(i + 2, 3, "{P}") == 0)) {
        const char cat = pattern[i + 3];
        const char *extra = cat == 'L' ? kNewLetters : cat == 'N' ? kNewNumbers : kNewPunctuation;
        const std::string body = std::string("\\p{") + cat + "}" + extra;
        out += inClass ? body : "[" + body + "]";
        i += 4;
        continue;
      }
      out += c;
      out += e;
      ++i;
      continue;
    }
    if (!inClass && c == '[') {
      inClass = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') {
        out += '^';
        ++i;
      }
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') {
        out += ']';
        ++i;
      }
      continue;
    }
    if (inClass && c == '[' && pattern.compare(i, 2, "[:") == 0) { // POSIX class [:name:]
      const size_t end = pattern.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(pattern, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (inClass && c == ']')
      inClass = false;
    out += c;
  }
  return out;
}

std::string pcre2Message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char *>(buffer);
}

// Matching state, one per thread and reused across calls: match data (room for
// the whole-match pair is all we read) and a JIT stack large enough for long
// whitespace runs under the lookahead patterns.
struct MatchState {
  pcre2_match_data *data = nullptr;
  pcre2_match_context *context = nullptr;
  pcre2_jit_stack *jitStack = nullptr;

  MatchState() {
    data = pcre2_match_data_create(32, nullptr);
    context = pcre2_match_context_create(nullptr);
    jitStack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context && jitStack)
      pcre2_jit_stack_assign(context, nullptr, jitStack);
  }
  ~MatchState() {
    if (data)
      pcre2_match_data_free(data);
    if (context)
      pcre2_match_context_free(context);
    if (jitStack)
      pcre2_jit_stack_free(jitStack);
  }
  MatchState(const MatchState &) = delete;
  MatchState &operator=(const MatchState &) = delete;
};

// A pattern is refused when one match on a probe text needs more than
// kProbeStepLimit interpreter steps. Every pattern that tokenizers ship is
// linear (at most a few steps per byte: under 600 on these probes), while
// catastrophic backtracking such as /.*.*.*Z|./ costs O(n^2) or more per match
// and would take minutes on a long text.
constexpr uint32_t kProbeStepLimit = 32768;
constexpr size_t kProbeBytes = 512;

std::vector<std::string> probeTexts() {
  const char *const units[] = {
      "The quick brown fox, jumps over 12 lazy dogs! It's 3.14 (approx.)\n",
      " ",
      "a",
      "A",
      "7",
      "!",
      "'",
      "\n",
      " \n",
      "\r\n\t ",
      "a ",
      "\xC3\xA9",                 // é
      "\xE4\xB8\xAD\xE6\x96\x87", // CJK
      "\xF0\x9F\x99\x82",         // an emoji
  };
  std::vector<std::string> texts;
  for (const char *unit : units) {
    std::string t;
    while (t.size() < kProbeBytes)
      t += unit;
    texts.push_back(t);
  }
  return texts;
}

double threadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// A pattern as messages show it: long ones cut.
std::string shownPattern(const std::string &pattern) {
  return pattern.size() <= 120 ? pattern : pattern.substr(0, 120) + "...";
}

MatchState &threadMatchState() {
  thread_local MatchState state;
  if (!state.data)
    throw Error("out of memory for pre-tokenizer match data");
  return state;
}

} // namespace

struct RegexSplitter::Impl {
  std::vector<pcre2_code *> codes;
  std::vector<std::string> patterns;
  double budgetBaseSeconds = 5.0;
  double budgetSecondsPerMiB = 5.0;

  ~Impl() {
    for (auto *c : codes)
      pcre2_code_free(c);
  }

  // The CPU time one split() may use, and when it started.
  struct Budget {
    double start = 0;
    double seconds = 0;
    size_t bytes = 0;
    unsigned calls = 0;
  };

  // Splits one piece with pattern k, appending matches and gaps to out.
  // Throws when budget runs out (checked every 64 matches).
  void splitOne(size_t k, std::string_view piece, pcre2_match_data *md,
                pcre2_match_context *context, uint32_t options, Budget *budget,
                std::vector<std::string_view> &out) const {
    const auto *subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    size_t start = 0;
    size_t last = 0;
    while (start < piece.size()) {
      if (budget && (++budget->calls & 63) == 0 &&
          threadCpuSeconds() - budget->start > budget->seconds)
        throw Error("pre-tokenizer regex /" + shownPattern(patterns[k]) + "/ used more than " +
                    std::to_string(int(budget->seconds)) + " s of CPU time on " +
                    std::to_string(budget->bytes) +
                    " bytes of text: the pattern backtracks too much");
      const int rc = pcre2_match(codes[k], subject, piece.size(), start, options, md, context);
      if (rc == PCRE2_ERROR_NOMATCH)
        break;
      // rc == 0 only says the match data has no room for capture groups; the
      // whole-match offsets are still there.
      if (rc < 0)
        throw Error("pre-tokenizer regex /" + shownPattern(patterns[k]) +
                    "/ failed: " + pcre2Message(rc));
      const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
      const size_t b = ov[0];
      const size_t e = ov[1];
      if (e <= b) { // empty match: step over one character
        start = b + utf8::sequenceLength(piece, b);
        continue;
      }
      if (b > last)
        out.push_back(piece.substr(last, b - last));
      out.push_back(piece.substr(b, e - b));
      last = start = e;
    }
    if (last < piece.size())
      out.push_back(piece.substr(last));
  }

  // Refuses pattern k when it backtracks catastrophically on the probe texts
  // (run by the interpreter, whose step limit counts backtracking exactly).
  void probe(size_t k) const {
    static const std::vector<std::string> texts = probeTexts();
    pcre2_match_data *md = pcre2_match_data_create(32, nullptr);
    pcre2_match_context *context = pcre2_match_context_create(nullptr);
    if (!md || !context) {
      pcre2_match_data_free(md);
      pcre2_match_context_free(context);
      throw Error("out of memory for pre-tokenizer match data");
    }
    pcre2_set_match_limit(context, kProbeStepLimit);
    std::vector<std::string_view> pieces;
    std::string problem;
    for (const std::string &text : texts) {
      pieces.clear();
      try {
        splitOne(k, text, md, context, PCRE2_NO_JIT, nullptr, pieces);
      } catch (const Error &) {
        problem = "more than " + std::to_string(kProbeStepLimit) +
                  " backtracking steps for one match on a " + std::to_string(kProbeBytes) +
                  "-byte probe text";
        break;
      }
    }
    pcre2_match_data_free(md);
    pcre2_match_context_free(context);
    if (!problem.empty())
      throw Error("pre-tokenizer regex /" + shownPattern(patterns[k]) + "/ needs " + problem +
                  " (catastrophic backtracking: a long text would take minutes); refused");
  }
};

RegexSplitter::RegexSplitter(const std::vector<std::string> &patterns)
    : impl_(std::make_unique<Impl>()) {
  for (const auto &original : patterns) {
    const std::string pattern = adaptPattern(original);
    int errorCode = 0;
    PCRE2_SIZE errorOffset = 0;
    pcre2_code *code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &errorCode,
                                     &errorOffset, nullptr);
    if (!code)
      throw Error("pre-tokenizer regex /" + shownPattern(original) +
                  "/ does not compile at offset " + std::to_string(errorOffset) + ": " +
                  pcre2Message(errorCode));
    // JIT is an optimisation only: the interpreter gives the same matches.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    impl_->codes.push_back(code);
    impl_->patterns.push_back(original);
    impl_->probe(impl_->codes.size() - 1);
  }
}

void RegexSplitter::setCpuBudget(double baseSeconds, double secondsPerMiB) {
  impl_->budgetBaseSeconds = baseSeconds;
  impl_->budgetSecondsPerMiB = secondsPerMiB;
}

RegexSplitter::~RegexSplitter() = default;

void RegexSplitter::split(std::string_view text, std::vector<std::string_view> &out) const {
  if (text.empty())
    return;
  if (impl_->codes.empty()) {
    out.push_back(text);
    return;
  }
  MatchState &state = threadMatchState();
  Impl::Budget budget;
  budget.start = threadCpuSeconds();
  budget.bytes = text.size();
  budget.seconds =
      impl_->budgetBaseSeconds + impl_->budgetSecondsPerMiB * double(text.size()) / double(1 << 20);
  std::vector<std::string_view> current{text};
  std::vector<std::string_view> next;
  const size_t n = impl_->codes.size();
  for (size_t k = 0; k < n; ++k) {
    std::vector<std::string_view> &target = (k + 1 == n) ? out : next;
    if (k + 1 < n)
      next.clear();
    for (const auto &piece : current)
      impl_->splitOne(k, piece, state.data, state.context, 0, &budget, target);
    if (k + 1 < n)
      current.swap(next);
  }
}

} // namespace lrq
