#include "widgets/app_icon.h"

#include <QImageReader>
#include <QLinearGradient>
#include <QPainter>
#include <QPainterPath>
#include <QPixmap>

// The .qrc is compiled into a static library: nothing references its
// initializer, so the linker would drop it unless it is called explicitly.
static void initWidgetResources() {
  Q_INIT_RESOURCE(resources);
}

namespace lrq::ui {

void ensureResources() {
  static const bool done = (initWidgetResources(), true);
  (void)done;
}

namespace {

// Mirrors the SVG (a 256-unit canvas): a blue tile, a decaying spectrum of
// bars, and an amber staircase — the quantization grid — across them.
QPixmap paintIcon(int size) {
  QPixmap pixmap(size, size);
  pixmap.fill(Qt::transparent);
  QPainter p(&pixmap);
  p.setRenderHint(QPainter::Antialiasing);
  p.scale(size / 256.0, size / 256.0);
  QLinearGradient tile(0, 0, 0, 256);
  tile.setColorAt(0, QColor(0x2b, 0x6c, 0xb0));
  tile.setColorAt(1, QColor(0x16, 0x3d, 0x6b));
  p.setPen(Qt::NoPen);
  p.setBrush(tile);
  p.drawRoundedRect(QRectF(8, 8, 240, 240), 48, 48);
  const double heights[] = {150, 104, 76, 58, 46, 38};
  p.setBrush(QColor(0xe8, 0xf1, 0xfb));
  for (int i = 0; i < 6; ++i)
    p.drawRoundedRect(QRectF(44 + i * 29, 204 - heights[i], 21, heights[i]), 4, 4);
  QPainterPath stairs;
  stairs.moveTo(36, 84);
  const double steps[][2] = {{84, 84},   {84, 118},  {132, 118}, {132, 152},
                             {180, 152}, {180, 176}, {222, 176}};
  for (const auto &s : steps)
    stairs.lineTo(s[0], s[1]);
  p.setBrush(Qt::NoBrush);
  p.setPen(QPen(QColor(0xf4, 0xb2, 0x3c), 12, Qt::SolidLine, Qt::RoundCap, Qt::RoundJoin));
  p.drawPath(stairs);
  return pixmap;
}

} // namespace

QIcon appIcon() {
  ensureResources();
  if (QImageReader::supportedImageFormats().contains("svg")) {
    QIcon icon(QStringLiteral(":/icons/lrq-workbench.svg"));
    if (!icon.isNull())
      return icon;
  }
  QIcon icon;
  for (int size : {16, 24, 32, 48, 64, 128, 256})
    icon.addPixmap(paintIcon(size));
  return icon;
}

} // namespace lrq::ui
