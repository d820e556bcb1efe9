#include "widgets/version.h"

namespace lrq::ui {
QString applicationVersion() {
  return QStringLiteral(LRQ_VERSION);
}
} // namespace lrq::ui
