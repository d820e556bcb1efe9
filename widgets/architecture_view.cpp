#include "widgets/architecture_view.h"

#include <QFileInfo>

#include <QHeaderView>
#include <QLabel>
#include <QLineEdit>
#include <QMap>
#include <QRegularExpression>
#include <QTreeWidget>
#include <QTreeWidgetItemIterator>
#include <QVBoxLayout>

#include <functional>

#include "core/session/model_session.h"
#include "widgets/engine_types.h"

namespace lrq::ui {
namespace {

// "model.layers.3.self_attn.q_proj.weight" -> block 3, "self_attn.q_proj"
const QRegularExpression &blockPattern() {
  static const QRegularExpression re(QStringLiteral("^(?:.*\\.)?layers\\.(\\d+)\\.(.+)$"));
  return re;
}

QString shortName(QString name) {
  if (name.endsWith(QStringLiteral(".weight")))
    name.chop(7);
  return name;
}

QTreeWidgetItem *addTensorItem(QTreeWidgetItem *parent, const QString &label,
                               const lrq::TensorSummary &t, const char *kind) {
  auto *item = new QTreeWidgetItem(parent);
  item->setText(ArchitectureView::NameColumn, label);
  item->setText(ArchitectureView::ShapeColumn, formatShape(t.shape));
  item->setText(ArchitectureView::TypeColumn, QString::fromStdString(t.dtype));
  item->setText(ArchitectureView::ParamsColumn, formatCount(t.numel));
  item->setData(0, ArchitectureView::TensorRole, QString::fromStdString(t.name));
  item->setData(0, ArchitectureView::KindRole, QString::fromLatin1(kind));
  item->setToolTip(ArchitectureView::NameColumn,
                   QObject::tr("%1\nin file: %2\n%3 elements")
                       .arg(QString::fromStdString(t.name), QString::fromStdString(t.sourceName))
                       .arg(t.numel));
  item->setTextAlignment(ArchitectureView::ParamsColumn, Qt::AlignRight | Qt::AlignVCenter);
  return item;
}

QTreeWidgetItem *addGroup(QTreeWidgetItem *parent, const QString &label, const char *kind) {
  auto *item = new QTreeWidgetItem(parent);
  item->setText(ArchitectureView::NameColumn, label);
  item->setData(0, ArchitectureView::KindRole, QString::fromLatin1(kind));
  QFont f = item->font(0);
  f.setBold(true);
  item->setFont(0, f);
  item->setFlags(item->flags() & ~Qt::ItemIsSelectable);
  return item;
}

} // namespace

ArchitectureView::ArchitectureView(QWidget *parent) : QWidget(parent) {
  title_ = new QLabel(tr("No model loaded"), this);
  title_->setObjectName(QStringLiteral("modelTitle"));
  title_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  title_->setWordWrap(true);
  details_ = new QLabel(tr("File › Open… or drop a .gguf / .safetensors file here."), this);
  details_->setObjectName(QStringLiteral("modelDetails"));
  details_->setWordWrap(true);
  note_ = new QLabel(this);
  note_->setObjectName(QStringLiteral("baselineNote"));
  note_->setWordWrap(true);
  note_->setToolTip(tr("The weights used as the full-precision reference were dequantized from "
                       "a quantized file: perplexities and errors are measured against them, "
                       "not against the original float model."));
  note_->hide();

  filter_ = new QLineEdit(this);
  filter_->setPlaceholderText(tr("Filter tensors (e.g. down_proj, layers.7.)"));
  filter_->setClearButtonEnabled(true);
  connect(filter_, &QLineEdit::textChanged, this, &ArchitectureView::applyFilter);

  tree_ = new QTreeWidget(this);
  tree_->setObjectName(QStringLiteral("architectureTree"));
  tree_->setColumnCount(4);
  tree_->setHeaderLabels({tr("Name"), tr("Shape"), tr("Type"), tr("Params")});
  tree_->setUniformRowHeights(true);
  tree_->setIndentation(14);
  tree_->setAlternatingRowColors(true);
  tree_->header()->setStretchLastSection(false);
  tree_->header()->setSectionResizeMode(NameColumn, QHeaderView::Stretch);
  tree_->header()->setSectionResizeMode(ShapeColumn, QHeaderView::ResizeToContents);
  // The Type column yields first when the dock is narrow; Name keeps room for
  // "model.layers.29.self_attn" and the like.
  tree_->header()->setSectionResizeMode(TypeColumn, QHeaderView::Interactive);
  tree_->header()->resizeSection(TypeColumn, 52);
  tree_->header()->setSectionResizeMode(ParamsColumn, QHeaderView::ResizeToContents);
  tree_->setMinimumWidth(330);
  connect(tree_, &QTreeWidget::currentItemChanged, this,
          [this](QTreeWidgetItem *current, QTreeWidgetItem *) {
            if (!current)
              return;
            const QString tensor = current->data(0, TensorRole).toString();
            if (!tensor.isEmpty())
              emit tensorSelected(tensor);
          });

  auto *layout = new QVBoxLayout(this);
  layout->setContentsMargins(6, 6, 6, 6);
  layout->setSpacing(6);
  layout->addWidget(title_);
  layout->addWidget(details_);
  layout->addWidget(note_);
  layout->addWidget(filter_);
  layout->addWidget(tree_, 1);
}

void ArchitectureView::clear() {
  tree_->clear();
  blocksItem_ = nullptr;
  title_->setText(tr("No model loaded"));
  details_->setText(tr("File › Open… or drop a .gguf / .safetensors file here."));
  note_->hide();
}

QString ArchitectureView::headerText() const {
  QString text = title_->text() + QLatin1Char('\n') + details_->text();
  if (note_->isVisibleTo(const_cast<ArchitectureView *>(this)))
    text += QLatin1Char('\n') + note_->text();
  return text;
}

void ArchitectureView::setModel(const lrq::ModelSummary &s, const QString &displayName) {
  tree_->clear();
  blocksItem_ = nullptr;

  title_->setText(displayName);
  title_->setToolTip(QString::fromStdString(s.path));
  QStringList line1{QString::fromStdString(s.architecture),
                    tr("%1 parameters").arg(formatCount(s.parameters)),
                    QString::fromStdString(s.format).toUpper()};
  QStringList line2{tr("%n blocks", nullptr, static_cast<int>(s.numLayers)),
                    tr("hidden %1").arg(s.hiddenSize)};
  if (s.numHeads > 0)
    line2 << (s.numKvHeads > 0 && s.numKvHeads != s.numHeads
                  ? tr("%1 heads (%2 KV)").arg(s.numHeads).arg(s.numKvHeads)
                  : tr("%1 heads").arg(s.numHeads));
  if (s.intermediateSize > 0)
    line2 << tr("ffn %1").arg(s.intermediateSize);
  if (s.vocabSize > 0)
    line2 << tr("vocab %1").arg(s.vocabSize);
  details_->setText(line1.join(QStringLiteral(" · ")) + QLatin1Char('\n') +
                    line2.join(QStringLiteral(" · ")));
  QString note = baselineNoteText(s);
  if (s.quantization.present()) {
    // An lrq export: what made it, not a plain float model.
    const auto &q = s.quantization;
    note = tr("Quantized with %1 · %2")
               .arg(QString::fromStdString(q.method),
                    QString::fromStdString(q.schemeDescription.empty() ? q.scheme
                                                                       : q.schemeDescription));
    if (!q.runId.empty())
      note += tr(" · run %1").arg(QString::fromStdString(q.runId));
    if (!q.source.empty())
      note += tr("\nfrom %1").arg(QFileInfo(QString::fromStdString(q.source)).fileName());
    if (!q.reference.empty())
      note += tr(" (full precision: %1)").arg(QString::fromStdString(q.reference));
  }
  note_->setText(note);
  note_->setVisible(!note.isEmpty());

  auto *root = new QTreeWidgetItem(tree_);
  root->setText(NameColumn, displayName);
  root->setText(TypeColumn, s.quantization.present() ? QString::fromStdString(s.quantization.scheme)
                                                     : QString::fromStdString(s.format).toUpper());
  root->setText(ParamsColumn, formatCount(s.parameters));
  root->setTextAlignment(ParamsColumn, Qt::AlignRight | Qt::AlignVCenter);
  root->setData(0, KindRole, QString::fromLatin1(kKindModel));
  root->setToolTip(NameColumn, QString::fromStdString(s.architecture));

  // Sort the file's tensors into embeddings, per-block tensors, norms, head.
  QMap<int, QList<const lrq::TensorSummary *>> blockTensors;
  QList<const lrq::TensorSummary *> embeddings, norms, head, other;
  QHash<QString, const lrq::TensorSummary *> byName;
  for (const auto &t : s.tensors) {
    const QString name = QString::fromStdString(t.name);
    byName.insert(name, &t);
    const auto m = blockPattern().match(name);
    if (m.hasMatch())
      blockTensors[m.captured(1).toInt()].append(&t);
    else if (name.startsWith(QStringLiteral("lm_head")))
      head.append(&t);
    else if (name.contains(QStringLiteral("embed")))
      embeddings.append(&t);
    else if (name.contains(QStringLiteral("norm")))
      norms.append(&t);
    else
      other.append(&t);
  }

  if (!embeddings.isEmpty()) {
    auto *group = addGroup(root, tr("Embeddings"), kKindGroup);
    for (const auto *t : embeddings)
      addTensorItem(group, shortName(QString::fromStdString(t->name)), *t, kKindTensor);
  }

  blocksItem_ = addGroup(root, tr("Blocks (%1)").arg(s.blocks.size()), kKindBlocks);
  for (const auto &block : s.blocks) {
    auto *blockItem = new QTreeWidgetItem(blocksItem_);
    blockItem->setText(NameColumn, tr("Block %1").arg(block.index));
    blockItem->setText(ParamsColumn, formatCount(block.parameters));
    blockItem->setTextAlignment(ParamsColumn, Qt::AlignRight | Qt::AlignVCenter);
    blockItem->setData(0, KindRole, QString::fromLatin1(kKindBlock));
    blockItem->setFlags(blockItem->flags() & ~Qt::ItemIsSelectable);
    QSet<QString> shown;
    for (const auto &linear : block.linears) {
      const QString tensorName = QString::fromStdString(linear.tensor);
      const lrq::TensorSummary *t = byName.value(tensorName);
      lrq::TensorSummary fallback;
      if (!t) { // a linear the tensor list does not describe: show what the block says
        fallback.name = linear.tensor;
        fallback.dtype = linear.dtype;
        fallback.shape = {linear.outFeatures, linear.inFeatures};
        fallback.numel = linear.parameters;
        t = &fallback;
      }
      QString label = QString::fromStdString(linear.role);
      const auto m = blockPattern().match(tensorName);
      if (m.hasMatch())
        label = shortName(m.captured(2));
      auto *item = addTensorItem(blockItem, label, *t, kKindLinear);
      item->setText(ShapeColumn, formatShape({linear.outFeatures, linear.inFeatures}));
      item->setText(ParamsColumn, formatCount(linear.parameters));
      shown.insert(tensorName);
    }
    for (const auto *t : blockTensors.value(block.index)) {
      const QString name = QString::fromStdString(t->name);
      if (shown.contains(name))
        continue;
      addTensorItem(blockItem, shortName(blockPattern().match(name).captured(2)), *t, kKindTensor);
    }
  }

  if (!norms.isEmpty()) {
    auto *group = addGroup(root, tr("Final norm"), kKindGroup);
    for (const auto *t : norms)
      addTensorItem(group, shortName(QString::fromStdString(t->name)), *t, kKindTensor);
  }
  auto *headGroup = addGroup(root, tr("Head"), kKindGroup);
  for (const auto *t : head)
    addTensorItem(headGroup, shortName(QString::fromStdString(t->name)), *t, kKindTensor);
  if (head.isEmpty() && s.tieEmbeddings && !embeddings.isEmpty()) {
    // Tied: the output projection is the token embedding matrix.
    const auto *embed = embeddings.front();
    addTensorItem(headGroup,
                  tr("lm_head (tied to %1)").arg(shortName(QString::fromStdString(embed->name))),
                  *embed, kKindTensor);
  }
  if (!other.isEmpty()) {
    auto *group = addGroup(root, tr("Other tensors"), kKindGroup);
    for (const auto *t : other)
      addTensorItem(group, shortName(QString::fromStdString(t->name)), *t, kKindTensor);
  }

  root->setExpanded(true);
  blocksItem_->setExpanded(true);
  if (blocksItem_->childCount() > 0)
    blocksItem_->child(0)->setExpanded(true);
  if (!filter_->text().isEmpty())
    applyFilter(filter_->text());
}

bool ArchitectureView::selectTensor(const QString &tensor) {
  QTreeWidgetItemIterator it(tree_);
  for (; *it; ++it) {
    if ((*it)->data(0, TensorRole).toString() == tensor) {
      for (QTreeWidgetItem *p = (*it)->parent(); p; p = p->parent())
        p->setExpanded(true);
      tree_->setCurrentItem(*it);
      tree_->scrollToItem(*it);
      return true;
    }
  }
  return false;
}

QString ArchitectureView::selectedTensor() const {
  const QTreeWidgetItem *item = tree_->currentItem();
  return item ? item->data(0, TensorRole).toString() : QString();
}

void ArchitectureView::applyFilter(const QString &text) {
  const QString needle = text.trimmed();
  // An item stays visible when it, an ancestor, or anything below it matches.
  std::function<bool(QTreeWidgetItem *, bool)> visit = [&](QTreeWidgetItem *item, bool inherited) {
    const bool self = inherited || needle.isEmpty() ||
                      item->text(NameColumn).contains(needle, Qt::CaseInsensitive) ||
                      item->data(0, TensorRole).toString().contains(needle, Qt::CaseInsensitive);
    bool any = self;
    for (int i = 0; i < item->childCount(); ++i)
      any = visit(item->child(i), self && !needle.isEmpty() && item->parent()) || any;
    item->setHidden(!any);
    if (any && !needle.isEmpty())
      item->setExpanded(true);
    return any;
  };
  for (int i = 0; i < tree_->topLevelItemCount(); ++i)
    visit(tree_->topLevelItem(i), false);
}

} // namespace lrq::ui
