#include "core/runs/run_comparison.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "core/common/c_number.h"
#include "core/common/error.h"
#include "core/common/json_limits.h"

namespace lrq::runs_detail {

namespace {

using Json = nlohmann::json;

struct Cell {
  std::string text;
  std::optional<double> value;
};

std::string formatNumber(double v) {
  if (std::isnan(v))
    return "nan";
  if (std::isinf(v))
    return v > 0 ? "inf" : "-inf";
  return formatNumberC(v == std::floor(v) && std::fabs(v) < 1e15 ? "%.0f" : "%.6g", v);
}

Cell numberCell(double v) {
  return {formatNumber(v), v};
}

// Leaves of a JSON document as "a.b.c" -> cell; arrays stay whole (compact JSON).
void flatten(const Json &node, const std::string &prefix, std::map<std::string, Cell> &out) {
  if (node.is_object() && !node.empty()) {
    for (auto it = node.begin(); it != node.end(); ++it)
      flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
    return;
  }
  const std::string key = prefix.empty() ? "(value)" : prefix;
  if (node.is_string())
    out[key] = {node.get<std::string>(), std::nullopt};
  else if (node.is_number())
    out[key] = {node.dump(), node.get<double>()};
  else if (node.is_boolean())
    out[key] = {node.dump(), node.get<bool>() ? 1.0 : 0.0};
  else
    out[key] = {node.dump(), std::nullopt};
}

// what: "hyperparameters of run <id>", for the error on JSON too deep to walk.
std::map<std::string, Cell> flattenText(const std::string &text, const std::string &what) {
  std::map<std::string, Cell> out;
  // flatten() and dump() recurse: a store holding deeply nested JSON is refused.
  if (scanJsonText(text).depth > defaultJsonLimits().maxDepth)
    throw Error(what + ": JSON nests arrays/objects deeper than " +
                std::to_string(defaultJsonLimits().maxDepth) + " levels");
  Json doc = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    out["(unparsed)"] = {text, std::nullopt};
    return out;
  }
  if (!(doc.is_object() && doc.empty()))
    flatten(doc, "", out);
  return out;
}

class TableBuilder {
public:
  explicit TableBuilder(RunComparison &table) : table_(table) {}

  void add(const std::string &group, const std::string &name, std::vector<Cell> cells) {
    ComparisonRow row;
    row.group = group;
    row.name = name;
    for (Cell &c : cells) {
      row.cells.push_back(std::move(c.text));
      row.values.push_back(c.value);
    }
    for (const std::string &cell : row.cells)
      if (cell != row.cells.front())
        row.differs = true;
    table_.rows.push_back(std::move(row));
  }

  // Rows from per-run maps: every key any run has, sorted; blank where absent.
  void addKeyed(const std::string &group, const std::vector<std::map<std::string, Cell>> &maps) {
    std::set<std::string> keys;
    for (const auto &m : maps)
      for (const auto &kv : m)
        keys.insert(kv.first);
    for (const std::string &key : keys) {
      std::vector<Cell> cells;
      for (const auto &m : maps) {
        auto it = m.find(key);
        cells.push_back(it == m.end() ? Cell{} : it->second);
      }
      add(group, key, std::move(cells));
    }
  }

private:
  RunComparison &table_;
};

} // namespace

