#include "core/session/model_session.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "core/analysis/tensor_analysis.h"
#include "core/common/error.h"
#include "core/common/json_limits.h"
#include "core/common/memory.h"
#include "core/data/default_assets.h"
#include "core/eval/compare.h"
#include "core/eval/generate.h"
#include "core/eval/perplexity.h"
#include "core/io/export.h"
#include "core/io/model_loader.h"
#include "core/io/safetensors.h"
#include "core/model/decoder.h"
#include "core/model/tensor_spill.h"
#include "core/quant/scheme.h"
#include "core/session/model_session_access.h"

namespace lrq {
namespace {

std::mutex runtimeMutex;
std::string runtimeDevice = "cpu";

at::Device currentDevice() {
  std::lock_guard<std::mutex> lock(runtimeMutex);
  return runtimeDevice == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
}

std::string architectureName(const ModelConfig &config) {
  if (!config.architectureName.empty())
    return config.architectureName;
  return config.arch == Architecture::Opt ? "OPTForCausalLM" : "LlamaForCausalLM";
}

std::string blockPrefix(const ModelConfig &config, int block) {
  return (config.arch == Architecture::Opt ? "model.decoder.layers." : "model.layers.") +
         std::to_string(block) + ".";
}

bool endsWith(const std::string &text, const std::string &suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The lrq metadata of an export at path (an HF directory, a file in one, or a
// packed .safetensors file); empty when there is none or it cannot be read.
QuantizationInfo quantizationOf(const std::string &path) {
  namespace fs = std::filesystem;
  QuantizationInfo q;
  nlohmann::json meta, scheme;
  std::error_code ec;
  // Copies and dump() recurse: JSON nested too deeply to walk counts as absent.
  auto parseShallow = [](const std::string &text) {
    if (!jsonLimitProblem(text, defaultJsonLimits()).empty())
      return nlohmann::json(nlohmann::json::value_t::discarded);
    return nlohmann::json::parse(text, nullptr, false);
  };
  try {
    if (fs::is_regular_file(path, ec) && endsWith(path, ".safetensors") &&
        isPackedModelFile(path)) {
      SafetensorsReader reader(path);
      const auto &m = reader.metadata();
      q.kind = "packed";
      if (auto it = m.find("metadata"); it != m.end())
        meta = parseShallow(it->second);
      if (auto it = m.find("scheme"); it != m.end())
        scheme = parseShallow(it->second);
      if (auto it = m.find("method"); it != m.end())
        q.method = it->second;
    } else {
      const fs::path dir =
          fs::is_directory(path, ec) ? fs::path(path) : fs::path(path).parent_path();
      const fs::path file = dir / "lrq_metadata.json";
      if (!fs::is_regular_file(file, ec))
        return q;
      meta = parseShallow(readTextFileLimited(file.string(), defaultJsonLimits().maxBytes));
      q.kind = "hf-directory";
    }
    if (!meta.is_object())
      meta = nlohmann::json::object();
    if (q.method.empty())
      q.method = meta.value("method", std::string());
    if (!scheme.is_object() && meta.contains("scheme"))
      scheme = meta["scheme"];
    q.runId = meta.value("run_id", std::string());
    q.source = meta.value("source", std::string());
    q.reference = meta.value("full_precision_reference", std::string());
    if (scheme.is_object()) {
      q.scheme = scheme.value("name", std::string("custom"));
      try {
        q.schemeDescription = quant::QuantScheme::fromJson(scheme.dump()).describe();
      } catch (const Error &) {
      }
    }
  } catch (const std::exception &) {
    return QuantizationInfo{};
  }
  return q;
}

// Length of the longest prefix of text that ends on a UTF-8 character boundary.
size_t completeUtf8Prefix(const std::string &text) {
  size_t end = text.size();
  size_t back = 0;
  while (back < 4 && back < end &&
         (static_cast<unsigned char>(text[end - 1 - back]) & 0xC0) == 0x80)
    ++back;
  if (back >= end)
    return end;
  unsigned char lead = static_cast<unsigned char>(text[end - 1 - back]);
  size_t need = lead < 0x80           ? 1
                : (lead >> 5) == 0x6  ? 2
                : (lead >> 4) == 0xE  ? 3
                : (lead >> 3) == 0x1E ? 4
                                      : 1;
  return back + 1 >= need ? end : end - 1 - back;
}

} // namespace

void applyRuntimeOptions(const RuntimeOptions &options) {
  int threads =
      options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, threads));
  if (options.device != "cpu" && options.device != "cuda")
    throw Error("device '" + options.device + "' is not supported (use cpu or cuda)");
  if (options.device == "cuda" && !at::hasCUDA())
    throw Error("--device cuda: this LibTorch build has no CUDA support or no GPU is visible; "
                "build against a CUDA LibTorch (pass Torch_DIR) or use --device cpu");
  std::lock_guard<std::mutex> lock(runtimeMutex);
  runtimeDevice = options.device;
}

int runtimeThreads() {
  return at::get_num_threads();
}

void lowerComputePriority() {
#ifdef __linux__
  constexpr int kNice = 5;
  auto lower = [] {
    const pid_t tid = pid_t(::syscall(SYS_gettid));
    errno = 0;
    const int current = ::getpriority(PRIO_PROCESS, id_t(tid));
    if (errno == 0 && current < kNice)
      ::setpriority(PRIO_PROCESS, id_t(tid), kNice);
  };
  lower(); // the calling thread, which also runs one share of every parallel region
  // One item per intra-op thread: each lowers itself.
  const int64_t threads = at::get_num_threads();
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) { lower(); });
#endif
}

