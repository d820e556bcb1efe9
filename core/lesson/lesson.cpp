// The "Learn" playground's numbers (lesson.h). Everything quantizes through
// the engine's own code: grids (grid.h), the FlexRound and LRQ layers
// (learned_rounding.h), L²QER's activation scale (activation_stats.h), the
// per-token activation quantizer (activation_quantizer.h) and the
// spectra (tensor_analysis.h), so what a lesson shows is what a run does.
#include "core/lesson/lesson.h"

#include "core/recon/adam.h"
#include "core/session/model_session_access.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <future>
#include <mutex>

#include "core/analysis/tensor_analysis.h"
#include "core/common/c_number.h"
#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/activation_quantizer.h"
#include "core/quant/activation_stats.h"
#include "core/quant/grid.h"
#include "core/quant/learned_rounding.h"
#include "core/quant/rtn.h"
#include "core/quant/transform_capture.h"

namespace lrq::lesson {
namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A view of the matrix's floats (no copy; never written through).
at::Tensor asTensor(const Matrix &m) {
  if (m.rows <= 0 || m.cols <= 0 || m.values.size() != size_t(m.rows * m.cols))
    throw Error("lesson: matrix of " + std::to_string(m.rows) + "×" + std::to_string(m.cols) +
                " holds " + std::to_string(m.values.size()) + " values");
  return at::from_blob(const_cast<float *>(m.values.data()), {m.rows, m.cols}, at::kFloat);
}

Matrix toMatrix(const at::Tensor &t) {
  const at::Tensor c = t.detach().to(at::kCPU, at::kFloat).contiguous();
  Matrix m;
  m.rows = c.size(0);
  m.cols = c.size(1);
  m.values.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  return m;
}

std::vector<double> toVector(const at::Tensor &t) {
  const at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous().view(-1);
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

quant::GridSpec makeSpec(int bits, int64_t groupSize, bool symmetric) {
  quant::GridSpec spec;
  spec.bits = bits;
  spec.symmetric = symmetric;
  spec.granularity = groupSize > 0 ? quant::Granularity::PerGroup : quant::Granularity::PerChannel;
  spec.groupSize = groupSize > 0 ? groupSize : 0;
  spec.init = quant::StepInit::MinMax;
  spec.validate();
  return spec;
}

// Top-left corner of a size×size window: the one asked for, or centred on the
// largest |W|; always inside the matrix.
std::pair<int64_t, int64_t> tileCorner(const at::Tensor &w, int64_t row, int64_t col,
                                       int64_t size) {
  const int64_t rows = w.size(0), cols = w.size(1);
  if (row < 0 || col < 0) {
    const int64_t flat = w.abs().argmax().item<int64_t>();
    if (row < 0)
      row = flat / cols - size / 2;
    if (col < 0)
      col = flat % cols - size / 2;
  }
  row = std::clamp<int64_t>(row, 0, std::max<int64_t>(0, rows - size));
  col = std::clamp<int64_t>(col, 0, std::max<int64_t>(0, cols - size));
  return {row, col};
}

Tile makeTile(const at::Tensor &m, int64_t row0, int64_t col0, int64_t size) {
  Tile t;
  t.row0 = row0;
  t.col0 = col0;
  t.rows = std::min(size, m.size(0) - row0);
  t.cols = std::min(size, m.size(1) - col0);
  t.values = toVector(m.narrow(0, row0, t.rows).narrow(1, col0, t.cols));
  return t;
}

// ||tail||_F / norm for k = 0..maxRank: the Frobenius norm left after the k
// largest singular values are removed, relative to `norm`.
std::vector<double> remainingCurve(const std::vector<double> &sigma, int64_t maxRank, double norm) {
  const int64_t n = int64_t(sigma.size());
  std::vector<double> tail(size_t(n + 1), 0.0); // tail[k] = Σ_{i >= k} σ_i²
  for (int64_t i = n - 1; i >= 0; --i)
    tail[size_t(i)] = tail[size_t(i + 1)] + sigma[size_t(i)] * sigma[size_t(i)];
  std::vector<double> out;
  for (int64_t k = 0; k <= maxRank; ++k)
    out.push_back(norm > 0 ? std::sqrt(tail[size_t(std::min(k, n))]) / norm : 0.0);
  return out;
}

// Singular values of m, descending, from the eigenvalues of its smaller Gram
// matrix formed in float32 (the product is the costly part) and decomposed in
// float64: about 1e-6 of σ₁² absolute accuracy in σ², plenty for plots and
// tail sums, and ~3x faster than analysis::gramSingularValues on 1536×576.
std::vector<double> fastSingularValues(const at::Tensor &m) {
  const at::Tensor f = m.to(at::kFloat);
  const at::Tensor gram = f.size(0) <= f.size(1) ? at::mm(f, f.t()) : at::mm(f.t(), f);
  return toVector(at::linalg_eigvalsh(gram.to(at::kDouble)).clamp_min(0).sqrt().flip(0));
}

// L²QER's per-input-channel scale from a layer's activations (one batch:
// mean |x| over the tokens), normalised as the method does; undefined without.
at::Tensor activationScale(const LessonLayer &layer) {
  if (layer.activations.empty())
    return at::Tensor();
  const at::Tensor x = asTensor(layer.activations);
  if (x.size(1) != layer.weight.cols)
    throw Error("lesson: activations have " + std::to_string(x.size(1)) +
                " channels, the weight takes " + std::to_string(layer.weight.cols));
  return quant::normaliseActivationScale(x.abs().to(at::kDouble).mean(0));
}

using recon::Adam; // the block reconstructor's

std::vector<at::Tensor> leaves(const quant::LearnedRoundingLayer &layer) {
  std::vector<at::Tensor> out;
  for (const auto &[name, p] : layer.parameters())
    out.push_back(p);
  return out;
}

// Integer codes of a learned Ŵ = s1 (q − z) on its layer's grid.
at::Tensor learnedCodes(const quant::LearnedRoundingLayer &layer, const at::Tensor &wHat) {
  const quant::GridParams g = layer.grid();
  const int64_t in = wHat.size(1);
  const at::Tensor s = quant::expandToWeight(g.scale, layer.spec(), in);
  const at::Tensor z = quant::expandToWeight(g.zeroPoint, layer.spec(), in);
  return at::round(wHat / s) + z;
}

std::string fmt(const char *format, double value) {
  return formatNumberC(format, value);
}

} // namespace

// ---------------------------------------------------------------- sources

LessonLayer syntheticLayer(const SyntheticOptions &o) {
  if (o.rows < 1 || o.cols < 1 || o.tokens < 0 || o.outlierColumns < 0)
    throw Error("lesson: synthetic layer needs positive sizes");
  c10::InferenceMode guard;
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  at::Tensor w = at::empty({o.rows, o.cols}, at::kFloat).normal_(0.0, 0.02, gen);
  // Outlier columns away from the first group, so that group 0 is a quiet one.
  const int64_t k = std::min<int64_t>(o.outlierColumns, o.cols);
  at::Tensor cols = at::randperm(o.cols, gen).narrow(0, 0, k);
  if (o.cols > 256)
    cols = at::randperm(o.cols - 128, gen).narrow(0, 0, k) + 128;
  at::Tensor gain = at::ones({o.cols}, at::kFloat);
  gain.index_fill_(0, cols, float(o.weightOutlierGain));
  w.mul_(gain);
  LessonLayer layer;
  layer.name = "synthetic " + std::to_string(o.rows) + "×" + std::to_string(o.cols);
  layer.weight = toMatrix(w);
  if (o.tokens > 0) {
    // Correlated like real activations: a 32-dimensional latent signal
    // spread over all channels, plus a little independent noise.
    const int64_t latent = std::min<int64_t>(32, o.cols);
    const at::Tensor z = at::empty({o.tokens, latent}, at::kFloat).normal_(0.0, 1.0, gen);
    const at::Tensor mix = at::empty({latent, o.cols}, at::kFloat).normal_(0.0, 1.0, gen);
    at::Tensor x = at::mm(z, mix).div_(std::sqrt(double(latent)));
    x.add_(at::empty({o.tokens, o.cols}, at::kFloat).normal_(0.0, 0.3, gen));
    at::Tensor xGain = at::ones({o.cols}, at::kFloat);
    // Other channels than the weight's outlier columns: in LLMs the two
    // rarely coincide, which is what lets SmoothQuant move range across.
    at::Tensor xCols = at::randperm(o.cols, gen).narrow(0, 0, k);
    xGain.index_fill_(0, xCols, float(o.activationOutlierGain));
    layer.activations = toMatrix(x.mul_(xGain));
    layer.activationNote = "synthetic correlated activations, " + std::to_string(o.tokens) +
                           " tokens, " + std::to_string(k) + " outlier channels";
  }
  return layer;
}

struct LessonModel::Impl {
  // Either loaded here, or borrowed from an open session (kept alive).
  LoadedModel ownLoaded;
  std::unique_ptr<DecoderModel> ownModel;
  std::shared_ptr<const ModelSession> session;
  const LoadedModel *loaded = nullptr;
  DecoderModel *model = nullptr;
  std::string path;
  std::vector<int32_t> calibrationTokens; // encoded on first use
  std::string textSource;
  mutable std::mutex mutex;
};

LessonModel::LessonModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LessonModel::~LessonModel() = default;

std::shared_ptr<LessonModel> LessonModel::open(const std::string &pathOrDefault,
                                               ProgressObserver *observer,
                                               const CancelToken *cancel) {
  const std::string path =
      pathOrDefault == "default" ? ensureDefaultModel(observer) : pathOrDefault;
  auto impl = std::make_unique<Impl>();
  impl->ownLoaded = loadModel(path, observer, cancel);
  impl->path = pathOrDefault;
  impl->ownModel = std::make_unique<DecoderModel>(
      impl->ownLoaded.config,
      ModelWeights::fromHfTensors(impl->ownLoaded.config, impl->ownLoaded.tensors));
  impl->ownLoaded.tensors.clear(); // the decoder holds them
  impl->loaded = &impl->ownLoaded;
  impl->model = impl->ownModel.get();
  return std::shared_ptr<LessonModel>(new LessonModel(std::move(impl)));
}

std::shared_ptr<LessonModel> LessonModel::fromSession(std::shared_ptr<const ModelSession> session) {
  if (!session)
    throw Error("no model is open");
  auto impl = std::make_unique<Impl>();
  impl->loaded = &ModelSessionAccess::loaded(*session);
  impl->model = &ModelSessionAccess::decoder(*session);
  impl->path = session->summary().path;
  impl->session = std::move(session);
  return std::shared_ptr<LessonModel>(new LessonModel(std::move(impl)));
}

const std::string &LessonModel::path() const {
  return impl_->path;
}

int64_t LessonModel::numBlocks() const {
  return impl_->model->numBlocks();
}

std::vector<std::string> LessonModel::roles() const {
  std::vector<std::string> out;
  if (impl_->model->numBlocks() == 0)
    return out;
  for (const auto &[role, linear] :
       blockLinears(impl_->model->config(), impl_->model->weights().blocks.front()))
    out.push_back(role);
  return out;
}

std::string LessonModel::layerName(int64_t block, const std::string &role) const {
  const bool attention = role == "q_proj" || role == "k_proj" || role == "v_proj" ||
                         role == "o_proj" || role == "out_proj";
  const bool llama = impl_->model->config().arch == Architecture::Llama;
  return std::string(llama ? "model.layers." : "model.decoder.layers.") + std::to_string(block) +
         (attention ? ".self_attn."
          : llama   ? ".mlp."
                    : ".") +
         role;
}

LessonLayer LessonModel::layer(int64_t block, const std::string &role, int64_t tokens,
                               const CancelToken *cancel) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  DecoderModel &model = *impl_->model;
  if (block < 0 || block >= model.numBlocks())
    throw Error("lesson: block " + std::to_string(block) + " is outside 0.." +
                std::to_string(model.numBlocks() - 1));
  Linear *linear = nullptr;
  for (const auto &[name, l] : blockLinears(model.config(), model.weights().blocks[size_t(block)]))
    if (name == role)
      linear = l;
  if (!linear)
    throw Error("lesson: block " + std::to_string(block) + " has no linear \"" + role + "\"");

