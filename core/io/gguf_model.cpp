#include "core/io/gguf_model.h"

#include <cstdio>

#include "core/common/c_number.h"
#include "core/common/error.h"

namespace lrq {

namespace {

struct ArchitectureInfo {
  const char *ggufName;
  const char *hfName;
  bool permutesRotary; // llama.cpp's converter interleaves q/k rows
};

// Architectures whose GGUF tensors map one to one onto our LLaMA decoder.
const ArchitectureInfo kArchitectures[] = {
    {"llama", "LlamaForCausalLM", true},
    {"mistral", "MistralForCausalLM", true},
    {"qwen2", "Qwen2ForCausalLM", false},
};

const ArchitectureInfo *findArchitecture(const std::string &name) {
  for (const auto &a : kArchitectures)
    if (name == a.ggufName)
      return &a;
  return nullptr;
}

std::string numberText(double x) {
  return formatNumberC("%g", x);
}

[[noreturn]] void fail(const GgufReader &g, const std::string &problem) {
  throw FileError(g.path(), problem);
}

// A positive integer; some converters store per-layer arrays for head counts
// and FFN sizes: accepted when all layers agree.
int64_t positiveInt(const GgufReader &g, const std::string &key, bool required, int64_t fallback) {
  const GgufValue *v = g.find(key);
  if (!v) {
    if (required)
      fail(g, "missing metadata key " + key);
    return fallback;
  }
  int64_t out = 0;
  if (v->isArray()) {
    const std::vector<int64_t> values = g.getIntArray(key);
    if (values.empty())
      fail(g, "metadata key " + key + ": empty array");
    for (int64_t x : values)
      if (x != values.front())
        fail(g, "metadata key " + key + ": differs between layers, which is not supported");
    out = values.front();
  } else {
    out = g.getInt(key);
  }
  if (out <= 0 || out > (int64_t(1) << 31))
    fail(g, "metadata key " + key + ": value " + std::to_string(out) + " is out of range");
  return out;
}

int32_t tokenId(const GgufReader &g, const std::string &key, size_t vocab) {
  const int64_t id = g.getInt(key, -1);
  if (id < -1 || (id >= 0 && static_cast<size_t>(id) >= vocab)) {
    // Some converters write a padding id past the vocabulary; treat it as absent
    // only for padding, where nothing depends on it.
    if (key == "tokenizer.ggml.padding_token_id")
      return -1;
    fail(g, "metadata key " + key + ": token id " + std::to_string(id) +
                " is outside the vocabulary of " + std::to_string(vocab) + " tokens");
  }
  return static_cast<int32_t>(id);
}

} // namespace

bool ggufArchitecturePermutesRotary(const std::string &architecture) {
  const ArchitectureInfo *a = findArchitecture(architecture);
  return a && a->permutesRotary;
}

ModelConfig modelConfigFromGguf(const GgufReader &g) {
  const std::string arch = g.getString("general.architecture");
  const ArchitectureInfo *info = findArchitecture(arch);
  if (!info)
    fail(g, "architecture '" + arch + "' is not supported (supported: llama, mistral, qwen2)");
  const std::string p = arch + ".";

  ModelConfig c;
  c.arch = Architecture::Llama;
  c.architectureName = info->hfName;
  c.numLayers = positiveInt(g, p + "block_count", true, 0);
  c.hiddenSize = positiveInt(g, p + "embedding_length", true, 0);
  c.intermediateSize = positiveInt(g, p + "feed_forward_length", true, 0);
  c.numHeads = positiveInt(g, p + "attention.head_count", true, 0);
  c.numKvHeads = positiveInt(g, p + "attention.head_count_kv", false, c.numHeads);
  if (c.numHeads % c.numKvHeads != 0)
    fail(g, "metadata: " + std::to_string(c.numHeads) + " attention heads are not a multiple of " +
                std::to_string(c.numKvHeads) + " key/value heads");
  if (!g.has(p + "attention.key_length") && c.hiddenSize % c.numHeads != 0)
    fail(g, "metadata: embedding length " + std::to_string(c.hiddenSize) +
                " is not a multiple of the head count " + std::to_string(c.numHeads));
  c.headDim = positiveInt(g, p + "attention.key_length", false, c.hiddenSize / c.numHeads);
  const int64_t valueDim = positiveInt(g, p + "attention.value_length", false, c.headDim);
  if (valueDim != c.headDim)
    fail(g, "metadata: key length " + std::to_string(c.headDim) + " differs from value length " +
                std::to_string(valueDim) + ", which is not supported");
  const int64_t ropeDim = positiveInt(g, p + "rope.dimension_count", false, c.headDim);
  if (ropeDim != c.headDim)
    fail(g, "metadata key " + p + "rope.dimension_count: partial rotary embedding (" +
                std::to_string(ropeDim) + " of " + std::to_string(c.headDim) +
                " head dimensions) is not supported");
  c.maxPositions = positiveInt(g, p + "context_length", false, 2048);
  c.normEps = g.getFloat(p + "attention.layer_norm_rms_epsilon");
  if (!(c.normEps > 0.0 && c.normEps < 1.0))
    fail(g, "metadata key " + p + "attention.layer_norm_rms_epsilon: value " +
                std::to_string(c.normEps) + " is out of range");
  c.ropeTheta = g.getFloat(p + "rope.freq_base", 10000.0);
  if (!(c.ropeTheta >= kMinRopeTheta && c.ropeTheta <= kMaxRopeTheta))
    fail(g, "metadata key " + p + "rope.freq_base: value " + numberText(c.ropeTheta) +
                " is out of range (expected " + numberText(kMinRopeTheta) + ".." +
                numberText(kMaxRopeTheta) + ")");
  const std::string scaling = g.getString(p + "rope.scaling.type", "none");
  if (scaling != "none")
    fail(g, "metadata key " + p + "rope.scaling.type: rope scaling '" + scaling +
                "' is not supported");
  if (g.findTensor("rope_freqs.weight"))
    fail(g, "tensor rope_freqs.weight: per-frequency rope scaling (Llama 3.1 style) is not "
            "supported");

  const GgufTensorInfo *embd = g.findTensor("token_embd.weight");
  if (!embd)
    fail(g, "missing tensor token_embd.weight");
  if (embd->dims.size() != 2 || static_cast<int64_t>(embd->dims[0]) != c.hiddenSize)
    fail(g, "tensor token_embd.weight: shape does not match the embedding length " +
                std::to_string(c.hiddenSize));
  const auto embdRows = static_cast<int64_t>(embd->dims[1]);
  // The vocabulary is the embedding's row count: an empty (or absurd) one is no model.
  if (embdRows < 1)
    fail(g, "tensor token_embd.weight: no rows (an empty vocabulary)");
  if (g.has(p + "vocab_size")) {
    c.vocabSize = positiveInt(g, p + "vocab_size", true, 0);
    if (c.vocabSize != embdRows)
      fail(g, "metadata key " + p + "vocab_size: " + std::to_string(c.vocabSize) +
                  " differs from the " + std::to_string(embdRows) + " rows of token_embd.weight");
  } else {
    c.vocabSize = embdRows;
  }

  c.tieEmbeddings = g.findTensor("output.weight") == nullptr;
  c.attentionBias = g.findTensor("blk.0.attn_q.bias") != nullptr;
  c.attentionOutBias = g.findTensor("blk.0.attn_output.bias") != nullptr;
  c.mlpBias = g.findTensor("blk.0.ffn_up.bias") != nullptr ||
              g.findTensor("blk.0.ffn_down.bias") != nullptr;
  c.activation = "silu";
  c.doLayerNormBefore = true;
  c.bosTokenId = g.getInt("tokenizer.ggml.bos_token_id", -1);
  c.eosTokenId = g.getInt("tokenizer.ggml.eos_token_id", -1);
  return c;
}

bool ggufHasTokenizer(const GgufReader &g) {
  return g.has("tokenizer.ggml.model");
}

TokenizerSpec tokenizerSpecFromGguf(const GgufReader &g) {
  TokenizerSpec s;
  s.source = g.path();
  const std::string model = g.getString("tokenizer.ggml.model");
  if (model == "gpt2")
    s.kind = TokenizerKind::ByteLevelBpe;
  else if (model == "llama")
    s.kind = TokenizerKind::SentencePieceBpe;
  else
    fail(g, "metadata key tokenizer.ggml.model: tokenizer '" + model +
                "' is not supported (supported: gpt2, llama)");
  const bool spm = s.kind == TokenizerKind::SentencePieceBpe;
  s.preTokenizer = g.getString("tokenizer.ggml.pre", "default");
  s.tokens = g.getStringArray("tokenizer.ggml.tokens");
  if (s.tokens.empty())
    fail(g, "metadata key tokenizer.ggml.tokens: empty vocabulary");
  const size_t n = s.tokens.size();
  if (g.has("tokenizer.ggml.scores")) {
    const std::vector<double> scores = g.getFloatArray("tokenizer.ggml.scores");
    if (scores.size() != n)
      fail(g, "metadata key tokenizer.ggml.scores: " + std::to_string(scores.size()) +
                  " scores for " + std::to_string(n) + " tokens");
    s.scores.assign(scores.begin(), scores.end());
  }
  if (g.has("tokenizer.ggml.token_type")) {
    const std::vector<int64_t> types = g.getIntArray("tokenizer.ggml.token_type");
    if (types.size() != n)
      fail(g, "metadata key tokenizer.ggml.token_type: " + std::to_string(types.size()) +
                  " types for " + std::to_string(n) + " tokens");
    s.tokenTypes.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const int64_t t = types[i];
      if (t == 0) { // "undefined" in llama.cpp: treated as a normal token
        s.tokenTypes.push_back(TokenType::Normal);
      } else if (t >= 1 && t <= 6) {
        s.tokenTypes.push_back(static_cast<TokenType>(t));
      } else {
        fail(g, "metadata key tokenizer.ggml.token_type: token " + std::to_string(i) +
                    " has unknown type " + std::to_string(t));
      }
    }
  }
  if (g.has("tokenizer.ggml.merges"))
    s.merges = g.getStringArray("tokenizer.ggml.merges");
  s.bosId = tokenId(g, "tokenizer.ggml.bos_token_id", n);
  s.eosId = tokenId(g, "tokenizer.ggml.eos_token_id", n);
  s.unkId = tokenId(g, "tokenizer.ggml.unknown_token_id", n);
  s.padId = tokenId(g, "tokenizer.ggml.padding_token_id", n);
  // llama.cpp's defaults: SentencePiece vocabularies add BOS and a space
  // prefix unless told otherwise, byte-level BPE ones do neither.
  s.addBos = g.getBool("tokenizer.ggml.add_bos_token", spm);
  // As for tokenizer.json: a BOS that is asked for must exist (not be dropped).
  if (s.addBos && s.bosId < 0)
    fail(g, std::string("metadata: ") +
                (g.has("tokenizer.ggml.add_bos_token") ? "tokenizer.ggml.add_bos_token asks"
                                                       : "a SentencePiece vocabulary asks") +
                " for a BOS token but tokenizer.ggml.bos_token_id names none");
  s.addSpacePrefix = g.getBool("tokenizer.ggml.add_space_prefix", spm);
  return s;
}

