#include "core/runs/sqlite_db.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "core/common/error.h"

namespace lrq::runs_detail {

namespace {

// "file:" URI of a path, for the immutable read-only fallback.
std::string fileUri(const std::string &path, const char *query) {
  std::string uri = "file:";
  for (char ch : path) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '%' || c == '?' || c == '#' || c < 0x20 || c >= 0x7F) {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      uri += hex;
    } else {
      uri.push_back(ch);
    }
  }
  return uri + "?" + query;
}

} // namespace

Database::Database(const std::string &path, int busyTimeoutMs, bool readOnly) : path_(path) {
  const int flags = readOnly ? SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX
                             : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX;
  auto openWith = [&](const std::string &name, int openFlags) {
    int rc = sqlite3_open_v2(name.c_str(), &db_, openFlags, nullptr);
    if (rc != SQLITE_OK) {
      std::string message = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
      sqlite3_close(db_);
      db_ = nullptr;
      throw FileError(path, "cannot open run store: " + message);
    }
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, busyTimeoutMs);
  };
  openWith(path, flags);
  if (!readOnly)
    return;
  // A WAL store needs its -shm index; where it is missing and cannot be made
  // (a read-only directory), no writer can be at work either: read the file as
  // immutable.
  // (Not when the store is busy or damaged: those are reported as they are.)
  const char *probe = "SELECT count(*) FROM sqlite_master";
  const int rc = sqlite3_exec(db_, probe, nullptr, nullptr, nullptr);
  const int primary = rc & 0xff;
  if (rc == SQLITE_OK || primary == SQLITE_BUSY || primary == SQLITE_LOCKED ||
      primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT)
    return; // the first real query reports those
  const std::string message = sqlite3_errmsg(db_);
  sqlite3_close_v2(db_);
  db_ = nullptr;
  openWith(fileUri(path, "immutable=1"), flags | SQLITE_OPEN_URI);
  if (sqlite3_exec(db_, probe, nullptr, nullptr, nullptr) != SQLITE_OK) {
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw FileError(path, "cannot read run store: " + message);
  }
}

Database::~Database() {
  sqlite3_close_v2(db_);
}

void Database::fail(int rc, const std::string &what) const {
  const std::string detail = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
  // SQLite reports a write that fails with EFBIG or EDQUOT (and a failing one
  // after a short write) as a generic I/O error: the system's reason tells.
  const int systemErr = db_ ? sqlite3_system_errno(db_) : 0;
  if ((rc & 0xff) == SQLITE_IOERR &&
      (systemErr == ENOSPC || systemErr == EFBIG || systemErr == EDQUOT))
    throw FileError(path_, "disk full while " + what + " (" + std::strerror(systemErr) + ")");
  switch (rc & 0xff) {
  case SQLITE_NOTADB:
  case SQLITE_CORRUPT:
    throw FileError(path_, "damaged or not a run store (" + detail + ") while " + what);
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    throw FileError(path_, "run store is locked by another program (" + detail + ") while " + what +
                               "; try again when it has finished");
  case SQLITE_FULL:
    throw FileError(path_, "disk full while " + what);
  case SQLITE_READONLY:
  case SQLITE_PERM:
    throw FileError(path_, "run store is not writable (" + detail + ") while " + what);
  default:
    throw FileError(path_, what + " failed: " + detail);
  }
}

void Database::exec(const std::string &sql, const std::string &what) {
  int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK)
    fail(rc, what);
}

Statement::Statement(Database &db, const char *sql) : db_(db), sql_(sql) {
  int rc = sqlite3_prepare_v2(db.handle(), sql, -1, &stmt_, nullptr);
  if (rc != SQLITE_OK)
    db.fail(rc, "preparing a query");
}

Statement::~Statement() {
  sqlite3_finalize(stmt_);
}

Statement &Statement::bind(int index, const std::string &text) {
  int rc =
      sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
  if (rc != SQLITE_OK)
    db_.fail(rc, "binding a value");
  return *this;
}

Statement &Statement::bind(int index, double value) {
  int rc = std::isnan(value) ? sqlite3_bind_null(stmt_, index)
                             : sqlite3_bind_double(stmt_, index, value);
  if (rc != SQLITE_OK)
    db_.fail(rc, "binding a value");
  return *this;
}

Statement &Statement::bind(int index, int64_t value) {
  int rc = sqlite3_bind_int64(stmt_, index, static_cast<sqlite3_int64>(value));
  if (rc != SQLITE_OK)
    db_.fail(rc, "binding a value");
  return *this;
}

Statement &Statement::bindBlob(int index, const std::vector<unsigned char> &bytes) {
  // A zero-length BLOB (not NULL) for an empty vector.
  int rc = sqlite3_bind_zeroblob(stmt_, index, 0);
  if (!bytes.empty())
    rc = sqlite3_bind_blob(stmt_, index, bytes.data(), static_cast<int>(bytes.size()),
                           SQLITE_TRANSIENT);
  if (rc != SQLITE_OK)
    db_.fail(rc, "binding a value");
  return *this;
}

Statement &Statement::bindNull(int index) {
  int rc = sqlite3_bind_null(stmt_, index);
  if (rc != SQLITE_OK)
    db_.fail(rc, "binding a value");
  return *this;
}

bool Statement::step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW)
    return true;
  if (rc == SQLITE_DONE)
    return false;
  sqlite3_reset(stmt_);
  db_.fail(rc, "running a query");
}

void Statement::run() {
  while (step()) {
  }
  reset();
}

void Statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

bool Statement::isNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

std::string Statement::text(int column) const {
  const auto *data = reinterpret_cast<const char *>(sqlite3_column_text(stmt_, column));
  const int size = sqlite3_column_bytes(stmt_, column);
  return data ? std::string(data, static_cast<size_t>(size)) : std::string();
}

double Statement::real(int column) const {
  if (isNull(column))
    return std::numeric_limits<double>::quiet_NaN();
  return sqlite3_column_double(stmt_, column);
}

int64_t Statement::integer(int column) const {
  return static_cast<int64_t>(sqlite3_column_int64(stmt_, column));
}

std::vector<unsigned char> Statement::blob(int column) const {
  const auto *data = static_cast<const unsigned char *>(sqlite3_column_blob(stmt_, column));
  const int size = sqlite3_column_bytes(stmt_, column);
  if (!data || size <= 0)
    return {};
  return std::vector<unsigned char>(data, data + size);
}

Transaction::Transaction(Database &db, bool write) : db_(db) {
  db_.exec(write ? "BEGIN IMMEDIATE" : "BEGIN DEFERRED",
           write ? "starting a write transaction" : "starting a read transaction");
}

Transaction::~Transaction() {
  if (open_)
    sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
  db_.exec("COMMIT", "committing");
  open_ = false;
}

} // namespace lrq::runs_detail
