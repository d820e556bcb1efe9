#pragma once
// Everything needed to build a tokenizer, as read from GGUF metadata
// (tokenizer.ggml.*) or from HF tokenizer.json / tokenizer_config.json.
#include <cstdint>
#include <string>
#include <vector>

namespace lrq {

enum class TokenizerKind {
  ByteLevelBpe,    // GPT-2 style: bytes mapped to printable unicode, regex pre-tokenization, merges
  SentencePieceBpe // LLaMA-1/2 style: "▁" for spaces, merges or scores, <0xNN> byte fallback
};

// Token types as GGUF numbers them.
enum class TokenType : int32_t {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6
};

struct TokenizerSpec {
  TokenizerKind kind = TokenizerKind::ByteLevelBpe;
  // Pre-tokenizer name as llama.cpp's tokenizer.ggml.pre uses it: "default"/"gpt2",
  // "llama3"/"llama-bpe", "smollm", "qwen2", ... Unknown names fall back to "default"
  // with a warning from the tokenizer.
  std::string preTokenizer = "default";
  std::vector<std::string> tokens;   // id -> token text (byte-level or "▁" form)
  std::vector<float> scores;         // SentencePiece scores (may be empty)
  std::vector<TokenType> tokenTypes; // may be empty (all Normal)
  std::vector<std::string> merges;   // "a b" pairs in priority order (may be empty for SPM)
  int32_t bosId = -1;
  int32_t eosId = -1;
  int32_t unkId = -1;
  int32_t padId = -1;
  bool addBos = false;        // prepend BOS when encoding a document
  bool addSpacePrefix = true; // SentencePiece: prepend "▁" to the text
  // Byte-level BPE only. When non-empty these regexes replace the named
  // preTokenizer: each is applied in turn to every piece so far, splitting it into
  // its matches and the gaps between them (HF Split with behavior "Isolated").
  std::vector<std::string> preTokenizerRegexes;
  // Byte-level BPE only: a pre-tokenized word that is itself a token is emitted
  // whole instead of being merged (HF BPE "ignore_merges"; implied by "llama3").
  bool ignoreMerges = false;
  std::string source; // file the spec came from, for error messages
};

} // namespace lrq
