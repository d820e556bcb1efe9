#pragma once
// A label for text that changes many times a second (a run's status line, an
// ETA). A plain QLabel asks every layout up to the window to recompute on
// each setText, which costs the UI thread 10-20 ms on the main window. This
// widget keeps a fixed height and holds its label without a layout, so a new
// text repaints the label and nothing else.
#include <QLabel>
#include <QWidget>

namespace lrq::ui {

class LiveLabel : public QWidget {
  Q_OBJECT
public:
  // lines: the height in text lines (a longer text wraps, then clips).
  explicit LiveLabel(int lines = 1, QWidget *parent = nullptr);

  // Does nothing when the text is unchanged.
  void setText(const QString &text);
  QString text() const;
  // The inner label, for styling (font, colour, alignment, interaction flags).
  QLabel *label() const { return label_; }

  QSize sizeHint() const override;
  QSize minimumSizeHint() const override;

protected:
  void resizeEvent(QResizeEvent *event) override;
  void changeEvent(QEvent *event) override;

private:
  void fixHeight();

  QLabel *label_;
  int lines_;
};

} // namespace lrq::ui
