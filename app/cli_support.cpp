#include "app/cli_support.h"

#include "core/session/quantize_request.h"

#include <cmath>
#include <csignal>
#include <iomanip>
#include <sstream>

namespace lrq::cli {

namespace {

// name -> takes a value. The quantization request's options come from its
// table (core/session/quantize_request.h); the rest belong to other commands.
const std::map<std::string, bool> &knownOptions() {
  static const std::map<std::string, bool> options = [] {
    std::map<std::string, bool> o = {
        {"threads", true},      {"device", true},         {"json", false},
        {"quiet", false},       {"help", false},          {"version", false},
        {"text", true},         {"seq-len", true},        {"max-windows", true},
        {"prompt", true},       {"max-new-tokens", true}, {"temperature", true},
        {"top-k", true},        {"top-p", true},          {"seed", true},
        {"tensor", true},       {"part", true},           {"spectra", false},
        {"reference", true},    {"model", true},          {"limit", true},
        {"differences", false}, {"store", true},          {"dry-run", false},
        {"status", true},       {"ids", false},           {"score", true},
        {"in-memory", false}};
    for (const RequestOption &r : quantizeRequestOptions())
      if (!r.flag.empty())
        o[r.flag] = r.type != ValueType::Flag;
    return o;
  }();
  return options;
}

} // namespace

Arguments parseArguments(int argc, char **argv) {
  Arguments args;
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    if (word.rfind("--", 0) == 0 && word.size() > 2) {
      std::string name = word.substr(2), value;
      size_t eq = name.find('=');
      bool inlineValue = eq != std::string::npos;
      if (inlineValue) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      auto known = knownOptions().find(name);
      if (known == knownOptions().end())
        throw UsageError("unknown option --" + name);
      if (known->second && !inlineValue) {
        if (i + 1 >= argc)
          throw UsageError("option --" + name + " needs a value");
        value = argv[++i];
      } else if (!known->second && inlineValue) {
        throw UsageError("option --" + name + " takes no value");
      }
      args.options[name] = value;
    } else if (args.command.empty()) {
      args.command = word;
    } else {
      args.positional.push_back(word);
    }
  }
  return args;
}

bool has(const Arguments &args, const std::string &name) {
  return args.options.count(name) > 0;
}

std::string stringOption(const Arguments &args, const std::string &name,
                         const std::string &fallback) {
  auto it = args.options.find(name);
  return it == args.options.end() ? fallback : it->second;
}

long long intOption(const Arguments &args, const std::string &name, long long fallback,
                    long long minimum, long long maximum) {
  auto it = args.options.find(name);
  if (it == args.options.end())
    return fallback;
  try {
    size_t used = 0;
    long long value = std::stoll(it->second, &used);
    if (used != it->second.size())
      throw std::invalid_argument("trailing characters");
    if (value < minimum || value > maximum)
      throw UsageError("--" + name + " must be between " + std::to_string(minimum) + " and " +
                       std::to_string(maximum) + ", got " + it->second);
    return value;
  } catch (const std::invalid_argument &) {
    throw UsageError("--" + name + " expects an integer, got '" + it->second + "'");
  } catch (const std::out_of_range &) {
    throw UsageError("--" + name + " is out of range: " + it->second);
  }
}

double doubleOption(const Arguments &args, const std::string &name, double fallback, double minimum,
                    double maximum) {
  auto it = args.options.find(name);
  if (it == args.options.end())
    return fallback;
  try {
    size_t used = 0;
    double value = std::stod(it->second, &used);
    if (used != it->second.size() || !std::isfinite(value))
      throw std::invalid_argument("bad number");
    if (value < minimum || value > maximum)
      throw UsageError("--" + name + " must be between " + std::to_string(minimum) + " and " +
                       std::to_string(maximum) + ", got " + it->second);
    return value;
  } catch (const std::invalid_argument &) {
    throw UsageError("--" + name + " expects a number, got '" + it->second + "'");
  } catch (const std::out_of_range &) {
    throw UsageError("--" + name + " is out of range: " + it->second);
  }
}

std::string requireModel(const Arguments &args) {
  if (args.positional.empty())
    throw UsageError("'" + args.command +
                     "' needs a MODEL argument (a file, a directory or 'default')");
  if (args.positional.size() > 1)
    throw UsageError("unexpected argument '" + args.positional[1] + "'");
  return args.positional[0];
}

std::string formatSeconds(double seconds) {
  std::ostringstream s;
  if (seconds < 60)
    s << std::fixed << std::setprecision(seconds < 10 ? 1 : 0) << seconds << "s";
  else
    s << int(seconds) / 60 << "m" << std::setw(2) << std::setfill('0') << int(seconds) % 60 << "s";
  return s.str();
}

CancelToken &interruptToken() {
  static CancelToken token;
  return token;
}

namespace {
extern "C" void onInterrupt(int) {
  // A second Ctrl-C ends the process at once.
  std::signal(SIGINT, SIG_DFL);
  interruptToken().cancel(); // a lock-free atomic store: safe in a signal handler
}
} // namespace

void installInterruptHandler() {
  interruptToken();
  std::signal(SIGINT, onInterrupt);
}

} // namespace lrq::cli
