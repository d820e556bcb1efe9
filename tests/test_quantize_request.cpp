// The quantization request's option table: every option round-trips
// CLI -> request -> JSON -> request, resume refuses a changed option and names
// it, bad requests are refused before any work with a message naming the
// option, and the method catalog (presets, resumability, learnable counts).
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <QDir>

#include <algorithm>
#include <set>

#include "core/session/model_session.h"
#include "core/session/quantize_job.h"
#include "core/session/quantize_request.h"
#include "test_support.h"

using namespace lrq;
using lrq::test::Result;
using lrq::test::runLrq;

namespace {

// A value for the option that differs from the default request's, as CLI text.
QString nonDefaultText(const RequestOption &o, const QString &dir) {
  const QuantizeRequest defaults;
  switch (o.type) {
  case ValueType::Flag:
    return {};
  case ValueType::Integer:
    return QString::number(qint64(o.minimum) + 3);
  case ValueType::Number: {
    const double current = std::get<double>(o.get(defaults));
    const double v = o.minimum + (o.maximum - o.minimum) * 0.25;
    return QString::number(v == current ? o.minimum : v, 'g', 17);
  }
  case ValueType::Choice:
    for (const std::string &c : o.choices)
      if (!c.empty() && OptionValue(c) != o.get(defaults))
        return QString::fromStdString(c);
    return {};
  case ValueType::Path:
    return dir + "/" + QString::fromStdString(o.flag.empty() ? "model" : o.flag) + ".txt";
  case ValueType::Text:
    if (o.key == "gguf_float_types")
      return "token_embd.weight=f16";
    // A scheme every export can hold (compressed-tensors stores 4 and 8 bits).
    return o.key == "scheme" ? "W4A16-g128" : "run-" + QString::fromStdString(o.flag);
  case ValueType::Hyperparams:
    return R"({"iters": 7, "batch_size": 1})";
  }
  return {};
}

void writeText(const QString &path, const QByteArray &bytes) {
  QFile f(path);
  QVERIFY(f.open(QIODevice::WriteOnly));
  f.write(bytes);
}

bool hasProblem(const std::vector<RequestProblem> &problems, const std::string &key,
                const QString &mention = {}) {
  return std::any_of(problems.begin(), problems.end(), [&](const RequestProblem &p) {
    return p.key == key &&
           (mention.isEmpty() || QString::fromStdString(p.message).contains(mention));
  });
}

} // namespace

class TestQuantizeRequest : public QObject {
  Q_OBJECT
  QTemporaryDir dir_;

private slots:
  void initTestCase() { QVERIFY(dir_.isValid()); }

  void tableIsConsistent() {
    std::set<std::string> flags, keys;
    for (const RequestOption &o : quantizeRequestOptions()) {
      QVERIFY2(!o.label.empty() && !o.help.empty() && !o.group.empty(), o.flag.c_str());
      QVERIFY(o.get && o.set);
      if (!o.flag.empty())
        QVERIFY2(flags.insert(o.flag).second, o.flag.c_str());
      if (!o.key.empty())
        QVERIFY2(keys.insert(o.key).second, o.key.c_str());
      QVERIFY2(!o.key.empty() || !o.hyperparameter.empty(), o.flag.c_str());
      if (o.type == ValueType::Integer || o.type == ValueType::Number)
        QVERIFY2(o.minimum < o.maximum, o.flag.c_str());
      // Defaults pass their own checks.
      if (!o.key.empty() && o.type != ValueType::Path && o.type != ValueType::Text)
        parseOptionValue(o, requestOptionText(QuantizeRequest{}, o));
    }
    QVERIFY(findRequestOption("nsamples") == findRequestOption("samples"));
    QVERIFY(findRequestOption("no-such-option") == nullptr);
  }

