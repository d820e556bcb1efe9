#include "core/tokenizer/pre_tokenizers.h"

#include <initializer_list>

namespace lrq {

const char *const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

// The patterns as the models' own tokenizer.json files write them (PCRE2 reads
// Oniguruma's (?i:...) and \p{..} the same way).
const char *const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char *const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char *const kBloomPattern = R"( ?[^(\s|.,!?…。，、।۔،)]+)";
const char *const kCjkRun = R"([\x{4E00}-\x{9FA5}\x{0800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";

struct NamedRecipe {
  std::initializer_list<const char *> names;
  std::initializer_list<const char *> regexes;
  bool ignoreMerges;
};

// Which names share which regexes follows llama.cpp's llama-vocab.cpp.
const NamedRecipe kRecipes[] = {
    // llama.cpp's fallback set, used for "default" and for unknown names.
    {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Pattern, R"(\p{N}+)", "[0-9][0-9][0-9]"}, false},
    {{"gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4",
      "roberta-bpe"},
     {kGpt2Pattern},
     false},
    // Digits one by one, then GPT-2's pattern: HF's Sequence[Digits(individual_digits=true),
    // ByteLevel(use_regex=true)] (Digits splits on char::is_numeric, i.e. \p{N}).
    {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"},
     {R"(\p{N})", kGpt2Pattern},
     false},
    {{"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}, {kLlama3Pattern}, true},
    {{"dbrx", "smaug-bpe", "chatglm-bpe", "glm4"}, {kLlama3Pattern}, false},
    {{"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan"}, {kQwen2Pattern}, false},
    {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Pattern, "[0-9][0-9][0-9]"}, false},
    {{"deepseek-coder"}, {"[\\r\\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kCjkRun, R"(\p{N})"}, false},
    {{"poro-chat", "bloom", "gpt3-finnish"}, {kBloomPattern}, false},
    {{"viking"}, {kBloomPattern, R"(\p{N})"}, false},
};

} // namespace

bool preTokenizerRecipe(const std::string &name, PreTokenizerRecipe &recipe) {
  for (const auto &r : kRecipes) {
    for (const char *n : r.names) {
      if (name == n) {
        recipe.regexes.assign(r.regexes.begin(), r.regexes.end());
        recipe.ignoreMerges = r.ignoreMerges;
        return true;
      }
    }
  }
  return false;
}

std::string preTokenizerNameFor(const std::vector<std::string> &regexes) {
  for (const auto &r : kRecipes) {
    if (r.regexes.size() != regexes.size())
      continue;
    bool same = true;
    size_t k = 0;
    for (const char *re : r.regexes)
      same = same && regexes[k++] == re;
    if (same)
      return *r.names.begin();
  }
  return "";
}

} // namespace lrq
