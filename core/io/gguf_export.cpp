#include "core/io/gguf_export.h"

#include <ATen/Parallel.h>

#include <fnmatch.h>

#include <filesystem>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/common/error.h"
#include "core/io/file_util.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "core/io/gguf_writer.h"

namespace lrq {

namespace {

constexpr int64_t kBlock = 32; // values per block of the legacy types
// Q6_K: super-blocks of 256 values, 16 sub-blocks of 16 with an int8 scale each.
constexpr int64_t kSuperBlock = 256;
constexpr int64_t kSubBlock = 16;
constexpr int kMaxSubScale = 127;

struct BlockFormat {
  GgmlType type;
  int bits;
  bool symmetric;
  int64_t groupSize; // values per step
  uint32_t fileType; // LLAMA_FTYPE_MOSTLY_*
  const char *scheme;
  bool offsets = false; // zero points in offset form (PackedTensor::offsets)
};

const BlockFormat kFormats[] = {
    {GgmlType::Q8_0, 8, true, kBlock, 7, "gguf-q8_0"},
    {GgmlType::Q4_0, 4, true, kBlock, 2, "gguf-q4_0"},
    {GgmlType::Q5_0, 5, true, kBlock, 8, "gguf-q5_0"},
    {GgmlType::Q4_1, 4, false, kBlock, 3, "gguf-q4_1"},
    {GgmlType::Q5_1, 5, false, kBlock, 9, "gguf-q5_1"},
    {GgmlType::Q6_K, 6, true, kSubBlock, 18, "gguf-q6_k"},
    // LLAMA_FTYPE_MOSTLY_Q4_K_S: every tensor Q4_K (or its Q5_0 fallback); _M
    // would mean some tensors promoted to Q6_K, which this export never does.
    {GgmlType::Q4_K, 4, false, kBlock, 14, "gguf-q4_k", true},
};

const BlockFormat *formatOf(GgmlType type) {
  for (const BlockFormat &f : kFormats)
    if (f.type == type)
      return &f;
  return nullptr;
}

std::string granularityText(const PackedTensor &t) {
  if (t.scales.size(1) == 1)
    return t.scales.size(0) == 1 ? "per-tensor" : "per-channel";
  return "group-" + std::to_string(t.groupSize);
}

// The preset to use instead, for a message: the block type of the same bits
// and symmetry when there is one.
std::string suggestedSchemes(int bits, bool symmetric) {
  for (const BlockFormat &f : kFormats)
    if (f.bits == bits && f.symmetric == symmetric)
      return std::string("--scheme ") + f.scheme;
  return "one of --scheme gguf-q8_0, gguf-q4_0, gguf-q5_0, gguf-q4_1, gguf-q5_1, gguf-q6_k, "
         "gguf-q4_k";
}

uint16_t halfBits(float x, bool *exact) {
  const at::Half h(x);
  *exact = static_cast<float>(h) == x && std::isfinite(x);
  return h.x;
}

void put16(uint8_t *p, uint16_t v) {
  std::memcpy(p, &v, sizeof v);
}

// Bytes of a float tensor in F32 or F16.
std::vector<uint8_t> floatBytes(const at::Tensor &t, GgmlType type) {
  const at::Tensor c = t.to(at::kCPU, type == GgmlType::F16 ? at::kHalf : at::kFloat).contiguous();
  std::vector<uint8_t> out(size_t(c.numel()) * c.element_size());
  if (!out.empty())
    std::memcpy(out.data(), c.data_ptr(), out.size());
  return out;
}

// ggml's nearest_int: adding 1.5 * 2^23 leaves round(x) (halves to even) in
// the low mantissa bits, for |x| < 2^22.
int ggmlNearestInt(float x) {
  const float shifted = x + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}

// quantize_row_q8_0_ref of one 32-value block: d = amax / 127 stored as a
// half, codes roundf(x * (1 / d)) with the float d, not the half.
void quantizeQ8_0Block(const float *x, uint8_t *block) {
  float amax = 0.0f;
  for (int64_t j = 0; j < kBlock; ++j)
    amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put16(block, at::Half(d).x);
  for (int64_t j = 0; j < kBlock; ++j)
    block[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[j] * id)));
}

// make_qx_quants of ggml with rmse_type 1 and no importance weights: codes
// L = l + nmax (l in -nmax..nmax-1) and the scale minimising the x²-weighted
// squared error over the grids -(nmax + 0.1 k) / max, k = -9..9 (the first,
// k = 0, wins ties).
float makeQxQuants(int n, int nmax, const float *x, int8_t *L) {
  float max = 0.0f, amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < 1e-15f) { // GROUP_MAX_EPS: all zero
    std::fill(L, L + n, int8_t(0));
    return 0.0f;
  }
  auto fit = [&](float iscale, float *sumlx, float *suml2, bool store) {
    *sumlx = 0.0f;
    *suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(-nmax, std::min(nmax - 1, ggmlNearestInt(iscale * x[i])));
      if (store)
        L[i] = static_cast<int8_t>(l + nmax);
      const float w = x[i] * x[i];
      *sumlx += w * x[i] * float(l);
      *suml2 += w * float(l) * float(l);
    }
  };
  float sumlx, suml2;
  fit(-float(nmax) / max, &sumlx, &suml2, true);
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0)
      continue;
    const float iscale = -(float(nmax) + 0.1f * float(is)) / max;
    fit(iscale, &sumlx, &suml2, false);
    if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
      fit(iscale, &sumlx, &suml2, true);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// quantize_row_q6_K_ref of one 256-value super-block (layout: encodeQ6KBlocks).
