#include "core/tokenizer/tokenizer_json.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstring>
#include <optional>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/common/error.h"
#include "core/common/json_limits.h"
#include "core/tokenizer/pre_tokenizers.h"

namespace lrq {

namespace {

using nlohmann::json;

const std::string kSpaceMark = "\xE2\x96\x81"; // U+2581

json readJsonFile(const std::string &path) {
  // Size and nesting are checked on the text before parsing (a 256k-token
  // tokenizer.json is about 20 MB and nests 6 levels deep).
  const std::string text = readTextFileLimited(path, defaultJsonLimits().maxBytes);
  checkJsonLimits(text, path);
  try {
    json doc = json::parse(text);
    if (!doc.is_object())
      throw FileError(path, "top level is not a JSON object");
    return doc;
  } catch (const json::exception &e) {
    throw FileError(path, std::string("invalid JSON: ") + e.what());
  }
}

// Typed access that reports the key path on failure.
class Keys {
public:
  explicit Keys(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string &problem) const { throw FileError(path_, problem); }

  const json &member(const json &obj, const char *key, const std::string &keyPath) const {
    if (!obj.is_object())
      fail("key '" + parentOf(keyPath) + "' must be an object");
    auto it = obj.find(key);
    if (it == obj.end())
      fail("missing key '" + keyPath + "'");
    return *it;
  }
  const json *optional(const json &obj, const char *key) const {
    if (!obj.is_object())
      return nullptr;
    auto it = obj.find(key);
    return (it == obj.end() || it->is_null()) ? nullptr : &*it;
  }
  std::string string(const json &v, const std::string &keyPath) const {
    if (!v.is_string())
      fail("key '" + keyPath + "' must be a string");
    return v.get<std::string>();
  }
  bool boolean(const json &v, const std::string &keyPath) const {
    if (!v.is_boolean())
      fail("key '" + keyPath + "' must be true or false");
    return v.get<bool>();
  }
  int64_t integer(const json &v, const std::string &keyPath) const {
    if (!v.is_number_integer())
      fail("key '" + keyPath + "' must be an integer");
    return v.get<int64_t>();
  }
  const std::string &path() const { return path_; }

private:
  static std::string parentOf(const std::string &keyPath) {
    const auto dot = keyPath.rfind('.');
    return dot == std::string::npos ? std::string("(top level)") : keyPath.substr(0, dot);
  }
  std::string path_;
};

// Sequences nested deeper than this are refused (real files nest one or two).
constexpr int kMaxSequenceDepth = 16;

// Flattens {"type": "Sequence", <listKey>: [...]} into its elements (recursively).
void flatten(const Keys &keys, const json &node, const char *listKey, const std::string &keyPath,
             std::vector<std::pair<const json *, std::string>> &out, int depth = 0) {
  if (depth > kMaxSequenceDepth)
    keys.fail("key '" + keyPath.substr(0, keyPath.find('.')) + "' nests Sequence deeper than " +
              std::to_string(kMaxSequenceDepth) + " levels");
  const std::string type =
      keys.string(keys.member(node, "type", keyPath + ".type"), keyPath + ".type");
  if (type != "Sequence") {
    out.emplace_back(&node, keyPath);
    return;
  }
  const json &list = keys.member(node, listKey, keyPath + "." + listKey);
  if (!list.is_array())
    keys.fail("key '" + keyPath + "." + listKey + "' must be an array");
  for (size_t i = 0; i < list.size(); ++i)
    flatten(keys, list[i], listKey, keyPath + "." + listKey + "[" + std::to_string(i) + "]", out,
            depth + 1);
}

// A literal string as a PCRE2 pattern.
std::string escapeRegex(const std::string &literal) {
  std::string out;
  for (char c : literal) {
    if (std::strchr("\\^$.|?*+()[]{}-/", c) && c != '\0')
      out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Text of a token given as "text" or {"content": "text", ...}; nullopt for null.
std::optional<std::string> tokenText(const Keys &keys, const json &v, const std::string &keyPath) {
  if (v.is_null())
    return std::nullopt;
  if (v.is_string())
    return v.get<std::string>();
  if (v.is_object())
    return keys.string(keys.member(v, "content", keyPath + ".content"), keyPath + ".content");
  keys.fail("key '" + keyPath + "' must be a string or an object with 'content'");
}

} // namespace

TokenizerSpec tokenizerSpecFromJsonFiles(const std::string &tokenizerJsonPath,
                                         const std::string &tokenizerConfigPath) {
  const json root = readJsonFile(tokenizerJsonPath);
  const Keys keys(tokenizerJsonPath);
  TokenizerSpec spec;
  spec.source = tokenizerJsonPath;

  // --- model ---
  const json &model = keys.member(root, "model", "model");
  if (const json *type = keys.optional(model, "type")) {
    const std::string t = keys.string(*type, "model.type");
    if (t != "BPE")
      keys.fail("model.type '" + t + "' is not supported (only BPE)");
  }
  for (const char *key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const json *v = keys.optional(model, key))
      if (!keys.string(*v, std::string("model.") + key).empty())
        keys.fail(std::string("model.") + key + " is not supported");
  }
  const json &vocab = keys.member(model, "vocab", "model.vocab");
  if (!vocab.is_object())
    keys.fail("key 'model.vocab' must be an object of token -> id");

  struct Entry {
    std::string text;
    int64_t id;
    bool added;
    bool special;
  };
  std::vector<Entry> entries;
  entries.reserve(vocab.size());
  int64_t maxId = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int64_t id = keys.integer(it.value(), "model.vocab['" + it.key() + "']");
    if (id < 0 || id >= INT32_MAX)
      keys.fail("model.vocab['" + it.key() + "'] has id " + std::to_string(id) + " out of range");
    entries.push_back(Entry{it.key(), id, false, false});
    maxId = std::max(maxId, id);
  }
  if (const json *added = keys.optional(root, "added_tokens")) {
    if (!added->is_array())
      keys.fail("key 'added_tokens' must be an array");
    for (size_t i = 0; i < added->size(); ++i) {
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      const json &t = (*added)[i];
      const int64_t id = keys.integer(keys.member(t, "id", where + ".id"), where + ".id");
      if (id < 0 || id >= INT32_MAX)
        keys.fail(where + ".id " + std::to_string(id) + " out of range");
      const std::string content =
          keys.string(keys.member(t, "content", where + ".content"), where + ".content");
      bool special = false;
      if (const json *s = keys.optional(t, "special"))
        special = keys.boolean(*s, where + ".special");
      entries.push_back(Entry{content, id, true, special});
      maxId = std::max(maxId, id);
    }
  }
  if (maxId < 0)
    keys.fail("model.vocab is empty");
  // Every id up to the largest must be defined: check that before sizing the
  // vocabulary by the largest id (one id of 1e8 would otherwise cost gigabytes).
  if (static_cast<uint64_t>(maxId) >= entries.size()) {
    std::vector<bool> present(entries.size(), false);
    for (const auto &e : entries)
      if (static_cast<uint64_t>(e.id) < present.size())
        present[e.id] = true;
    size_t missing = 0;
    while (missing < present.size() && present[missing])
      ++missing;
    keys.fail("token id " + std::to_string(missing) +
              " is in neither model.vocab nor added_tokens (ids go up to " + std::to_string(maxId) +
              " but only " + std::to_string(entries.size()) + " tokens are defined)");
  }
  spec.tokens.assign(static_cast<size_t>(maxId) + 1, std::string());
  spec.tokenTypes.assign(spec.tokens.size(), TokenType::Normal);
  std::vector<bool> filled(spec.tokens.size(), false);
  for (const auto &e : entries) { // added tokens come last and win
    spec.tokens[e.id] = e.text;
    filled[e.id] = true;
    if (e.added)
      spec.tokenTypes[e.id] = e.special ? TokenType::Control : TokenType::UserDefined;
  }
  for (size_t i = 0; i < filled.size(); ++i)
    if (!filled[i])
      keys.fail("token id " + std::to_string(i) + " is in neither model.vocab nor added_tokens");
  auto idOf = [&](const std::string &text) -> int32_t {
    for (size_t i = entries.size(); i-- > 0;) // added tokens (last) win
      if (entries[i].text == text)
        return static_cast<int32_t>(entries[i].id);
    return -1;
  };

