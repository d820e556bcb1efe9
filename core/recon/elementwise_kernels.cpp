// Conventions: see elementwise_kernels.h. This file is compiled with
// -fno-trapping-math -fno-math-errno (core/CMakeLists.txt): without them GCC
// keeps the selects and the square root as branches and vectorizes nothing.
// Neither changes a value: they concern floating-point exception flags and errno.
#include "core/recon/elementwise_kernels.h"

#include <algorithm>
#include <cmath>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LRQ_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LRQ_VECTOR_CLONES
#endif

namespace lrq::recon {

namespace {

// Rounds halves to even, as at::round does. Adding and subtracting 1.5 · 2^23
// leaves the nearest integer of |x| < 2^22 (the sum's spacing is 1, and the
// constant is even, so ties go to the even neighbour); the sign goes back on
// afterwards, so -0.3 gives -0 as nearbyint does. Larger |x| (and NaN) are
// returned as they are: a code that far out is clamped to the grid's edge
// whichever integer it would round to, and its gradient is masked either way.
inline float roundHalfEvenForGrid(float x) {
  constexpr float kShift = 12582912.0f; // 1.5 · 2^23
  constexpr float kExact = 4194304.0f;  // 2^22
  const float a = std::fabs(x);
  const float r = std::copysign((a + kShift) - kShift, x);
  return a < kExact ? r : x;
}

// Σ terms[0..n) in double: eight lanes, then the lanes in order (the same
// order whatever the vector width).
class LaneSum {
public:
  template <typename T> void add(const T *terms, int64_t n) {
    int64_t k = 0;
    for (; k + kLanes <= n; k += kLanes)
      for (int64_t l = 0; l < kLanes; ++l)
        lanes_[l] += double(terms[k + l]);
    for (; k < n; ++k)
      lanes_[0] += double(terms[k]);
  }
  double total() const {
    double sum = 0.0;
    for (int64_t l = 0; l < kLanes; ++l)
      sum += lanes_[l];
    return sum;
  }
  static constexpr int64_t kChunk = 256; // terms buffered before add()

private:
  static constexpr int64_t kLanes = 8;
  double lanes_[kLanes] = {};
};

} // namespace

LRQ_VECTOR_CLONES
void scaledRoundingForward(const float *__restrict w, const float *__restrict expE, float s,
                           float z, float lo, float hi, float *__restrict out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const float t = w[k] / (s * expE[k]);
    const float q = std::min(std::max(roundHalfEvenForGrid(t) + z, lo), hi);
    out[k] = (q - z) * s;
  }
}

LRQ_VECTOR_CLONES
double scaledRoundingBackward(const float *__restrict w, const float *__restrict expE,
                              const float *__restrict grad, float s, float z, float lo, float hi,
                              float *__restrict gradE, int64_t n) {
  float terms[LaneSum::kChunk];
  LaneSum sum;
  for (int64_t begin = 0; begin < n; begin += LaneSum::kChunk) {
    const int64_t m = std::min(LaneSum::kChunk, n - begin);
    const float *wc = w + begin, *ec = expE + begin, *gc = grad + begin;
    float *gec = gradE + begin;
    for (int64_t k = 0; k < m; ++k) {
      const float t = wc[k] / (s * ec[k]);
      const float x = roundHalfEvenForGrid(t) + z;
      const bool inside = x >= lo && x <= hi;
      const float q = std::min(std::max(x, lo), hi);
      const float exponentGrad = -(gc[k] * s * t);
      gec[k] = inside ? exponentGrad : 0.0f;
      terms[k] = gc[k] * (inside ? (q - z) - t : q - z);
    }
    sum.add(terms, m);
  }
  return sum.total();
}

LRQ_VECTOR_CLONES
void adamUpdate(float *__restrict p, float *__restrict m, float *__restrict v,
                const float *__restrict g, double beta1, double beta2, float stepSize,
                float sqrtBc2, float eps, int64_t n) {
  const float b1 = float(beta1), b2 = float(beta2);
  const float c1 = float(1.0 - beta1), c2 = float(1.0 - beta2);
  for (int64_t k = 0; k < n; ++k) {
    const float mk = m[k] * b1 + g[k] * c1;
    const float vk = v[k] * b2 + g[k] * g[k] * c2;
    m[k] = mk;
    v[k] = vk;
    p[k] -= stepSize * (mk / (std::sqrt(vk) / sqrtBc2 + eps));
  }
}

LRQ_VECTOR_CLONES
void lrqatWeight(const int8_t *__restrict v, const float *__restrict ab, const LrqatUnit &unit,
                 float *__restrict w, int16_t *__restrict codes, int64_t n) {
  const LrqatUnit u = unit; // by value: stores to w and codes cannot change it
  const CodeZero zero = u.zero;
  for (int64_t k = 0; k < n; ++k) {
    float phi = float(v[k]) * u.inv;
    if (zero == CodeZero::Offset)
      phi = phi + u.offset;
    else if (zero == CodeZero::Integer)
      phi = phi - (u.z - u.offset);
    float q = roundHalfEvenForGrid(phi + ab[k]);
    if (zero == CodeZero::Integer)
      q = q + u.z;
    const float bounded = std::min(std::max(q, -32768.0f), 32767.0f);
    codes[k] = std::isfinite(q) ? int16_t(bounded) : int16_t(0);
    const float qc = std::min(std::max(q, u.lo), u.hi);
    w[k] = zero == CodeZero::Offset    ? qc * u.s - u.z
           : zero == CodeZero::Integer ? (qc - u.z) * u.s
                                       : qc * u.s;
  }
}

LRQ_VECTOR_CLONES
double lrqatGradients(const int16_t *__restrict codes, const float *__restrict grad,
                      const LrqatUnit &unit, float *__restrict du, int64_t n) {
  const LrqatUnit u = unit;
  const bool integerZero = u.zero == CodeZero::Integer;
  double terms[LaneSum::kChunk];
  LaneSum sum;
  for (int64_t begin = 0; begin < n; begin += LaneSum::kChunk) {
    const int64_t m = std::min(LaneSum::kChunk, n - begin);
    const int16_t *qc16 = codes + begin;
    const float *gc = grad + begin;
    float *duc = du + begin;
    for (int64_t k = 0; k < m; ++k) {
      const float q = float(qc16[k]);
      const bool inside = q >= u.lo && q <= u.hi;
      const float stepGrad = gc[k] * u.s;
      duc[k] = inside ? stepGrad : 0.0f;
      const float qc = std::min(std::max(q, u.lo), u.hi);
      terms[k] = double(gc[k]) * double(integerZero ? qc - u.z : qc);
    }
    sum.add(terms, m);
  }
  return sum.total();
}

} // namespace lrq::recon
