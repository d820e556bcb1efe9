// Per-layer spectra recorded with every `lrq quantize` run and read back with
// `lrq runs show ID --spectra`: singular values of W, of E = W - Ŵ (Ŵ the
// effective weight, low-rank correction included), LQER's scaled error and the
// learned scale exponent of FlexRound / LRQ. Checked on block 0 of the default
// model against numpy (tests/reference/spectra_reference.py): W from the GGUF
// dequantized by gguf-py, Ŵ read back from each run's Hugging Face export, and
// an RTN written from ALGORITHMS.md.
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QtTest>

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include "test_support.h"

using lrq::test::Result;
using lrq::test::runLrq;

namespace {

const QStringList kRoles = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                            "gate_proj", "up_proj", "down_proj"};

std::vector<double> toVector(const QJsonArray &a) {
  std::vector<double> out;
  for (const QJsonValue &v : a)
    out.push_back(v.toDouble());
  return out;
}

// "" when got and want have the same length and agree within tol everywhere.
QString compare(const std::vector<double> &got, const std::vector<double> &want, double tol) {
  if (got.size() != want.size())
    return QString("%1 values, expected %2").arg(got.size()).arg(want.size());
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= tol))
      return QString("value %1: %2, expected %3 (tolerance %4)")
          .arg(i)
          .arg(got[i], 0, 'g', 12)
          .arg(want[i], 0, 'g', 12)
          .arg(tol, 0, 'g', 3);
  return {};
}

bool nonIncreasingAndNonNegative(const std::vector<double> &v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!(v[i] >= 0) || (i > 0 && v[i] > v[i - 1]))
      return false;
  return true;
}

// The spectra of a run by "role/kind", read through `runs show --spectra --json`.
using Spectra = std::map<QString, std::vector<double>>;

} // namespace

class TestRunSpectra : public QObject {
  Q_OBJECT

  QTemporaryDir dir_;
  QString store_, scheme_;
  QString rtnRun_, lqerRun_, flexRun_, lrqRun_, plainRun_;
  QJsonObject reference_; // spectra_reference.py: per role W, E_rtn, exports [rtn, lqer, flex]
  static constexpr int kLqerRank = 8;
  static constexpr int kLrqRank = 4;

  // Block 0 only, 4-bit asymmetric per-channel min/max: the grid the numpy RTN
  // reproduces; few calibration tokens and no evaluation keep the runs short.
  QString quantize(const QString &method, const QStringList &extra) {
    QStringList args = {"quantize",   "default", "--method",  method,      "--scheme",  scheme_,
                        "--nsamples", "2",       "--seq-len", "32",        "--no-eval", "--store",
                        store_,       "--json",  "--quiet",   "--threads", "2"};
    args << extra;
    Result r = runLrq(args);
    if (r.exitCode != 0) {
      qWarning("lrq quantize --method %s failed: %s", qPrintable(method), qPrintable(r.err));
      return {};
    }
    QJsonObject last;
    for (const QByteArray &line : r.out.split('\n'))
      if (!line.trimmed().isEmpty())
        last = QJsonDocument::fromJson(line).object();
    return last["event"].toString() == "finished" ? last["run_id"].toString() : QString();
  }

  Spectra spectra(const QString &run) {
    Spectra out;
    Result r = runLrq({"runs", "show", run, "--spectra", "--json", "--store", store_});
    if (r.exitCode != 0)
      return out;
    for (const QJsonValue &v : lrq::test::parseJson(r)["spectra"].toArray()) {
      const QJsonObject s = v.toObject();
      if (s["block"].toInt() != 0)
        return {}; // only block 0 is selected
      out[s["layer"].toString() + "/" + s["kind"].toString()] = toVector(s["values"].toArray());
    }
    return out;
  }

