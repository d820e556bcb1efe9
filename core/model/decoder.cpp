#include "core/model/decoder.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/common/error.h"

namespace lrq {
namespace {

// Beyond this many positions rotary tables are computed on demand instead of
// being kept (Llama-3 style configs announce 128k positions).
constexpr int64_t kMaxCachedRopePositions = 8192;

// In-place kernels save memory traffic, but autograd needs the originals when
// a quantizer is being trained through a block; so they are used only when
// no graph is recorded (inference mode, no_grad).
bool recordsGraph() {
  return at::GradMode::is_enabled();
}

// Half/bfloat16 models normalise and take softmax in float32 as HF does.
at::ScalarType computeType(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

at::Tensor linear(const at::Tensor &x2d, const Linear &l) {
  const at::Tensor x = l.inputTransform ? l.inputTransform->apply(x2d) : x2d;
  at::Tensor y = l.kernel           ? l.kernel->apply(x)
                 : l.bias.defined() ? at::addmm(l.bias, x, l.weight.t())
                                    : at::mm(x, l.weight.t());
  if (l.lowRankA.defined()) {
    const at::Tensor xa = at::mm(x, l.lowRankA);
    y = recordsGraph() ? at::addmm(y, xa, l.lowRankB) : y.addmm_(xa, l.lowRankB);
  }
  return l.outputTransform ? l.outputTransform->apply(y) : y;
}

at::Tensor rmsNorm(const at::Tensor &x, const at::Tensor &weight, double eps) {
  const auto type = computeType(x.scalar_type());
  const at::Tensor xc = x.scalar_type() == type ? x : x.to(type);
  at::Tensor y;
  if (recordsGraph()) {
    y = xc * at::rsqrt(xc.square().mean({-1}, true) + eps);
  } else {
    at::Tensor scale = xc.square().mean({-1}, true).add_(eps).rsqrt_();
    y = xc * scale;
  }
  if (y.scalar_type() != x.scalar_type())
    y = y.to(x.scalar_type());
  return recordsGraph() ? y * weight : y.mul_(weight);
}

at::Tensor layerNorm(const at::Tensor &x, const NormWeights &n, double eps) {
  return at::layer_norm(x, {x.size(-1)}, n.weight, n.bias, eps);
}

// x is a fresh linear output, so it may be overwritten when no graph is kept.
at::Tensor activate(const std::string &name, at::Tensor x) {
  const bool inplace = !recordsGraph();
  if (name == "relu")
    return inplace ? at::relu_(x) : at::relu(x);
  if (name == "gelu")
    return at::gelu(x);
  return inplace ? at::silu_(x) : at::silu(x);
}

// [B*T, kvHeads*groups*d] (the layout a linear produces) -> contiguous
// [B, kvHeads, T, groups, d]: the heads sharing one kv head sit next to each
// other within a position, so a block of positions is a block of rows in
// attention(). Query/key pairs are rotated on the way when cos/sin ([T, d/2])
// are given (HF rotate_half convention: the two halves of a head are the real
// and imaginary parts).
at::Tensor toHeads(const at::Tensor &x2d, int64_t B, int64_t T, int64_t kvHeads, int64_t groups,
                   int64_t d, const at::Tensor &cos, const at::Tensor &sin) {
  at::Tensor x = x2d.view({B, T, kvHeads, groups, d}).permute({0, 2, 1, 3, 4});
  if (!cos.defined())
    return x.contiguous();
  const int64_t half = d / 2;
  const at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1); // [T, 1, half]
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  if (recordsGraph())
    return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
  at::Tensor out = at::empty({B, kvHeads, T, groups, d}, x2d.options());
  at::Tensor o1 = out.narrow(-1, 0, half), o2 = out.narrow(-1, half, half);
  at::mul_out(o1, x1, c);
  o1.addcmul_(x2, s, -1);
  at::mul_out(o2, x2, c);
  o2.addcmul_(x1, s, 1);
  return out;
}

// Query positions per attention step: scores exist only for keys up to the
// step's last position (skipping most of the masked upper triangle) and stay
// small ([B*kvH, groups*chunk, keys]) however long the sequence.
constexpr int64_t kAttentionChunk = 128;

// Causal attention with grouped keys/values. q: [B, kvH, T, groups, d]
// contiguous; k, v: [B, kvH, Tk, d], the last T keys belonging to the queries.
// Rows of q viewed as [B*kvH, T*groups, d] share their kv head, so K/V are
// never repeated. Returns [B*T, kvH*groups*d].
at::Tensor attention(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, double scale) {
  const int64_t B = q.size(0), kvH = q.size(1), T = q.size(2), groups = q.size(3), d = q.size(4);
  const int64_t Tk = k.size(2), past = Tk - T;
  const at::Tensor qb = q.view({B * kvH, T * groups, d});
  const at::Tensor kb = k.reshape({B * kvH, Tk, d});
  const at::Tensor vb = v.reshape({B * kvH, Tk, d});
  const auto softmaxType = computeType(q.scalar_type());
  std::vector<at::Tensor> parts;
  for (int64_t t0 = 0; t0 < T; t0 += kAttentionChunk) {
    const int64_t n = std::min(kAttentionChunk, T - t0), keys = past + t0 + n;
    const at::Tensor qc = qb.narrow(1, t0 * groups, n * groups);
    const at::Tensor kc = kb.narrow(1, 0, keys).transpose(1, 2);
    at::Tensor scores;
    if (n > 1) {
      // Key j is hidden from query t0+i when j > past + t0 + i.
      at::Tensor mask = at::full({n, keys}, -std::numeric_limits<double>::infinity(), q.options())
                            .triu_(past + t0 + 1);
      mask = groups > 1 ? mask.unsqueeze(1).expand({n, groups, keys}).reshape({1, n * groups, keys})
                        : mask.unsqueeze(0);
      scores = at::baddbmm(mask, qc, kc, 1.0, scale);
    } else {
      scores = at::bmm(qc, kc);
      scores = recordsGraph() ? scores * scale : scores.mul_(scale);
    }
    at::Tensor probs = at::softmax(scores, -1, softmaxType);
    if (probs.scalar_type() != q.scalar_type())
      probs = probs.to(q.scalar_type());
    parts.push_back(at::bmm(probs, vb.narrow(1, 0, keys)));
  }
  const at::Tensor ctx = parts.size() == 1 ? parts[0] : at::cat(parts, 1);
  return ctx.view({B, kvH, T, groups, d})
      .permute({0, 2, 1, 3, 4})
      .reshape({B * T, kvH * groups * d});
}

at::Tensor addResidual(at::Tensor x, const at::Tensor &residual) {
  return recordsGraph() ? x + residual : x.add_(residual);
}

// cos/sin of position p and frequency i: theta^(-2i/d) * p, computed in
// double and rounded once.
std::pair<at::Tensor, at::Tensor> ropeRange(double theta, int64_t headDim, int64_t start,
                                            int64_t count, const at::TensorOptions &options) {
  auto dopt = at::TensorOptions().dtype(at::kDouble);
  at::Tensor exponent = at::arange(0, headDim / 2, dopt).mul_(2.0 / double(headDim));
  at::Tensor invFreq = at::pow(theta, exponent).reciprocal_();
  at::Tensor pos = at::arange(start, start + count, dopt);
  at::Tensor angle = at::outer(pos, invFreq);
  return {angle.cos().to(options), angle.sin().to(options)};
}

} // namespace

std::pair<at::Tensor, at::Tensor> KvCache::append(int64_t block, const at::Tensor &k,
                                                  const at::Tensor &v) {
  if (block < 0 || block >= int64_t(keys_.size()))
    throw Error("KV cache: block " + std::to_string(block) + " out of range");
  at::Tensor &keys = keys_[size_t(block)];
  at::Tensor &values = values_[size_t(block)];
  if (!keys.defined()) {
    keys = k.contiguous();
    values = v.contiguous();
  } else {
    keys = at::cat({keys, k}, 2);
    values = at::cat({values, v}, 2);
  }
  return {keys, values};
}

void KvCache::clear() {
  for (auto &t : keys_)
    t = at::Tensor();
  for (auto &t : values_)
    t = at::Tensor();
}

DecoderModel::DecoderModel(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  if (config_.numHeads <= 0 || config_.hiddenSize <= 0)
    throw Error("decoder: config needs hidden_size and num_attention_heads");
  if (config_.numKvHeads <= 0)
    config_.numKvHeads = config_.numHeads;
  if (config_.headDim <= 0)
    config_.headDim = config_.hiddenSize / config_.numHeads;
  if (config_.numHeads % config_.numKvHeads != 0)
    throw Error("decoder: num_attention_heads is not a multiple of num_key_value_heads");
  if (int64_t(weights_.blocks.size()) != config_.numLayers)
    throw Error("decoder: config has " + std::to_string(config_.numLayers) +
                " layers but the weights have " + std::to_string(weights_.blocks.size()));
  if (!weights_.tokenEmbedding.defined() || !weights_.lmHead.defined())
    throw Error("decoder: weights lack the token embedding or the LM head");
  if (config_.arch == Architecture::Llama) {
    if (config_.headDim % 2 != 0)
      throw Error("decoder: rotary embeddings need an even head dimension");
    buildRope(std::min(config_.maxPositions > 0 ? config_.maxPositions : kMaxCachedRopePositions,
                       kMaxCachedRopePositions));
  } else if (config_.arch == Architecture::Opt && !weights_.positionEmbedding.defined()) {
    throw Error("decoder: OPT weights lack the position embedding");
  }
}

void DecoderModel::buildRope(int64_t positions) {
  auto options = weights_.tokenEmbedding.options();
  std::tie(ropeCos_, ropeSin_) =
      ropeRange(config_.ropeTheta, config_.headDim, 0, positions, options);
}

at::Device DecoderModel::device() const {
  return weights_.tokenEmbedding.device();
}

void DecoderModel::to(at::Device device, at::ScalarType dtype) {
  auto move = [&](at::Tensor &t) {
    if (t.defined())
      t = t.to(device, dtype).contiguous();
  };
  auto moveLinear = [&](Linear &l) {
    move(l.weight);
    move(l.bias);
    move(l.lowRankA);
    move(l.lowRankB);
  };
  auto moveNorm = [&](NormWeights &n) {
    move(n.weight);
    move(n.bias);
  };
  const bool tied = weights_.lmHead.is_same(weights_.tokenEmbedding);
  move(weights_.tokenEmbedding);
  move(weights_.positionEmbedding);
  moveLinear(weights_.projectIn);
  moveLinear(weights_.projectOut);
  for (auto &b : weights_.blocks) {
    moveNorm(b.attnNorm);
    moveNorm(b.mlpNorm);
    for (Linear *l : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down})
      moveLinear(*l);
  }
  moveNorm(weights_.finalNorm);
  if (tied)
    weights_.lmHead = weights_.tokenEmbedding;
  else
    move(weights_.lmHead);
  if (config_.arch == Architecture::Llama)
    buildRope(ropeCos_.defined() ? ropeCos_.size(0) : kMaxCachedRopePositions);
}

