#include "core/io/export.h"

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>

#include "core/common/error.h"
#include "core/common/json_limits.h"
#include "core/common/memory.h"
#include "core/common/text_escape.h"
#include "core/io/file_util.h"
#include "core/io/hf_config.h"
#include "core/io/mapped_file.h"
#include "core/io/safetensors.h"
#include "core/tokenizer/pre_tokenizers.h"
#include "core/tokenizer/tokenizer_json.h"

namespace lrq {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;
namespace fs = std::filesystem;

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// --- streaming safetensors writer ---------------------------------------------------

using StTensor = SafetensorsEntry;

const char *stDtypeName(at::ScalarType t) {
  switch (t) {
  case at::kFloat:
    return "F32";
  case at::kHalf:
    return "F16";
  case at::kBFloat16:
    return "BF16";
  case at::kByte:
    return "U8";
  case at::kChar:
    return "I8";
  case at::kInt:
    return "I32";
  case at::kLong:
    return "I64";
  default:
    throw Error("export: unsupported storage type " + std::string(c10::toString(t)));
  }
}

// Writes tensors one at a time after a header computed from their shapes, so
// that cancellation and progress can happen between tensors.
uint64_t writeSafetensorsStreaming(const std::string &path, const std::vector<StTensor> &tensors,
                                   const std::map<std::string, std::string> &metadata,
                                   const ExportOptions &options, ProgressObserver *observer,
                                   const CancelToken *cancel, int64_t *progressDone,
                                   int64_t progressTotal) {
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto &[k, v] : metadata)
      meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const StTensor &t : tensors) {
    if (!names.insert(t.name).second)
      throw Error("export: tensor " + t.name + " appears twice");
    const uint64_t bytes = uint64_t(t.source.numel()) * c10::elementSize(t.storage);
    header[t.name] = {{"dtype", stDtypeName(t.storage)},
                      {"shape", t.source.sizes().vec()},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // The data section starts 8-byte aligned: the header is padded with spaces.
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  const uint64_t headerLen = text.size();

  AtomicFileWriter out(path);
  out.write(&headerLen, sizeof headerLen);
  out.write(text);
  for (const StTensor &t : tensors) {
    if (cancel)
      cancel->throwIfCancelled();
    if (options.beforeStep)
      options.beforeStep(t.name);
    const at::Tensor data = t.source.to(at::kCPU, t.storage).contiguous();
    out.write(data.data_ptr(), size_t(data.numel()) * data.element_size());
    if (observer && progressDone)
      observer->progress(++*progressDone, progressTotal, t.name);
  }
  out.commit();
  return 8 + headerLen + offset;
}

// --- atomic directories -----------------------------------------------------------------

// A temporary sibling of the target, removed unless committed.
class TempDirectory {
public:
  explicit TempDirectory(const std::string &target) : target_(target) {
    fs::path t(target);
    while (t.has_filename() == false && t.has_parent_path() && t != t.parent_path())
      t = t.parent_path(); // "dir/" -> "dir"
    target_ = t.string();
    const std::string parent = parentDirectory(target_);
    if (!directoryExists(parent))
      throw FileError(target_, "parent directory does not exist");
    std::string tmpl = joinPath(parent, "." + t.filename().string() + ".lrq-tmp-XXXXXX");
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data()))
      throw FileError(target_, "cannot create a temporary directory beside it: " +
                                   std::string(std::strerror(errno)));
    path_ = buf.data();
  }
  ~TempDirectory() {
    if (!committed_) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  TempDirectory(const TempDirectory &) = delete;
  TempDirectory &operator=(const TempDirectory &) = delete;

  const std::string &path() const { return path_; }
  const std::string &target() const { return target_; }

  void commit(bool overwrite) {
    std::error_code ec;
    std::string old;
    if (fs::exists(target_, ec)) {
      if (!overwrite)
        throw FileError(target_, "already exists (choose another name or allow overwriting)");
      old = path_ + ".old";
      fs::rename(target_, old, ec);
      if (ec)
        throw FileError(target_, "cannot move the existing export aside: " + ec.message());
    }
    fs::rename(path_, target_, ec);
    if (ec) {
      if (!old.empty())
        fs::rename(old, target_, ec);
      throw FileError(target_, "cannot rename the finished export into place: " + ec.message());
    }
    committed_ = true;
    if (!old.empty())
      fs::remove_all(old, ec);
  }

private:
  std::string target_;
  std::string path_;
  bool committed_ = false;
};

void writeTextFile(const std::string &path, const std::string &text) {
  AtomicFileWriter out(path);
  out.write(text);
  out.commit();
}

uint64_t fileSize(const std::string &path) {
  std::error_code ec;
  const auto n = fs::file_size(path, ec);
  return ec ? 0 : uint64_t(n);
}

