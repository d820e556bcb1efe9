#include "widgets/live_label.h"

#include <QEvent>
#include <QResizeEvent>

namespace lrq::ui {

LiveLabel::LiveLabel(int lines, QWidget *parent)
    : QWidget(parent), label_(new QLabel(this)), lines_(std::max(1, lines)) {
  label_->setWordWrap(lines_ > 1);
  label_->setAlignment(Qt::AlignLeft | Qt::AlignVCenter);
  setSizePolicy(QSizePolicy::Preferred, QSizePolicy::Fixed);
  fixHeight();
}

void LiveLabel::setText(const QString &text) {
  if (text == label_->text())
    return;
  // The label has no layout above it: its geometry request stops here.
  label_->setText(text);
  label_->setToolTip(lines_ == 1 ? text : QString());
}

QString LiveLabel::text() const {
  return label_->text();
}

QSize LiveLabel::sizeHint() const {
  return {minimumWidth() > 0 ? minimumWidth() : 120, height()};
}

QSize LiveLabel::minimumSizeHint() const {
  return {minimumWidth(), height()};
}

void LiveLabel::resizeEvent(QResizeEvent *event) {
  QWidget::resizeEvent(event);
  label_->setGeometry(rect());
}

void LiveLabel::changeEvent(QEvent *event) {
  QWidget::changeEvent(event);
  if (event->type() == QEvent::FontChange || event->type() == QEvent::StyleChange)
    fixHeight();
}

void LiveLabel::fixHeight() {
  setFixedHeight(label_->fontMetrics().lineSpacing() * lines_ + 4);
}

} // namespace lrq::ui
