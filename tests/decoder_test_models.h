#pragma once
// Tiny seeded models written by tests/reference/decoder_reference.py (raw
// float32 + JSON index), with the reference logits of its numpy forward.
#include <ATen/ATen.h>

#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QString>
#include <QStringList>

#include <map>
#include <string>
#include <vector>

#include "core/model/config.h"
#include "test_support.h"

namespace lrq::test {

struct TinyModel {
  QString name;
  ModelConfig config;
  std::map<std::string, at::Tensor> tensors;
  at::Tensor tokens; // [B, T] int64
  at::Tensor logits; // [B, T, vocab] reference (float32)
  // LLaMA only: one sequence of 300 tokens (longer than max_positions).
  at::Tensor longTokens, longLogits;
};

// Runs "decoder_reference.py tiny dir"; returns the model names or empty + error.
inline QStringList writeTinyModels(const QString &dir, QString *error) {
  const QByteArray out = runReference("decoder_reference.py", {"tiny", dir}, error);
  if (out.isEmpty())
    return {};
  QStringList names;
  for (const auto &v : QJsonDocument::fromJson(out).object().value("models").toArray())
    names << v.toString();
  return names;
}

inline TinyModel readTinyModel(const QString &dir, const QString &name) {
  TinyModel m;
  m.name = name;
  QFile jf(dir + "/" + name + ".json"), bf(dir + "/" + name + ".bin");
  if (!jf.open(QIODevice::ReadOnly) || !bf.open(QIODevice::ReadOnly))
    return m;
  const QJsonObject meta = QJsonDocument::fromJson(jf.readAll()).object();
  const QByteArray blob = bf.readAll();
  const float *data = reinterpret_cast<const float *>(blob.constData());
  auto slice = [&](int64_t offset, const QJsonArray &shapeJson) {
    std::vector<int64_t> shape;
    for (const auto &s : shapeJson)
      shape.push_back(s.toInteger());
    return at::from_blob(const_cast<float *>(data + offset), shape, at::kFloat).clone();
  };

  const QJsonObject c = meta.value("config").toObject();
  ModelConfig &cfg = m.config;
  const bool opt = c.value("arch").toString() == "opt";
  cfg.arch = opt ? Architecture::Opt : Architecture::Llama;
  cfg.architectureName = opt ? "OPTForCausalLM" : "LlamaForCausalLM";
  cfg.vocabSize = c.value("vocab").toInteger();
  cfg.hiddenSize = c.value("hidden").toInteger();
  cfg.intermediateSize = c.value("intermediate").toInteger();
  cfg.numLayers = c.value("num_layers").toInteger();
  cfg.numHeads = c.value("num_heads").toInteger();
  cfg.numKvHeads = c.value("num_kv_heads").toInteger();
  cfg.headDim = c.value("head_dim").toInteger();
  cfg.maxPositions = c.value("max_positions").toInteger();
  cfg.normEps = c.value("norm_eps").toDouble();
  cfg.ropeTheta = c.value("rope_theta").toDouble(10000.0);
  cfg.tieEmbeddings = c.value("tie_embeddings").toBool();
  cfg.attentionBias = c.value("attention_bias").toBool();
  cfg.doLayerNormBefore = c.value("do_layer_norm_before").toBool(true);
  cfg.wordEmbedProjDim = c.value("word_embed_proj_dim").toInteger();
  cfg.activation = opt ? "relu" : "silu";

  for (const auto &t : meta.value("tensors").toArray()) {
    const QJsonObject o = t.toObject();
    m.tensors[o.value("name").toString().toStdString()] =
        slice(o.value("offset").toInteger(), o.value("shape").toArray());
  }
  const QJsonObject lg = meta.value("logits").toObject();
  m.logits = slice(lg.value("offset").toInteger(), lg.value("shape").toArray());
  auto tokens = [](const QJsonArray &rows) {
    std::vector<int64_t> ids;
    for (const auto &row : rows)
      for (const auto &v : row.toArray())
        ids.push_back(v.toInteger());
    return at::tensor(ids, at::kLong).view({int64_t(rows.size()), -1});
  };
  m.tokens = tokens(meta.value("tokens").toArray());
  if (meta.contains("long_tokens")) {
    m.longTokens = tokens(meta.value("long_tokens").toArray());
    const QJsonObject ll = meta.value("long_logits").toObject();
    m.longLogits = slice(ll.value("offset").toInteger(), ll.value("shape").toArray());
  }
  return m;
}

// Writes the tiny models into dir and reads `name` back into out. A failure
// fails the calling test function (check QTest::currentTestFailed()).
inline void writeAndReadTinyModel(const QString &dir, const QString &name, TinyModel &out) {
  QString error;
  const QStringList names = writeTinyModels(dir, &error);
  QVERIFY2(names.contains(name), qPrintable(error));
  out = readTinyModel(dir, name);
}

} // namespace lrq::test
