#include "core/session/quantize_job.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>
#include <vector>

#include "core/analysis/tensor_analysis.h"
#include "core/common/error.h"
#include "core/common/memory.h"
#include "core/data/default_assets.h"
#include "core/eval/compare.h"
#include "core/io/export.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/activation_install.h"
#include "core/quant/export_glue.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"
#include "core/quant/smoothquant.h"
#include "core/runs/run_recorder.h"
#include "core/runs/run_store.h"

namespace fs = std::filesystem;

namespace lrq {
namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A deep copy: methods replace and (SmoothQuant) rescale tensors, and the
// full-precision reference must stay untouched.
ModelWeights cloneWeights(const ModelWeights &w) {
  auto copy = [](const at::Tensor &t) { return t.defined() ? t.clone() : t; };
  auto copyLinear = [&](const Linear &l) {
    Linear out = l;
    out.weight = copy(l.weight);
    out.bias = copy(l.bias);
    out.lowRankA = copy(l.lowRankA);
    out.lowRankB = copy(l.lowRankB);
    return out;
  };
  auto copyNorm = [&](const NormWeights &n) { return NormWeights{copy(n.weight), copy(n.bias)}; };
  ModelWeights out;
  out.tokenEmbedding = copy(w.tokenEmbedding);
  out.positionEmbedding = copy(w.positionEmbedding);
  out.projectIn = copyLinear(w.projectIn);
  out.projectOut = copyLinear(w.projectOut);
  for (const BlockWeights &b : w.blocks) {
    BlockWeights nb;
    nb.attnNorm = copyNorm(b.attnNorm);
    nb.mlpNorm = copyNorm(b.mlpNorm);
    nb.q = copyLinear(b.q);
    nb.k = copyLinear(b.k);
    nb.v = copyLinear(b.v);
    nb.o = copyLinear(b.o);
    nb.gate = copyLinear(b.gate);
    nb.up = copyLinear(b.up);
    nb.down = copyLinear(b.down);
    out.blocks.push_back(std::move(nb));
  }
  out.finalNorm = copyNorm(w.finalNorm);
  out.lmHead = w.lmHead.is_same(w.tokenEmbedding) ? out.tokenEmbedding : copy(w.lmHead);
  return out;
}

// Per-layer spectra. Layers are named as in MethodReport: a block linear by
// (block, role), the embeddings and the LM head by block -1.
using LayerKey = std::pair<int64_t, std::string>;

Linear *findBlockLinear(const ModelConfig &config, ModelWeights &w, int64_t block,
                        const std::string &role) {
  if (block < 0 || block >= int64_t(w.blocks.size()))
    return nullptr;
  for (const auto &[name, linear] : blockLinears(config, w.blocks[size_t(block)]))
    if (name == role)
      return linear;
  return nullptr;
}

// The stored weight of a layer (undefined when the model has no such layer).
at::Tensor layerWeight(const ModelConfig &config, ModelWeights &w, int64_t block,
                       const std::string &role) {
  if (block < 0)
    return role == "embeddings" ? w.tokenEmbedding : role == "lm_head" ? w.lmHead : at::Tensor();
  const Linear *l = findBlockLinear(config, w, block, role);
  return l ? l->weight : at::Tensor();
}

// The weight a layer computes with, in float64: the decoder applies a linear as
// y = x Ŵᵀ + (x A) B, so the effective weight is Ŵ + (A B)ᵀ.
at::Tensor effectiveWeight(const ModelConfig &config, ModelWeights &w, int64_t block,
                           const std::string &role) {
  const Linear *l = block >= 0 ? findBlockLinear(config, w, block, role) : nullptr;
  at::Tensor out = layerWeight(config, w, block, role);
  if (!out.defined())
    return out;
  out = out.detach().to(at::kCPU, at::kDouble);
  if (l && l->lowRankA.defined() && l->lowRankB.defined())
    out = out + at::mm(l->lowRankA.detach().to(at::kCPU, at::kDouble),
                       l->lowRankB.detach().to(at::kCPU, at::kDouble))
                    .t();
  return out;
}

// Copies of the selected block linears as they are now (after SmoothQuant,
// before the method): the W of the spectra when it is not the full-precision one.
std::map<LayerKey, at::Tensor> copySelectedLinears(const ModelConfig &config, ModelWeights &w,
                                                   const quant::LayerSelection &sel) {
  std::map<LayerKey, at::Tensor> out;
  for (int64_t b = 0; b < int64_t(w.blocks.size()); ++b) {
    if (!sel.selectsBlock(b))
      continue;
    for (const auto &[role, linear] : blockLinears(config, w.blocks[size_t(b)]))
      if (sel.selectsLinear(role) && linear->weight.defined())
        out[{b, role}] = linear->weight.detach().clone();
  }
  return out;
}

// "W" (startWeights where given, else the full-precision weight), "E" = W - Ŵ
// with Ŵ the quantized model's effective weight, then the method's own spectra,
// for every layer the method reports. Layers are spread over the intra-op
// threads, each computing alone: the eigensolver's many small steps would
// otherwise wait on each other's threads at every one of them.
std::vector<SpectrumRecord> layerSpectra(const quant::MethodReport &report,
                                         const ModelConfig &config, ModelWeights &fpWeights,
                                         ModelWeights &quantized,
                                         const std::map<LayerKey, at::Tensor> &startWeights,
                                         const CancelToken *cancel) {
  const int64_t count = int64_t(report.layers.size());
  std::vector<std::vector<SpectrumRecord>> perLayer(report.layers.size());
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    c10::InferenceMode inference;
    for (int64_t i = begin; i < end; ++i) {
      if (cancel && cancel->cancelled())
        return;
      const quant::LayerReport &l = report.layers[size_t(i)];
      const int64_t block = l.error.block;
      const std::string &role = l.error.layer;
      const auto start = startWeights.find({block, role});
      at::Tensor w =
          start != startWeights.end() ? start->second : layerWeight(config, fpWeights, block, role);
      const at::Tensor q = effectiveWeight(config, quantized, block, role);
      if (!w.defined() || !q.defined() || w.sizes() != q.sizes())
        continue;
      w = w.detach().to(at::kCPU, at::kDouble);
      std::vector<SpectrumRecord> &out = perLayer[size_t(i)];
      out.push_back({int(block), role, "W", analysis::gramSingularValues(w).values});
      out.push_back({int(block), role, "E", analysis::gramSingularValues(w - q).values});
      for (const auto &[kind, values] : l.spectra)
        out.push_back({int(block), role, kind, values});
    }
  });
  if (cancel)
    cancel->throwIfCancelled();
  std::vector<SpectrumRecord> out;
  for (std::vector<SpectrumRecord> &records : perLayer)
    for (SpectrumRecord &r : records)
      out.push_back(std::move(r));
  return out;
}

} // namespace

