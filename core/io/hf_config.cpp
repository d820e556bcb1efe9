#include "core/io/hf_config.h"

#include <cstdint>

#include <nlohmann/json.hpp>

#include "core/common/error.h"
#include "core/common/json_limits.h"
#include "core/io/file_util.h"

namespace lrq {

namespace {

using json = nlohmann::json;

// config.json files are a few kilobytes; these bounds still leave room for
// large label maps while keeping the parsed document small.
JsonLimits configJsonLimits() {
  JsonLimits l;
  l.maxBytes = size_t(16) << 20;
  l.maxElements = size_t(1) << 20;
  return l;
}

enum class Family { Llama, Mistral, Qwen2, Opt };

struct FamilyInfo {
  Family family;
  const char *architecture;
  const char *modelType;
};

const FamilyInfo kFamilies[] = {
    {Family::Llama, "LlamaForCausalLM", "llama"},
    {Family::Mistral, "MistralForCausalLM", "mistral"},
    {Family::Qwen2, "Qwen2ForCausalLM", "qwen2"},
    {Family::Opt, "OPTForCausalLM", "opt"},
};

const char *jsonTypeName(const json &v) {
  if (v.is_null())
    return "null";
  if (v.is_boolean())
    return "a bool";
  if (v.is_number_integer())
    return "an integer";
  if (v.is_number())
    return "a number";
  if (v.is_string())
    return "a string";
  if (v.is_array())
    return "an array";
  return "an object";
}

// Typed access to the top-level object with errors naming the file and key.
class ConfigReader {
public:
  ConfigReader(const json &root, const std::string &path) : root_(root), path_(path) {}

  [[noreturn]] void fail(const std::string &problem) const { throw FileError(path_, problem); }
  [[noreturn]] void typeError(const std::string &key, const char *expected) const {
    fail("key '" + key + "' must be " + expected + ", not " + jsonTypeName(root_.at(key)));
  }

  // Present and not null.
  bool has(const std::string &key) const {
    auto it = root_.find(key);
    return it != root_.end() && !it->is_null();
  }

  int64_t integer(const std::string &key) const {
    if (!has(key))
      fail("missing key '" + key + "'");
    const json &v = root_.at(key);
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        fail("key '" + key + "' is out of range");
      return static_cast<int64_t>(v.get<uint64_t>());
    }
    if (!v.is_number_integer())
      typeError(key, "an integer");
    return v.get<int64_t>();
  }
  int64_t integer(const std::string &key, int64_t fallback) const {
    return has(key) ? integer(key) : fallback;
  }
  int64_t positive(const std::string &key) const {
    const int64_t v = integer(key);
    if (v <= 0 || v > (int64_t(1) << 31))
      fail("key '" + key + "' has value " + std::to_string(v) + ", expected a positive size");
    return v;
  }
  int64_t positive(const std::string &key, int64_t fallback) const {
    return has(key) ? positive(key) : fallback;
  }
  double number(const std::string &key, double fallback) const {
    if (!has(key))
      return fallback;
    const json &v = root_.at(key);
    if (!v.is_number())
      typeError(key, "a number");
    return v.get<double>();
  }
  bool boolean(const std::string &key, bool fallback) const {
    if (!has(key))
      return fallback;
    const json &v = root_.at(key);
    if (!v.is_boolean())
      typeError(key, "true or false");
    return v.get<bool>();
  }
  std::string string(const std::string &key, const std::string &fallback) const {
    if (!has(key))
      return fallback;
    const json &v = root_.at(key);
    if (!v.is_string())
      typeError(key, "a string");
    return v.get<std::string>();
  }
  // Token ids may be an integer, a list of integers (first one counts) or null.
  // -1 when absent (missing, null, an empty list); a list gives its first id.
  // Other negative ids name no token, and would silently read back as absent.
  int64_t tokenId(const std::string &key) const {
    if (!has(key))
      return -1;
    const json &v = root_.at(key);
    int64_t id = 0;
    if (v.is_array()) {
      if (v.empty())
        return -1;
      const json &first = v.front();
      if (!first.is_number_integer() ||
          (first.is_number_unsigned() && first.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)))
        fail("key '" + key + "' must hold integer token ids");
      id = first.get<int64_t>();
    } else {
      id = integer(key);
    }
    if (id < -1)
      fail("key '" + key + "': token id " + std::to_string(id) + " is negative");
    return id;
  }
  const json &root() const { return root_; }

private:
  const json &root_;
  const std::string &path_;
};

