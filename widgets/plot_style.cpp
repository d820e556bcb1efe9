#include "widgets/plot_style.h"

#include <QFileDialog>
#include <QFileInfo>
#include <QMenu>
#include <QMessageBox>
#include <QStandardPaths>
#include <QSvgGenerator>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>

namespace lrq::ui {

const QColor kBarColor(0x3d, 0x7a, 0xb8);
const QColor kLineColor(0x1f, 0x5f, 0x9e);
const QColor kAccent(0xd9, 0x8c, 0x1f);

void stylePlot(QCustomPlot *plot, const QString &title) {
  plot->setBackground(Qt::white);
  plot->setAntialiasedElements(QCP::aePlottables | QCP::aeItems);
  plot->plotLayout()->insertRow(0);
  auto *text = new QCPTextElement(plot, title, QFont(plot->font().family(), 10, QFont::DemiBold));
  text->setObjectName(QStringLiteral("title"));
  plot->plotLayout()->addElement(0, 0, text);
  for (QCPAxis *axis : {plot->xAxis, plot->yAxis}) {
    axis->setBasePen(QPen(QColor(0x70, 0x70, 0x70)));
    axis->setTickPen(QPen(QColor(0x70, 0x70, 0x70)));
    axis->setSubTickPen(QPen(QColor(0xa0, 0xa0, 0xa0)));
    axis->setTickLabelColor(QColor(0x40, 0x40, 0x40));
    axis->setLabelColor(QColor(0x30, 0x30, 0x30));
    axis->grid()->setPen(QPen(QColor(0xe4, 0xe4, 0xe4)));
  }
  plot->setMinimumHeight(140);
  enablePlotSaving(plot);
}

QCPTextElement *plotTitle(QCustomPlot *plot) {
  return qobject_cast<QCPTextElement *>(plot->plotLayout()->element(0, 0));
}

void legendBelow(QCustomPlot *plot, int columns) {
  QCPLegend *legend = plot->legend;
  QCPLayoutInset *inset = plot->axisRect()->insetLayout();
  if (inset->take(legend))
    inset->simplify();
  QCPLayoutGrid *layout = plot->plotLayout();
  const int row = layout->rowCount();
  layout->addElement(row, 0, legend);
  layout->setRowStretchFactor(row, 0.001); // as tall as its entries, no more
  // Wrap first: setFillOrder rearranges the entries already there by it.
  legend->setWrap(std::max(1, columns));
  legend->setFillOrder(QCPLayoutGrid::foColumnsFirst);
  legend->setBorderPen(Qt::NoPen);
  legend->setBrush(Qt::NoBrush);
  legend->setMargins(QMargins(8, 0, 8, 4));
}

QCPItemText *addMessage(QCustomPlot *plot) {
  auto *item = new QCPItemText(plot);
  item->position->setType(QCPItemPosition::ptAxisRectRatio);
  item->position->setCoords(0.5, 0.5);
  item->setPositionAlignment(Qt::AlignCenter);
  item->setColor(QColor(0x80, 0x80, 0x80));
  item->setClipToAxisRect(false);
  return item;
}

void setLogAxis(QCPAxis *axis) {
  axis->setScaleType(QCPAxis::stLogarithmic);
  auto ticker = QSharedPointer<QCPAxisTickerLog>(new QCPAxisTickerLog);
  ticker->setSubTickCount(8);
  axis->setTicker(ticker);
  axis->setNumberFormat(QStringLiteral("eb"));
  axis->setNumberPrecision(0);
}

void setLinearAxis(QCPAxis *axis) {
  axis->setScaleType(QCPAxis::stLinear);
  axis->setTicker(QSharedPointer<QCPAxisTicker>(new QCPAxisTicker));
  axis->setNumberFormat(QStringLiteral("gb"));
  axis->setNumberPrecision(6);
}

void setDecadeRange(QCPAxis *axis, double lo, double hi, int minDecades) {
  if (!(lo > 0) || !(hi > 0))
    return;
  double l = std::pow(10.0, std::floor(std::log10(lo)));
  const double h = std::pow(10.0, std::ceil(std::log10(hi)));
  l = std::min(l, h / std::pow(10.0, std::max(1, minDecades)));
  axis->setRange(l, h);
}

QColor seriesColor(int i) {
  static const QColor palette[] = {{0x1f, 0x77, 0xb4}, {0xd6, 0x27, 0x28}, {0x2c, 0xa0, 0x2c},
                                   {0xff, 0x7f, 0x0e}, {0x94, 0x67, 0xbd}, {0x8c, 0x56, 0x4b},
                                   {0xe3, 0x77, 0xc2}, {0x17, 0xbe, 0xcf}};
  constexpr int n = int(sizeof palette / sizeof palette[0]);
  if (i >= 0 && i < n)
    return palette[i];
  return QColor::fromHsv((i * 47) % 360, 180, 190);
}

bool savePlot(QCustomPlot *plot, const QString &path) {
  const QString suffix = QFileInfo(path).suffix().toLower();
  if (suffix == QLatin1String("pdf"))
    return plot->savePdf(path);
  if (suffix == QLatin1String("svg")) {
    // Vector output: the plot drawn onto an SVG canvas of its on-screen size.
    QSvgGenerator svg;
    svg.setFileName(path);
    svg.setSize(plot->size());
    svg.setViewBox(QRect(QPoint(0, 0), plot->size()));
    svg.setTitle(plotTitle(plot) ? plotTitle(plot)->text() : QString());
    QCPPainter painter;
    if (!painter.begin(&svg))
      return false;
    plot->toPainter(&painter, plot->width(), plot->height());
    painter.end();
    return QFileInfo(path).size() > 0;
  }
  if (suffix == QLatin1String("jpg") || suffix == QLatin1String("jpeg"))
    return plot->saveJpg(path, 0, 0, 2.0);
  return plot->savePng(path, 0, 0, 2.0);
}

void enablePlotSaving(QCustomPlot *plot) {
  plot->setContextMenuPolicy(Qt::CustomContextMenu);
  QObject::connect(plot, &QWidget::customContextMenuRequested, plot, [plot](const QPoint &pos) {
    QMenu menu(plot);
    QAction *save = menu.addAction(QObject::tr("Save plot as…"));
    if (menu.exec(plot->mapToGlobal(pos)) != save)
      return;
    const QString dir = QStandardPaths::writableLocation(QStandardPaths::PicturesLocation);
    const QString path = QFileDialog::getSaveFileName(
        plot, QObject::tr("Save plot"), dir + "/plot.png",
        QObject::tr("PNG image (*.png);;SVG drawing (*.svg);;PDF document (*.pdf);;JPEG image "
                    "(*.jpg)"));
    if (path.isEmpty())
      return;
    if (!savePlot(plot, path))
      QMessageBox::warning(plot, QObject::tr("Save plot"),
                           QObject::tr("Could not write %1.").arg(path));
  });
}

} // namespace lrq::ui
