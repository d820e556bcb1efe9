#pragma once
// A tiny seeded LLaMA for the export and dtype tests: its config, its tensors
// under HF names, a byte-level tokenizer (GPT-2's byte alphabet, no merges),
// and what writing it to disk with a calibration text takes.
#include <QDir>
#include <QFile>
#include <QString>
#include <QtTest>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/io/hf_config.h"
#include "core/io/safetensors.h"
#include "core/model/config.h"

namespace lrq::test {

struct TinyLlamaShape {
  int64_t vocab = 256;
  int64_t hidden = 32;
  int64_t intermediate = 64;
  int64_t headDim = 8;
  int64_t maxPositions = 128;
  int64_t layers = 2;
};

inline ModelConfig tinyLlamaConfig(const TinyLlamaShape &shape = {}) {
  ModelConfig c;
  c.arch = Architecture::Llama;
  c.architectureName = "LlamaForCausalLM";
  c.vocabSize = shape.vocab;
  c.hiddenSize = shape.hidden;
  c.intermediateSize = shape.intermediate;
  c.numLayers = shape.layers;
  c.numHeads = 4;
  c.numKvHeads = 2;
  c.headDim = shape.headDim;
  c.maxPositions = shape.maxPositions;
  c.normEps = 1e-5;
  c.ropeTheta = 10000.0;
  c.tieEmbeddings = false;
  c.activation = "silu";
  return c;
}

// Seeded weights in HF names: linears ~ N(0, 0.1²), norms around 1. With
// outlierColumn >= 0 that input column of every linear is 4x larger (so
// SmoothQuant and the clipping searches have something to act on).
inline std::vector<std::pair<std::string, at::Tensor>>
tinyLlamaTensors(const ModelConfig &c, uint64_t seed, int64_t outlierColumn = -1) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t h = c.hiddenSize, kv = c.numKvHeads * c.headDim, f = c.intermediateSize;
  std::vector<std::pair<std::string, at::Tensor>> t;
  t.emplace_back("model.embed_tokens.weight", at::randn({c.vocabSize, h}, gen) * 0.5);
  for (int64_t i = 0; i < c.numLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    auto linear = [&](const std::string &name, int64_t out, int64_t in) {
      at::Tensor w = at::randn({out, in}, gen) * 0.1;
      if (outlierColumn >= 0)
        w.select(1, outlierColumn).mul_(4.0);
      t.emplace_back(p + name + ".weight", w);
    };
    t.emplace_back(p + "input_layernorm.weight", 1.0 + at::randn({h}, gen) * 0.1);
    linear("self_attn.q_proj", h, h);
    linear("self_attn.k_proj", kv, h);
    linear("self_attn.v_proj", kv, h);
    linear("self_attn.o_proj", h, h);
    t.emplace_back(p + "post_attention_layernorm.weight", 1.0 + at::randn({h}, gen) * 0.1);
    linear("mlp.gate_proj", f, h);
    linear("mlp.up_proj", f, h);
    linear("mlp.down_proj", h, f);
  }
  t.emplace_back("model.norm.weight", 1.0 + at::randn({h}, gen) * 0.1);
  t.emplace_back("lm_head.weight", at::randn({c.vocabSize, h}, gen) * 0.2);
  return t;
}

// GPT-2's byte alphabet as UTF-8 token texts, id = byte: printable bytes stand
// for themselves, the others for U+0100 onwards.
inline std::vector<std::string> gpt2ByteAlphabet() {
  std::vector<std::string> out;
  int shifted = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const uint32_t cp = printable ? uint32_t(b) : uint32_t(0x100 + shifted++);
    std::string text;
    if (cp < 0x80) {
      text += char(cp);
    } else {
      text += char(0xC0 | (cp >> 6));
      text += char(0x80 | (cp & 0x3F));
    }
    out.push_back(text);
  }
  return out;
}

// A byte-level BPE tokenizer.json without merges over that alphabet.
inline std::string byteTokenizerJson() {
  nlohmann::json vocab = nlohmann::json::object();
  const std::vector<std::string> alphabet = gpt2ByteAlphabet();
  for (size_t b = 0; b < alphabet.size(); ++b)
    vocab[alphabet[b]] = b;
  return nlohmann::json{
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}}}
      .dump();
}

// Writes text to path (a failed write fails the calling test function).
inline void writeFile(const QString &path, const std::string &text) {
  QFile f(path);
  QVERIFY(f.open(QIODevice::WriteOnly));
  QCOMPARE(f.write(text.data(), qint64(text.size())), qint64(text.size()));
}

// Pseudo-random words, reproducible: calibration and evaluation text for tiny models.
inline std::string someText(uint32_t seed, int words) {
  static const char *vocabulary[] = {"the",   "model", "weights", "round", "grid",  "scale",
                                     "block", "error", "token",   "layer", "value", "rank"};
  std::string out;
  uint32_t x = seed;
  for (int i = 0; i < words; ++i) {
    x = x * 1664525u + 1013904223u;
    out += vocabulary[(x >> 16) % 12];
    out += (i % 11 == 10) ? ".\n" : " ";
  }
  return out;
}

// Writes a tiny LLaMA of `shape` with weights seeded by `seed` as an HF model
// directory (model.safetensors, config.json, the byte-level tokenizer.json)
// that `lrq` loads like any other model.
inline void writeTinyLlamaDir(const QString &dir, const TinyLlamaShape &shape, uint64_t seed) {
  QVERIFY(QDir().mkpath(dir));
  const ModelConfig config = tinyLlamaConfig(shape);
  writeSafetensors(dir.toStdString() + "/model.safetensors", tinyLlamaTensors(config, seed));
  writeHfConfig(dir.toStdString() + "/config.json", config, "float32");
  writeFile(dir + "/tokenizer.json", byteTokenizerJson());
}

} // namespace lrq::test