  // Each option alone: its text form through the table, then JSON and back.
  void everyOptionRoundTripsThroughJson() {
    for (const RequestOption &o : quantizeRequestOptions()) {
      if (o.key.empty())
        continue; // shortcuts land in hyperparameters, checked below
      QuantizeRequest r;
      if (o.type == ValueType::Flag)
        o.set(r, !std::get<bool>(o.get(r)));
      else
        setRequestOption(r, o, nonDefaultText(o, dir_.path()).toStdString());
      QVERIFY2(o.get(r) != o.get(QuantizeRequest{}) || o.type == ValueType::Hyperparams,
               o.key.c_str());
      const QuantizeRequest back = requestFromJson(requestToJson(r));
      QVERIFY2(o.get(back) == o.get(r),
               qPrintable(QString::fromStdString(o.key + ": " + requestOptionText(back, o) +
                                                 " vs " + requestOptionText(r, o))));
      QVERIFY2(requestDifferences(r, back).empty(), o.key.c_str());
    }
    QuantizeRequest r;
    setRequestOption(r, *findRequestOption("rank"), "12");
    setRequestOption(r, *findRequestOption("lr"), "0.002");
    const QuantizeRequest back = requestFromJson(requestToJson(r));
    QCOMPARE(std::get<int64_t>(back.hyperparameters.at("rank")), int64_t(12));
    QCOMPARE(std::get<double>(back.hyperparameters.at("lr")), 0.002);
  }

