#pragma once
// `lrq-workbench --tour DIR`: drives the real app through its main views on
// the default model and saves a screenshot of each into DIR (the README's
// pictures): Quantize with the live monitor mid-run, Runs, Compare (accuracy
// and spectra) and Learn. Three short runs (LRQ, FlexRound, L²QER) and an RTN
// one on the first blocks at W3A16-g128 are recorded in DIR/tour-runs.sqlite.
#include <QObject>
#include <QString>
#include <QStringList>

namespace lrq::ui {
class MainWindow;
}

class WorkbenchTour : public QObject {
  Q_OBJECT
public:
  WorkbenchTour(lrq::ui::MainWindow *window, const QString &dir);
  // Starts once the model is shown; quits the application when done (exit 0) or
  // on the first failure (exit 1, the reason on stderr).
  void start();

private:
  void runNext();
  void onRunFinished(const QString &runId);
  void showRuns();
  void showCompare();
  void showLearn();
  void shoot(const QString &name);
  void fail(const QString &message);

  lrq::ui::MainWindow *window_;
  QString dir_, store_;
  QStringList methods_{QStringLiteral("lrq"), QStringLiteral("flexround"), QStringLiteral("l2qer"),
                       QStringLiteral("rtn")};
  QStringList runIds_;
  bool monitorShot_ = false;
};
