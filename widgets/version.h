#pragma once
#include <QString>

namespace lrq::ui {
// The project version (CMake's PROJECT_VERSION).
QString applicationVersion();
} // namespace lrq::ui
