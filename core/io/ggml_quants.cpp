#include "core/io/ggml_quants.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstring>

#include "core/common/error.h"

namespace lrq {

namespace {

constexpr int64_t kQK = 32;   // values per block of the legacy formats
constexpr int64_t kQKK = 256; // values per super-block of the k-quants

// Block geometry of every ggml type; sizes follow ggml's block structs.
const std::array<GgmlTypeTraits, 32> kTraits = {{
    {GgmlType::F32, "F32", 1, 4, true},
    {GgmlType::F16, "F16", 1, 2, true},
    {GgmlType::Q4_0, "Q4_0", kQK, 2 + 16, true},
    {GgmlType::Q4_1, "Q4_1", kQK, 2 + 2 + 16, true},
    {GgmlType::Q5_0, "Q5_0", kQK, 2 + 4 + 16, true},
    {GgmlType::Q5_1, "Q5_1", kQK, 2 + 2 + 4 + 16, true},
    {GgmlType::Q8_0, "Q8_0", kQK, 2 + 32, true},
    {GgmlType::Q8_1, "Q8_1", kQK, 4 + 32, false},
    {GgmlType::Q2_K, "Q2_K", kQKK, 16 + 64 + 2 + 2, true},
    {GgmlType::Q3_K, "Q3_K", kQKK, 32 + 64 + 12 + 2, true},
    {GgmlType::Q4_K, "Q4_K", kQKK, 2 + 2 + 12 + 128, true},
    {GgmlType::Q5_K, "Q5_K", kQKK, 2 + 2 + 12 + 32 + 128, true},
    {GgmlType::Q6_K, "Q6_K", kQKK, 128 + 64 + 16 + 2, true},
    {GgmlType::Q8_K, "Q8_K", kQKK, 4 + 256 + 32, false},
    {GgmlType::IQ2_XXS, "IQ2_XXS", kQKK, 2 + 64, false},
    {GgmlType::IQ2_XS, "IQ2_XS", kQKK, 2 + 64 + 8, false},
    {GgmlType::IQ3_XXS, "IQ3_XXS", kQKK, 2 + 64 + 32, false},
    {GgmlType::IQ1_S, "IQ1_S", kQKK, 2 + 32 + 16, false},
    {GgmlType::IQ4_NL, "IQ4_NL", kQK, 2 + 16, false},
    {GgmlType::IQ3_S, "IQ3_S", kQKK, 2 + 64 + 32 + 8 + 4, false},
    {GgmlType::IQ2_S, "IQ2_S", kQKK, 2 + 64 + 16, false},
    {GgmlType::IQ4_XS, "IQ4_XS", kQKK, 2 + 2 + 128 + 4, false},
    {GgmlType::I8, "I8", 1, 1, false},
    {GgmlType::I16, "I16", 1, 2, false},
    {GgmlType::I32, "I32", 1, 4, false},
    {GgmlType::I64, "I64", 1, 8, false},
    {GgmlType::F64, "F64", 1, 8, false},
    {GgmlType::IQ1_M, "IQ1_M", kQKK, 32 + 16 + 8, false},
    {GgmlType::BF16, "BF16", 1, 2, true},
    {GgmlType::TQ1_0, "TQ1_0", kQKK, 2 + 52, false},
    {GgmlType::TQ2_0, "TQ2_0", kQKK, 2 + 64, false},
    {GgmlType::MXFP4, "MXFP4", kQK, 1 + 16, false},
}};

inline uint16_t load16(const uint8_t *p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline uint32_t load32(const uint8_t *p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float halfAt(const uint8_t *p) {
  return halfBitsToFloat(load16(p));
}

// --- legacy 32-value blocks -------------------------------------------------

void dequantQ4_0(const uint8_t *b, float *y) {
  const float d = halfAt(b);
  const uint8_t *qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(static_cast<int>(qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>(static_cast<int>(qs[j] >> 4) - 8);
  }
}

void dequantQ4_1(const uint8_t *b, float *y) {
  const float d = halfAt(b);
  const float m = halfAt(b + 2);
  const uint8_t *qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

void dequantQ5_0(const uint8_t *b, float *y) {
  const float d = halfAt(b);
  const uint32_t qh = load32(b + 2);
  const uint8_t *qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void dequantQ5_1(const uint8_t *b, float *y) {
  const float d = halfAt(b);
  const float m = halfAt(b + 2);
  const uint32_t qh = load32(b + 4);
  const uint8_t *qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

void dequantQ8_0(const uint8_t *b, float *y) {
  const float d = halfAt(b);
  const auto *qs = reinterpret_cast<const int8_t *>(b + 2);
  for (int j = 0; j < 32; ++j)
    y[j] = d * static_cast<float>(qs[j]);
}

// --- k-quants: 256-value super-blocks ---------------------------------------

void dequantQ2_K(const uint8_t *b, float *y) {
  const uint8_t *scales = b;
  const uint8_t *qs = b + 16;
  const float d = halfAt(b + 80);
  const float dmin = halfAt(b + 82);
  // Element n*128 + j*32 + l takes 2 bits (shift 2j) of qs[n*32 + l]; each run
  // of 16 values has its own 4-bit scale and 4-bit min.
  for (int n = 0; n < 2; ++n) {
    for (int j = 0; j < 4; ++j) {
      for (int half = 0; half < 2; ++half) {
        const uint8_t sc = scales[n * 8 + j * 2 + half];
        const float dl = d * static_cast<float>(sc & 0x0F);
        const float ml = dmin * static_cast<float>(sc >> 4);
        const uint8_t *q = qs + n * 32 + half * 16;
        float *out = y + n * 128 + j * 32 + half * 16;
        for (int l = 0; l < 16; ++l)
          out[l] = dl * static_cast<float>((q[l] >> (2 * j)) & 3) - ml;
      }
    }
  }
}

void dequantQ3_K(const uint8_t *b, float *y) {
  const uint8_t *hmask = b;
  const uint8_t *qs = b + 32;
  const uint8_t *packed = b + 96;
  const float d = halfAt(b + 108);
  // Sixteen 6-bit scales: low 4 bits in the nibbles of bytes 0..7 (scales
  // 0..7 in the low nibbles, 8..15 in the high ones), high 2 bits in bytes
  // 8..11 (scale i at bit 2*(i/4) of byte 8 + i%4).
  float dl[16];
  for (int i = 0; i < 16; ++i) {
    const int low = i < 8 ? (packed[i] & 0x0F) : (packed[i - 8] >> 4);
    const int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
    dl[i] = d * static_cast<float>((low | (high << 4)) - 32);
  }
  for (int n = 0; n < 2; ++n) {
    for (int j = 0; j < 4; ++j) {
      const uint8_t bit = static_cast<uint8_t>(1u << (n * 4 + j));
      for (int l = 0; l < 32; ++l) {
        const int q = (qs[n * 32 + l] >> (2 * j)) & 3;
        const int offset = (hmask[l] & bit) ? 0 : 4;
        y[n * 128 + j * 32 + l] = dl[n * 8 + j * 2 + l / 16] * static_cast<float>(q - offset);
      }
    }
  }
}

// 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes shared by
// Q4_K and Q5_K.
inline void scaleMinK4(int j, const uint8_t *q, int *sc, int *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void dequantQ4_K(const uint8_t *b, float *y) {
  const float d = halfAt(b);
  const float dmin = halfAt(b + 2);
  const uint8_t *scales = b + 4;
  const uint8_t *qs = b + 16;
  for (int pair = 0; pair < 4; ++pair) {
    for (int h = 0; h < 2; ++h) {
      int sc = 0, m = 0;
      scaleMinK4(pair * 2 + h, scales, &sc, &m);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(m);
      const uint8_t *q = qs + pair * 32;
      float *out = y + pair * 64 + h * 32;
      for (int l = 0; l < 32; ++l)
        out[l] = dl * static_cast<float>((q[l] >> (4 * h)) & 0x0F) - ml;
    }
  }
}

void dequantQ5_K(const uint8_t *b, float *y) {
  const float d = halfAt(b);
  const float dmin = halfAt(b + 2);
  const uint8_t *scales = b + 4;
  const uint8_t *qh = b + 16;
  const uint8_t *qs = b + 48;
  for (int pair = 0; pair < 4; ++pair) {
    for (int h = 0; h < 2; ++h) {
      const int sub = pair * 2 + h;
      int sc = 0, m = 0;
      scaleMinK4(sub, scales, &sc, &m);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(m);
      const uint8_t *q = qs + pair * 32;
      float *out = y + sub * 32;
      for (int l = 0; l < 32; ++l) {
        const int v = ((q[l] >> (4 * h)) & 0x0F) | (((qh[l] >> sub) & 1) << 4);
        out[l] = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

void dequantQ6_K(const uint8_t *b, float *y) {
  const uint8_t *ql = b;
  const uint8_t *qh = b + 128;
  const auto *scales = reinterpret_cast<const int8_t *>(b + 192);
  const float d = halfAt(b + 208);
  // Element n*128 + k*32 + l: low 4 bits from ql[n*64 + (k&1)*32 + l] (low
  // nibble for k<2, high for k>=2), high 2 bits from qh[n*32 + l] at shift 2k.
  for (int n = 0; n < 2; ++n) {
    for (int k = 0; k < 4; ++k) {
      const uint8_t *lo = ql + n * 64 + (k & 1) * 32;
      const int loShift = k < 2 ? 0 : 4;
      const uint8_t *hi = qh + n * 32;
      float *out = y + n * 128 + k * 32;
      const float d0 = d * static_cast<float>(scales[n * 8 + k * 2]);
      const float d1 = d * static_cast<float>(scales[n * 8 + k * 2 + 1]);
      for (int l = 0; l < 32; ++l) {
        const int q = (((lo[l] >> loShift) & 0x0F) | (((hi[l] >> (2 * k)) & 3) << 4)) - 32;
        out[l] = (l < 16 ? d0 : d1) * static_cast<float>(q);
      }
    }
  }
}

using BlockFn = void (*)(const uint8_t *, float *);

BlockFn blockFunction(GgmlType type) {
  switch (type) {
  case GgmlType::Q4_0:
    return dequantQ4_0;
  case GgmlType::Q4_1:
    return dequantQ4_1;
  case GgmlType::Q5_0:
    return dequantQ5_0;
  case GgmlType::Q5_1:
    return dequantQ5_1;
  case GgmlType::Q8_0:
    return dequantQ8_0;
  case GgmlType::Q2_K:
    return dequantQ2_K;
  case GgmlType::Q3_K:
    return dequantQ3_K;
  case GgmlType::Q4_K:
    return dequantQ4_K;
  case GgmlType::Q5_K:
    return dequantQ5_K;
  case GgmlType::Q6_K:
    return dequantQ6_K;
  default:
    return nullptr;
  }
}

} // namespace

float halfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else { // subnormal: mantissa * 2^-24, exact in float
      const float f = std::ldexp(static_cast<float>(mantissa), -24);
      return sign ? -f : f;
    }
  } else if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

const GgmlTypeTraits *ggmlTypeTraits(uint32_t type) {
  for (const auto &t : kTraits)
    if (static_cast<uint32_t>(t.type) == type)
      return &t;
  return nullptr;
}

std::string ggmlTypeName(uint32_t type) {
  if (const GgmlTypeTraits *t = ggmlTypeTraits(type))
    return t->name;
  return "type " + std::to_string(type);
}

bool ggmlTypeFromName(const std::string &name, GgmlType *type) {
  std::string upper = name;
  std::transform(upper.begin(), upper.end(), upper.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  for (const auto &t : kTraits) {
    std::string tn = t.name;
    std::transform(tn.begin(), tn.end(), tn.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    if (tn == upper) {
      *type = t.type;
      return true;
    }
  }
  return false;
}

std::string ggmlDequantizableTypeNames() {
  std::string out;
  for (const auto &t : kTraits) {
    if (!t.dequantizable)
      continue;
    if (!out.empty())
      out += ", ";
    out += t.name;
  }
  return out;
}

void dequantizeGgml(GgmlType type, const uint8_t *src, float *dst, int64_t n) {
  const GgmlTypeTraits *traits = ggmlTypeTraits(static_cast<uint32_t>(type));
  if (!traits || !traits->dequantizable)
    throw Error("dequantization of " + ggmlTypeName(type) +
                " is not supported (supported: " + ggmlDequantizableTypeNames() + ")");
  if (n < 0 || n % traits->blockSize != 0)
    throw Error("dequantization of " + std::to_string(n) + " values of " + traits->name +
                ": not a multiple of the block size " + std::to_string(traits->blockSize));
  switch (type) {
  case GgmlType::F32:
    // An empty tensor may come with null pointers, which memcpy must never see.
    if (n > 0)
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  case GgmlType::F16:
    for (int64_t i = 0; i < n; ++i)
      dst[i] = halfBitsToFloat(load16(src + 2 * i));
    return;
  case GgmlType::BF16:
    for (int64_t i = 0; i < n; ++i)
      dst[i] = bf16BitsToFloat(load16(src + 2 * i));
    return;
  default:
    break;
  }
  const BlockFn fn = blockFunction(type);
  const int64_t blocks = n / traits->blockSize;
  for (int64_t i = 0; i < blocks; ++i)
    fn(src + i * traits->typeSize, dst + i * traits->blockSize);
}

} // namespace lrq