bool sameStorage(const at::Tensor &a, const at::Tensor &b) {
  return a.defined() && b.defined() &&
         (a.is_same(b) || (a.data_ptr() == b.data_ptr() && a.sizes() == b.sizes()));
}

// W + (A B)^T when the linear carries low-rank factors.
at::Tensor effectiveWeight(const Linear &l) {
  if (!l.lowRankA.defined() || !l.lowRankB.defined())
    return l.weight;
  return l.weight.to(at::kFloat) +
         at::matmul(l.lowRankA.to(at::kFloat), l.lowRankB.to(at::kFloat)).t();
}

void writeTokenizerFiles(const std::string &dir, const ExportTokenizer &tokenizer) {
  if (!tokenizer.tokenizerJsonPath.empty()) {
    writeTextFile(joinPath(dir, "tokenizer.json"), readWholeFile(tokenizer.tokenizerJsonPath));
    if (!tokenizer.tokenizerConfigPath.empty())
      writeTextFile(joinPath(dir, "tokenizer_config.json"),
                    readWholeFile(tokenizer.tokenizerConfigPath));
  } else if (tokenizer.spec) {
    writeTextFile(joinPath(dir, "tokenizer.json"), tokenizerJsonFromSpec(*tokenizer.spec));
    writeTextFile(joinPath(dir, "tokenizer_config.json"),
                  tokenizerConfigJsonFromSpec(*tokenizer.spec));
  }
}

// --- tokenizer reconstruction -------------------------------------------------------------

std::vector<std::string> specRegexes(const TokenizerSpec &spec) {
  if (!spec.preTokenizerRegexes.empty())
    return spec.preTokenizerRegexes;
  PreTokenizerRecipe recipe;
  if (!preTokenizerRecipe(spec.preTokenizer, recipe))
    preTokenizerRecipe("default", recipe);
  return recipe.regexes;
}

std::string tokenTextOr(const TokenizerSpec &spec, int32_t id) {
  return id >= 0 && size_t(id) < spec.tokens.size() ? spec.tokens[size_t(id)] : std::string();
}

} // namespace

// --- tokenizer files -----------------------------------------------------------------------

std::string tokenizerJsonFromSpec(const TokenizerSpec &spec) {
  const bool byteLevel = spec.kind == TokenizerKind::ByteLevelBpe;
  if (!byteLevel && spec.merges.empty())
    throw Error("export: a SentencePiece tokenizer without merges (scores only) cannot be "
                "written as tokenizer.json");
  json root = json::object();
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  json added = json::array();
  for (size_t i = 0; i < spec.tokens.size(); ++i) {
    const TokenType type = i < spec.tokenTypes.size() ? spec.tokenTypes[i] : TokenType::Normal;
    if (type != TokenType::Control && type != TokenType::UserDefined)
      continue;
    added.push_back({{"id", int64_t(i)},
                     {"content", spec.tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", type == TokenType::Control}});
  }
  root["added_tokens"] = added;

  if (byteLevel) {
    root["normalizer"] = nullptr;
    json steps = json::array();
    bool byteLevelRegex = false;
    for (const std::string &re : specRegexes(spec)) {
      if (re == kGpt2Pattern && !byteLevelRegex) {
        steps.push_back({{"type", "ByteLevel"},
                         {"add_prefix_space", false},
                         {"trim_offsets", true},
                         {"use_regex", true}});
        byteLevelRegex = true;
      } else if (re == R"(\p{N})" || re == R"(\p{N}+)") {
        steps.push_back({{"type", "Digits"}, {"individual_digits", re == R"(\p{N})"}});
      } else if (re == "(?s).+") {
        // no splitting
      } else {
        steps.push_back({{"type", "Split"},
                         {"pattern", {{"Regex", re}}},
                         {"behavior", "Isolated"},
                         {"invert", false}});
      }
    }
    if (!byteLevelRegex)
      steps.push_back({{"type", "ByteLevel"},
                       {"add_prefix_space", false},
                       {"trim_offsets", true},
                       {"use_regex", false}});
    root["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", steps}};
  } else {
    json norm = json::array();
    if (spec.addSpacePrefix)
      norm.push_back({{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}});
    norm.push_back(
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}});
    root["normalizer"] = {{"type", "Sequence"}, {"normalizers", norm}};
    root["pre_tokenizer"] = nullptr;
  }

  if (spec.addBos && spec.bosId >= 0) {
    const std::string bos = tokenTextOr(spec, spec.bosId);
    json bosItem = {{"SpecialToken", {{"id", bos}, {"type_id", 0}}}};
    root["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", {bosItem, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {bosItem,
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
          {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{bos, {{"id", bos}, {"ids", {spec.bosId}}, {"tokens", {bos}}}}}}};
  } else {
    root["post_processor"] = nullptr;
  }

  if (byteLevel) {
    root["decoder"] = {{"type", "ByteLevel"},
                       {"add_prefix_space", true},
                       {"trim_offsets", true},
                       {"use_regex", true}};
  } else {
    json dec = json::array();
    dec.push_back(
        {{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}});
    dec.push_back({{"type", "ByteFallback"}});
    dec.push_back({{"type", "Fuse"}});
    if (spec.addSpacePrefix)
      dec.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    root["decoder"] = {{"type", "Sequence"}, {"decoders", dec}};
  }

  json model = json::object();
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  if (spec.unkId >= 0)
    model["unk_token"] = tokenTextOr(spec, spec.unkId);
  else
    model["unk_token"] = nullptr;
  model["fuse_unk"] = !byteLevel;
  model["byte_fallback"] = !byteLevel;
  model["ignore_merges"] = spec.ignoreMerges;
  // json looks keys up linearly: keep the seen set aside.
  json vocab = json::object();
  std::set<std::string> seen;
  for (size_t i = 0; i < spec.tokens.size(); ++i)
    if (seen.insert(spec.tokens[i]).second)
      vocab.emplace(spec.tokens[i], int64_t(i));
  model["vocab"] = std::move(vocab);
  // Merges as "a b" strings, which every tokenizers release reads (the pair
  // form ["a", "b"] needs 0.20 or later); pairs only when a merged token holds
  // a space, which the string form cannot express.
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(spec.merges.size());
  bool spaceInToken = false;
  for (const std::string &m : spec.merges) {
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos)
      throw Error("export: merge '" + m + "' is not \"a b\"");
    pairs.emplace_back(m.substr(0, space), m.substr(space + 1));
    spaceInToken = spaceInToken || pairs.back().first.find(' ') != std::string::npos ||
                   pairs.back().second.find(' ') != std::string::npos;
  }
  json merges = json::array();
  for (const auto &[a, b] : pairs) {
    if (spaceInToken)
      merges.push_back({a, b});
    else
      merges.push_back(a + " " + b);
  }
  model["merges"] = std::move(merges);
  root["model"] = std::move(model);
  return root.dump(2);
}

