#include "widgets/generation_panel.h"

#include <QDoubleSpinBox>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QLabel>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QSpinBox>
#include <QTextCharFormat>
#include <QTextCursor>
#include <QVBoxLayout>

#include "widgets/session_controller.h"

namespace lrq::ui {

GenerationPanel::GenerationPanel(SessionController *controller, QWidget *parent)
    : QWidget(parent), controller_(controller) {
  prompt_ = new QPlainTextEdit(this);
  prompt_->setPlaceholderText(tr("Prompt to continue"));
  prompt_->setPlainText(tr("The hacker ethic is"));
  prompt_->setMaximumHeight(80);
  maxTokens_ = new QSpinBox(this);
  maxTokens_->setRange(1, 2048);
  maxTokens_->setValue(48);
  temperature_ = new QDoubleSpinBox(this);
  temperature_->setRange(0.0, 2.0);
  temperature_->setSingleStep(0.1);
  temperature_->setValue(0.0);
  temperature_->setSpecialValueText(tr("0 (greedy)"));
  auto *form = new QFormLayout;
  form->addRow(tr("New tokens:"), maxTokens_);
  form->addRow(tr("Temperature:"), temperature_);

  generate_ = new QPushButton(tr("Generate"), this);
  stop_ = new QPushButton(tr("Stop"), this);
  connect(generate_, &QPushButton::clicked, this, &GenerationPanel::generate);
  connect(stop_, &QPushButton::clicked, this, &GenerationPanel::stop);
  auto *buttons = new QHBoxLayout;
  buttons->addWidget(generate_);
  buttons->addWidget(stop_);
  buttons->addStretch(1);

  output_ = new QPlainTextEdit(this);
  output_->setObjectName(QStringLiteral("generationOutput"));
  output_->setReadOnly(true);
  status_ = new QLabel(this);
  status_->setObjectName(QStringLiteral("generationStatus"));
  // Long errors wrap inside the dock instead of widening it.
  status_->setWordWrap(true);
  status_->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
  status_->setTextInteractionFlags(Qt::TextSelectableByMouse);

  auto *layout = new QVBoxLayout(this);
  layout->setContentsMargins(6, 6, 6, 6);
  layout->addWidget(prompt_);
  layout->addLayout(form);
  layout->addLayout(buttons);
  layout->addWidget(output_, 1);
  layout->addWidget(status_);

  connect(controller_, &SessionController::generationStarted, this, [this] {
    clock_.start();
    pieces_ = 0;
    // The prompt in grey, what the model adds in the text colour.
    output_->clear();
    QTextCharFormat promptFormat;
    promptFormat.setForeground(QColor(0x6b, 0x77, 0x85));
    QTextCursor cursor(output_->document());
    cursor.insertText(prompt_->toPlainText(), promptFormat);
    status_->setStyleSheet(QString());
    status_->setText(tr("Generating…"));
    updateEnabled();
  });
  connect(controller_, &SessionController::generationText, this, [this](const QString &piece) {
    ++pieces_;
    QTextCursor cursor(output_->document());
    cursor.movePosition(QTextCursor::End);
    QTextCharFormat generated;
    generated.setForeground(QColor(0x16, 0x3d, 0x6b));
    cursor.insertText(piece, generated);
    output_->ensureCursorVisible();
  });
  connect(controller_, &SessionController::generationFinished, this, [this] {
    const double s = clock_.elapsed() / 1000.0;
    status_->setStyleSheet(QString());
    status_->setText(tr("%1 tokens in %2 s").arg(pieces_).arg(s, 0, 'f', 1));
    updateEnabled();
  });
  connect(controller_, &SessionController::generationFailed, this, [this](const QString &m) {
    status_->setStyleSheet(QStringLiteral("color:#b3261e;"));
    status_->setText(m);
    updateEnabled();
  });
  connect(controller_, &SessionController::generationCancelled, this, [this] {
    status_->setText(tr("Stopped."));
    updateEnabled();
  });
  connect(controller_, &SessionController::modelLoaded, this, &GenerationPanel::updateEnabled);
  connect(controller_, &SessionController::perplexityStarted, this,
          &GenerationPanel::updateEnabled);
  connect(controller_, &SessionController::perplexityFinished, this,
          &GenerationPanel::updateEnabled);
  connect(controller_, &SessionController::perplexityFailed, this, &GenerationPanel::updateEnabled);
  connect(controller_, &SessionController::perplexityCancelled, this,
          &GenerationPanel::updateEnabled);
  updateEnabled();
}

void GenerationPanel::setPrompt(const QString &prompt) {
  prompt_->setPlainText(prompt);
}
void GenerationPanel::setMaxNewTokens(int tokens) {
  maxTokens_->setValue(tokens);
}
QString GenerationPanel::output() const {
  return output_->toPlainText();
}

void GenerationPanel::generate() {
  lrq::GenerationOptions options;
  options.maxNewTokens = maxTokens_->value();
  options.temperature = temperature_->value();
  if (!controller_->generate(prompt_->toPlainText(), options))
    status_->setText(tr("Busy or no model loaded."));
}

void GenerationPanel::stop() {
  controller_->cancelGeneration();
}

void GenerationPanel::updateEnabled() {
  const bool busy = controller_->isGenerating() || controller_->isPerplexityRunning();
  generate_->setEnabled(controller_->hasModel() && !busy);
  stop_->setEnabled(controller_->isGenerating());
}

} // namespace lrq::ui