void quantizeQ6KBlock(const float *x, uint8_t *block) {
  constexpr int kGroups = int(kSuperBlock / kSubBlock);
  int8_t L[kSuperBlock];
  float scales[kGroups];
  float maxScale = 0.0f, maxAbsScale = 0.0f;
  for (int ib = 0; ib < kGroups; ++ib) {
    const float scale = makeQxQuants(int(kSubBlock), 32, x + kSubBlock * ib, L + kSubBlock * ib);
    scales[ib] = scale;
    if (std::fabs(scale) > maxAbsScale) {
      maxAbsScale = std::fabs(scale);
      maxScale = scale;
    }
  }
  std::memset(block, 0, 210);
  if (maxAbsScale < 1e-15f) // d = 0, everything zero
    return;
  const float iscale = -128.0f / maxScale;
  const at::Half dHalf(1.0f / iscale);
  put16(block + 208, dHalf.x);
  int8_t sc[kGroups];
  for (int ib = 0; ib < kGroups; ++ib)
    sc[ib] = static_cast<int8_t>(std::min(127, ggmlNearestInt(iscale * scales[ib])));
  std::memcpy(block + 192, sc, sizeof sc);
  for (int j = 0; j < kGroups; ++j) {
    const float d = static_cast<float>(dHalf) * float(sc[j]);
    if (d == 0.0f) // keeps make_qx_quants' codes, as the reference does
      continue;
    for (int64_t i = 0; i < kSubBlock; ++i) {
      const int l = std::max(-32, std::min(31, ggmlNearestInt(x[kSubBlock * j + i] / d)));
      L[kSubBlock * j + i] = static_cast<int8_t>(l + 32);
    }
  }
  uint8_t *ql = block, *qh = block + 128;
  for (int64_t j = 0; j < kSuperBlock; j += 128) {
    for (int64_t l = 0; l < 32; ++l) {
      const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
      const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
      ql[l] = uint8_t(q1 | (q3 << 4));
      ql[l + 32] = uint8_t(q2 | (q4 << 4));
      qh[l] = uint8_t((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                      ((L[j + l + 96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

// Whether blocks of `type` decode to exactly the n values they were made from
// (one block at a time: no second copy of the tensor).
bool decodesTo(GgmlType type, const std::vector<uint8_t> &blocks, const float *values, int64_t n) {
  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(type));
  std::vector<float> decoded(size_t(traits->blockSize));
  for (int64_t b = 0; b < n / traits->blockSize; ++b) {
    dequantizeGgml(type, blocks.data() + b * traits->typeSize, decoded.data(), traits->blockSize);
    if (!std::equal(decoded.begin(), decoded.end(), values + b * traits->blockSize))
      return false;
  }
  return true;
}

bool globOrRegexMatches(const std::string &pattern, const std::string &name) {
  if (pattern.compare(0, 3, "re:") == 0)
    return std::regex_match(name, std::regex(pattern.substr(3), std::regex::ECMAScript));
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

// Position of a tensor in llama.cpp's usual order: token_embd, then each block
// (norms and attention first, then the MLP), then output_norm and output.
std::pair<int64_t, int> tensorOrder(const std::string &ggufName) {
  static const char *kRoles[] = {"attn_norm", "attn_q",   "attn_k", "attn_v",  "attn_output",
                                 "ffn_norm",  "ffn_gate", "ffn_up", "ffn_down"};
  if (ggufName.compare(0, 10, "token_embd") == 0)
    return {-1, 0};
  if (ggufName.compare(0, 11, "output_norm") == 0)
    return {INT64_MAX, 0};
  if (ggufName.compare(0, 6, "output") == 0)
    return {INT64_MAX, 1};
  const size_t dot = ggufName.find('.', 4);
  const int64_t block = std::stoll(ggufName.substr(4, dot - 4));
  const std::string role = ggufName.substr(dot + 1, ggufName.rfind('.') - dot - 1);
  int rank = 0;
  for (const char *r : kRoles) {
    if (role == r)
      break;
    ++rank;
  }
  return {block, rank * 2 + (ggufName.size() > 5 &&
                             ggufName.compare(ggufName.size() - 5, 5, ".bias") == 0)};
}

// The GGUF architecture an HF model is written as, and whether llama.cpp's
// converter permutes its q/k rows.
std::string ggufArchitectureFor(const ModelConfig &config) {
  if (config.arch != Architecture::Llama)
    throw Error("GGUF export: " + config.architectureName +
                " models cannot be exported as GGUF (LLaMA-family models only)");
  if (config.architectureName == "Qwen2ForCausalLM")
    return "qwen2";
  return "llama";
}

void putTokenizer(std::vector<std::pair<std::string, GgufValue>> &meta, const TokenizerSpec &s,
                  const std::string &chatTemplate) {
  const bool spm = s.kind == TokenizerKind::SentencePieceBpe;
  if (!spm && (s.preTokenizer == "custom" || s.preTokenizer.empty()))
    throw Error("GGUF export: the tokenizer's pre-tokenizer is not one llama.cpp knows by name "
                "(tokenizer.ggml.pre); it cannot be written to GGUF");
  meta.emplace_back("tokenizer.ggml.model", ggufString(spm ? "llama" : "gpt2"));
  // llama.cpp knows GPT-2's regex as "gpt-2" (this project's reader takes both).
  const std::string pre = spm ? "default" : s.preTokenizer == "gpt2" ? "gpt-2" : s.preTokenizer;
  meta.emplace_back("tokenizer.ggml.pre", ggufString(pre));
  meta.emplace_back("tokenizer.ggml.tokens", ggufStringArray(s.tokens));
  if (!s.scores.empty())
    meta.emplace_back("tokenizer.ggml.scores", ggufFloat32Array(s.scores));
  std::vector<int32_t> types(s.tokens.size(), static_cast<int32_t>(TokenType::Normal));
  for (size_t i = 0; i < s.tokenTypes.size() && i < types.size(); ++i)
    types[i] = static_cast<int32_t>(s.tokenTypes[i]);
  meta.emplace_back("tokenizer.ggml.token_type", ggufInt32Array(types));
  // llama.cpp requires the merges key of a byte-level vocabulary, even empty.
  if (!spm || !s.merges.empty())
    meta.emplace_back("tokenizer.ggml.merges", ggufStringArray(s.merges));
  auto id = [&](const char *key, int32_t v) {
    if (v >= 0)
      meta.emplace_back(key, ggufUInt32(static_cast<uint32_t>(v)));
  };
  id("tokenizer.ggml.bos_token_id", s.bosId);
  id("tokenizer.ggml.eos_token_id", s.eosId);
  id("tokenizer.ggml.unknown_token_id", s.unkId);
  id("tokenizer.ggml.padding_token_id", s.padId);
  meta.emplace_back("tokenizer.ggml.add_bos_token", GgufValue::boolean(s.addBos));
  if (spm)
    meta.emplace_back("tokenizer.ggml.add_space_prefix", GgufValue::boolean(s.addSpacePrefix));
  if (!chatTemplate.empty())
    meta.emplace_back("tokenizer.chat_template", ggufString(chatTemplate));
}

// Metadata of an HF source: llama.cpp's keys for the architecture and tokenizer.
std::vector<std::pair<std::string, GgufValue>> hfMetadata(const ModelConfig &c,
                                                          const GgufExportSource &source) {
  const std::string arch = ggufArchitectureFor(c);
  std::vector<std::pair<std::string, GgufValue>> meta;
  meta.emplace_back("general.architecture", ggufString(arch));
  if (!source.name.empty())
    meta.emplace_back("general.name", ggufString(source.name));
  const std::string p = arch + ".";
  auto u32 = [](int64_t v) { return ggufUInt32(static_cast<uint32_t>(v)); };
  meta.emplace_back(p + "context_length", u32(c.maxPositions));
  meta.emplace_back(p + "embedding_length", u32(c.hiddenSize));
  meta.emplace_back(p + "block_count", u32(c.numLayers));
  meta.emplace_back(p + "feed_forward_length", u32(c.intermediateSize));
  meta.emplace_back(p + "attention.head_count", u32(c.numHeads));
  meta.emplace_back(p + "attention.head_count_kv", u32(c.numKvHeads));
  if (c.headDim * c.numHeads != c.hiddenSize) {
    meta.emplace_back(p + "attention.key_length", u32(c.headDim));
    meta.emplace_back(p + "attention.value_length", u32(c.headDim));
  }
  meta.emplace_back(p + "rope.freq_base", ggufFloat32(static_cast<float>(c.ropeTheta)));
  meta.emplace_back(p + "attention.layer_norm_rms_epsilon",
                    ggufFloat32(static_cast<float>(c.normEps)));
  meta.emplace_back(p + "vocab_size", u32(c.vocabSize));
  meta.emplace_back(p + "rope.dimension_count", u32(c.headDim));
  if (source.tokenizer)
    putTokenizer(meta, *source.tokenizer, source.chatTemplate);
  return meta;
}

// One tensor of the file and how to produce its bytes.
struct PlannedTensor {
  GgufTensorSpec spec;
  std::function<std::vector<uint8_t>()> bytes;
};

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

} // namespace

bool ggufBlockTypeForGrid(int bits, int64_t qmin, int64_t groupSize, GgmlType *type, bool offsets) {
  const bool symmetric = qmin == -(int64_t(1) << (bits - 1));
  if (!symmetric && qmin != 0)
    return false;
  for (const BlockFormat &f : kFormats)
    if (f.bits == bits && f.symmetric == symmetric && f.groupSize == groupSize &&
        f.offsets == offsets) {
      *type = f.type;
      return true;
    }
  return false;
}

std::string ggufSchemeFor(GgmlType type) {
  const BlockFormat *f = formatOf(type);
  return f ? f->scheme : "";
}

uint32_t ggufFileTypeFor(GgmlType type) {
  if (type == GgmlType::F16)
    return 1;
  const BlockFormat *f = formatOf(type);
  return f ? f->fileType : 0;
}

namespace {

// Q6_K blocks of a 6-bit symmetric tensor in groups of 16 (checked by the
// caller): per 256-value super-block, the half d and the integers sc_j in
// 1..127 with d sc_j == s_j exactly (negated, with codes -(q + 1), for a
// full-range group whose zero point is -1; the k-superblock grid made them so;
// d = s_max / k for the first k = 127..1 that fits, which is the grid's own d
// when its largest step has sc = 127), the codes u = q + 32 split into their
// low 4 bits (ql) and high 2 bits (qh) in llama.cpp's interleaved order:
// value n*128 + k*32 + l (n < 2, k < 4, l < 32) has its low bits in
// ql[n*64 + (k & 1)*32 + l] (low nibble for k < 2, high for k >= 2) and its
// high bits in qh[n*32 + l] at bit 2k; sc_j of values 16j..16j+15 at byte
// 192 + j; d at byte 208.
std::vector<uint8_t> encodeQ6KBlocks(const PackedTensor &t, const std::string &what) {
  const int64_t out = t.codes.size(0), in = t.codes.size(1);
  const int64_t superBlocks = in / kSuperBlock, groups = in / kSubBlock;
  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(GgmlType::Q6_K));
  const at::Tensor codes = t.codes.to(at::kCPU, at::kInt).contiguous();
  const at::Tensor scales = t.scales.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor zeros = t.zeroPoints.to(at::kCPU, at::kFloat).contiguous();
  if (!((zeros == 0) | (zeros == -1)).all().item<bool>())
    throw Error(what + ": a symmetric grid with a zero point other than 0 or -1 cannot be stored "
                       "as GGUF Q6_K");
  const int32_t *q = codes.data_ptr<int32_t>();
  const float *s = scales.data_ptr<float>();
  const float *z = zeros.data_ptr<float>();
  std::vector<uint8_t> blocks(size_t(out * superBlocks * traits->typeSize), 0);
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t sb = 0; sb < superBlocks; ++sb) {
      uint8_t *b = blocks.data() + (r * superBlocks + sb) * traits->typeSize;
      const float *steps = s + r * groups + sb * (kSuperBlock / kSubBlock);
      const std::string where =
          what + " (row " + std::to_string(r) + ", super-block " + std::to_string(sb) + ")";
      float peak = 0.0f;
      for (int64_t j = 0; j < kSuperBlock / kSubBlock; ++j)
        peak = std::max(peak, steps[j]);
      uint16_t dBits = 0;
      int8_t sc[kSuperBlock / kSubBlock] = {};
      bool found = false;
      for (int k = kMaxSubScale; k >= 1 && !found; --k) {
        const float d = peak / float(k);
        bool exact = false;
        dBits = halfBits(d, &exact);
        if (!exact || !(d > 0.0f))
          continue;
        found = true;
        for (int64_t j = 0; j < kSuperBlock / kSubBlock && found; ++j) {
          const float m = std::nearbyint(steps[j] / d);
          found = m >= 1.0f && m <= float(kMaxSubScale) && d * m == steps[j];
          // A full-range group on the positive side (z = -1) is stored with
          // its sign flipped, as llama.cpp stores one: sc < 0, codes -(q - z).
          const bool flipped = z[r * groups + sb * (kSuperBlock / kSubBlock) + j] == -1.0f;
          sc[j] = static_cast<int8_t>(flipped ? -m : m);
        }
      }
      if (!found)
        throw Error(where + ": the steps are not d*sc for one half-precision d and integers sc "
                            "in 1..127, as GGUF Q6_K stores them; quantize with --scheme "
                            "gguf-q6_k (steps made so)");
      uint8_t *ql = b, *qh = b + 128;
      std::memcpy(b + 192, sc, sizeof sc);
      put16(b + 208, dBits);
      const int32_t *row = q + r * in + sb * kSuperBlock;
      for (int64_t e = 0; e < kSuperBlock; ++e) {
        const bool flipped = sc[e / kSubBlock] < 0;
        const int64_t u = (flipped ? -(int64_t(row[e]) + 1) : int64_t(row[e])) + 32;
        if (u < 0 || u > 63)
          throw Error(where + ": code " + std::to_string(row[e]) + " is outside [-32, 31]");
        const int64_t n = e / 128, k = (e % 128) / 32, l = e % 32;
        ql[n * 64 + (k & 1) * 32 + l] |= uint8_t((u & 0x0F) << (k < 2 ? 0 : 4));
        qh[n * 32 + l] |= uint8_t(((u >> 4) & 3) << (2 * k));
      }
    }
  }
  return blocks;
}

// Q4_K blocks of a 4-bit asymmetric tensor in offset form, groups of 32
// (checked by the caller): per 256-value super-block the halves d and dmin
// and 6-bit integers sc_j in 1..63, m_j in 0..63 with d sc_j == s_j and
// dmin m_j == M_j exactly (the k-superblock-offset grid made them so; d =
// s_max / k for the first k = 63..1 that fits, the grid's own d when its
// largest step has sc = 63; dmin likewise, 0 when no group has an offset).
// llama.cpp's layout: d at byte 0, dmin at 2, the 12 scale bytes at 4 (for j
// < 4: byte j = sc_j | (sc_{j+4} >> 4) << 6, byte j+4 = m_j | (m_{j+4} >> 4)
// << 6; byte j+8 = (sc_{j+4} & 15) | (m_{j+4} & 15) << 4), then 128 bytes of
// codes: value p*64 + h*32 + l (p < 4, h < 2, l < 32) in nibble h of byte 16
// + p*32 + l. Decoded as (d sc_j) q - (dmin m_j) in float32.
std::vector<uint8_t> encodeQ4KBlocks(const PackedTensor &t, const std::string &what) {
  constexpr int64_t kGroups = kSuperBlock / kBlock; // 8
  constexpr int kMax6 = 63;
  const int64_t out = t.codes.size(0), in = t.codes.size(1);
  const int64_t superBlocks = in / kSuperBlock, groups = in / kBlock;
  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(GgmlType::Q4_K));
  const at::Tensor codes = t.codes.to(at::kCPU, at::kInt).contiguous();
  const at::Tensor scales = t.scales.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor offsets = t.zeroPoints.to(at::kCPU, at::kFloat).contiguous();
  const int32_t *q = codes.data_ptr<int32_t>();
  const float *s = scales.data_ptr<float>();
  const float *z = offsets.data_ptr<float>();
  // The half h and integers k_j in [lo, 63] with h k_j == v_j exactly, h =
  // max v / k for the first k = 63..1 that is a half; all zeros: h = 0.
  auto factor = [](const float *v, int lo, uint16_t *hBits, uint8_t *k) {
    float peak = 0.0f;
    for (int64_t j = 0; j < kGroups; ++j)
      peak = std::max(peak, v[j]);
    if (peak == 0.0f && lo == 0) {
      *hBits = 0;
      for (int64_t j = 0; j < kGroups; ++j)
        if (v[j] != 0.0f)
          return false;
      std::fill(k, k + kGroups, uint8_t(0));
      return true;
    }
    for (int c = kMax6; c >= 1; --c) {
      const float h = peak / float(c);
      bool exact = false;
      *hBits = halfBits(h, &exact);
      if (!exact || !(h > 0.0f))
        continue;
      bool fits = true;
      for (int64_t j = 0; j < kGroups && fits; ++j) {
        const float m = std::nearbyint(v[j] / h);
        fits = m >= float(lo) && m <= float(kMax6) && h * m == v[j];
        k[j] = static_cast<uint8_t>(fits ? m : 0.0f);
      }
      if (fits)
        return true;
    }
    return false;
  };
  std::vector<uint8_t> blocks(size_t(out * superBlocks * traits->typeSize), 0);
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t sb = 0; sb < superBlocks; ++sb) {
      uint8_t *b = blocks.data() + (r * superBlocks + sb) * traits->typeSize;
      const int64_t first = r * groups + sb * kGroups;
      const std::string where =
          what + " (row " + std::to_string(r) + ", super-block " + std::to_string(sb) + ")";
      uint16_t dBits = 0, dminBits = 0;
      uint8_t sc[kGroups] = {}, m[kGroups] = {};
      if (!factor(s + first, 1, &dBits, sc))
        throw Error(where + ": the steps are not d*sc for one half-precision d and integers sc "
                            "in 1..63, as GGUF Q4_K stores them; quantize with --scheme "
                            "gguf-q4_k (steps made so)");
      if (!factor(z + first, 0, &dminBits, m))
        throw Error(where + ": the offsets are not dmin*m for one half-precision dmin and "
                            "integers m in 0..63, as GGUF Q4_K stores them; quantize with "
                            "--scheme gguf-q4_k (offsets made so)");
      put16(b, dBits);
      put16(b + 2, dminBits);
      uint8_t *packed = b + 4;
      for (int j = 0; j < 4; ++j) {
        packed[j] = uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
        packed[j + 4] = uint8_t(m[j] | ((m[j + 4] >> 4) << 6));
        packed[j + 8] = uint8_t((sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4));
      }
      uint8_t *qs = b + 16;
      const int32_t *row = q + r * in + sb * kSuperBlock;
      for (int64_t e = 0; e < kSuperBlock; ++e) {
        if (row[e] < 0 || row[e] > 15)
          throw Error(where + ": code " + std::to_string(row[e]) + " is outside [0, 15]");
        const int64_t p = e / 64, h = (e % 64) / 32, l = e % 32;
        qs[p * 32 + l] |= uint8_t(row[e] << (4 * h));
      }
    }
  }
  return blocks;
}

// The blocks must decode to the grid's values s (q - z) (s q - M), as evaluated.
void checkBlocksDecode(const PackedTensor &t, GgmlType type, const std::vector<uint8_t> &blocks,
                       const std::string &what) {
  const int64_t out = t.codes.size(0), in = t.codes.size(1);
  const at::Tensor expected =
      dequantizeCodes(t.codes, t.scales, t.zeroPoints, t.groupSize, t.offsets)
          .to(at::kFloat)
          .contiguous();
  std::vector<float> decoded(size_t(out * in));
  dequantizeGgml(type, blocks.data(), decoded.data(), out * in);
  const float *e = expected.data_ptr<float>();
  for (int64_t i = 0; i < out * in; ++i)
    if (!(decoded[size_t(i)] == e[i]))
      throw Error(what + ": the " + ggmlTypeName(type) + " blocks decode element " +
                  std::to_string(i) + " to " + std::to_string(decoded[size_t(i)]) +
                  " instead of s (q - z) = " + std::to_string(e[i]));
}

} // namespace

std::vector<uint8_t> encodeGgufBlocks(const PackedTensor &t, GgmlType type) {
  const BlockFormat *format = formatOf(type);
  if (!format)
    throw Error("GGUF export: " + ggmlTypeName(type) + " is not a block type this export writes");
  const std::string what = "GGUF export: tensor " + t.name;
  if (t.codes.dim() != 2 || t.scales.dim() != 2 || t.zeroPoints.sizes() != t.scales.sizes())
    throw Error(what + ": codes are not [out, in] or steps / zero points not [rows, groups]");
  const int64_t out = t.codes.size(0), in = t.codes.size(1);
  const bool symmetric = t.qmin != 0;
  const int64_t blockValues = ggmlTypeTraits(static_cast<uint32_t>(type))->blockSize;
  GgmlType own{};
  const bool gridFits = ggufBlockTypeForGrid(t.bits, t.qmin, t.groupSize, &own, t.offsets) &&
                        own == type && t.scales.size(0) == out && in % blockValues == 0 &&
                        t.scales.size(1) == in / format->groupSize;
  if (!gridFits)
    throw Error(what + ": " + std::to_string(t.bits) + "-bit " + granularityText(t) + " " +
                (symmetric ? "symmetric" : "asymmetric") + " weights cannot be stored as GGUF " +
                ggmlTypeName(type) + "; quantize with " + suggestedSchemes(t.bits, symmetric) +
                (in % blockValues != 0
                     ? " (rows of " + std::to_string(in) + " values are not a whole number of " +
                           std::to_string(blockValues) + "-value blocks)"
                     : ""));
  if (t.lowRankA.defined() || t.lowRankB.defined())
    throw Error(what + ": carries low-rank correction factors (LQER), which GGUF cannot store");
  if (type == GgmlType::Q6_K || type == GgmlType::Q4_K) {
    std::vector<uint8_t> blocks =
        type == GgmlType::Q6_K ? encodeQ6KBlocks(t, what) : encodeQ4KBlocks(t, what);
    checkBlocksDecode(t, type, blocks, what);
    return blocks;
  }

  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(type));
  const at::Tensor codes = t.codes.to(at::kCPU, at::kInt).contiguous();
  const at::Tensor scales = t.scales.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor zeros = t.zeroPoints.to(at::kCPU, at::kFloat).contiguous();
  const int32_t *q = codes.data_ptr<int32_t>();
  const float *s = scales.data_ptr<float>();
  const float *z = zeros.data_ptr<float>();
  const int64_t groups = in / kBlock;
  const int32_t levels = 1 << t.bits;
  std::vector<uint8_t> blocks(size_t(out * groups * traits->typeSize), 0);

  for (int64_t r = 0; r < out; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t unit = r * groups + g;
      uint8_t *b = blocks.data() + unit * traits->typeSize;
      const float step = s[unit];
      const float zero = z[unit];
      const std::string where =
          what + " (row " + std::to_string(r) + ", block " + std::to_string(g) + ")";
      // A full-range symmetric unit (z = -1, levels -n/2+1..n/2) is stored
      // with its sign flipped, as llama.cpp stores one whose extreme is
      // positive: d = -s and codes -(q - z), which lie in -n/2..n/2-1 again.
      const bool flipped = symmetric && zero == -1.0f;
      bool exact = false;
      const uint16_t d = halfBits(flipped ? -step : step, &exact);
      if (!exact || step == 0.0f)
        throw Error(where + ": step " + std::to_string(step) +
                    " is not exactly a half-precision number, as GGUF " + ggmlTypeName(type) +
                    " stores it; quantize with " + suggestedSchemes(t.bits, symmetric) +
                    " (steps made exact halves)");
      if (zero != std::round(zero) || zero < float(t.qmin) || zero > float(t.qmin + levels - 1))
        throw Error(where + ": zero point " + std::to_string(zero) + " is not a code of the grid");
      if (symmetric && zero != 0.0f && !flipped)
        throw Error(where + ": a symmetric grid with zero point " + std::to_string(zero) +
                    " cannot be stored as GGUF " + ggmlTypeName(type) + " (only 0 and -1 can)");
      put16(b, d);
      int offset = 2;
      if (!symmetric) {
        // m = -s z: the value of code 0; exact in float (an 11-bit step times a
        // 5-bit integer), and it must be a half too.
        const float m = static_cast<float>(-double(step) * double(zero));
        const uint16_t mh = halfBits(m, &exact);
        if (!exact)
          throw Error(where + ": the offset -s*z = " + std::to_string(m) +
                      " is not exactly a half-precision number, as GGUF " + ggmlTypeName(type) +
                      " stores it; quantize with " + suggestedSchemes(t.bits, symmetric) +
                      " (steps chosen so that -s*z is a half too)");
        put16(b + 2, mh);
        offset = 4;
      }
      const int32_t *row = q + r * in + g * kBlock;
      uint32_t u[kBlock];
      int32_t stored[kBlock];
      for (int j = 0; j < kBlock; ++j)
        stored[j] = flipped ? -(row[j] + 1) : row[j];
      for (int j = 0; j < kBlock; ++j) {
        const int64_t v = int64_t(stored[j]) - t.qmin;
        if (v < 0 || v >= levels)
          throw Error(where + ": code " + std::to_string(row[j]) + " is outside [" +
                      std::to_string(t.qmin) + ", " + std::to_string(t.qmin + levels - 1) + "]");
        u[j] = static_cast<uint32_t>(v);
      }
      if (type == GgmlType::Q8_0) {
        // int8 codes as they are (u - 128 = q).
        for (int j = 0; j < kBlock; ++j)
          b[offset + j] = static_cast<uint8_t>(static_cast<int8_t>(stored[j]));
        continue;
      }
      if (t.bits == 5) {
        uint32_t qh = 0;
        for (int j = 0; j < kBlock; ++j)
          qh |= ((u[j] >> 4) & 1u) << j;
        std::memcpy(b + offset, &qh, sizeof qh);
        offset += 4;
      }
      for (int j = 0; j < kBlock / 2; ++j)
        b[offset + j] = static_cast<uint8_t>((u[j] & 0x0F) | ((u[j + kBlock / 2] & 0x0F) << 4));
    }
  }

  checkBlocksDecode(t, type, blocks, what);
  return blocks;
}

