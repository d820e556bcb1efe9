#pragma once
// Every table of the workbench can be copied (tab-separated, for spreadsheets)
// or saved as CSV: Ctrl+C and a right-click menu.
#include <QString>

class QAbstractItemModel;
class QAbstractItemView;

namespace lrq::ui {

// The model's visible rows and columns with their headers: CSV (quoted where
// needed) or tab-separated text.
QString tableText(const QAbstractItemModel *model, bool csv);
bool saveTableCsv(const QAbstractItemModel *model, const QString &path);
// Adds "Copy table" and "Save table as CSV…" to the view's context menu, and Ctrl+C.
void enableTableExport(QAbstractItemView *view);

} // namespace lrq::ui
