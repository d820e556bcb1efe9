#pragma once
#include <iosfwd>

namespace lrq::cli {

// The whole `lrq` command line; returns the process exit code (0 ok,
// 1 runtime error, 2 usage error). Progress and errors go to err.
int run(int argc, char **argv, std::ostream &out, std::ostream &err);

} // namespace lrq::cli
