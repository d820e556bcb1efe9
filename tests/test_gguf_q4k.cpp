// gguf-q4_k: llama.cpp's Q4_K as a grid in offset form (k-superblock-offset:
// steps d sc and offsets dmin m per 256-input super-block, x^ = s q - M). The
// super-block rounding of steps and offsets against a scalar reference, the
// grids computeGridParams makes against a Q4_K decode written from the
// format, the scheme with its Q5_0 fallback, and every method on a tiny LLaMA
// whose down_proj reads 256 inputs (Q4_K) and whose other linears read 64
// (Q5_0): Ŵ equals the hand-written decode, llama.cpp's blocks encoded from
// the run decode (ours and gguf-py's) to Ŵ bit for bit.
#include <ATen/ATen.h>

#include <QtTest>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <QFile>
#include <QTemporaryDir>

#include "core/common/error.h"
#include "core/io/export.h"
#include "core/io/ggml_quants.h"
#include "core/io/gguf_export.h"
#include "core/model/decoder.h"
#include "core/quant/compressed_tensors_scheme.h"
#include "core/quant/export_glue.h"
#include "core/quant/gguf_scheme.h"
#include "core/quant/grid.h"
#include "core/quant/learned_rounding.h"
#include "core/quant/lrqat_layer.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"
#include "core/quant/storage_bits.h"
#include "quick_method_run.h"
#include "test_support.h"
#include "tiny_llama.h"

using namespace lrq;
using namespace lrq::quant;

namespace {

// Every non-negative finite half, ascending, from the IEEE 754 formula.
const std::vector<double> &allHalves() {
  static const std::vector<double> halves = [] {
    std::vector<double> h;
    for (uint32_t bits = 0; bits < 0x7C00; ++bits) {
      const int exponent = int(bits >> 10), mantissa = int(bits & 0x3FF);
      h.push_back(exponent == 0 ? std::ldexp(double(mantissa), -24)
                                : std::ldexp(1.0 + mantissa / 1024.0, exponent - 15));
    }
    return h;
  }();
  return halves;
}

// The half h and integers k_j in [lo, 63] with h k_j == v_j for the 8 values
// of a super-block, h the smallest half that fits (searched among every half
// from just below max / 63 up to max); all zeros: h = 0. False when none fits.
bool factorSuperBlock(const float *v, int lo, double *h, std::vector<int> *k) {
  const float peak = *std::max_element(v, v + 8);
  k->assign(8, 0);
  if (peak == 0.0f) {
    *h = 0;
    return lo == 0 && std::all_of(v, v + 8, [](float x) { return x == 0.0f; });
  }
  for (auto it = std::lower_bound(allHalves().begin(), allHalves().end(),
                                  double(peak) / 63.0 * (1 - 1e-6));
       it != allHalves().end() && *it <= double(peak); ++it) {
    if (*it == 0)
      continue;
    bool fits = true;
    for (int j = 0; j < 8 && fits; ++j) {
      const double m = double(v[j]) / *it;
      fits = m == std::floor(m) && m >= lo && m <= 63;
      (*k)[size_t(j)] = int(m);
    }
    if (fits) {
      *h = *it;
      return true;
    }
  }
  return false;
}

// llama.cpp's Q4_K decode from steps, offsets and codes, written from the
// format: per 256-value super-block the halves d, dmin and 6-bit sc_j in
// 1..63, m_j in 0..63 with d sc_j = s_j and dmin m_j = M_j, then value =
// (d * sc) * q - (dmin * m) in float32, as dequantize_row_q4_K computes it.
// Throws when the grid is not of that form.
at::Tensor q4kDecode(const at::Tensor &codes, const at::Tensor &scale, const at::Tensor &offset) {
  const int64_t out = codes.size(0), in = codes.size(1);
  if (in % 256 != 0 || scale.size(1) != in / 32 || offset.sizes() != scale.sizes())
    throw Error("not a Q4_K shape");
  const at::Tensor q = codes.to(at::kInt).contiguous();
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  const at::Tensor z = offset.to(at::kFloat).contiguous();
  at::Tensor result = at::empty({out, in}, at::kFloat);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t b = 0; b < in / 256; ++b) {
      const int64_t first = r * (in / 32) + b * 8;
      double d = 0, dmin = 0;
      std::vector<int> sc, m;
      if (!factorSuperBlock(s.data_ptr<float>() + first, 1, &d, &sc))
        throw Error("steps of row " + std::to_string(r) + " are not d sc");
      if (!factorSuperBlock(z.data_ptr<float>() + first, 0, &dmin, &m))
        throw Error("offsets of row " + std::to_string(r) + " are not dmin m");
      for (int64_t e = 0; e < 256; ++e) {
        const int code = q.data_ptr<int>()[r * in + b * 256 + e];
        if (code < 0 || code > 15)
          throw Error("code out of range");
        const float dl = float(d) * float(sc[size_t(e / 32)]);
        const float ml = float(dmin) * float(m[size_t(e / 32)]);
        result.data_ptr<float>()[r * in + b * 256 + e] = dl * float(code) - ml;
      }
    }
  return result;
}

