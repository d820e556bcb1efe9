#pragma once
// Internal to lrq_runs: a thin RAII layer over the SQLite C API. Every failure
// becomes an lrq::FileError naming the database file.
#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lrq::runs_detail {

class Database {
public:
  // readOnly: the file must exist; nothing is created or written, and a store in
  // a directory this process cannot write (where SQLite cannot make its WAL
  // index) is read as an immutable file.
  Database(const std::string &path, int busyTimeoutMs, bool readOnly = false);
  ~Database();
  Database(const Database &) = delete;
  Database &operator=(const Database &) = delete;

  sqlite3 *handle() const { return db_; }
  const std::string &path() const { return path_; }

  // Throws the FileError matching an SQLite result code; `what` says what we
  // were doing ("reading run", "creating schema").
  [[noreturn]] void fail(int rc, const std::string &what) const;
  void exec(const std::string &sql, const std::string &what);

private:
  std::string path_;
  sqlite3 *db_ = nullptr;
};

class Statement {
public:
  Statement(Database &db, const char *sql);
  ~Statement();
  Statement(const Statement &) = delete;
  Statement &operator=(const Statement &) = delete;

  // Parameters are 1-based, as in SQLite.
  Statement &bind(int index, const std::string &text);
  Statement &bind(int index, double value); // NaN is bound as NULL (SQLite has no NaN)
  Statement &bind(int index, int64_t value);
  Statement &bind(int index, int value) { return bind(index, static_cast<int64_t>(value)); }
  Statement &bindBlob(int index, const std::vector<unsigned char> &bytes);
  Statement &bindNull(int index);

  // Advances; true while a row is available. Throws on errors.
  bool step();
  // Runs a statement that returns no rows, then resets it for reuse.
  void run();
  void reset(); // also clears bindings

  bool isNull(int column) const;
  std::string text(int column) const; // NULL -> ""
  double real(int column) const;      // NULL -> NaN
  int64_t integer(int column) const;
  std::vector<unsigned char> blob(int column) const;

private:
  Database &db_;
  sqlite3_stmt *stmt_ = nullptr;
  std::string sql_;
};

// BEGIN IMMEDIATE for writes (so a writer waits for the lock up front instead
// of failing on upgrade), BEGIN DEFERRED for a consistent read snapshot.
// Rolls back unless committed.
class Transaction {
public:
  Transaction(Database &db, bool write);
  ~Transaction();
  Transaction(const Transaction &) = delete;
  Transaction &operator=(const Transaction &) = delete;
  void commit();

private:
  Database &db_;
  bool open_ = true;
};

} // namespace lrq::runs_detail
