#include "core/quant/compressed_tensors.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <set>

#include "core/common/error.h"
#include "core/io/hf_config.h"
#include "core/quant/activation_install.h"
#include "core/quant/export_glue.h"

namespace lrq::quant {

namespace {

using json = nlohmann::ordered_json;
constexpr int64_t kTwo32 = int64_t(1) << 32;

void checkPackArgs(int bits, int dim) {
  if (bits < 1 || bits > 8)
    throw Error("compressed-tensors pack: bits must be 1..8, got " + std::to_string(bits));
  if (dim != 0 && dim != 1)
    throw Error("compressed-tensors pack: dim must be 0 or 1");
}

const char *torchDtypeName(at::ScalarType t) {
  switch (t) {
  case at::kFloat:
    return "float32";
  case at::kHalf:
    return "float16";
  case at::kBFloat16:
    return "bfloat16";
  default:
    return nullptr;
  }
}

} // namespace

at::Tensor packInt32(const at::Tensor &signedCodes, int bits, int dim) {
  checkPackArgs(bits, dim);
  if (signedCodes.dim() != 2 || signedCodes.is_floating_point())
    throw Error("compressed-tensors pack: codes must be a 2-D integer tensor");
  const int64_t half = int64_t(1) << (bits - 1);
  at::Tensor u = signedCodes.to(at::kCPU, at::kLong) + half;
  if (u.numel() > 0 && (u.min().item<int64_t>() < 0 || u.max().item<int64_t>() >= 2 * half))
    throw Error("compressed-tensors pack: a code lies outside [" + std::to_string(-half) + ", " +
                std::to_string(half - 1) + "]");
  if (dim == 0)
    u = u.t();
  u = u.contiguous();
  const int64_t per = 32 / bits;
  const int64_t rows = u.size(0), cols = u.size(1);
  const int64_t words = (cols + per - 1) / per;
  u = at::constant_pad_nd(u, {0, words * per - cols}, 0).view({rows, words, per});
  // value i of a word is shifted left by i * bits: multiply by 2^(i*bits), exact in int64.
  std::vector<int64_t> shifts(size_t(per), 0);
  for (int64_t i = 0; i < per; ++i)
    shifts[size_t(i)] = int64_t(1) << (i * bits);
  const at::Tensor weight = at::tensor(shifts, at::kLong);
  at::Tensor word = (u * weight).sum(2); // [0, 2^32)
  // The same 32 bits read as a signed int32 (two's complement).
  word = at::where(word >= kTwo32 / 2, word - kTwo32, word).to(at::kInt);
  if (dim == 0)
    word = word.t();
  return word.contiguous();
}

at::Tensor unpackInt32(const at::Tensor &packed, int bits, int dim, int64_t rows, int64_t cols) {
  checkPackArgs(bits, dim);
  if (packed.dim() != 2 || packed.scalar_type() != at::kInt)
    throw Error("compressed-tensors unpack: packed values must be a 2-D int32 tensor");
  const int64_t per = 32 / bits;
  at::Tensor w = packed.to(at::kLong);
  w = at::where(w < 0, w + kTwo32, w);
  if (dim == 0)
    w = w.t();
  const int64_t lines = dim == 0 ? cols : rows, length = dim == 0 ? rows : cols;
  if (w.size(0) != lines || w.size(1) != (length + per - 1) / per)
    throw Error("compressed-tensors unpack: packed shape does not match the unpacked one");
  std::vector<at::Tensor> parts;
  for (int64_t i = 0; i < per; ++i)
    parts.push_back(
        at::remainder(at::div(w, int64_t(1) << (i * bits), "floor"), int64_t(1) << bits));
  at::Tensor u = at::stack(parts, 2).reshape({lines, -1}).narrow(1, 0, length);
  u = u - (int64_t(1) << (bits - 1));
  if (dim == 0)
    u = u.t();
  return u.to(at::kInt).contiguous();
}

ExportResult exportCompressedTensors(const std::string &dir, const CompressedTensorsRun &run,
                                     const ExportTokenizer &tokenizer, const ExportOptions &options,
                                     CompressedTensorsStats *stats, ProgressObserver *observer,
                                     const CancelToken *cancel) {
  if (!run.config || !run.quantized || !run.original || !run.scheme)
    throw Error("compressed-tensors export: config, weights and scheme are required");
  const ModelConfig &config = *run.config;
  const QuantScheme &scheme = *run.scheme;
  const CompressedTensorsFormat format =
      compressedTensorsFormatFor(scheme, run.method, run.hyperparameters);
  const char *dtypeName = torchDtypeName(options.dtype);
  if (!dtypeName)
    throw Error("compressed-tensors export: the model's tensors are stored as float32, float16 "
                "or bfloat16");
  for (const auto &[name, type] : options.tensorDtypes)
    if (!torchDtypeName(type))
      throw Error("compressed-tensors export: tensor " + name + " is asked for in " +
                  c10::toString(type) + "; float32, float16 or bfloat16 only");
  json meta;
  try {
    meta = run.metadataJson.empty() ? json::object() : json::parse(run.metadataJson);
  } catch (const json::exception &e) {
    throw Error(std::string("compressed-tensors export: metadata is not valid JSON: ") + e.what());
  }
  if (!meta.is_object())
    throw Error("compressed-tensors export: metadata must be a JSON object");
  if (cancel)
    cancel->throwIfCancelled();
  std::error_code ec;
  if (!options.overwrite && std::filesystem::exists(dir, ec))
    throw FileError(dir, "already exists (choose another name or allow overwriting)");

  // Whatever acts on a linear besides its weight must be what the config says.
  const ActivationSpec &act = scheme.activation;
  std::map<std::string, const Linear *> linears;
  std::vector<std::string> linearOrder;
  for (const auto &[prefix, l] : hfLinearsFromWeights(config, *run.quantized)) {
    linears[prefix] = l;
    linearOrder.push_back(prefix);
    if (l->lowRankA.defined() || l->lowRankB.defined())
      throw Error("compressed-tensors export: " + prefix +
                  " carries low-rank correction factors, which the format cannot hold");
    if (l->outputTransform)
      throw Error("compressed-tensors export: " + prefix + " has an output transform (" +
                  l->outputTransform->describe() + ") the format cannot hold");
    if (l->inputTransform) {
      const auto *a = dynamic_cast<const ActivationTransform *>(l->inputTransform.get());
      if (!a || act.mode == ActivationMode::None || a->quantizer().spec().mode != act.mode ||
          a->quantizer().spec().bits != act.bits)
        throw Error("compressed-tensors export: " + prefix + " has an input transform (" +
                    l->inputTransform->describe() +
                    ") other than the scheme's activation "
                    "quantizer; the format cannot hold it");
    }
  }

  PackStats packStats;
  const PackedModelContents packed =
      packQuantizedModel(config, *run.quantized, *run.original, scheme, run.method, run.grids,
                         &packStats, run.valueDtypes);
  std::set<std::string> quantizedNames;
  for (const PackedTensor &t : packed.quantized)
    quantizedNames.insert(t.name);
  std::vector<std::string> ignore{"lm_head"};
  for (const std::string &prefix : linearOrder)
    if (!quantizedNames.count(prefix))
      ignore.push_back(prefix);

  HfStyleDirectory files;
  for (const auto &[name, t] : packed.tensors) {
    const auto type = options.tensorDtypes.find(name);
    files.tensors.push_back(
        {name, t, type != options.tensorDtypes.end() ? type->second : options.dtype});
  }

  CompressedTensorsStats local;
  const bool perTensor = scheme.weight.granularity == Granularity::PerTensor;
  for (const PackedTensor &t : packed.quantized) {
    if (cancel)
      cancel->throwIfCancelled();
    const auto lin = linears.find(t.name);
    if (lin == linears.end())
      throw Error("compressed-tensors export: " + t.name + " is not a linear");
    const at::Tensor what = lin->second->weight.to(at::kCPU, at::kFloat);
    const int64_t out = t.codes.size(0), in = t.codes.size(1);
    if (t.groupSize > 0 && in % t.groupSize != 0)
      throw Error("compressed-tensors export: " + t.name + " has " + std::to_string(in) +
                  " columns, not a multiple of the group size " + std::to_string(t.groupSize) +
                  " (the format's readers need whole groups)");
    // The format's codes and zero points are signed: c = q - qmin - 2^(bits-1).
    const int64_t offset = -t.qmin - (int64_t(1) << (t.bits - 1));
    const at::Tensor codes = t.codes.to(at::kLong) + offset;
    const at::Tensor zeros = t.zeroPoints.to(at::kLong) + offset;
    const at::Tensor scales = t.scales.to(at::kFloat).contiguous();

    // Decode as the format's readers do, (c - z) * s in float32, rounded to
    // the type Ŵ was rounded to: must give the run's Ŵ.
    at::Tensor decoded = dequantizeCodes(codes, scales, zeros.to(at::kFloat), t.groupSize);
    if (t.valueDtype != at::kFloat)
      decoded = decoded.to(t.valueDtype).to(at::kFloat);
    const at::Tensor differs = decoded.ne(what);
    local.inexactValues += differs.sum().item<int64_t>();
    local.maxDeviation = std::max(local.maxDeviation, (decoded - what).abs().max().item<double>());
    ++local.layers;

    const std::string &p = t.name;
    if (format == CompressedTensorsFormat::PackQuantized) {
      files.tensors.push_back({p + ".weight_packed", packInt32(codes, t.bits, 1), at::kInt});
      files.tensors.push_back(
          {p + ".weight_scale", perTensor ? scales.reshape({1}) : scales, at::kFloat});
      // Channel / group zero points are packed along the rows; a per-tensor one is not.
      if (!scheme.weight.symmetric)
        files.tensors.push_back(
            perTensor ? SafetensorsEntry{p + ".weight_zero_point", zeros.reshape({1}), at::kChar}
                      : SafetensorsEntry{p + ".weight_zero_point", packInt32(zeros, t.bits, 0),
                                         at::kInt});
      files.tensors.push_back(
          {p + ".weight_shape", at::tensor(std::vector<int64_t>{out, in}, at::kLong), at::kLong});
    } else {
      files.tensors.push_back({p + ".weight", codes, at::kChar});
      files.tensors.push_back(
          {p + ".weight_scale", perTensor ? scales.reshape({1}) : scales, at::kFloat});
      if (!scheme.weight.symmetric)
        files.tensors.push_back(
            {p + ".weight_zero_point", perTensor ? zeros.reshape({1}) : zeros, at::kChar});
      if (act.mode == ActivationMode::PerTensorStatic) {
        const auto *a =
            lin->second->inputTransform
                ? dynamic_cast<const ActivationTransform *>(lin->second->inputTransform.get())
                : nullptr;
        if (!a)
          throw Error("compressed-tensors export: " + p +
                      " has no calibrated activation quantizer");
        const double s = a->quantizer().scale(), z = a->quantizer().zeroPoint();
        const double half = double(int64_t(1) << (act.bits - 1));
        if (!(std::isfinite(s) && s > 0) || z != std::round(z) || z < 0 || z > 2 * half - 1)
          throw Error("compressed-tensors export: " + p +
                      ": the activation step is not positive or its zero point not an integer "
                      "within the grid");
        files.tensors.push_back(
            {p + ".input_scale", at::tensor(std::vector<float>{float(s)}, at::kFloat), at::kFloat});
        files.tensors.push_back({p + ".input_zero_point",
                                 at::tensor(std::vector<int64_t>{int64_t(z - half)}, at::kLong),
                                 at::kChar});
      } else if (act.mode == ActivationMode::PerTokenDynamic && !lin->second->inputTransform) {
        throw Error("compressed-tensors export: " + p + " has no activation quantizer");
      }
    }
  }

  json cfg = json::parse(hfConfigJson(packed.config, dtypeName));
  cfg["quantization_config"] = json::parse(compressedTensorsQuantizationConfig(scheme, ignore));
  files.configJson = cfg.dump(2) + "\n";
  files.tokenizer = tokenizer;
  meta["lrq_export"] = {{"kind", "compressed-tensors"},
                        {"format", compressedTensorsFormatName(format)},
                        {"dtype", dtypeName},
                        {"scale_dtype", "float32"},
                        {"layers", local.layers},
                        {"inexact_values", local.inexactValues},
                        {"max_deviation", local.maxDeviation},
                        {"vllm_caveats", compressedTensorsVllmCaveats(scheme)}};
  files.extraFiles.emplace_back("lrq_metadata.json", meta.dump(2) + "\n");
  ExportResult r = writeHfStyleDirectory(dir, files, options, observer, cancel);
  if (stats)
    *stats = local;
  return r;
}

} // namespace lrq::quant