  c10::InferenceMode guard;
  LessonLayer out;
  out.name = layerName(block, role);
  out.weight = toMatrix(linear->weight);
  if (tokens <= 0)
    return out;

  if (impl_->calibrationTokens.empty() && impl_->loaded->tokenizer) {
    const TextSplit text = defaultText();
    // A prefix is plenty for a few hundred tokens.
    impl_->calibrationTokens =
        impl_->loaded->tokenizer->encode(text.calibration.substr(0, 64 * 1024), true);
    impl_->textSource = text.source;
  }
  const int64_t n = std::min<int64_t>(tokens, int64_t(impl_->calibrationTokens.size()));
  if (n == 0) {
    out.activationNote = "";
    return out;
  }
  at::Tensor ids =
      at::from_blob(impl_->calibrationTokens.data(), {1, n}, at::kInt).to(at::kLong).clone();
  at::Tensor captured;
  at::Tensor hidden = model.embed(ids.to(model.device()));
  {
    quant::ScopedCapture capture(*linear, [&captured](const at::Tensor &x) {
      captured = x.detach().reshape({-1, x.size(-1)}).to(at::kCPU, at::kFloat).contiguous();
    });
    for (int64_t b = 0; b <= block; ++b) {
      if (cancel)
        cancel->throwIfCancelled();
      hidden = model.runBlock(b, hidden);
    }
  }
  if (!captured.defined())
    throw Error("lesson: " + out.name + " saw no input");
  out.activations = toMatrix(captured);
  out.activationNote = "calibration text, first " + std::to_string(n) + " tokens";
  return out;
}