std::vector<uint8_t> quantizeGgmlReference(GgmlType type, const float *src, int64_t n) {
  if (type != GgmlType::Q8_0 && type != GgmlType::Q6_K)
    throw Error("float tensors can be rounded to GGUF Q8_0 or Q6_K, not " + ggmlTypeName(type));
  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(type));
  if (n < 0 || n % traits->blockSize != 0)
    throw Error(std::to_string(n) + " values are not a whole number of " +
                std::to_string(traits->blockSize) + "-value " + traits->name + " blocks");
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(src[i]))
      throw Error("value " + std::to_string(i) + " is not finite; it cannot be rounded to " +
                  traits->name);
  const int64_t blocks = n / traits->blockSize;
  std::vector<uint8_t> out(size_t(blocks * traits->typeSize));
  // Blocks are independent: the result does not depend on the split.
  at::parallel_for(0, blocks, 256, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float *x = src + b * traits->blockSize;
      uint8_t *block = out.data() + b * traits->typeSize;
      if (type == GgmlType::Q8_0)
        quantizeQ8_0Block(x, block);
      else
        quantizeQ6KBlock(x, block);
    }
  });
  const int64_t dAt = type == GgmlType::Q8_0 ? 0 : 208;
  for (int64_t b = 0; b < blocks; ++b) {
    uint16_t d;
    std::memcpy(&d, out.data() + b * traits->typeSize + dAt, sizeof d);
    if ((d & 0x7c00) == 0x7c00)
      throw Error("block " + std::to_string(b) + ": its scale overflows a half (values too " +
                  "large for " + traits->name + ")");
  }
  return out;
}