// Q5_0's decode (the fallback): d a half, value = d * (u - 16) with u the
// block code (a full-range unit with z = -1 stored with d negated, u = 15 - q).
at::Tensor q5_0Decode(const at::Tensor &codes, const GridParams &p, const GridSpec &spec) {
  const int64_t in = codes.size(1);
  const at::Tensor s = expandToWeight(p.scale, spec, in).expand(codes.sizes()).contiguous();
  const at::Tensor z = expandToWeight(p.zeroPoint, spec, in).expand(codes.sizes()).contiguous();
  const at::Tensor q = codes.to(at::kInt).contiguous();
  at::Tensor out = at::empty(codes.sizes(), at::kFloat);
  for (int64_t i = 0; i < codes.numel(); ++i) {
    const float step = s.data_ptr<float>()[i];
    if (float(c10::Half(step)) != step)
      throw Error("Q5_0 step is not a half");
    const bool flipped = z.data_ptr<float>()[i] == -1.0f;
    const int u = (flipped ? -(q.data_ptr<int>()[i] + 1) : q.data_ptr<int>()[i]) + 16;
    if (u < 0 || u > 31)
      throw Error("Q5_0 code out of range");
    out.data_ptr<float>()[i] = (flipped ? -step : step) * float(u - 16);
  }
  return out;
}

std::vector<float> readF32(const QString &file) {
  QFile f(file);
  if (!f.open(QIODevice::ReadOnly))
    return {};
  const QByteArray bytes = f.readAll();
  std::vector<float> v(size_t(bytes.size()) / sizeof(float));
  std::memcpy(v.data(), bytes.constData(), v.size() * sizeof(float));
  return v;
}

void appendFile(const QString &file, const std::vector<uint8_t> &bytes) {
  QFile f(file);
  if (!f.open(QIODevice::Append))
    throw Error("cannot write " + file.toStdString());
  f.write(reinterpret_cast<const char *>(bytes.data()), qint64(bytes.size()));
}

} // namespace

class TestGgufQ4K : public QObject {
  Q_OBJECT

  QTemporaryDir tmp_;

private slots:
  void initTestCase() { QVERIFY(tmp_.isValid()); }