namespace {

// A session's block linears on disk, read back one block at a time for a
// pass over a group of windows (block_stream.h).
class AsideBlocks : public BlockLoader {
public:
  // Sets the block linears of a whole session aside (setBlocksAside).
  AsideBlocks(const ModelConfig &config, ModelWeights &weights,
              std::map<std::string, at::Tensor> &tensors, const std::string &dir)
      : spill_(std::make_unique<TensorSpill>(dir)), blocks_(*spill_) {
    struct Taken { // to give back should the disk refuse midway
      Linear *linear;
      size_t handle;
      std::vector<std::string> names; // the loaded tensors that were this weight
    };
    std::vector<Taken> taken;
    taken.reserve(weights.blocks.size() * 8);
    try {
      for (int64_t b = 0; b < int64_t(weights.blocks.size()); ++b)
        for (auto &[role, linear] : blockLinears(config, weights.blocks[size_t(b)])) {
          if (!linear->weight.defined() || !linear->weight.device().is_cpu())
            continue;
          // Recorded before anything changes, so that a failure restores it.
          taken.push_back({linear, spill_->put(linear->weight), {}});
          Taken &e = taken.back();
          for (const auto &[name, t] : tensors)
            if (t.is_same(linear->weight))
              e.names.push_back(name);
          for (const std::string &name : e.names)
            tensors.erase(name);
          blocks_.add(b, role, linear, e.handle);
          linear->weight = at::Tensor();
        }
    } catch (...) { // what was set aside comes back: the session stays whole
      for (Taken &e : taken) {
        try {
          if (!e.linear->weight.defined()) // dropped: only the disk has it
            e.linear->weight = spill_->get(e.handle);
          for (const std::string &name : e.names)
            tensors[name] = e.linear->weight;
        } catch (...) { // the disk refuses the read too: that linear stays undefined
        }
      }
      throw;
    }
    releaseFreeMemory();
  }
  // Adopts the linears a load put in spill (openBlocksAside): handles maps each
  // one's HF name to its handle, and tensors holds its stand-in there, which
  // the model's linear also holds until now.
  AsideBlocks(const ModelConfig &config, ModelWeights &weights,
              std::map<std::string, at::Tensor> &tensors, std::unique_ptr<TensorSpill> spill,
              const std::map<std::string, size_t> &handles)
      : spill_(std::move(spill)), blocks_(*spill_) {
    struct Found {
      int64_t block;
      std::string role;
      Linear *linear;
    };
    std::map<const void *, Found> byStandIn;
    for (int64_t b = 0; b < int64_t(weights.blocks.size()); ++b)
      for (auto &[role, linear] : blockLinears(config, weights.blocks[size_t(b)]))
        if (linear->weight.defined())
          byStandIn[linear->weight.unsafeGetTensorImpl()] = {b, role, linear};
    std::vector<Linear *> adopted;
    for (const auto &[name, handle] : handles) {
      auto it = byStandIn.find(tensors.at(name).unsafeGetTensorImpl());
      if (it == byStandIn.end())
        throw Error("loading with block weights aside: " + name + " is not a block linear");
      blocks_.add(it->second.block, it->second.role, it->second.linear, handle);
      adopted.push_back(it->second.linear);
      tensors.erase(name);
    }
    for (Linear *linear : adopted)
      linear->weight = at::Tensor();
  }
  void load(int64_t block) override { blocks_.load(block); }
  void unload(int64_t block) override { blocks_.unload(block); }
  int64_t bytes() const { return spill_->bytes(); }
  int64_t bytesAside() const override { return bytes(); }

private:
  std::unique_ptr<TensorSpill> spill_;
  SpilledBlockLinears blocks_; // every block linear, in spill_
};

// "model.layers.3.mlp.up_proj.weight", "model.decoder.layers.0.fc1.weight": a
// 2-D weight inside a block is one of its linears in every layout read here.
bool isBlockLinearWeight(const std::string &name, const at::Tensor &t) {
  const size_t at = name.find("layers.");
  return t.dim() == 2 && at != std::string::npos && at + 7 < name.size() &&
         std::isdigit(static_cast<unsigned char>(name[at + 7])) && endsWith(name, ".weight");
}

} // namespace