at::Tensor permuteGgufRotary(const at::Tensor &t, int64_t heads) {
  if (t.dim() < 1 || heads <= 0 || t.size(0) % (2 * heads) != 0)
    throw Error("cannot apply the rotary permutation: " + std::to_string(t.dim() ? t.size(0) : 0) +
                " rows are not a whole number of head pairs for " + std::to_string(heads) +
                " heads");
  std::vector<int64_t> split{heads, 2, t.size(0) / heads / 2};
  for (int64_t d = 1; d < t.dim(); ++d)
    split.push_back(t.size(d));
  // HF rows (h, j, i) -> GGUF rows (h, i, j).
  return t.reshape(split).transpose(1, 2).contiguous().reshape(t.sizes());
}

std::string ggufTensorNameFromHf(const std::string &hf) {
  if (hf == "model.embed_tokens.weight")
    return "token_embd.weight";
  if (hf == "model.norm.weight")
    return "output_norm.weight";
  if (hf == "lm_head.weight")
    return "output.weight";
  static const std::string kLayers = "model.layers.";
  if (hf.compare(0, kLayers.size(), kLayers) != 0)
    return "";
  const size_t dot = hf.find('.', kLayers.size());
  if (dot == std::string::npos)
    return "";
  const std::string index = hf.substr(kLayers.size(), dot - kLayers.size());
  const size_t kindDot = hf.rfind('.');
  if (kindDot <= dot)
    return "";
  const std::string role = hf.substr(dot + 1, kindDot - dot - 1);
  const std::string kind = hf.substr(kindDot + 1);
  static const std::pair<const char *, const char *> kRoles[] = {
      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
      {"input_layernorm", "attn_norm"},
      {"post_attention_layernorm", "ffn_norm"},
  };
  for (const auto &r : kRoles)
    if (role == r.first) {
      const std::string gguf = "blk." + index + "." + r.second + "." + kind;
      // Only names the reader maps back to this very tensor.
      return hfNameFromGgufTensor(gguf) == hf ? gguf : "";
    }
  return "";
}