  // Every option at once through the real command line (`--dry-run` prints the
  // request it would run), then JSON -> request: each value arrives.
  void everyOptionRoundTripsFromTheCommandLine() {
    const QString calib = dir_.filePath("calib.txt"), evalText = dir_.filePath("eval.txt");
    writeText(calib, "calibration text\n");
    writeText(evalText, "evaluation text\n");
    const QString ggufScheme = dir_.filePath("gguf-scheme.json");
    writeText(ggufScheme, R"({"weight": {"bits": 4, "symmetric": true, "granularity": "per-group",
                         "group_size": 32, "step_format": "f16"}})");
    QStringList args{"quantize", "default", "--dry-run", "--quiet"};
    QuantizeRequest expected;
    for (const RequestOption &o : quantizeRequestOptions()) {
      if (o.flag.empty() || o.key == "resume" || o.key == "preset" || o.key == "hyperparameters" ||
          !o.hyperparameter.empty())
        continue; // resume/preset change what runs; hyperparameters are checked below
      QString value = nonDefaultText(o, dir_.path());
      if (o.key == "method")
        value = "lrq";
      if (o.key == "calibration_text")
        value = calib;
      if (o.key == "evaluation_text")
        value = evalText;
      if (o.key == "scheme") // one a GGUF export (--gguf) can store
        value = ggufScheme;
      args << "--" + QString::fromStdString(o.flag);
      if (o.type == ValueType::Flag) {
        o.set(expected, !o.negated);
      } else {
        args << value;
        setRequestOption(expected, o, value.toStdString());
      }
    }
    args << "--hyper"
         << R"({"batch_size": 1})"
         << "--rank"
         << "12"
         << "--iters"
         << "9";
    expected.hyperparameters = {
        {"batch_size", int64_t(1)}, {"rank", int64_t(12)}, {"iters", int64_t(9)}};
    Result r = runLrq(args);
    QVERIFY2(r.exitCode == 0, qPrintable(r.err));
    const QuantizeRequest got = requestFromJson(r.out.toStdString());
    for (const RequestOption &o : quantizeRequestOptions()) {
      if (o.key.empty() || o.key == "model")
        continue;
      const std::string a = requestOptionText(got, o),
                        b = requestOptionText(requestFromJson(requestToJson(expected)), o);
      QVERIFY2(a == b, qPrintable(QString::fromStdString(o.key + ": " + a + " vs " + b)));
    }
  }

  void presetsFillWhatTheUserDidNotGive() {
    QuantizeRequest r;
    r.method = "lrq";
    r.preset = "demo";
    r.samples = 5;
    applyPreset(r, {"samples"});
    QCOMPARE(r.samples, int64_t(5)); // given: kept
    QCOMPARE(r.seqLen, int64_t(128));
    QCOMPARE(std::get<int64_t>(r.hyperparameters.at("iters")), int64_t(50));
    QCOMPARE(std::get<double>(r.hyperparameters.at("lr")), 3e-3); // LRQ's demo rate
    QuantizeRequest f;
    f.method = "flexround";
    f.preset = "demo";
    applyPreset(f);
    QVERIFY(!f.hyperparameters.count("lr")); // FlexRound keeps its own default
    QuantizeRequest q;
    q.method = "lrqat";
    q.preset = "thorough";
    applyPreset(q);
    QCOMPARE(std::get<int64_t>(q.hyperparameters.at("steps")), int64_t(1000));
    QCOMPARE(q.evalSeqLen, int64_t(1024));
    QuantizeRequest e;
    e.method = "flexround";
    e.preset = "extended";
    applyPreset(e);
    QCOMPARE(e.samples, int64_t(64));
    QCOMPARE(e.seqLen, int64_t(256));
    QCOMPARE(std::get<int64_t>(e.hyperparameters.at("iters")), int64_t(200));
    QuantizeRequest bad;
    bad.preset = "fast";
    QVERIFY_THROWS_EXCEPTION(OptionError, applyPreset(bad));
  }

  void resumeRefusesAChangedOptionAndNamesIt() {
    QuantizeRequest a;
    a.method = "lrq";
    QuantizeRequest b = a;
    b.samples = 3;
    b.storePath = "/elsewhere/runs.sqlite";           // where things go: not a difference
    b.exportDir = dir_.filePath("out").toStdString(); // after the method: may change
    std::vector<RequestDifference> d = requestDifferences(a, b);
    QCOMPARE(int(d.size()), 1);
    QCOMPARE(d[0].option->key, std::string("samples"));
    QCOMPARE(d[0].option->flag, std::string("nsamples"));
    QCOMPARE(d[0].first, std::string("32"));
    QCOMPARE(d[0].second, std::string("3"));
    b = a;
    b.hyperparameters["rank"] = int64_t(8);
    d = requestDifferences(a, b);
    QCOMPARE(int(d.size()), 1);
    QCOMPARE(d[0].option->key, std::string("hyperparameters"));
    // Relative and absolute paths to the same file are the same setting.
    a.calibrationText = "calib.txt";
    b = a;
    b.calibrationText = QDir::current().absoluteFilePath("calib.txt").toStdString();
    QVERIFY(requestDifferences(a, b).empty());
  }

  // --gguf: a grid llama.cpp cannot store, LQER factors, an existing file
  // without --force and a bad --gguf-float are refused before any work.
  void ggufExportIsRefusedBeforeAnyWork() {
    const QString scheme = dir_.filePath("q4_0-grid.json");
    writeText(scheme, R"({"weight": {"bits": 4, "symmetric": true, "granularity": "per-group",
                      "group_size": 32, "step_format": "f16"}})");
    QuantizeRequest r;
    r.ggufPath = dir_.filePath("out.gguf").toStdString();
    r.scheme = "W3A16";
    QVERIFY(hasProblem(checkRequest(r), "gguf_path", "W3 asym per-channel"));
    QVERIFY(hasProblem(checkRequest(r), "gguf_path", "--scheme gguf-q4_1"));
    // The block's shape with float32 steps: not storable either.
    const QString f32Steps = dir_.filePath("q4_0-f32-steps.json");
    writeText(f32Steps, R"({"weight": {"bits": 4, "symmetric": true, "granularity": "per-group",
                        "group_size": 32}})");
    r.scheme = f32Steps.toStdString();
    QVERIFY(hasProblem(checkRequest(r), "gguf_path", "half-precision"));
    QVERIFY(hasProblem(checkRequest(r), "gguf_path", "--scheme gguf-q4_0"));
    r.scheme = scheme.toStdString();
    QVERIFY(checkRequest(r).empty());
    for (const char *preset : {"gguf-q8_0", "gguf-q4_0", "gguf-q5_0", "gguf-q4_1", "gguf-q5_1"}) {
      r.scheme = preset;
      QVERIFY2(checkRequest(r).empty(), preset);
    }
    r.method = "lqer";
    QVERIFY(hasProblem(checkRequest(r), "gguf_path", "low-rank"));
    r.method = "rtn";
    r.ggufFloatTypes = "token_embd.weight=q4_0";
    QVERIFY(hasProblem(checkRequest(r), "gguf_float_types", "f32, f16, q8_0 or q6_k"));
    r.ggufFloatTypes = "token_embd.weight=q8_0,output.weight=q6_k";
    QVERIFY(checkRequest(r).empty());
    r.ggufFloatTypes = "token_embd.weight=f16,re:blk\\..*=f32";
    QVERIFY(checkRequest(r).empty());
    writeText(QString::fromStdString(r.ggufPath), "old");
    QVERIFY(hasProblem(checkRequest(r), "gguf_path", "--force"));
    r.overwrite = true;
    QVERIFY(checkRequest(r).empty());
  }

  void badRequestsAreRefusedBeforeAnyWork() {
    QuantizeRequest ok;
    QVERIFY(checkRequest(ok).empty());

    QuantizeRequest r;
    r.samples = 0;
    QVERIFY(hasProblem(checkRequest(r), "samples", "Calibration samples"));
    r = {};
    r.method = "nosuch";
    QVERIFY(hasProblem(checkRequest(r), "method", "rtn"));
    r = {};
    r.method = "lrq";
    r.hyperparameters["rank"] = int64_t(-1);
    QVERIFY(hasProblem(checkRequest(r), "hyperparameters.rank", "between"));
    r.hyperparameters = {{"rank", std::string("big")}};
    QVERIFY(hasProblem(checkRequest(r), "hyperparameters.rank", "whole number"));
    r.hyperparameters = {{"rnk", int64_t(3)}};
    QVERIFY(hasProblem(checkRequest(r), "hyperparameters.rnk", "rank"));
    // Values each valid alone that the method refuses: a rank rule it does not
    // know, a rank beside the reference rule (which sets the ranks itself).
    r.hyperparameters = {{"rank_rule", std::string("hybrid")}};
    QVERIFY(hasProblem(checkRequest(r), "hyperparameters", "fixed or reference"));
    r.hyperparameters = {{"rank_rule", std::string("reference")}, {"rank", int64_t(8)}};
    QVERIFY(hasProblem(checkRequest(r), "hyperparameters", "leave rank at 0"));
    r.hyperparameters = {{"rank_rule", std::string("reference")}};
    QVERIFY(checkRequest(r).empty());
    // The live count never throws, whatever the form holds.
    QCOMPARE(methodInfo("lrq").learnableParameters(576, 1536, {{"rank_rule", std::string("x")}}),
             methodInfo("lrq").learnableParameters(576, 1536, {}));
    QCOMPARE(methodInfo("lrq").learnableParameters(576, 1536, {{"rank_rule", int64_t(3)}}),
             methodInfo("lrq").learnableParameters(576, 1536, {}));
    QCOMPARE(
        methodInfo("lrq").learnableParameters(576, 1536, {{"rank_rule", std::string("reference")}}),
        int64_t(576 * (576 + 1536) + 2 * 576 + 1536));
    r = {};
    r.scheme = "W5A5";
    QVERIFY(hasProblem(checkRequest(r), "scheme", "W5A5"));
    const QString scheme = dir_.filePath("bad-scheme.json");
    writeText(scheme, R"({"weight": {"bits": 9}})");
    r.scheme = scheme.toStdString();
    QVERIFY(hasProblem(checkRequest(r), "scheme", "bits"));
    // A scheme the method cannot honour: LR-QAT's int8 Phi0 has no fractional
    // bit left at 8-bit weights, so training could never change a code.
    r = {};
    r.method = "lrqat";
    r.scheme = "W8A8";
    QVERIFY(hasProblem(checkRequest(r), "scheme", "2 to 7 bits"));
    r.scheme = "W4A16";
    QVERIFY(checkRequest(r).empty());
    r = {};
    r.calibrationText = dir_.filePath("missing.txt").toStdString();
    QVERIFY(hasProblem(checkRequest(r), "calibration_text", "missing.txt"));
    const QString latin1 = dir_.filePath("latin1.txt");
    writeText(latin1, "caf\xe9 cr\xe8me\n");
    r.calibrationText = latin1.toStdString();
    QVERIFY(hasProblem(checkRequest(r), "calibration_text", "UTF-8"));
    r = {};
    r.method = "rtn";
    r.resumeRunId = "abc";
    QVERIFY(hasProblem(checkRequest(r), "resume", "checkpoint"));
    r = {};
    r.smoothQuantGroups = "some";
    QVERIFY(hasProblem(checkRequest(r), "smoothquant_groups"));
    // No message names a command-line flag: the desktop shows them too.
    r = {};
    r.samples = 0;
    r.seqLen = 1;
    r.method = "lrq";
    r.hyperparameters = {{"iters", int64_t(0)}};
    for (const RequestProblem &p : checkRequest(r))
      QVERIFY2(p.message.find("--") == std::string::npos, p.message.c_str());
  }

  // A corrupt store or a text too short for the samples fails the job before a
  // run is recorded.
  void jobFailuresBeforeTheRunLeaveNoRecord() {
    const QString corrupt = dir_.filePath("corrupt.sqlite");
    writeText(corrupt, QByteArray(4096, 'x'));
    QuantizeRequest r;
    r.samples = 2;
    r.seqLen = 16;
    r.evaluate = false;
    r.spectra = false;
    r.storePath = corrupt.toStdString();
    try {
      runQuantizeJob(r);
      QFAIL("expected an error");
    } catch (const Error &e) {
      QVERIFY2(QString(e.what()).contains("corrupt.sqlite"), e.what());
    }
    const QString shortText = dir_.filePath("short.txt");
    writeText(shortText, "only a few words here\n");
    r.storePath = dir_.filePath("runs.sqlite").toStdString();
    r.calibrationText = shortText.toStdString();
    try {
      runQuantizeJob(r);
      QFAIL("expected an error");
    } catch (const Error &e) {
      QVERIFY2(QString(e.what()).contains("too few"), e.what());
    }
    QVERIFY(!QFile::exists(dir_.filePath("runs.sqlite")));
  }

  // A run's exports say what made them: opening one shows method, scheme and run.
  void exportsDescribeThemselves() {
    QuantizeRequest r;
    r.method = "rtn";
    r.scheme = "W4A16-g128";
    r.samples = 2;
    r.seqLen = 16;
    r.evaluate = false;
    r.spectra = false;
    r.storePath = dir_.filePath("exports.sqlite").toStdString();
    r.exportDir = dir_.filePath("rtn-hf").toStdString();
    r.packedPath = dir_.filePath("rtn-packed.safetensors").toStdString();
    const QuantizeOutcome outcome = runQuantizeJob(r);
    for (const std::string &path : {r.exportDir, r.packedPath}) {
      auto session = ModelSession::open(path);
      const QuantizationInfo &q = session->summary().quantization;
      QVERIFY2(q.present(), path.c_str());
      QCOMPARE(q.method, std::string("rtn"));
      QCOMPARE(q.scheme, std::string("W4A16-g128"));
      QCOMPARE(q.runId, outcome.runId);
      QVERIFY(q.reference.find("Q4_1") != std::string::npos);
      QVERIFY(!q.schemeDescription.empty());
    }
    // A plain model has none.
    QVERIFY(!ModelSession::open("default")->summary().quantization.present());
  }

  void catalogDescribesEveryMethod() {
    std::set<std::string> names;
    for (const MethodInfo &m : methodCatalog()) {
      names.insert(m.name);
      QVERIFY(!m.title.empty() && !m.summary.empty());
      for (const HyperparameterSpec &h : m.hyperparameters)
        QVERIFY2(!h.help.empty(), (m.name + "." + h.name).c_str());
      QVERIFY(m.preset("demo") && m.preset("extended") && m.preset("thorough"));
    }
    for (const char *n : {"rtn", "gptq", "flexround", "lrq", "lqer", "l2qer", "lrqat"})
      QVERIFY2(names.count(n), n);
    QVERIFY(methodInfo("lrq").canResume && methodInfo("flexround").canResume);
    QVERIFY(!methodInfo("rtn").canResume && !methodInfo("gptq").canResume);
    QVERIFY(methodInfo("lrq").trainsBlocks && !methodInfo("lqer").trainsBlocks);
    // Per-block counts of the default model's seven linears, as the runs record:
    // LRQ 1,333,248 (ranks 144 and 48), FlexRound 3,549,312. Under the reference
    // rank rule every linear of this small model gets rank min(out, in) (576, or
    // 192 for k/v), which learns more than FlexRound: 5,286,912.
    const std::vector<std::pair<int64_t, int64_t>> shapes = {
        {576, 576}, {192, 576}, {192, 576}, {576, 576}, {1536, 576}, {1536, 576}, {576, 1536}};
    int64_t lrq = 0, flex = 0, lrqReference = 0;
    for (const auto &[out, in] : shapes) {
      lrq += methodInfo("lrq").learnableParameters(out, in, {});
      flex += methodInfo("flexround").learnableParameters(out, in, {});
      lrqReference +=
          methodInfo("lrq").learnableParameters(out, in, {{"rank_rule", std::string("reference")}});
    }
    QCOMPARE(lrq, int64_t(1333248));
    QCOMPARE(flex, int64_t(3549312));
    // By hand: 2 x 665,280 (q, o) + 2 x 148,416 (k, v) + 2 x 1,220,160 (gate, up) + 1,219,200.
    QCOMPARE(lrqReference, int64_t(5286912));
    QCOMPARE(methodInfo("lrq").learnableParameters(576, 1536, {{"rank", int64_t(8)}}),
             int64_t(8 * (576 + 1536) + 2 * 576 + 1536));
    QCOMPARE(methodInfo("rtn").learnableParameters(576, 1536, {}), int64_t(0));
  }

  void usageIsGeneratedFromTheTable() {
    const std::string usage = quantizeUsage();
    for (const RequestOption &o : quantizeRequestOptions())
      if (!o.flag.empty())
        QVERIFY2(usage.find("--" + o.flag) != std::string::npos, o.flag.c_str());
    Result r = runLrq({"quantize", "--help"});
    QCOMPARE(r.exitCode, 0);
    QVERIFY(r.out.contains("--eval-windows") && r.out.contains("--dry-run"));
    // Every scheme preset is named in the help (generated from the preset table).
    for (const std::string &preset : schemePresets())
      QVERIFY2(r.out.contains(QByteArray::fromStdString(preset)), preset.c_str());
    QVERIFY(r.out.contains("gguf-q4_k"));
    Result runs = runLrq({"runs", "--help"});
    QCOMPARE(runs.exitCode, 0);
    QVERIFY(runs.out.contains("--differences") && !runs.out.contains("--eval-windows"));
  }
};

QTEST_GUILESS_MAIN(TestQuantizeRequest)
#include "test_quantize_request.moc"