struct ModelSession::Impl {
  LoadedModel loaded;
  std::unique_ptr<DecoderModel> model;
  ModelSummary summary;
  std::unique_ptr<AsideBlocks>
      aside; // openBlocksAside / setBlocksAside: perplexity and compare only

  void requireWhole() const {
    if (aside)
      throw Error(loaded.path +
                  ": this session's block weights are set aside on disk; it serves only for "
                  "perplexity and comparisons");
  }

  const at::Tensor &tensor(const std::string &name) const {
    requireWhole();
    auto it = loaded.tensors.find(name);
    if (it == loaded.tensors.end())
      throw Error("no tensor named '" + name + "' in " + loaded.path +
                  " (see 'lrq info' for the names)");
    return it->second;
  }

  const Tokenizer &tokenizer() const {
    if (!loaded.tokenizer)
      throw FileError(loaded.path, "the model files contain no tokenizer");
    return *loaded.tokenizer;
  }

  void buildSummary() {
    const ModelConfig &c = loaded.config;
    ModelSummary &s = summary;
    s.path = loaded.path;
    s.format = loaded.format;
    s.architecture = architectureName(c);
    s.baselineNote = loaded.baselineNote;
    s.numLayers = c.numLayers;
    s.hiddenSize = c.hiddenSize;
    s.intermediateSize = c.intermediateSize;
    s.numHeads = c.numHeads;
    s.numKvHeads = c.numKvHeads;
    s.headDim = c.headDim;
    s.vocabSize = c.vocabSize;
    s.maxPositions = c.maxPositions;
    s.ropeTheta = c.ropeTheta;
    s.tieEmbeddings = c.tieEmbeddings;
    s.hasTokenizer = loaded.tokenizer != nullptr;
    for (const TensorSource &src : loaded.sources) {
      TensorSummary t;
      t.name = src.name;
      t.sourceName = src.sourceName;
      t.dtype = src.sourceType;
      t.shape = src.shape;
      t.numel = 1;
      for (int64_t d : src.shape)
        t.numel *= d;
      s.parameters += t.numel;
      s.tensors.push_back(std::move(t));
    }
    for (int b = 0; b < static_cast<int>(c.numLayers); ++b) {
      BlockSummary block;
      block.index = b;
      const std::string prefix = blockPrefix(c, b);
      for (const TensorSummary &t : s.tensors)
        if (t.name.rfind(prefix, 0) == 0)
          block.parameters += t.numel;
      for (const auto &[role, linear] : blockLinears(c, model->weights().blocks[b])) {
        (void)linear;
        for (const TensorSummary &t : s.tensors) {
          if (t.name.rfind(prefix, 0) == 0 && endsWith(t.name, "." + role + ".weight") &&
              t.shape.size() == 2) {
            LinearSummary l;
            l.role = role;
            l.tensor = t.name;
            l.outFeatures = t.shape[0];
            l.inFeatures = t.shape[1];
            l.dtype = t.dtype;
            l.parameters = t.numel;
            block.linears.push_back(l);
            break;
          }
        }
      }
      s.blocks.push_back(std::move(block));
    }
  }
};