const FamilyInfo &familyOf(const ConfigReader &r) {
  std::string architecture;
  if (r.has("architectures")) {
    const json &a = r.root().at("architectures");
    if (!a.is_array() || a.empty() || !a.front().is_string())
      r.fail("key 'architectures' must be a non-empty list of strings");
    architecture = a.front().get<std::string>();
    for (const auto &f : kFamilies)
      if (architecture == f.architecture)
        return f;
  } else {
    const std::string modelType = r.string("model_type", "");
    for (const auto &f : kFamilies)
      if (modelType == f.modelType)
        return f;
    if (modelType.empty())
      r.fail("missing key 'architectures' (and no 'model_type')");
    architecture = "model_type " + modelType;
  }
  r.fail("architecture '" + architecture +
         "' is not supported (supported: LlamaForCausalLM, MistralForCausalLM, "
         "Qwen2ForCausalLM, OPTForCausalLM)");
}

void readLlamaFamily(const ConfigReader &r, Family family, ModelConfig &c) {
  c.arch = Architecture::Llama;
  c.vocabSize = r.positive("vocab_size");
  c.hiddenSize = r.positive("hidden_size");
  c.intermediateSize = r.positive("intermediate_size");
  c.numLayers = r.positive("num_hidden_layers");
  c.numHeads = r.positive("num_attention_heads");
  c.numKvHeads = r.positive("num_key_value_heads", c.numHeads);
  if (c.numHeads % c.numKvHeads != 0)
    r.fail("key 'num_key_value_heads': " + std::to_string(c.numKvHeads) +
           " does not divide num_attention_heads " + std::to_string(c.numHeads));
  if (!r.has("head_dim") && c.hiddenSize % c.numHeads != 0)
    r.fail("key 'hidden_size': " + std::to_string(c.hiddenSize) +
           " is not a multiple of num_attention_heads " + std::to_string(c.numHeads));
  c.headDim = r.positive("head_dim", c.hiddenSize / c.numHeads);
  c.maxPositions = r.positive("max_position_embeddings", 2048);
  c.normEps = r.number("rms_norm_eps", 1e-6);
  if (!(c.normEps > 0.0 && c.normEps < 1.0))
    r.fail("key 'rms_norm_eps' is out of range");
  c.ropeTheta = r.number("rope_theta", 10000.0);
  if (!(c.ropeTheta >= kMinRopeTheta && c.ropeTheta <= kMaxRopeTheta))
    r.fail("key 'rope_theta' is out of range (expected 1..1e12)");
  c.tieEmbeddings = r.boolean("tie_word_embeddings", false);
  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu")
    r.fail("key 'hidden_act': activation '" + act + "' is not supported (only silu)");
  c.activation = "silu";
  if (r.has("rope_scaling")) {
    const json &s = r.root().at("rope_scaling");
    if (!s.is_object())
      r.typeError("rope_scaling", "an object or null");
    // Every type named must be "default" (no scaling); a scaling object that
    // names none, or names one as something other than a string, is refused.
    bool named = false;
    for (const char *k : {"rope_type", "type"}) {
      if (!s.contains(k) || s.at(k).is_null())
        continue;
      if (!s.at(k).is_string())
        r.fail(std::string("key 'rope_scaling.") + k + "' must be a string");
      const std::string type = s.at(k).get<std::string>();
      if (type != "default")
        r.fail("key 'rope_scaling': rope scaling '" + type + "' is not supported");
      named = true;
    }
    if (!named && !s.empty())
      r.fail("key 'rope_scaling' names no rope_type, so its scaling is unknown");
  }
  if (r.has("partial_rotary_factor") && r.number("partial_rotary_factor", 1.0) != 1.0)
    r.fail("key 'partial_rotary_factor': partial rotary embedding is not supported");
  if (family == Family::Qwen2) {
    c.attentionBias = true; // Qwen2 has q/k/v biases, no o_proj bias
    c.attentionOutBias = false;
    c.mlpBias = false;
  } else if (family == Family::Llama) {
    c.attentionBias = r.boolean("attention_bias", false);
    c.attentionOutBias = c.attentionBias;
    c.mlpBias = r.boolean("mlp_bias", false);
  } else {
    c.attentionBias = c.attentionOutBias = c.mlpBias = false;
  }
}

