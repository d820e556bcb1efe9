#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/tokenizer/tokenizer_spec.h"

namespace lrq {

class Tokenizer {
public:
  virtual ~Tokenizer() = default;

  // Builds the tokenizer the spec describes; throws lrq::FileError (spec.source)
  // for inconsistent specs (merges naming unknown tokens, bad ids, ...).
  static std::unique_ptr<Tokenizer> create(const TokenizerSpec &spec);

  // Encodes UTF-8 text. Special tokens written in the text (e.g. "<|im_start|>")
  // are recognised when parseSpecial is true. BOS is prepended when addBos is
  // true and the spec asks for it (spec.addBos).
  virtual std::vector<int32_t> encode(std::string_view text, bool addBos = true,
                                      bool parseSpecial = false) const = 0;
  // Inverse of encode for normal tokens; control tokens (BOS/EOS) decode to "".
  virtual std::string decode(const std::vector<int32_t> &ids) const = 0;
  // Raw bytes of one token as it would appear in decoded text (control tokens: "").
  virtual std::string tokenBytes(int32_t id) const = 0;

  virtual int32_t vocabSize() const = 0;
  virtual int32_t bosId() const = 0;
  virtual int32_t eosId() const = 0;
  virtual const TokenizerSpec &spec() const = 0;
};

} // namespace lrq