ModelSession::ModelSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

const LoadedModel &ModelSessionAccess::loaded(const ModelSession &session) {
  session.impl_->requireWhole();
  return session.impl_->loaded;
}

DecoderModel &ModelSessionAccess::decoder(const ModelSession &session) {
  session.impl_->requireWhole();
  return *session.impl_->model;
}

int64_t ModelSession::setBlocksAside(const std::string &dir) {
  if (!impl_->aside) {
    impl_->aside = std::make_unique<AsideBlocks>(impl_->loaded.config, impl_->model->weights(),
                                                 impl_->loaded.tensors, dir);
    if (impl_->aside->bytes() == 0) // nothing on the CPU to set aside (a GPU model)
      impl_->aside.reset();
  }
  return impl_->aside ? impl_->aside->bytes() : 0;
}
ModelSession::~ModelSession() = default;

std::unique_ptr<ModelSession> ModelSession::open(const std::string &pathOrDefault,
                                                 ProgressObserver *observer,
                                                 const CancelToken *cancel) {
  return openWith(pathOrDefault, "", observer, cancel);
}

std::unique_ptr<ModelSession> ModelSession::openBlocksAside(const std::string &pathOrDefault,
                                                            const std::string &dir,
                                                            ProgressObserver *observer,
                                                            const CancelToken *cancel) {
  return openWith(pathOrDefault, currentDevice().type() == at::kCPU ? dir : "", observer, cancel);
}