void readOpt(const ConfigReader &r, ModelConfig &c) {
  c.arch = Architecture::Opt;
  c.vocabSize = r.positive("vocab_size");
  c.hiddenSize = r.positive("hidden_size");
  c.intermediateSize = r.positive("ffn_dim");
  c.numLayers = r.positive("num_hidden_layers");
  c.numHeads = r.positive("num_attention_heads");
  if (c.hiddenSize % c.numHeads != 0)
    r.fail("key 'hidden_size': " + std::to_string(c.hiddenSize) +
           " is not a multiple of num_attention_heads " + std::to_string(c.numHeads));
  c.numKvHeads = c.numHeads;
  c.headDim = c.hiddenSize / c.numHeads;
  c.maxPositions = r.positive("max_position_embeddings", 2048);
  c.normEps = 1e-5; // nn.LayerNorm's default, which OPT uses
  c.doLayerNormBefore = r.boolean("do_layer_norm_before", true);
  const int64_t proj = r.positive("word_embed_proj_dim", c.hiddenSize);
  c.wordEmbedProjDim = proj == c.hiddenSize ? 0 : proj;
  const std::string act = r.string("activation_function", "relu");
  if (act != "relu")
    r.fail("key 'activation_function': activation '" + act + "' is not supported (only relu)");
  c.activation = "relu";
  const bool bias = r.boolean("enable_bias", true);
  c.attentionBias = c.attentionOutBias = c.mlpBias = bias;
  if (!r.boolean("layer_norm_elementwise_affine", true))
    r.fail("key 'layer_norm_elementwise_affine': layer norms without weights are not supported");
  c.tieEmbeddings = r.boolean("tie_word_embeddings", true);
}

} // namespace

ModelConfig modelConfigFromHfConfigJson(const std::string &text, const std::string &path) {
  checkJsonLimits(text, path, configJsonLimits());
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception &e) {
    // nlohmann's message starts with "[json.exception.parse_error.101] parse error at ..."
    // (or out_of_range.406 for a number such as 1e400 that overflows a double)
    std::string what = e.what();
    const size_t close = what.find("] ");
    if (close != std::string::npos)
      what = what.substr(close + 2);
    throw FileError(path, "is not valid JSON: " + what);
  }
  if (!root.is_object())
    throw FileError(path, "is not a JSON object");
  ConfigReader r(root, path);
  const FamilyInfo &f = familyOf(r);
  ModelConfig c;
  c.architectureName = f.architecture;
  if (f.family == Family::Opt)
    readOpt(r, c);
  else
    readLlamaFamily(r, f.family, c);
  c.bosTokenId = r.tokenId("bos_token_id");
  c.eosTokenId = r.tokenId("eos_token_id");
  return c;
}

ModelConfig modelConfigFromHfConfigFile(const std::string &path) {
  if (directoryExists(path))
    throw FileError(path, "is a directory, not a file");
  return modelConfigFromHfConfigJson(readTextFileLimited(path, configJsonLimits().maxBytes), path);
}

std::string hfConfigJson(const ModelConfig &c, const std::string &torchDtype) {
  json j = json::object();
  std::string architecture = c.architectureName;
  const FamilyInfo *family = nullptr;
  for (const auto &f : kFamilies)
    if (architecture == f.architecture)
      family = &f;
  if (!family) { // a config built by hand: pick by architecture enum
    family = c.arch == Architecture::Opt ? &kFamilies[3] : &kFamilies[0];
    architecture = family->architecture;
  }
  j["architectures"] = json::array({architecture});
  j["model_type"] = family->modelType;
  j["vocab_size"] = c.vocabSize;
  j["hidden_size"] = c.hiddenSize;
  j["num_hidden_layers"] = c.numLayers;
  j["num_attention_heads"] = c.numHeads;
  j["max_position_embeddings"] = c.maxPositions;
  j["tie_word_embeddings"] = c.tieEmbeddings;
  if (family->family == Family::Opt) {
    j["ffn_dim"] = c.intermediateSize;
    j["do_layer_norm_before"] = c.doLayerNormBefore;
    j["word_embed_proj_dim"] = c.wordEmbedProjDim > 0 ? c.wordEmbedProjDim : c.hiddenSize;
    j["activation_function"] = c.activation == "silu" ? "relu" : c.activation;
    j["enable_bias"] = c.attentionBias || c.mlpBias;
    j["layer_norm_elementwise_affine"] = true;
  } else {
    j["intermediate_size"] = c.intermediateSize;
    j["num_key_value_heads"] = c.numKvHeads > 0 ? c.numKvHeads : c.numHeads;
    j["head_dim"] = c.headDim;
    j["rms_norm_eps"] = c.normEps;
    j["rope_theta"] = c.ropeTheta;
    j["rope_scaling"] = nullptr;
    j["hidden_act"] = "silu";
    if (family->family == Family::Llama) {
      j["attention_bias"] = c.attentionBias;
      j["mlp_bias"] = c.mlpBias;
    }
  }
  if (c.bosTokenId >= 0)
    j["bos_token_id"] = c.bosTokenId;
  if (c.eosTokenId >= 0)
    j["eos_token_id"] = c.eosTokenId;
  j["torch_dtype"] = torchDtype;
  return j.dump(2) + "\n";
}

void writeHfConfig(const std::string &path, const ModelConfig &config,
                   const std::string &torchDtype) {
  AtomicFileWriter out(path);
  out.write(hfConfigJson(config, torchDtype));
  out.commit();
}

} // namespace lrq
