#include "widgets/run_bits.h"

#include "core/common/error.h"
#include "core/quant/scheme.h"
#include "core/quant/storage_bits.h"

#include <QDir>
#include <QFile>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QMap>
#include <QStringList>

#include <algorithm>
#include <cstring>

namespace lrq::ui {
namespace {

QJsonObject parseObject(const QString &text) {
  return QJsonDocument::fromJson(text.toUtf8()).object();
}

qint64 jsonInt(const QJsonObject &o, const char *key, qint64 fallback = 0) {
  const QJsonValue v = o.value(QLatin1String(key));
  return v.isDouble() ? qint64(v.toDouble()) : fallback;
}

std::optional<ModelShape> shapeFromHfConfig(const QString &file) {
  QFile f(file);
  if (!f.open(QIODevice::ReadOnly))
    return std::nullopt;
  const QJsonObject c = QJsonDocument::fromJson(f.readAll()).object();
  ModelShape s;
  s.opt = c.value(QStringLiteral("model_type")).toString() == QLatin1String("opt");
  s.hidden = jsonInt(c, "hidden_size");
  s.intermediate = jsonInt(c, s.opt ? "ffn_dim" : "intermediate_size");
  s.heads = jsonInt(c, "num_attention_heads");
  s.kvHeads = jsonInt(c, "num_key_value_heads", s.heads);
  s.headDim = jsonInt(c, "head_dim", s.heads > 0 ? s.hidden / s.heads : 0);
  s.blocks = jsonInt(c, "num_hidden_layers");
  s.vocab = jsonInt(c, "vocab_size");
  if (s.hidden <= 0 || s.intermediate <= 0 || s.heads <= 0 || s.blocks <= 0)
    return std::nullopt;
  return s;
}

// Just enough of GGUF to read the scalar metadata: header, then key/value
// pairs (arrays are skipped, only their length is kept).
class GgufMetadataReader {
public:
  explicit GgufMetadataReader(const QString &path) : file_(path) {}

  bool read(QMap<QString, qint64> *ints, QMap<QString, QString> *strings) {
    if (!file_.open(QIODevice::ReadOnly) || file_.size() < 24)
      return false;
    data_ = file_.map(0, file_.size());
    if (!data_)
      return false;
    size_ = quint64(file_.size());
    if (std::memcmp(data_, "GGUF", 4) != 0)
      return false;
    pos_ = 4;
    quint32 version = 0;
    quint64 tensors = 0, kvCount = 0;
    if (!get(&version) || version < 2 || !get(&tensors) || !get(&kvCount) || kvCount > 1000000)
      return false;
    for (quint64 i = 0; i < kvCount; ++i) {
      QString key;
      quint32 type = 0;
      if (!getString(&key) || !get(&type))
        return false;
      if (type == kString) {
        QString value;
        if (!getString(&value))
          return false;
        strings->insert(key, value);
      } else if (type == kArray) {
        quint32 elementType = 0;
        quint64 count = 0;
        if (!get(&elementType) || !get(&count))
          return false;
        ints->insert(key + QStringLiteral("#count"), qint64(count));
        for (quint64 e = 0; e < count; ++e)
          if (!skipValue(elementType))
            return false;
      } else {
        qint64 value = 0;
        if (!getScalar(type, &value))
          return false;
        ints->insert(key, value);
      }
    }
    return true;
  }

private:
  static constexpr quint32 kString = 8, kArray = 9;

  template <typename T> bool get(T *out) {
    if (pos_ + sizeof(T) > size_)
      return false;
    std::memcpy(out, data_ + pos_, sizeof(T)); // GGUF is little-endian, as is every target
    pos_ += sizeof(T);
    return true;
  }
  bool getString(QString *out) {
    quint64 n = 0;
    if (!get(&n) || n > size_ - pos_)
      return false;
    if (out)
      *out = QString::fromUtf8(reinterpret_cast<const char *>(data_ + pos_), qsizetype(n));
    pos_ += n;
    return true;
  }
  static int scalarSize(quint32 type) {
    switch (type) {
    case 0: // uint8
    case 1: // int8
    case 7: // bool
      return 1;
    case 2: // uint16
    case 3: // int16
      return 2;
    case 4: // uint32
    case 5: // int32
    case 6: // float32
      return 4;
    case 10: // uint64
    case 11: // int64
    case 12: // float64
      return 8;
    default:
      return 0;
    }
  }
  bool getScalar(quint32 type, qint64 *out) {
    const int n = scalarSize(type);
    if (n == 0 || pos_ + quint64(n) > size_)
      return false;
    const uchar *p = data_ + pos_;
    switch (type) {
    case 0:
    case 7:
      *out = p[0];
      break;
    case 1:
      *out = qint8(p[0]);
      break;
    case 2: {
      quint16 v;
      std::memcpy(&v, p, 2);
      *out = v;
      break;
    }
    case 3: {
      qint16 v;
      std::memcpy(&v, p, 2);
      *out = v;
      break;
    }
    case 4: {
      quint32 v;
      std::memcpy(&v, p, 4);
      *out = v;
      break;
    }
    case 5: {
      qint32 v;
      std::memcpy(&v, p, 4);
      *out = v;
      break;
    }
    case 10:
    case 11: {
      qint64 v;
      std::memcpy(&v, p, 8);
      *out = v;
      break;
    }
    default: // floats: not needed as integers
      *out = 0;
    }
    pos_ += quint64(n);
    return true;
  }
  bool skipValue(quint32 type) {
    if (type == kString)
      return getString(nullptr);
    const int n = scalarSize(type);
    if (n == 0 || pos_ + quint64(n) > size_)
      return false; // nested arrays do not occur in model metadata
    pos_ += quint64(n);
    return true;
  }

