#pragma once
// Helpers for tests that drive the built `lrq` executable as a user would:
// JSON-lines events, Ctrl-C at a chosen event, safetensors files compared
// tensor by tensor.
#include <QDir>
#include <QElapsedTimer>
#include <QFile>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QList>
#include <QProcess>
#include <QString>
#include <QStringList>

#include <signal.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <vector>

#include "test_support.h"

namespace lrq::test {

inline QString lrqPath() {
  return QDir(QStringLiteral(LRQ_BINARY_DIR)).filePath("app/lrq");
}

// A QTemporaryDir template for bulky scratch files (model exports, run work
// directories): on tmpfs (/dev/shm) where the system has one, since every
// export ends in an fsync that costs seconds on a disk; else the temp folder.
inline QString scratchDirTemplate(const QString &name) {
  const QFileInfo shm(QStringLiteral("/dev/shm"));
  const QString root = shm.isDir() && shm.isWritable() ? shm.filePath() : QDir::tempPath();
  return QDir(root).filePath(name + QStringLiteral("-XXXXXX"));
}

// Independent lrq commands run side by side (each its own process; start-up
// and model loading are mostly one core's work), results in their order. A
// command printing more than a pipe holds (64 KB) waits for its turn to be read.
inline QList<Result> runLrqTogether(const QList<QStringList> &commands) {
  std::vector<std::unique_ptr<QProcess>> procs;
  for (const QStringList &args : commands) {
    procs.push_back(std::make_unique<QProcess>());
    procs.back()->start(lrqPath(), args);
  }
  QList<Result> results;
  for (auto &proc : procs) {
    Result r;
    if (!proc->waitForFinished(600000)) {
      proc->kill();
      proc->waitForFinished();
      r.err = "timed out";
    } else {
      r.exitCode = proc->exitStatus() == QProcess::NormalExit ? proc->exitCode() : -1;
      r.out = proc->readAllStandardOutput();
      r.err = QString::fromUtf8(proc->readAllStandardError());
    }
    results << r;
  }
  return results;
}

// The JSON-lines events of a `quantize --json` run, in order.
inline QList<QJsonObject> jsonEvents(const QByteArray &out) {
  QList<QJsonObject> events;
  for (const QByteArray &line : out.split('\n'))
    if (!line.trimmed().isEmpty())
      events << QJsonDocument::fromJson(line).object();
  return events;
}

// Runs lrq and sends it SIGINT (Ctrl-C) as soon as an event line satisfies
// `when`; *sent tells whether it did (the run may end first).
inline Result runLrqInterrupted(const QStringList &args,
                                const std::function<bool(const QJsonObject &)> &when, bool *sent,
                                int timeoutMs = 900000) {
  QProcess proc;
  proc.start(lrqPath(), args);
  Result r;
  *sent = false;
  if (!proc.waitForStarted()) {
    r.err = "cannot start lrq";
    return r;
  }
  QByteArray pending;
  QElapsedTimer timer;
  timer.start();
  while (proc.state() != QProcess::NotRunning && timer.elapsed() < timeoutMs) {
    proc.waitForReadyRead(200);
    const QByteArray chunk = proc.readAllStandardOutput();
    r.out += chunk;
    pending += chunk;
    for (int nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const QByteArray line = pending.left(nl);
      pending.remove(0, nl + 1);
      if (!*sent && when(QJsonDocument::fromJson(line).object())) {
        ::kill(pid_t(proc.processId()), SIGINT);
        *sent = true;
      }
    }
  }
  if (proc.state() != QProcess::NotRunning) {
    proc.kill();
    proc.waitForFinished();
    r.err = "timed out";
    return r;
  }
  r.out += proc.readAllStandardOutput();
  r.exitCode = proc.exitStatus() == QProcess::NormalExit ? proc.exitCode() : -1;
  r.err = QString::fromUtf8(proc.readAllStandardError());
  return r;
}

// Compares two safetensors files tensor by tensor (names, dtypes, shapes and
// every byte of the data). Returns "" when identical, else what differs.
inline QString compareSafetensors(const QString &a, const QString &b) {
  QFile fa(a), fb(b);
  if (!fa.open(QIODevice::ReadOnly) || !fb.open(QIODevice::ReadOnly))
    return "cannot open " + a + " or " + b;
  auto header = [](QFile &f, qint64 *dataStart) {
    quint64 n = 0;
    if (f.read(reinterpret_cast<char *>(&n), 8) != 8 || n > (1u << 30))
      return QJsonObject();
    *dataStart = 8 + qint64(n);
    return QJsonDocument::fromJson(f.read(qint64(n))).object();
  };
  qint64 startA = 0, startB = 0;
  const QJsonObject ha = header(fa, &startA), hb = header(fb, &startB);
  if (ha.isEmpty())
    return a + ": no safetensors header";
  int tensors = 0;
  for (auto it = ha.begin(); it != ha.end(); ++it) {
    if (it.key() == "__metadata__")
      continue;
    ++tensors;
    const QJsonObject ta = it.value().toObject(), tb = hb.value(it.key()).toObject();
    if (tb.isEmpty())
      return it.key() + " only in " + a;
    if (ta["dtype"] != tb["dtype"] || ta["shape"] != tb["shape"])
      return it.key() + ": dtype or shape differ";
    const qint64 beginA = qint64(ta["data_offsets"].toArray()[0].toDouble());
    const qint64 endA = qint64(ta["data_offsets"].toArray()[1].toDouble());
    const qint64 beginB = qint64(tb["data_offsets"].toArray()[0].toDouble());
    fa.seek(startA + beginA);
    fb.seek(startB + beginB);
    const QByteArray da = fa.read(endA - beginA), db = fb.read(endA - beginA);
    if (da.size() != endA - beginA || da != db)
      return it.key() + ": data differ";
  }
  if (hb.size() != ha.size())
    return "the files hold different tensor sets";
  if (tensors == 0)
    return a + " holds no tensors";
  return {};
}

} // namespace lrq::test