  QJsonObject ref(const QString &role) const { return reference_[role].toObject(); }
  std::vector<double> refW(const QString &role) const { return toVector(ref(role)["W"].toArray()); }
  QJsonObject refExport(const QString &role, int which) const {
    return ref(role)["exports"].toArray()[which].toObject();
  }
  // Singular values of both sides come from float64 SVDs of the same float32
  // values (or values one rounding apart), so they agree to ~1e-7 of the norm.
  double tolerance(const QString &role) const { return 1e-6 * refW(role).front() + 1e-9; }

private slots:
  void initTestCase() {
    QVERIFY(dir_.isValid());
    store_ = dir_.filePath("runs.sqlite");
    scheme_ = dir_.filePath("w4-block0.json");
    QFile f(scheme_);
    QVERIFY(f.open(QIODevice::WriteOnly));
    f.write("{\"name\": \"W4 block 0\", \"weight\": {\"bits\": 4, \"symmetric\": false, "
            "\"granularity\": \"per-channel\", \"init\": \"minmax\"}, "
            "\"layers\": {\"blocks\": [0]}}");
    f.close();
    const std::string model = lrq::test::defaultModelPath();

    rtnRun_ = quantize("rtn", {"--out", dir_.filePath("rtn")});
    QVERIFY(!rtnRun_.isEmpty());
    // Full-precision factors: Eckart-Young below holds exactly only for them.
    lqerRun_ = quantize("lqer", {"--rank", QString::number(kLqerRank), "--hyper",
                                 R"({"factor_bits": 0})", "--out", dir_.filePath("lqer")});
    QVERIFY(!lqerRun_.isEmpty());
    flexRun_ = quantize("flexround", {"--iters", "4", "--out", dir_.filePath("flexround")});
    QVERIFY(!flexRun_.isEmpty());
    lrqRun_ = quantize("lrq", {"--iters", "4", "--rank", QString::number(kLrqRank)});
    QVERIFY(!lrqRun_.isEmpty());
    plainRun_ = quantize("rtn", {"--no-spectra"});
    QVERIFY(!plainRun_.isEmpty());

    QString error;
    const QByteArray out = lrq::test::runReference(
        "spectra_reference.py",
        {QString::fromStdString(model), "0", "4", "false", "per-channel", "0", dir_.filePath("rtn"),
         dir_.filePath("lqer"), dir_.filePath("flexround")},
        &error);
    QVERIFY2(!out.isEmpty(), qPrintable(error));
    reference_ = QJsonDocument::fromJson(out).object();
    QCOMPARE(reference_.size(), kRoles.size());
  }

  void wAndEMatchTheWeightsOfEveryMethod() {
    // W is the weight each method started from (no SmoothQuant: the
    // full-precision one); E = W - Ŵ with Ŵ the weight the exported model uses.
    const std::vector<std::pair<QString, int>> runs = {
        {rtnRun_, 0}, {lqerRun_, 1}, {flexRun_, 2}, {lrqRun_, -1}};
    for (const auto &[run, exportIndex] : runs) {
      const Spectra s = spectra(run);
      for (const QString &role : kRoles) {
        const QString what = run + " " + role;
        QVERIFY2(s.count(role + "/W") && s.count(role + "/E"), qPrintable(what));
        const QString w = compare(s.at(role + "/W"), refW(role), tolerance(role));
        QVERIFY2(w.isEmpty(), qPrintable(what + " W: " + w));
        QVERIFY2(nonIncreasingAndNonNegative(s.at(role + "/E")), qPrintable(what));
        if (exportIndex < 0)
          continue;
        const QString e =
            compare(s.at(role + "/E"), toVector(refExport(role, exportIndex)["E"].toArray()),
                    tolerance(role));
        QVERIFY2(e.isEmpty(), qPrintable(what + " E: " + e));
      }
    }
  }

  void rtnErrorSpectrumMatchesAnIndependentRtn() {
    const Spectra s = spectra(rtnRun_);
    for (const QString &role : kRoles) {
      // The engine's RTN agrees with the numpy one except where float noise may
      // round a near-tie either way; Weyl bounds what such elements can move.
      const QJsonObject x = refExport(role, 0);
      QCOMPARE(x["rtn_mismatches_off_tie"].toInt(), 0);
      const double tol = x["rtn_dist"].toDouble() + tolerance(role);
      const QString e = compare(s.at(role + "/E"), toVector(ref(role)["E_rtn"].toArray()), tol);
      QVERIFY2(e.isEmpty(), qPrintable(role + " E vs W - RTN(W): " + e));
      // Exactly W and E, nothing method-specific.
      QVERIFY(!s.count(role + "/scaled_E") && !s.count(role + "/scale_exponent"));
    }
    QCOMPARE(int(s.size()), 2 * kRoles.size());
  }

