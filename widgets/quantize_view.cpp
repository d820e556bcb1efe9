#include "widgets/quantize_view.h"
#include "widgets/live_label.h"
#include <cstdio>

#include <QCheckBox>
#include <QComboBox>
#include <QCryptographicHash>
#include <QDateTime>
#include <QDir>
#include <QDoubleValidator>
#include <QFile>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QInputDialog>
#include <QLabel>
#include <QLineEdit>
#include <QMessageBox>
#include <QProgressBar>
#include <QPushButton>
#include <QScrollArea>
#include <QScrollBar>
#include <QSpinBox>
#include <QSplitter>
#include <QStandardPaths>
#include <QTimer>
#include <QToolButton>
#include <QVBoxLayout>

#include <algorithm>
#include <climits>
#include <cmath>

#include "core/data/default_assets.h"
#include "core/quant/storage_bits.h"
#include "core/runs/run_store.h"
#include "widgets/engine_types.h"
#include "widgets/quantize_controller.h"
#include "widgets/run_monitor.h"
#include "widgets/session_controller.h"

namespace lrq::ui {
namespace {

constexpr const char *kCustomScheme = "custom";

// Option keys the view edits with its own controls, not the generated form.
bool ownControl(const std::string &key) {
  return key.empty() || key == "model" || key == "method" || key == "scheme" || key == "preset" ||
         key == "hyperparameters" || key == "resume";
}

int clampInt(double v) {
  return int(std::clamp(v, double(INT_MIN), double(INT_MAX)));
}

QString numberText(double v) {
  return QString::number(v, 'g', 10);
}

// "0-3, 7" -> {0,1,2,3,7}; "" or "all" -> {} (every block). False on bad text.
bool parseBlockList(const QString &text, std::vector<int64_t> *out) {
  out->clear();
  const QString t = text.trimmed();
  if (t.isEmpty() || t.compare(QLatin1String("all"), Qt::CaseInsensitive) == 0)
    return true;
  for (const QString &part : t.split(',', Qt::SkipEmptyParts)) {
    const QStringList range = part.trimmed().split('-');
    bool ok1 = false, ok2 = true;
    const int64_t a = range[0].trimmed().toLongLong(&ok1);
    int64_t b = a;
    if (range.size() == 2)
      b = range[1].trimmed().toLongLong(&ok2);
    if (!ok1 || !ok2 || range.size() > 2 || a < 0 || b < a)
      return false;
    for (int64_t i = a; i <= b; ++i)
      out->push_back(i);
  }
  return true;
}

QString blockListText(const std::vector<int64_t> &blocks) {
  if (blocks.empty())
    return QStringLiteral("all");
  QStringList parts;
  size_t i = 0;
  while (i < blocks.size()) {
    size_t j = i;
    while (j + 1 < blocks.size() && blocks[j + 1] == blocks[j] + 1)
      ++j;
    parts << (j > i + 1 ? QStringLiteral("%1-%2").arg(blocks[i]).arg(blocks[j])
                        : QString::number(blocks[i]));
    if (j == i + 1)
      parts << QString::number(blocks[j]);
    i = j + 1;
  }
  return parts.join(QStringLiteral(", "));
}

} // namespace

QuantizeView::QuantizeView(SessionController *session, QuantizeController *controller,
                           QWidget *parent)
    : QWidget(parent), session_(session), controller_(controller) {
  // Form edits re-check the request (debounced); created first, the form connects to it.
  liveTimer_ = new QTimer(this);
  liveTimer_->setSingleShot(true);
  liveTimer_->setInterval(150);
  connect(liveTimer_, &QTimer::timeout, this, &QuantizeView::updateLive);

  auto *formColumn = new QWidget(this);
  auto *form = new QVBoxLayout(formColumn);
  form->setContentsMargins(4, 4, 4, 4);
  form->addWidget(buildMethodBox());
  schemeBox_ = buildSchemeBox();
  form->addWidget(schemeBox_);
  form->addWidget(buildOptionBoxes());
  form->addStretch(1);
  auto *scroll = formScroll_ = new QScrollArea(this);
  scroll->setWidget(formColumn);
  scroll->setWidgetResizable(true);
  scroll->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
  scroll->setMinimumWidth(340);

  // Right: run controls, progress, problems, and the monitor.
  auto *right = new QWidget(this);
  auto *rightLayout = new QVBoxLayout(right);
  rightLayout->setContentsMargins(4, 4, 4, 4);
  auto *controls = new QHBoxLayout;
  start_ = new QPushButton(tr("Start"), right);
  start_->setToolTip(tr("Quantize the open model with these settings"));
  cancel_ = new QPushButton(tr("Cancel"), right);
  cancel_->setEnabled(false);
  resume_ = new QPushButton(tr("Resume…"), right);
  resume_->setToolTip(tr("Go on with an interrupted FlexRound / LRQ run from its checkpoint"));
  progress_ = new QProgressBar(right);
  progress_->setRange(0, 1000);
  progress_->setValue(0);
  progress_->setTextVisible(true);
  progress_->setFormat(tr("idle"));
  eta_ = new LiveLabel(1, right);
  eta_->setMinimumWidth(140);
  controls->addWidget(start_);
  controls->addWidget(cancel_);
  controls->addWidget(resume_);
  controls->addWidget(progress_, 1);
  controls->addWidget(eta_);
  rightLayout->addLayout(controls);
  problems_ = new QLabel(right);
  problems_->setWordWrap(true);
  problems_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  problems_->setStyleSheet(QStringLiteral("QLabel { color: #b00020; }"));
  problems_->setVisible(false);
  rightLayout->addWidget(problems_);
  monitor_ = new RunMonitor(right);
  rightLayout->addWidget(monitor_, 1);

  auto *splitter = new QSplitter(Qt::Horizontal, this);
  splitter->addWidget(scroll);
  splitter->addWidget(right);
  splitter->setStretchFactor(0, 0);
  splitter->setStretchFactor(1, 1);
  splitter->setSizes({400, 880}); // the form fits without a sideways cut at 1280 wide
  auto *layout = new QVBoxLayout(this);
  layout->setContentsMargins(0, 0, 0, 0);
  layout->addWidget(splitter);

  connect(start_, &QPushButton::clicked, this, &QuantizeView::startRun);
  connect(cancel_, &QPushButton::clicked, this, &QuantizeView::cancelRun);
  connect(resume_, &QPushButton::clicked, this, &QuantizeView::chooseRunToResume);
  connect(controller_, &QuantizeController::eventsReady, this, &QuantizeView::onEvents);
  connect(controller_, &QuantizeController::finished, this,
          [this](const QString &runId, const QVariantMap &metrics, double seconds) {
            setRunning(false);
            progress_->setValue(progress_->maximum());
            QString text = tr("run %1 finished in %2").arg(runId, formatSeconds(seconds));
            if (metrics.contains(QStringLiteral("perplexity")))
              text += tr(" · perplexity %1 (full precision %2) · KL %3")
                          .arg(metrics.value("perplexity").toDouble(), 0, 'f', 2)
                          .arg(metrics.value("reference_perplexity").toDouble(), 0, 'f', 2)
                          .arg(metrics.value("kl").toDouble(), 0, 'f', 4);
            if (metrics.contains(QStringLiteral("ood_kl")))
              text += tr(" · out of domain: KL %1, perplexity %2")
                          .arg(metrics.value("ood_kl").toDouble(), 0, 'f', 4)
                          .arg(metrics.value("ood_perplexity").toDouble(), 0, 'f', 2);
            progress_->setFormat(tr("finished"));
            eta_->setText(QString());
            problems_->setStyleSheet(QStringLiteral("QLabel { color: #1b5e20; }"));
            problems_->setText(text);
            problems_->setVisible(true);
            emit runFinished(runId, controller_->storePath());
          });
  connect(controller_, &QuantizeController::failed, this, [this](const QString &message) {
    setRunning(false);
    progress_->setFormat(tr("failed"));
    problems_->setStyleSheet(QStringLiteral("QLabel { color: #b00020; }"));
    problems_->setText(tr("The run failed: %1").arg(message));
    problems_->setVisible(true);
  });
  connect(controller_, &QuantizeController::cancelled, this, [this] {
    setRunning(false);
    progress_->setFormat(tr("cancelled"));
    problems_->setStyleSheet(QStringLiteral("QLabel { color: #8a6d00; }"));
    problems_->setText(tr("Cancelled. A FlexRound or LRQ run can be resumed from its last "
                          "finished block (Resume…)."));
    problems_->setVisible(true);
  });
  connect(session_, &SessionController::modelLoaded, this, [this] { updateLive(); });

  rebuildHyperparameters();
  schemePresetChosen();
  applyPresetToForm();
  updateLive();
}

QWidget *QuantizeView::buildMethodBox() {
  auto *box = new QGroupBox(tr("Method"), this);
  auto *layout = new QVBoxLayout(box);
  method_ = new QComboBox(box);
  for (const MethodInfo &m : methodCatalog())
    method_->addItem(QString::fromStdString(m.title), QString::fromStdString(m.name));
  method_->setCurrentIndex(std::max(0, method_->findData(QStringLiteral("lrq"))));
  fields_.insert(QStringLiteral("method"), method_);
  methodHelp_ = new QLabel(box);
  methodHelp_->setWordWrap(true);
  methodHelp_->setStyleSheet(QStringLiteral("QLabel { color: #444; }"));
  auto *presetRow = new QHBoxLayout;
  preset_ = new QComboBox(box);
  preset_->addItem(tr("none (the method's defaults)"), QString());
  preset_->addItem(tr("demo: minutes on 2 cores"), QStringLiteral("demo"));
  preset_->addItem(tr("extended: at most 15 minutes on 2 cores"), QStringLiteral("extended"));
  preset_->addItem(tr("thorough: closer to the papers"), QStringLiteral("thorough"));
  preset_->setCurrentIndex(1);
  fields_.insert(QStringLiteral("preset"), preset_);
  presetRow->addWidget(new QLabel(tr("Preset"), box));
  presetRow->addWidget(preset_, 1);
  hyperBox_ = new QWidget(box);
  hyperForm_ = new QFormLayout(hyperBox_);
  hyperForm_->setContentsMargins(0, 0, 0, 0);
  learnable_ = new QLabel(box);
  learnable_->setWordWrap(true);
  layout->addWidget(method_);
  layout->addWidget(methodHelp_);
  layout->addLayout(presetRow);
  layout->addWidget(hyperBox_);
  layout->addWidget(learnable_);
  connect(method_, &QComboBox::currentIndexChanged, this, [this] {
    rebuildHyperparameters();
    applyPresetToForm();
  });
  connect(preset_, &QComboBox::currentIndexChanged, this, &QuantizeView::applyPresetToForm);
  return box;
}

void QuantizeView::rebuildHyperparameters() {
  for (auto it = fields_.begin(); it != fields_.end();)
    it = it.key().startsWith(QLatin1String("hyperparameters.")) ? fields_.erase(it) : ++it;
  while (hyperForm_->rowCount() > 0)
    hyperForm_->removeRow(0);
  const MethodInfo &info = methodInfo(method_->currentData().toString().toStdString());
  methodHelp_->setText(QString::fromStdString(info.summary));
  for (const HyperparameterSpec &h : info.hyperparameters) {
    const QString key = QStringLiteral("hyperparameters.") + QString::fromStdString(h.name);
    QWidget *editor = nullptr;
    if (h.type == ValueType::Flag) {
      auto *check = new QCheckBox(hyperBox_);
      check->setChecked(std::get<bool>(h.defaultValue));
      connect(check, &QCheckBox::toggled, liveTimer_, qOverload<>(&QTimer::start));
      editor = check;
    } else if (h.type == ValueType::Integer) {
      auto *spin = new QSpinBox(hyperBox_);
      spin->setRange(clampInt(h.minimum), clampInt(h.maximum));
      spin->setValue(int(std::get<int64_t>(h.defaultValue)));
      spin->setKeyboardTracking(false);
      connect(spin, &QSpinBox::valueChanged, liveTimer_, qOverload<>(&QTimer::start));
      editor = spin;
    } else {
      auto *edit = new QLineEdit(hyperBox_);
      if (h.type == ValueType::Number) {
        auto *validator = new QDoubleValidator(h.minimum, h.maximum, 12, edit);
        validator->setNotation(QDoubleValidator::ScientificNotation);
        validator->setLocale(
            QLocale::c()); // "3e-3" and "0.003" everywhere, as request() reads them
        edit->setValidator(validator);
        edit->setText(numberText(std::get<double>(h.defaultValue)));
      } else {
        edit->setText(QString::fromStdString(optionValueText(h.defaultValue)));
      }
      connect(edit, &QLineEdit::textChanged, liveTimer_, qOverload<>(&QTimer::start));
      editor = edit;
    }
    QString tip = QString::fromStdString(h.help);
    if (h.type == ValueType::Integer || h.type == ValueType::Number)
      tip += tr(" (%1 to %2; default %3)")
                 .arg(numberText(h.minimum), numberText(h.maximum),
                      QString::fromStdString(optionValueText(h.defaultValue)));
    editor->setToolTip(tip);
    editor->setObjectName(key);
    auto *label = new QLabel(QString::fromStdString(h.name), hyperBox_);
    label->setToolTip(tip);
    hyperForm_->addRow(label, editor);
    fields_.insert(key, editor);
  }
  if (info.hyperparameters.empty())
    hyperForm_->addRow(new QLabel(tr("no hyperparameters"), hyperBox_));
  liveTimer_->start();
}

void QuantizeView::applyPresetToForm() {
  // The preset's values fill the form; whatever the user edits afterwards wins.
  QuantizeRequest r = request();
  r.preset = preset_->currentData().toString().toStdString();
  if (r.preset.empty())
    return;
  try {
    applyPreset(r);
  } catch (const Error &) {
    return; // a method without that preset: the form stays
  }
  setRequest(r);
}

void QuantizeView::revealSchemeEditor() {
  // Vertical only: ensureWidgetVisible would also shift the column sideways.
  formScroll_->verticalScrollBar()->setValue(schemeBox_->y());
}

QWidget *QuantizeView::buildSchemeBox() {
  auto *box = new QGroupBox(tr("Scheme"), this);
  auto *form = new QFormLayout(box);
  schemePreset_ = new QComboBox(box);
  for (const std::string &name : schemePresets())
    schemePreset_->addItem(QString::fromStdString(name));
  schemePreset_->addItem(tr(kCustomScheme));
  schemePreset_->setCurrentText(QStringLiteral("W3A16-g128"));
  fields_.insert(QStringLiteral("scheme"), schemePreset_);
  bits_ = new QSpinBox(box);
  bits_->setRange(2, 8);
  granularity_ = new QComboBox(box);
  for (auto g : {quant::Granularity::PerTensor, quant::Granularity::PerChannel,
                 quant::Granularity::PerGroup})
    granularity_->addItem(QString::fromLatin1(quant::granularityName(g)), int(g));
  groupSize_ = new QSpinBox(box);
  groupSize_->setRange(1, 1 << 16);
  groupSize_->setValue(128);
  symmetric_ = new QCheckBox(tr("symmetric grid"), box);
  fullRange_ = new QCheckBox(tr("full range"), box);
  fullRange_->setToolTip(tr("Symmetric grids: the largest magnitude of each unit lands on level "
                            "±2^(bits−1) on its own side, as llama.cpp's Q4_0 / Q5_0 do, so one "
                            "more level is used; off: on ±(2^(bits−1) − 1)"));
  init_ = new QComboBox(box);
  for (auto s : {quant::StepInit::MethodDefault, quant::StepInit::MinMax,
                 quant::StepInit::ClippingSearch, quant::StepInit::ClippingSearch2D})
    init_->addItem(QString::fromLatin1(quant::stepInitName(s)), int(s));
  init_->setToolTip(tr("auto: the method's reference choice (LRQ at W3A16 and W4A8, FlexRound at "
                       "W4A8: clip-search-2d; LR-QAT: symmetric clip-search, p = 4; otherwise "
                       "minmax)"));
  stepFormat_ = new QComboBox(box);
  for (auto f : {quant::StepFormat::Float32, quant::StepFormat::Fp16, quant::StepFormat::Fp16Offset,
                 quant::StepFormat::KSuperblock, quant::StepFormat::KSuperblockOffset})
    stepFormat_->addItem(QString::fromLatin1(quant::stepFormatName(f)), int(f));
  stepFormat_->setToolTip(tr("How each step is stored: f32; f16 (llama.cpp Q8_0 / Q5_0 / Q4_0 "
                             "blocks); f16-offset, an f16 step whose multiples by every zero "
                             "point are f16 too (Q5_1 / Q4_1 blocks, asymmetric grids); "
                             "k-superblock, d x sc with one f16 d per 256 inputs and an integer "
                             "sc per group of 16 (Q6_K; rows of other lengths take Q8_0's grid); "
                             "k-superblock-offset, d x sc steps and dmin x m offsets per group "
                             "of 32, asymmetric (Q4_K; rows of other lengths take Q5_0's grid)"));
  actMode_ = new QComboBox(box);
  for (auto m : {quant::ActivationMode::None, quant::ActivationMode::PerTokenDynamic,
                 quant::ActivationMode::PerTensorStatic})
    actMode_->addItem(QString::fromLatin1(quant::activationModeName(m)), int(m));
  actBits_ = new QSpinBox(box);
  actBits_->setRange(2, 16);
  actBits_->setValue(8);
  kv8_ = new QCheckBox(tr("8-bit KV cache (k_proj, v_proj outputs)"), box);
  blocks_ = new QLineEdit(box);
  blocks_->setPlaceholderText(tr("all, or e.g. 0-3, 7"));
  linears_ = new QLineEdit(box);
  linears_->setPlaceholderText(tr("all, or e.g. q_proj, down_proj"));
  schemeInfo_ = new QLabel(box);
  schemeInfo_->setWordWrap(true);
  auto *files = new QHBoxLayout;
  auto *load = new QPushButton(tr("Load…"), box);
  auto *save = new QPushButton(tr("Save…"), box);
  load->setToolTip(tr("Load a scheme JSON file (the same format lrq quantize --scheme takes)"));
  save->setToolTip(tr("Save this scheme as JSON for lrq quantize --scheme FILE"));
  files->addWidget(load);
  files->addWidget(save);
  form->addRow(tr("Preset"), schemePreset_);
  form->addRow(tr("Weight bits"), bits_);
  form->addRow(tr("Granularity"), granularity_);
  form->addRow(tr("Group size"), groupSize_);
  auto *symmetry = new QHBoxLayout;
  symmetry->addWidget(symmetric_);
  symmetry->addWidget(fullRange_);
  symmetry->addStretch(1);
  form->addRow(QString(), symmetry);
  form->addRow(tr("Step init"), init_);
  form->addRow(tr("Step format"), stepFormat_);
  form->addRow(tr("Activations"), actMode_);
  form->addRow(tr("Activation bits"), actBits_);
  form->addRow(QString(), kv8_);
  form->addRow(tr("Blocks"), blocks_);
  form->addRow(tr("Linears"), linears_);
  form->addRow(schemeInfo_);
  form->addRow(files);
  connect(schemePreset_, &QComboBox::currentIndexChanged, this, &QuantizeView::schemePresetChosen);
  for (QSpinBox *s : {bits_, groupSize_, actBits_})
    connect(s, &QSpinBox::valueChanged, this, &QuantizeView::schemeEdited);
  for (QComboBox *c : {granularity_, init_, stepFormat_, actMode_})
    connect(c, &QComboBox::currentIndexChanged, this, &QuantizeView::schemeEdited);
  for (QCheckBox *c : {symmetric_, fullRange_, kv8_})
    connect(c, &QCheckBox::toggled, this, &QuantizeView::schemeEdited);
  for (QLineEdit *e : {blocks_, linears_})
    connect(e, &QLineEdit::textChanged, this, &QuantizeView::schemeEdited);
  connect(load, &QPushButton::clicked, this, &QuantizeView::loadScheme);
  connect(save, &QPushButton::clicked, this, &QuantizeView::saveScheme);
  return box;
}

void QuantizeView::setSchemeEditor(const quant::QuantScheme &s) {
  fillingScheme_ = true;
  fallbackWeight_ = s.fallbackWeight;
  bits_->setValue(s.weight.bits);
  granularity_->setCurrentIndex(granularity_->findData(int(s.weight.granularity)));
  groupSize_->setValue(int(s.weight.groupSize > 0 ? s.weight.groupSize : 128));
  symmetric_->setChecked(s.weight.symmetric);
  fullRange_->setChecked(s.weight.fullRange);
  fullRange_->setEnabled(s.weight.symmetric);
  init_->setCurrentIndex(init_->findData(int(s.weight.init)));
  stepFormat_->setCurrentIndex(stepFormat_->findData(int(s.weight.stepFormat)));
  actMode_->setCurrentIndex(actMode_->findData(int(s.activation.mode)));
  actBits_->setValue(s.activation.bits);
  kv8_->setChecked(s.kv8);
  blocks_->setText(blockListText(s.layers.blocks));
  QStringList linears;
  for (const std::string &l : s.layers.linears)
    linears << QString::fromStdString(l);
  linears_->setText(linears.isEmpty() ? QStringLiteral("all") : linears.join(QStringLiteral(", ")));
  fillingScheme_ = false;
}

void QuantizeView::schemePresetChosen() {
  const QString name = schemePreset_->currentText();
  if (name != tr(kCustomScheme)) {
    try {
      setSchemeEditor(quant::presetScheme(name.toStdString()));
    } catch (const Error &) {
    }
  }
  liveTimer_->start();
}

void QuantizeView::schemeEdited() {
  if (fillingScheme_)
    return;
  groupSize_->setEnabled(granularity_->currentData().toInt() == int(quant::Granularity::PerGroup));
  actBits_->setEnabled(actMode_->currentData().toInt() != int(quant::ActivationMode::None));
  fullRange_->setEnabled(symmetric_->isChecked());
  // An edited preset is a custom scheme unless it still equals the preset.
  const quant::QuantScheme edited = editedScheme();
  QString match = tr(kCustomScheme);
  for (const std::string &name : schemePresets()) {
    quant::QuantScheme preset = quant::presetScheme(name);
    preset.name = edited.name;
    if (preset.toJson() == edited.toJson())
      match = QString::fromStdString(name);
  }
  if (schemePreset_->currentText() != match) {
    const QSignalBlocker block(schemePreset_);
    schemePreset_->setCurrentText(match);
  }
  liveTimer_->start();
}

quant::QuantScheme QuantizeView::editedScheme() const {
  quant::QuantScheme s;
  s.name = schemePreset_->currentText() == tr(kCustomScheme)
               ? std::string("custom")
               : schemePreset_->currentText().toStdString();
  s.weight.bits = bits_->value();
  s.weight.granularity = quant::Granularity(granularity_->currentData().toInt());
  s.weight.groupSize =
      s.weight.granularity == quant::Granularity::PerGroup ? groupSize_->value() : 0;
  s.weight.symmetric = symmetric_->isChecked();
  s.weight.fullRange = s.weight.symmetric && fullRange_->isChecked();
  s.weight.init = quant::StepInit(init_->currentData().toInt());
  s.weight.stepFormat = quant::StepFormat(stepFormat_->currentData().toInt());
  if (quant::isSuperBlockFormat(s.weight.stepFormat))
    s.fallbackWeight =
        fallbackWeight_ ? *fallbackWeight_
                        : *quant::presetScheme(s.weight.stepFormat == quant::StepFormat::KSuperblock
                                                   ? "gguf-q6_k"
                                                   : "gguf-q4_k")
                               .fallbackWeight;
  s.activation.mode = quant::ActivationMode(actMode_->currentData().toInt());
  s.activation.bits = actBits_->value();
  s.kv8 = kv8_->isChecked();
  parseBlockList(blocks_->text(), &s.layers.blocks);
  const QString linears = linears_->text().trimmed();
  if (!linears.isEmpty() && linears.compare(QLatin1String("all"), Qt::CaseInsensitive) != 0)
    for (const QString &l : linears.split(',', Qt::SkipEmptyParts))
      s.layers.linears.push_back(l.trimmed().toStdString());
  return s;
}

QString QuantizeView::schemeArgument() const {
  const QString preset = schemePreset_->currentText();
  if (preset != tr(kCustomScheme))
    return preset;
  // A custom scheme travels as a file, the same JSON the CLI takes.
  const std::string json = editedScheme().toJson(2);
  const QString dir = QString::fromStdString(lrq::cacheDirectory()) + "/schemes";
  QDir().mkpath(dir);
  const QByteArray hash =
      QCryptographicHash::hash(QByteArray::fromStdString(json), QCryptographicHash::Sha1).toHex();
  const QString path = dir + "/custom-" + QString::fromLatin1(hash.left(12)) + ".json";
  if (!QFile::exists(path)) {
    QFile f(path);
    if (f.open(QIODevice::WriteOnly))
      f.write(QByteArray::fromStdString(json));
  }
  return path;
}

void QuantizeView::loadScheme() {
  const QString path = QFileDialog::getOpenFileName(this, tr("Load scheme"), QDir::homePath(),
                                                    tr("Scheme JSON (*.json)"));
  if (path.isEmpty())
    return;
  try {
    const quant::QuantScheme s =
        quant::QuantScheme::fromJson(resolveSchemeJson(path.toStdString()));
    const QSignalBlocker block(schemePreset_);
    schemePreset_->setCurrentText(tr(kCustomScheme));
    setSchemeEditor(s);
    schemeEdited();
  } catch (const std::exception &e) {
    QMessageBox::warning(this, tr("Load scheme"), QString::fromUtf8(e.what()));
  }
}

void QuantizeView::saveScheme() {
  const QString path = QFileDialog::getSaveFileName(
      this, tr("Save scheme"), QDir::homePath() + "/scheme.json", tr("Scheme JSON (*.json)"));
  if (path.isEmpty())
    return;
  try {
    const quant::QuantScheme s = editedScheme();
    s.validate();
    QFile f(path);
    if (!f.open(QIODevice::WriteOnly) || f.write(QByteArray::fromStdString(s.toJson(2))) < 0)
      throw Error(path.toStdString() + ": " + f.errorString().toStdString());
  } catch (const std::exception &e) {
    QMessageBox::warning(this, tr("Save scheme"), QString::fromUtf8(e.what()));
  }
}

QWidget *QuantizeView::buildOptionBoxes() {
  // Every other option of the request, by group, generated from the table.
  auto *column = new QWidget(this);
  auto *layout = new QVBoxLayout(column);
  layout->setContentsMargins(0, 0, 0, 0);
  QGroupBox *box = nullptr;
  QFormLayout *form = nullptr;
  std::string group;
  const QuantizeRequest defaults;
  for (const RequestOption &o : quantizeRequestOptions()) {
    if (ownControl(o.key))
      continue;
    if (o.group != group) {
      group = o.group;
      box = new QGroupBox(tr(group.c_str()), column);
      form = new QFormLayout(box);
      layout->addWidget(box);
    }
    const QString key = QString::fromStdString(o.key);
    const QString tip = QString::fromStdString(o.help);
    QWidget *editor = nullptr;
    switch (o.type) {
    case ValueType::Flag: {
      auto *check = new QCheckBox(QString::fromStdString(o.label), box);
      check->setChecked(std::get<bool>(o.get(defaults)));
      connect(check, &QCheckBox::toggled, liveTimer_, qOverload<>(&QTimer::start));
      editor = check;
      break;
    }
    case ValueType::Integer: {
      auto *spin = new QSpinBox(box);
      spin->setRange(clampInt(o.minimum), clampInt(o.maximum));
      spin->setValue(int(std::get<int64_t>(o.get(defaults))));
      spin->setKeyboardTracking(false);
      if (o.key == "eval_max_windows")
        spin->setSpecialValueText(tr("all"));
      connect(spin, &QSpinBox::valueChanged, liveTimer_, qOverload<>(&QTimer::start));
      editor = spin;
      break;
    }
    case ValueType::Choice: {
      auto *combo = new QComboBox(box);
      for (const std::string &c : o.choices)
        combo->addItem(QString::fromStdString(c));
      combo->setCurrentText(QString::fromStdString(optionValueText(o.get(defaults))));
      connect(combo, &QComboBox::currentIndexChanged, liveTimer_, qOverload<>(&QTimer::start));
      editor = combo;
      break;
    }
    default: {
      auto *edit = new QLineEdit(box);
      if (o.type == ValueType::Number) {
        auto *validator = new QDoubleValidator(o.minimum, o.maximum, 12, edit);
        validator->setLocale(QLocale::c());
        edit->setValidator(validator);
      }
      edit->setText(QString::fromStdString(optionValueText(o.get(defaults))));
      edit->setPlaceholderText(o.type == ValueType::Path ? tr("default / none")
                                                         : QString::fromStdString(o.valueName));
      connect(edit, &QLineEdit::textChanged, liveTimer_, qOverload<>(&QTimer::start));
      editor = edit;
      if (o.type == ValueType::Path) {
        // A browse button beside the path.
        auto *row = new QWidget(box);
        auto *h = new QHBoxLayout(row);
        h->setContentsMargins(0, 0, 0, 0);
        h->addWidget(edit, 1);
        auto *browse = new QToolButton(row);
        browse->setText(QStringLiteral("…"));
        browse->setToolTip(tr("Browse"));
        h->addWidget(browse);
        const bool folder = o.valueName == "DIR";
        const bool save = o.group == "Output" || o.group == "Run";
        connect(browse, &QToolButton::clicked, this, [this, edit, folder, save, o] {
          const QString start = edit->text().isEmpty() ? QDir::homePath() : edit->text();
          QString path;
          if (folder)
            path = QFileDialog::getExistingDirectory(this, QString::fromStdString(o.label), start);
          else if (save)
            path = QFileDialog::getSaveFileName(this, QString::fromStdString(o.label), start);
          else
            path = QFileDialog::getOpenFileName(this, QString::fromStdString(o.label), start,
                                                tr("Text (*.txt);;All files (*)"));
          if (!path.isEmpty())
            edit->setText(path);
        });
        editor->setToolTip(tip);
        editor->setObjectName(key);
        fields_.insert(key, edit);
        form->addRow(QString::fromStdString(o.label), row);
        continue;
      }
    }
    }
    editor->setToolTip(tip);
    editor->setObjectName(key);
    fields_.insert(key, editor);
    if (o.type == ValueType::Flag)
      form->addRow(QString(), editor);
    else
      form->addRow(QString::fromStdString(o.label), editor);
  }
  return column;
}

QuantizeRequest QuantizeView::request() const {
  QuantizeRequest r;
  r.model = session_->summary() ? session_->summary()->path : std::string("default");
  r.method = method_->currentData().toString().toStdString();
  r.scheme = schemePreset_->currentText().toStdString(); // custom: a file, at start
  r.preset = preset_->currentData().toString().toStdString();
  for (const RequestOption &o : quantizeRequestOptions()) {
    if (ownControl(o.key))
      continue;
    QWidget *w = fields_.value(QString::fromStdString(o.key));
    if (auto *check = qobject_cast<QCheckBox *>(w))
      o.set(r, check->isChecked());
    else if (auto *spin = qobject_cast<QSpinBox *>(w))
      o.set(r, int64_t(spin->value()));
    else if (auto *combo = qobject_cast<QComboBox *>(w))
      o.set(r, combo->currentText().toStdString());
    else if (auto *edit = qobject_cast<QLineEdit *>(w)) {
      if (o.type == ValueType::Number) {
        bool ok = false;
        const double v = QLocale::c().toDouble(edit->text().trimmed(), &ok);
        o.set(r, ok ? v : std::nan(""));
      } else {
        o.set(r, edit->text().trimmed().toStdString());
      }
    }
  }
  const MethodInfo &info = methodInfo(r.method);
  for (const HyperparameterSpec &h : info.hyperparameters) {
    QWidget *w = fields_.value(QStringLiteral("hyperparameters.") + QString::fromStdString(h.name));
    OptionValue v = h.defaultValue;
    if (auto *check = qobject_cast<QCheckBox *>(w))
      v = check->isChecked();
    else if (auto *spin = qobject_cast<QSpinBox *>(w))
      v = int64_t(spin->value());
    else if (auto *edit = qobject_cast<QLineEdit *>(w)) {
      if (h.type == ValueType::Number) {
        bool ok = false;
        const double d = QLocale::c().toDouble(edit->text().trimmed(), &ok);
        v = ok ? d : std::nan("");
      } else {
        v = edit->text().toStdString();
      }
    }
    if (v != h.defaultValue)
      r.hyperparameters[h.name] = v;
  }
  return r;
}

void QuantizeView::setRequest(const QuantizeRequest &r) {
  const int m = method_->findData(QString::fromStdString(r.method));
  if (m >= 0 && m != method_->currentIndex()) {
    const QSignalBlocker block(method_);
    method_->setCurrentIndex(m);
    rebuildHyperparameters();
  }
  {
    const QSignalBlocker block(preset_);
    preset_->setCurrentIndex(std::max(0, preset_->findData(QString::fromStdString(r.preset))));
  }
  const QString scheme = QString::fromStdString(r.scheme);
  if (schemePreset_->findText(scheme) >= 0) {
    schemePreset_->setCurrentText(scheme);
  } else {
    try {
      const quant::QuantScheme s = quant::QuantScheme::fromJson(resolveSchemeJson(r.scheme));
      const QSignalBlocker block(schemePreset_);
      schemePreset_->setCurrentText(tr(kCustomScheme));
      setSchemeEditor(s);
    } catch (const Error &) {
    }
  }
  for (const RequestOption &o : quantizeRequestOptions()) {
    if (ownControl(o.key))
      continue;
    QWidget *w = fields_.value(QString::fromStdString(o.key));
    const OptionValue v = o.get(r);
    if (auto *check = qobject_cast<QCheckBox *>(w))
      check->setChecked(std::get<bool>(v));
    else if (auto *spin = qobject_cast<QSpinBox *>(w))
      spin->setValue(clampInt(double(std::get<int64_t>(v))));
    else if (auto *combo = qobject_cast<QComboBox *>(w))
      combo->setCurrentText(QString::fromStdString(optionValueText(v)));
    else if (auto *edit = qobject_cast<QLineEdit *>(w))
      edit->setText(QString::fromStdString(optionValueText(v)));
  }
  const MethodInfo &info = methodInfo(method_->currentData().toString().toStdString());
  for (const HyperparameterSpec &h : info.hyperparameters) {
    QWidget *w = fields_.value(QStringLiteral("hyperparameters.") + QString::fromStdString(h.name));
    auto it = r.hyperparameters.find(h.name);
    const OptionValue v = it != r.hyperparameters.end() ? it->second : h.defaultValue;
    if (auto *check = qobject_cast<QCheckBox *>(w); check && std::holds_alternative<bool>(v))
      check->setChecked(std::get<bool>(v));
    else if (auto *spin = qobject_cast<QSpinBox *>(w); spin && std::holds_alternative<int64_t>(v))
      spin->setValue(clampInt(double(std::get<int64_t>(v))));
    else if (auto *edit = qobject_cast<QLineEdit *>(w))
      edit->setText(QString::fromStdString(optionValueText(v)));
  }
  liveTimer_->start();
}

void QuantizeView::updateLive() {
  const QuantizeRequest r = request();
  const quant::QuantScheme scheme = editedScheme();
  std::vector<RequestProblem> problems;
  QString schemeProblem;
  try {
    scheme.validate();
  } catch (const Error &e) {
    schemeProblem = QString::fromUtf8(e.what());
    problems.push_back({"scheme", e.what()});
  }
  std::vector<int64_t> blocks;
  if (!parseBlockList(blocks_->text(), &blocks))
    problems.push_back({"scheme", "blocks: a list such as 0-3, 7 (or all)"});
  // The request's own checks, with the scheme as edited.
  QuantizeRequest checked = r;
  checked.scheme = "W4A16"; // the edited scheme is checked above
  for (const RequestProblem &p : checkRequest(checked))
    if (p.key != "scheme")
      problems.push_back(p);
  const ModelSummary *summary = session_->summary();
  if (!summary)
    problems.push_back({"model", "open a model first (File › Open, or the default model)"});
  else if (!scheme.layers.blocks.empty() && scheme.layers.blocks.back() >= summary->numLayers)
    problems.push_back({"scheme", "the model has " + std::to_string(summary->numLayers) +
                                      " blocks (0-" + std::to_string(summary->numLayers - 1) +
                                      ")"});

  // Bits per weight and learnable parameters over the model's selected linears.
  const MethodInfo &info = methodInfo(r.method);
  int64_t rank = 0, factorBits = 0;
  if (r.method == "lqer" || r.method == "l2qer") {
    auto it = r.hyperparameters.find("rank");
    rank = it != r.hyperparameters.end()
               ? std::get<int64_t>(it->second)
               : std::get<int64_t>(info.hyperparameter("rank")->defaultValue);
    auto fb = r.hyperparameters.find("factor_bits");
    factorBits = fb != r.hyperparameters.end() ? std::get<int64_t>(fb->second) : 0;
  }
  QString info1;
  if (summary && schemeProblem.isEmpty()) {
    double bits = 0, weights = 0;
    for (const BlockSummary &b : summary->blocks) {
      if (!scheme.layers.selectsBlock(b.index))
        continue;
      for (const LinearSummary &l : b.linears) {
        if (!scheme.layers.selectsLinear(l.role))
          continue;
        const double n = double(l.outFeatures) * double(l.inFeatures);
        bits += quant::effectiveBitsPerWeight(scheme.weightFor(l.inFeatures), l.outFeatures,
                                              l.inFeatures, rank, int(factorBits)) *
                n;
        weights += n;
      }
    }
    bitsPerWeight_ = weights > 0 ? bits / weights : 0;
    info1 = tr("%1 · <b>%2 bits per weight</b> on the %3 quantized weights (codes, steps, "
               "zero points%4)")
                .arg(QString::fromStdString(scheme.describe()))
                .arg(bitsPerWeight_, 0, 'f', 3)
                .arg(formatCount(int64_t(weights)))
                .arg(rank > 0 ? tr(", rank-%1 factors").arg(rank) : QString());
    // Learnable parameters of one block, against FlexRound's full S2.
    learnablePerBlock_ = 0;
    int64_t flexround = 0;
    if (!summary->blocks.empty())
      for (const LinearSummary &l : summary->blocks.front().linears) {
        learnablePerBlock_ +=
            info.learnableParameters(l.outFeatures, l.inFeatures, r.hyperparameters);
        flexround += methodInfo("flexround").learnableParameters(l.outFeatures, l.inFeatures, {});
      }
    if (learnablePerBlock_ > 0)
      learnable_->setText(
          tr("Learnable parameters per block: <b>%1</b>%2")
              .arg(formatCount(learnablePerBlock_))
              .arg(r.method != "flexround"
                       ? tr(" (FlexRound's full-rank S2: %1, %2× more)")
                             .arg(formatCount(flexround))
                             .arg(double(flexround) / double(learnablePerBlock_), 0, 'f', 1)
                       : QString()));
    else
      learnable_->setText(
          tr("Learns nothing by training: the weights are rounded%1.")
              .arg(rank > 0 ? tr(" and corrected by rank-%1 factors").arg(rank) : QString()));
  } else {
    info1 = schemeProblem.isEmpty() ? tr("open a model to see bits per weight") : schemeProblem;
    learnable_->setText(QString());
  }
  schemeInfo_->setText(info1);
  markProblems(problems);
  if (!controller_->isRunning()) {
    QStringList lines;
    for (const RequestProblem &p : problems)
      lines << QStringLiteral("• ") + QString::fromStdString(p.message).toHtmlEscaped();
    problems_->setStyleSheet(QStringLiteral("QLabel { color: #b00020; }"));
    problems_->setText(lines.join(QStringLiteral("<br>")));
    problems_->setVisible(!lines.isEmpty());
    start_->setEnabled(problems.empty());
  }
}

QString QuantizeView::problemText() const {
  return problems_->isVisible() ? problems_->text() : QString();
}

void QuantizeView::markProblems(const std::vector<RequestProblem> &problems) {
  for (QWidget *w : fields_)
    w->setStyleSheet(QString());
  schemePreset_->setStyleSheet(QString());
  for (const RequestProblem &p : problems) {
    QWidget *w = fields_.value(QString::fromStdString(p.key));
    if (w)
      w->setStyleSheet(QStringLiteral("border: 1px solid #d32f2f;"));
  }
}

void QuantizeView::startRun() {
  updateLive();
  if (!start_->isEnabled())
    return;
  QuantizeRequest r = request();
  r.scheme = schemeArgument().toStdString();
  const MethodInfo &info = methodInfo(r.method);
  if (!controller_->start(r)) {
    showRefusal();
    return;
  }
  int iterations = 0;
  double lr = 0;
  // LR-QAT trains the whole model as one unit: its step loss is the one curve.
  const bool wholeModel = info.name == "lrqat";
  if (const HyperparameterSpec *h = info.hyperparameter(wholeModel ? "steps" : "iters")) {
    auto it = r.hyperparameters.find(h->name);
    iterations =
        int(std::get<int64_t>(it != r.hyperparameters.end() ? it->second : h->defaultValue));
  }
  if (const HyperparameterSpec *h = info.hyperparameter("lr"); h && !wholeModel) {
    auto it = r.hyperparameters.find("lr");
    const OptionValue v = it != r.hyperparameters.end() ? it->second : h->defaultValue;
    lr = std::holds_alternative<double>(v) ? std::get<double>(v) : double(std::get<int64_t>(v));
  }
  const ModelSummary *summary = session_->summary();
  trainsBlocks_ = info.trainsBlocks || wholeModel;
  blockCount_ = 0;
  blocksDone_ = iteration_ = 0;
  iterations_ = iterations;
  progressDone_ = progressTotal_ = 0;
  startedMs_ = QDateTime::currentMSecsSinceEpoch();
  monitor_->reset(
      tr("%1 · %2 · %3")
          .arg(QString::fromStdString(info.title), schemePreset_->currentText(),
               summary ? QFileInfo(QString::fromStdString(summary->path)).fileName() : QString()),
      trainsBlocks_, 0, trainsBlocks_ ? iterations : 0, lr);
  setRunning(true);
}

void QuantizeView::showRefusal() {
  // Why the controller would not start: each problem listed, its field marked.
  markProblems(controller_->problems());
  QStringList lines;
  for (const RequestProblem &p : controller_->problems())
    lines << QString::fromStdString(p.message).toHtmlEscaped();
  problems_->setStyleSheet(QStringLiteral("QLabel { color: #b00020; }"));
  problems_->setText(lines.join(QStringLiteral("<br>")));
  problems_->setVisible(true);
}

void QuantizeView::cancelRun() {
  controller_->cancel();
  progress_->setFormat(tr("cancelling…"));
}

void QuantizeView::resumeRun(const QString &runId, const QString &storePath) {
  if (controller_->isRunning())
    return;
  QuantizeRequest saved;
  try {
    saved = resumeRequest(runId.toStdString(), storePath.toStdString());
  } catch (const std::exception &e) {
    problems_->setStyleSheet(QStringLiteral("QLabel { color: #b00020; }"));
    problems_->setText(QString::fromUtf8(e.what()).toHtmlEscaped());
    problems_->setVisible(true);
    return;
  }
  setRequest(saved);
  if (!controller_->resume(runId, storePath)) {
    showRefusal();
    return;
  }
  const MethodInfo &info = methodInfo(saved.method);
  auto it = saved.hyperparameters.find("iters");
  iterations_ = it != saved.hyperparameters.end()
                    ? int(std::get<int64_t>(it->second))
                    : int(std::get<int64_t>(info.hyperparameter("iters")->defaultValue));
  trainsBlocks_ = true;
  blockCount_ = blocksDone_ = iteration_ = 0;
  startedMs_ = QDateTime::currentMSecsSinceEpoch();
  monitor_->reset(tr("%1 · resuming run %2").arg(QString::fromStdString(info.title), runId), true,
                  0, iterations_, 0);
  setRunning(true);
}

void QuantizeView::chooseRunToResume() {
  // Interrupted runs of resumable methods in the default store.
  QStringList items, ids;
  try {
    RunStore store = RunStore::open(RunStore::defaultPath());
    for (const RunInfo &run : store.listRuns()) {
      if (run.status == RunStatus::Finished || run.status == RunStatus::Running)
        continue; // nothing to resume, or its process is still at it
      try {
        if (!methodInfo(run.method).canResume)
          continue;
      } catch (const Error &) {
        continue;
      }
      items << QStringLiteral("%1  %2  %3  (%4)")
                   .arg(QString::fromStdString(run.id), QString::fromStdString(run.method),
                        QString::fromStdString(run.created),
                        QString::fromLatin1(runStatusName(run.status)));
      ids << QString::fromStdString(run.id);
    }
  } catch (const std::exception &e) {
    QMessageBox::warning(this, tr("Resume"), QString::fromUtf8(e.what()));
    return;
  }
  if (items.isEmpty()) {
    QMessageBox::information(this, tr("Resume"),
                             tr("No interrupted FlexRound, LRQ or learned-step run in %1.")
                                 .arg(QString::fromStdString(RunStore::defaultPath())));
    return;
  }
  bool ok = false;
  const QString choice = QInputDialog::getItem(this, tr("Resume a run"), tr("Interrupted runs:"),
                                               items, 0, false, &ok);
  if (ok)
    resumeRun(ids.value(items.indexOf(choice)), QString::fromStdString(RunStore::defaultPath()));
}

void QuantizeView::setRunning(bool running) {
  start_->setEnabled(!running);
  resume_->setEnabled(!running);
  cancel_->setEnabled(running);
  method_->setEnabled(!running);
  if (running) {
    progress_->setValue(0);
    progress_->setFormat(tr("starting…"));
    eta_->setText(QString());
    problems_->setVisible(false);
    emit busyChanged(true, tr("Quantizing…"));
  } else {
    emit busyChanged(false, QString());
    updateLive();
  }
}

void QuantizeView::onEvents(const QVector<MonitorEvent> &events) {
  monitor_->addEvents(events);
  using K = MonitorEvent::Kind;
  QString stage;
  for (const MonitorEvent &e : events) {
    switch (e.kind) {
    case K::BlockStarted:
      blockCount_ = int(e.total);
      blocksDone_ = e.block;
      iteration_ = 0;
      break;
    case K::Iteration:
      iteration_ = e.iteration + 1;
      break;
    case K::BlockFinished:
      blocksDone_ = e.block + 1;
      iteration_ = 0;
      break;
    case K::Progress:
      progressDone_ = e.done;
      progressTotal_ = e.total;
      stage = e.text;
      break;
    case K::TaskStarted:
      stage = e.text;
      break;
    default:
      break;
    }
  }
  double fraction = 0;
  QString text;
  if (trainsBlocks_ && blockCount_ > 0 && iterations_ > 0) {
    fraction =
        (blocksDone_ + double(std::min(iteration_, iterations_)) / iterations_) / blockCount_;
    text = tr("block %1/%2").arg(std::min(blocksDone_ + 1, blockCount_)).arg(blockCount_);
  } else if (progressTotal_ > 0) {
    fraction = double(progressDone_) / double(progressTotal_);
    text = tr("%1/%2").arg(progressDone_).arg(progressTotal_);
  }
  if (!stage.isEmpty() && !trainsBlocks_)
    text = stage + QStringLiteral("  ") + text;
  progress_->setValue(int(std::clamp(fraction, 0.0, 1.0) * progress_->maximum()));
  progress_->setFormat(text.isEmpty() ? tr("working…") : text);
  const double elapsed = double(QDateTime::currentMSecsSinceEpoch() - startedMs_) / 1000.0;
  if (fraction > 0.01 && fraction < 1.0)
    eta_->setText(tr("ETA %1").arg(formatSeconds(elapsed * (1.0 - fraction) / fraction)));
  emit busyChanged(true, tr("Quantizing: %1 · %2").arg(progress_->format(), eta_->text()));
}

} // namespace lrq::ui