std::string hfNameFromGgufTensor(const std::string &name) {
  if (name == "token_embd.weight")
    return "model.embed_tokens.weight";
  if (name == "output_norm.weight")
    return "model.norm.weight";
  if (name == "output.weight")
    return "lm_head.weight";
  static const std::string kBlock = "blk.";
  if (name.compare(0, kBlock.size(), kBlock) != 0)
    return "";
  const size_t dot = name.find('.', kBlock.size());
  if (dot == std::string::npos || dot == kBlock.size())
    return "";
  const std::string index = name.substr(kBlock.size(), dot - kBlock.size());
  if (index.size() > 9 || (index.size() > 1 && index[0] == '0'))
    return "";
  for (char ch : index)
    if (ch < '0' || ch > '9')
      return "";
  const size_t kindEnd = name.rfind('.');
  if (kindEnd == std::string::npos || kindEnd <= dot)
    return "";
  const std::string role = name.substr(dot + 1, kindEnd - dot - 1);
  const std::string kind = name.substr(kindEnd + 1); // weight / bias
  if (kind != "weight" && kind != "bias")
    return "";
  static const std::pair<const char *, const char *> kRoles[] = {
      {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
      {"attn_norm", "input_layernorm"},
      {"ffn_norm", "post_attention_layernorm"},
  };
  for (const auto &r : kRoles)
    if (role == r.first)
      return "model.layers." + index + "." + r.second + "." + kind;
  return "";
}

} // namespace lrq
