#pragma once
// Errors the engine reports to users. Every message names the file (or the
// thing) and the problem on one line, so the CLI can print it as is.
#include <stdexcept>
#include <string>

namespace lrq {

class Error : public std::runtime_error {
public:
  explicit Error(const std::string &message) : std::runtime_error(message) {}
};

// An error about a file: message is "<path>: <problem>".
class FileError : public Error {
public:
  FileError(const std::string &path, const std::string &problem)
      : Error(path + ": " + problem), path_(path), problem_(problem) {}
  const std::string &path() const { return path_; }
  const std::string &problem() const { return problem_; }

private:
  std::string path_;
  std::string problem_;
};

// Thrown when a CancelToken was triggered; not a failure.
class Cancelled : public Error {
public:
  Cancelled() : Error("cancelled") {}
};

} // namespace lrq
