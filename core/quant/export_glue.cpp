#include "core/quant/export_glue.h"

#include <set>

#include "core/common/error.h"

namespace lrq::quant {
namespace {

std::string linearPrefix(const ModelConfig &config, int64_t block, const std::string &role) {
  const std::string i = std::to_string(block);
  if (config.arch == Architecture::Opt) {
    if (role == "fc1" || role == "fc2")
      return "model.decoder.layers." + i + "." + role;
    return "model.decoder.layers." + i + ".self_attn." + role;
  }
  if (role == "gate_proj" || role == "up_proj" || role == "down_proj")
    return "model.layers." + i + ".mlp." + role;
  return "model.layers." + i + ".self_attn." + role;
}

} // namespace

PackedModelContents packQuantizedModel(const ModelConfig &config, const ModelWeights &quantized,
                                       const ModelWeights &original, const QuantScheme &scheme,
                                       const std::string &method,
                                       const std::map<std::string, GridParams> *params,
                                       PackStats *stats) {
  scheme.validate();
  const GridSpec &spec = scheme.weight;
  PackedModelContents c;
  c.config = config;
  c.schemeJson = scheme.toJson();
  c.method = method;
  PackStats local;

  auto pack = [&](const std::string &prefix, const at::Tensor &what, const at::Tensor &orig,
                  const Linear *linear) {
    c10::InferenceMode guard;
    const at::Tensor w = what.to(at::kCPU, at::kFloat);
    GridParams p;
    if (params && params->count(prefix)) {
      p = params->at(prefix);
    } else {
      if (!orig.defined() || orig.sizes() != what.sizes())
        throw Error("pack " + prefix + ": no original weight of the same shape to take steps from");
      p = computeGridParams(orig.to(at::kCPU, at::kFloat), spec);
    }
    PackedTensor t;
    t.name = prefix;
    t.codes = quantizeWeight(w, p, spec);
    t.scales = p.scale.to(at::kCPU, at::kFloat).contiguous();
    t.zeroPoints = p.zeroPoint.to(at::kCPU, at::kFloat).contiguous();
    t.bits = spec.bits;
    t.qmin = spec.qmin();
    t.groupSize = spec.granularity == Granularity::PerGroup ? spec.groupSize : 0;
    const at::Tensor back = dequantizeCodes(t.codes, t.scales, t.zeroPoints, t.groupSize);
    const double dev = (back - w).abs().max().item<double>();
    const double tol = 1e-6 * std::max(w.abs().max().item<double>(), 1e-30);
    if (dev > tol)
      throw Error("pack " + prefix + ": the quantized weight is not on the grid of " +
                  spec.describe() + " (max deviation " + std::to_string(dev) +
                  "); the method must supply its steps");
    local.maxDeviation = std::max(local.maxDeviation, dev);
    ++local.layers;
    if (linear && linear->lowRankA.defined() && linear->lowRankB.defined()) {
      t.lowRankA = linear->lowRankA.to(at::kCPU, at::kFloat);
      t.lowRankB = linear->lowRankB.to(at::kCPU, at::kFloat);
    }
    c.quantized.push_back(std::move(t));
  };

  // blockLinears needs non-const blocks: work on shallow copies (tensors are shared).
  ModelWeights q = quantized, o = original;
  if (q.blocks.size() != o.blocks.size())
    throw Error("pack: the quantized model and the original have different block counts");
  std::set<std::string> packedWeights;
  for (size_t b = 0; b < q.blocks.size(); ++b) {
    if (!scheme.layers.selectsBlock(int64_t(b)))
      continue;
    const auto ql = blockLinears(config, q.blocks[b]);
    const auto ol = blockLinears(config, o.blocks[b]);
    for (size_t i = 0; i < ql.size(); ++i) {
      if (!scheme.layers.selectsLinear(ql[i].first))
        continue;
      const std::string prefix = linearPrefix(config, int64_t(b), ql[i].first);
      pack(prefix, ql[i].second->weight, ol[i].second->weight, ql[i].second);
      packedWeights.insert(prefix + ".weight");
    }
  }
  bool tied = false;
  auto named = hfTensorsFromWeights(config, quantized, &tied);
  c.config.tieEmbeddings = tied;
  const std::string embedName =
      config.arch == Architecture::Opt ? "model.decoder.embed_tokens" : "model.embed_tokens";
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