std::unique_ptr<ModelSession> ModelSession::openWith(const std::string &pathOrDefault,
                                                     const std::string &asideDir,
                                                     ProgressObserver *observer,
                                                     const CancelToken *cancel) {
  std::string path = pathOrDefault == "default" ? ensureDefaultModel(observer) : pathOrDefault;
  auto start = std::chrono::steady_clock::now();
  auto impl = std::make_unique<Impl>();
  // Block linears straight to disk as they load, a stand-in (no storage) left
  // in their place until the session adopts them.
  std::unique_ptr<TensorSpill> spill;
  std::map<std::string, size_t> handles;
  bool refused = false;
  int64_t untrimmed = 0;
  LoadedTensorSink sink;
  if (!asideDir.empty()) {
    try {
      spill = std::make_unique<TensorSpill>(asideDir);
    } catch (const FileError &e) {
      spdlog::warn("loading {} whole into memory: {}", path, e.what());
    }
  }
  if (spill)
    sink = [&](const std::string &name, at::Tensor t) {
      if (refused || !isBlockLinearWeight(name, t))
        return t;
      try {
        handles[name] = spill->put(t);
      } catch (const FileError &e) { // a full disk: what is still to load stays in memory
        spdlog::warn("keeping the rest of {} in memory: {}", path, e.what());
        refused = true;
        handles.erase(name); // a name met twice: the copy kept is this one
        return t;
      }
      at::Tensor standIn = at::empty(t.sizes(), t.options().device(at::kMeta));
      // The heap keeps what the loaded tensors held unless told to give it
      // back (every 32 MiB: once per tensor costs the load 60 %).
      untrimmed += t.nbytes();
      t = at::Tensor();
      if (untrimmed >= (int64_t(32) << 20)) {
        releaseFreeMemory();
        untrimmed = 0;
      }
      return standIn;
    };
  impl->loaded = loadModel(path, observer, cancel, sink);
  impl->model = std::make_unique<DecoderModel>(
      impl->loaded.config, ModelWeights::fromHfTensors(impl->loaded.config, impl->loaded.tensors));
  if (spill && !handles.empty()) {
    impl->aside = std::make_unique<AsideBlocks>(impl->loaded.config, impl->model->weights(),
                                                impl->loaded.tensors, std::move(spill), handles);
    releaseFreeMemory();
  }
  const at::Device device = currentDevice();
  if (device.type() != at::kCPU)
    impl->model->to(device);
  impl->buildSummary();
  impl->summary.quantization = quantizationOf(path);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("loaded {} ({}, {} parameters{}) in {:.2f} s{}", path, impl->summary.architecture,
               impl->summary.parameters,
               impl->summary.baselineNote.empty() ? "" : ", " + impl->summary.baselineNote, seconds,
               impl->aside ? fmt::format(", block weights ({} MiB) set aside on disk in {}",
                                         impl->aside->bytes() >> 20, asideDir)
                           : std::string());
  return std::unique_ptr<ModelSession>(new ModelSession(std::move(impl)));
}

const ModelSummary &ModelSession::summary() const {
  return impl_->summary;
}

TensorStatistics ModelSession::statistics(const std::string &tensor) const {
  c10::InferenceMode guard;
  analysis::Statistics s = analysis::tensorStatistics(impl_->tensor(tensor));
  TensorStatistics out;
  out.numel = s.numel;
  out.min = s.min;
  out.max = s.max;
  out.mean = s.mean;
  out.std = s.std;
  out.absMax = s.absMax;
  out.kurtosis = s.kurtosis;
  return out;
}

Histogram ModelSession::histogram(const std::string &tensor, int bins) const {
  if (bins < 1)
    throw Error("histogram needs at least one bin");
  c10::InferenceMode guard;
  analysis::HistogramBins h = analysis::tensorHistogram(impl_->tensor(tensor), bins);
  Histogram out;
  out.lo = h.lo;
  out.hi = h.hi;
  out.counts = std::move(h.counts);
  return out;
}

std::vector<double> ModelSession::singularValues(const std::string &tensor) const {
  const at::Tensor &t = impl_->tensor(tensor);
  if (t.dim() != 2)
    throw Error("tensor '" + tensor + "' has " + std::to_string(t.dim()) +
                " dimensions; singular values need a matrix");
  c10::InferenceMode guard;
  return analysis::singularValues(t).values;
}

std::vector<int32_t> ModelSession::tokenize(const std::string &text, bool addBos) const {
  return impl_->tokenizer().encode(text, addBos);
}

std::string ModelSession::detokenize(const std::vector<int32_t> &ids) const {
  return impl_->tokenizer().decode(ids);
}

PerplexityReport ModelSession::perplexity(const std::string &text, int64_t seqLen,
                                          ProgressObserver *observer, const CancelToken *cancel,
                                          int64_t maxWindows, ScoredPositions scored) const {
  if (observer)
    observer->log(LogLevel::Info, "Tokenizing " + std::to_string(text.size()) + " bytes of text");
  const Tokenizer &tokenizer = impl_->tokenizer();
  std::vector<int32_t> tokens = tokenizer.encode(text, true);
  PerplexityScoring scoring;
  if (scored == ScoredPositions::SecondHalf) {
    scoring.firstScored = seqLen / 2;
    if (tokenizer.spec().addBos)
      scoring.windowBos = tokenizer.bosId();
  }
  PerplexityResult r = evaluatePerplexity(*impl_->model, tokens, seqLen, observer, cancel,
                                          maxWindows, scoring, impl_->aside.get());
  PerplexityReport out;
  out.perplexity = r.perplexity;
  out.meanNll = r.meanNll;
  out.tokens = r.tokens;
  out.windows = r.windows;
  out.seqLen = r.seqLen;
  out.firstScored = r.firstScored;
  out.seconds = r.seconds;
  out.tokensPerSecond = r.tokensPerSecond;
  return out;
}

