#pragma once
// Raw little-endian tensor files exchanged with the tests/reference scripts.
#include <ATen/ATen.h>
#include <QByteArray>
#include <QFile>
#include <QtTest>

#include <cstring>
#include <vector>

namespace lrq::test {

// Writes t as float32 (fails the running test on an I/O error).
inline void writeRaw(const QString &path, const at::Tensor &t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  QFile f(path);
  QVERIFY(f.open(QIODevice::WriteOnly));
  const qint64 bytes = qint64(c.numel() * sizeof(float));
  QCOMPARE(f.write(reinterpret_cast<const char *>(c.data_ptr<float>()), bytes), bytes);
}

// Raw file as a tensor of the given type and shape; undefined when missing or
// of the wrong size.
inline at::Tensor readRaw(const QString &path, at::ScalarType type, std::vector<int64_t> shape) {
  QFile f(path);
  if (!f.open(QIODevice::ReadOnly))
    return {};
  const QByteArray bytes = f.readAll();
  at::Tensor t = at::empty(shape, type);
  if (qint64(t.numel() * t.element_size()) != bytes.size())
    return {};
  std::memcpy(t.data_ptr(), bytes.constData(), size_t(bytes.size()));
  return t;
}

} // namespace lrq::test
