#pragma once
// Runs perplexity on the loaded model: default held-out text or a user's
// .txt file, sequence length, window limit; a progress bar and Cancel while
// it runs; the result with the model's baseline note.
#include <QWidget>

#include "widgets/engine_types.h"

class QLabel;
class QLineEdit;
class QProgressBar;
class QPushButton;
class QRadioButton;
class QSpinBox;

namespace lrq::ui {

class SessionController;

class PerplexityPanel : public QWidget {
  Q_OBJECT
public:
  explicit PerplexityPanel(SessionController *controller, QWidget *parent = nullptr);

  void setSeqLen(int seqLen);
  void setMaxWindows(int windows);
  // Empty: the default held-out text.
  void setTextFile(const QString &path);

  QPushButton *runButton() const { return run_; }
  QPushButton *cancelButton() const { return cancel_; }
  QProgressBar *progressBar() const { return progress_; }
  QString resultText() const;
  QString statusText() const;
  bool hasResult() const { return hasResult_; }
  double lastPerplexity() const { return lastReport_.perplexity; }

public slots:
  void run();
  void cancel();

private:
  void updateEnabled();
  // Greys the shown result out and says why it is not the latest run's.
  void markResultStale(const QString &why);
  void onModelLoaded();
  void onProgress(qint64 done, qint64 total, const QString &detail);
  void onFinished(const lrq::PerplexityReport &report);
  void setStatus(const QString &text, bool error = false);

  SessionController *controller_;
  QRadioButton *defaultText_ = nullptr;
  QRadioButton *fileText_ = nullptr;
  QLineEdit *filePath_ = nullptr;
  QPushButton *browse_ = nullptr;
  QSpinBox *seqLen_ = nullptr;
  QSpinBox *maxWindows_ = nullptr;
  QPushButton *run_ = nullptr;
  QPushButton *cancel_ = nullptr;
  QProgressBar *progress_ = nullptr;
  QLabel *status_ = nullptr;
  QLabel *value_ = nullptr;
  QLabel *details_ = nullptr;
  QLabel *note_ = nullptr;
  bool hasResult_ = false;
  lrq::PerplexityReport lastReport_;
};

} // namespace lrq::ui
