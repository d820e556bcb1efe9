#pragma once
// Shows the engine's and the app's log lines (spdlog, through QtSignalSink).
#include <QWidget>

class QPlainTextEdit;
class QComboBox;

namespace lrq::ui {

class LogPanel : public QWidget {
  Q_OBJECT
public:
  explicit LogPanel(QWidget *parent = nullptr);
  int lineCount() const;
  QString text() const;

public slots:
  void appendLine(int level, const QString &line);
  void clear();

private:
  QPlainTextEdit *view_ = nullptr;
  QComboBox *levelFilter_ = nullptr;
  int lines_ = 0;
};

} // namespace lrq::ui
