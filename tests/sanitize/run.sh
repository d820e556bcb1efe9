#!/usr/bin/env bash
# Builds test executables with a sanitizer into a build dir of their own and
# runs them with CTest (issue 10). Only the named tests' targets are built.
#
# Usage: tests/sanitize/run.sh MODE [TEST...]
#   MODE thread:  ThreadSanitizer, into build-tsan/. Without TESTS: the tests
#                 that run threads (the run store, the session controller and
#                 background jobs, the progress relay, the lesson's std::async).
#   MODE address: AddressSanitizer + UndefinedBehaviorSanitizer, into
#                 build-asan/. Without TESTS: the whole suite.
# Environment: LRQ_SANITIZE_BUILD_DIR (the build dir), LRQ_SANITIZE_JOBS
# (parallel compile jobs, default nproc), LRQ_PYTHON (the reference venv),
# LRQ_SANITIZE_EACH=1 (build and run one test at a time, results as they come).
# Exits non-zero when a build fails, a test fails or a sanitizer reports.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODE="${1:?usage: tests/sanitize/run.sh thread|address [TEST...]}"
shift

# The tests that exercise threads: the run store's threaded readers and
# writers and its two-process stress test, the tokenizer shared by threads,
# the lesson's std::async, and the desktop's controllers (SessionController's
# stats and SVD pools, BackgroundJob, ProgressRelay, the Learn view's
# QtConcurrent jobs) on the real engine.
THREAD_TESTS=(test_run_store_stress test_runs test_tokenizer test_lesson test_widgets
  test_quantize_view test_learn_view)

case "$MODE" in
thread)
  BUILD_DIR="${LRQ_SANITIZE_BUILD_DIR:-$ROOT/build-tsan}"
  TESTS=("${@:-${THREAD_TESTS[@]}}")
  ;;
address)
  BUILD_DIR="${LRQ_SANITIZE_BUILD_DIR:-$ROOT/build-asan}"
  TESTS=("$@")
  ;;
*)
  echo "sanitize: MODE must be thread or address, not '$MODE'" >&2
  exit 2
  ;;
esac

CACHE_DIR="${LRQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lrq-workbench}"
export LRQ_PYTHON="${LRQ_PYTHON:-$CACHE_DIR/venv/bin/python}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"

echo "== configuring $BUILD_DIR (LRQ_SANITIZE=$MODE)"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
cmake -S "$ROOT" -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLRQ_SANITIZE="$MODE" -DLRQ_BUILD_BENCH=OFF -DLRQ_PYTHON="$LRQ_PYTHON" >/dev/null

if [ "$MODE" = thread ]; then
  # history_size: enough memory access history to show both stacks of a race.
  # A report makes the test exit 66, so CTest fails it.
  export TSAN_OPTIONS="suppressions=$ROOT/tests/sanitize/tsan.supp:history_size=4:second_deadlock_stack=1:exitcode=66:die_after_fork=0${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
  # LibTorch's intra-op pool is OpenMP (libgomp), whose barriers ThreadSanitizer
  # cannot see in an uninstrumented library: every parallel_for would be a false
  # report. One intra-op thread keeps the project's own threads under test.
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
  # Leak checking is left out: LibTorch and Qt keep process-lifetime
  # allocations that are not the project's to free.
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:strict_string_checks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
fi

regex=""
if [ "${#TESTS[@]}" -gt 0 ]; then
  regex="^($(
    IFS='|'
    echo "${TESTS[*]}"
  ))\$"
fi
jobs="${LRQ_SANITIZE_JOBS:-$(nproc)}"
if [ "${LRQ_SANITIZE_EACH:-0}" = 1 ]; then
  # One test at a time: build its target, run it, go on, so that results come
  # while the (long) build goes on. test_fuzz has its own sanitized build.
  if [ "${#TESTS[@]}" -eq 0 ]; then
    mapfile -t TESTS < <(cd "$BUILD_DIR" && ctest -N | awk '/Test +#/ {print $3}' | grep -vx test_fuzz)
  fi
  echo "== building the command-line tools the tests run"
  cmake --build "$BUILD_DIR" -j "$jobs" --target lrq lrq-engine
  failed=()
  for t in "${TESTS[@]}"; do
    echo "== $t"
    if ! cmake --build "$BUILD_DIR" -j "$jobs" --target "$t"; then
      failed+=("$t (build)")
      continue
    fi
    (cd "$BUILD_DIR" && QT_QPA_PLATFORM=offscreen ctest --output-on-failure -R "^$t\$") ||
      failed+=("$t")
  done
  if [ "${#failed[@]}" -gt 0 ]; then
    echo "sanitize: failed: ${failed[*]}" >&2
    exit 1
  fi
  echo "== all ${#TESTS[@]} tests passed under $MODE sanitizer"
  exit 0
fi

# Without TESTS (address mode) everything is built and every test runs.
targets=()
[ "${#TESTS[@]}" -gt 0 ] && targets=(--target "${TESTS[@]}")
echo "== building ${TESTS[*]:-everything}"
cmake --build "$BUILD_DIR" -j "$jobs" "${targets[@]}"

echo "== running ${TESTS[*]:-every test} under $MODE sanitizer"
cd "$BUILD_DIR"
ctest_args=(--output-on-failure)
[ -n "$regex" ] && ctest_args+=(-R "$regex")
# test_fuzz has its own sanitized build; it is not run again here.
ctest_args+=(-E '^test_fuzz$')
QT_QPA_PLATFORM=offscreen ctest "${ctest_args[@]}"