  QFile file_;
  const uchar *data_ = nullptr;
  quint64 size_ = 0;
  quint64 pos_ = 0;
};

std::optional<ModelShape> shapeFromGguf(const QString &path) {
  QMap<QString, qint64> ints;
  QMap<QString, QString> strings;
  if (!GgufMetadataReader(path).read(&ints, &strings))
    return std::nullopt;
  const QString arch = strings.value(QStringLiteral("general.architecture"));
  if (arch.isEmpty())
    return std::nullopt;
  auto key = [&](const char *name, qint64 fallback = 0) {
    return ints.value(arch + QLatin1Char('.') + QLatin1String(name), fallback);
  };
  ModelShape s;
  s.hidden = key("embedding_length");
  s.intermediate = key("feed_forward_length");
  s.heads = key("attention.head_count");
  s.kvHeads = key("attention.head_count_kv", s.heads);
  s.headDim = key("attention.key_length", s.heads > 0 ? s.hidden / s.heads : 0);
  s.blocks = key("block_count");
  s.vocab = key("vocab_size", ints.value(QStringLiteral("tokenizer.ggml.tokens#count")));
  if (s.hidden <= 0 || s.intermediate <= 0 || s.heads <= 0 || s.blocks <= 0)
    return std::nullopt;
  return s;
}

// One quantized matrix, out × in.
struct Matrix {
  qint64 out = 0, in = 0;
  bool lowRank = false; // a block linear (methods with factors add them there only)
};

// The block linears of one block, by the names schemes use.
QList<QPair<QString, Matrix>> blockLinears(const ModelShape &s) {
  const qint64 attn = s.heads * s.headDim, kv = s.kvHeads * s.headDim;
  QList<QPair<QString, Matrix>> l{{QStringLiteral("q_proj"), {attn, s.hidden, true}},
                                  {QStringLiteral("k_proj"), {kv, s.hidden, true}},
                                  {QStringLiteral("v_proj"), {kv, s.hidden, true}}};
  if (s.opt) {
    l.append({QStringLiteral("out_proj"), {s.hidden, attn, true}});
    l.append({QStringLiteral("fc1"), {s.intermediate, s.hidden, true}});
    l.append({QStringLiteral("fc2"), {s.hidden, s.intermediate, true}});
  } else {
    l.append({QStringLiteral("o_proj"), {s.hidden, attn, true}});
    l.append({QStringLiteral("gate_proj"), {s.intermediate, s.hidden, true}});
    l.append({QStringLiteral("up_proj"), {s.intermediate, s.hidden, true}});
    l.append({QStringLiteral("down_proj"), {s.hidden, s.intermediate, true}});
  }
  return l;
}

// Schemes may name OPT's linears by their LLaMA names and the reverse.
QString canonicalLinear(const QString &name) {
  if (name == QLatin1String("out_proj"))
    return QStringLiteral("o_proj");
  if (name == QLatin1String("fc1"))
    return QStringLiteral("up_proj");
  if (name == QLatin1String("fc2"))
    return QStringLiteral("down_proj");
  return name;
}

} // namespace

std::optional<ModelShape> readModelShape(const QString &path) {
  if (path.isEmpty())
    return std::nullopt;
  const QFileInfo info(path);
  if (info.isDir())
    return shapeFromHfConfig(QDir(path).filePath(QStringLiteral("config.json")));
  if (!info.isFile())
    return std::nullopt;
  if (path.endsWith(QLatin1String(".gguf"), Qt::CaseInsensitive))
    return shapeFromGguf(path);
  return shapeFromHfConfig(info.dir().filePath(QStringLiteral("config.json")));
}

std::optional<qint64> rankOf(const QString &hyperparametersJson) {
  const QJsonValue v = parseObject(hyperparametersJson).value(QStringLiteral("rank"));
  if (!v.isDouble())
    return std::nullopt;
  return qint64(v.toDouble());
}

std::optional<double> estimateBitsPerWeight(const QString &method, const QString &schemeJson,
                                            const QString &hyperparametersJson,
                                            const ModelShape *shape) {
  const QJsonObject scheme = parseObject(schemeJson);
  const QJsonObject weight = scheme.value(QStringLiteral("weight")).toObject();
  const qint64 bits = jsonInt(weight, "bits");
  if (bits <= 0)
    return std::nullopt;
  const QString granularity = weight.value(QStringLiteral("granularity")).toString();
  const qint64 group = jsonInt(weight, "group_size");
  const bool symmetric = weight.value(QStringLiteral("symmetric")).toBool(false);
  const double stepBits = 16.0 + (symmetric ? 0.0 : double(bits));
  const bool perGroup = granularity == QLatin1String("per-group") && group > 0;
  const bool perChannel = granularity == QLatin1String("per-channel");

  const QJsonObject hyper = parseObject(hyperparametersJson);
  const bool factors = method == QLatin1String("lqer") || method == QLatin1String("l2qer");
  const qint64 rank = factors ? jsonInt(hyper, "rank") : 0;
  const qint64 factorBitsHyper = jsonInt(hyper, "factor_bits");
  // A scheme the engine reads gives each matrix its own grid (step formats,
  // gguf-q6_k's fallback for rows that are not whole super-blocks).
  std::optional<lrq::quant::QuantScheme> parsed;
  try {
    parsed = lrq::quant::QuantScheme::fromJson(schemeJson.toStdString());
  } catch (const lrq::Error &) {
  }
  const bool superBlocks = parsed && lrq::quant::isSuperBlockFormat(parsed->weight.stepFormat);

  if (!shape) {
    if (rank > 0 || (parsed && parsed->mixesGrids()))
      return std::nullopt; // depends on the shapes
    if (superBlocks)
      return lrq::quant::effectiveBitsPerWeight(parsed->weight, 1, lrq::quant::kSuperBlockColumns);
    if (perGroup)
      return double(bits) + stepBits / double(group);
    if (perChannel)
      return std::nullopt;
    return double(bits);
  }

  // The matrices the scheme selects.
  const QJsonObject layers = scheme.value(QStringLiteral("layers")).toObject();
  QList<qint64> blocks;
  const QJsonValue blocksValue = layers.value(QStringLiteral("blocks"));
  if (blocksValue.isArray()) {
    for (const QJsonValue &b : blocksValue.toArray())
      if (b.toInt(-1) >= 0 && b.toInt() < shape->blocks)
        blocks.append(b.toInt());
  } else {
    for (qint64 b = 0; b < shape->blocks; ++b)
      blocks.append(b);
  }
  QStringList linears; // empty: all
  const QJsonValue linearsValue = layers.value(QStringLiteral("linears"));
  if (linearsValue.isArray())
    for (const QJsonValue &n : linearsValue.toArray())
      linears.append(canonicalLinear(n.toString()));

  QList<Matrix> matrices;
  const auto perBlock = blockLinears(*shape);
  for (const auto &[name, m] : perBlock)
    if (linears.isEmpty() || linears.contains(canonicalLinear(name)))
      for (int i = 0; i < blocks.size(); ++i)
        matrices.append(m);
  const bool embeddings = layers.value(QStringLiteral("embeddings")).toBool(false);
  const bool lmHead = layers.value(QStringLiteral("lm_head")).toBool(false);
  if (embeddings || lmHead) {
    if (shape->vocab <= 0)
      return std::nullopt;
    for (int i = 0; i < int(embeddings) + int(lmHead); ++i)
      matrices.append({shape->vocab, shape->hidden, false});
  }
  if (matrices.isEmpty())
    return std::nullopt;

  // The engine's storage formula (core/quant/storage_bits.h), per matrix.
  lrq::quant::GridSpec grid;
  grid.bits = int(bits);
  grid.symmetric = symmetric;
  grid.granularity = perGroup     ? lrq::quant::Granularity::PerGroup
                     : perChannel ? lrq::quant::Granularity::PerChannel
                                  : lrq::quant::Granularity::PerTensor;
  grid.groupSize = group;
  double weights = 0, totalBits = 0;
  for (const Matrix &m : matrices) {
    const double n = double(m.out) * double(m.in);
    const qint64 r = m.lowRank && rank > 0 ? std::min(rank, std::min(m.in, m.out)) : 0;
    weights += n;
    totalBits +=
        n * lrq::quant::effectiveBitsPerWeight(parsed ? parsed->weightFor(m.in) : grid, m.out, m.in,
                                               r, factorBitsHyper > 0 ? int(factorBitsHyper) : 0);
  }
  return totalBits / weights;
}

} // namespace lrq::ui
