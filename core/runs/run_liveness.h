#pragma once
// Whether the process that owns a "running" run is still alive. A run records
// its owner (pid, host name, and a token naming that very process: boot id,
// pid namespace and start time) and a heartbeat. Reading the store, a run
// stored as running whose owner is gone shows as interrupted:
//  - the owner is visible here (same host name, boot and pid namespace): its
//    pid is not alive, is a zombie, or belongs to a process started at another
//    time (the pid was reused);
//  - otherwise (another machine, container or boot): its heartbeat is older
//    than LivenessOptions::staleAfterSeconds;
//  - a run recorded before owners were (no owner, no heartbeat): its creation
//    time is older than LivenessOptions::unknownOwnerAfterSeconds.
// "interrupted" is never written to the store: it is what a reader concludes.
#include <cstdint>
#include <string>

namespace lrq {

struct RunOwner {
  int64_t pid = 0;   // 0 = not recorded
  std::string host;  // host name
  std::string start; // "boot=<boot id>;pidns=<pid namespace>;start=<clock ticks after boot>"
  bool known() const { return pid > 0; }
};

struct LivenessOptions {
  // Owners this process cannot see: a heartbeat older than this means gone.
  double staleAfterSeconds = 600;
  // Runs without an owner (older builds): created longer ago than this.
  double unknownOwnerAfterSeconds = 86400;
};

enum class OwnerState { Alive, Gone };

// This process as a run owner (computed once).
const RunOwner &currentRunOwner();

// Whether the owner of a run is alive. heartbeat and created are seconds since
// the Unix epoch (0 = not recorded), now as well.
OwnerState runOwnerState(const RunOwner &owner, double heartbeat, double created, double now,
                         const LivenessOptions &options = {});

// True when the owner's process table is this process's (same host name, boot
// and pid namespace), so its pid can be checked directly.
bool ownerIsLocal(const RunOwner &owner);

// Seconds since the Unix epoch, now.
double unixNow();
// "2026-11-23T10:15:02.123Z" -> seconds since the Unix epoch; 0 when unreadable.
double parseIsoUtc(const std::string &iso);
// Seconds since the Unix epoch -> "2026-11-23T10:15:02.123Z".
std::string formatIsoUtc(double seconds);

// "run X is still running in process N" (" on host H" when the owner is
// elsewhere; " (last heartbeat S s ago)" when only the heartbeat tells).
std::string stillRunningMessage(const std::string &runId, const RunOwner &owner, double heartbeat);

} // namespace lrq
