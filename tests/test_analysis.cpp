// Tensor statistics, histograms and singular values against hand computation
// and numpy (tests/reference/decoder_reference.py svd).
#include <ATen/ATen.h>

#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <cmath>
#include <vector>

#include "core/analysis/tensor_analysis.h"
#include "core/common/error.h"
#include "test_support.h"

using namespace lrq;

namespace {

// Moments the textbook way, in one loop per moment over a std::vector.
analysis::Statistics handStatistics(const std::vector<double> &x) {
  analysis::Statistics s;
  const double n = double(x.size());
  s.numel = int64_t(x.size());
  s.min = s.max = x[0];
  double sum = 0;
  for (double v : x) {
    s.min = std::min(s.min, v);
    s.max = std::max(s.max, v);
    sum += v;
  }
  s.mean = sum / n;
  double m2 = 0, m4 = 0;
  for (double v : x) {
    m2 += (v - s.mean) * (v - s.mean);
    m4 += std::pow(v - s.mean, 4);
  }
  m2 /= n;
  m4 /= n;
  s.std = std::sqrt(m2);
  s.absMax = std::max(std::abs(s.min), std::abs(s.max));
  s.kurtosis = m4 / (m2 * m2) - 3.0;
  return s;
}

bool close(double a, double b, double tol) {
  return std::abs(a - b) <= tol * std::max(1.0, std::abs(b));
}

} // namespace

class TestAnalysis : public QObject {
  Q_OBJECT

private slots:
  void statisticsOfSmallVector() {
    // 1,2,3,4,10: mean 4, m2 = 50/5 = 10, m4 = 1394/5 = 278.8, excess kurtosis -0.212.
    const analysis::Statistics s =
        analysis::tensorStatistics(at::tensor(std::vector<float>{1, 2, 3, 4, 10}));
    QCOMPARE(s.numel, int64_t(5));
    QCOMPARE(s.min, 1.0);
    QCOMPARE(s.max, 10.0);
    QCOMPARE(s.absMax, 10.0);
    QVERIFY(close(s.mean, 4.0, 1e-12));
    QVERIFY(close(s.std, std::sqrt(10.0), 1e-12));
    QVERIFY(close(s.kurtosis, 278.8 / 100.0 - 3.0, 1e-12));
    // Integers work too; absMax takes the negative side.
    const analysis::Statistics i = analysis::tensorStatistics(at::tensor({-7, 1, 2}, at::kInt));
    QCOMPARE(i.absMax, 7.0);
    QVERIFY(close(i.mean, -4.0 / 3.0, 1e-12));
  }

  // More elements than one conversion chunk (4M), with a large offset that a
  // one-pass variance would lose precision on.
  void statisticsOfLargeTensorMatchLoop() {
    at::manual_seed(3);
    const at::Tensor t = (at::randn({5'000'000}) * 0.02 + 3.0).pow(3); // skewed, heavy-ish tail
    std::vector<double> x(size_t(t.numel()));
    const float *p = t.data_ptr<float>();
    for (size_t k = 0; k < x.size(); ++k)
      x[k] = p[k];
    const analysis::Statistics hand = handStatistics(x);
    const analysis::Statistics s = analysis::tensorStatistics(t.view({1000, -1, 1}));
    QCOMPARE(s.numel, hand.numel);
    QCOMPARE(s.min, hand.min);
    QCOMPARE(s.max, hand.max);
    QVERIFY(close(s.mean, hand.mean, 1e-12));
    QVERIFY(close(s.std, hand.std, 1e-9));
    QVERIFY(close(s.kurtosis, hand.kurtosis, 1e-7));
    QVERIFY(s.kurtosis > 0.0); // cube of a Gaussian around 3 is slightly heavy-tailed
  }

  void statisticsRejectEmpty() {
    QVERIFY_THROWS_EXCEPTION(Error, analysis::tensorStatistics(at::zeros({0})));
  }

  void histogramCountsByHand() {
    const at::Tensor t =
        at::tensor(std::vector<float>{0.5f, 1.5f, 1.7f, 3.9f, 4.0f, 5.0f, -1.0f, 0.0f, 2.2f});
    // Bins over [0, 4] of width 1; 5 and -1 lie outside; 4.0 falls in the last bin.
    const analysis::HistogramBins h = analysis::tensorHistogram(t, 4, 0.0, 4.0);
    QCOMPARE(h.lo, 0.0);
    QCOMPARE(h.hi, 4.0);
    QCOMPARE(h.counts, (std::vector<double>{2, 2, 1, 2}));

    // Default range: the tensor's min and max, so every element is counted.
    const analysis::HistogramBins d = analysis::tensorHistogram(t, 3);
    QCOMPARE(d.lo, -1.0);
    QCOMPARE(d.hi, 5.0);
    QCOMPARE(d.counts, (std::vector<double>{3, 3, 3})); // [-1,1) [1,3) [3,5]

    const analysis::HistogramBins c = analysis::tensorHistogram(at::full({7}, 2.0), 5);
    QCOMPARE(c.lo, 1.5);
    QCOMPARE(c.hi, 2.5);
    QCOMPARE(c.counts, (std::vector<double>{0, 0, 7, 0, 0}));
    QVERIFY_THROWS_EXCEPTION(Error, analysis::tensorHistogram(t, 0));
  }