RunComparison buildComparison(const std::vector<RunInfo> &runs,
                              const std::vector<RunTotals> &totals) {
  RunComparison table;
  for (const RunInfo &r : runs)
    table.runIds.push_back(r.id);
  TableBuilder b(table);
  auto column = [&](auto &&cellOf) {
    std::vector<Cell> cells;
    for (size_t i = 0; i < runs.size(); ++i)
      cells.push_back(cellOf(runs[i], totals[i]));
    return cells;
  };
  auto text = [](std::string s) { return Cell{std::move(s), std::nullopt}; };

  b.add("run", "method",
        column([&](const RunInfo &r, const RunTotals &) { return text(r.method); }));
  b.add("run", "status",
        column([&](const RunInfo &r, const RunTotals &) { return text(runStatusName(r.status)); }));
  b.add("run", "model",
        column([&](const RunInfo &r, const RunTotals &) { return text(r.model.path); }));
  b.add("run", "model digest",
        column([&](const RunInfo &r, const RunTotals &) { return text(r.model.digest); }));
  b.add("run", "created",
        column([&](const RunInfo &r, const RunTotals &) { return text(r.created); }));
  b.add("run", "engine version",
        column([&](const RunInfo &r, const RunTotals &) { return text(r.engineVersion); }));
  b.add("run", "total seconds",
        column([](const RunInfo &r, const RunTotals &) { return numberCell(r.totalSeconds); }));
  bool anyError = false;
  for (const RunInfo &r : runs)
    anyError = anyError || !r.error.empty();
  if (anyError)
    b.add("run", "error",
          column([&](const RunInfo &r, const RunTotals &) { return text(r.error); }));

  std::vector<std::map<std::string, Cell>> metrics;
  for (const RunInfo &r : runs) {
    std::map<std::string, Cell> m;
    for (const auto &[name, value] : r.metrics)
      m[name] = numberCell(value);
    metrics.push_back(std::move(m));
  }
  b.addKeyed("metric", metrics);

  bool anyBlocks = false, anyLayers = false;
  for (const RunTotals &t : totals) {
    anyBlocks = anyBlocks || t.blocks > 0;
    anyLayers = anyLayers || t.layers > 0;
  }
  if (anyBlocks) {
    b.add("reconstruction", "blocks",
          column([](const RunInfo &, const RunTotals &t) { return numberCell(t.blocks); }));
    b.add("reconstruction", "initial loss (sum)", column([](const RunInfo &, const RunTotals &t) {
            return t.blocks ? numberCell(t.initialLossSum) : Cell{};
          }));
    b.add("reconstruction", "final loss (sum)", column([](const RunInfo &, const RunTotals &t) {
            return t.blocks ? numberCell(t.finalLossSum) : Cell{};
          }));
    bool anyHeldout = false;
    for (const RunTotals &t : totals)
      anyHeldout = anyHeldout || t.heldoutBlocks > 0;
    if (anyHeldout) {
      b.add("reconstruction", "held-out initial loss (sum)",
            column([](const RunInfo &, const RunTotals &t) {
              return t.heldoutBlocks ? numberCell(t.heldoutInitialLossSum) : Cell{};
            }));
      b.add("reconstruction", "held-out final loss (sum)",
            column([](const RunInfo &, const RunTotals &t) {
              return t.heldoutBlocks ? numberCell(t.heldoutFinalLossSum) : Cell{};
            }));
      // Above 1: the blocks fit their training samples better than unseen ones.
      b.add("reconstruction", "held-out / training final loss",
            column([](const RunInfo &, const RunTotals &t) {
              return t.heldoutBlocks && t.heldoutTrainFinalLossSum > 0
                         ? numberCell(t.heldoutFinalLossSum / t.heldoutTrainFinalLossSum)
                         : Cell{};
            }));
    }
    b.add("reconstruction", "block seconds (sum)", column([](const RunInfo &, const RunTotals &t) {
            return t.blocks ? numberCell(t.blockSeconds) : Cell{};
          }));
  }
  if (anyLayers) {
    b.add("layers", "learnable parameters", column([](const RunInfo &, const RunTotals &t) {
            return t.layers ? numberCell(static_cast<double>(t.learnableParams)) : Cell{};
          }));
    b.add("layers", "mean SQNR dB", column([](const RunInfo &, const RunTotals &t) {
            return t.layers ? numberCell(t.meanSqnrDb) : Cell{};
          }));
    b.add("layers", "mean MSE", column([](const RunInfo &, const RunTotals &t) {
            return t.layers ? numberCell(t.meanMse) : Cell{};
          }));
  }

  std::vector<std::map<std::string, Cell>> hyper, scheme;
  for (const RunInfo &r : runs) {
    hyper.push_back(flattenText(r.hyperparametersJson, "hyperparameters of run " + r.id));
    scheme.push_back(flattenText(r.schemeJson, "scheme of run " + r.id));
  }
  b.addKeyed("hyperparameter", hyper);
  b.addKeyed("scheme", scheme);
  return table;
}

} // namespace lrq::runs_detail
