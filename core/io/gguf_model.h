#pragma once
// Interpretation of a GGUF file as a decoder model: hyper-parameters from the
// {arch}.* metadata, tokenizer from tokenizer.ggml.*, and the mapping from
// llama.cpp tensor names and layouts to HF ones.

#include <cstdint>
#include <string>

#include "core/io/gguf.h"
#include "core/model/config.h"
#include "core/tokenizer/tokenizer_spec.h"

// at::Tensor only appears in declarations here: the parsers compile without
// LibTorch (tests/fuzz builds them alone).
namespace at {
class Tensor;
} // namespace at

namespace lrq {

// ModelConfig from general.architecture (llama, mistral, qwen2) and its
// {arch}.* keys; throws lrq::FileError for other architectures or missing /
// ill-typed keys.
ModelConfig modelConfigFromGguf(const GgufReader &gguf);

// True when tokenizer.ggml.model is present.
bool ggufHasTokenizer(const GgufReader &gguf);
// TokenizerSpec from tokenizer.ggml.*; throws lrq::FileError for tokenizer
// models other than gpt2 (byte-level BPE) and llama (SentencePiece BPE).
TokenizerSpec tokenizerSpecFromGguf(const GgufReader &gguf);

// HF name of a llama.cpp tensor ("blk.3.attn_q.weight" ->
// "model.layers.3.self_attn.q_proj.weight"); "" when it has no HF counterpart.
std::string hfNameFromGgufTensor(const std::string &ggufName);

// llama.cpp's converter reorders the rows of q_proj / k_proj (and their
// biases) of LLaMA-family models so that each head's rotary pairs are
// interleaved: HF row h*D + j*D/2 + i goes to row h*D + 2*i + j. This puts
// them back. rows = heads * D; works for weights [rows, in] and biases [rows].
at::Tensor unpermuteGgufRotary(const at::Tensor &t, int64_t heads);

// True when the architecture's converter applies that permutation.
bool ggufArchitecturePermutesRotary(const std::string &architecture);

} // namespace lrq
