#include "core/session/quantize_job.h"

#include "core/session/model_session_access.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "core/analysis/tensor_analysis.h"
#include "core/common/error.h"
#include "core/common/memory.h"
#include "core/data/default_assets.h"
#include "core/eval/compare.h"
#include "core/io/export.h"
#include "core/io/gguf_export.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/model/tensor_spill.h"
#include "core/quant/activation_install.h"
#include "core/quant/compressed_tensors.h"
#include "core/quant/export_glue.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"
#include "core/quant/smoothquant.h"
#include "core/quant/storage_bits.h"
#include "core/recon/block_reconstructor.h"
#include "core/runs/run_recorder.h"
#include "core/runs/run_store.h"

namespace fs = std::filesystem;

namespace lrq {
namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Every tensor handle of the weights (a tied LM head is visited twice).
template <typename F> void forEachTensor(const ModelWeights &w, F &&f) {
  auto linear = [&](const Linear &l) {
    for (const at::Tensor *t : {&l.weight, &l.bias, &l.lowRankA, &l.lowRankB})
      f(*t);
  };
  auto norm = [&](const NormWeights &n) {
    f(n.weight);
    f(n.bias);
  };
  f(w.tokenEmbedding);
  f(w.positionEmbedding);
  linear(w.projectIn);
  linear(w.projectOut);
  for (const BlockWeights &b : w.blocks) {
    norm(b.attnNorm);
    norm(b.mlpNorm);
    for (const Linear *l : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down})
      linear(*l);
  }
  norm(w.finalNorm);
  f(w.lmHead);
}

// The copy that is quantized starts out sharing every tensor with the
// full-precision reference: methods replace a layer's tensors (SmoothQuant,
// the weight methods, LR-QAT's merge) and never write into them, so only what
// a method changes takes new memory, not a second whole model. ReferenceGuard
// holds the methods to that: an in-place write bumps a tensor's version
// counter, and a changed reference would skew every comparison silently.
class ReferenceGuard {
public:
  explicit ReferenceGuard(const ModelWeights &reference) {
    forEachTensor(reference, [&](const at::Tensor &t) {
      if (t.defined())
        seen_.emplace_back(t, int64_t(t._version()));
    });
  }
  void check(const char *stage) const {
    for (const auto &[tensor, version] : seen_)
      checkOne(tensor, version, stage);
  }
  // Stops watching t (checked first): it is about to be set aside.
  void forget(const at::Tensor &t, const char *stage) {
    for (auto it = seen_.begin(); it != seen_.end(); ++it)
      if (it->first.is_same(t)) {
        checkOne(it->first, it->second, stage);
        seen_.erase(it);
        return;
      }
  }
  void watch(const at::Tensor &t) { seen_.emplace_back(t, int64_t(t._version())); }

private:
  std::vector<std::pair<at::Tensor, int64_t>> seen_;

  static void checkOne(const at::Tensor &tensor, int64_t version, const char *stage) {
    if (int64_t(tensor._version()) != version)
      throw Error(std::string("internal error: the full-precision reference was modified "
                              "in place during ") +
                  stage + "; the run is stopped rather than compared against a changed model");
  }
};

// The reference's block linears that the method has replaced in the quantized
// copy, set aside on disk (TensorSpill) as each block or layer is finished, and
// read back for what needs them: the reference's pass of the evaluation one
// block at a time, the spectra one layer at a time, and all at once only for a
// stage that needs the whole reference (an export with a tensor whose grid the
// method did not report; rounding a bf16 / f16 model's untouched tensors). Without this a run
// holds two whole sets of linears (W and Ŵ) from the last blocks on. Only a
// reference the job loaded itself is spilled: the desktop's session keeps its
// model whole for its own views.
class ReferenceSpill : public quant::WeightStash {
public:
  // warn: told once when the disk refuses (the run then keeps what is left in memory).
  ReferenceSpill(const ModelConfig &config, ModelWeights &reference, ModelWeights &model,
                 ReferenceGuard &guard, const std::string &dir,
                 std::function<void(const std::string &)> warn)
      : config_(config), reference_(reference), model_(model), guard_(guard), spill_(dir),
        blocks_(spill_), warn_(std::move(warn)) {}