// ---------------------------------------------------------------- grid lesson

GridLessonResult gridLesson(const LessonLayer &layer, const GridOptions &o) {
  const auto start = Clock::now();
  if (!(o.clipRatio > 0.0 && o.clipRatio <= 1.0))
    throw Error("lesson: clipping ratio must be in (0, 1]");
  c10::InferenceMode guard;
  const quant::GridSpec spec = makeSpec(o.bits, o.groupSize, o.symmetric);
  const at::Tensor w = asTensor(layer.weight);
  const int64_t rows = w.size(0), cols = w.size(1);

  const quant::GridParams params = quant::gridParamsForFraction(w, spec, o.clipRatio);
  const at::Tensor wHat = quant::fakeQuantizeWeight(w, params, spec);
  const at::Tensor e = w - wHat;

  GridLessonResult r;
  r.rows = rows;
  r.cols = cols;
  r.grid = spec.describe() + ", clip " + fmt("%.2f", o.clipRatio);
  const quant::LayerErrorStats stats = quant::weightErrorStats(w, wHat);
  r.mse = stats.mse;
  r.sqnrDb = stats.sqnrDb;
  const double wNorm = w.norm().item<double>();
  r.relativeError = wNorm > 0 ? e.norm().item<double>() / wNorm : 0.0;
  r.scaleCount = params.scale.numel();
  {
    const at::Tensor s = quant::expandToWeight(params.scale, spec, cols);
    const at::Tensor z = quant::expandToWeight(params.zeroPoint, spec, cols);
    const at::Tensor raw = at::round(w / s) + z;
    r.clippedFraction = ((raw < double(spec.qmin())) | (raw > double(spec.qmax())))
                            .to(at::kDouble)
                            .mean()
                            .item<double>();
  }

  // The chosen unit: its levels and the histogram of its weights.
  const int64_t flat = w.abs().argmax().item<int64_t>();
  r.unitRow = o.unitRow >= 0 ? std::min(o.unitRow, rows - 1) : flat / cols;
  const int64_t unitCol = std::clamp<int64_t>(o.unitCol, 0, cols - 1);
  const int64_t group = spec.groupSize > 0 ? unitCol / spec.groupSize : 0;
  r.unitCol0 = spec.groupSize > 0 ? group * spec.groupSize : 0;
  r.unitCols = spec.groupSize > 0 ? std::min(spec.groupSize, cols - r.unitCol0) : cols;
  r.step = params.scale[r.unitRow][group].item<double>();
  const double zero = params.zeroPoint[r.unitRow][group].item<double>();
  for (int64_t q = spec.qmin(); q <= spec.qmax(); ++q)
    r.levels.push_back(r.step * (double(q) - zero));
  const at::Tensor unit = w[r.unitRow].narrow(0, r.unitCol0, r.unitCols);
  r.histLo = std::min(unit.min().item<double>(), r.levels.front());
  r.histHi = std::max(unit.max().item<double>(), r.levels.back());
  const int bins = int(std::clamp<int64_t>(r.unitCols / 6, 16, 90));
  r.histCounts = analysis::tensorHistogram(unit, bins, r.histLo, r.histHi).counts;

  // Heat-map tiles.
  const auto [tr, tc] = tileCorner(w, o.tileRow, o.tileCol, o.tileSize);
  r.weight = makeTile(w, tr, tc, o.tileSize);
  r.quantized = makeTile(wHat, tr, tc, o.tileSize);
  r.error = makeTile(e, tr, tc, o.tileSize);

  // Output error and L²QER's scale.
  const at::Tensor scale = activationScale(layer);
  if (!layer.activations.empty()) {
    // The first 256 tokens: the figure settles long before, and the two
    // products are the costliest step of a slider update.
    const at::Tensor all = asTensor(layer.activations);
    const at::Tensor x = all.narrow(0, 0, std::min<int64_t>(all.size(0), 256));
    const double y = at::mm(x, w.t()).norm().item<double>();
    r.outputRelError = y > 0 ? at::mm(x, e.t()).norm().item<double>() / y : 0.0;
  }

  // Spectra and remaining-error curves (singular values via the Gram matrix:
  // the tail sums need no vectors).
  r.errorSpectrum = fastSingularValues(e);
  r.lqerRemaining = remainingCurve(r.errorSpectrum, o.maxRank, wNorm);
  if (scale.defined()) {
    const at::Tensor s = scale.unsqueeze(0); // diag(s) Eᵀ = (E diag(s))ᵀ, in float64
    r.scaledErrorSpectrum = fastSingularValues(e.to(at::kDouble) * s);
    r.l2qerRemaining = remainingCurve(r.scaledErrorSpectrum, o.maxRank,
                                      (w.to(at::kDouble) * s).norm().item<double>());
    r.activationScaled = true;
    r.scaleNote = "s = mean |x| per input channel (" + layer.activationNote + ")";
  } else {
    r.scaledErrorSpectrum = r.errorSpectrum;
    r.l2qerRemaining = r.lqerRemaining;
    r.scaleNote = "no activations: s = 1, so L²QER is LQER";
  }
  r.seconds = secondsSince(start);
  return r;
}

