#pragma once
// Statistics, histograms and spectra of weight tensors. Internal to core/
// (takes at::Tensor); core/session/model_session.h has the torch-free
// result types the front ends see.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace lrq::analysis {

struct Statistics {
  int64_t numel = 0;
  double min = 0, max = 0, mean = 0;
  double std = 0; // population standard deviation (divides by numel)
  double absMax = 0;
  double kurtosis = 0; // excess kurtosis m4/m2^2 - 3 (0 for a Gaussian)
};

struct HistogramBins {
  double lo = 0, hi = 0;      // bins cover [lo, hi] with equal width (hi - lo) / bins
  std::vector<double> counts; // last bin includes hi
};

struct Spectrum {
  std::vector<double> values; // singular values, descending
  bool float64 = true;        // computed in float64 (else float32, for large matrices)
};

// Any shape, any floating dtype, any device; moments accumulated in float64.
// Throws lrq::Error for an empty tensor.
Statistics tensorStatistics(const at::Tensor &t);

// Equal-width histogram of all elements. lo >= hi means "use the tensor's
// min and max"; a constant tensor gets the range [v - 0.5, v + 0.5].
HistogramBins tensorHistogram(const at::Tensor &t, int bins, double lo = 0, double hi = 0);

// Singular values of a 2-D tensor, in float64 while min(rows, cols) <= 2048
// and numel <= 32M, else float32. Throws lrq::Error for other ranks.
Spectrum singularValues(const at::Tensor &t);

// Singular values of a 2-D tensor as the square roots of the eigenvalues of its
// smaller Gram matrix (M Mᵀ or Mᵀ M), all in float64 on the CPU: several times
// faster than the SVD for the matrices of a run's spectra. Accurate to about
// 1e-8 of the largest value (√ of float64's epsilon): values below that level
// are not resolved (they come out between 0 and ~1e-8 of the largest).
// Throws lrq::Error for other ranks or an empty matrix.
Spectrum gramSingularValues(const at::Tensor &t);

} // namespace lrq::analysis