std::string tokenizerConfigJsonFromSpec(const TokenizerSpec &spec) {
  ordered_json c = ordered_json::object();
  c["add_bos_token"] = spec.addBos;
  c["add_eos_token"] = false;
  const std::pair<const char *, int32_t> named[] = {{"bos_token", spec.bosId},
                                                    {"eos_token", spec.eosId},
                                                    {"unk_token", spec.unkId},
                                                    {"pad_token", spec.padId}};
  for (const auto &[key, id] : named)
    if (id >= 0 && size_t(id) < spec.tokens.size())
      c[key] = spec.tokens[size_t(id)];
  c["clean_up_tokenization_spaces"] = false;
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  return c.dump(2);
}

ExportTokenizer exportTokenizerFor(const LoadedModel &model) {
  ExportTokenizer t;
  if (model.format == "safetensors") {
    const std::string dir = directoryExists(model.path) ? model.path : parentDirectory(model.path);
    const std::string tj = joinPath(dir, "tokenizer.json");
    if (fileExists(tj)) {
      t.tokenizerJsonPath = tj;
      const std::string tc = joinPath(dir, "tokenizer_config.json");
      if (fileExists(tc))
        t.tokenizerConfigPath = tc;
      return t;
    }
  }
  if (model.tokenizer)
    t.spec = &model.tokenizer->spec();
  return t;
}

// --- HF names -------------------------------------------------------------------------------