  const json &merges = keys.member(model, "merges", "model.merges");
  if (!merges.is_array())
    keys.fail("key 'model.merges' must be an array");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json &m = merges[i];
    if (m.is_string())
      spec.merges.push_back(m.get<std::string>());
    else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
      spec.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    else
      keys.fail("model.merges[" + std::to_string(i) + "] is neither \"a b\" nor [\"a\", \"b\"]");
  }
  bool byteFallback = false;
  if (const json *v = keys.optional(model, "byte_fallback"))
    byteFallback = keys.boolean(*v, "model.byte_fallback");
  if (const json *v = keys.optional(model, "ignore_merges"))
    spec.ignoreMerges = keys.boolean(*v, "model.ignore_merges");
  if (const json *v = keys.optional(model, "unk_token")) {
    const std::string unk = keys.string(*v, "model.unk_token");
    spec.unkId = idOf(unk);
    if (spec.unkId < 0)
      keys.fail("model.unk_token '" + unk + "' is not a token");
    if (spec.tokenTypes[spec.unkId] == TokenType::Normal)
      spec.tokenTypes[spec.unkId] = TokenType::Unknown;
  }

  // --- normalizer ---
  bool spaceToMark = false;
  bool prependMark = false;
  if (const json *norm = keys.optional(root, "normalizer")) {
    std::vector<std::pair<const json *, std::string>> steps;
    flatten(keys, *norm, "normalizers", "normalizer", steps);
    for (const auto &[step, where] : steps) {
      const std::string type =
          keys.string(keys.member(*step, "type", where + ".type"), where + ".type");
      if (type == "Prepend") {
        if (keys.string(keys.member(*step, "prepend", where + ".prepend"), where + ".prepend") !=
            kSpaceMark)
          keys.fail(where + ": only Prepend(\"\xE2\x96\x81\") is supported");
        prependMark = true;
      } else if (type == "Replace") {
        const json &pattern = keys.member(*step, "pattern", where + ".pattern");
        const json *literal = keys.optional(pattern, "String");
        const std::string content =
            keys.string(keys.member(*step, "content", where + ".content"), where + ".content");
        if (!literal || keys.string(*literal, where + ".pattern.String") != " " ||
            content != kSpaceMark)
          keys.fail(where + ": only Replace(\" \", \"\xE2\x96\x81\") is supported");
        spaceToMark = true;
      } else if (type == "NFC") {
        spdlog::warn("{}: NFC normalizer ignored (text is assumed to be NFC already)",
                     tokenizerJsonPath);
      } else {
        keys.fail(where + ": normalizer '" + type + "' is not supported");
      }
    }
  }

