#pragma once
// The look every plot of the workbench shares, and what every plot offers: a
// title, grey axes, a centred message for empty or loading states, log axes
// that label decades cleanly, and a right-click "Save plot as" (PNG, SVG, PDF, JPEG).
#include <QColor>
#include <QString>

class QCustomPlot;
class QCPAxis;
class QCPItemText;
class QCPTextElement;
class QWidget;

namespace lrq::ui {

extern const QColor kBarColor;
extern const QColor kLineColor;
extern const QColor kAccent;

// White background, antialiasing, a title row, grey axes and grid.
void stylePlot(QCustomPlot *plot, const QString &title);
QCPTextElement *plotTitle(QCustomPlot *plot);
// Shows the legend in a row of its own under the axis rect, `columns` entries
// per line, instead of over the data: small plots stay readable. Leaves the
// legend's visibility as it is.
void legendBelow(QCustomPlot *plot, int columns = 2);
// A grey message in the middle of the axis rect (empty, loading, failed).
QCPItemText *addMessage(QCustomPlot *plot);
// Log scale with ticks at powers of ten only (no repeated labels on short ranges).
void setLogAxis(QCPAxis *axis);
void setLinearAxis(QCPAxis *axis);
// Whole decades around [lo, hi] (both > 0), at least minDecades of them, so a
// log axis labels every decade however narrow the data; nothing for lo <= 0.
void setDecadeRange(QCPAxis *axis, double lo, double hi, int minDecades = 1);
// Distinct colours for series i of n (a qualitative palette, then hues).
QColor seriesColor(int i);

// Saves the plot by the file's suffix: .png, .svg, .jpg, .pdf. False on failure.
bool savePlot(QCustomPlot *plot, const QString &path);
// Right-click menu with "Save plot as…" on the plot.
void enablePlotSaving(QCustomPlot *plot);

} // namespace lrq::ui
