#include "widgets/perplexity_panel.h"

#include <QButtonGroup>
#include <QFileDialog>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QRadioButton>
#include <QSpinBox>
#include <QVBoxLayout>

#include "widgets/session_controller.h"

namespace lrq::ui {

PerplexityPanel::PerplexityPanel(SessionController *controller, QWidget *parent)
    : QWidget(parent), controller_(controller) {
  auto *textBox = new QGroupBox(tr("Text"), this);
  defaultText_ =
      new QRadioButton(tr("Default held-out text (Jargon File, every 20th paragraph)"), textBox);
  defaultText_->setChecked(true);
  fileText_ = new QRadioButton(tr("Text file:"), textBox);
  auto *group = new QButtonGroup(this);
  group->addButton(defaultText_);
  group->addButton(fileText_);
  filePath_ = new QLineEdit(textBox);
  filePath_->setPlaceholderText(tr("a UTF-8 .txt file"));
  browse_ = new QPushButton(tr("Browse…"), textBox);
  connect(browse_, &QPushButton::clicked, this, [this] {
    const QString path = QFileDialog::getOpenFileName(this, tr("Choose a text file"), QString(),
                                                      tr("Text files (*.txt);;All files (*)"));
    if (!path.isEmpty())
      setTextFile(path);
  });
  connect(filePath_, &QLineEdit::textEdited, this, [this] { fileText_->setChecked(true); });
  connect(fileText_, &QRadioButton::toggled, this, &PerplexityPanel::updateEnabled);
  auto *fileRow = new QHBoxLayout;
  fileRow->addWidget(fileText_);
  fileRow->addWidget(filePath_, 1);
  fileRow->addWidget(browse_);
  auto *textLayout = new QVBoxLayout(textBox);
  textLayout->addWidget(defaultText_);
  textLayout->addLayout(fileRow);

  seqLen_ = new QSpinBox(this);
  seqLen_->setRange(8, 8192);
  seqLen_->setSingleStep(64);
  seqLen_->setValue(256);
  seqLen_->setSuffix(tr(" tokens"));
  seqLen_->setToolTip(tr("Tokens per non-overlapping window"));
  maxWindows_ = new QSpinBox(this);
  maxWindows_->setRange(0, 100000);
  maxWindows_->setValue(8);
  maxWindows_->setSpecialValueText(tr("all"));
  maxWindows_->setToolTip(tr("Evaluate at most this many windows (0: the whole text)"));
  auto *form = new QFormLayout;
  form->addRow(tr("Sequence length:"), seqLen_);
  form->addRow(tr("Max windows:"), maxWindows_);

  run_ = new QPushButton(tr("Run"), this);
  run_->setObjectName(QStringLiteral("runPerplexity"));
  run_->setToolTip(tr("Run perplexity (F5)"));
  cancel_ = new QPushButton(tr("Cancel"), this);
  cancel_->setObjectName(QStringLiteral("cancelPerplexity"));
  connect(run_, &QPushButton::clicked, this, &PerplexityPanel::run);
  connect(cancel_, &QPushButton::clicked, this, &PerplexityPanel::cancel);
  auto *buttons = new QHBoxLayout;
  buttons->addWidget(run_);
  buttons->addWidget(cancel_);
  buttons->addStretch(1);

  progress_ = new QProgressBar(this);
  progress_->setRange(0, 1);
  progress_->setValue(0);
  progress_->setTextVisible(true);
  status_ = new QLabel(this);
  status_->setObjectName(QStringLiteral("perplexityStatus"));
  status_->setWordWrap(true);

  auto *resultBox = new QGroupBox(tr("Result"), this);
  value_ = new QLabel(resultBox);
  value_->hide(); // until there is a number to show
  value_->setObjectName(QStringLiteral("perplexityValue"));
  value_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  details_ = new QLabel(resultBox);
  details_->setObjectName(QStringLiteral("perplexityDetails"));
  details_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  details_->setWordWrap(true);
  note_ = new QLabel(resultBox);
  note_->setObjectName(QStringLiteral("baselineNoteSmall"));
  note_->setWordWrap(true);
  note_->hide();
  details_->setText(tr("Load a model, then Run (F5)."));
  auto *resultLayout = new QVBoxLayout(resultBox);
  resultLayout->addWidget(value_);
  resultLayout->addWidget(details_);
  resultLayout->addWidget(note_);

  auto *layout = new QVBoxLayout(this);
  layout->setContentsMargins(6, 6, 6, 6);
  layout->addWidget(textBox);
  layout->addLayout(form);
  layout->addLayout(buttons);
  layout->addWidget(progress_);
  layout->addWidget(status_);
  layout->addWidget(resultBox);
  layout->addStretch(1);

  connect(controller_, &SessionController::modelLoaded, this, &PerplexityPanel::onModelLoaded);
  connect(controller_, &SessionController::perplexityStarted, this, [this] {
    progress_->setRange(0, 0); // busy until the first progress event
    progress_->setFormat(QString());
    markResultStale(tr("previous result; a new run is going"));
    setStatus(tr("Reading and tokenizing the text…"));
    updateEnabled();
  });
  connect(controller_, &SessionController::perplexityProgress, this, &PerplexityPanel::onProgress);
  connect(controller_, &SessionController::perplexityFinished, this, &PerplexityPanel::onFinished);
  connect(controller_, &SessionController::perplexityFailed, this, [this](const QString &message) {
    progress_->setRange(0, 1);
    progress_->setValue(0);
    progress_->setFormat(tr("failed"));
    markResultStale(tr("previous result: the last run failed"));
    setStatus(message, true);
    updateEnabled();
  });
  connect(controller_, &SessionController::perplexityCancelled, this, [this] {
    progress_->setRange(0, 1);
    progress_->setValue(0);
    progress_->setFormat(tr("cancelled"));
    markResultStale(tr("previous result: the last run was cancelled"));
    setStatus(tr("Cancelled."));
    updateEnabled();
  });
  connect(controller_, &SessionController::generationStarted, this,
          &PerplexityPanel::updateEnabled);
  connect(controller_, &SessionController::generationFinished, this,
          &PerplexityPanel::updateEnabled);
  connect(controller_, &SessionController::generationFailed, this, &PerplexityPanel::updateEnabled);
  connect(controller_, &SessionController::generationCancelled, this,
          &PerplexityPanel::updateEnabled);
  updateEnabled();
}

void PerplexityPanel::setSeqLen(int seqLen) {
  seqLen_->setValue(seqLen);
}
void PerplexityPanel::setMaxWindows(int windows) {
  maxWindows_->setValue(windows);
}

void PerplexityPanel::setTextFile(const QString &path) {
  filePath_->setText(path);
  (path.isEmpty() ? defaultText_ : fileText_)->setChecked(true);
}

QString PerplexityPanel::resultText() const {
  return value_->text() + QLatin1Char('\n') + details_->text();
}
QString PerplexityPanel::statusText() const {
  return status_->text();
}

void PerplexityPanel::setStatus(const QString &text, bool error) {
  status_->setText(text);
  status_->setProperty("error", error);
  status_->setStyleSheet(error ? QStringLiteral("color:#b3261e;") : QString());
}

void PerplexityPanel::markResultStale(const QString &why) {
  if (!hasResult_)
    return;
  value_->setStyleSheet(QStringLiteral("color:#9a9a9a;"));
  value_->setText(tr("Perplexity %1 (%2)").arg(lastReport_.perplexity, 0, 'f', 2).arg(why));
  details_->setStyleSheet(QStringLiteral("color:#9a9a9a;"));
}

void PerplexityPanel::updateEnabled() {
  const bool model = controller_->hasModel();
  const bool running = controller_->isPerplexityRunning();
  const bool busy = running || controller_->isGenerating();
  run_->setEnabled(model && !busy);
  cancel_->setEnabled(running);
  filePath_->setEnabled(fileText_->isChecked() && !running);
  browse_->setEnabled(!running);
  seqLen_->setEnabled(!running);
  maxWindows_->setEnabled(!running);
}

void PerplexityPanel::onModelLoaded() {
  if (const auto *s = controller_->summary()) {
    if (s->maxPositions > 0)
      seqLen_->setMaximum(static_cast<int>(std::min<int64_t>(s->maxPositions, 1 << 20)));
  }
  hasResult_ = false;
  value_->clear();
  value_->hide();
  details_->setText(tr("Not run yet on this model."));
  note_->hide();
  setStatus(QString());
  progress_->setRange(0, 1);
  progress_->setValue(0);
  updateEnabled();
}

void PerplexityPanel::run() {
  if (!controller_->hasModel() || controller_->isPerplexityRunning())
    return;
  PerplexityRequest request;
  if (fileText_->isChecked()) {
    request.textFile = filePath_->text().trimmed();
    if (request.textFile.isEmpty()) {
      setStatus(tr("Choose a text file first."), true);
      return;
    }
  }
  request.seqLen = seqLen_->value();
  request.maxWindows = maxWindows_->value();
  if (!controller_->runPerplexity(request))
    setStatus(tr("Busy: wait for the running job to finish."), true);
}

void PerplexityPanel::cancel() {
  controller_->cancelPerplexity();
  setStatus(tr("Cancelling…"));
}

void PerplexityPanel::onProgress(qint64 done, qint64 total, const QString &detail) {
  if (total > 0) {
    // QProgressBar takes ints: scale large totals (tokens) down.
    const double fraction = static_cast<double>(done) / static_cast<double>(total);
    progress_->setRange(0, 1000);
    progress_->setValue(static_cast<int>(fraction * 1000.0));
    progress_->setFormat(QStringLiteral("%1 / %2").arg(done).arg(total));
  }
  setStatus(detail.isEmpty() ? tr("Evaluating…") : detail);
}

void PerplexityPanel::onFinished(const lrq::PerplexityReport &r) {
  lastReport_ = r;
  hasResult_ = true;
  progress_->setRange(0, 1);
  progress_->setValue(1);
  progress_->setFormat(tr("done"));
  value_->setStyleSheet(QString());
  details_->setStyleSheet(QString());
  value_->setText(tr("Perplexity %1").arg(r.perplexity, 0, 'f', 2));
  value_->show();
  details_->setText(tr("%1 tokens in %2 windows of %3 · mean NLL %4\n%5 · %6 tokens/s")
                        .arg(r.tokens)
                        .arg(r.windows)
                        .arg(r.seqLen)
                        .arg(r.meanNll, 0, 'f', 4)
                        .arg(formatSeconds(r.seconds))
                        .arg(r.tokensPerSecond, 0, 'f', 1));
  const QString note =
      controller_->summary() ? baselineNoteText(*controller_->summary()) : QString();
  note_->setText(note);
  note_->setVisible(!note.isEmpty());
  setStatus(fileText_->isChecked() ? tr("Text: %1").arg(filePath_->text())
                                   : tr("Text: default held-out split"));
  updateEnabled();
}

} // namespace lrq::ui