std::vector<std::pair<std::string, const Linear *>> hfLinearsFromWeights(const ModelConfig &config,
                                                                         const ModelWeights &w) {
  std::vector<std::pair<std::string, const Linear *>> out;
  const bool opt = config.arch == Architecture::Opt;
  const std::string d = opt ? "model.decoder." : "model.";
  if (opt) {
    if (w.projectIn.weight.defined())
      out.emplace_back(d + "project_in", &w.projectIn);
    if (w.projectOut.weight.defined())
      out.emplace_back(d + "project_out", &w.projectOut);
  }
  for (size_t i = 0; i < w.blocks.size(); ++i) {
    const BlockWeights &b = w.blocks[i];
    const std::string p = d + "layers." + std::to_string(i) + ".";
    out.emplace_back(p + "self_attn.q_proj", &b.q);
    out.emplace_back(p + "self_attn.k_proj", &b.k);
    out.emplace_back(p + "self_attn.v_proj", &b.v);
    if (opt) {
      out.emplace_back(p + "self_attn.out_proj", &b.o);
      out.emplace_back(p + "fc1", &b.up);
      out.emplace_back(p + "fc2", &b.down);
    } else {
      out.emplace_back(p + "self_attn.o_proj", &b.o);
      out.emplace_back(p + "mlp.gate_proj", &b.gate);
      out.emplace_back(p + "mlp.up_proj", &b.up);
      out.emplace_back(p + "mlp.down_proj", &b.down);
    }
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor *>>
hfTensorSlotsOfWeights(const ModelConfig &config, ModelWeights &w, bool *tied) {
  std::vector<std::pair<std::string, at::Tensor *>> out;
  const bool opt = config.arch == Architecture::Opt;
  auto linear = [&](const std::string &prefix, Linear &l) {
    if (!l.weight.defined())
      return;
    out.emplace_back(prefix + ".weight", &l.weight);
    if (l.bias.defined())
      out.emplace_back(prefix + ".bias", &l.bias);
  };
  auto norm = [&](const std::string &prefix, NormWeights &n) {
    if (n.weight.defined())
      out.emplace_back(prefix + ".weight", &n.weight);
    if (n.bias.defined())
      out.emplace_back(prefix + ".bias", &n.bias);
  };
  if (opt) {
    const std::string d = "model.decoder.";
    out.emplace_back(d + "embed_tokens.weight", &w.tokenEmbedding);
    out.emplace_back(d + "embed_positions.weight", &w.positionEmbedding);
    linear(d + "project_in", w.projectIn);
    linear(d + "project_out", w.projectOut);
    for (size_t i = 0; i < w.blocks.size(); ++i) {
      BlockWeights &b = w.blocks[i];
      const std::string p = d + "layers." + std::to_string(i) + ".";
      linear(p + "self_attn.q_proj", b.q);
      linear(p + "self_attn.k_proj", b.k);
      linear(p + "self_attn.v_proj", b.v);
      linear(p + "self_attn.out_proj", b.o);
      norm(p + "self_attn_layer_norm", b.attnNorm);
      linear(p + "fc1", b.up);
      linear(p + "fc2", b.down);
      norm(p + "final_layer_norm", b.mlpNorm);
    }
    norm(d + "final_layer_norm", w.finalNorm);
  } else {
    out.emplace_back("model.embed_tokens.weight", &w.tokenEmbedding);
    for (size_t i = 0; i < w.blocks.size(); ++i) {
      BlockWeights &b = w.blocks[i];
      const std::string p = "model.layers." + std::to_string(i) + ".";
      norm(p + "input_layernorm", b.attnNorm);
      linear(p + "self_attn.q_proj", b.q);
      linear(p + "self_attn.k_proj", b.k);
      linear(p + "self_attn.v_proj", b.v);
      linear(p + "self_attn.o_proj", b.o);
      norm(p + "post_attention_layernorm", b.mlpNorm);
      linear(p + "mlp.gate_proj", b.gate);
      linear(p + "mlp.up_proj", b.up);
      linear(p + "mlp.down_proj", b.down);
    }
    norm("model.norm", w.finalNorm);
  }
  const bool isTied = !w.lmHead.defined() || sameStorage(w.lmHead, w.tokenEmbedding);
  if (!isTied)
    out.emplace_back("lm_head.weight", &w.lmHead);
  if (tied)
    *tied = isTied;
  return out;
}

std::vector<std::pair<std::string, at::Tensor>>
hfTensorsFromWeights(const ModelConfig &config, const ModelWeights &weights, bool *tied) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  // Only read through the slots: the weights stay as they are.
  for (const auto &[name, slot] :
       hfTensorSlotsOfWeights(config, const_cast<ModelWeights &>(weights), tied))
    out.emplace_back(name, *slot);
  return out;
}

// --- HF directory ----------------------------------------------------------------------------

ExportResult exportHfDirectory(const std::string &dir, const ModelConfig &config,
                               const ModelWeights &weights, const ExportTokenizer &tokenizer,
                               const std::string &metadataJson, const ExportOptions &options,
                               ProgressObserver *observer, const CancelToken *cancel) {
  const auto t0 = Clock::now();
  json meta;
  try {
    meta = metadataJson.empty() ? json::object() : json::parse(metadataJson);
  } catch (const json::exception &e) {
    throw Error(std::string("export: metadata is not valid JSON: ") + e.what());
  }
  if (!meta.is_object())
    throw Error("export: metadata must be a JSON object");
  const char *dtypeName = options.dtype == at::kFloat      ? "float32"
                          : options.dtype == at::kHalf     ? "float16"
                          : options.dtype == at::kBFloat16 ? "bfloat16"
                                                           : nullptr;
  if (!dtypeName)
    throw Error("export: the HF export stores float32, float16 or bfloat16");
  for (const auto &[name, type] : options.tensorDtypes)
    if (type != at::kFloat && type != at::kHalf && type != at::kBFloat16)
      throw Error("export: tensor " + name + " is asked for in " + c10::toString(type) +
                  "; the HF export stores float32, float16 or bfloat16");
  if (cancel)
    cancel->throwIfCancelled();
  if (!options.overwrite && fs::exists(dir))
    throw FileError(dir, "already exists (choose another name or allow overwriting)");

  bool tied = false;
  auto named = hfTensorsFromWeights(config, weights, &tied);
  // Fold low-rank corrections into the weights; list what cannot be expressed.
  json notExported = json::array();
  int64_t folded = 0;
  std::map<std::string, const Linear *> linearByWeight;
  for (const auto &[prefix, l] : hfLinearsFromWeights(config, weights)) {
    linearByWeight[prefix + ".weight"] = l;
    if (l->inputTransform)
      notExported.push_back(prefix + ": input " + l->inputTransform->describe());
    if (l->outputTransform)
      notExported.push_back(prefix + ": output " + l->outputTransform->describe());
  }
  std::vector<StTensor> tensors;
  for (auto &[name, t] : named) {
    at::Tensor value = t;
    auto it = linearByWeight.find(name);
    if (it != linearByWeight.end() && it->second->lowRankA.defined()) {
      value = effectiveWeight(*it->second);
      ++folded;
    }
    const auto type = options.tensorDtypes.find(name);
    tensors.push_back(
        {name, value, type != options.tensorDtypes.end() ? type->second : options.dtype});
  }
  ModelConfig outConfig = config;
  outConfig.tieEmbeddings = tied;
  meta["lrq_export"] = {{"kind", "hf-directory"},
                        {"dtype", dtypeName},
                        {"low_rank_folded", folded},
                        {"not_exported", notExported}};

  HfStyleDirectory files;
  files.configJson = hfConfigJson(outConfig, dtypeName);
  files.tokenizer = tokenizer;
  files.tensors = std::move(tensors);
  files.extraFiles.emplace_back("lrq_metadata.json", meta.dump(2) + "\n");
  ExportResult r = writeHfStyleDirectory(dir, files, options, observer, cancel);
  r.seconds = secondsSince(t0);
  return r;
}

ExportResult writeHfStyleDirectory(const std::string &dir, const HfStyleDirectory &files,
                                   const ExportOptions &options, ProgressObserver *observer,
                                   const CancelToken *cancel) {
  const auto t0 = Clock::now();
  if (cancel)
    cancel->throwIfCancelled();
  if (!options.overwrite && fs::exists(dir))
    throw FileError(dir, "already exists (choose another name or allow overwriting)");
  TempDirectory tmp(dir);
  const int64_t total = int64_t(files.tensors.size() + files.extraFiles.size()) + 3;
  int64_t done = 0;
  if (observer)
    observer->started("export", total);
  auto step = [&](const std::string &what) {
    if (cancel)
      cancel->throwIfCancelled();
    if (options.beforeStep)
      options.beforeStep(what);
  };
  auto stepDone = [&](const std::string &what) {
    if (observer)
      observer->progress(++done, total, what);
  };

  ExportResult r;
  // The files are written inside the temporary directory; a failure there (a
  // full disk) names the file under the export's own path.
  try {
    step("config.json");
    writeTextFile(joinPath(tmp.path(), "config.json"), files.configJson);
    stepDone("config.json");

    step("tokenizer");
    writeTokenizerFiles(tmp.path(), files.tokenizer);
    stepDone("tokenizer");

    const std::string st = joinPath(tmp.path(), "model.safetensors");
    r.weightsBytes = writeSafetensorsStreaming(st, files.tensors, {{"format", "pt"}}, options,
                                               observer, cancel, &done, total);
    r.tensors = int64_t(files.tensors.size());

    for (const auto &[name, text] : files.extraFiles) {
      step(name);
      writeTextFile(joinPath(tmp.path(), name), text);
      stepDone(name);
    }

    step("commit");
    for (const auto &e : fs::directory_iterator(tmp.path()))
      r.bytes += fileSize(e.path().string());
    tmp.commit(options.overwrite);
  } catch (const FileError &e) {
    const std::string &p = e.path();
    if (p.compare(0, tmp.path().size(), tmp.path()) == 0)
      throw FileError(tmp.target() + p.substr(tmp.path().size()), e.problem());
    throw;
  }
  stepDone("commit");
  r.path = tmp.target();
  r.seconds = secondsSince(t0);
  if (observer)
    observer->finished();
  return r;
}

// --- packing ------------------------------------------------------------------------------------

at::Tensor packCodes(const at::Tensor &codes, int bits, int64_t qmin) {
  if (bits < 1 || bits > 8)
    throw Error("pack: bits must be 1..8, got " + std::to_string(bits));
  if (codes.dim() != 2 || codes.is_floating_point())
    throw Error("pack: codes must be a 2-D integer tensor");
  const at::Tensor u = (codes.to(at::kCPU, at::kLong) - qmin).contiguous();
  const int64_t maxCode = (int64_t(1) << bits) - 1;
  if (u.numel() > 0 && (u.min().item<int64_t>() < 0 || u.max().item<int64_t>() > maxCode))
    throw Error("pack: codes outside [" + std::to_string(qmin) + ", " +
                std::to_string(qmin + maxCode) + "] for " + std::to_string(bits) + " bits");
  const int64_t rows = u.size(0), cols = u.size(1);
  const int64_t rowBytes = (cols * bits + 7) / 8;
  at::Tensor out = at::zeros({rows, rowBytes}, at::kByte);
  const int64_t *src = u.data_ptr<int64_t>();
  uint8_t *dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t *row = src + r * cols;
      uint8_t *o = dst + r * rowBytes;
      for (int64_t j = 0; j < cols; ++j) {
        const uint32_t v = uint32_t(row[j]);
        const int64_t bit = j * bits;
        const int64_t byte = bit >> 3;
        const int off = int(bit & 7);
        o[byte] = uint8_t(o[byte] | ((v << off) & 0xFF));
        if (off + bits > 8)
          o[byte + 1] = uint8_t(o[byte + 1] | (v >> (8 - off)));
      }
    }
  });
  return out;
}

