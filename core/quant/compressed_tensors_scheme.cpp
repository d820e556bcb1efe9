#include "core/quant/compressed_tensors_scheme.h"

#include <nlohmann/json.hpp>

#include "core/common/error.h"

namespace lrq::quant {

const char *compressedTensorsFormatName(CompressedTensorsFormat format) {
  return format == CompressedTensorsFormat::PackQuantized ? "pack-quantized" : "int-quantized";
}

CompressedTensorsFormat compressedTensorsFormatFor(const QuantScheme &scheme,
                                                   const std::string &method,
                                                   const Hyperparameters *hyperparameters) {
  scheme.validate();
  const std::string what = "compressed-tensors export: ";
  if (method == "lqer" || method == "l2qer")
    throw Error(
        what + method +
        " adds low-rank corrections (x A) B to each linear, which the format cannot "
        "hold; use the packed export (--packed) or the HF export (--out), which folds them");
  if (scheme.mixesGrids())
    throw Error(what + scheme.name +
                " gives linears different grids (a fallback grid for rows that are not whole "
                "256-input super-blocks), which the format's single config group cannot hold; "
                "export GGUF (--gguf) or the packed file (--packed)");
  if (scheme.weight.stepFormat == StepFormat::KSuperblock)
    throw Error(what + "k-superblock steps (d sc, GGUF Q6_K) have no compressed-tensors form; "
                       "export GGUF (--gguf) or the packed file (--packed)");
  if (scheme.weight.stepFormat == StepFormat::KSuperblockOffset)
    throw Error(what + "k-superblock-offset grids (s q - M, GGUF Q4_K) have no "
                       "compressed-tensors form; export GGUF (--gguf)");
  if (scheme.kv8)
    throw Error(what + "KV8 (int8 per-token keys and values) has no compressed-tensors form "
                       "that vLLM runs; use a scheme without KV8");
  if (scheme.layers.embeddings || scheme.layers.lmHead)
    throw Error(what + "quantized embeddings or LM head cannot be stored (the format's "
                       "readers quantize linears only)");
  const GridSpec &w = scheme.weight;
  if (hyperparameters && method == "gptq" && w.granularity == Granularity::PerGroup) {
    const auto it = hyperparameters->find("act_order");
    if (it != hyperparameters->end() && std::holds_alternative<bool>(it->second) &&
        std::get<bool>(it->second))
      throw Error(what + "GPTQ with act_order on a per-group grid puts its groups on permuted "
                         "columns, which this export does not write (no g_idx)");
  }
  if (w.fullRange)
    throw Error(what + "a full-range symmetric grid shifts some units' levels by one (zero "
                       "point -1), and the format's symmetric weights have no zero point; use "
                       "a scheme without full_range");
  const ActivationSpec &a = scheme.activation;
  if (a.mode == ActivationMode::None) {
    if (w.bits != 4 && w.bits != 8)
      throw Error(what +
                  "weight-only schemes are stored as pack-quantized, which holds 4 or "
                  "8 bits; this scheme has " +
                  std::to_string(w.bits));
    return CompressedTensorsFormat::PackQuantized;
  }
  if (a.bits != 8)
    throw Error(what + "activation quantization is stored for 8 bits only; this scheme has " +
                std::to_string(a.bits));
  if (w.bits != 8)
    throw Error(what +
                "with activation quantization only W8A8 can be stored (int-quantized); "
                "this scheme has " +
                std::to_string(w.bits) + "-bit weights");
  return CompressedTensorsFormat::IntQuantized;
}

std::vector<std::string> compressedTensorsVllmCaveats(const QuantScheme &scheme) {
  std::vector<std::string> caveats;
  const GridSpec &w = scheme.weight;
  if (scheme.activation.mode == ActivationMode::None) {
    if (w.granularity == Granularity::PerTensor)
      caveats.push_back("vLLM's weight-only int kernels take per-channel or per-group scales, "
                        "not one per tensor");
  } else {
    if (!w.symmetric)
      caveats.push_back("vLLM's int8 W8A8 kernels take symmetric weights only (no weight zero "
                        "points): use a scheme with \"symmetric\": true for vLLM");
    if (w.granularity == Granularity::PerGroup)
      caveats.push_back("vLLM's int8 W8A8 kernels take per-channel or per-tensor weight scales");
  }
  return caveats;
}

namespace {

nlohmann::ordered_json argsJson(int bits, bool symmetric, const char *strategy, int64_t groupSize,
                                bool dynamic) {
  nlohmann::ordered_json j;
  j["num_bits"] = bits;
  j["type"] = "int";
  j["symmetric"] = symmetric;
  j["group_size"] = groupSize > 0 ? nlohmann::ordered_json(groupSize) : nlohmann::ordered_json();
  j["strategy"] = strategy;
  j["block_structure"] = nullptr;
  j["dynamic"] = dynamic;
  j["actorder"] = nullptr;
  // Dynamic quantization has no observer (the reader clears any).
  j["observer"] = dynamic ? nlohmann::ordered_json() : nlohmann::ordered_json("minmax");
  j["observer_kwargs"] = nlohmann::ordered_json::object();
  return j;
}

} // namespace

std::string compressedTensorsQuantizationConfig(const QuantScheme &scheme,
                                                const std::vector<std::string> &ignore) {
  const CompressedTensorsFormat format = compressedTensorsFormatFor(scheme, "");
  const GridSpec &w = scheme.weight;
  const char *strategy = w.granularity == Granularity::PerGroup     ? "group"
                         : w.granularity == Granularity::PerChannel ? "channel"
                                                                    : "tensor";
  nlohmann::ordered_json group;
  group["targets"] = {"Linear"};
  group["weights"] = argsJson(w.bits, w.symmetric, strategy,
                              w.granularity == Granularity::PerGroup ? w.groupSize : 0, false);
  const ActivationSpec &a = scheme.activation;
  if (a.mode == ActivationMode::PerTokenDynamic)
    group["input_activations"] = argsJson(a.bits, false, "token", 0, true);
  else if (a.mode == ActivationMode::PerTensorStatic)
    group["input_activations"] = argsJson(a.bits, false, "tensor", 0, false);
  else
    group["input_activations"] = nullptr;
  group["output_activations"] = nullptr;

  nlohmann::ordered_json c;
  c["quant_method"] = "compressed-tensors";
  c["format"] = compressedTensorsFormatName(format);
  c["config_groups"] = {{"group_0", group}};
  c["ignore"] = ignore;
  c["kv_cache_scheme"] = nullptr;
  c["quantization_status"] = "compressed";
  c["global_compression_ratio"] = nullptr;
  return c.dump();
}

} // namespace lrq::quant