ErrorSweep errorSweep(const LessonLayer &layer, bool symmetric, double clipRatio) {
  c10::InferenceMode guard;
  const at::Tensor w = asTensor(layer.weight);
  const double wNorm = w.norm().item<double>();
  ErrorSweep out;
  for (int b = 2; b <= 8; ++b)
    out.bits.push_back(b);
  out.groupSizes = {0, 128, 64, 32};
  for (int64_t g : out.groupSizes) {
    out.labels.push_back(g == 0 ? "per-channel" : "g" + std::to_string(g));
    std::vector<double> row;
    for (int b : out.bits) {
      const quant::GridSpec spec = makeSpec(b, g, symmetric);
      const at::Tensor wHat =
          quant::fakeQuantizeWeight(w, quant::gridParamsForFraction(w, spec, clipRatio), spec);
      row.push_back(wNorm > 0 ? (w - wHat).norm().item<double>() / wNorm : 0.0);
    }
    out.relativeError.push_back(row);
  }
  return out;
}

// ---------------------------------------------------------------- activations

ActivationLessonResult activationLesson(const LessonLayer &layer, const ActivationOptions &o) {
  const auto start = Clock::now();
  if (layer.activations.empty())
    throw Error("lesson: the layer has no activations");
  if (!(o.alpha >= 0.0 && o.alpha <= 1.0))
    throw Error("lesson: SmoothQuant's alpha must be in [0, 1]");
  c10::InferenceMode guard;
  const at::Tensor w = asTensor(layer.weight);
  const at::Tensor all = asTensor(layer.activations);
  if (all.size(1) != w.size(1))
    throw Error("lesson: activations do not fit the weight");
  const at::Tensor x =
      all.narrow(0, 0, std::min<int64_t>(all.size(0), std::max<int64_t>(1, o.maxTokens)));
  ActivationLessonResult r;
  r.tokens = x.size(0);

  const at::Tensor xMax = x.abs().amax(0);
  const at::Tensor wMax = w.abs().amax(0);
  const at::Tensor s =
      (xMax.clamp_min(1e-5).pow(o.alpha) / wMax.clamp_min(1e-5).pow(1.0 - o.alpha)).clamp_min(1e-5);
  const at::Tensor xs = x / s, ws = w * s;
  r.actAbsMax = toVector(xMax);
  r.actAbsMaxSmoothed = toVector(xs.abs().amax(0));
  r.weightAbsMax = toVector(wMax);
  r.weightAbsMaxSmoothed = toVector(ws.abs().amax(0));

  const quant::GridSpec wSpec = makeSpec(o.weightBits, 0, false);
  const at::Tensor wq = quant::roundToNearest(w, wSpec);
  const at::Tensor wsq = quant::roundToNearest(ws, wSpec);
  const at::Tensor y = at::mm(x, w.t());
  const double yNorm = y.norm().item<double>();
  auto rel = [&](const at::Tensor &yHat) {
    return yNorm > 0 ? (yHat - y).norm().item<double>() / yNorm : 0.0;
  };
  for (int bits = 4; bits <= 8; ++bits) {
    const at::Tensor xq = quant::fakeQuantizePerToken(x, bits);
    const at::Tensor xsq = quant::fakeQuantizePerToken(xs, bits);
    r.activationBits.push_back(bits);
    r.actOnly.push_back(rel(at::mm(xq, w.t())));
    r.actOnlySmoothed.push_back(rel(at::mm(xsq, ws.t())));
    r.weightAndAct.push_back(rel(at::mm(xq, wq.t())));
    r.weightAndActSmoothed.push_back(rel(at::mm(xsq, wsq.t())));
  }
  r.seconds = secondsSince(start);
  return r;
}

