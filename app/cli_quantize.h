#pragma once
#include <ostream>

#include "app/cli_support.h"

namespace lrq::cli {

int commandQuantize(const Arguments &args, std::ostream &out, TerminalProgress &progress);
int commandRuns(const Arguments &args, std::ostream &out);
int commandMethods(const Arguments &args, std::ostream &out);

} // namespace lrq::cli