  // Steps: d the smallest half >= max / 63, sc = ceil for the largest and
  // clamp(round(s / d), 1, 63) for the others. Offsets: dmin the smallest
  // half >= max / 63, m = ceil for the largest, clamp(round(M / dmin), 0, 63)
  // for the others, zeros staying zero. Both idempotent and straight-through.
  void superBlockRoundingMatchesScalarReference() {
    const GridSpec spec = presetScheme("gguf-q4_k").weight;
    QCOMPARE(int(spec.stepFormat), int(StepFormat::KSuperblockOffset));
    QVERIFY(spec.offsetForm());
    std::mt19937_64 rng(11);
    std::uniform_real_distribution<double> logUniform(-30.0, 18.0);
    const int64_t rows = 40, groups = 16;
    at::Tensor x = at::empty({rows, groups}, at::kFloat);
    for (int64_t r = 0; r < rows; ++r) {
      const double base = std::exp2(logUniform(rng));
      for (int64_t j = 0; j < groups; ++j)
        x[r][j] = float(base * std::exp2(-double(rng() % 10)) * (1.0 + double(rng() % 1000) / 997));
    }
    x[0].fill_(1e-3f);
    x[0][3] = 1000.0f; // the small ones become d (steps) or 0 (offsets)
    x[1].fill_(0.25f);
    for (bool offsets : {false, true}) {
      at::Tensor in = x.clone();
      if (offsets) {
        in[2].zero_();    // a super-block without offsets ...
        in[3][9].zero_(); // ... and one zero offset among others
      }
      const at::Tensor y =
          (offsets ? applyOffsetFormat(in, spec) : applyStepFormat(in, spec)).contiguous();
      int64_t mismatches = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < groups / 8; ++b) {
          float peak = 0;
          for (int j = 0; j < 8; ++j)
            peak = std::max(peak, in[r][b * 8 + j].item<float>());
          const double d =
              *std::lower_bound(allHalves().begin() + 1, allHalves().end(), double(peak / 63.0f));
          for (int j = 0; j < 8; ++j) {
            const float v = in[r][b * 8 + j].item<float>();
            const double raw =
                v == peak ? std::ceil(double(v / float(d))) : std::nearbyint(double(v / float(d)));
            const double k = std::min(63.0, std::max(offsets ? 0.0 : 1.0, raw));
            const double expected = peak == 0.0f ? 0.0 : d * k;
            if (double(y[r][b * 8 + j].item<float>()) != expected && ++mismatches < 5)
              qWarning("%s row %d block %d group %d: %.9g -> %.9g, expected %.9g",
                       offsets ? "offset" : "step", int(r), int(b), j, double(v),
                       double(y[r][b * 8 + j].item<float>()), expected);
          }
        }
      QCOMPARE(mismatches, int64_t(0));
      // Rounded values stay put.
      QVERIFY(at::equal(offsets ? applyOffsetFormat(y, spec) : applyStepFormat(y, spec), y));
      QCOMPARE(y[0][3].item<float>(),
               63.0f * float(*std::lower_bound(allHalves().begin(), allHalves().end(),
                                               double(1000.0f / 63.0f))));
      if (offsets) {
        QCOMPARE(y[0][0].item<float>(), 0.0f);
        QVERIFY(y[2].abs().max().item<float>() == 0.0f);
      } else {
        QCOMPARE(y[0][0].item<float>(), y[0][1].item<float>()); // small steps became d
      }
    }
    // Refused: negative, infinite or too large offsets; zero steps.
    for (float bad : {-1e-3f, std::numeric_limits<float>::infinity(), 65504.0f * 64.0f}) {
      at::Tensor t = at::full({1, 8}, 0.5f);
      t[0][5] = bad;
      QVERIFY_THROWS_EXCEPTION(Error, applyOffsetFormat(t, spec));
    }
    QVERIFY_THROWS_EXCEPTION(Error, applyStepFormat(at::zeros({1, 8}), spec));
    QVERIFY_THROWS_EXCEPTION(Error, applyOffsetFormat(at::full({1, 12}, 0.5f), spec));
    QCOMPARE(largestStep(spec), 65504.0 * 63.0);
    // The identity on other formats.
    const at::Tensor odd = at::full({1, 3}, 0.3f);
    QVERIFY(at::equal(applyOffsetFormat(odd, presetScheme("gguf-q4_1").weight), odd));
    // Straight through while training.
    const at::Tensor m = (at::rand({3, 8}) * 0.1).requires_grad_(true);
    const at::Tensor t = applyOffsetFormat(m, spec);
    QVERIFY(at::equal(t.detach(), applyOffsetFormat(m.detach(), spec)));
    (t * 3).sum().backward();
    QVERIFY(at::equal(m.grad(), at::full({3, 8}, 3.0f)));
  }

  // MinMax and the 1-D search: steps d sc, offsets dmin m, Ŵ = s q - M equal
  // to the Q4_K decode bit for bit; the range of each group is covered.
  void gridsAreExactQ4K() {
    for (StepInit init : {StepInit::MinMax, StepInit::ClippingSearch}) {
      GridSpec spec = presetScheme("gguf-q4_k").weight;
      spec.init = init;
      spec.clipSteps = 20;
      at::manual_seed(8);
      at::Tensor w = at::randn({7, 512}) * 0.05;
      w[1] *= 1e-4;                   // subnormal d and dmin
      w[2] *= 3000.0;                 // large steps
      w[3].narrow(0, 32, 32).zero_(); // a zero group inside a super-block
      w[4].zero_();                   // a zero row
      w[5].abs_();                    // no offsets at all: dmin 0
      w[6].abs_().neg_();             // every group below zero
      const GridParams p = computeGridParams(w, spec);
      QCOMPARE(p.scale.size(1), int64_t(16));
      QVERIFY(at::equal(p.scale, applyStepFormat(p.scale, spec)));
      QVERIFY(at::equal(p.zeroPoint, applyOffsetFormat(p.zeroPoint, spec)));
      QVERIFY((p.zeroPoint >= 0).all().item<bool>());
      QVERIFY(p.zeroPoint[5].abs().max().item<float>() == 0.0f);
      const at::Tensor codes = quantizeWeight(w, p, spec);
      QVERIFY(codes.min().item<int>() >= 0 && codes.max().item<int>() <= 15);
      const at::Tensor fake = fakeQuantizeWeight(w, p, spec);
      QVERIFY(at::equal(fake, dequantizeWeight(codes, p, spec)));
      QVERIFY2(at::equal(fake, q4kDecode(codes, p.scale, p.zeroPoint)), stepInitName(init));
      QVERIFY(fake[4].abs().max().item<float>() == 0.0f);
      QVERIFY(fake[3].narrow(0, 32, 32).abs().max().item<float>() == 0.0f);
      // min/max: every group's range is held within a step of its grid (the
      // offsets' rounding moves the levels by at most dmin / 2).
      if (init == StepInit::MinMax) {
        const at::Tensor err = (fake - w).abs();
        const at::Tensor step = expandToWeight(p.scale, spec, 512);
        QVERIFY2((err <= step).all().item<bool>(), "an element off its grid by more than a step");
      }
      // The codes of Ŵ are its own codes (the export's packing relies on it).
      QVERIFY(at::equal(quantizeWeight(fake, p, spec), codes));
    }
    try {
      computeGridParams(at::randn({2, 576}), presetScheme("gguf-q4_k").weight);
      QFAIL("a k-superblock-offset grid took rows of 576");
    } catch (const Error &e) {
      QVERIFY2(std::string(e.what()).find("multiple of 256") != std::string::npos &&
                   std::string(e.what()).find("Q5_0") != std::string::npos,
               e.what());
    }
  }

  void schemeAndFallback() {
    const QuantScheme s = presetScheme("gguf-q4_k");
    QCOMPARE(s.name, std::string("gguf-q4_k"));
    QCOMPARE(std::string(ggufBlockTypeFor(s.weight)), std::string("Q4_K"));
    QVERIFY(s.fallbackWeight.has_value());
    QCOMPARE(std::string(ggufBlockTypeFor(*s.fallbackWeight)), std::string("Q5_0"));
    QCOMPARE(&s.weightFor(1536), &s.weight);
    QCOMPARE(&s.weightFor(576), &*s.fallbackWeight);
    const std::string d = s.describe();
    QVERIFY2(d.find("Q4_K") != std::string::npos && d.find("Q5_0") != std::string::npos &&
                 d.find("k-superblock-offset") != std::string::npos,
             d.c_str());
    // Storage: 144 bytes per 256 weights; the fallback 22 bytes per 32.
    QCOMPARE(effectiveBitsPerWeight(s.weight, 576, 1536), 4.5);
    QCOMPARE(effectiveBitsPerWeight(s.weight, 3, 256), 144.0 * 8 / 256);
    QCOMPARE(effectiveBitsPerWeight(*s.fallbackWeight, 192, 576), 5.5);
    const std::string json = s.toJson();
    QVERIFY(json.find("\"k-superblock-offset\"") != std::string::npos);
    const QuantScheme back = QuantScheme::fromJson(json);
    QCOMPARE(back.toJson(), json);
    QVERIFY(back.weight.offsetForm() && back.fallbackWeight && back.fallbackWeight->bits == 5);
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
    QVERIFY(refused(R"({"weight": {"bits": 4, "symmetric": true, "granularity": "per-group",
                                   "group_size": 32, "step_format": "k-superblock-offset"}})",
                    "asymmetric per-group grid with group size 32"));
    QVERIFY(refused(R"({"weight": {"bits": 4, "granularity": "per-group", "group_size": 16,
                                   "step_format": "k-superblock-offset"}})",
                    "group size 32"));
    QVERIFY(refused(R"({"weight": {"bits": 6, "granularity": "per-group", "group_size": 32,
                                   "step_format": "k-superblock-offset"}})",
                    "at most 5 bits"));
    QVERIFY(refused(R"({"weight": {"bits": 4, "granularity": "per-group", "group_size": 32,
                                   "init": "clip-search-2d",
                                   "step_format": "k-superblock-offset"}})",
                    "clip-search-2d"));
    // A 5-bit grid of the format is valid but no GGUF type (Q5_K is not written).
    GridSpec five = s.weight;
    five.bits = 5;
    five.validate();
    QVERIFY(ggufBlockTypeFor(five) == nullptr);
    // Exports: GGUF yes; LQER's factors no; a float32 fallback names the
    // preset; Q4_1's shape with float32 steps names gguf-q4_k beside
    // gguf-q4_1; compressed-tensors and the packed file refuse.
    QCOMPARE(ggufExportProblem(json, "rtn"), std::string());
    QCOMPARE(ggufExportProblem(json, "lrq"), std::string());
    QVERIFY(ggufExportProblem(json, "lqer").find("low-rank") != std::string::npos);
    QuantScheme f32Fallback = s;
    f32Fallback.fallbackWeight->stepFormat = StepFormat::Float32;
    const std::string why = ggufExportProblem(f32Fallback.toJson(), "rtn");
    QVERIFY2(why.find("--scheme gguf-q4_k") != std::string::npos, why.c_str());
    QuantScheme f32Steps = s;
    f32Steps.weight.stepFormat = StepFormat::Float32;
    f32Steps.fallbackWeight.reset();
    const std::string shape = ggufExportProblem(f32Steps.toJson(), "rtn");
    QVERIFY2(shape.find("gguf-q4_1") != std::string::npos &&
                 shape.find("gguf-q4_k") != std::string::npos,
             shape.c_str());
    QuantScheme fiveBit = QuantScheme::fromJson(json);
    fiveBit.weight.bits = 5;
    QVERIFY(ggufExportProblem(fiveBit.toJson(), "rtn").find("4-bit codes only") !=
            std::string::npos);
    QVERIFY_THROWS_EXCEPTION(Error, compressedTensorsFormatFor(s, "rtn"));
    QuantScheme plain = s;
    plain.fallbackWeight.reset();
    try {
      compressedTensorsFormatFor(plain, "rtn");
      QFAIL("compressed-tensors took a k-superblock-offset grid");
    } catch (const Error &e) {
      QVERIFY2(std::string(e.what()).find("k-superblock-offset") != std::string::npos, e.what());
    }
  }

  // The learned layers start on the RTN grid bit for bit, and train on the
  // storable grid: every Ŵ they produce is s q - M with s = d sc, M = dmin m.
  void learnedLayersStayOnTheGrid() {
    const GridSpec spec = presetScheme("gguf-q4_k").weight;
    at::manual_seed(3);
    const at::Tensor w = at::randn({4, 256}) * 0.05;
    const at::Tensor rtn = roundToNearest(w, spec);
    std::vector<std::unique_ptr<LearnedRoundingLayer>> layers;
    layers.push_back(makeFlexRoundLayer(w, spec));
    layers.push_back(makeLrqLayer(w, spec, 2, 5));
    layers.push_back(makeLearnedStepLayer(w, spec));
    for (auto &layer : layers) {
      QVERIFY(at::equal(layer->weight().detach(), rtn));
      // Move every parameter, then check the grid the layer reports.
      {
        at::NoGradGuard noGrad;
        for (auto &[name, p] : layer->parameters())
          p.add_(at::randn_like(p) * 0.05);
      }
      const at::Tensor wHat = layer->weight();
      wHat.square().sum().backward(); // gradients reach the step
      QVERIFY(layer->parameters().front().second.grad().defined());
      const GridParams g = layer->grid();
      QVERIFY(at::equal(g.scale, applyStepFormat(g.scale, spec)));
      QVERIFY(at::equal(g.zeroPoint, applyOffsetFormat(g.zeroPoint, spec)));
      const at::Tensor codes = quantizeWeight(wHat.detach(), g, spec);
      QVERIFY(at::equal(wHat.detach(), q4kDecode(codes, g.scale, g.zeroPoint)));
      // The offsets followed the steps.
      QVERIFY(!at::equal(g.zeroPoint, computeGridParams(w, spec).zeroPoint));
      // No recovery from Ŵ alone for this format: the export refuses the layer instead.
      QVERIFY(!recoverLearnedGrid(w, wHat.detach(), spec).scale.defined());
    }
  }

  // LR-QAT in offset form: Φ0 = (W + M) / s on the codes 0..15, stored with
  // 4 fractional bits, so its first codes are RTN's except where Φ0 lies
  // within 2^-5 of a half-way point (double rounding); Ŵ = fl(s q - M) with
  // M frozen at the format's offsets, also once A, B and s have moved.
  void lrqatStartsOnRtnAndStaysOnTheGrid() {
    const GridSpec spec = presetScheme("gguf-q4_k").weight;
    at::manual_seed(5);
    const at::Tensor w = at::randn({8, 512}) * 0.05;
    const GridParams rtn = computeGridParams(w, spec);
    LrqatLayer l = initLrqatLayer(w, spec, 4, 4.0, 11);
    QVERIFY(at::equal(l.zeroPoint, rtn.zeroPoint));
    const at::Tensor rtnCodes = quantizeWeight(w, rtn, spec).to(at::kInt);
    const at::Tensor phi =
        (w + expandToWeight(rtn.zeroPoint, spec, 512)) / expandToWeight(rtn.scale, spec, 512);
    const at::Tensor nearHalf = (phi - phi.floor() - 0.5).abs() < 1.0 / 32;
    const at::Tensor differ = lrqatMergedCodes(l) != rtnCodes;
    QVERIFY(at::all(differ.logical_and(nearHalf.logical_not()).logical_not()).item<bool>());
    QVERIFY(at::equal(lrqatFakeWeight(l).detach(),
                      q4kDecode(lrqatMergedCodes(l).to(at::kFloat), rtn.scale, rtn.zeroPoint)));
    {
      at::NoGradGuard noGrad;
      l.a.copy_(at::randn_like(l.a) * 10.0); // (α/r) A B of order one code
      l.scale.mul_(1.0 + at::rand_like(l.scale) * 0.1);
    }
    const at::Tensor step = lrqatStep(l).detach();
    QVERIFY(at::equal(step, applyStepFormat(step, spec)));
    QVERIFY(!at::equal(step, rtn.scale));
    const at::Tensor codes = lrqatMergedCodes(l);
    QVERIFY((codes != rtnCodes).sum().item<int64_t>() > 4 * differ.sum().item<int64_t>());
    const at::Tensor merged = lrqatMergedWeight(l);
    QVERIFY(at::equal(merged, q4kDecode(codes.to(at::kFloat), step, rtn.zeroPoint)));
    QVERIFY(at::equal(lrqatForward(l).weight, merged));
  }

  // Every method on gguf-q4_k on a tiny LLaMA: down_proj (256 inputs) Q4_K,
  // the others the Q5_0 fallback. Ŵ is the decode of the reported grid, and
  // the GGUF blocks of the packed run decode to Ŵ bit for bit, by our decoder
  // and by gguf-py's. LR-QAT included: its offsets stay frozen, its steps train.
  void everyMethodLandsOnQ4K() {
    const ModelConfig config = lrq::test::tinyLlamaConfig({256, 64, 256, 16, 128});
    std::map<std::string, at::Tensor> fp;
    for (const auto &[name, t] : lrq::test::tinyLlamaTensors(config, 23))
      fp[name] = t.to(at::kFloat);
    const ModelWeights original = ModelWeights::fromHfTensors(config, fp);
    const std::map<std::string, nlohmann::json> quick = lrq::test::quickHyperparameters(64);
    at::Generator gen = at::detail::createCPUGenerator(7);
    const CalibrationSet calibration{at::randint(config.vocabSize, {2, 16}, gen, at::kLong),
                                     "test"};
    const QuantScheme scheme = presetScheme("gguf-q4_k");
    const QString dir = tmp_.filePath("py");
    QVERIFY(QDir().mkpath(dir));
    std::map<std::string, std::vector<at::Tensor>> expected; // per block type, in file order
    int64_t q4k = 0, q5 = 0, methods = 0;
    for (const std::string &methodName : methodNames()) {
      std::unique_ptr<QuantMethod> method = createMethod(methodName);
      method->checkScheme(scheme);
      const lrq::test::QuickRun run =
          lrq::test::runQuick(config, fp, *method, methodName, scheme, calibration, quick);
      const DecoderModel &model = *run.model;
      const MethodReport &report = run.report;
      ++methods;
      const QuantScheme used = resolveReferenceGrid(*method, scheme);
      QCOMPARE(std::string(ggufBlockTypeFor(used.weight)), std::string("Q4_K"));
      QCOMPARE(std::string(ggufBlockTypeFor(*used.fallbackWeight)), std::string("Q5_0"));
      QCOMPARE(report.grids.size(), size_t(2 * 7));
      for (const auto &[prefix, linear] : hfLinearsFromWeights(config, model.weights())) {
        const std::string cell = methodName + " " + prefix;
        const auto g = report.grids.find(prefix);
        QVERIFY2(g != report.grids.end(), cell.c_str());
        const GridParams &p = g->second;
        const at::Tensor w = linear->weight.to(at::kFloat);
        const GridSpec &grid = used.weightFor(w.size(1));
        const at::Tensor codes = quantizeWeight(w, p, grid);
        QVERIFY2(at::equal(w, dequantizeWeight(codes, p, grid)), cell.c_str());
        if (w.size(1) == 256) {
          QVERIFY2(at::equal(w, q4kDecode(codes, p.scale, p.zeroPoint)), cell.c_str());
          QVERIFY2(!at::equal(w, fp.at(prefix + ".weight")), cell.c_str());
          ++q4k;
        } else {
          QCOMPARE(grid.bits, 5);
          QVERIFY2(at::equal(w, q5_0Decode(codes, p, grid)), cell.c_str());
          ++q5;
        }
      }
      PackStats stats;
      const PackedModelContents packed = packQuantizedModel(config, model.weights(), original, used,
                                                            methodName, &report.grids, &stats);
      QCOMPARE(stats.layers, int64_t(14));
      QVERIFY2(stats.maxDeviation == 0.0, methodName.c_str());
      for (const PackedTensor &t : packed.quantized) {
        const bool k = t.codes.size(1) == 256;
        QCOMPARE(t.offsets, k);
        const GgmlType type = k ? GgmlType::Q4_K : GgmlType::Q5_0;
        if (methodName == "lqer" || methodName == "l2qer") {
          // Its factors are refused; the grid part alone is a GGUF tensor.
          QVERIFY_THROWS_EXCEPTION(Error, encodeGgufBlocks(t, type));
          PackedTensor grid = t;
          grid.lowRankA = at::Tensor();
          grid.lowRankB = at::Tensor();
          const std::vector<uint8_t> blocks = encodeGgufBlocks(grid, type);
          appendFile(dir + (k ? "/Q4_K.bin" : "/Q5_0.bin"), blocks);
          expected[k ? "Q4_K" : "Q5_0"].push_back(
              dequantizeCodes(t.codes, t.scales, t.zeroPoints, t.groupSize, t.offsets));
          continue;
        }
        const std::vector<uint8_t> blocks = encodeGgufBlocks(t, type);
        QCOMPARE(blocks.size(), size_t(t.codes.numel() / (k ? 256 : 32) * (k ? 144 : 22)));
        std::vector<float> ours(size_t(t.codes.numel()));
        dequantizeGgml(type, blocks.data(), ours.data(), t.codes.numel());
        const at::Tensor decoded = at::from_blob(ours.data(), t.codes.sizes(), at::kFloat);
        QVERIFY2(at::equal(decoded, dequantizeCodes(t.codes, t.scales, t.zeroPoints, t.groupSize,
                                                    t.offsets)),
                 (methodName + " " + t.name).c_str());
        appendFile(dir + (k ? "/Q4_K.bin" : "/Q5_0.bin"), blocks);
        expected[k ? "Q4_K" : "Q5_0"].push_back(
            dequantizeCodes(t.codes, t.scales, t.zeroPoints, t.groupSize, t.offsets));
      }
      // The packed file's s (q - z) layout cannot hold offsets.
      if (methodName == "rtn") {
        try {
          writePackedModel(tmp_.filePath("rtn.lrqpack").toStdString(), packed);
          QFAIL("the packed file took a k-superblock-offset grid");
        } catch (const Error &e) {
          QVERIFY2(std::string(e.what()).find("--gguf") != std::string::npos, e.what());
        }
      }
    }
    QVERIFY(methods >= 7);
    QCOMPARE(q4k, methods * 2);
    QCOMPARE(q5, methods * 12);
    QString error;
    const QByteArray out = lrq::test::runReference("gguf_dequant.py", {dir}, &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    for (const auto &[type, tensors] : expected) {
      const at::Tensor all = at::cat(
          [&] {
            std::vector<at::Tensor> flat;
            for (const at::Tensor &t : tensors)
              flat.push_back(t.reshape({-1}));
            return flat;
          }(),
          0);
      const std::vector<float> py = readF32(dir + "/" + QString::fromStdString(type) + ".f32");
      QCOMPARE(int64_t(py.size()), all.numel());
      const at::Tensor pyT =
          at::from_blob(const_cast<float *>(py.data()), {all.numel()}, at::kFloat);
      QVERIFY2(at::equal(pyT, all), type.c_str());
    }
  }

  // One Q4_K block by hand: d, dmin, the 12 packed bytes of 6-bit scales and
  // mins, and the nibbles in llama.cpp's order.
  void q4KBlockByHand() {
    PackedTensor t;
    t.name = "x";
    t.bits = 4;
    t.qmin = 0;
    t.groupSize = 32;
    t.offsets = true;
    t.codes = at::empty({1, 256}, at::kInt);
    for (int e = 0; e < 256; ++e)
      t.codes.data_ptr<int32_t>()[e] = (e * 7) % 16;
    t.scales = at::empty({1, 8}, at::kFloat);
    t.zeroPoints = at::empty({1, 8}, at::kFloat);
    const int sc[8] = {63, 1, 17, 32, 48, 5, 60, 33};
    const int m[8] = {0, 63, 16, 47, 31, 2, 49, 63};
    for (int j = 0; j < 8; ++j) {
      t.scales.data_ptr<float>()[j] = 0.125f * float(sc[j]);
      t.zeroPoints.data_ptr<float>()[j] = 0.0625f * float(m[j]);
    }
    const std::vector<uint8_t> b = encodeGgufBlocks(t, GgmlType::Q4_K);
    QCOMPARE(b.size(), size_t(144));
    uint16_t dBits = 0, dminBits = 0;
    std::memcpy(&dBits, b.data(), 2);
    std::memcpy(&dminBits, b.data() + 2, 2);
    QCOMPARE(dBits, uint16_t(0x3000));    // 0.125
    QCOMPARE(dminBits, uint16_t(0x2C00)); // 0.0625
    // get_scale_min_k4, by hand.
    const uint8_t *q = b.data() + 4;
    for (int j = 0; j < 8; ++j) {
      const int s = j < 4 ? (q[j] & 63) : ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
      const int mm = j < 4 ? (q[j + 4] & 63) : ((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
      QCOMPARE(s, sc[j]);
      QCOMPARE(mm, m[j]);
    }
    // Value 70 = 64 + 6: the low nibble of byte 16 + 32 + 6; value 100 = 64 +
    // 32 + 4: the high nibble of byte 16 + 32 + 4.
    QCOMPARE(int(b[16 + 32 + 6]) & 0x0F, (70 * 7) % 16);
    QCOMPARE(int(b[16 + 32 + 4]) >> 4, (100 * 7) % 16);
    std::vector<float> decoded(256);
    dequantizeGgml(GgmlType::Q4_K, b.data(), decoded.data(), 256);
    for (int e = 0; e < 256; ++e) {
      const float expected =
          (0.125f * float(sc[e / 32])) * float((e * 7) % 16) - (0.0625f * float(m[e / 32]));
      QCOMPARE(decoded[size_t(e)], expected);
    }
    // Steps that are no d sc, offsets that are no dmin m, codes out of range.
    PackedTensor bad = t;
    bad.scales = t.scales.clone();
    bad.scales[0][2] = 0.3f;
    QVERIFY_THROWS_EXCEPTION(Error, encodeGgufBlocks(bad, GgmlType::Q4_K));
    bad = t;
    bad.zeroPoints = t.zeroPoints.clone();
    bad.zeroPoints[0][2] = 0.01f;
    try {
      encodeGgufBlocks(bad, GgmlType::Q4_K);
      QFAIL("offsets that are not dmin*m were stored as Q4_K");
    } catch (const Error &e) {
      QVERIFY2(std::string(e.what()).find("dmin*m") != std::string::npos, e.what());
    }
    // Without the offset flag the same shape is Q4_1's, not Q4_K's.
    bad = t;
    bad.offsets = false;
    QVERIFY_THROWS_EXCEPTION(Error, encodeGgufBlocks(bad, GgmlType::Q4_K));
    GgmlType type{};
    QVERIFY(ggufBlockTypeForGrid(4, 0, 32, &type, true));
    QCOMPARE(int(type), int(GgmlType::Q4_K));
    QVERIFY(ggufBlockTypeForGrid(4, 0, 32, &type, false));
    QCOMPARE(int(type), int(GgmlType::Q4_1));
    QCOMPARE(ggufFileTypeFor(GgmlType::Q4_K), uint32_t(14)); // LLAMA_FTYPE_MOSTLY_Q4_K_S
    QCOMPARE(ggufSchemeFor(GgmlType::Q4_K), std::string("gguf-q4_k"));
  }
};

QTEST_GUILESS_MAIN(TestGgufQ4K)
#include "test_gguf_q4k.moc"
