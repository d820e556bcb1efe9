#pragma once
// ggml tensor storage types as GGUF files number them, their block geometry,
// and dequantization of the common ones to float32.

#include <cstdint>
#include <string>
#include <vector>

// at::Tensor only appears in declarations here: the parsers compile without
// LibTorch (tests/fuzz builds them alone).
namespace at {
class Tensor;
} // namespace at

namespace lrq {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};

struct GgmlTypeTraits {
  GgmlType type;
  const char *name;   // "Q4_K"
  int64_t blockSize;  // values per block
  int64_t typeSize;   // bytes per block
  bool dequantizable; // dequantizeGgml supports it
};

// Null for numbers no ggml type uses (as far as this build knows).
const GgmlTypeTraits *ggmlTypeTraits(uint32_t type);
// "Q4_1", or "type 99" for unknown numbers.
std::string ggmlTypeName(uint32_t type);
inline std::string ggmlTypeName(GgmlType type) {
  return ggmlTypeName(static_cast<uint32_t>(type));
}
// Looks a type up by name ("q4_k" and "Q4_K" both work); false when unknown.
bool ggmlTypeFromName(const std::string &name, GgmlType *type);
// Names of the types dequantizeGgml supports, comma separated (for messages).
std::string ggmlDequantizableTypeNames();

// Dequantizes n values (a multiple of the type's block size) from src, which
// holds n / blockSize blocks, into dst. Single-threaded. Throws lrq::Error for
// types without a dequantizer or a bad n.
void dequantizeGgml(GgmlType type, const uint8_t *src, float *dst, int64_t n);

// Dequantizes a whole tensor of the given (row-major, already reversed from
// GGUF order) shape into a new float32 CPU tensor, in parallel over blocks.
at::Tensor dequantizeGgmlTensor(GgmlType type, const uint8_t *src,
                                const std::vector<int64_t> &shape);

// IEEE half and bfloat16 bit patterns to float.
float halfBitsToFloat(uint16_t bits);
inline float bf16BitsToFloat(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float f;
  static_assert(sizeof f == sizeof widened, "float must be 32 bits");
  __builtin_memcpy(&f, &widened, sizeof f);
  return f;
}

} // namespace lrq