ComparisonReport ModelSession::compare(const ModelSession &reference, const std::string &text,
                                       int64_t seqLen, ProgressObserver *observer,
                                       const CancelToken *cancel, int64_t maxWindows) const {
  const ModelSummary &a = impl_->summary;
  const ModelSummary &b = reference.impl_->summary;
  if (a.vocabSize != b.vocabSize)
    throw Error("cannot compare " + a.path + " with " + b.path + ": vocabularies differ (" +
                std::to_string(a.vocabSize) + " vs " + std::to_string(b.vocabSize) + " tokens)");
  if (observer)
    observer->log(LogLevel::Info, "Tokenizing " + std::to_string(text.size()) + " bytes of text");
  const std::vector<int32_t> tokens = impl_->tokenizer().encode(text, true);
  if (reference.impl_->loaded.tokenizer &&
      reference.impl_->tokenizer().encode(text.substr(0, 2000), true) !=
          impl_->tokenizer().encode(text.substr(0, 2000), true))
    throw Error("cannot compare " + a.path + " with " + b.path +
                ": their tokenizers split the text differently");
  c10::InferenceMode guard;
  // A model or reference set aside runs block by block over a group of
  // windows at a time.
  CompareResult c =
      compareToReference(*impl_->model, *reference.impl_->model, tokens, seqLen, observer, cancel,
                         maxWindows, reference.impl_->aside.get(), impl_->aside.get());
  ComparisonReport out;
  out.model.perplexity = c.perplexity;
  out.model.meanNll = c.meanNll;
  out.model.tokens = c.tokens;
  out.model.windows = c.windows;
  out.model.seqLen = c.seqLen;
  out.model.seconds = c.seconds;
  out.model.tokensPerSecond = c.seconds > 0 ? double(c.windows * c.seqLen) / c.seconds : 0;
  out.referencePerplexity = c.referencePerplexity;
  out.meanKl = c.meanKl;
  out.maxKl = c.maxKl;
  out.top1Agreement = c.top1Agreement;
  return out;
}

std::string ModelSession::generate(const std::string &prompt, const GenerationOptions &options,
                                   const std::function<void(const std::string &)> &onText,
                                   const CancelToken *cancel) const {
  const Tokenizer &tokenizer = impl_->tokenizer();
  std::vector<int32_t> promptIds = tokenizer.encode(prompt, true);
  if (promptIds.empty())
    throw Error("generate: the prompt is empty and the tokenizer adds no BOS token");
  SamplingOptions sampling;
  sampling.maxNewTokens = options.maxNewTokens;
  sampling.temperature = options.temperature;
  sampling.topK = options.topK;
  sampling.topP = options.topP;
  sampling.seed = options.seed;
  sampling.eosId = tokenizer.eosId();
  std::vector<int32_t> produced;
  size_t emitted = 0;
  std::string text;
  auto onToken = [&](int32_t id) {
    produced.push_back(id);
    text = tokenizer.decode(produced);
    size_t complete = completeUtf8Prefix(text);
    if (onText && complete > emitted) {
      onText(text.substr(emitted, complete - emitted));
      emitted = complete;
    }
  };
  impl_->requireWhole();
  generateTokens(*impl_->model, promptIds, sampling, onToken, cancel);
  if (onText && text.size() > emitted)
    onText(text.substr(emitted));
  return text;
}

} // namespace lrq