std::vector<std::pair<std::string, std::string>> quantizationMethods() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string &name : quant::methodNames())
    out.emplace_back(name, quant::createMethod(name)->help());
  return out;
}

std::string methodDefaultsJson(const std::string &method) {
  return quant::createMethod(method)->defaults().dump();
}

std::vector<std::string> schemePresets() {
  return quant::presetNames();
}

std::string resolveSchemeJson(const std::string &presetOrPath) {
  quant::QuantScheme scheme;
  if (fs::exists(presetOrPath) && fs::is_regular_file(presetOrPath)) {
    try {
      scheme = quant::QuantScheme::fromJson(readTextFile(presetOrPath));
    } catch (const FileError &) {
      throw;
    } catch (const Error &e) {
      throw FileError(presetOrPath, e.what());
    }
  } else {
    scheme = quant::presetScheme(presetOrPath);
  }
  scheme.validate();
  return scheme.toJson();
}

QuantizeOutcome runQuantizeJob(const QuantizeRequest &request, ProgressObserver *observer,
                               const CancelToken *cancel) {
  const auto start = Clock::now();
  auto say = [&](const std::string &message) {
    if (observer)
      observer->log(LogLevel::Info, message);
    else
      spdlog::info("{}", message);
  };

  // Everything that can be checked before any work is checked first.
  std::unique_ptr<quant::QuantMethod> method = quant::createMethod(request.method);
  nlohmann::json userHyper;
  try {
    userHyper = nlohmann::json::parse(
        request.hyperparametersJson.empty() ? std::string("{}") : request.hyperparametersJson);
  } catch (const nlohmann::json::exception &e) {
    throw Error("hyperparameters are not valid JSON: " + std::string(e.what()));
  }
  // Methods that checkpoint (block-wise reconstruction) have a "resume" hyperparameter.
  const bool checkpoints = method->defaults().contains("resume");
  const bool resuming = !request.resumeRunId.empty();
  if (resuming && !checkpoints)
    throw Error("method " + method->name() + " keeps no checkpoint: its runs cannot be resumed");
  if (resuming && userHyper.is_object())
    userHyper["resume"] = true;
  const nlohmann::json hyper = quant::mergeHyperparameters(*method, userHyper);
  const quant::QuantScheme scheme = quant::QuantScheme::fromJson(resolveSchemeJson(request.scheme));
  if (request.samples < 1 || request.seqLen < 2)
    throw Error("calibration needs --nsamples >= 1 and --seq-len >= 2");

  const std::string modelPath =
      request.model == "default" ? ensureDefaultModel(observer) : request.model;
  LoadedModel loaded = loadModel(modelPath, observer, cancel);
  if (!loaded.tokenizer)
    throw FileError(modelPath, "the model files contain no tokenizer; calibration needs one");
  ModelWeights fpWeights = ModelWeights::fromHfTensors(loaded.config, loaded.tensors);
  DecoderModel reference(loaded.config, fpWeights);
  DecoderModel model(loaded.config, cloneWeights(fpWeights));

  std::string calibrationSource;
  std::string calibrationText;
  TextSplit split;
  const bool needDefaultText =
      request.calibrationText.empty() || (request.evaluate && request.evaluationText.empty());
  if (needDefaultText)
    split = defaultText();
  if (request.calibrationText.empty()) {
    calibrationText = split.calibration;
    calibrationSource = split.source + ", calibration part";
  } else {
    calibrationText = readTextFile(request.calibrationText);
    calibrationSource = request.calibrationText;
  }
  const std::vector<int32_t> calibrationTokens = loaded.tokenizer->encode(calibrationText, true);
  const quant::CalibrationSet calibration = quant::makeCalibrationSet(
      calibrationTokens, request.samples, request.seqLen, request.seed, calibrationSource);

  RunStore store =
      RunStore::open(request.storePath.empty() ? RunStore::defaultPath() : request.storePath);
  RunInfo info;
  info.model = identifyModel(modelPath, false);
  info.method = method->name();
  info.schemeJson = scheme.toJson();
  nlohmann::json recordedHyper = hyper;
  recordedHyper["samples"] = request.samples;
  recordedHyper["seq_len"] = request.seqLen;
  recordedHyper["seed"] = request.seed;
  recordedHyper["calibration"] = calibrationSource;
  quant::SmoothQuantOptions smoothOptions;
  smoothOptions.alpha = request.smoothQuantAlpha;
  if (!quant::parseSmoothGroups(request.smoothQuantGroups, &smoothOptions.groups))
    throw Error("SmoothQuant groups must be norm or all, got \"" + request.smoothQuantGroups +
                "\"");
  if (request.smoothQuant)
    recordedHyper["smoothquant"] = {{"alpha", request.smoothQuantAlpha},
                                    {"groups", quant::smoothGroupsName(smoothOptions.groups)}};
  info.hyperparametersJson = recordedHyper.dump();
  if (!loaded.baselineNote.empty())
    info.notes = "full-precision reference: " + loaded.baselineNote;
  QuantizeOutcome outcome;
  double earlierSeconds = 0; // a resumed run's time before the interruption
  if (resuming) {
    // The same run, reopened: its records are replaced as the job redoes them.
    outcome.runId = store.resolveId(request.resumeRunId);
    const RunInfo earlier = store.getRunInfo(outcome.runId);
    if (earlier.status == RunStatus::Finished)
      throw Error("run " + outcome.runId + " has finished: there is nothing to resume");
    if (earlier.method != info.method || earlier.model.digest != info.model.digest ||
        nlohmann::json::parse(earlier.schemeJson) != nlohmann::json::parse(info.schemeJson))
      throw Error("run " + outcome.runId + " used another method, model or scheme");
    earlierSeconds = earlier.totalSeconds;
    store.finishRun(outcome.runId, RunStatus::Running);
  } else {
    outcome.runId = store.createRun(info);
  }
  outcome.storePath = store.path();
  RunRecorder recorder(store, outcome.runId, observer);
  say("run " + outcome.runId + ": " + method->name() + " with " + scheme.describe() + " on " +
      modelPath);

  try {
    std::string workDir = request.workDir;
    if (workDir.empty())
      workDir = defaultWorkDir(outcome.runId);
    const std::string requestFile = quantizeRequestFile(workDir);
    if (checkpoints && !resuming) {
      // Saved until the run finishes, for `--resume`.
      std::error_code ec;
      fs::create_directories(workDir, ec);
      QuantizeRequest saved = request;
      saved.storePath = store.path();
      saved.workDir = workDir;
      std::ofstream(requestFile) << quantizeRequestJson(saved, outcome.runId) << "\n";
    }
    if (request.smoothQuant) {
      quant::SmoothQuantReport sq = quant::applySmoothQuant(model, calibration, smoothOptions,
                                                            scheme.layers, observer, cancel);
      say("SmoothQuant (alpha " + std::to_string(request.smoothQuantAlpha) + ", groups " +
          quant::smoothGroupsName(smoothOptions.groups) + ") applied to " +
          std::to_string(sq.groups.size()) + " groups");
    }
    // W of the spectra: the full-precision weights, or what SmoothQuant made of them.
    std::map<LayerKey, at::Tensor> spectraStartWeights;
    if (request.spectra && request.smoothQuant)
      spectraStartWeights = copySelectedLinears(loaded.config, model.weights(), scheme.layers);
    quant::MethodContext ctx{model,        scheme,    calibration, hyper,
                             request.seed, &recorder, cancel,      workDir};
    ctx.spectra = request.spectra;
    quant::MethodReport report = method->run(ctx);
    // Activation quantizers (A8, KV8) go on after the weights are final; static
    // steps are calibrated on the quantized model's own activations.
    if (scheme.activation.mode != quant::ActivationMode::None || scheme.kv8) {
      quant::ActivationInstallReport a =
          quant::installActivationQuantizers(model, scheme, calibration, observer, cancel);
      say("activation quantizers: " + std::to_string(a.inputTransforms) + " linear inputs, " +
          std::to_string(a.outputTransforms) + " KV outputs");
    }
    std::vector<LayerStats> layers;
    for (const quant::LayerReport &l : report.layers)
      layers.push_back(
          {int(l.error.block), l.error.layer, l.error.mse, l.error.sqnrDb, l.learnableParams});
    store.appendLayerStats(outcome.runId, layers);
    if (request.spectra) {
      const auto spectraStart = Clock::now();
      const std::vector<SpectrumRecord> spectra = layerSpectra(
          report, loaded.config, fpWeights, model.weights(), spectraStartWeights, cancel);
      spectraStartWeights.clear();
      store.appendSpectra(outcome.runId, spectra);
      char line[128];
      std::snprintf(line, sizeof line, "spectra: %zu recorded in %.2f s", spectra.size(),
                    secondsSince(spectraStart));
      say(line);
    }
    if (!report.extra.empty())
      store.setNotes(outcome.runId, info.notes + (info.notes.empty() ? "" : "; ") +
                                        "method: " + report.extra.dump());

    if (request.evaluate) {
      const std::string text =
          request.evaluationText.empty() ? split.evaluation : readTextFile(request.evaluationText);
      const std::vector<int32_t> tokens = loaded.tokenizer->encode(text, true);
      c10::InferenceMode inference;
      say("evaluating against the full-precision reference (" +
          (loaded.baselineNote.empty() ? std::string("weights as stored") : loaded.baselineNote) +
          ")");
      CompareResult c = compareToReference(model, reference, tokens, request.evalSeqLen, observer,
                                           cancel, request.evalMaxWindows);
      outcome.metrics["perplexity"] = c.perplexity;
      outcome.metrics["reference_perplexity"] = c.referencePerplexity;
      outcome.metrics["kl"] = c.meanKl;
      outcome.metrics["max_kl"] = c.maxKl;
      outcome.metrics["top1"] = c.top1Agreement;
      outcome.metrics["eval_tokens"] = double(c.tokens);
      outcome.metrics["eval_seconds"] = c.seconds;
    }
    const std::string metadata = nlohmann::json{
        {"method", method->name()},
        {"hyperparameters", recordedHyper},
        {"scheme", nlohmann::json::parse(scheme.toJson())},
        {"run_id", outcome.runId},
        {"source", modelPath},
        {"full_precision_reference",
         loaded.baselineNote}}.dump();
    if (!request.exportDir.empty()) {
      ExportResult e =
          exportHfDirectory(request.exportDir, loaded.config, model.weights(),
                            exportTokenizerFor(loaded), metadata, {}, observer, cancel);
      outcome.exportDir = e.path;
      say("exported " + std::to_string(e.tensors) + " tensors to " + e.path);
    }
    if (!request.packedPath.empty()) {
      PackedModelContents packed =
          quant::packQuantizedModel(loaded.config, model.weights(), fpWeights, scheme,
                                    method->name(), report.grids.empty() ? nullptr : &report.grids);
      embedTokenizer(packed, exportTokenizerFor(loaded));
      packed.extraMetadataJson = metadata;
      ExportResult e = writePackedModel(request.packedPath, packed, {}, observer, cancel);
      outcome.packedPath = e.path;
      say("packed export: " + e.path);
    }
    // The whole process's peak: loading, both models, calibration caches,
    // the method's working set, evaluation and export.
    outcome.metrics["peak_rss_mib"] = peakRssMiB();
    for (const auto &[name, value] : outcome.metrics)
      store.setMetric(outcome.runId, name, value);
    outcome.seconds = secondsSince(start);
    store.finishRun(outcome.runId, RunStatus::Finished, {}, earlierSeconds + outcome.seconds);
    if (checkpoints) {
      std::error_code ec;
      fs::remove(requestFile, ec);
      if (request.workDir.empty())
        fs::remove(workDir, ec); // only when empty
    }
  } catch (const Cancelled &) {
    recorder.cancelled();
    if (earlierSeconds > 0)
      store.finishRun(outcome.runId, RunStatus::Cancelled, "cancelled",
                      earlierSeconds + secondsSince(start));
    throw;
  } catch (const std::exception &e) {
    store.finishRun(outcome.runId, RunStatus::Failed, e.what(),
                    earlierSeconds + secondsSince(start));
    throw;
  }
  return outcome;
}

} // namespace lrq