at::Tensor unpackCodes(const at::Tensor &packed, int bits, int64_t qmin, int64_t cols) {
  if (bits < 1 || bits > 8)
    throw Error("unpack: bits must be 1..8, got " + std::to_string(bits));
  const int64_t rowBytes = (cols * bits + 7) / 8;
  if (packed.dim() != 2 || packed.scalar_type() != at::kByte || packed.size(1) != rowBytes)
    throw Error("unpack: expected uint8 [rows, " + std::to_string(rowBytes) + "]");
  const at::Tensor p = packed.to(at::kCPU).contiguous();
  at::Tensor out = at::empty({p.size(0), cols}, at::kInt);
  const uint8_t *src = p.data_ptr<uint8_t>();
  int32_t *dst = out.data_ptr<int32_t>();
  at::parallel_for(0, p.size(0), 16, [&](int64_t r0, int64_t r1) {
    unpackCodeRows(src, rowBytes, r0, r1, cols, bits, qmin, dst);
  });
  return out;
}

at::Tensor dequantizeCodes(const at::Tensor &codes, const at::Tensor &scales,
                           const at::Tensor &zeroPoints, int64_t groupSize, bool offsets) {
  const int64_t cols = codes.size(1);
  at::Tensor s = scales.to(at::kFloat), z = zeroPoints.to(at::kFloat);
  if (s.dim() != 2 || z.sizes() != s.sizes() || (s.size(0) != 1 && s.size(0) != codes.size(0)))
    throw Error("dequantize: scales/zero points do not match the codes");
  if (s.size(1) != 1) {
    if (groupSize <= 0 || (cols + groupSize - 1) / groupSize != s.size(1))
      throw Error("dequantize: " + std::to_string(s.size(1)) + " groups do not cover " +
                  std::to_string(cols) + " columns in groups of " + std::to_string(groupSize));
    const at::Tensor group = at::arange(cols, at::kLong).div(groupSize, "floor");
    s = s.index_select(1, group);
    z = z.index_select(1, group);
  }
  if (offsets)
    return codes.to(at::kFloat) * s - z;
  return s * (codes.to(at::kFloat) - z);
}

