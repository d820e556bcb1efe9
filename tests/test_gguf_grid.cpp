// Grids that are exactly llama.cpp GGUF block formats (Q8_0, Q5_0, Q4_0: an
// f16 step d, x = d q; Q5_1, Q4_1: f16 d and m, x = d q + m): the step
// rounding (applyStepFormat) against a scalar reference built from every half
// bit pattern, the grids computeGridParams makes on them, and the schemes,
// presets and storage cost that name them. Q6_K (k-superblock steps d sc, one
// half d per 256 inputs): the super-block rounding against a scalar
// reference, and every method on gguf-q6_k with its Q8_0 fallback against a
// Q6_K decode written from the format.
#include <ATen/ATen.h>

#include <QtTest>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <QTemporaryDir>

#include "core/common/error.h"
#include "core/io/export.h"
#include "core/model/decoder.h"
#include "core/quant/compressed_tensors_scheme.h"
#include "core/quant/export_glue.h"
#include "core/quant/gguf_scheme.h"
#include "core/quant/grid.h"
#include "core/quant/learned_rounding.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"
#include "core/quant/storage_bits.h"
#include "decoder_test_models.h"
#include "quick_method_run.h"
#include "tiny_llama.h"

using namespace lrq;
using namespace lrq::quant;

namespace {

// The value of a half from its bits, by the IEEE 754 formula (no conversion code).
double halfValue(uint16_t bits) {
  const int sign = bits >> 15, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
  double v = exponent == 0 ? std::ldexp(double(mantissa), -24)
                           : std::ldexp(double(1024 + mantissa), exponent - 25);
  return sign ? -v : v;
}

// Significant bits of a positive double: the bit length of its odd significand.
int significantBitsOf(double v) {
  int e = 0;
  auto m = uint64_t(std::ldexp(std::frexp(v, &e), 53));
  while ((m & 1) == 0)
    m >>= 1;
  int n = 0;
  for (; m; m >>= 1)
    ++n;
  return n;
}

// Every positive finite half the format may take, ascending.
std::vector<double> allowedSteps(const GridSpec &spec) {
  const int p = spec.stepFormat == StepFormat::Fp16Offset ? 11 - spec.bits : 11;
  std::vector<double> out;
  for (uint32_t bits = 1; bits < 0x7c00; ++bits) {
    const double v = halfValue(uint16_t(bits));
    if (significantBitsOf(v) > p)
      continue;
    if (spec.stepFormat == StepFormat::Fp16Offset && v * double(spec.levels() - 1) > 65504.0)
      continue;
    out.push_back(v);
  }
  return out;
}

// The nearest allowed value; a tie goes to the neighbour that is an even
// multiple of the gap between the two; below half the smallest, the smallest.
double nearestAllowed(const std::vector<double> &allowed, double x) {
  const auto it = std::lower_bound(allowed.begin(), allowed.end(), x);
  if (it == allowed.begin())
    return allowed.front();
  if (it == allowed.end())
    return allowed.back();
  const double hi = *it, lo = *(it - 1);
  if (x - lo < hi - x)
    return lo;
  if (hi - x < x - lo)
    return hi;
  return std::fmod(lo / (hi - lo), 2.0) == 0.0 ? lo : hi;
}

GridSpec ggufGrid(const std::string &preset) {
  return presetScheme(preset).weight;
}

const std::vector<std::string> &ggufPresets() {
  static const std::vector<std::string> names{"gguf-q8_0", "gguf-q5_0", "gguf-q4_0", "gguf-q5_1",
                                              "gguf-q4_1"};
  return names;
}

// A weight with rows of very different scales, a zero row, a one-sided row
// and a ragged last group (in = 80 with groups of 32).
at::Tensor awkwardWeight(uint64_t seed) {
  at::manual_seed(int64_t(seed));
  at::Tensor w = at::randn({6, 80}) * 0.05;
  w[1] *= 1e-5;   // steps in the subnormal halves
  w[2] *= 3000.0; // large steps
  w[3].zero_();   // a zero unit: step 1
  w[4].abs_();
  w[5].abs_().mul_(-7.0);
  return w;
}

// The block decode of one weight on its grid, as llama.cpp computes it in
// float32 from halves: d q (f16) or d q + m (f16-offset), with q the code of
// the block (ours shifted by n/2 on symmetric grids, where x = d (q - n/2)).
// Checks that d and m are exact halves and returns the decoded weight.
at::Tensor blockDecode(const at::Tensor &codes, const GridParams &p, const GridSpec &spec,
                       int64_t in) {
  const at::Tensor s = expandToWeight(p.scale, spec, in).expand(codes.sizes()).contiguous();
  const at::Tensor z = expandToWeight(p.zeroPoint, spec, in).expand(codes.sizes()).contiguous();
  at::Tensor out = at::empty(codes.sizes(), at::kFloat);
  const auto q = codes.to(at::kInt).contiguous();
  const int *qp = q.data_ptr<int>();
  const float *sp = s.data_ptr<float>(), *zp = z.data_ptr<float>();
  float *op = out.data_ptr<float>();
  for (int64_t i = 0; i < codes.numel(); ++i) {
    const float d = float(c10::Half(sp[i]));
    if (d != sp[i])
      throw Error("step " + std::to_string(sp[i]) + " is not a half");
    if (spec.symmetric) {
      // A unit with z = -1 (full range, extreme positive) is stored as
      // llama.cpp stores it: d = -s and block code n/2 - (q - z).
      if (zp[i] != 0.0f && zp[i] != -1.0f)
        throw Error("symmetric zero point " + std::to_string(zp[i]) + " is neither 0 nor -1");
      const bool flipped = zp[i] == -1.0f;
      const float signedD = flipped ? -d : d;
      const int half = int(spec.levels() / 2);
      const int blockCode = (flipped ? -(qp[i] + 1) : qp[i]) + half;
      if (blockCode < 0 || blockCode >= int(spec.levels()))
        throw Error("block code " + std::to_string(blockCode) + " out of range");
      op[i] = signedD * float(blockCode - half);
    } else {
      const float mExact = -sp[i] * zp[i];
      const float m = float(c10::Half(mExact));
      if (m != mExact)
        throw Error("-s z = " + std::to_string(mExact) + " is not a half");
      op[i] = d * float(qp[i]) + m;
    }
  }
  return out;
}

// Every positive finite half, ascending (the f16 grid's allowed steps).
const std::vector<double> &allHalves() {
  static const std::vector<double> halves = allowedSteps(presetScheme("gguf-q8_0").weight);
  return halves;
}

// llama.cpp's Q6_K decode of one row from its steps and codes, written from
// the format alone: per 256-value super-block, find the half d and integer
// sc_j in 1..127 with d sc_j equal to each step (d the smallest half >= max
// step / 127, as the grid picks it; every d is tried if that fails), then
// value = (d * sc) * q in float32, as dequantize_row_q6_K computes it. Throws
// when the steps are not of that form.
at::Tensor q6kDecode(const at::Tensor &codes, const at::Tensor &scale, const at::Tensor &zero) {
  const int64_t out = codes.size(0), in = codes.size(1);
  if (in % 256 != 0 || scale.size(1) != in / 16)
    throw Error("not a Q6_K shape");
  const at::Tensor q = codes.to(at::kInt).contiguous();
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  const at::Tensor z = zero.to(at::kFloat).contiguous();
  at::Tensor result = at::empty({out, in}, at::kFloat);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t b = 0; b < in / 256; ++b) {
      const float *steps = s.data_ptr<float>() + r * (in / 16) + b * 16;
      const float peak = *std::max_element(steps, steps + 16);
      auto fits = [&](double d, std::vector<int> *sc) {
        sc->clear();
        for (int j = 0; j < 16; ++j) {
          const double m = double(steps[j]) / d;
          if (m != std::floor(m) || m < 1 || m > 127)
            return false;
          sc->push_back(int(m));
        }
        return true;
      };
      // From just below max / 127 (float32 division may round it down) up to max.
      std::vector<int> sc;
      float d = 0;
      for (auto it = std::lower_bound(allHalves().begin(), allHalves().end(),
                                      double(peak) / 127.0 * (1 - 1e-6));
           it != allHalves().end() && *it <= double(peak) && d == 0; ++it)
        if (fits(*it, &sc))
          d = float(*it);
      if (d == 0)
        throw Error("steps of row " + std::to_string(r) + " super-block " + std::to_string(b) +
                    " are not d sc");
      for (int64_t e = 0; e < 256; ++e) {
        const int code = q.data_ptr<int>()[r * in + b * 256 + e];
        if (code < -32 || code > 31)
          throw Error("code out of range");
        // A full-range group with zero point -1 is stored as llama.cpp
        // stores one whose extreme is positive: sc negated, codes -(q + 1).
        const float zp = z.data_ptr<float>()[r * (in / 16) + b * 16 + e / 16];
        if (zp != 0.0f && zp != -1.0f)
          throw Error("zero point neither 0 nor -1");
        const bool flipped = zp == -1.0f;
        const int scStored = flipped ? -sc[size_t(e / 16)] : sc[size_t(e / 16)];
        const int codeStored = flipped ? -(code + 1) : code;
        if (codeStored < -32 || codeStored > 31)
          throw Error("stored code out of range");
        const float dl = d * float(scStored);
        result.data_ptr<float>()[r * in + b * 256 + e] = dl * float(codeStored);
      }
    }
  return result;
}

} // namespace