  // Sets aside block b's reference linears that the model no longer shares.
  void releaseBlock(int64_t b) {
    if (refused_ || b < 0 || b >= int64_t(reference_.blocks.size()))
      return;
    int64_t released = 0; // bytes
    const auto ref = blockLinears(config_, reference_.blocks[size_t(b)]);
    const auto mod = blockLinears(config_, model_.blocks[size_t(b)]);
    for (size_t i = 0; i < ref.size(); ++i) {
      const at::Tensor &w = ref[i].second->weight;
      const at::Tensor &replacing = mod[i].second->weight;
      const std::pair<int64_t, std::string> key{b, ref[i].first};
      if (!w.defined() || !w.device().is_cpu() || !replacing.defined() || replacing.is_same(w) ||
          blocks_.handleOf(b, ref[i].first))
        continue;
      const std::optional<size_t> handle = put(w);
      if (!handle)
        return;
      released += int64_t(w.nbytes());
      dropReference(key, *handle);
    }
    // Set aside ahead (SmoothQuant), the reference is on disk already: what the
    // method has just dropped is the model's own smoothed weight, trimmed here.
    if (aheadOfTheMethod_)
      releaseFreeMemory();
    else
      trimAfter(released);
  }
  void releaseAll() {
    for (int64_t b = 0; b < int64_t(reference_.blocks.size()); ++b)
      releaseBlock(b);
  }
  // Every reference linear to disk now, shared with the model or not: before
  // SmoothQuant, which gives the model new linears group by group, so that the
  // reference's and the smoothed ones are never all in memory together.
  void setAsideAhead() {
    for (int64_t b = 0; b < int64_t(reference_.blocks.size()) && !refused_; ++b)
      for (const auto &[role, l] : blockLinears(config_, reference_.blocks[size_t(b)])) {
        const std::pair<int64_t, std::string> key{b, role};
        if (!l->weight.defined() || !l->weight.device().is_cpu() || blocks_.handleOf(b, role))
          continue;
        const std::optional<size_t> handle = put(l->weight);
        if (!handle)
          break;
        ahead_.emplace(key, WeakTensor(l->weight.getIntrusivePtr()));
        dropReference(key, *handle);
      }
    aheadOfTheMethod_ = true;
    releaseFreeMemory();
  }
  // After SmoothQuant: a linear it left as it was is again one tensor that the
  // model and the reference share in memory (the copy on disk is forgotten),
  // as it would be without setAsideAhead.
  void reshareUnchanged() {
    for (const auto &[key, weak] : ahead_) {
      Linear *m = linearOf(model_, key), *r = linear(key);
      const auto alive = weak.lock();
      if (m && r && alive && m->weight.defined() && !r->weight.defined() &&
          alive.get() == m->weight.unsafeGetTensorImpl()) {
        r->weight = m->weight;
        guard_.watch(r->weight);
        blocks_.forget(key.first, key.second);
      }
    }
    ahead_.clear();
  }
  // The spilled linears, brought back one block at a time for a pass.
  BlockLoader &blocks() { return blocks_; }
  // Every spilled linear back for good, watched by the guard again.
  void restoreAll() {
    blocks_.restoreAll([this](Linear &l) { guard_.watch(l.weight); });
  }
  // The method's own weights (WeightStash): the model's Linear::weight goes to
  // disk, and the reference's too where it is the same tensor.
  bool setAside(int64_t b, const std::string &role) override {
    if (refused_ || b < 0 || b >= int64_t(model_.blocks.size()))
      return false;
    const std::pair<int64_t, std::string> key{b, role};
    Linear *m = linearOf(model_, key);
    if (!m || !m->weight.defined() || !m->weight.device().is_cpu() || stashed_.count(key))
      return false;
    const std::optional<size_t> handle = put(m->weight);
    if (!handle)
      return false;
    stashed_[key] = *handle;
    Linear *r = linearOf(reference_, key);
    if (r && r->weight.is_same(m->weight) && !blocks_.handleOf(b, role))
      dropReference(key, *handle);
    const int64_t bytes = int64_t(m->weight.nbytes());
    m->weight = at::Tensor();
    trimAfter(bytes);
    return true;
  }
  at::Tensor bringBack(int64_t b, const std::string &role) override {
    const auto it = stashed_.find({b, role});
    if (it == stashed_.end())
      throw Error("internal error: block " + std::to_string(b) + " " + role + " was not set aside");
    return spill_.get(it->second);
  }

  // Any tensor to the spill (false where the disk refuses: said once), and back.
  std::optional<size_t> keep(const at::Tensor &t) { return refused_ ? std::nullopt : put(t); }
  at::Tensor read(size_t handle) const { return spill_.get(handle); }

  // The reference's weight of block b's linear `role` as set aside (read back
  // for the caller), or undefined where it was not. Safe to call from several
  // threads at once.
  at::Tensor weightOf(int64_t b, const std::string &role) const {
    const std::optional<size_t> handle = blocks_.handleOf(b, role);
    return handle ? spill_.get(*handle) : at::Tensor();
  }

  // Bytes of the reference on disk (the spill file may hold more: the stash,
  // the spectra's start weights).
  int64_t spilledBytes() const { return blocks_.bytesAside(); }
  size_t spilledTensors() const { return blocks_.size(); }

private:
  const ModelConfig &config_;
  ModelWeights &reference_;
  ModelWeights &model_;
  ReferenceGuard &guard_;
  TensorSpill spill_;
  SpilledBlockLinears blocks_; // the reference's linears in spill_
  std::function<void(const std::string &)> warn_;
  bool refused_ = false;
  bool aheadOfTheMethod_ = false; // setAsideAhead ran
  int64_t untrimmed_ = 0;         // bytes let go since the heap was last trimmed
  // What setAsideAhead took from the reference, to tell which the model still holds.
  using WeakTensor = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  std::map<std::pair<int64_t, std::string>, WeakTensor> ahead_;
  std::map<std::pair<int64_t, std::string>, size_t> stashed_; // the method's, by (block, role)

  // t written to the spill; none, said once, when the disk refuses (the run
  // then keeps what is left in memory).
  std::optional<size_t> put(const at::Tensor &t) {
    try {
      return spill_.put(t);
    } catch (const FileError &e) {
      refused_ = true;
      warn_(std::string(e.what()) + "; the full-precision weights stay in memory");
      return std::nullopt;
    }
  }
  // glibc keeps the pages of freed tensors until a malloc_trim, which costs
  // about 15 ms here: the heap is trimmed once 32 MiB have been let go, not
  // after every layer (LQER's 210 trims took a tenth of its block time).
  void trimAfter(int64_t freedBytes) {
    untrimmed_ += freedBytes;
    if (untrimmed_ >= (int64_t(32) << 20)) {
      releaseFreeMemory();
      untrimmed_ = 0;
    }
  }
  // The reference's linear at key now lives in the spill only.
  void dropReference(const std::pair<int64_t, std::string> &key, size_t handle) {
    Linear *r = linear(key);
    guard_.forget(r->weight, "the method");
    blocks_.add(key.first, key.second, r, handle);
    r->weight = at::Tensor();
  }

  Linear *linearOf(ModelWeights &w, const std::pair<int64_t, std::string> &key) {
    for (const auto &[role, l] : blockLinears(config_, w.blocks[size_t(key.first)]))
      if (role == key.second)
        return l;
    return nullptr;
  }
  Linear *linear(const std::pair<int64_t, std::string> &key) { return linearOf(reference_, key); }
};

// Passes the method's events on and sets aside the reference's linears of
// each block or layer the method reports finished.
class ReleasingObserver : public ForwardingObserver {
public:
  ReleasingObserver(ProgressObserver *forward, ReferenceSpill &spill)
      : ForwardingObserver(forward), spill_(spill) {}
  void blockFinished(int block, double initialLoss, double finalLoss, double seconds) override {
    ForwardingObserver::blockFinished(block, initialLoss, finalLoss, seconds);
    spill_.releaseBlock(block);
  }
  void layerFinished(int block, const std::string &role, double mse, double sqnrDb) override {
    ForwardingObserver::layerFinished(block, role, mse, sqnrDb);
    spill_.releaseBlock(block);
  }

private:
  ReferenceSpill &spill_;
};

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