  // --- pre_tokenizer ---
  bool byteLevel = false;
  bool metaspace = false;
  bool metaspacePrefix = false;
  std::vector<std::string> regexes;
  if (const json *pre = keys.optional(root, "pre_tokenizer")) {
    std::vector<std::pair<const json *, std::string>> steps;
    flatten(keys, *pre, "pretokenizers", "pre_tokenizer", steps);
    for (const auto &[step, where] : steps) {
      const std::string type =
          keys.string(keys.member(*step, "type", where + ".type"), where + ".type");
      if (type == "ByteLevel") {
        byteLevel = true;
        if (const json *v = keys.optional(*step, "add_prefix_space"))
          if (keys.boolean(*v, where + ".add_prefix_space"))
            keys.fail(where + ": ByteLevel with add_prefix_space is not supported");
        bool useRegex = true;
        if (const json *v = keys.optional(*step, "use_regex"))
          useRegex = keys.boolean(*v, where + ".use_regex");
        if (useRegex)
          regexes.push_back(kGpt2Pattern);
      } else if (type == "Digits") {
        bool individual = false;
        if (const json *v = keys.optional(*step, "individual_digits"))
          individual = keys.boolean(*v, where + ".individual_digits");
        regexes.push_back(individual ? R"(\p{N})" : R"(\p{N}+)");
      } else if (type == "Split") {
        const json &pattern = keys.member(*step, "pattern", where + ".pattern");
        if (const json *re = keys.optional(pattern, "Regex"))
          regexes.push_back(keys.string(*re, where + ".pattern.Regex"));
        else if (const json *lit = keys.optional(pattern, "String"))
          regexes.push_back(escapeRegex(keys.string(*lit, where + ".pattern.String")));
        else
          keys.fail("missing key '" + where + ".pattern.Regex'");
        const std::string behavior =
            keys.string(keys.member(*step, "behavior", where + ".behavior"), where + ".behavior");
        if (behavior != "Isolated")
          keys.fail(where + ": Split behavior '" + behavior + "' is not supported (only Isolated)");
        if (const json *v = keys.optional(*step, "invert"))
          if (keys.boolean(*v, where + ".invert"))
            keys.fail(where + ": inverted Split is not supported");
      } else if (type == "Metaspace") {
        metaspace = true;
        if (const json *v = keys.optional(*step, "replacement"))
          if (keys.string(*v, where + ".replacement") != kSpaceMark)
            keys.fail(where + ": only Metaspace with replacement \"\xE2\x96\x81\" is supported");
        if (const json *v = keys.optional(*step, "split"))
          if (keys.boolean(*v, where + ".split"))
            keys.fail(where + ": Metaspace with split=true is not supported");
        metaspacePrefix = true;
        if (const json *v = keys.optional(*step, "prepend_scheme"))
          metaspacePrefix = keys.string(*v, where + ".prepend_scheme") != "never";
        else if (const json *v = keys.optional(*step, "add_prefix_space"))
          metaspacePrefix = keys.boolean(*v, where + ".add_prefix_space");
      } else {
        keys.fail(where + ": pre-tokenizer '" + type + "' is not supported");
      }
    }
  }
  if (const json *dec = keys.optional(root, "decoder")) {
    std::vector<std::pair<const json *, std::string>> steps;
    flatten(keys, *dec, "decoders", "decoder", steps);
    for (const auto &[step, where] : steps)
      if (keys.string(keys.member(*step, "type", where + ".type"), where + ".type") == "ByteLevel")
        byteLevel = true;
  }