  void singularValuesMatchNumpy() {
    QTemporaryDir tmp;
    const QString path = tmp.filePath("matrix.bin");
    QString error;
    const QByteArray json =
        test::runReference("decoder_reference.py", {"svd", path, "60", "35"}, &error);
    QVERIFY2(!json.isEmpty(), qPrintable(error));
    const QJsonArray ref =
        QJsonDocument::fromJson(json).object().value("singular_values").toArray();
    QFile f(path);
    QVERIFY(f.open(QIODevice::ReadOnly));
    const QByteArray blob = f.readAll();
    QCOMPARE(blob.size(), qsizetype(60 * 35 * 4));
    const at::Tensor m =
        at::from_blob(const_cast<char *>(blob.constData()), {60, 35}, at::kFloat).clone();
    const analysis::Spectrum s = analysis::singularValues(m);
    QVERIFY(s.float64);
    QCOMPARE(s.values.size(), size_t(ref.size()));
    QCOMPARE(s.values.size(), size_t(35));
    for (size_t i = 0; i < s.values.size(); ++i)
      QVERIFY2(std::abs(s.values[i] - ref[qsizetype(i)].toDouble()) <= 1e-9 * s.values[0],
               qPrintable(QString("sv %1: %2 vs %3")
                              .arg(i)
                              .arg(s.values[i])
                              .arg(ref[qsizetype(i)].toDouble())));
    QVERIFY(s.values.front() / s.values.back() > 100); // the spectrum is spread out
  }

  // U diag(s) V^T with random orthogonal U, V has singular values s.
  void singularValuesOfConstructedMatrix() {
    at::manual_seed(11);
    const at::Tensor u = std::get<0>(at::linalg_qr(at::randn({50, 20}, at::kDouble)));
    const at::Tensor v = std::get<0>(at::linalg_qr(at::randn({30, 20}, at::kDouble)));
    std::vector<double> sv;
    for (int i = 0; i < 20; ++i)
      sv.push_back(std::pow(0.7, i) * 5.0); // descending
    const at::Tensor a = at::matmul(u * at::tensor(sv, at::kDouble), v.t()).to(at::kFloat);
    const analysis::Spectrum s = analysis::singularValues(a);
    QCOMPARE(s.values.size(), size_t(30));
    for (size_t i = 0; i < 20; ++i)
      QVERIFY2(std::abs(s.values[i] - sv[i]) < 1e-5,
               qPrintable(QString("%1 vs %2").arg(s.values[i]).arg(sv[i])));
    for (size_t i = 20; i < 30; ++i)
      QVERIFY(s.values[i] < 1e-5); // rank 20
  }

  void singularValuesNeedAMatrix() {
    QVERIFY_THROWS_EXCEPTION(Error, analysis::singularValues(at::ones({5})));
    QVERIFY_THROWS_EXCEPTION(Error, analysis::singularValues(at::ones({2, 3, 4})));
    QVERIFY_THROWS_EXCEPTION(Error, analysis::gramSingularValues(at::ones({5})));
    QVERIFY_THROWS_EXCEPTION(Error, analysis::gramSingularValues(at::ones({0, 3})));
  }

  // The Gram route: U diag(s) V^T again, tall and wide, down to where float64's
  // √epsilon lets it resolve values (4 decades below the largest here).
  void gramSingularValuesOfConstructedMatrix() {
    at::manual_seed(12);
    const at::Tensor u = std::get<0>(at::linalg_qr(at::randn({70, 25}, at::kDouble)));
    const at::Tensor v = std::get<0>(at::linalg_qr(at::randn({40, 25}, at::kDouble)));
    std::vector<double> sv;
    for (int i = 0; i < 25; ++i)
      sv.push_back(std::pow(0.7, i) * 3.0); // 3 down to 5e-4
    const at::Tensor a = at::matmul(u * at::tensor(sv, at::kDouble), v.t());
    for (const at::Tensor &m : {a, a.t().contiguous(), a.to(at::kFloat).to(at::kDouble)}) {
      const analysis::Spectrum s = analysis::gramSingularValues(m);
      QCOMPARE(s.values.size(), size_t(40));
      for (size_t i = 0; i < 25; ++i)
        QVERIFY2(std::abs(s.values[i] - sv[i]) <= 1e-6 * sv[0],
                 qPrintable(QString("%1 vs %2").arg(s.values[i]).arg(sv[i])));
      for (size_t i = 25; i < 40; ++i)
        QVERIFY2(s.values[i] >= 0 && s.values[i] < 1e-6 * sv[0], qPrintable(QString::number(i)));
      for (size_t i = 1; i < 40; ++i)
        QVERIFY(s.values[i] <= s.values[i - 1]);
    }
  }
};

QTEST_GUILESS_MAIN(TestAnalysis)
#include "test_analysis.moc"