class TestGgufGrid : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;
  lrq::test::TinyModel tiny_;

private slots:
  void initTestCase() {
    QVERIFY(tmp_.isValid());
    QString error;
    const QStringList names = lrq::test::writeTinyModels(tmp_.filePath("tiny"), &error);
    QVERIFY2(names.contains("llama_gqa"), qPrintable(error));
    tiny_ = lrq::test::readTinyModel(tmp_.filePath("tiny"), "llama_gqa");
    QVERIFY(!tiny_.tensors.empty());
  }

  void stepFormatMatchesScalarReference() {
    std::mt19937_64 rng(7);
    for (const std::string &name : ggufPresets()) {
      const GridSpec spec = ggufGrid(name);
      const std::vector<double> allowed = allowedSteps(spec);
      QVERIFY(!allowed.empty());
      QCOMPARE(largestStep(spec), allowed.back());
      std::vector<double> inputs(allowed.begin(), allowed.end()); // each maps to itself
      for (size_t i = 0; i + 1 < allowed.size(); ++i) {
        const double mid = 0.5 * (allowed[i] + allowed[i + 1]); // exact in float32: a tie
        inputs.push_back(mid);
        inputs.push_back(std::nextafter(float(mid), 0.0f));
        inputs.push_back(std::nextafter(float(mid), 1e9f));
      }
      std::uniform_real_distribution<double> logUniform(-40.0, std::log2(allowed.back()));
      for (int i = 0; i < 20000; ++i)
        inputs.push_back(double(float(std::exp2(logUniform(rng)))));
      for (double tiny : {1e-30, 1e-40, 1e-45, 2.9e-8, 3.0e-8})
        inputs.push_back(double(float(tiny)));
      inputs.push_back(allowed.back());
      std::vector<float> asFloat(inputs.begin(), inputs.end());
      const at::Tensor x = at::tensor(asFloat, at::kFloat);
      const at::Tensor y = applyStepFormat(x, spec).contiguous();
      const float *yp = y.data_ptr<float>();
      int64_t mismatches = 0;
      for (size_t i = 0; i < asFloat.size(); ++i) {
        const double expected = nearestAllowed(allowed, double(asFloat[i]));
        if (double(yp[i]) != expected && ++mismatches < 5)
          qWarning("%s: %.9g -> %.9g, expected %.9g", name.c_str(), double(asFloat[i]),
                   double(yp[i]), expected);
      }
      QCOMPARE(mismatches, int64_t(0));
      // f16: the same as the float -> half conversion wherever that is positive.
      if (spec.stepFormat == StepFormat::Fp16) {
        const at::Tensor inRange = (x >= std::ldexp(1.0, -24)).logical_and(x <= 65504.0);
        QVERIFY(at::equal(y.masked_select(inRange),
                          x.masked_select(inRange).to(at::kHalf).to(at::kFloat)));
      }
      // f16-offset: s z is an exact half for every zero point.
      if (spec.stepFormat == StepFormat::Fp16Offset)
        for (int64_t z = 0; z < spec.levels(); ++z) {
          const at::Tensor sz = y * double(z);
          QVERIFY(at::equal(sz, sz.to(at::kHalf).to(at::kFloat)));
        }
    }
  }

  void stepFormatRefusesWhatCannotBeStored() {
    for (const std::string &name : ggufPresets()) {
      const GridSpec spec = ggufGrid(name);
      for (float bad :
           {0.0f, -1.0f, std::numeric_limits<float>::infinity(),
            std::numeric_limits<float>::quiet_NaN(), float(largestStep(spec)) * 1.01f}) {
        bool thrown = false;
        try {
          applyStepFormat(at::tensor({0.5f, bad}), spec);
        } catch (const Error &e) {
          thrown = true;
          QVERIFY2(std::string(e.what()).find(stepFormatName(spec.stepFormat)) != std::string::npos,
                   e.what());
        }
        QVERIFY2(thrown, name.c_str());
      }
    }
    // f32 leaves every step alone.
    GridSpec f32;
    const at::Tensor x = at::tensor({0.1f, 1e-30f, 1e30f});
    QVERIFY(at::equal(applyStepFormat(x, f32), x));
  }

  void stepFormatIsStraightThroughWhenTrained() {
    const GridSpec spec = ggufGrid("gguf-q4_1");
    const at::Tensor s = (at::rand({4, 3}) * 0.1 + 1e-3).requires_grad_(true);
    const at::Tensor y = applyStepFormat(s, spec);
    QVERIFY(at::equal(y.detach(), applyStepFormat(s.detach(), spec)));
    (y * at::arange(12, at::kFloat).reshape({4, 3})).sum().backward();
    QVERIFY(at::equal(s.grad(), at::arange(12, at::kFloat).reshape({4, 3})));
    // Above the largest step: clamped while training, not thrown.
    const at::Tensor big = at::full({1}, 1e9f).requires_grad_(true);
    QCOMPARE(double(applyStepFormat(big, spec).item<float>()), largestStep(spec));
  }

  // Every init on every GGUF grid: steps the block stores, integer zero
  // points, and Ŵ equal to the block decode bit for bit.
  void computedGridsAreExactBlocks() {
    for (const std::string &name : ggufPresets())
      for (StepInit init :
           {StepInit::MinMax, StepInit::ClippingSearch, StepInit::ClippingSearch2D}) {
        GridSpec spec = ggufGrid(name);
        if (init == StepInit::ClippingSearch2D && spec.symmetric)
          continue;
        spec.init = init;
        spec.clipSteps = 20;
        const at::Tensor w = awkwardWeight(11);
        const GridParams p = computeGridParams(w, spec);
        QCOMPARE(p.scale.size(1), int64_t(3));
        QVERIFY(at::equal(p.scale, applyStepFormat(p.scale, spec))); // already in the format
        QVERIFY(at::equal(p.zeroPoint, p.zeroPoint.round()));
        QVERIFY(p.zeroPoint.min().item<float>() >= (spec.fullRange ? -1.0f : 0.0f));
        QVERIFY(p.zeroPoint.max().item<float>() <= (spec.symmetric ? 0.0f : spec.levels() - 1.0f));
        const at::Tensor codes = quantizeWeight(w, p, spec);
        const at::Tensor fake = fakeQuantizeWeight(w, p, spec);
        QVERIFY(at::equal(fake, dequantizeWeight(codes, p, spec)));
        QVERIFY2(at::equal(fake, blockDecode(codes, p, spec, w.size(1))),
                 (name + " " + stepInitName(init)).c_str());
        // The zero unit keeps step 1 (a half) and decodes to zeros.
        QVERIFY(fake[3].abs().max().item<float>() == 0.0f);
        // The grid stays close: rounding the step moves it by at most 2^-(P) relative.
        QVERIFY((fake - w).abs().max().item<float>() <= w.abs().max().item<float>());
      }
  }

  // The searches choose among rounded steps: never worse than min/max on the
  // same format, which is one of their candidates.
  void searchesEvaluateRoundedSteps() {
    for (const char *name : {"gguf-q4_0", "gguf-q4_1"}) {
      GridSpec minmax = ggufGrid(name);
      GridSpec search = minmax;
      search.init = StepInit::ClippingSearch;
      at::manual_seed(3);
      const at::Tensor w = at::randn({8, 64});
      const at::Tensor a = unitLpError(w, roundToNearest(w, minmax), minmax, search.clipNorm);
      const at::Tensor b = unitLpError(w, roundToNearest(w, search), search, search.clipNorm);
      QVERIFY((b <= a).all().item<bool>());
      QVERIFY((b < a).any().item<bool>());
    }
  }

  void minMaxStepIsTheNearestStoredStep() {
    // Asymmetric: s = round((hi - lo) / (n - 1)) to the format, z = round(-lo / s).
    GridSpec spec = ggufGrid("gguf-q4_1");
    spec.granularity = Granularity::PerChannel;
    spec.groupSize = 0;
    const at::Tensor w = at::tensor({-0.3f, 0.1f, 0.77f}).reshape({1, 3});
    const GridParams p = computeGridParams(w, spec);
    const double raw = double(float(0.77f - -0.3f) / 15.0f);
    const double expected = nearestAllowed(allowedSteps(ggufGrid("gguf-q4_1")), raw);
    QCOMPARE(double(p.scale.item<float>()), expected);
    QCOMPARE(double(p.zeroPoint.item<float>()), std::nearbyint(0.3 / expected));
  }

  void ggufBlockTypes() {
    QCOMPARE(std::string(ggufBlockTypeFor(ggufGrid("gguf-q8_0"))), std::string("Q8_0"));
    QCOMPARE(std::string(ggufBlockTypeFor(ggufGrid("gguf-q5_0"))), std::string("Q5_0"));
    QCOMPARE(std::string(ggufBlockTypeFor(ggufGrid("gguf-q4_0"))), std::string("Q4_0"));
    QCOMPARE(std::string(ggufBlockTypeFor(ggufGrid("gguf-q5_1"))), std::string("Q5_1"));
    QCOMPARE(std::string(ggufBlockTypeFor(ggufGrid("gguf-q4_1"))), std::string("Q4_1"));
    GridSpec g = ggufGrid("gguf-q4_0");
    g.stepFormat = StepFormat::Float32; // a float32 step is no block
    QVERIFY(ggufBlockTypeFor(g) == nullptr);
    g = ggufGrid("gguf-q4_0");
    g.groupSize = 64;
    QVERIFY(ggufBlockTypeFor(g) == nullptr);
    g = ggufGrid("gguf-q4_1");
    g.stepFormat = StepFormat::Fp16; // an f16 step with an integer zero point: no block
    QVERIFY(ggufBlockTypeFor(g) == nullptr);
    g = ggufGrid("gguf-q4_0");
    g.bits = 3;
    QVERIFY(ggufBlockTypeFor(g) == nullptr);
    for (const std::string &name : presetNames())
      if (name.rfind("gguf-", 0) != 0)
        QVERIFY(ggufBlockTypeFor(presetScheme(name).weight) == nullptr);
    for (const std::string &name : ggufPresets()) {
      const QuantScheme s = presetScheme(name);
      const std::vector<std::string> names = presetNames();
      QVERIFY(std::find(names.begin(), names.end(), name) != names.end());
      QCOMPARE(int(s.activation.mode), int(ActivationMode::None));
      QVERIFY(!s.kv8);
      QVERIFY(s.describe().find("GGUF") != std::string::npos);
    }
  }

  void bitsPerWeightMatchBlockStorage() {
    const std::vector<std::pair<std::string, double>> expected{{"gguf-q8_0", 8.5},
                                                               {"gguf-q5_0", 5.5},
                                                               {"gguf-q4_0", 4.5},
                                                               {"gguf-q5_1", 6.0},
                                                               {"gguf-q4_1", 5.0}};
    for (const auto &[name, bits] : expected)
      QCOMPARE(effectiveBitsPerWeight(ggufGrid(name), 192, 576), bits);
    // An asymmetric f32 grid keeps its integer zero point as wide as a code.
    GridSpec g = ggufGrid("gguf-q4_1");
    g.stepFormat = StepFormat::Float32;
    QCOMPARE(effectiveBitsPerWeight(g, 192, 576), 4.0 + 20.0 / 32.0);
  }

  // Q4_0 and Q5_0 use the whole symmetric range, as llama.cpp's quantizer
  // does; Q8_0 stays balanced, like llama.cpp's.
  void fullRangePresets() {
    QVERIFY(ggufGrid("gguf-q4_0").fullRange);
    QVERIFY(ggufGrid("gguf-q5_0").fullRange);
    QVERIFY(!ggufGrid("gguf-q8_0").fullRange);
    QVERIFY(!ggufGrid("gguf-q4_1").fullRange);
    QVERIFY(ggufGrid("gguf-q4_0").describe().find("full-range") != std::string::npos);
  }

  // Min/max on the full range against a scalar implementation of llama.cpp's
  // reference Q4_0 quantizer (d = the signed extreme / -8 in float, codes from
  // x / d + 8.5 truncated, at most 15, d then stored as a half). Ours rounds d
  // to a half before choosing the codes, so codes may differ where x / d is
  // close to a half-way point; the squared error over many blocks must agree
  // within 1%, and be well below the balanced grid's.
  void fullRangeMatchesLlamaCppQ4_0() {
    at::manual_seed(21);
    // Heavy-tailed rows, like trained weights.
    const at::Tensor w =
        (at::randn({256, 256}) / (at::randn({256, 256}).pow(2) + 0.5).sqrt()).contiguous();
    const GridSpec full = ggufGrid("gguf-q4_0");
    GridSpec balanced = full;
    balanced.fullRange = false;
    const at::Tensor ours = roundToNearest(w, full);
    const at::Tensor theirs = at::empty_like(w);
    const float *x = w.data_ptr<float>();
    float *y = theirs.data_ptr<float>();
    for (int64_t b = 0; b < w.numel() / 32; ++b) {
      const float *xb = x + b * 32;
      float amax = 0.0f, max = 0.0f;
      for (int j = 0; j < 32; ++j)
        if (std::fabs(xb[j]) > amax) {
          amax = std::fabs(xb[j]);
          max = xb[j];
        }
      const float d = max / -8.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const float dStored = float(c10::Half(d));
      for (int j = 0; j < 32; ++j) {
        const int q = std::min(15, int(int8_t(xb[j] * id + 8.5f)));
        y[b * 32 + j] = dStored * float(q - 8);
      }
    }
    const double eOurs = (ours - w).pow(2).sum().item<double>();
    const double eTheirs = (theirs - w).pow(2).sum().item<double>();
    const double eBalanced = (roundToNearest(w, balanced) - w).pow(2).sum().item<double>();
    qInfo("squared error: full range %.6g, llama.cpp Q4_0 %.6g, balanced %.6g", eOurs, eTheirs,
          eBalanced);
    QVERIFY(std::fabs(eOurs - eTheirs) <= 0.01 * eTheirs);
    QVERIFY(eOurs < 0.9 * eBalanced);
    // Codes agree except near half-way points.
    const double agree = (ours == theirs).to(at::kDouble).mean().item<double>();
    QVERIFY2(agree > 0.99, std::to_string(agree).c_str());
    // The side follows the extreme's sign: a block whose extreme is positive
    // reaches +8 s, one whose extreme is negative -8 s.
    const at::Tensor block = at::tensor({0.8f, -0.1f, 0.2f, -0.7f}).repeat({8}).reshape({1, 32});
    const GridParams p = computeGridParams(block, full);
    QCOMPARE(p.zeroPoint.item<float>(), -1.0f);
    QCOMPARE(fakeQuantizeWeight(block, p, full).max().item<float>(), 8.0f * p.scale.item<float>());
    const GridParams n = computeGridParams(block.neg(), full);
    QCOMPARE(n.zeroPoint.item<float>(), 0.0f);
  }

  void schemeJsonRoundTrip() {
    for (const std::string &name : ggufPresets()) {
      const QuantScheme s = presetScheme(name);
      const std::string json = s.toJson();
      QVERIFY(json.find("\"step_format\"") != std::string::npos);
      const QuantScheme back = QuantScheme::fromJson(json);
      QCOMPARE(int(back.weight.stepFormat), int(s.weight.stepFormat));
      QCOMPARE(back.toJson(), json);
    }
    // f32 is left out, so older schemes and run records read the same.
    QVERIFY(presetScheme("W4A16").toJson().find("step_format") == std::string::npos);
    QCOMPARE(int(QuantScheme::fromJson(R"({"weight": {"bits": 4}})").weight.stepFormat),
             int(StepFormat::Float32));
    QCOMPARE(int(QuantScheme::fromJson(R"({"weight": {"step_format": "f32"}})").weight.stepFormat),
             int(StepFormat::Float32));
    auto refused = [](const std::string &json, const std::string &needle) {
      try {
        QuantScheme::fromJson(json);
      } catch (const Error &e) {
        return std::string(e.what()).find(needle) != std::string::npos;
      }
      return false;
    };
    QVERIFY(refused(R"({"weight": {"step_format": "bf16"}})",
                    "weight.step_format: expected f32, f16, f16-offset, k-superblock or "
                    "k-superblock-offset, got \"bf16\""));
    QVERIFY(refused(R"({"weight": {"step_format": 16}})", "weight.step_format"));
    QVERIFY(
        refused(R"({"weight": {"symmetric": false, "full_range": true}})", "weight.full_range"));
    QVERIFY(refused(R"({"weight": {"symmetric": true, "full_range": 1}})", "weight.full_range"));
    QVERIFY(QuantScheme::fromJson(presetScheme("gguf-q4_0").toJson()).weight.fullRange);
    QVERIFY(presetScheme("W4A16").toJson().find("full_range") == std::string::npos);
    QVERIFY(refused(R"({"weight": {"symmetric": true, "step_format": "f16-offset"}})",
                    "needs an asymmetric grid"));
    GridSpec g;
    g.symmetric = true;
    g.stepFormat = StepFormat::Fp16Offset;
    QVERIFY_EXCEPTION_THROWN(g.validate(), Error);
    StepFormat f = StepFormat::Float32;
    QVERIFY(parseStepFormat("f16-offset", &f) && f == StepFormat::Fp16Offset);
    QVERIFY(!parseStepFormat("F16", &f));
  }

  // Every method on every GGUF grid, on a tiny LLaMA (hidden 64, MLP 96: whole
  // blocks of 32): each reported step is one the block stores, each zero point
  // an integer in range, each Ŵ the block decode of its codes bit for bit, and
  // the packed export holds Ŵ exactly. LR-QAT refuses 8 bits with a clear message.
  void everyMethodLandsOnBlocks() {
    const ModelConfig &config = tiny_.config;
    const std::map<std::string, nlohmann::json> quick = lrq::test::quickHyperparameters(32);
    at::Generator gen = at::detail::createCPUGenerator(7);
    const at::Tensor tokens = at::randint(config.vocabSize, {2, 16}, gen, at::kLong);
    const CalibrationSet calibration{tokens, "test"};
    std::map<std::string, at::Tensor> fp;
    for (const auto &[name, t] : tiny_.tensors)
      fp[name] = t.clone();
    const ModelWeights original = ModelWeights::fromHfTensors(config, fp);
    int64_t checked = 0;
    for (const std::string &methodName : methodNames())
      for (const std::string &preset : ggufPresets()) {
        const QuantScheme scheme = presetScheme(preset);
        const std::string cell = methodName + " " + preset;
        std::unique_ptr<QuantMethod> method = createMethod(methodName);
        if (methodName == "lrqat" && scheme.weight.bits == 8) {
          try {
            method->checkScheme(scheme);
            QFAIL("lrqat accepted 8-bit weights");
          } catch (const Error &e) {
            QVERIFY2(std::string(e.what()).find("2 to 7 bits") != std::string::npos, e.what());
          }
          continue;
        }
        method->checkScheme(scheme);
        const lrq::test::QuickRun run = lrq::test::runQuick(config, tiny_.tensors, *method,
                                                            methodName, scheme, calibration, quick);
        const DecoderModel &model = *run.model;
        const MethodReport &report = run.report;
        // The method's own grid ("auto" resolved) is still the same block type.
        const QuantScheme used = resolveReferenceGrid(*method, scheme);
        QCOMPARE(std::string(ggufBlockTypeFor(used.weight)),
                 std::string(ggufBlockTypeFor(scheme.weight)));
        const auto linears = hfLinearsFromWeights(config, model.weights());
        QCOMPARE(report.grids.size(), size_t(2 * 7));
        for (const auto &[prefix, linear] : linears) {
          const auto g = report.grids.find(prefix);
          QVERIFY2(g != report.grids.end(), (cell + " " + prefix).c_str());
          const GridParams &p = g->second;
          const at::Tensor w = linear->weight.to(at::kFloat);
          QVERIFY2(at::equal(p.scale, applyStepFormat(p.scale, used.weight)),
                   (cell + " " + prefix).c_str());
          QVERIFY(at::equal(p.zeroPoint, p.zeroPoint.round()));
          QVERIFY(p.zeroPoint.min().item<float>() >= (used.weight.fullRange ? -1.0f : 0.0f));
          QVERIFY(p.zeroPoint.max().item<float>() <=
                  (used.weight.symmetric ? 0.0f : used.weight.levels() - 1.0f));
          const at::Tensor codes = quantizeWeight(w, p, used.weight);
          QVERIFY2(at::equal(w, dequantizeWeight(codes, p, used.weight)),
                   (cell + " " + prefix).c_str());
          QVERIFY2(at::equal(w, blockDecode(codes, p, used.weight, w.size(1))),
                   (cell + " " + prefix).c_str());
          ++checked;
        }
        PackStats stats;
        packQuantizedModel(config, model.weights(), original, used, methodName, &report.grids,
                           &stats);
        QCOMPARE(stats.layers, int64_t(14));
        QVERIFY2(stats.maxDeviation == 0.0, cell.c_str());
      }
    QVERIFY(checked >= int64_t(8 * 5 - 1) * 14);
  }
  // The super-block rounding against a scalar reference: d the smallest half
  // >= max / 127 (found among every half), sc = ceil(max / d) for the largest
  // step, sc_j = round(s_j / d) for the others, in 1..127.
  void superBlockStepsMatchScalarReference() {
    const GridSpec spec = ggufGrid("gguf-q6_k");
    QCOMPARE(int(spec.stepFormat), int(StepFormat::KSuperblock));
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> logUniform(-30.0, 20.0);
    const int64_t rows = 40, groups = 32;
    at::Tensor x = at::empty({rows, groups}, at::kFloat);
    for (int64_t r = 0; r < rows; ++r) {
      const double base = std::exp2(logUniform(rng));
      for (int64_t j = 0; j < groups; ++j)
        x[r][j] = float(base * std::exp2(-double(rng() % 12)) * (1.0 + double(rng() % 1000) / 997));
    }
    x[0].fill_(1e-3f);
    x[0][3] = 1000.0f;                       // one large step among small ones: they become d
    x[1].fill_(0.25f);                       // all equal
    x[2].fill_(float(std::ldexp(1.0, -24))); // zero groups' step
    const at::Tensor y = applyStepFormat(x, spec).contiguous();
    int64_t mismatches = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < groups / 16; ++b) {
        float peak = 0;
        for (int j = 0; j < 16; ++j)
          peak = std::max(peak, x[r][b * 16 + j].item<float>());
        const float target = peak / 127.0f;
        const double d = *std::lower_bound(allHalves().begin(), allHalves().end(), double(target));
        for (int j = 0; j < 16; ++j) {
          const float sj = x[r][b * 16 + j].item<float>();
          const double sc =
              std::min(127.0, std::max(1.0, sj == peak ? std::ceil(double(sj / float(d)))
                                                       : std::nearbyint(double(sj / float(d)))));
          const double expected = d * sc;
          if (double(y[r][b * 16 + j].item<float>()) != expected && ++mismatches < 5)
            qWarning("row %d block %d group %d: %.9g -> %.9g, expected %.9g", int(r), int(b), j,
                     double(sj), double(y[r][b * 16 + j].item<float>()), expected);
          // The largest step is never cut (but for float32's rounding of max / 127).
          if (sj == peak)
            QVERIFY(double(y[r][b * 16 + j].item<float>()) >= double(sj) * (1 - 1e-7));
        }
      }
    QCOMPARE(mismatches, int64_t(0));
    QVERIFY(at::equal(applyStepFormat(y, spec), y)); // rounded steps stay put
    QVERIFY((y[1] == y[1][0]).all().item<bool>() && y[1][0].item<float>() >= 0.25f);
    QCOMPARE(y[2][0].item<float>(), float(std::ldexp(1.0, -24)));
    QCOMPARE(y[0][0].item<float>(), y[0][1].item<float>()); // small steps became d (sc = 1)
    QCOMPARE(y[0][3].item<float>(), 127.0f * y[0][0].item<float>());
    // Refused: steps that are not [rows, 16 k], zero, infinite, too large.
    QVERIFY_THROWS_EXCEPTION(Error, applyStepFormat(at::full({2, 20}, 0.5f), spec));
    QVERIFY_THROWS_EXCEPTION(Error, applyStepFormat(at::full({32}, 0.5f), spec));
    for (float bad : {0.0f, std::numeric_limits<float>::infinity(), 65504.0f * 128.0f}) {
      at::Tensor t = at::full({1, 16}, 0.5f);
      t[0][5] = bad;
      QVERIFY_THROWS_EXCEPTION(Error, applyStepFormat(t, spec));
    }
    QCOMPARE(largestStep(spec), 65504.0 * 127.0);
    // Straight through while training.
    const at::Tensor s = (at::rand({3, 16}) * 0.1 + 1e-3).requires_grad_(true);
    const at::Tensor t = applyStepFormat(s, spec);
    QVERIFY(at::equal(t.detach(), applyStepFormat(s.detach(), spec)));
    (t * 2).sum().backward();
    QVERIFY(at::equal(s.grad(), at::full({3, 16}, 2.0f)));
  }

  // MinMax and the 1-D search on a k-superblock grid: steps d sc, Ŵ equal to
  // the Q6_K decode bit for bit; zero groups decode to zero without setting d.
  void superBlockGridsAreExactQ6K() {
    for (StepInit init : {StepInit::MinMax, StepInit::ClippingSearch}) {
      GridSpec spec = ggufGrid("gguf-q6_k");
      spec.init = init;
      spec.clipSteps = 20;
      at::manual_seed(4);
      at::Tensor w = at::randn({6, 512}) * 0.05;
      w[1] *= 1e-4;                     // subnormal d
      w[2] *= 3000.0;                   // large steps
      w[3].narrow(0, 16, 16).zero_();   // a zero group inside a super-block
      w[4].zero_();                     // a zero row
      w[5].narrow(0, 0, 16).mul_(40.0); // one group dominates its super-block
      const GridParams p = computeGridParams(w, spec);
      QCOMPARE(p.scale.size(1), int64_t(32));
      QVERIFY(at::equal(p.scale, applyStepFormat(p.scale, spec)));
      QVERIFY(((p.zeroPoint == 0) | ((p.zeroPoint == -1) & spec.fullRange)).all().item<bool>());
      const at::Tensor codes = quantizeWeight(w, p, spec);
      QVERIFY(codes.min().item<int>() >= -32 && codes.max().item<int>() <= 31);
      const at::Tensor fake = fakeQuantizeWeight(w, p, spec);
      QVERIFY(at::equal(fake, dequantizeWeight(codes, p, spec)));
      QVERIFY2(at::equal(fake, q6kDecode(codes, p.scale, p.zeroPoint)), stepInitName(init));
      QVERIFY(fake[4].abs().max().item<float>() == 0.0f);
      QVERIFY(fake[3].narrow(0, 16, 16).abs().max().item<float>() == 0.0f);
      // The zero group does not set d (a step of 1 would make d >= 1/127):
      // its step is d itself, the super-block's smallest.
      const at::Tensor block = p.scale[3].narrow(0, 0, 16);
      QVERIFY(block.max().item<float>() < 0.05f);
      QCOMPARE(p.scale[3][1].item<float>(), block.min().item<float>());
      QVERIFY((fake - w).abs().max().item<float>() <= w.abs().max().item<float>() * 0.1f);
    }
    // Rows that are not whole super-blocks are refused, naming the fallback.
    try {
      computeGridParams(at::randn({2, 576}), ggufGrid("gguf-q6_k"));
      QFAIL("a k-superblock grid took rows of 576");
    } catch (const Error &e) {
      QVERIFY2(std::string(e.what()).find("multiple of 256") != std::string::npos, e.what());
    }
  }

  void q6kSchemeAndFallback() {
    const QuantScheme s = presetScheme("gguf-q6_k");
    QCOMPARE(std::string(ggufBlockTypeFor(s.weight)), std::string("Q6_K"));
    QVERIFY(s.fallbackWeight.has_value());
    QCOMPARE(std::string(ggufBlockTypeFor(*s.fallbackWeight)), std::string("Q8_0"));
    QVERIFY(s.mixesGrids());
    QCOMPARE(&s.weightFor(1536), &s.weight);
    QCOMPARE(&s.weightFor(256), &s.weight);
    QCOMPARE(&s.weightFor(576), &*s.fallbackWeight);
    const QuantScheme q8 = presetScheme("gguf-q8_0");
    QCOMPARE(&q8.weightFor(576), &q8.weight);
    const std::string d = s.describe();
    QVERIFY2(d.find("Q6_K") != std::string::npos && d.find("Q8_0") != std::string::npos &&
                 d.find("256") != std::string::npos,
             d.c_str());
    // Storage: 210 bytes per 256 weights; the fallback 34 bytes per 32.
    QCOMPARE(effectiveBitsPerWeight(s.weight, 576, 1536), 6.5625);
    QCOMPARE(effectiveBitsPerWeight(s.weight, 3, 256), 210.0 * 8 / 256);
    QCOMPARE(effectiveBitsPerWeight(*s.fallbackWeight, 192, 576), 8.5);
    // JSON round trip, fallback included; other schemes keep no fallback key.
    const std::string json = s.toJson();
    QVERIFY(json.find("\"fallback_weight\"") != std::string::npos);
    QVERIFY(json.find("\"k-superblock\"") != std::string::npos);
    const QuantScheme back = QuantScheme::fromJson(json);
    QCOMPARE(back.toJson(), json);
    QVERIFY(back.fallbackWeight && back.fallbackWeight->bits == 8);
    QVERIFY(presetScheme("gguf-q4_0").toJson().find("fallback") == std::string::npos);
    // Grids that are not Q6_K.
    GridSpec g = s.weight;
    g.bits = 4;
    QVERIFY(ggufBlockTypeFor(g) == nullptr);
    g = s.weight;
    g.stepFormat = StepFormat::Fp16;
    QVERIFY(ggufBlockTypeFor(g) == nullptr);
    auto refused = [](const std::string &json, const std::string &needle) {
      try {
        QuantScheme::fromJson(json);
      } catch (const Error &e) {
        if (std::string(e.what()).find(needle) != std::string::npos)
          return true;
        qWarning("%s", e.what());
      }
      return false;
    };
    const std::string q6 = R"("weight": {"bits": 6, "symmetric": true, "granularity": "per-group",
                                         "group_size": 16, "step_format": "k-superblock"})";
    QVERIFY(refused(R"({"weight": {"bits": 6, "granularity": "per-group", "group_size": 16,
                                   "step_format": "k-superblock"}})",
                    "symmetric per-group grid with group size 16"));
    QVERIFY(refused(R"({"weight": {"bits": 8, "symmetric": true, "granularity": "per-group",
                                   "group_size": 16, "step_format": "k-superblock"}})",
                    "at most 6 bits"));
    QVERIFY(refused(R"({"weight": {"bits": 4}, "fallback_weight": {"bits": 8}})",
                    "fallback_weight applies to k-superblock"));
    QVERIFY(refused("{" + q6 + R"(, "fallback_weight": )" + q6.substr(q6.find('{')) + "}",
                    "cannot be k-superblock"));
    QVERIFY(refused("{" + q6 + R"(, "fallback_weight": {"bits": 9}})", "fallback_weight.bits"));
    // Exports: GGUF takes it (each tensor its own type), also with a method of
    // its own; a fallback with float32 steps does not; compressed-tensors
    // holds one grid per model and refuses it.
    QCOMPARE(ggufExportProblem(json, "gptq"), std::string());
    QuantScheme f32Fallback = s;
    f32Fallback.fallbackWeight->stepFormat = StepFormat::Float32;
    const std::string why = ggufExportProblem(f32Fallback.toJson(), "rtn");
    QVERIFY2(why.find("fallback") != std::string::npos &&
                 why.find("gguf-q6_k") != std::string::npos,
             why.c_str());
    QVERIFY(ggufExportProblem(json, "lqer").find("low-rank") != std::string::npos);
    // Q6_K's shape with float32 steps: the preset is named, and why.
    QuantScheme f32Steps = s;
    f32Steps.weight.stepFormat = StepFormat::Float32;
    f32Steps.fallbackWeight.reset();
    const std::string shape = ggufExportProblem(f32Steps.toJson(), "rtn");
    QVERIFY2(shape.find("GGUF Q6_K") != std::string::npos &&
                 shape.find("d*sc") != std::string::npos &&
                 shape.find("--scheme gguf-q6_k") != std::string::npos,
             shape.c_str());
    try {
      compressedTensorsFormatFor(s, "rtn");
      QFAIL("compressed-tensors took a mixed scheme");
    } catch (const Error &e) {
      QVERIFY2(std::string(e.what()).find("different grids") != std::string::npos, e.what());
    }
    // Without a fallback: a scheme of its own, for models whose rows are all whole super-blocks.
    const QuantScheme plain = QuantScheme::fromJson("{" + q6 + "}");
    QVERIFY(!plain.mixesGrids());
    QCOMPARE(&plain.weightFor(576), &plain.weight);
  }

  // Every method on gguf-q6_k, on a tiny LLaMA whose down_proj reads 256
  // inputs (Q6_K) and whose other linears read 64 (the Q8_0 fallback): each
  // reported grid is the linear's own, every Ŵ its block decode bit for bit
  // (the Q6_K decode above, or Q8_0's), and the packed export holds Ŵ exactly.
  void everyMethodLandsOnQ6K() {
    const ModelConfig config = lrq::test::tinyLlamaConfig({256, 64, 256, 16, 128});
    std::map<std::string, at::Tensor> fp;
    for (const auto &[name, t] : lrq::test::tinyLlamaTensors(config, 21))
      fp[name] = t.to(at::kFloat);
    const ModelWeights original = ModelWeights::fromHfTensors(config, fp);
    const std::map<std::string, nlohmann::json> quick = lrq::test::quickHyperparameters(64);
    at::Generator gen = at::detail::createCPUGenerator(7);
    const CalibrationSet calibration{at::randint(config.vocabSize, {2, 16}, gen, at::kLong),
                                     "test"};
    const QuantScheme scheme = presetScheme("gguf-q6_k");
    int64_t q6k = 0, q8 = 0;
    for (const std::string &methodName : methodNames()) {
      std::unique_ptr<QuantMethod> method = createMethod(methodName);
      method->checkScheme(scheme);
      const lrq::test::QuickRun run =
          lrq::test::runQuick(config, fp, *method, methodName, scheme, calibration, quick);
      const DecoderModel &model = *run.model;
      const MethodReport &report = run.report;
      const QuantScheme used = resolveReferenceGrid(*method, scheme);
      QCOMPARE(std::string(ggufBlockTypeFor(used.weight)), std::string("Q6_K"));
      QCOMPARE(std::string(ggufBlockTypeFor(*used.fallbackWeight)), std::string("Q8_0"));
      QCOMPARE(report.grids.size(), size_t(2 * 7));
      for (const auto &[prefix, linear] : hfLinearsFromWeights(config, model.weights())) {
        const std::string cell = methodName + " " + prefix;
        const auto g = report.grids.find(prefix);
        QVERIFY2(g != report.grids.end(), cell.c_str());
        const GridParams &p = g->second;
        const at::Tensor w = linear->weight.to(at::kFloat);
        const GridSpec &grid = used.weightFor(w.size(1));
        QVERIFY2(at::equal(p.scale, applyStepFormat(p.scale, grid)), cell.c_str());
        QVERIFY(((p.zeroPoint == 0) | ((p.zeroPoint == -1) & grid.fullRange)).all().item<bool>());
        const at::Tensor codes = quantizeWeight(w, p, grid);
        QVERIFY2(at::equal(w, dequantizeWeight(codes, p, grid)), cell.c_str());
        if (w.size(1) == 256) {
          QVERIFY2(at::equal(w, q6kDecode(codes, p.scale, p.zeroPoint)), cell.c_str());
          ++q6k;
          // A resumed run finds the steps from Ŵ alone: d sc again.
          if (methodName == "lrq") {
            const GridParams back = recoverLearnedGrid(fp.at(prefix + ".weight"), w, grid);
            QVERIFY2(back.scale.defined(), cell.c_str());
            QVERIFY(
                at::equal(w, q6kDecode(quantizeWeight(w, back, grid), back.scale, back.zeroPoint)));
          }
        } else {
          QCOMPARE(grid.bits, 8);
          QVERIFY2(at::equal(w, blockDecode(codes, p, grid, w.size(1))), cell.c_str());
          ++q8;
        }
      }
      PackStats stats;
      const PackedModelContents packed = packQuantizedModel(config, model.weights(), original, used,
                                                            methodName, &report.grids, &stats);
      QCOMPARE(stats.layers, int64_t(14));
      QVERIFY2(stats.maxDeviation == 0.0, methodName.c_str());
      for (const PackedTensor &t : packed.quantized)
        QCOMPARE(std::make_pair(t.bits, t.groupSize), t.codes.size(1) == 256
                                                          ? std::make_pair(6, int64_t(16))
                                                          : std::make_pair(8, int64_t(32)));
    }
    QCOMPARE(q6k, int64_t(methodNames().size()) * 2);
    QCOMPARE(q8, int64_t(methodNames().size()) * 12);
  }

  // A weight too large for the format's steps: refused, naming the layer and the step.
  void unstorableStepNamesTheLayer() {
    const ModelConfig &config = tiny_.config;
    for (const char *methodName : {"rtn", "lrq"}) {
      std::map<std::string, at::Tensor> copy;
      for (const auto &[name, t] : tiny_.tensors)
        copy[name] = t.clone();
      DecoderModel model(config, ModelWeights::fromHfTensors(config, copy));
      model.weights().blocks[1].down.weight[2][7] = 1e9f;
      const QuantScheme scheme = presetScheme("gguf-q4_1");
      at::Generator gen = at::detail::createCPUGenerator(7);
      const CalibrationSet calibration{at::randint(config.vocabSize, {2, 16}, gen, at::kLong),
                                       "test"};
      std::unique_ptr<QuantMethod> method = createMethod(methodName);
      MethodContext ctx{model, scheme,  calibration, mergeHyperparameters(*method, {}),
                        5,     nullptr, nullptr,     ""};
      if (ctx.hyper.contains("iters"))
        ctx.hyper["iters"] = 1;
      ctx.spectra = false;
      try {
        method->run(ctx);
        QFAIL("expected lrq::Error");
      } catch (const Error &e) {
        const std::string msg = e.what();
        qInfo("%s: %s", methodName, e.what());
        QVERIFY2(msg.find("block 1") != std::string::npos, e.what());
        QVERIFY2(msg.find("down_proj") != std::string::npos, e.what());
        QVERIFY2(msg.find("f16-offset") != std::string::npos, e.what());
      }
    }
  }
};

QTEST_GUILESS_MAIN(TestGgufGrid)
#include "test_gguf_grid.moc"
