#pragma once
// Continues a prompt with the loaded model, streaming the text as it comes.
#include <QElapsedTimer>
#include <QWidget>

class QDoubleSpinBox;
class QPlainTextEdit;
class QPushButton;
class QSpinBox;
class QLabel;

namespace lrq::ui {

class SessionController;

class GenerationPanel : public QWidget {
  Q_OBJECT
public:
  explicit GenerationPanel(SessionController *controller, QWidget *parent = nullptr);

  void setPrompt(const QString &prompt);
  void setMaxNewTokens(int tokens);
  QString output() const;
  QPushButton *generateButton() const { return generate_; }

public slots:
  void generate();
  void stop();

private:
  void updateEnabled();

  SessionController *controller_;
  QPlainTextEdit *prompt_ = nullptr;
  QSpinBox *maxTokens_ = nullptr;
  QDoubleSpinBox *temperature_ = nullptr;
  QPushButton *generate_ = nullptr;
  QPushButton *stop_ = nullptr;
  QPlainTextEdit *output_ = nullptr;
  QLabel *status_ = nullptr;
  QElapsedTimer clock_;
  int pieces_ = 0;
};

} // namespace lrq::ui
