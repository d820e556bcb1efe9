#pragma once
// Reads Hugging Face tokenizer files into a TokenizerSpec.
#include <string>

#include "core/tokenizer/tokenizer_spec.h"

namespace lrq {

// Reads tokenizer.json (model.type "BPE": vocab, merges as "a b" strings or
// [a, b] pairs, byte_fallback, added_tokens, normalizer, pre_tokenizer,
// post_processor) and, when tokenizerConfigPath is not empty,
// tokenizer_config.json (add_bos_token, bos/eos/unk/pad tokens, which override
// what tokenizer.json implies).
//
// A ByteLevel pre-tokenizer or decoder gives TokenizerKind::ByteLevelBpe with
// its regexes in preTokenizerRegexes (and the llama.cpp name in preTokenizer when
// they are a well-known set, else "custom"); a Replace(" ", "▁") normalizer,
// a Metaspace pre-tokenizer or byte_fallback gives SentencePieceBpe, with
// addSpacePrefix from Prepend("▁") / Metaspace's prepend scheme.
//
// Throws lrq::FileError naming the file and the key for unreadable or malformed
// files, missing keys, and pipelines that cannot be reproduced exactly.
TokenizerSpec tokenizerSpecFromJsonFiles(const std::string &tokenizerJsonPath,
                                         const std::string &tokenizerConfigPath);

} // namespace lrq