// --- packed file
// ----------------------------------------------------------------------------------

ExportResult writePackedModel(const std::string &path, const PackedModelContents &c,
                              const ExportOptions &options, ProgressObserver *observer,
                              const CancelToken *cancel) {
  const auto t0 = Clock::now();
  if (!options.overwrite && fs::exists(path))
    throw FileError(path, "already exists (choose another name or allow overwriting)");
  if (!directoryExists(parentDirectory(path)))
    throw FileError(path, "parent directory does not exist");
  std::vector<StTensor> tensors;
  json layers = json::object();
  for (const auto &[name, t] : c.tensors)
    tensors.push_back({name, t, at::kFloat});
  for (const PackedTensor &p : c.quantized) {
    if (cancel)
      cancel->throwIfCancelled();
    if (p.codes.dim() != 2)
      throw Error("export: codes of " + p.name + " are not 2-D");
    const int64_t out = p.codes.size(0), in = p.codes.size(1);
    if (p.scales.dim() != 2 || p.zeroPoints.sizes() != p.scales.sizes())
      throw Error("export: scales/zero points of " + p.name + " are not [rows, groups]");
    if (p.offsets)
      throw Error("export: " + p.name +
                  " is on a k-superblock-offset grid (values s q - M, GGUF Q4_K), which the "
                  "packed file's s (q - z) layout cannot hold; export GGUF (--gguf) instead");
    tensors.push_back({p.name + ".qweight", packCodes(p.codes, p.bits, p.qmin), at::kByte});
    releaseFreeMemory(); // packCodes' 8-byte copy of the codes: back to the system, not a hole
    tensors.push_back({p.name + ".scales", p.scales, at::kFloat});
    tensors.push_back({p.name + ".zero_points", p.zeroPoints, at::kFloat});
    json layer = {{"bits", p.bits},
                  {"qmin", p.qmin},
                  {"group_size", p.scales.size(1) == 1 ? int64_t(0) : p.groupSize},
                  {"shape", {out, in}},
                  {"low_rank", int64_t(0)}};
    if (p.valueDtype != at::kFloat) {
      if (p.valueDtype != at::kHalf && p.valueDtype != at::kBFloat16)
        throw Error("export: values of " + p.name + " rounded to " + c10::toString(p.valueDtype) +
                    " (float16 or bfloat16 only)");
      layer["value_dtype"] = stDtypeName(p.valueDtype);
    }
    if (p.lowRankA.defined() && p.lowRankB.defined()) {
      if (p.lowRankA.dim() != 2 || p.lowRankB.dim() != 2 || p.lowRankA.size(0) != in ||
          p.lowRankB.size(1) != out || p.lowRankA.size(1) != p.lowRankB.size(0))
        throw Error("export: low-rank factors of " + p.name + " do not fit its weight");
      tensors.push_back({p.name + ".low_rank_a", p.lowRankA, at::kFloat});
      tensors.push_back({p.name + ".low_rank_b", p.lowRankB, at::kFloat});
      layer["low_rank"] = p.lowRankA.size(1);
    }
    layers[p.name] = layer;
  }
  std::map<std::string, std::string> meta;
  meta["format"] = kPackedFormatName;
  meta["format_version"] = std::to_string(kPackedFormatVersion);
  meta["config"] = hfConfigJson(c.config, "float32");
  meta["scheme"] = c.schemeJson;
  meta["method"] = c.method;
  meta["layers"] = layers.dump();
  meta["metadata"] = c.extraMetadataJson.empty() ? "{}" : c.extraMetadataJson;
  if (!c.tokenizerJson.empty())
    meta["tokenizer"] = c.tokenizerJson;
  if (!c.tokenizerConfigJson.empty())
    meta["tokenizer_config"] = c.tokenizerConfigJson;

  const int64_t total = int64_t(tensors.size());
  int64_t done = 0;
  if (observer)
    observer->started("export", total);
  ExportResult r;
  r.weightsBytes =
      writeSafetensorsStreaming(path, tensors, meta, options, observer, cancel, &done, total);
  r.bytes = r.weightsBytes;
  r.tensors = total;
  r.path = path;
  r.seconds = secondsSince(t0);
  if (observer)
    observer->finished();
  return r;
}