GgufExportSource ggufExportSourceFor(const LoadedModel &model) {
  namespace fs = std::filesystem;
  GgufExportSource s;
  const bool folder = directoryExists(model.path);
  if (model.format == "gguf") {
    if (!folder)
      s.sourceGguf = model.path;
    else // a folder holding one .gguf file, as the loader accepts
      for (const auto &e : fs::directory_iterator(model.path))
        if (e.path().extension() == ".gguf")
          s.sourceGguf = e.path().string();
  }
  if (model.tokenizer)
    s.tokenizer = &model.tokenizer->spec();
  const std::string dir = folder ? model.path : parentDirectory(model.path);
  s.name = fs::path(dir).lexically_normal().filename().string();
  const std::string config = joinPath(dir, "tokenizer_config.json");
  if (model.format != "gguf" && fileExists(config)) {
    try {
      const nlohmann::json j = nlohmann::json::parse(readWholeFile(config));
      if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string())
        s.chatTemplate = j["chat_template"].get<std::string>();
    } catch (const std::exception &) {
      // No template then: the file was read when the model was loaded.
    }
  }
  return s;
}

ExportResult exportGguf(const std::string &path, const PackedModelContents &c,
                        const GgufExportSource &source, const GgufExportOptions &options,
                        ProgressObserver *observer, const CancelToken *cancel) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig &config = c.config;
  for (const auto &[pattern, type] : options.floatTypes)
    if (type != GgmlType::F32 && type != GgmlType::F16 && type != GgmlType::Q8_0 &&
        type != GgmlType::Q6_K)
      throw Error("GGUF export: tensors matching " + pattern +
                  " can be F32, F16, Q8_0 or Q6_K, not " + ggmlTypeName(type));
  auto note = [&options](LogLevel level, const std::string &line) {
    if (options.note)
      options.note(level, line);
  };

  // Metadata: the source GGUF's keys, or the configuration's.
  std::vector<std::pair<std::string, GgufValue>> meta;
  std::string arch;
  if (!source.sourceGguf.empty()) {
    const GgufReader g(source.sourceGguf);
    arch = g.getString("general.architecture");
    for (const auto &[key, value] : g.metadata())
      meta.emplace_back(key, value);
  } else {
    meta = hfMetadata(config, source);
    arch = ggufArchitectureFor(config);
  }
  if (config.arch != Architecture::Llama)
    throw Error("GGUF export: " + config.architectureName +
                " models cannot be exported as GGUF (LLaMA-family models only)");
  const bool permute = ggufArchitecturePermutesRotary(arch);

  // Plan: every tensor with its GGUF name, dimensions, type and producer.
  std::vector<PlannedTensor> plan;
  std::map<GgmlType, int64_t> quantizedTypes;
  auto rowsHeads = [&](const std::string &ggufName) -> int64_t {
    if (!permute)
      return 0;
    if (ggufName.find(".attn_q.") != std::string::npos)
      return config.numHeads;
    if (ggufName.find(".attn_k.") != std::string::npos)
      return config.numKvHeads;
    return 0;
  };
  for (const PackedTensor &t : c.quantized) {
    const std::string name = ggufTensorNameFromHf(t.name + ".weight");
    if (name.empty())
      throw Error("GGUF export: tensor " + t.name + " has no llama.cpp name");
    if (t.lowRankA.defined() || t.lowRankB.defined())
      throw Error("GGUF export: " + t.name + " carries low-rank correction factors (LQER, rank " +
                  std::to_string(t.lowRankA.defined() ? t.lowRankA.size(-1) : 0) +
                  "), which GGUF cannot store; export the HF folder (--out) or the packed file "
                  "(--packed) instead");
    GgmlType type{};
    const bool symmetric = t.qmin != 0;
    if (t.codes.dim() != 2 ||
        !ggufBlockTypeForGrid(t.bits, t.qmin, t.groupSize, &type, t.offsets) ||
        t.codes.size(1) % ggmlTypeTraits(static_cast<uint32_t>(type))->blockSize != 0)
      throw Error("GGUF export: tensor " + t.name + ": " + std::to_string(t.bits) + "-bit " +
                  (t.scales.dim() == 2 ? granularityText(t) : std::string("?")) + " " +
                  (symmetric ? "symmetric" : "asymmetric") +
                  " weights cannot be stored as a GGUF block type (Q8_0, Q4_0, Q5_0, Q4_1, "
                  "Q5_1: 32-value groups; Q6_K: 6-bit groups of 16 and Q4_K: 4-bit offset "
                  "groups of 32, in rows of a multiple of 256); quantize with " +
                  suggestedSchemes(t.bits, symmetric));
    ++quantizedTypes[type];
    const int64_t heads = rowsHeads(name);
    PlannedTensor p;
    p.spec = {name, {uint64_t(t.codes.size(1)), uint64_t(t.codes.size(0))}, type};
    const PackedTensor *tensor = &t;
    p.bytes = [tensor, type, heads]() {
      if (heads == 0)
        return encodeGgufBlocks(*tensor, type);
      // Codes and their per-row steps / zero points move together.
      PackedTensor permuted = *tensor;
      permuted.codes = permuteGgufRotary(tensor->codes, heads);
      permuted.scales = permuteGgufRotary(tensor->scales, heads);
      permuted.zeroPoints = permuteGgufRotary(tensor->zeroPoints, heads);
      return encodeGgufBlocks(permuted, type);
    };
    plan.push_back(std::move(p));
  }
  // Float tensors stored in a block type: whether their values changed (filled
  // as they are written).
  std::map<std::string, bool> roundedChanged;
  for (const auto &[hfName, tensor] : c.tensors) {
    const std::string name = ggufTensorNameFromHf(hfName);
    if (name.empty())
      throw Error("GGUF export: tensor " + hfName + " has no llama.cpp name");
    GgmlType type = GgmlType::F32;
    if (tensor.dim() >= 2)
      for (const auto &[pattern, wanted] : options.floatTypes)
        if (globOrRegexMatches(pattern, name)) {
          type = wanted;
          break;
        }
    // llama-quantize's fallbacks for rows that are not whole blocks.
    const int64_t rowLength = tensor.dim() >= 1 ? tensor.size(-1) : 0;
    if (type == GgmlType::Q6_K && rowLength % kSuperBlock != 0) {
      note(LogLevel::Info,
           "GGUF export: " + name + ": rows of " + std::to_string(rowLength) +
               " values are not whole 256-value Q6_K super-blocks; stored as Q8_0, as "
               "llama-quantize does");
      type = GgmlType::Q8_0;
    }
    if (type == GgmlType::Q8_0 && rowLength % kBlock != 0) {
      note(LogLevel::Info,
           "GGUF export: " + name + ": rows of " + std::to_string(rowLength) +
               " values are not whole 32-value Q8_0 blocks; stored as F16, as llama-quantize does");
      type = GgmlType::F16;
    }
    PlannedTensor p;
    p.spec.name = name;
    for (int64_t d = tensor.dim() - 1; d >= 0; --d)
      p.spec.dims.push_back(uint64_t(tensor.size(d)));
    p.spec.type = type;
    const at::Tensor *data = &tensor;
    const int64_t heads = rowsHeads(name);
    std::map<std::string, bool> *changed = &roundedChanged;
    p.bytes = [data, type, heads, name, changed]() {
      const at::Tensor rows = heads == 0 ? *data : permuteGgufRotary(*data, heads);
      if (type != GgmlType::Q8_0 && type != GgmlType::Q6_K)
        return floatBytes(rows, type);
      // One tensor at a time, from its float32 values (no copy when it is
      // float32 already).
      const at::Tensor values = rows.to(at::kCPU, at::kFloat).contiguous();
      try {
        std::vector<uint8_t> blocks =
            quantizeGgmlReference(type, values.data_ptr<float>(), values.numel());
        (*changed)[name] = !decodesTo(type, blocks, values.data_ptr<float>(), values.numel());
        return blocks;
      } catch (const Error &e) {
        throw Error("GGUF export: " + name + ": " + e.what());
      }
    };
    plan.push_back(std::move(p));
  }
  std::stable_sort(plan.begin(), plan.end(), [](const PlannedTensor &a, const PlannedTensor &b) {
    return tensorOrder(a.spec.name) < tensorOrder(b.spec.name);
  });

  // The file type: the block type most tensors use; Q6_K (Q4_K) whenever a
  // tensor is, as llama-quantize labels a Q6_K (Q4_K_S) file whose rows that
  // are not whole super-blocks fell back to Q8_0 (Q5_0).
  GgmlType main = GgmlType::F32;
  int64_t most = 0;
  for (const auto &[type, count] : quantizedTypes)
    if (count > most) {
      main = type;
      most = count;
    }
  if (quantizedTypes.count(GgmlType::Q6_K))
    main = GgmlType::Q6_K;
  else if (quantizedTypes.count(GgmlType::Q4_K))
    main = GgmlType::Q4_K;
  auto set = [&meta](const std::string &key, GgufValue value) {
    for (auto &entry : meta)
      if (entry.first == key) {
        entry.second = std::move(value);
        return;
      }
    meta.emplace_back(key, std::move(value));
  };
  set("general.file_type", ggufUInt32(ggufFileTypeFor(main)));
  set("general.quantization_version", ggufUInt32(2));
  set("lrq.method", ggufString(c.method));
  set("lrq.scheme", ggufString(c.schemeJson));
  set("lrq.run_id", ggufString(options.runId));

  std::vector<GgufTensorSpec> specs;
  for (const PlannedTensor &p : plan)
    specs.push_back(p.spec);
  GgufWriteOptions w;
  w.alignment = options.alignment;
  w.overwrite = options.overwrite;
  w.beforeStep = options.beforeStep;
  const GgufWriteResult written = writeGgufFile(
      path, meta, specs, [&plan](size_t i) { return plan[i].bytes(); }, w, observer, cancel);
  ExportResult r;
  r.path = path;
  r.bytes = written.bytes;
  r.weightsBytes = written.bytes;
  r.tensors = int64_t(plan.size());
  r.seconds = secondsSince(t0);

  // Which rounded tensors now differ from the evaluated values (in file order).
  std::string changedList, unchangedList;
  for (const PlannedTensor &p : plan) {
    const auto it = roundedChanged.find(p.spec.name);
    if (it == roundedChanged.end())
      continue;
    std::string &list = it->second ? changedList : unchangedList;
    list += (list.empty() ? "" : ", ") + p.spec.name + " (" + ggmlTypeName(p.spec.type) + ")";
  }
  if (!changedList.empty())
    note(LogLevel::Warning,
         "GGUF export rounded " + changedList +
             " (--gguf-float): the file is no longer exactly the evaluated model, which kept "
             "them in float; measure the file with lrq eval " +
             path);
  if (!unchangedList.empty())
    note(LogLevel::Info, "GGUF export: " + unchangedList +
                             " already on that grid (e.g. dequantized from it): stored unchanged, "
                             "exactly the evaluated values");
  return r;
}

} // namespace lrq
