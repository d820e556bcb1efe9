#include "core/analysis/tensor_analysis.h"

#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include "core/common/error.h"

namespace lrq::analysis {
namespace {

// Elements converted to float64 at a time: moments are exact enough in double
// while a 28M-element embedding never needs a full double copy.
constexpr int64_t kChunk = int64_t(1) << 22;

std::string shapeString(at::IntArrayRef shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i)
    out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

at::Tensor flatFloating(const at::Tensor &t) {
  if (!t.defined() || t.numel() == 0)
    throw Error("tensor analysis: the tensor is empty");
  at::Tensor flat = t.detach().reshape({-1});
  return flat.is_floating_point() ? flat : flat.to(at::kDouble);
}

} // namespace

Statistics tensorStatistics(const at::Tensor &t) {
  c10::InferenceMode guard;
  const at::Tensor flat = flatFloating(t);
  const int64_t n = flat.numel();

  // Pass 1: extremes and the mean; pass 2: central moments about that mean
  // (two passes keep the variance accurate when |mean| >> std).
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, sum = 0;
  for (int64_t s = 0; s < n; s += kChunk) {
    const at::Tensor c = flat.narrow(0, s, std::min(kChunk, n - s)).to(at::kDouble);
    lo = std::min(lo, c.min().item<double>());
    hi = std::max(hi, c.max().item<double>());
    sum += c.sum().item<double>();
  }
  const double mean = sum / double(n);
  double m2 = 0, m4 = 0;
  for (int64_t s = 0; s < n; s += kChunk) {
    const at::Tensor dev = flat.narrow(0, s, std::min(kChunk, n - s)).to(at::kDouble) - mean;
    const at::Tensor sq = dev.square();
    m2 += sq.sum().item<double>();
    m4 += sq.square().sum().item<double>();
  }
  m2 /= double(n);
  m4 /= double(n);

  Statistics r;
  r.numel = n;
  r.min = lo;
  r.max = hi;
  r.mean = mean;
  r.std = std::sqrt(m2);
  r.absMax = std::max(std::abs(lo), std::abs(hi));
  r.kurtosis = m2 > 0 ? m4 / (m2 * m2) - 3.0 : 0.0;
  return r;
}

HistogramBins tensorHistogram(const at::Tensor &t, int bins, double lo, double hi) {
  if (bins <= 0)
    throw Error("tensor analysis: histogram needs at least one bin, got " + std::to_string(bins));
  c10::InferenceMode guard;
  at::Tensor flat = flatFloating(t);
  if (flat.scalar_type() == at::kHalf || flat.scalar_type() == at::kBFloat16)
    flat = flat.to(at::kFloat);
  if (!(lo < hi)) {
    lo = flat.min().item<double>();
    hi = flat.max().item<double>();
  }
  if (!(lo < hi)) {
    lo -= 0.5;
    hi += 0.5;
  }
  const at::Tensor counts = at::histc(flat, bins, lo, hi).to(at::kCPU, at::kDouble).contiguous();
  HistogramBins h;
  h.lo = lo;
  h.hi = hi;
  h.counts.assign(counts.data_ptr<double>(), counts.data_ptr<double>() + bins);
  return h;
}

namespace {

void checkMatrix(const at::Tensor &t) {
  if (!t.defined() || t.dim() != 2)
    throw Error("tensor analysis: singular values need a matrix, the tensor has shape " +
                (t.defined() ? shapeString(t.sizes()) : std::string("(none)")));
  if (t.numel() == 0)
    throw Error("tensor analysis: singular values of an empty matrix");
}

} // namespace

Spectrum gramSingularValues(const at::Tensor &t) {
  checkMatrix(t);
  c10::InferenceMode guard;
  const at::Tensor m = t.detach().to(at::kCPU, at::kDouble);
  const at::Tensor gram = m.size(0) <= m.size(1) ? at::mm(m, m.t()) : at::mm(m.t(), m);
  // Ascending eigenvalues; rounding can leave the smallest slightly negative.
  const at::Tensor values = at::linalg_eigvalsh(gram).clamp_min(0).sqrt().flip(0).contiguous();
  Spectrum s;
  s.values.assign(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
  return s;
}

Spectrum singularValues(const at::Tensor &t) {
  checkMatrix(t);
  c10::InferenceMode guard;
  Spectrum s;
  s.float64 = std::min(t.size(0), t.size(1)) <= 2048 && t.numel() <= (int64_t(32) << 20);
  const at::Tensor m = t.detach().to(s.float64 ? at::kDouble : at::kFloat);
  const at::Tensor values = at::linalg_svdvals(m).to(at::kCPU, at::kDouble).contiguous();
  s.values.assign(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
  return s;
}

} // namespace lrq::analysis
