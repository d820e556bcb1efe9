#include "core/runs/run_record.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <system_error>

#include "core/common/error.h"
#include "core/data/sha256.h"

namespace fs = std::filesystem;

#ifndef LRQ_ENGINE_VERSION
#define LRQ_ENGINE_VERSION "unknown"
#endif

namespace lrq {

const char *runStatusName(RunStatus status) {
  switch (status) {
  case RunStatus::Running:
    return "running";
  case RunStatus::Finished:
    return "finished";
  case RunStatus::Failed:
    return "failed";
  case RunStatus::Cancelled:
    return "cancelled";
  case RunStatus::Interrupted:
    return "interrupted";
  }
  return "unknown";
}

RunStatus parseRunStatus(const std::string &name) {
  for (RunStatus s : {RunStatus::Running, RunStatus::Finished, RunStatus::Failed,
                      RunStatus::Cancelled, RunStatus::Interrupted})
    if (name == runStatusName(s))
      return s;
  throw Error("unknown run status '" + name +
              "' (expected running, finished, failed, cancelled or interrupted)");
}

const char *defaultEngineVersion() {
  return LRQ_ENGINE_VERSION;
}

namespace {

// Size and modification time (nanoseconds since the Unix epoch).
std::pair<long long, long long> statOf(const std::string &path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw FileError(path, "cannot read file status");
  return {static_cast<long long>(st.st_size),
          static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec};
}

} // namespace

ModelIdentity identifyModel(const std::string &path, bool sha256) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec || !fs::exists(status))
    throw FileError(path, "no such file or directory");
  ModelIdentity identity{path, {}};
  if (fs::is_regular_file(status)) {
    if (sha256) {
      identity.digest = "sha256:" + sha256File(path);
    } else {
      const auto [size, mtime] = statOf(path);
      identity.digest = "size=" + std::to_string(size) + ";mtime=" + std::to_string(mtime);
    }
    return identity;
  }
  if (!fs::is_directory(status))
    throw FileError(path, "neither a file nor a directory");
  // A directory (an HF export): digest of every regular file by relative path.
  std::vector<std::string> files;
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
       it.increment(ec))
    if (it->is_regular_file(ec))
      files.push_back(fs::relative(it->path(), path).generic_string());
  if (ec)
    throw FileError(path, "cannot list directory: " + ec.message());
  std::sort(files.begin(), files.end());
  Sha256 listing;
  for (const std::string &rel : files) {
    const std::string full = (fs::path(path) / rel).string();
    std::string entry = rel + '\0';
    if (sha256) {
      entry += sha256File(full);
    } else {
      const auto [size, mtime] = statOf(full);
      entry += std::to_string(size) + '\0' + std::to_string(mtime);
    }
    entry += '\n';
    listing.update(entry.data(), entry.size());
  }
  identity.digest = std::string(sha256 ? "sha256-dir:" : "stat-dir:") + listing.hexDigest();
  return identity;
}

const ComparisonRow *RunComparison::find(const std::string &group, const std::string &name) const {
  for (const ComparisonRow &row : rows)
    if (row.group == group && row.name == name)
      return &row;
  return nullptr;
}

std::string formatComparison(const RunComparison &comparison, bool onlyDifferences) {
  auto oneLine = [](std::string s) {
    std::replace(s.begin(), s.end(), '\n', ' ');
    std::replace(s.begin(), s.end(), '\t', ' ');
    return s;
  };
  std::vector<const ComparisonRow *> rows;
  for (const ComparisonRow &row : comparison.rows)
    if (!onlyDifferences || row.differs || row.group == "run" || row.group == "metric")
      rows.push_back(&row);

  const size_t columns = comparison.runIds.size();
  size_t labelWidth = 0;
  for (const ComparisonRow *row : rows)
    labelWidth = std::max(labelWidth, row->name.size() + 2);
  for (const ComparisonRow *row : rows)
    labelWidth = std::max(labelWidth, row->group.size());
  std::vector<size_t> widths(columns);
  for (size_t c = 0; c < columns; ++c) {
    widths[c] = comparison.runIds[c].size();
    for (const ComparisonRow *row : rows)
      if (c < row->cells.size())
        widths[c] = std::max(widths[c], oneLine(row->cells[c]).size());
  }
  auto pad = [](const std::string &s, size_t width) {
    return s.size() >= width ? s : s + std::string(width - s.size(), ' ');
  };
  auto trimRight = [](std::string s) {
    while (!s.empty() && s.back() == ' ')
      s.pop_back();
    return s;
  };

  std::ostringstream out;
  std::string header = pad("", labelWidth);
  for (size_t c = 0; c < columns; ++c)
    header += "  " + pad(comparison.runIds[c], widths[c]);
  out << trimRight(header) << '\n';
  std::string group;
  for (const ComparisonRow *row : rows) {
    if (row->group != group) {
      group = row->group;
      out << group << '\n';
    }
    std::string line = pad("  " + row->name, labelWidth);
    for (size_t c = 0; c < columns; ++c)
      line += "  " + pad(c < row->cells.size() ? oneLine(row->cells[c]) : "", widths[c]);
    out << trimRight(line) << '\n';
  }
  return out.str();
}

} // namespace lrq