// The selected block linears' weights as they are now (after SmoothQuant,
// before the method; the tensors themselves, not copies): the W of the spectra
// when it is not the full-precision one.
std::map<LayerKey, at::Tensor> selectedLinears(const ModelConfig &config, ModelWeights &w,
                                               const quant::LayerSelection &sel) {
  std::map<LayerKey, at::Tensor> out;
  for (int64_t b = 0; b < int64_t(w.blocks.size()); ++b) {
    if (!sel.selectsBlock(b))
      continue;
    for (const auto &[role, linear] : blockLinears(config, w.blocks[size_t(b)]))
      if (sel.selectsLinear(role) && linear->weight.defined())
        out[{b, role}] = linear->weight.detach();
  }
  return out;
}

// "W" (startWeight: the weight the method started from), "E" = W - Ŵ
// with Ŵ the quantized model's effective weight, then the method's own spectra,
// for every layer the method reports. Layers are spread over the intra-op
// threads, each computing alone: the eigensolver's many small steps would
// otherwise wait on each other's threads at every one of them.
std::vector<SpectrumRecord>
layerSpectra(const quant::MethodReport &report, const ModelConfig &config,
             const std::function<at::Tensor(int64_t, const std::string &)> &startWeight,
             ModelWeights &quantized, const CancelToken *cancel) {
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
      at::Tensor w = startWeight(block, role);
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

// Passes every event on to the front end and keeps the run's heartbeat fresh,
// recording nothing else: for the stages whose results the job records itself
// (evaluation, export, activation calibration, SmoothQuant).
class HeartbeatRelay : public ForwardingObserver {
public:
  HeartbeatRelay(RunRecorder &recorder, ProgressObserver *forward)
      : ForwardingObserver(forward), recorder_(recorder) {}
  void started(const std::string &task, int64_t total) override {
    recorder_.heartbeat();
    ForwardingObserver::started(task, total);
  }
  void progress(int64_t done, int64_t total, const std::string &detail) override {
    recorder_.heartbeat();
    ForwardingObserver::progress(done, total, detail);
  }
  void blockStarted(int block, int blockCount) override {
    recorder_.heartbeat();
    ForwardingObserver::blockStarted(block, blockCount);
  }
  void iterationLoss(int block, int iteration, double loss) override {
    recorder_.heartbeat();
    ForwardingObserver::iterationLoss(block, iteration, loss);
  }
  void blockFinished(int block, double initialLoss, double finalLoss, double seconds) override {
    recorder_.heartbeat();
    ForwardingObserver::blockFinished(block, initialLoss, finalLoss, seconds);
  }
  void layerFinished(int block, const std::string &role, double mse, double sqnrDb) override {
    recorder_.heartbeat();
    ForwardingObserver::layerFinished(block, role, mse, sqnrDb);
  }
  void metric(const std::string &name, double value) override {
    recorder_.heartbeat();
    ForwardingObserver::metric(name, value);
  }
  void log(LogLevel level, const std::string &message) override {
    recorder_.heartbeat();
    ForwardingObserver::log(level, message);
  }

private:
  RunRecorder &recorder_;
};

// Everything one run carries from stage to stage.
struct Job {
  Job(const QuantizeRequest &r, ProgressObserver *o, const CancelToken *c)
      : request(r), observer(o), cancel(c) {}
  const QuantizeRequest &request;
  ProgressObserver *observer;
  const CancelToken *cancel;
  Clock::time_point start = Clock::now();

  std::unique_ptr<quant::QuantMethod> method;
  nlohmann::json hyper; // defaults overlaid with the user's values
  quant::QuantScheme scheme;
  quant::SmoothQuantOptions smoothOptions;
  bool checkpoints = false, resuming = false;

  // The model: loaded here, or borrowed from an open session.
  std::string modelPath;
  LoadedModel ownLoaded;
  const LoadedModel *loaded = nullptr;
  std::unique_ptr<DecoderModel> ownReference;
  DecoderModel *reference = nullptr;   // full precision, never modified
  std::unique_ptr<DecoderModel> model; // the copy that is quantized
  std::unique_ptr<ReferenceGuard> guard;
  std::unique_ptr<ReferenceSpill> spill; // the reference's replaced linears, on disk

  TextSplit split;
  EvaluationText outOfDomain; // read before the run is recorded
  quant::CalibrationSet calibration;

  std::unique_ptr<RunStore> store;
  std::unique_ptr<RunRecorder> recorder;
  std::unique_ptr<HeartbeatRelay> relay;
  RunInfo info;
  nlohmann::json recordedHyper;
  bool weightInitFromMethod = false; // the scheme said "auto"
  QuantizeOutcome outcome;
  double earlierSeconds = 0; // a resumed run's time before the interruption
  std::string workDir, requestFile;

  // W of the spectra where it is not the reference's (after SmoothQuant): in
  // the spill by handle, or in memory where the spill refused it.
  std::map<LayerKey, size_t> spectraStartHandles;
  std::map<LayerKey, at::Tensor> spectraStartWeights;
  quant::MethodReport report;
  // The source's float type of each tensor by HF name, and the HF export's
  // torch_dtype (sourceTypeStage).
  std::map<std::string, at::ScalarType> sourceTypes;
  at::ScalarType exportType = at::kFloat;

  void say(const std::string &message) const {
    if (observer)
      observer->log(LogLevel::Info, message);
    else
      spdlog::info("{}", message);
  }
  void warn(const std::string &message) const {
    if (observer)
      observer->log(LogLevel::Warning, message);
    else
      spdlog::warn("{}", message);
  }
  ProgressObserver *progress() const {
    return recorder ? static_cast<ProgressObserver *>(recorder.get()) : observer;
  }
  // The front end's observer, with heartbeats once the run is recorded.
  ProgressObserver *beating() const {
    return relay ? static_cast<ProgressObserver *>(relay.get()) : observer;
  }
};

// Everything that can be checked before any work: the request's options, the
// method's hyperparameters, the scheme.
void checkStage(Job &job) {
  validateRequest(job.request);
  job.method = quant::createMethod(job.request.method);
  job.checkpoints = job.method->canResume();
  job.resuming = !job.request.resumeRunId.empty();
  if (job.resuming && !job.checkpoints)
    throw Error("method " + job.method->name() +
                " keeps no checkpoint: its runs cannot be resumed");
  job.hyper = quant::mergeHyperparameters(
      *job.method, nlohmann::json::parse(hyperparametersToJson(job.request.hyperparameters)));
  job.scheme = quant::QuantScheme::fromJson(resolveSchemeJson(job.request.scheme));
  // "auto" weight init becomes the method's reference choice here, so the run
  // records (scheme JSON, weight_init) the grid actually used.
  job.weightInitFromMethod = job.scheme.weight.init == quant::StepInit::MethodDefault;
  job.scheme = quant::resolveReferenceGrid(*job.method, job.scheme);
  job.method->checkScheme(job.scheme);
  job.smoothOptions.alpha = job.request.smoothQuantAlpha;
  if (!quant::parseSmoothGroups(job.request.smoothQuantGroups, &job.smoothOptions.groups))
    throw OptionError("smoothquant_groups", "SmoothQuant groups must be norm or all, got \"" +
                                                job.request.smoothQuantGroups + "\"");
}

void loadStage(Job &job) {
  job.modelPath =
      job.request.model == "default" ? ensureDefaultModel(job.observer) : job.request.model;
  job.ownLoaded = loadModel(job.modelPath, job.observer, job.cancel);
  job.loaded = &job.ownLoaded;
  job.ownReference = std::make_unique<DecoderModel>(
      job.ownLoaded.config,
      ModelWeights::fromHfTensors(job.ownLoaded.config, job.ownLoaded.tensors));
  job.ownLoaded.tensors.clear(); // the reference holds them, and alone may set them aside
  job.reference = job.ownReference.get();
}

void borrowStage(Job &job, const ModelSession &session) {
  job.loaded = &ModelSessionAccess::loaded(session);
  job.modelPath = job.loaded->path;
  job.reference = &ModelSessionAccess::decoder(session);
}

// A group larger than a row would pad every row up to the group size (614 MB
// for a group of 100,000): refuse it before any work, naming the layer.
void checkGroupSizeFits(const Job &job) {
  if (job.reference->weights().blocks.empty())
    return;
  BlockWeights block = job.reference->weights().blocks.front(); // every block has these shapes
  for (const auto &[role, linear] : blockLinears(job.loaded->config, block)) {
    const int64_t in = linear->weight.size(1);
    const quant::GridSpec &grid = job.scheme.weightFor(in);
    if (grid.granularity != quant::Granularity::PerGroup)
      continue;
    if (job.scheme.layers.selectsLinear(role) && grid.groupSize > in)
      throw Error("scheme: weight.group_size " + std::to_string(grid.groupSize) +
                  " is larger than the " + std::to_string(in) + " in-features of " + role +
                  " in this model; use a group size of at most " + std::to_string(in) +
                  " or per-channel");
  }
}

// compressed-tensors readers need whole groups: refuse before the run, not after it.
void checkCompressedTensorsGroups(const Job &job) {
  if (job.request.compressedTensorsDir.empty() || job.reference->weights().blocks.empty())
    return;
  BlockWeights block = job.reference->weights().blocks.front();
  for (const auto &[role, linear] : blockLinears(job.loaded->config, block)) {
    const int64_t in = linear->weight.size(1);
    const quant::GridSpec &grid = job.scheme.weightFor(in);
    if (grid.granularity != quant::Granularity::PerGroup)
      continue;
    if (job.scheme.layers.selectsLinear(role) && in % grid.groupSize != 0)
      throw OptionError("compressed_tensors_dir",
                        "compressed-tensors export: " + role + " has " + std::to_string(in) +
                            " in-features, not a multiple of the group size " +
                            std::to_string(grid.groupSize) +
                            " (the format's readers need whole groups); pick a group size "
                            "dividing it, or per-channel");
  }
}

// Calibration windows, before anything is recorded: a text too short for the
// requested samples fails here and leaves no run behind.
void calibrateStage(Job &job) {
  checkGroupSizeFits(job);
  checkCompressedTensorsGroups(job);
  if (!job.loaded->tokenizer)
    throw FileError(job.modelPath, "the model files contain no tokenizer; calibration needs one");
  const QuantizeRequest &r = job.request;
  if (r.calibrationText.empty() || (r.evaluate && r.evaluationText.empty()))
    job.split = defaultText();
  std::string text, source;
  if (r.calibrationText.empty()) {
    text = job.split.calibration;
    source = job.split.source + ", calibration part";
  } else {
    text = readTextFile(r.calibrationText);
    source = r.calibrationText;
  }
  if (r.evaluate && r.evaluateOutOfDomain) {
    if (r.outOfDomainText.empty()) {
      job.outOfDomain = outOfDomainText();
    } else {
      job.outOfDomain.text = readTextFile(r.outOfDomainText);
      job.outOfDomain.source = r.outOfDomainText;
    }
  }
  const std::vector<int32_t> tokens = job.loaded->tokenizer->encode(text, true);
  // Held-out windows serve only the block-wise reconstruction; a text too short
  // for them as well gives fewer (said with the numbers), never overlapping ones.
  int64_t heldout = job.method->trainsBlocks() ? r.heldoutSamples : 0;
  const int64_t windows = quant::calibrationWindows(int64_t(tokens.size()), r.seqLen);
  if (heldout > 0 && windows >= r.samples && windows < r.samples + heldout) {
    const int64_t fits = windows - r.samples;
    job.warn("calibration text has " + std::to_string(tokens.size()) + " tokens, " +
             std::to_string(windows) + " windows of " + std::to_string(r.seqLen) + " tokens: " +
             std::to_string(r.samples) + " for training leave " + std::to_string(fits) +
             " of the " + std::to_string(heldout) + " held-out samples asked for" +
             (fits == 0 ? std::string("; no held-out loss is reported")
                        : "; the held-out loss uses " + std::to_string(fits)));
    heldout = fits;
  }
  job.calibration =
      quant::makeCalibrationSet(tokens, r.samples, r.seqLen, uint64_t(r.seed), source, heldout);
  // Shares the reference's tensors (see ReferenceGuard).
  job.model = std::make_unique<DecoderModel>(job.loaded->config, job.reference->weights());
  job.guard = std::make_unique<ReferenceGuard>(job.reference->weights());
}

// Opens the store and creates the run (or reopens the interrupted one).
void recordStartStage(Job &job) {
  const QuantizeRequest &r = job.request;
  job.store = std::make_unique<RunStore>(
      RunStore::open(r.storePath.empty() ? RunStore::defaultPath() : r.storePath));
  RunInfo &info = job.info;
  info.model = identifyModel(job.modelPath, false);
  info.method = job.method->name();
  info.schemeJson = job.scheme.toJson();
  job.recordedHyper = job.hyper;
  job.recordedHyper.erase("resume");
  job.recordedHyper["samples"] = r.samples;
  job.recordedHyper["seq_len"] = r.seqLen;
  if (job.method->trainsBlocks()) // the count used (fewer than asked when the text is short)
    job.recordedHyper["heldout_samples"] =
        job.calibration.heldoutTokens.defined() ? job.calibration.heldoutTokens.size(0) : 0;
  job.recordedHyper["seed"] = r.seed;
  job.recordedHyper["calibration"] = job.calibration.source;
  job.recordedHyper["weight_init"] = std::string(quant::stepInitName(job.scheme.weight.init)) +
                                     (job.weightInitFromMethod ? " (method default)" : " (scheme)");
  if (!r.preset.empty())
    job.recordedHyper["preset"] = r.preset;
  if (r.smoothQuant)
    job.recordedHyper["smoothquant"] = {
        {"alpha", r.smoothQuantAlpha},
        {"groups", quant::smoothGroupsName(job.smoothOptions.groups)}};
  info.hyperparametersJson = job.recordedHyper.dump();
  if (!job.loaded->baselineNote.empty())
    info.notes = "full-precision reference: " + job.loaded->baselineNote;
  if (job.resuming) {
    // The same run, reopened: its records are replaced as the job redoes them.
    job.outcome.runId = job.store->resolveId(r.resumeRunId);
    const RunInfo earlier = job.store->getRunInfo(job.outcome.runId);
    if (earlier.status == RunStatus::Finished)
      throw Error("run " + job.outcome.runId + " has finished: there is nothing to resume");
    if (earlier.status == RunStatus::Running) // its owner is alive
      throw RunStillRunning(job.outcome.runId, earlier.owner, earlier.heartbeat);
    if (earlier.method != info.method || earlier.model.digest != info.model.digest ||
        nlohmann::json::parse(earlier.schemeJson) != nlohmann::json::parse(info.schemeJson))
      throw Error("run " + job.outcome.runId + " used another method, model or scheme");
    // Checked again as this process takes the run over, in one transaction:
    // two resumes of one run cannot both start.
    job.earlierSeconds = job.store->claimRun(job.outcome.runId).totalSeconds;
    job.hyper["resume"] = true;
  } else {
    job.outcome.runId = job.store->createRun(info);
  }
  job.outcome.storePath = job.store->path();
  job.recorder = std::make_unique<RunRecorder>(*job.store, job.outcome.runId, job.observer);
  job.relay = std::make_unique<HeartbeatRelay>(*job.recorder, job.observer);
  if (job.observer)
    job.observer->runStarted(job.outcome.runId, job.outcome.storePath);
  job.say("run " + job.outcome.runId + ": " + job.method->name() + " with " +
          job.scheme.describe() + " on " + job.modelPath);

  job.workDir = r.workDir.empty() ? defaultWorkDir(job.outcome.runId) : r.workDir;
  job.requestFile = quantizeRequestFile(job.workDir);
  if (job.checkpoints && !job.resuming) {
    // Saved until the run finishes, for resuming.
    std::error_code ec;
    fs::create_directories(job.workDir, ec);
    QuantizeRequest saved = r;
    saved.storePath = job.store->path();
    saved.workDir = job.workDir;
    saved.resumeRunId.clear();
    nlohmann::json file = {{"run_id", job.outcome.runId},
                           {"request", nlohmann::json::parse(requestToJson(saved))}};
    std::ofstream(job.requestFile) << file.dump(2) << "\n";
  }
}

void smoothQuantStage(Job &job) {
  if (!job.request.smoothQuant)
    return;
  if (job.spill)
    job.spill->setAsideAhead();
  quant::SmoothQuantReport sq = quant::applySmoothQuant(
      *job.model, job.calibration, job.smoothOptions, job.scheme.layers, job.beating(), job.cancel);
  if (job.spill)
    job.spill->reshareUnchanged();
  job.say("SmoothQuant (alpha " + std::to_string(job.request.smoothQuantAlpha) + ", groups " +
          quant::smoothGroupsName(job.smoothOptions.groups) + ") applied to " +
          std::to_string(sq.groups.size()) + " groups");
  // W of the spectra: what SmoothQuant made of the full-precision weights, set
  // aside on disk until the spectra (a copy in memory where the disk refuses).
  if (!job.request.spectra)
    return;
  for (auto &[key, weight] :
       selectedLinears(job.loaded->config, job.model->weights(), job.scheme.layers)) {
    const std::optional<size_t> handle = job.spill ? job.spill->keep(weight) : std::nullopt;
    if (handle)
      job.spectraStartHandles[key] = *handle;
    else
      job.spectraStartWeights[key] = weight.clone();
  }
}

// A reference the job loaded itself sets aside what the method replaces, in
// an unlinked file beside the run store; the disk refusing costs memory, not the run.
void makeSpill(Job &job) {
  if (!job.ownReference)
    return;
  try {
    const fs::path dir = fs::absolute(fs::path(job.store->path())).parent_path();
    job.spill = std::make_unique<ReferenceSpill>(
        job.loaded->config, job.reference->weights(), job.model->weights(), *job.guard,
        dir.string(), [&job](const std::string &message) { job.warn(message); });
  } catch (const FileError &e) {
    job.warn(std::string(e.what()) + "; the full-precision weights stay in memory");
  }
}

// Every spilled linear back, for the stages that read the whole reference.
void restoreReference(Job &job) {
  if (job.spill && job.spill->spilledTensors() > 0) {
    job.say("reading the " + std::to_string(job.spill->spilledTensors()) +
            " full-precision linears set aside back into memory (" +
            std::to_string(job.spill->spilledBytes() >> 20) + " MiB)");
    job.spill->restoreAll();
  }
}

void methodStage(Job &job) {
  std::unique_ptr<ReleasingObserver> releasing;
  ProgressObserver *observer = job.recorder.get();
  if (job.spill) {
    releasing = std::make_unique<ReleasingObserver>(observer, *job.spill);
    observer = releasing.get();
  }
  quant::MethodContext ctx{
      *job.model, job.scheme, job.calibration, job.hyper, uint64_t(job.request.seed),
      observer,   job.cancel, job.workDir};
  WeightArena arena =
      quant::weightArenaFor(job.loaded->config, job.model->weights(), job.scheme.layers);
  ctx.arena = &arena;
  ctx.stash = job.spill.get();
  ctx.spectra = job.request.spectra;
  // The checkpoint outlives the method: a run interrupted while it evaluates
  // or exports resumes without redoing the reconstruction.
  ctx.keepCheckpoint = job.checkpoints;
  job.report = job.method->run(ctx);
  if (job.spill) {
    job.guard->check("the method");
    job.spill->releaseAll(); // methods that report no block or layer as it finishes
    releaseFreeMemory();     // and what the method's own state and temporaries held
    char line[160];
    std::snprintf(line, sizeof line,
                  "%zu full-precision linears the method replaced set aside on disk (%.0f MiB) "
                  "until the evaluation and exports need them",
                  job.spill->spilledTensors(), double(job.spill->spilledBytes()) / (1 << 20));
    if (job.spill->spilledTensors() > 0)
      job.say(line);
  }
  // Reconstruction losses over the blocks (training and held-out samples), with
  // the run's other figures.
  for (const char *name : {"recon_train_loss_mean", "recon_heldout_loss_mean"})
    if (job.report.extra.contains(name))
      job.outcome.metrics[name] = job.report.extra.at(name).get<double>();
}

// A model stored in bf16 or f16 is exported in those types, and what is
// evaluated must be what is exported: every tensor the run changed (Ŵ, and
// SmoothQuant's rescaled weights and norms) is rounded here to its source
// type, before activation calibration, evaluation and export see it. The
// engine itself computes in float32 throughout (the loader widens every
// tensor); this is the one place the source type comes back. Low-rank factors
// (LQER) stay float32: the packed export stores them so, and the HF export
// folds them into the weight, rounding the sum once.
void sourceTypeStage(Job &job) {
  job.sourceTypes = sourceFloatTypes(*job.loaded);
  std::map<at::ScalarType, int64_t> counts;
  for (const auto &[name, type] : job.sourceTypes)
    ++counts[type];
  // config.json's torch_dtype: the type most tensors have.
  int64_t most = 0;
  for (const auto &[type, count] : counts)
    if (count > most) {
      most = count;
      job.exportType = type;
    }
  if (counts.empty() || (counts.size() == 1 && counts.begin()->first == at::kFloat))
    return; // a float32 model: nothing to round
  // What is untouched is told by identity with the reference.
  restoreReference(job);

  const ModelConfig &config = job.loaded->config;
  std::map<std::string, at::Tensor> reference;
  for (const auto &[name, tensor] : hfTensorsFromWeights(config, job.reference->weights()))
    reference[name] = tensor;
  ModelWeights &w = job.model->weights();
  const bool tied =
      w.lmHead.defined() && w.tokenEmbedding.defined() &&
      (w.lmHead.is_same(w.tokenEmbedding) || (w.lmHead.data_ptr() == w.tokenEmbedding.data_ptr() &&
                                              w.lmHead.sizes() == w.tokenEmbedding.sizes()));
  int64_t rounded = 0, changed = 0;
  std::map<std::string, int64_t> byType;
  at::NoGradGuard noGrad;
  for (const auto &[name, slot] : hfTensorSlotsOfWeights(config, w)) {
    const auto type = job.sourceTypes.find(name);
    if (type == job.sourceTypes.end() || type->second == at::kFloat || !slot->defined())
      continue;
    const auto original = reference.find(name);
    if (original != reference.end() && slot->is_same(original->second))
      continue; // untouched: still the source's own values
    const at::Tensor r = slot->to(type->second).to(slot->scalar_type());
    changed += (r != *slot).sum().item<int64_t>();
    *slot = r;
    ++rounded;
    ++byType[type->second == at::kHalf ? "F16" : "BF16"];
  }
  if (tied)
    w.lmHead = w.tokenEmbedding;
  if (rounded == 0)
    return;
  std::string types;
  for (const auto &[type, n] : byType)
    types += (types.empty() ? "" : ", ") + std::to_string(n) + " to " + type;
  const std::string note = "tensors the run changed rounded to their source types (" + types +
                           "; " + std::to_string(changed) + " values changed)";
  job.info.notes += (job.info.notes.empty() ? "" : "; ") + note;
  job.store->setNotes(job.outcome.runId, job.info.notes);
  job.say(note);
}

// Activation quantizers (A8, KV8) go on after the weights are final; static
// steps are calibrated on the quantized model's own activations.
void activationStage(Job &job) {
  if (job.scheme.activation.mode == quant::ActivationMode::None && !job.scheme.kv8)
    return;
  quant::ActivationInstallReport a = quant::installActivationQuantizers(
      *job.model, job.scheme, job.calibration, job.beating(), job.cancel);
  job.say("activation quantizers: " + std::to_string(a.inputTransforms) + " linear inputs, " +
          std::to_string(a.outputTransforms) + " KV outputs");
}

// Storage of the quantized linears per weight (codes, steps, zero points and
// kept low-rank factors), over the layers the method quantized.
double bitsPerWeight(Job &job) {
  const bool keepsFactors = job.method->name() == "lqer" || job.method->name() == "l2qer";
  const int64_t rank = keepsFactors ? job.hyper.value("rank", int64_t(0)) : 0;
  const int factorBits = keepsFactors ? job.hyper.value("factor_bits", 0) : 0;
  double bits = 0, weights = 0;
  ModelWeights &w = job.model->weights();
  for (const quant::LayerReport &l : job.report.layers) {
    if (l.error.block < 0 || l.error.block >= int64_t(w.blocks.size()))
      continue;
    const at::Tensor *weight = nullptr;
    for (const auto &[role, linear] : blockLinears(job.loaded->config, w.blocks[l.error.block]))
      if (role == l.error.layer)
        weight = &linear->weight;
    if (!weight || !weight->defined() || weight->dim() != 2)
      continue;
    const int64_t out = weight->size(0), in = weight->size(1);
    const int64_t r = std::min({rank, out, in});
    bits += quant::effectiveBitsPerWeight(job.scheme.weightFor(in), out, in, r, factorBits) *
            double(out) * double(in);
    weights += double(out) * double(in);
  }
  return weights > 0 ? bits / weights : 0.0;
}

void layerRecordStage(Job &job) {
  if (!job.report.layers.empty())
    job.outcome.metrics["bits_per_weight"] = bitsPerWeight(job);
  std::vector<LayerStats> layers;
  for (const quant::LayerReport &l : job.report.layers) {
    layers.push_back(
        {int(l.error.block), l.error.layer, l.error.mse, l.error.sqnrDb, l.learnableParams});
    if (!job.recorder->layerReported(int(l.error.block), l.error.layer))
      quant::reportLayer(job.observer, l.error); // methods that report only at the end
  }
  job.store->appendLayerStats(job.outcome.runId, layers);
  if (!job.report.extra.empty())
    job.store->setNotes(job.outcome.runId, job.info.notes + (job.info.notes.empty() ? "" : "; ") +
                                               "method: " + job.report.extra.dump());
}

void spectraStage(Job &job) {
  if (!job.request.spectra)
    return;
  const auto spectraStart = Clock::now();
  // Each layer's reference weight as the layer's spectra need it: from the
  // spill where it was set aside, so the whole reference never comes back.
  const ModelConfig &config = job.loaded->config;
  ModelWeights &reference = job.reference->weights();
  ReferenceSpill *spill = job.spill.get();
  const auto startWeight = [&](int64_t block, const std::string &role) {
    if (const auto h = job.spectraStartHandles.find({block, role});
        h != job.spectraStartHandles.end())
      return spill->read(h->second);
    if (const auto w = job.spectraStartWeights.find({block, role});
        w != job.spectraStartWeights.end())
      return w->second;
    if (spill) {
      const at::Tensor w = spill->weightOf(block, role);
      if (w.defined())
        return w;
    }
    return layerWeight(config, reference, block, role);
  };
  const std::vector<SpectrumRecord> spectra =
      layerSpectra(job.report, config, startWeight, job.model->weights(), job.cancel);
  job.spectraStartWeights.clear();
  job.spectraStartHandles.clear();
  job.store->appendSpectra(job.outcome.runId, spectra);
  char line[128];
  std::snprintf(line, sizeof line, "spectra: %zu recorded in %.2f s", spectra.size(),
                secondsSince(spectraStart));
  job.say(line);
}

// Perplexity, KL and top-1 of the quantized model against the reference on
// one text; metric names get the prefix ("" or "ood_").
void evaluateOn(Job &job, const std::string &text, const std::string &what,
                const std::string &prefix) {
  const QuantizeRequest &r = job.request;
  const std::vector<int32_t> tokens = job.loaded->tokenizer->encode(text, true);
  c10::InferenceMode inference;
  job.say("evaluating on " + what + " against the full-precision reference (" +
          (job.loaded->baselineNote.empty() ? std::string("weights as stored")
                                            : job.loaded->baselineNote) +
          ")");
  // The reference's spilled blocks come back one at a time for each group of
  // windows (block_stream.h): never all at once.
  BlockLoader *loader =
      job.spill && job.spill->spilledTensors() > 0 ? &job.spill->blocks() : nullptr;
  CompareResult c = compareToReference(*job.model, *job.reference, tokens, r.evalSeqLen,
                                       job.beating(), job.cancel, r.evalMaxWindows, loader);
  auto &m = job.outcome.metrics;
  m[prefix + "perplexity"] = c.perplexity;
  m[prefix + "reference_perplexity"] = c.referencePerplexity;
  m[prefix + "kl"] = c.meanKl;
  m[prefix + "max_kl"] = c.maxKl;
  m[prefix + "top1"] = c.top1Agreement;
  m[prefix + "eval_tokens"] = double(c.tokens);
  m[prefix + "eval_seconds"] = c.seconds;
}

void evaluateStage(Job &job) {
  const QuantizeRequest &r = job.request;
  if (!r.evaluate)
    return;
  if (r.evaluationText.empty())
    evaluateOn(job, job.split.evaluation, "the held-out text (in domain)", "");
  else
    evaluateOn(job, readTextFile(r.evaluationText), r.evaluationText, "");
  if (r.evaluateOutOfDomain)
    evaluateOn(job, job.outOfDomain.text,
               r.outOfDomainText.empty() ? std::string("the out-of-domain text (Debian Policy)")
                                         : r.outOfDomainText,
               "ood_");
}

// The GGUF file: the codes on the grid the method reports, in llama.cpp's
// block types (checked exact), the rest float32 unless asked otherwise
// (--gguf-float: F16, or Q8_0 / Q6_K rounded at export, with a warning).
void ggufExportStage(Job &job) {
  const QuantizeRequest &r = job.request;
  const PackedModelContents packed = quant::packQuantizedModel(
      job.loaded->config, job.model->weights(), job.reference->weights(), job.scheme,
      job.method->name(), job.report.grids.empty() ? nullptr : &job.report.grids, nullptr,
      &job.sourceTypes);
  GgufExportOptions options;
  options.overwrite = r.overwrite;
  options.floatTypes = parseGgufFloatTypes(r.ggufFloatTypes);
  options.runId = job.outcome.runId;
  options.note = [&job](LogLevel level, const std::string &line) {
    if (level == LogLevel::Warning)
      job.warn(line);
    else
      job.say(line);
  };
  const ExportResult e = exportGguf(r.ggufPath, packed, ggufExportSourceFor(*job.loaded), options,
                                    job.beating(), job.cancel);
  job.outcome.ggufPath = e.path;
  job.say("GGUF export: " + e.path + " (" + std::to_string(packed.quantized.size()) +
          " quantized tensors; lrq eval " + e.path + ")");
  if (job.scheme.activation.mode != quant::ActivationMode::None || job.scheme.kv8)
    job.say("the GGUF file holds the quantized weights only: llama.cpp runs it with "
            "full-precision activations, not the scheme's activation / KV quantizers");
  for (const PackedTensor &t : packed.quantized)
    if (t.valueDtype != at::kFloat) {
      job.say("the GGUF file holds the grid values s (q - z) exactly; the run evaluated them "
              "rounded to the model's " +
              std::string(c10::toString(t.valueDtype)) +
              ", so its figures may differ slightly from the file's");
      break;
    }
}

void exportStage(Job &job) {
  const QuantizeRequest &r = job.request;
  if (r.exportDir.empty() && r.packedPath.empty() && r.ggufPath.empty() &&
      r.compressedTensorsDir.empty())
    return;
  // The packed, GGUF and compressed-tensors writers take each tensor's steps
  // from the grid the method reported; only a linear without a grid needs the
  // reference's weight, and then the reference comes back whole (the HF
  // folder holds the model's weights alone).
  if ((!r.packedPath.empty() || !r.ggufPath.empty() || !r.compressedTensorsDir.empty()) &&
      quant::packNeedsOriginalLinears(job.loaded->config, job.scheme,
                                      job.report.grids.empty() ? nullptr : &job.report.grids))
    restoreReference(job);
  const std::string metadata = nlohmann::json{
      {"method", job.method->name()},
      {"hyperparameters", job.recordedHyper},
      {"scheme", nlohmann::json::parse(job.scheme.toJson())},
      {"run_id", job.outcome.runId},
      {"source", job.modelPath},
      {"full_precision_reference",
       job.loaded->baselineNote}}.dump();
  if (!r.exportDir.empty()) {
    ExportOptions options;
    options.dtype = job.exportType;
    options.tensorDtypes = job.sourceTypes;
    options.overwrite = r.overwrite;
    ExportResult e = exportHfDirectory(r.exportDir, job.loaded->config, job.model->weights(),
                                       exportTokenizerFor(*job.loaded), metadata, options,
                                       job.beating(), job.cancel);
    job.outcome.exportDir = e.path;
    job.say("exported " + std::to_string(e.tensors) + " tensors to " + e.path);
  }
  if (!r.packedPath.empty()) {
    PackedModelContents packed = quant::packQuantizedModel(
        job.loaded->config, job.model->weights(), job.reference->weights(), job.scheme,
        job.method->name(), job.report.grids.empty() ? nullptr : &job.report.grids, nullptr,
        &job.sourceTypes);
    embedTokenizer(packed, exportTokenizerFor(*job.loaded));
    packed.extraMetadataJson = metadata;
    ExportOptions options;
    options.overwrite = r.overwrite;
    ExportResult e = writePackedModel(r.packedPath, packed, options, job.beating(), job.cancel);
    job.outcome.packedPath = e.path;
    job.say("packed export: " + e.path);
  }
  if (!r.ggufPath.empty())
    ggufExportStage(job);
  if (!r.compressedTensorsDir.empty()) {
    quant::CompressedTensorsRun run;
    run.config = &job.loaded->config;
    run.quantized = &job.model->weights();
    run.original = &job.reference->weights();
    run.scheme = &job.scheme;
    run.method = job.method->name();
    run.hyperparameters = &r.hyperparameters;
    run.grids = job.report.grids.empty() ? nullptr : &job.report.grids;
    run.valueDtypes = &job.sourceTypes;
    run.metadataJson = metadata;
    ExportOptions options;
    options.dtype = job.exportType;
    options.tensorDtypes = job.sourceTypes;
    options.overwrite = r.overwrite;
    quant::CompressedTensorsStats stats;
    ExportResult e =
        quant::exportCompressedTensors(r.compressedTensorsDir, run, exportTokenizerFor(*job.loaded),
                                       options, &stats, job.beating(), job.cancel);
    job.outcome.compressedTensorsDir = e.path;
    job.say("compressed-tensors export: " + e.path + " (" + std::to_string(stats.layers) +
            " layers; " + std::to_string(stats.inexactValues) +
            " values decode other than the evaluated weight)");
  }
  // Recorded once complete: what the desktop offers to open.
  job.store->setExports(job.outcome.runId, job.outcome.exportDir, job.outcome.packedPath,
                        job.outcome.ggufPath, job.outcome.compressedTensorsDir);
}

void recordFinishStage(Job &job) {
  // The whole process's peak: loading, both models, calibration caches,
  // the method's working set, evaluation and export.
  job.outcome.metrics["peak_rss_mib"] = peakRssMiB();
  for (const auto &[name, value] : job.outcome.metrics)
    job.store->setMetric(job.outcome.runId, name, value);
  job.outcome.seconds = secondsSince(job.start);
  job.store->finishRun(job.outcome.runId, RunStatus::Finished, {},
                       job.earlierSeconds + job.outcome.seconds);
  if (job.checkpoints) {
    // Only now that the run is recorded finished: until here it may resume.
    std::error_code ec;
    fs::remove_all(recon::BlockReconstructor::checkpointDir(job.workDir), ec);
    fs::remove(job.requestFile, ec);
    // The run's own folder (also when a resume named it), only when empty.
    if (job.request.workDir.empty() || job.workDir == defaultWorkDir(job.outcome.runId))
      fs::remove(job.workDir, ec);
  }
}

// The stages after the run exists; a failure or cancel is recorded with the run.
QuantizeOutcome runRecordedStages(Job &job) {
  recordStartStage(job);
  try {
    makeSpill(job);
    smoothQuantStage(job);
    methodStage(job);
    job.guard->check("the method");
    sourceTypeStage(job);
    activationStage(job);
    layerRecordStage(job);
    evaluateStage(job); // before the spectra, which read the reference layer by layer
    spectraStage(job);
    exportStage(job);
    job.guard->check("evaluation and export");
    recordFinishStage(job);
  } catch (const Cancelled &) {
    job.recorder->cancelled();
    if (job.earlierSeconds > 0)
      job.store->finishRun(job.outcome.runId, RunStatus::Cancelled, "cancelled",
                           job.earlierSeconds + secondsSince(job.start));
    throw;
  } catch (const std::exception &e) {
    job.store->finishRun(job.outcome.runId, RunStatus::Failed, e.what(),
                         job.earlierSeconds + secondsSince(job.start));
    throw;
  }
  return job.outcome;
}

} // namespace

QuantizeOutcome runQuantizeJob(const QuantizeRequest &request, ProgressObserver *observer,
                               const CancelToken *cancel) {
  Job job(request, observer, cancel);
  checkStage(job);
  loadStage(job);
  calibrateStage(job);
  return runRecordedStages(job);
}

QuantizeOutcome runQuantizeJob(const QuantizeRequest &request, const ModelSession &session,
                               ProgressObserver *observer, const CancelToken *cancel) {
  QuantizeRequest checked = request;
  checked.model = session.summary().path; // the open model, whatever the request named
  Job job(checked, observer, cancel);
  checkStage(job);
  borrowStage(job, session);
  calibrateStage(job);
  return runRecordedStages(job);
}

} // namespace lrq
