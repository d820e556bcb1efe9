#include "core/quant/activation_install.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <utility>

#include "core/common/c_number.h"
#include "core/common/error.h"
#include "core/quant/calibration_runner.h"
#include "core/quant/transform_capture.h"

namespace lrq::quant {

namespace {

std::string formatDouble(double v) {
  return formatNumberC("%.6g", v);
}

bool isOurs(const std::shared_ptr<const TensorTransform> &t) {
  return t && (dynamic_cast<const ActivationTransform *>(t.get()) ||
               dynamic_cast<const KvQuantTransform *>(t.get()));
}

void checkBlocks(const DecoderModel &model, const LayerSelection &sel) {
  for (int64_t b : sel.blocks)
    if (b < 0 || b >= model.numBlocks())
      throw Error("scheme selects block " + std::to_string(b) + " but the model has " +
                  std::to_string(model.numBlocks()) + " blocks");
}

} // namespace

ActivationTransform::ActivationTransform(ActivationQuantizer quantizer)
    : quantizer_(std::move(quantizer)) {
  if (quantizer_.needsCalibration())
    throw Error("activation transform: a per-tensor static quantizer must be calibrated first");
}

at::Tensor ActivationTransform::apply(const at::Tensor &x) const {
  return quantizer_(x);
}

std::string ActivationTransform::describe() const {
  const ActivationSpec &s = quantizer_.spec();
  std::string d = "A" + std::to_string(s.bits) + " " + activationModeName(s.mode);
  if (s.mode == ActivationMode::PerTensorStatic)
    d += " s=" + formatDouble(quantizer_.scale()) + " z=" + formatDouble(quantizer_.zeroPoint());
  return d;
}

at::Tensor KvQuantTransform::apply(const at::Tensor &y) const {
  return quantizeKv(y, bits_);
}

std::string KvQuantTransform::describe() const {
  return "KV" + std::to_string(bits_) + " per-token";
}

void removeActivationQuantizers(DecoderModel &model) {
  for (BlockWeights &block : model.weights().blocks)
    for (auto &[role, linear] : blockLinears(model.config(), block)) {
      (void)role;
      if (isOurs(linear->inputTransform))
        linear->inputTransform.reset();
      if (isOurs(linear->outputTransform))
        linear->outputTransform.reset();
    }
}

ActivationInstallReport installActivationQuantizers(DecoderModel &model, const QuantScheme &scheme,
                                                    const CalibrationSet &calibration,
                                                    ProgressObserver *observer,
                                                    const CancelToken *cancel, int64_t batchSize) {
  scheme.validate();
  const LayerSelection &sel = scheme.layers;
  checkBlocks(model, sel);
  const auto start = std::chrono::steady_clock::now();
  const ActivationSpec &spec = scheme.activation;
  const bool isStatic = spec.mode == ActivationMode::PerTensorStatic;
  if (isStatic)
    checkCalibration(calibration, "per-tensor static activation calibration");
  removeActivationQuantizers(model);

  ActivationInstallReport report;
  const int64_t blockCount = model.numBlocks();
  int64_t lastSelected = -1;
  for (int64_t b = 0; b < blockCount; ++b)
    if (sel.selectsBlock(b))
      lastSelected = b;

  // Dynamic quantizers and KV8 need no data: install them all at once.
  std::shared_ptr<const TensorTransform> dynamic;
  if (spec.mode == ActivationMode::PerTokenDynamic)
    dynamic = std::make_shared<ActivationTransform>(ActivationQuantizer(spec));
  const auto kv = std::make_shared<KvQuantTransform>(8);
  for (int64_t b = 0; b < blockCount; ++b) {
    if (!sel.selectsBlock(b))
      continue;
    for (auto &[role, linear] : blockLinears(model.config(), model.weights().blocks[size_t(b)])) {
      if (dynamic && sel.selectsLinear(role)) {
        linear->inputTransform = dynamic;
        ++report.inputTransforms;
      }
      if (scheme.kv8 && (role == "k_proj" || role == "v_proj")) {
        linear->outputTransform = kv;
        ++report.outputTransforms;
      }
    }
  }
  if (!isStatic) {
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  // Per-tensor static: block by block on the states produced by the model as
  // quantized so far (earlier blocks' quantizers frozen and active).
  at::NoGradGuard noGrad;
  if (observer)
    observer->started("activation calibration", lastSelected + 1);
  CalibrationStates states(model, calibration, batchSize);
  report.calibrationSamples = states.samples();
  for (int64_t b = 0; b <= lastSelected; ++b) {
    if (cancel)
      cancel->throwIfCancelled();
    if (!sel.selectsBlock(b)) {
      states.runBlock(b, true, cancel);
      continue;
    }
    const auto blockStart = std::chrono::steady_clock::now();
    if (observer)
      observer->blockStarted(int(b), int(lastSelected + 1));
    std::vector<std::pair<std::string, Linear *>> targets;
    for (auto &entry : blockLinears(model.config(), model.weights().blocks[size_t(b)]))
      if (sel.selectsLinear(entry.first) && entry.second->weight.defined())
        targets.push_back(entry);
    std::vector<ActivationQuantizer> quantizers(targets.size(), ActivationQuantizer(spec));
    {
      std::vector<ScopedCapture> captures;
      captures.reserve(targets.size());
      for (size_t i = 0; i < targets.size(); ++i) {
        ActivationQuantizer *q = &quantizers[i];
        captures.emplace_back(*targets[i].second, [q](const at::Tensor &x) { q->observe(x); });
      }
      states.runBlock(b, false, cancel);
    }
    if (spec.init == StepInit::ClippingSearch) {
      // Second pass over the same inputs (the block's own quantizers are not
      // installed yet) for the clipping search's histograms.
      std::vector<ScopedCapture> captures;
      captures.reserve(targets.size());
      for (size_t i = 0; i < targets.size(); ++i) {
        ActivationQuantizer *q = &quantizers[i];
        captures.emplace_back(*targets[i].second,
                              [q](const at::Tensor &x) { q->observeForClipSearch(x); });
      }
      states.runBlock(b, false, cancel);
    }
    for (size_t i = 0; i < targets.size(); ++i) {
      ActivationQuantizer &q = quantizers[i];
      q.freeze();
      report.staticSteps.push_back(
          {b, targets[i].first, q.observedMin(), q.observedMax(), q.scale(), q.zeroPoint()});
      targets[i].second->inputTransform = std::make_shared<ActivationTransform>(q);
      ++report.inputTransforms;
    }
    if (b < lastSelected)
      states.runBlock(b, true, cancel);
    if (observer)
      observer->blockFinished(
          int(b), 0.0, 0.0,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - blockStart).count());
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (observer) {
    observer->log(LogLevel::Info, "activation quantizers calibrated on " +
                                      std::to_string(report.calibrationSamples) + " samples");
    observer->finished();
  }
  return report;
}

} // namespace lrq::quant