  if (byteLevel) {
    if (spaceToMark || metaspace)
      keys.fail("mixes ByteLevel with a \xE2\x96\x81 normalizer or Metaspace");
    spec.kind = TokenizerKind::ByteLevelBpe;
    if (regexes.empty())
      regexes.push_back("(?s).+"); // no splitting: the whole text is one word
    const std::string name = preTokenizerNameFor(regexes);
    spec.preTokenizer = name.empty() ? "custom" : name;
    spec.preTokenizerRegexes = regexes;
  } else if (spaceToMark || metaspace || byteFallback) {
    if (!regexes.empty())
      keys.fail("pre_tokenizer: Split/Digits with a SentencePiece-style model is not supported");
    spec.kind = TokenizerKind::SentencePieceBpe;
    spec.preTokenizer = "default";
    spec.addSpacePrefix = prependMark || metaspacePrefix;
    for (size_t i = 0; i < spec.tokens.size(); ++i) {
      const std::string &t = spec.tokens[i];
      if (spec.tokenTypes[i] == TokenType::Normal && t.size() == 6 && t.compare(0, 3, "<0x") == 0 &&
          t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
          std::isxdigit(static_cast<unsigned char>(t[4])))
        spec.tokenTypes[i] = TokenType::Byte;
    }
  } else {
    keys.fail("cannot tell the tokenizer kind: no ByteLevel pre_tokenizer/decoder and no "
              "\xE2\x96\x81 normalizer, Metaspace or byte_fallback");
  }

  // --- post_processor: a template starting with a special token means BOS ---
  if (const json *post = keys.optional(root, "post_processor")) {
    std::vector<std::pair<const json *, std::string>> steps;
    flatten(keys, *post, "processors", "post_processor", steps);
    for (const auto &[step, where] : steps) {
      if (keys.string(keys.member(*step, "type", where + ".type"), where + ".type") !=
          "TemplateProcessing")
        continue;
      const json &single = keys.member(*step, "single", where + ".single");
      if (!single.is_array() || single.empty())
        continue;
      if (const json *first = keys.optional(single[0], "SpecialToken")) {
        const std::string name =
            keys.string(keys.member(*first, "id", where + ".single[0].SpecialToken.id"),
                        where + ".single[0].SpecialToken.id");
        // Checked as 64-bit (an id of 2^32 + 5 is not token 5), then narrowed.
        int64_t id = idOf(name);
        if (const json *table = keys.optional(*step, "special_tokens"))
          if (const json *entry = keys.optional(*table, name.c_str()))
            if (const json *ids = keys.optional(*entry, "ids"))
              if (ids->is_array() && ids->size() == 1 && (*ids)[0].is_number_integer())
                id = (*ids)[0].is_number_unsigned() &&
                             (*ids)[0].get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                         ? int64_t(-1)
                         : (*ids)[0].get<int64_t>();
        if (id < 0 || id >= static_cast<int64_t>(spec.tokens.size()))
          keys.fail(where + ": template token '" + name + "' is not a token");
        spec.bosId = static_cast<int32_t>(id);
        spec.addBos = true;
      }
    }
  }

  // --- tokenizer_config.json ---
  if (!tokenizerConfigPath.empty()) {
    const json config = readJsonFile(tokenizerConfigPath);
    const Keys ckeys(tokenizerConfigPath);
    if (const json *v = ckeys.optional(config, "add_bos_token"))
      spec.addBos = ckeys.boolean(*v, "add_bos_token");
    const std::pair<const char *, int32_t *> named[] = {{"bos_token", &spec.bosId},
                                                        {"eos_token", &spec.eosId},
                                                        {"unk_token", &spec.unkId},
                                                        {"pad_token", &spec.padId}};
    for (const auto &[key, target] : named) {
      const json *v = ckeys.optional(config, key);
      if (!v)
        continue;
      const auto text = tokenText(ckeys, *v, key);
      if (!text)
        continue;
      const int32_t id = idOf(*text);
      if (id < 0)
        ckeys.fail(std::string(key) + " '" + *text + "' is not a token of " + tokenizerJsonPath);
      *target = id;
    }
  }
  if (spec.addBos && spec.bosId < 0)
    keys.fail("asks for a BOS token but names none");
  return spec;
}

} // namespace lrq
