#pragma once
// Pre-tokenizer regexes by the names llama.cpp writes to tokenizer.ggml.pre
// (internal to core/tokenizer and core/tokenizer/tokenizer_json.cpp).
#include <string>
#include <vector>

namespace lrq {

// GPT-2's word pattern, as HF's ByteLevel pre-tokenizer uses it.
extern const char *const kGpt2Pattern;

struct PreTokenizerRecipe {
  std::vector<std::string> regexes; // applied in order, matches and gaps kept
  bool ignoreMerges = false;        // words that are tokens are not merged (llama3)
};

// The recipe for a tokenizer.ggml.pre name; false when the name is unknown.
bool preTokenizerRecipe(const std::string &name, PreTokenizerRecipe &recipe);

// The name whose regexes are exactly these, or "" when none is.
std::string preTokenizerNameFor(const std::vector<std::string> &regexes);

} // namespace lrq
