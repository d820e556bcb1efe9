#pragma once
// The model's structure: a header (architecture, parameter count, and the
// baseline note when the "full precision" weights were dequantized) above a
// tree of model → embeddings / blocks → linears and norms / final norm / head.
#include <QWidget>

class QLabel;
class QLineEdit;
class QTreeWidget;
class QTreeWidgetItem;

namespace lrq {
struct ModelSummary;
}

namespace lrq::ui {

class ArchitectureView : public QWidget {
  Q_OBJECT
public:
  // Item data roles and the kinds stored under KindRole.
  enum Role { TensorRole = Qt::UserRole + 1, KindRole };
  enum Column { NameColumn = 0, ShapeColumn, TypeColumn, ParamsColumn };
  static constexpr const char *kKindModel = "model";
  static constexpr const char *kKindGroup = "group";
  static constexpr const char *kKindBlocks = "blocks";
  static constexpr const char *kKindBlock = "block";
  static constexpr const char *kKindLinear = "linear";
  static constexpr const char *kKindTensor = "tensor";

  explicit ArchitectureView(QWidget *parent = nullptr);

  void setModel(const lrq::ModelSummary &summary, const QString &displayName);
  void clear();
  // Selects the item of an HF tensor name; false when absent.
  bool selectTensor(const QString &tensor);
  QString selectedTensor() const;

  QTreeWidget *tree() const { return tree_; }
  QTreeWidgetItem *blocksItem() const { return blocksItem_; }
  QLabel *baselineNoteLabel() const { return note_; }
  QString headerText() const;

signals:
  void tensorSelected(const QString &tensor);

private:
  void applyFilter(const QString &text);

  QLabel *title_ = nullptr;
  QLabel *details_ = nullptr;
  QLabel *note_ = nullptr;
  QLineEdit *filter_ = nullptr;
  QTreeWidget *tree_ = nullptr;
  QTreeWidgetItem *blocksItem_ = nullptr;
};

} // namespace lrq::ui
