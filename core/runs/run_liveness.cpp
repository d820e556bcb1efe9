#include "core/runs/run_liveness.h"

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/common/c_number.h"

namespace lrq {
namespace {

std::string readFirstLine(const std::string &path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ' || line.back() == '\r'))
    line.pop_back();
  return line;
}

// Fields after the command name of /proc/<pid>/stat: [0] is field 3 (state),
// [19] is field 22 (start time in clock ticks after boot). The command name may
// hold spaces and parentheses, so the fields start after the last ')'.
bool readProcStat(int64_t pid, std::vector<std::string> *fields) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  if (!in)
    return false;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = text.rfind(')');
  if (close == std::string::npos)
    return false;
  std::istringstream rest(text.substr(close + 1));
  fields->clear();
  for (std::string f; rest >> f;)
    fields->push_back(f);
  return fields->size() > 19;
}

std::string pidNamespace() {
  char buf[128];
  const ssize_t n = ::readlink("/proc/self/ns/pid", buf, sizeof buf - 1);
  if (n <= 0)
    return {};
  buf[n] = '\0';
  std::string s(buf); // "pid:[4026531836]"
  const size_t open = s.find('['), close = s.find(']');
  return open != std::string::npos && close != std::string::npos && close > open
             ? s.substr(open + 1, close - open - 1)
             : s;
}

struct OwnerToken {
  std::string boot, pidns, start;
};

OwnerToken parseToken(const std::string &token) {
  OwnerToken t;
  std::istringstream in(token);
  for (std::string part; std::getline(in, part, ';');) {
    const size_t eq = part.find('=');
    if (eq == std::string::npos)
      continue;
    const std::string key = part.substr(0, eq), value = part.substr(eq + 1);
    if (key == "boot")
      t.boot = value;
    else if (key == "pidns")
      t.pidns = value;
    else if (key == "start")
      t.start = value;
  }
  return t;
}

RunOwner makeCurrentOwner() {
  RunOwner o;
  o.pid = int64_t(::getpid());
  char host[HOST_NAME_MAX + 1] = {};
  if (::gethostname(host, sizeof host - 1) == 0)
    o.host = host;
  const std::string boot = readFirstLine("/proc/sys/kernel/random/boot_id");
  std::vector<std::string> fields;
  const std::string start = readProcStat(o.pid, &fields) ? fields[19] : std::string();
  if (!boot.empty() && !start.empty())
    o.start = "boot=" + boot + ";pidns=" + pidNamespace() + ";start=" + start;
  return o;
}

// Whether the owner's pid is its process, alive (a zombie is not).
bool localProcessAlive(const RunOwner &owner) {
  std::vector<std::string> fields;
  if (readProcStat(owner.pid, &fields)) {
    const std::string &state = fields[0];
    if (state == "Z" || state == "X" || state == "x")
      return false;
    const OwnerToken t = parseToken(owner.start);
    return t.start.empty() || t.start == fields[19];
  }
  std::vector<std::string> self;
  if (readProcStat(int64_t(::getpid()), &self))
    return false; // /proc works and the pid is not in it
  // No /proc: ask the kernel whether the pid exists at all.
  return ::kill(pid_t(owner.pid), 0) == 0 || errno == EPERM;
}

} // namespace

const RunOwner &currentRunOwner() {
  static const RunOwner owner = makeCurrentOwner();
  return owner;
}

bool ownerIsLocal(const RunOwner &owner) {
  const RunOwner &me = currentRunOwner();
  if (!owner.known() || owner.host != me.host)
    return false;
  const OwnerToken mine = parseToken(me.start), theirs = parseToken(owner.start);
  if (mine.boot.empty()) // no /proc here: the host name is all there is
    return theirs.boot.empty();
  return theirs.boot == mine.boot && theirs.pidns == mine.pidns;
}

OwnerState runOwnerState(const RunOwner &owner, double heartbeat, double created, double now,
                         const LivenessOptions &options) {
  const double last = heartbeat > 0 ? heartbeat : created;
  if (!owner.known())
    return last > 0 && now - last > options.unknownOwnerAfterSeconds ? OwnerState::Gone
                                                                     : OwnerState::Alive;
  if (ownerIsLocal(owner))
    return localProcessAlive(owner) ? OwnerState::Alive : OwnerState::Gone;
  return last > 0 && now - last > options.staleAfterSeconds ? OwnerState::Gone : OwnerState::Alive;
}

double unixNow() {
  using namespace std::chrono;
  return double(duration_cast<microseconds>(system_clock::now().time_since_epoch()).count()) / 1e6;
}

double parseIsoUtc(const std::string &iso) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, at = 0;
  if (std::sscanf(iso.c_str(), "%d-%d-%dT%d:%d:%n", &y, &mo, &d, &h, &mi, &at) != 5 || at == 0)
    return 0;
  size_t used = 0; // the seconds in C notation, whatever the locale (%lf is not)
  const double s = parseNumberC(iso.substr(size_t(at)), &used);
  if (used == 0)
    return 0;
  std::tm t{};
  t.tm_year = y - 1900;
  t.tm_mon = mo - 1;
  t.tm_mday = d;
  t.tm_hour = h;
  t.tm_min = mi;
  t.tm_sec = 0;
  const std::time_t secs = ::timegm(&t);
  return secs < 0 ? 0 : double(secs) + s;
}

std::string formatIsoUtc(double seconds) {
  const int64_t ms = int64_t(std::llround(seconds * 1000.0));
  const std::time_t secs = std::time_t(ms / 1000);
  std::tm t{};
  gmtime_r(&secs, &t);
  char iso[96];
  std::snprintf(iso, sizeof iso, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900,
                t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, int(ms % 1000));
  return iso;
}

std::string stillRunningMessage(const std::string &runId, const RunOwner &owner, double heartbeat) {
  std::string text = "run " + runId + " is still running";
  if (owner.known()) {
    text += " in process " + std::to_string(owner.pid);
    if (!ownerIsLocal(owner)) {
      text += " on host " + (owner.host.empty() ? std::string("(unknown)") : owner.host);
      if (heartbeat > 0)
        text += " (last heartbeat " + std::to_string(int64_t(unixNow() - heartbeat)) + " s ago)";
    }
  }
  return text;
}

} // namespace lrq