// ---------------------------------------------------------------- fit lesson

FitLessonResult fitLesson(const LessonLayer &layer, const FitOptions &o, ProgressObserver *observer,
                          const CancelToken *cancel) {
  const auto start = Clock::now();
  if (o.steps < 0)
    throw Error("lesson: steps must be >= 0");
  const quant::GridSpec spec = makeSpec(o.bits, o.groupSize, o.symmetric);
  const at::Tensor w = asTensor(layer.weight).clone();
  const int64_t in = w.size(1);

  FitLessonResult r;
  r.grid = spec.describe();
  at::Tensor x, xHeld;
  {
    at::NoGradGuard noGrad;
    const int64_t train = std::max<int64_t>(1, o.maxTokens);
    at::Tensor all;
    if (!layer.activations.empty()) {
      all = asTensor(layer.activations);
      if (all.size(1) != in)
        throw Error("lesson: activations do not fit the weight");
      r.activationNote = layer.activationNote;
    } else {
      at::Generator gen = at::detail::createCPUGenerator(o.seed + 7);
      all = at::empty({2 * train, in}, at::kFloat).normal_(0.0, 1.0, gen);
      r.activationNote = "no activations: Gaussian X";
    }
    x = all.narrow(0, 0, std::min(all.size(0), train)).clone();
    const int64_t rest = std::min(all.size(0) - x.size(0), train);
    if (o.evalEvery > 0 && rest > 0)
      xHeld = all.narrow(0, x.size(0), rest).clone();
  }
  r.tokens = x.size(0);
  // ||X Dᵀ||² = ||R Dᵀ||² for X = QR: with more tokens than channels, the
  // [in, in] factor R is the cheaper stand-in.
  at::Tensor xe = x;
  if (x.size(0) > in) {
    at::NoGradGuard noGrad;
    xe = std::get<1>(at::linalg_qr(x, "r")).contiguous();
  }
  const double tokens = double(r.tokens);
  auto lossOf = [&](const at::Tensor &wHat) {
    return at::mm(xe, (wHat - w).t()).pow(2).sum() / tokens;
  };
  r.heldOutTokens = xHeld.defined() ? xHeld.size(0) : 0;
  auto heldOutLoss = [&](const at::Tensor &wHat) {
    at::NoGradGuard noGrad;
    return at::mm(xHeld, (wHat.detach() - w).t()).pow(2).sum().item<double>() /
           double(r.heldOutTokens);
  };

  std::unique_ptr<quant::LearnedRoundingLayer> flex = quant::makeFlexRoundLayer(w, spec);
  std::unique_ptr<quant::LearnedRoundingLayer> lrq =
      quant::makeLrqLayer(w, spec, std::max<int64_t>(1, o.lrqRank), o.seed);
  r.paramsFlexRound = flex->parameterCount();
  r.paramsLrq = lrq->parameterCount();
  r.lrqRank = std::min<int64_t>(std::max<int64_t>(1, o.lrqRank), std::min(w.size(0), in));

  const at::Tensor rtn = quant::roundToNearest(w, spec);
  {
    at::NoGradGuard noGrad;
    r.rtnLoss = lossOf(rtn).item<double>();
    if (r.heldOutTokens > 0)
      r.rtnHeldOutLoss = heldOutLoss(rtn);
  }
  auto evaluateHeldOut = [&](int step) {
    if (r.heldOutTokens == 0)
      return;
    at::NoGradGuard noGrad;
    r.heldOutSteps.push_back(step);
    r.heldOutFlexRound.push_back(heldOutLoss(flex->weight()));
    r.heldOutLrq.push_back(heldOutLoss(lrq->weight()));
  };
  Adam adamFlex(leaves(*flex)), adamLrq(leaves(*lrq));
  if (observer)
    observer->started("fit", o.steps);
  const double pi = 3.14159265358979323846;
  for (int it = 0; it < o.steps; ++it) {
    if (cancel)
      cancel->throwIfCancelled();
    if (it % std::max(1, o.evalEvery) == 0)
      evaluateHeldOut(it);
    const double cosine = 0.5 * (1.0 + std::cos(pi * double(it) / double(o.steps)));
    // One Adam step of one method; the two methods share nothing, so LRQ's
    // step runs on a second thread while FlexRound's runs here (two cores).
    auto stepOf = [&](int m) {
      quant::LearnedRoundingLayer &l = m == 0 ? *flex : *lrq;
      Adam &adam = m == 0 ? adamFlex : adamLrq;
      at::AutoGradMode grad(true);
      const at::Tensor loss = lossOf(l.weight());
      const double value = loss.item<double>();
      if (!std::isfinite(value))
        throw Error(std::string("lesson: ") + (m == 0 ? "FlexRound" : "LRQ") +
                    " loss is not finite at step " + std::to_string(it));
      adam.zeroGrad();
      loss.backward();
      adam.step((m == 0 ? o.lrFlexRound : o.lrLrq) * cosine);
      return value;
    };
    std::future<double> lrqStep = std::async(std::launch::async, stepOf, 1);
    double flexValue = 0;
    try {
      flexValue = stepOf(0);
    } catch (...) {
      lrqStep.wait();
      throw;
    }
    const double lrqValue = lrqStep.get();
    r.lossFlexRound.push_back(flexValue);
    r.lossLrq.push_back(lrqValue);
    if (observer) {
      observer->iterationLoss(0, it, flexValue);
      observer->iterationLoss(1, it, lrqValue);
    }
    r.stepsDone = it + 1;
    if (observer)
      observer->progress(it + 1, o.steps, "");
  }

  at::NoGradGuard noGrad;
  const at::Tensor wFlex = flex->weight().detach(), wLrq = lrq->weight().detach();
  r.lossFlexRound.push_back(lossOf(wFlex).item<double>());
  r.lossLrq.push_back(lossOf(wLrq).item<double>());
  evaluateHeldOut(o.steps);

  const at::Tensor rtnCodes =
      quant::quantizeWeight(w, quant::computeGridParams(w, spec), spec).to(at::kFloat);
  const at::Tensor dFlex = learnedCodes(*flex, wFlex) - rtnCodes;
  const at::Tensor dLrq = learnedCodes(*lrq, wLrq) - rtnCodes;
  r.flippedFlexRound = (dFlex != 0).to(at::kDouble).mean().item<double>();
  r.flippedLrq = (dLrq != 0).to(at::kDouble).mean().item<double>();
  const auto [tr, tc] = tileCorner(w, o.tileRow, o.tileCol, o.tileSize);
  r.flipsFlexRound = makeTile(dFlex, tr, tc, o.tileSize);
  r.flipsLrq = makeTile(dLrq, tr, tc, o.tileSize);
  const at::Tensor sFlex = flex->scaleExponentMatrix(), sLrq = lrq->scaleExponentMatrix();
  r.scaleFlexRound = makeTile(sFlex, tr, tc, o.tileSize);
  r.scaleLrq = makeTile(sLrq, tr, tc, o.tileSize);
  r.scaleSpectrumFlexRound = analysis::gramSingularValues(sFlex).values;
  r.scaleSpectrumLrq = analysis::gramSingularValues(sLrq).values;
  if (observer)
    observer->finished();
  r.seconds = secondsSince(start);
  return r;
}

} // namespace lrq::lesson