  void lqerStoresTheScaledErrorItCorrected() {
    const Spectra s = spectra(lqerRun_);
    for (const QString &role : kRoles) {
      QVERIFY2(s.count(role + "/scaled_E"), qPrintable(role));
      const std::vector<double> &scaled = s.at(role + "/scaled_E");
      const QJsonArray shape = ref(role)["shape"].toArray();
      QCOMPARE(scaled.size(), size_t(std::min(shape[0].toInt(), shape[1].toInt())));
      QVERIFY(nonIncreasingAndNonNegative(scaled));
      // LQER's s = 1: diag(s) Eᵀ is the transposed RTN error.
      const double tol = refExport(role, 0)["rtn_dist"].toDouble() + tolerance(role);
      const QString e = compare(scaled, toVector(ref(role)["E_rtn"].toArray()), tol);
      QVERIFY2(e.isEmpty(), qPrintable(role + " scaled_E vs W - RTN(W): " + e));
      // Eckart–Young: removing the best rank-k part leaves σ_{k+1}, ..., then k
      // zeros. This holds only if the correction is applied the way round the
      // decoder applies it (Ŵ + (A B)ᵀ).
      std::vector<double> residual(scaled.begin() + kLqerRank, scaled.end());
      residual.resize(scaled.size(), 0.0);
      const QString r = compare(s.at(role + "/E"), residual, 1e-4 * scaled.front());
      QVERIFY2(r.isEmpty(), qPrintable(role + " E vs truncated scaled_E: " + r));
    }
  }

  void flexroundAndLrqStoreTheScaleExponent() {
    for (const QString &run : {flexRun_, lrqRun_}) {
      const Spectra s = spectra(run);
      for (const QString &role : kRoles) {
        const QString what = run + " " + role;
        QVERIFY2(s.count(role + "/scale_exponent"), qPrintable(what));
        QVERIFY2(!s.count(role + "/scaled_E"), qPrintable(what));
        const std::vector<double> &v = s.at(role + "/scale_exponent");
        const QJsonArray shape = ref(role)["shape"].toArray();
        QCOMPARE(v.size(), size_t(std::min(shape[0].toInt(), shape[1].toInt())));
        QVERIFY2(nonIncreasingAndNonNegative(v), qPrintable(what));
        QVERIFY2(v.front() > 0, qPrintable(what + ": nothing learned"));
        if (run != lrqRun_)
          continue;
        // L2·U2 has rank <= r: beyond the r-th value only float32 rounding noise.
        const auto numericalRank =
            std::count_if(v.begin(), v.end(), [&](double x) { return x > 1e-4 * v.front(); });
        QVERIFY2(numericalRank >= 1 && numericalRank <= kLrqRank,
                 qPrintable(what + ": numerical rank " + QString::number(numericalRank)));
      }
    }
  }

  void noSpectraRecordsNone() {
    Result r = runLrq({"runs", "show", plainRun_, "--spectra", "--json", "--store", store_});
    QCOMPARE(r.exitCode, 0);
    QJsonObject j = lrq::test::parseJson(r);
    QVERIFY(j.contains("spectra"));
    QCOMPARE(j["spectra"].toArray().size(), 0);
    QCOMPARE(j["layers"].toArray().size(), kRoles.size());
    // Without --spectra the JSON stays as it was.
    Result plain = runLrq({"runs", "show", lqerRun_, "--json", "--store", store_});
    QCOMPARE(plain.exitCode, 0);
    QVERIFY(!lrq::test::parseJson(plain).contains("spectra"));
  }

  void textListsEverySpectrum() {
    Result r = runLrq({"runs", "show", lqerRun_, "--spectra", "--store", store_});
    QCOMPARE(r.exitCode, 0);
    const QString text = QString::fromUtf8(r.out);
    QVERIFY(text.contains("eff. rank"));
    int lines = 0;
    for (const QString &line : text.split('\n')) {
      const QStringList words = line.simplified().split(' ');
      if (words.size() >= 5 && words[0] == "0" && kRoles.contains(words[1]) &&
          (words[2] == "W" || words[2] == "E" || words[2] == "scaled_E")) {
        ++lines;
        QVERIFY2(words.size() >= 9, qPrintable(line)); // count, rank, 4 largest
        const QJsonArray shape = ref(words[1])["shape"].toArray();
        QCOMPARE(words[3].toInt(), std::min(shape[0].toInt(), shape[1].toInt()));
        const double rank = words[4].toDouble();
        QVERIFY2(rank >= 1 && rank <= words[3].toDouble(), qPrintable(line));
      }
    }
    QCOMPARE(lines, 3 * kRoles.size());
    Result summary = runLrq({"runs", "show", lqerRun_, "--store", store_});
    QVERIFY(summary.out.contains("21 spectra recorded"));
  }
};

QTEST_GUILESS_MAIN(TestRunSpectra)
#include "test_run_spectra.moc"
