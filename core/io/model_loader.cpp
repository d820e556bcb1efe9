#include "core/io/model_loader.h"

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include "core/common/error.h"
#include "core/common/regular_file.h"
#include "core/io/export.h"
#include "core/io/file_util.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "core/io/hf_config.h"
#include "core/io/safetensors.h"
#include "core/tokenizer/tokenizer_json.h"

namespace lrq {

namespace {

struct ExpectedTensor {
  std::vector<int64_t> shape;
  bool required = true;
};

// Names and shapes of a LLaMA-family checkpoint in HF layout.
std::map<std::string, ExpectedTensor> llamaTensorLayout(const ModelConfig &c) {
  const int64_t h = c.hiddenSize, v = c.vocabSize, ff = c.intermediateSize;
  const int64_t qRows = c.numHeads * c.headDim, kvRows = c.numKvHeads * c.headDim;
  std::map<std::string, ExpectedTensor> m;
  m["model.embed_tokens.weight"] = {{v, h}};
  m["model.norm.weight"] = {{h}};
  // Tied checkpoints sometimes still store the (identical) head.
  m["lm_head.weight"] = {{v, h}, !c.tieEmbeddings};
  for (int64_t i = 0; i < c.numLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    m[p + "input_layernorm.weight"] = {{h}};
    m[p + "post_attention_layernorm.weight"] = {{h}};
    m[p + "self_attn.q_proj.weight"] = {{qRows, h}};
    m[p + "self_attn.k_proj.weight"] = {{kvRows, h}};
    m[p + "self_attn.v_proj.weight"] = {{kvRows, h}};
    m[p + "self_attn.o_proj.weight"] = {{h, qRows}};
    m[p + "mlp.gate_proj.weight"] = {{ff, h}};
    m[p + "mlp.up_proj.weight"] = {{ff, h}};
    m[p + "mlp.down_proj.weight"] = {{h, ff}};
    if (c.attentionBias) {
      m[p + "self_attn.q_proj.bias"] = {{qRows}};
      m[p + "self_attn.k_proj.bias"] = {{kvRows}};
      m[p + "self_attn.v_proj.bias"] = {{kvRows}};
    }
    if (c.attentionOutBias)
      m[p + "self_attn.o_proj.bias"] = {{h}};
    if (c.mlpBias) {
      m[p + "mlp.gate_proj.bias"] = {{ff}};
      m[p + "mlp.up_proj.bias"] = {{ff}};
      m[p + "mlp.down_proj.bias"] = {{h}};
    }
  }
  return m;
}

// Names and shapes of an OPT checkpoint in HF layout.
std::map<std::string, ExpectedTensor> optTensorLayout(const ModelConfig &c) {
  const int64_t h = c.hiddenSize, v = c.vocabSize, ff = c.intermediateSize;
  const bool projected = c.wordEmbedProjDim > 0 && c.wordEmbedProjDim != h;
  const int64_t e = projected ? c.wordEmbedProjDim : h;
  const std::string d = "model.decoder.";
  std::map<std::string, ExpectedTensor> m;
  m[d + "embed_tokens.weight"] = {{v, e}};
  m[d + "embed_positions.weight"] = {{c.maxPositions + 2, h}}; // OPT offsets positions by 2
  if (projected) {
    m[d + "project_in.weight"] = {{h, e}};
    m[d + "project_out.weight"] = {{e, h}};
  }
  // opt-350m style models (post-norm) have no final layer norm.
  m[d + "final_layer_norm.weight"] = {{h}, false};
  m[d + "final_layer_norm.bias"] = {{h}, false};
  m["lm_head.weight"] = {{v, e}, !c.tieEmbeddings};
  for (int64_t i = 0; i < c.numLayers; ++i) {
    const std::string p = d + "layers." + std::to_string(i) + ".";
    for (const char *proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      m[p + "self_attn." + proj + ".weight"] = {{h, h}};
      if (c.attentionBias)
        m[p + "self_attn." + proj + ".bias"] = {{h}};
    }
    for (const char *norm : {"self_attn_layer_norm", "final_layer_norm"}) {
      m[p + norm + ".weight"] = {{h}};
      m[p + norm + ".bias"] = {{h}};
    }
    m[p + "fc1.weight"] = {{ff, h}};
    m[p + "fc2.weight"] = {{h, ff}};
    if (c.mlpBias) {
      m[p + "fc1.bias"] = {{ff}};
      m[p + "fc2.bias"] = {{h}};
    }
  }
  return m;
}

// Every block holds at least this many tensors (LLaMA family: two norms and
// seven linears; OPT: four attention linears, two fc, two norms with biases).
constexpr int64_t kMinTensorsPerBlock = 9;

// The layout map costs about 2 KB per declared layer: compare the declared
// count with what the file holds before building it.
void checkLayerCount(const ModelConfig &c, int64_t tensorsInFile, const std::string &source) {
  if (c.numLayers > tensorsInFile / kMinTensorsPerBlock)
    throw FileError(source, "declares " + std::to_string(c.numLayers) + " layers, but " +
                                std::to_string(tensorsInFile) +
                                " tensors cannot hold them (each layer needs at least " +
                                std::to_string(kMinTensorsPerBlock) + ")");
}

std::map<std::string, ExpectedTensor> tensorLayout(const ModelConfig &c) {
  return c.arch == Architecture::Opt ? optTensorLayout(c) : llamaTensorLayout(c);
}

// Checkpoints saved from the bare OPTModel lack the "model." prefix.
std::string canonicalName(const ModelConfig &c, const std::string &name) {
  if (c.arch == Architecture::Opt && name.rfind("decoder.", 0) == 0)
    return "model." + name;
  return name;
}

std::string shapeText(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool endsWith(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Non-parameter buffers some checkpoints carry; recomputed by the decoder.
bool isIgnorableBuffer(const std::string &name) {
  return endsWith(name, "rotary_emb.inv_freq") || endsWith(name, ".attn.masked_bias");
}

class LoadProgress {
public:
  LoadProgress(ProgressObserver *observer, const CancelToken *cancel, int64_t total)
      : observer_(observer), cancel_(cancel), total_(total) {
    if (observer_)
      observer_->started("load", total_);
  }
  void check() const {
    if (cancel_)
      cancel_->throwIfCancelled();
  }
  void step(const std::string &name) {
    ++done_;
    if (observer_)
      observer_->progress(done_, total_, name);
  }
  void finish() const {
    if (observer_)
      observer_->finished();
  }

private:
  ProgressObserver *observer_;
  const CancelToken *cancel_;
  int64_t total_;
  int64_t done_ = 0;
};

// Token ids index the embedding: a tokenizer with more tokens than the
// embedding has rows would make valid ids crash the forward pass later.
void checkTokenizerFits(const LoadedModel &m, const std::string &source) {
  if (m.tokenizer && m.tokenizer->vocabSize() > m.config.vocabSize)
    throw FileError(source, "tokenizer has " + std::to_string(m.tokenizer->vocabSize()) +
                                " tokens but the model's embedding has only " +
                                std::to_string(m.config.vocabSize) + " rows");
}

bool hasGgufMagic(const std::string &path) {
  std::FILE *f = ::fdopen(openRegularFile(path), "rb");
  if (!f)
    return false;
  char magic[4] = {};
  const size_t n = std::fread(magic, 1, 4, f);
  std::fclose(f);
  return n == 4 && std::equal(magic, magic + 4, "GGUF");
}

std::vector<std::string> ggufFilesIn(const std::string &dir) {
  std::vector<std::string> out;
  if (DIR *d = ::opendir(dir.c_str())) {
    while (const dirent *e = ::readdir(d)) {
      const std::string name = e->d_name;
      // A .gguf that is there but not a file (a FIFO, a broken link) is
      // reported by optionalRegularFile, not passed over.
      if (endsWith(name, ".gguf") && optionalRegularFile(joinPath(dir, name)))
        out.push_back(joinPath(dir, name));
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// --- GGUF -----------------------------------------------------------------------

LoadedModel loadGguf(const std::string &path, ProgressObserver *observer, const CancelToken *cancel,
                     const LoadedTensorSink &sink) {
  GgufReader g(path);
  LoadedModel m;
  m.path = path;
  m.format = "gguf";
  m.config = modelConfigFromGguf(g);
  const std::string arch = g.getString("general.architecture");
  const bool permuted = ggufArchitecturePermutesRotary(arch);
  checkLayerCount(m.config, static_cast<int64_t>(g.tensors().size()), path);
  const auto layout = llamaTensorLayout(m.config);

  // Map and check every tensor before the (slow) dequantization starts.
  std::vector<std::pair<const GgufTensorInfo *, std::string>> plan;
  std::set<std::string> seen;
  for (const GgufTensorInfo &info : g.tensors()) {
    const std::string hf = hfNameFromGgufTensor(info.name);
    if (hf.empty())
      throw FileError(path, "tensor " + info.name + " has no counterpart in the " + arch +
                                " layout this program runs");
    auto it = layout.find(hf);
    if (it == layout.end())
      throw FileError(path, "tensor " + info.name + " (" + hf + ") is not expected for a " +
                                std::to_string(m.config.numLayers) + "-layer " + arch +
                                " model with this configuration");
    if (info.shape() != it->second.shape)
      throw FileError(path, "tensor " + info.name + " has shape " + shapeText(info.shape()) +
                                ", expected " + shapeText(it->second.shape));
    seen.insert(hf);
    plan.emplace_back(&info, hf);
  }
  for (const auto &[hf, expected] : layout)
    if (expected.required && !seen.count(hf))
      throw FileError(path, "missing tensor for " + hf);

  // The dominant quantized storage type of the linears names the baseline.
  std::map<std::string, int64_t> quantizedElements;
  for (const auto &[info, hf] : plan) {
    if (info->dims.size() != 2 || hf.rfind("model.layers.", 0) != 0)
      continue;
    if (info->type == GgmlType::F32 || info->type == GgmlType::F16 || info->type == GgmlType::BF16)
      continue;
    quantizedElements[info->typeName()] += info->numel;
  }
  if (!quantizedElements.empty()) {
    auto best = std::max_element(quantizedElements.begin(), quantizedElements.end(),
                                 [](const auto &a, const auto &b) { return a.second < b.second; });
    m.baselineNote = "dequantized from " + best->first;
    std::string others;
    for (const auto &kv : quantizedElements)
      if (kv.first != best->first)
        others += (others.empty() ? "" : ", ") + kv.first;
    if (!others.empty())
      m.baselineNote += " (some linears " + others + ")";
  }

  LoadProgress progress(observer, cancel, static_cast<int64_t>(plan.size()));
  for (const auto &[info, hf] : plan) {
    progress.check();
    at::Tensor t = g.loadTensor(*info);
    try {
      if (permuted && (endsWith(hf, "q_proj.weight") || endsWith(hf, "q_proj.bias")))
        t = unpermuteGgufRotary(t, m.config.numHeads);
      else if (permuted && (endsWith(hf, "k_proj.weight") || endsWith(hf, "k_proj.bias")))
        t = unpermuteGgufRotary(t, m.config.numKvHeads);
    } catch (const FileError &) {
      throw;
    } catch (const Error &e) {
      throw FileError(path, "tensor " + info->name + ": " + e.what());
    }
    g.releasePages(*info);
    m.sources.push_back({hf, info->name, info->typeName(), t.sizes().vec()});
    m.tensors[hf] = sink ? sink(hf, std::move(t)) : t;
    progress.step(hf);
  }

  if (ggufHasTokenizer(g)) {
    const TokenizerSpec spec = tokenizerSpecFromGguf(g);
    m.tokenizer = Tokenizer::create(spec);
    checkTokenizerFits(m, path);
  }
  progress.finish();
  return m;
}

// --- safetensors ---------------------------------------------------------------

struct Shard {
  std::unique_ptr<SafetensorsReader> reader;
  std::vector<const SafetensorsTensorInfo *> tensors; // to load, in data order
};

LoadedModel loadSafetensors(const std::string &givenPath, const std::string &dir,
                            const std::vector<std::string> &shardPaths,
                            const SafetensorsIndex *index, ProgressObserver *observer,
                            const CancelToken *cancel, const LoadedTensorSink &sink) {
  LoadedModel m;
  m.path = givenPath;
  m.format = "safetensors";
  const std::string configPath = joinPath(dir, "config.json");
  if (!optionalRegularFile(configPath))
    throw FileError(configPath, "no such file (the model's config.json must lie beside its "
                                "safetensors files)");
  m.config = modelConfigFromHfConfigFile(configPath);

  std::vector<Shard> shards;
  int64_t tensorsInFiles = 0;
  for (const std::string &shardPath : shardPaths) {
    shards.push_back(Shard{std::make_unique<SafetensorsReader>(shardPath), {}});
    tensorsInFiles += static_cast<int64_t>(shards.back().reader->tensors().size());
  }
  checkLayerCount(m.config, tensorsInFiles, configPath);
  const auto layout = tensorLayout(m.config);

  std::set<std::string> seen;
  int64_t total = 0;
  for (Shard &shard : shards) {
    const std::string &shardPath = shard.reader->path();
    for (const SafetensorsTensorInfo &info : shard.reader->tensors()) {
      if (isIgnorableBuffer(info.name))
        continue;
      if (index) {
        auto it = index->weightMap.find(info.name);
        // Tensors the index does not assign to this shard are not the model's.
        if (it == index->weightMap.end() || joinPath(dir, it->second) != shardPath)
          continue;
      }
      const std::string name = canonicalName(m.config, info.name);
      if (!seen.insert(name).second)
        throw FileError(shardPath, "tensor " + info.name + " appears more than once");
      auto it = layout.find(name);
      if (it == layout.end())
        throw FileError(shardPath, "tensor " + info.name + " is not expected for a " +
                                       m.config.architectureName + " with this config.json");
      if (info.shape != it->second.shape)
        throw FileError(shardPath, "tensor " + info.name + " has shape " + shapeText(info.shape) +
                                       ", expected " + shapeText(it->second.shape) +
                                       " from config.json");
      if (info.dtype != "F32" && info.dtype != "F16" && info.dtype != "BF16")
        throw FileError(shardPath, "tensor " + info.name + " has dtype " + info.dtype +
                                       " (supported: F32, F16, BF16)");
      shard.tensors.push_back(&info);
      ++total;
    }
  }
  if (index) {
    for (const auto &[name, file] : index->weightMap)
      if (!seen.count(canonicalName(m.config, name)) && !isIgnorableBuffer(name))
        throw FileError(joinPath(dir, file),
                        "tensor " + name + " listed in " + index->path + " is missing");
  }
  for (const auto &[name, expected] : layout)
    if (expected.required && !seen.count(name))
      throw FileError(shardPaths.size() == 1 ? shardPaths.front() : givenPath,
                      "missing tensor " + name);

  LoadProgress progress(observer, cancel, total);
  for (const Shard &shard : shards) {
    for (const SafetensorsTensorInfo *info : shard.tensors) {
      progress.check();
      at::Tensor t = shard.reader->load(*info);
      shard.reader->releasePages(*info);
      const std::string name = canonicalName(m.config, info->name);
      m.tensors[name] = sink ? sink(name, std::move(t)) : t;
      m.sources.push_back({name, info->name, info->dtype, info->shape});
      progress.step(name);
    }
  }

  const std::string tokenizerJson = joinPath(dir, "tokenizer.json");
  if (optionalRegularFile(tokenizerJson)) {
    const std::string tokenizerConfig = joinPath(dir, "tokenizer_config.json");
    const TokenizerSpec spec = tokenizerSpecFromJsonFiles(
        tokenizerJson, optionalRegularFile(tokenizerConfig) ? tokenizerConfig : std::string());
    m.tokenizer = Tokenizer::create(spec);
    checkTokenizerFits(m, tokenizerJson);
  }
  progress.finish();
  return m;
}

LoadedModel loadSafetensorsIndex(const std::string &givenPath, const std::string &indexPath,
                                 ProgressObserver *observer, const CancelToken *cancel,
                                 const LoadedTensorSink &sink) {
  const SafetensorsIndex index = readSafetensorsIndex(indexPath);
  const std::string dir = parentDirectory(indexPath);
  std::vector<std::string> shardPaths;
  for (const std::string &shard : index.shards) {
    const std::string p = joinPath(dir, shard);
    if (const std::string problem = regularFileProblem(p); !problem.empty())
      throw FileError(p, problem + " (a shard listed in " + indexPath + ")");
    shardPaths.push_back(p);
  }
  return loadSafetensors(givenPath, dir, shardPaths, &index, observer, cancel, sink);
}

LoadedModel loadModelUnnamed(const std::string &path, ProgressObserver *observer,
                             const CancelToken *cancel, const LoadedTensorSink &sink) {
  if (directoryExists(path)) {
    const std::string index = joinPath(path, "model.safetensors.index.json");
    if (optionalRegularFile(index))
      return loadSafetensorsIndex(path, index, observer, cancel, sink);
    const std::string single = joinPath(path, "model.safetensors");
    if (optionalRegularFile(single))
      return loadSafetensors(path, path, {single}, nullptr, observer, cancel, sink);
    const std::vector<std::string> ggufs = ggufFilesIn(path);
    if (ggufs.size() == 1)
      return loadGguf(ggufs.front(), observer, cancel, sink);
    if (ggufs.size() > 1)
      throw FileError(path, "holds " + std::to_string(ggufs.size()) +
                                " .gguf files; name the one to load");
    throw FileError(path, "no model.safetensors, model.safetensors.index.json or .gguf file "
                          "in this directory");
  }
  if (const std::string problem = regularFileProblem(path); !problem.empty())
    throw FileError(path, problem == "no such file" ? "no such file or directory" : problem);
  if (hasGgufMagic(path))
    return loadGguf(path, observer, cancel, sink);
  if (endsWith(path, ".gguf"))
    return loadGguf(path, observer, cancel, sink); // reports the bad magic
  if (endsWith(path, ".index.json"))
    return loadSafetensorsIndex(path, path, observer, cancel, sink);
  if (endsWith(path, ".safetensors") && isPackedModelFile(path)) // LRQ packed export
    return std::move(loadPackedModel(path, observer, cancel, /*foldLowRank=*/true, sink).model);
  if (endsWith(path, ".safetensors"))
    return loadSafetensors(path, parentDirectory(path), {path}, nullptr, observer, cancel, sink);
  if (endsWith(path, "config.json"))
    return loadModel(parentDirectory(path), observer, cancel, sink);
  throw FileError(path, "is neither a GGUF file nor a safetensors model (expected .gguf, "
                        ".safetensors, model.safetensors.index.json or a model directory)");
}

} // namespace

at::ScalarType floatTypeOfSource(const std::string &sourceType) {
  if (sourceType == "F16")
    return at::kHalf;
  if (sourceType == "BF16")
    return at::kBFloat16;
  return at::kFloat;
}

std::map<std::string, at::ScalarType> sourceFloatTypes(const LoadedModel &model) {
  std::map<std::string, at::ScalarType> out;
  for (const TensorSource &s : model.sources)
    out[s.name] = floatTypeOfSource(s.sourceType);
  return out;
}

// Every failure names the file: LibTorch's own errors (a storage size that
// overflows, ...) are reported as problems of the file being loaded.
LoadedModel loadModel(const std::string &path, ProgressObserver *observer,
                      const CancelToken *cancel, const LoadedTensorSink &sink) {
  try {
    return loadModelUnnamed(path, observer, cancel, sink);
  } catch (const c10::Error &e) {
    throw FileError(path, std::string("cannot load: ") + e.what_without_backtrace());
  }
}

} // namespace lrq