PackedModel loadPackedModel(const std::string &path, ProgressObserver *observer,
                            const CancelToken *cancel, bool foldLowRank,
                            const LoadedTensorSink &sink) {
  SafetensorsReader reader(path);
  // Everything the header declares is checked here, before any data is read.
  const PackedHeader header = readPackedHeader(reader);
  PackedModel pm;
  pm.formatVersion = header.formatVersion;
  pm.schemeJson = header.schemeJson;
  pm.method = header.method;
  pm.extraMetadataJson = header.extraMetadataJson;
  const auto &meta = reader.metadata();
  LoadedModel &m = pm.model;
  m.path = path;
  m.format = "lrq-packed";
  m.config = modelConfigFromHfConfigJson(header.configJson, path + " (__metadata__ config)");

  const int64_t total = int64_t(reader.tensors().size());
  int64_t done = 0;
  if (observer)
    observer->started("load", total);
  for (const SafetensorsTensorInfo &info : reader.tensors()) {
    if (header.layerTensorNames.count(info.name))
      continue;
    if (cancel)
      cancel->throwIfCancelled();
    m.tensors[info.name] = sink ? sink(info.name, reader.load(info)) : reader.load(info);
    m.sources.push_back({info.name, info.name, info.dtype, info.shape});
    if (observer)
      observer->progress(++done, total, info.name);
  }
  std::map<int, int64_t> bitsCount;
  for (const PackedLayerLayout &layer : header.layers) {
    if (cancel)
      cancel->throwIfCancelled();
    const std::string &name = layer.name;
    const at::Tensor packed = reader.loadBytes(*layer.qweight).view({layer.out, layer.rowBytes});
    const at::Tensor scales = reader.load(*layer.scales).contiguous();
    const at::Tensor zeros = reader.load(*layer.zeroPoints).contiguous();
    // What the writer refuses to write: steps that are zero or not finite, zero
    // points off the integer grid, values that overflow.
    if (const std::string problem =
            packedGridProblem(scales.data_ptr<float>(), zeros.data_ptr<float>(),
                              size_t(scales.numel()), layer.qmin, layer.qmax, layer.valueDtype);
        !problem.empty())
      throw FileError(path, "tensors " + printableText(name) + ".scales/.zero_points: " + problem);
    at::Tensor w;
    try {
      w = dequantizeCodes(unpackCodes(packed, layer.bits, layer.qmin, layer.in), scales, zeros,
                          layer.groupSize);
    } catch (const Error &e) {
      throw FileError(path, printableText(name) + ": " + e.what());
    }
    if (layer.valueDtype == "F16")
      w = w.to(at::kHalf).to(at::kFloat);
    else if (layer.valueDtype == "BF16")
      w = w.to(at::kBFloat16).to(at::kFloat);
    if (layer.lowRankA) {
      const at::Tensor la = reader.load(*layer.lowRankA), lb = reader.load(*layer.lowRankB);
      if (!at::isfinite(la).all().item<bool>() || !at::isfinite(lb).all().item<bool>())
        throw FileError(path, "low-rank factors of " + printableText(name) +
                                  " hold values that are not finite");
      if (foldLowRank) {
        w = w + at::matmul(la, lb).t();
        if (!at::isfinite(w).all().item<bool>())
          throw FileError(path, "low-rank factors of " + printableText(name) +
                                    " make the weight overflow float32");
      } else {
        pm.lowRank[name] = {la, lb};
      }
    }
    const std::string weightName = name + ".weight";
    m.tensors[weightName] = sink ? sink(weightName, std::move(w)) : w;
    m.sources.push_back({weightName,
                         name + ".qweight",
                         "W" + std::to_string(layer.bits) + (layer.qmin < 0 ? " sym" : " asym") +
                             (layer.groupSize > 0 ? " g" + std::to_string(layer.groupSize) : "") +
                             " packed",
                         {layer.out, layer.in}});
    pm.quantizedNames.push_back(name);
    bitsCount[layer.bits] += layer.out * layer.in;
    done += layer.lowRankA ? 5 : 3;
    if (observer)
      observer->progress(done, total, weightName);
  }
  if (!bitsCount.empty()) {
    std::string note = "dequantized from packed";
    for (const auto &[bits, n] : bitsCount)
      note += " W" + std::to_string(bits);
    note += " codes (" + pm.method + ")";
    m.baselineNote = note;
  }

  // The embedded tokenizer: the reader takes files, so it goes through a temporary directory.
  if (auto it = meta.find("tokenizer"); it != meta.end()) {
    std::string tmpl = (fs::temp_directory_path() / "lrq-tokenizer-XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data()))
      throw FileError(path, "cannot create a temporary directory for the embedded tokenizer");
    const std::string dir = buf.data();
    try {
      const std::string tj = joinPath(dir, "tokenizer.json");
      writeTextFile(tj, it->second);
      std::string tc;
      if (auto ct = meta.find("tokenizer_config"); ct != meta.end()) {
        tc = joinPath(dir, "tokenizer_config.json");
        writeTextFile(tc, ct->second);
      }
      TokenizerSpec spec = tokenizerSpecFromJsonFiles(tj, tc);
      spec.source = path + " (embedded tokenizer.json)";
      m.tokenizer = Tokenizer::create(spec);
    } catch (...) {
      std::error_code ec;
      fs::remove_all(dir, ec);
      throw;
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
    if (m.tokenizer && m.tokenizer->vocabSize() > m.config.vocabSize)
      throw FileError(path, "embedded tokenizer has more tokens than the embedding has rows");
  }
  if (observer)
    observer->finished();
  return pm;
}

void installLowRank(const ModelConfig &config, ModelWeights &weights,
                    const std::map<std::string, std::pair<at::Tensor, at::Tensor>> &lowRank) {
  for (const auto &[prefix, l] : hfLinearsFromWeights(config, weights)) {
    auto it = lowRank.find(prefix);
    if (it == lowRank.end())
      continue;
    Linear *linear = const_cast<Linear *>(l);
    linear->lowRankA = it->second.first;
    linear->lowRankB = it->second.second;
  }
}

} // namespace lrq

namespace lrq {
void embedTokenizer(PackedModelContents &contents, const ExportTokenizer &tokenizer) {
  if (!tokenizer.tokenizerJsonPath.empty()) {
    contents.tokenizerJson = readWholeFile(tokenizer.tokenizerJsonPath);
    contents.tokenizerConfigJson = tokenizer.tokenizerConfigPath.empty()
                                       ? std::string()
                                       : readWholeFile(tokenizer.tokenizerConfigPath);
  } else if (tokenizer.spec) {
    contents.tokenizerJson = tokenizerJsonFromSpec(*tokenizer.spec);
    contents.tokenizerConfigJson = tokenizerConfigJsonFromSpec(*tokenizer.spec);
  }
}
} // namespace lrq
