#pragma once
#include <QIcon>

namespace lrq::ui {
// The app icon: resources/icons/lrq-workbench.svg when Qt can render SVG,
// otherwise the same drawing painted by hand at a few sizes.
QIcon appIcon();
// Registers resources/resources.qrc (icons, stylesheet); idempotent.
void ensureResources();
} // namespace lrq::ui
