// What front ends know of the methods and schemes, read from the registry.
#include <filesystem>

#include "core/common/error.h"
#include "core/data/default_assets.h"
#include "core/quant/method.h"
#include "core/quant/scheme.h"
#include "core/session/quantize_request.h"

namespace fs = std::filesystem;

namespace lrq {
namespace {

MethodInfo describe(const quant::QuantMethod &m) {
  MethodInfo info;
  info.name = m.name();
  info.title = m.title();
  info.summary = m.help();
  info.hyperparameters = m.hyperparameters();
  info.presets = m.presets();
  info.canResume = m.canResume();
  info.trainsBlocks = m.trainsBlocks();
  info.needsCalibration = m.needsCalibration();
  return info;
}

} // namespace

const std::vector<MethodInfo> &methodCatalog() {
  static const std::vector<MethodInfo> catalog = [] {
    std::vector<MethodInfo> out;
    for (const std::string &name : quant::methodNames())
      out.push_back(describe(*quant::createMethod(name)));
    return out;
  }();
  return catalog;
}

const MethodInfo &methodInfo(const std::string &name) {
  const std::string canonical = quant::createMethod(name)->name(); // throws for unknown names
  for (const MethodInfo &m : methodCatalog())
    if (m.name == canonical)
      return m;
  throw Error("unknown method '" + name + "'");
}

void MethodInfo::checkScheme(const std::string &schemeJson) const {
  quant::createMethod(name)->checkScheme(quant::QuantScheme::fromJson(schemeJson));
}

void MethodInfo::checkHyperparameters(const Hyperparameters &hyper) const {
  std::unique_ptr<quant::QuantMethod> method = quant::createMethod(name);
  nlohmann::json merged = method->defaults();
  for (const auto &[key, value] : hyper)
    if (merged.contains(key))
      merged[key] = quant::toJson(value);
  method->checkHyperparameters(merged);
}

int64_t MethodInfo::learnableParameters(int64_t outFeatures, int64_t inFeatures,
                                        const Hyperparameters &hyper) const {
  std::unique_ptr<quant::QuantMethod> method = quant::createMethod(name);
  nlohmann::json merged = method->defaults();
  for (const auto &[key, value] : hyper)
    if (merged.contains(key))
      merged[key] = quant::toJson(value);
  return method->learnableParameters(outFeatures, inFeatures, merged);
}

std::vector<std::string> schemePresets() {
  return quant::presetNames();
}

std::string resolveSchemeJson(const std::string &presetOrPath) {
  quant::QuantScheme scheme;
  std::error_code ec;
  if (fs::is_regular_file(presetOrPath, ec)) {
    try {
      scheme = quant::QuantScheme::fromJson(readTextFile(presetOrPath));
    } catch (const FileError &) {
      throw;
    } catch (const Error &e) {
      throw FileError(presetOrPath, e.what());
    }
  } else {
    scheme = quant::presetScheme(presetOrPath);
  }
  scheme.validate();
  return scheme.toJson();
}

} // namespace lrq
