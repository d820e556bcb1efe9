#include "core/quant/export_glue.h"

#include <set>
#include <tuple>
#include <vector>

#include "core/common/error.h"
#include "core/common/memory.h"
#include "core/quant/method.h"

namespace lrq::quant {

std::string gridKey(const ModelConfig &config, int64_t block, const std::string &role) {
  const bool opt = config.arch == Architecture::Opt;
  if (block < 0) {
    if (role == "embeddings")
      return opt ? "model.decoder.embed_tokens" : "model.embed_tokens";
    if (role == "lm_head")
      return "lm_head";
    throw Error("grid key: no block-less tensor named " + role);
  }
  const std::string i = std::to_string(block);
  if (opt) {
    if (role == "fc1" || role == "fc2")
      return "model.decoder.layers." + i + "." + role;
    return "model.decoder.layers." + i + ".self_attn." + role;
  }
  if (role == "gate_proj" || role == "up_proj" || role == "down_proj")
    return "model.layers." + i + ".mlp." + role;
  return "model.layers." + i + ".self_attn." + role;
}

namespace {

// The [rows, groups] shape grid.h lays steps out in for weight [out, in].
std::vector<int64_t> gridShape(const GridSpec &spec, int64_t out, int64_t in) {
  switch (spec.granularity) {
  case Granularity::PerTensor:
    return {1, 1};
  case Granularity::PerChannel:
    return {out, 1};
  case Granularity::PerGroup:
    return {out, (in + spec.groupSize - 1) / spec.groupSize};
  }
  return {};
}

// Codes in one byte where [qmin, qmax] fits (int32 for every layer of a model
// at once is 4 bytes per weight held until the file is written).
at::Tensor narrowCodes(const at::Tensor &codes, int64_t qmin, int64_t qmax) {
  if (qmin >= 0 && qmax <= 255)
    return codes.to(at::kByte);
  if (qmin >= -128 && qmax <= 127)
    return codes.to(at::kChar);
  if (qmin >= -32768 && qmax <= 32767)
    return codes.to(at::kShort);
  return codes;
}

std::string embeddingName(const ModelConfig &config) {
  return config.arch == Architecture::Opt ? "model.decoder.embed_tokens" : "model.embed_tokens";
}

// The grid keys of the block linears the scheme selects, in block order.
std::vector<std::tuple<size_t, size_t, std::string>>
selectedLinears(const ModelConfig &config, ModelWeights &weights, const QuantScheme &scheme) {
  std::vector<std::tuple<size_t, size_t, std::string>> out; // block, index in blockLinears, key
  for (size_t b = 0; b < weights.blocks.size(); ++b) {
    if (!scheme.layers.selectsBlock(int64_t(b)))
      continue;
    const auto linears = blockLinears(config, weights.blocks[b]);
    for (size_t i = 0; i < linears.size(); ++i)
      if (scheme.layers.selectsLinear(linears[i].first))
        out.emplace_back(b, i, gridKey(config, int64_t(b), linears[i].first));
  }
  return out;
}

} // namespace

bool packNeedsOriginalLinears(const ModelConfig &config, const QuantScheme &scheme,
                              const std::map<std::string, GridParams> *params) {
  // Only the block count and roles matter here: empty blocks of the right number.
  ModelWeights shape;
  shape.blocks.resize(size_t(config.numLayers));
  for (const auto &[b, i, key] : selectedLinears(config, shape, scheme))
    if (!params || !params->count(key))
      return true;
  return false;
}

PackedModelContents packQuantizedModel(const ModelConfig &config, const ModelWeights &quantized,
                                       const ModelWeights &original, const QuantScheme &scheme,
                                       const std::string &method,
                                       const std::map<std::string, GridParams> *params,
                                       PackStats *stats,
                                       const std::map<std::string, at::ScalarType> *valueDtypes) {
  scheme.validate();
  PackedModelContents c;
  c.config = config;
  c.schemeJson = scheme.toJson();
  c.method = method;
  PackStats local;

  auto pack = [&](const std::string &prefix, const at::Tensor &what, const at::Tensor &orig,
                  const Linear *linear) {
    c10::InferenceMode guard;
    const at::Tensor w = what.to(at::kCPU, at::kFloat);
    if (w.dim() != 2)
      throw Error("pack " + prefix + ": expected a 2-D weight");
    const GridSpec &spec = scheme.weightFor(w.size(1)); // the grid the method used for it
    GridParams p;
    const bool reported = params && params->count(prefix);
    if (reported) {
      p = params->at(prefix);
    } else {
      if (!orig.defined() || orig.sizes() != what.sizes())
        throw Error("pack " + prefix + ": no original weight of the same shape to take steps from");
      p = computeGridParams(orig.to(at::kCPU, at::kFloat), spec);
    }
    const std::vector<int64_t> shape = gridShape(spec, w.size(0), w.size(1));
    if (!p.scale.defined() || !p.zeroPoint.defined() || p.scale.sizes() != shape ||
        p.zeroPoint.sizes() != shape)
      throw Error("pack " + prefix + ": the method's grid does not have the [rows, groups] shape " +
                  "of " + spec.describe());
    PackedTensor t;
    t.name = prefix;
    t.scales = p.scale.to(at::kCPU, at::kFloat).contiguous();
    t.zeroPoints = p.zeroPoint.to(at::kCPU, at::kFloat).contiguous();
    if (!at::isfinite(t.scales).all().item<bool>() || !(t.scales != 0).all().item<bool>())
      throw Error("pack " + prefix + ": a step of the grid is zero or not finite");
    t.offsets = spec.offsetForm();
    if (t.offsets) {
      // Offsets M in value units: stored as dmin m, so they must already be so.
      if (!at::equal(applyOffsetFormat(t.zeroPoints, spec), t.zeroPoints) ||
          !at::equal(applyStepFormat(t.scales, spec), t.scales))
        throw Error("pack " + prefix +
                    ": the grid's steps and offsets are not d*sc and dmin*m "
                    "of its k-superblock-offset format");
    } else if (!at::equal(t.zeroPoints, at::round(t.zeroPoints)) ||
               (t.zeroPoints < double(spec.qmin())).any().item<bool>() ||
               (t.zeroPoints > double(spec.qmax())).any().item<bool>()) {
      throw Error("pack " + prefix + ": a zero point is not an integer within [" +
                  std::to_string(spec.qmin()) + ", " + std::to_string(spec.qmax()) + "]");
    }
    t.codes = narrowCodes(quantizeWeight(w, {t.scales, t.zeroPoints, at::Tensor()}, spec),
                          spec.qmin(), spec.qmax());
    t.bits = spec.bits;
    t.qmin = spec.qmin();
    t.groupSize = spec.granularity == Granularity::PerGroup ? spec.groupSize : 0;
    if (valueDtypes) {
      const auto type = valueDtypes->find(prefix + ".weight");
      if (type != valueDtypes->end())
        t.valueDtype = type->second;
    }
    // The codes must give Ŵ back: within 1e-6 of the element's step (float
    // rounding; a Ŵ on the grid comes back exactly), after the rounding to
    // the model's own type that Ŵ went through.
    at::Tensor back = dequantizeCodes(t.codes, t.scales, t.zeroPoints, t.groupSize, t.offsets);
    if (t.valueDtype != at::kFloat)
      back = back.to(t.valueDtype).to(at::kFloat);
    const at::Tensor step = expandToWeight(t.scales, spec, w.size(1)).abs();
    const at::Tensor diff = (back - w).abs();
    const double dev = diff.max().item<double>();
    const double rel = (diff / step).max().item<double>();
    if (!(rel <= 1e-6))
      throw Error(
          "pack " + prefix + ": the quantized weight is not on the " +
          (reported ? "grid the method reported" : "round-to-nearest grid of its original") + " (" +
          spec.describe() + "; max deviation " + std::to_string(dev) + ", " + std::to_string(rel) +
          " steps)" + (reported ? "" : "; the method must report its grid in MethodReport::grids"));
    local.maxDeviation = std::max(local.maxDeviation, dev);
    ++local.layers;
    if (linear && linear->lowRankA.defined() && linear->lowRankB.defined()) {
      t.lowRankA = linear->lowRankA.to(at::kCPU, at::kFloat);
      t.lowRankB = linear->lowRankB.to(at::kCPU, at::kFloat);
    }
    c.quantized.push_back(std::move(t));
    // The checks' float copies of the layer go back to the system, not to
    // holes between the codes kept (else about 180 MiB more for this model).
    releaseFreeMemory();
  };

  // blockLinears needs non-const blocks: work on shallow copies (tensors are shared).
  ModelWeights q = quantized, o = original;
  if (q.blocks.size() != o.blocks.size())
    throw Error("pack: the quantized model and the original have different block counts");
  std::set<std::string> packedWeights;
  for (const auto &[b, i, prefix] : selectedLinears(config, q, scheme)) {
    const Linear *ql = blockLinears(config, q.blocks[b])[i].second;
    const Linear *ol = blockLinears(config, o.blocks[b])[i].second;
    pack(prefix, ql->weight, ol->weight, ql);
    packedWeights.insert(prefix + ".weight");
  }
  bool tied = false;
  auto named = hfTensorsFromWeights(config, quantized, &tied);
  c.config.tieEmbeddings = tied;
  const std::string embedName = embeddingName(config);
  if (scheme.layers.embeddings) {
    pack(embedName, quantized.tokenEmbedding, original.tokenEmbedding, nullptr);
    packedWeights.insert(embedName + ".weight");
  }
  if (scheme.layers.lmHead && !tied) {
    pack("lm_head", quantized.lmHead, original.lmHead, nullptr);
    packedWeights.insert("lm_head.weight");
  }
  for (auto &[name, t] : named)
    if (!packedWeights.count(name))
      c.tensors.emplace_back(name, t);
  if (stats)
    *stats = local;
  return c;
}

} // namespace lrq::quant