at::Tensor DecoderModel::embed(const at::Tensor &tokens, int64_t startPos) const {
  at::Tensor ids = tokens.dim() == 1 ? tokens.unsqueeze(0) : tokens;
  if (ids.dim() != 2)
    throw Error("decoder: tokens must be [batch, time]");
  ids = ids.to(device(), at::kLong);
  at::Tensor x = at::embedding(weights_.tokenEmbedding, ids);
  if (config_.arch != Architecture::Opt)
    return x;
  const int64_t B = ids.size(0), T = ids.size(1);
  if (startPos + T > weights_.positionEmbedding.size(0) - 2)
    throw Error("decoder: " + std::to_string(startPos + T) +
                " positions exceed the model's learned positions (" +
                std::to_string(weights_.positionEmbedding.size(0) - 2) + ")");
  if (weights_.projectIn.weight.defined())
    x = linear(x.reshape({B * T, x.size(-1)}), weights_.projectIn).view({B, T, -1});
  at::Tensor pos = weights_.positionEmbedding.narrow(0, startPos + 2, T);
  return addResidual(x, pos);
}

at::Tensor DecoderModel::runBlock(int64_t block, const at::Tensor &hidden, int64_t startPos,
                                  KvCache *cache) const {
  if (block < 0 || block >= numBlocks())
    throw Error("decoder: block " + std::to_string(block) + " out of range");
  const BlockWeights &w = weights_.blocks[size_t(block)];
  const ModelConfig &c = config_;
  const int64_t B = hidden.size(0), T = hidden.size(1), hd = hidden.size(2);
  const int64_t H = c.numHeads, kvH = c.numKvHeads, d = c.headDim;
  const double scale = 1.0 / std::sqrt(double(d));
  const at::Tensor h2d = hidden.reshape({B * T, hd});

  if (c.arch == Architecture::Opt) {
    const bool pre = c.doLayerNormBefore;
    at::Tensor n = pre ? layerNorm(h2d, w.attnNorm, c.normEps) : h2d;
    at::Tensor q = toHeads(linear(n, w.q), B, T, H, 1, d, {}, {});
    at::Tensor k = toHeads(linear(n, w.k), B, T, H, 1, d, {}, {}).view({B, H, T, d});
    at::Tensor v = toHeads(linear(n, w.v), B, T, H, 1, d, {}, {}).view({B, H, T, d});
    if (cache)
      std::tie(k, v) = cache->append(block, k, v);
    at::Tensor a = addResidual(linear(attention(q, k, v, scale), w.o), h2d);
    if (!pre)
      a = layerNorm(a, w.attnNorm, c.normEps);
    at::Tensor m = pre ? layerNorm(a, w.mlpNorm, c.normEps) : a;
    // OPT checkpoints use ReLU (a few ports GELU); "silu" is only the config's
    // LLaMA default, so it is read as ReLU here.
    at::Tensor f = activate(c.activation == "gelu" ? "gelu" : "relu", linear(m, w.up));
    at::Tensor out = addResidual(linear(f, w.down), a);
    if (!pre)
      out = layerNorm(out, w.mlpNorm, c.normEps);
    return out.view({B, T, hd});
  }

  at::Tensor cos, sin;
  if (startPos + T <= ropeCos_.size(0)) {
    cos = ropeCos_.narrow(0, startPos, T);
    sin = ropeSin_.narrow(0, startPos, T);
  } else {
    std::tie(cos, sin) = ropeRange(c.ropeTheta, d, startPos, T, ropeCos_.options());
  }
  at::Tensor n = rmsNorm(h2d, w.attnNorm.weight, c.normEps);
  at::Tensor q = toHeads(linear(n, w.q), B, T, kvH, H / kvH, d, cos, sin);
  at::Tensor k = toHeads(linear(n, w.k), B, T, kvH, 1, d, cos, sin).view({B, kvH, T, d});
  at::Tensor v = toHeads(linear(n, w.v), B, T, kvH, 1, d, {}, {}).view({B, kvH, T, d});
  if (cache)
    std::tie(k, v) = cache->append(block, k, v);
  at::Tensor a = addResidual(linear(attention(q, k, v, scale), w.o), h2d);
  at::Tensor m = rmsNorm(a, w.mlpNorm.weight, c.normEps);
  at::Tensor g = linear(m, w.gate);
  at::Tensor u = linear(m, w.up);
  at::Tensor act =
      recordsGraph() ? activate(c.activation, g) * u : activate(c.activation, g).mul_(u);
  return addResidual(linear(act, w.down), a).view({B, T, hd});
}

at::Tensor DecoderModel::head(const at::Tensor &hidden) const {
  std::vector<int64_t> outShape(hidden.sizes().begin(), hidden.sizes().end());
  at::Tensor x = hidden.reshape({-1, hidden.size(-1)});
  if (weights_.finalNorm.weight.defined())
    x = config_.arch == Architecture::Opt ? layerNorm(x, weights_.finalNorm, config_.normEps)
                                          : rmsNorm(x, weights_.finalNorm.weight, config_.normEps);
  if (weights_.projectOut.weight.defined())
    x = linear(x, weights_.projectOut);
  outShape.back() = weights_.lmHead.size(0);
  return at::mm(x, weights_.lmHead.t()).view(outShape);
}

at::Tensor DecoderModel::lastHidden(const at::Tensor &tokens, KvCache *cache) const {
  const int64_t start = cache ? cache->length() : 0;
  at::Tensor h = embed(tokens, start);
  for (int64_t i = 0; i < numBlocks(); ++i)
    h = runBlock(i, h, start, cache);
  return h;
}

at::Tensor DecoderModel::forward(const at::Tensor &tokens, KvCache *cache) const {
  return head(lastHidden(tokens, cache));
}

} // namespace lrq
