#include "widgets/log_panel.h"

#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QPlainTextEdit>
#include <QScrollBar>
#include <QToolButton>
#include <QVBoxLayout>

#include <spdlog/common.h>

namespace lrq::ui {

LogPanel::LogPanel(QWidget *parent) : QWidget(parent) {
  view_ = new QPlainTextEdit(this);
  view_->setObjectName(QStringLiteral("logView"));
  view_->setReadOnly(true);
  view_->setMaximumBlockCount(5000);
  view_->setLineWrapMode(QPlainTextEdit::NoWrap);
  QFont mono(QStringLiteral("DejaVu Sans Mono"));
  mono.setStyleHint(QFont::Monospace);
  mono.setPointSizeF(mono.pointSizeF() * 0.9);
  view_->setFont(mono);

  levelFilter_ = new QComboBox(this);
  levelFilter_->addItem(tr("Debug and up"), static_cast<int>(spdlog::level::debug));
  levelFilter_->addItem(tr("Info and up"), static_cast<int>(spdlog::level::info));
  levelFilter_->addItem(tr("Warnings and errors"), static_cast<int>(spdlog::level::warn));
  levelFilter_->setCurrentIndex(1);

  auto *clearButton = new QToolButton(this);
  clearButton->setText(tr("Clear"));
  connect(clearButton, &QToolButton::clicked, this, &LogPanel::clear);

  auto *bar = new QHBoxLayout;
  bar->setContentsMargins(0, 0, 0, 0);
  bar->addWidget(new QLabel(tr("Show:"), this));
  bar->addWidget(levelFilter_);
  bar->addStretch(1);
  bar->addWidget(clearButton);

  auto *layout = new QVBoxLayout(this);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addLayout(bar);
  layout->addWidget(view_, 1);
}

int LogPanel::lineCount() const {
  return lines_;
}

QString LogPanel::text() const {
  return view_->toPlainText();
}

void LogPanel::appendLine(int level, const QString &line) {
  if (level < levelFilter_->currentData().toInt())
    return;
  QString color = QStringLiteral("#303030");
  if (level >= static_cast<int>(spdlog::level::err))
    color = QStringLiteral("#b3261e");
  else if (level == static_cast<int>(spdlog::level::warn))
    color = QStringLiteral("#8a5a00");
  else if (level <= static_cast<int>(spdlog::level::debug))
    color = QStringLiteral("#7a7a7a");
  QScrollBar *scroll = view_->verticalScrollBar();
  const bool atEnd = scroll->value() >= scroll->maximum() - 2;
  view_->appendHtml(QStringLiteral("<span style=\"color:%1; white-space:pre\">%2</span>")
                        .arg(color, line.trimmed().toHtmlEscaped()));
  ++lines_;
  if (atEnd)
    scroll->setValue(scroll->maximum());
}

void LogPanel::clear() {
  view_->clear();
  lines_ = 0;
}

} // namespace lrq::ui
