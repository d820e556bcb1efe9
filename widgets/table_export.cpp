#include "widgets/table_export.h"

#include <QAbstractItemView>
#include <QAction>
#include <QApplication>
#include <QClipboard>
#include <QDir>
#include <QFile>
#include <QFileDialog>
#include <QMessageBox>

namespace lrq::ui {
namespace {

QString cell(const QString &text, bool csv) {
  if (!csv)
    return QString(text).replace('\t', ' ').replace('\n', ' ');
  if (text.contains(',') || text.contains('"') || text.contains('\n'))
    return '"' + QString(text).replace(QStringLiteral("\""), QStringLiteral("\"\"")) + '"';
  return text;
}

} // namespace

QString tableText(const QAbstractItemModel *model, bool csv) {
  const QChar sep = csv ? QChar(',') : QChar('\t');
  QString out;
  QStringList header;
  for (int c = 0; c < model->columnCount(); ++c)
    header << cell(model->headerData(c, Qt::Horizontal).toString(), csv);
  const bool rowHeaders = !model->headerData(0, Qt::Vertical).toString().isEmpty() &&
                          model->headerData(0, Qt::Vertical).toString() != QLatin1String("1");
  if (rowHeaders)
    header.prepend(QString());
  out += header.join(sep) + '\n';
  for (int r = 0; r < model->rowCount(); ++r) {
    QStringList row;
    if (rowHeaders)
      row << cell(model->headerData(r, Qt::Vertical).toString(), csv);
    for (int c = 0; c < model->columnCount(); ++c)
      row << cell(model->index(r, c).data().toString(), csv);
    out += row.join(sep) + '\n';
  }
  return out;
}

bool saveTableCsv(const QAbstractItemModel *model, const QString &path) {
  QFile f(path);
  if (!f.open(QIODevice::WriteOnly | QIODevice::Truncate))
    return false;
  return f.write(tableText(model, true).toUtf8()) >= 0;
}

void enableTableExport(QAbstractItemView *view) {
  view->setContextMenuPolicy(Qt::ActionsContextMenu);
  auto *copy = new QAction(QObject::tr("Copy table"), view);
  copy->setShortcut(QKeySequence::Copy);
  copy->setShortcutContext(Qt::WidgetShortcut);
  QObject::connect(copy, &QAction::triggered, view, [view] {
    if (view->model())
      QApplication::clipboard()->setText(tableText(view->model(), false));
  });
  auto *save = new QAction(QObject::tr("Save table as CSV…"), view);
  QObject::connect(save, &QAction::triggered, view, [view] {
    if (!view->model())
      return;
    const QString path =
        QFileDialog::getSaveFileName(view, QObject::tr("Save table"),
                                     QDir::homePath() + "/table.csv", QObject::tr("CSV (*.csv)"));
    if (!path.isEmpty() && !saveTableCsv(view->model(), path))
      QMessageBox::warning(view, QObject::tr("Save table"),
                           QObject::tr("Could not write %1.").arg(path));
  });
  view->addAction(copy);
  view->addAction(save);
}

} // namespace lrq::ui
