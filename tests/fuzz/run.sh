#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, AddressSanitizer + UBSan) into
# build-fuzz/ and runs each for SECONDS, after replaying every input that once
# crashed (tests/fuzz/regressions/TARGET/). Prints executions, exec/s and
# crashes per target; exits non-zero on any crash, sanitizer report, timeout
# (> 1 s per input, LRQ_FUZZ_TIMEOUT) or memory blow-up (> 2 GB). Crashing
# inputs are saved in tests/fuzz/crashes/TARGET/.
#
# Usage: tests/fuzz/run.sh SECONDS [TARGET...]
# Environment: LRQ_FUZZ_JOBS (targets run at once; default: the number of cores),
# LRQ_FUZZ_RUNS (stop a target after this many executions, or
# after SECONDS, whichever comes first: the 10-million campaign is
# `LRQ_FUZZ_RUNS=10000000 tests/fuzz/run.sh 36000`), LRQ_FUZZ_TIMEOUT
# (seconds of wall time per input, default 1; libFuzzer measures wall time, so
# on a loaded machine a starved process can pass it on a millisecond input),
# LRQ_FUZZ_BUILD_DIR (default build-fuzz), LRQ_FUZZ_CRASH_DIR (default
# tests/fuzz/crashes), LRQ_FUZZ_VOCAB_GGUF (vocabulary for
# fuzz_tokenizer_encode; default: the cached default model).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
FUZZ_DIR="$ROOT/tests/fuzz"
SECONDS_PER_TARGET="${1:?usage: tests/fuzz/run.sh SECONDS [TARGET...]}"
shift
BUILD_DIR="${LRQ_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
CRASH_DIR="${LRQ_FUZZ_CRASH_DIR:-$FUZZ_DIR/crashes}"
ALL_TARGETS=(fuzz_gguf fuzz_gguf_model fuzz_safetensors fuzz_safetensors_index fuzz_hf_config
  fuzz_tokenizer_json fuzz_tokenizer_encode fuzz_scheme fuzz_run_blob fuzz_packed)
TARGETS=("${@:-${ALL_TARGETS[@]}}")

CXX_COMPILER="${LRQ_FUZZ_CXX:-$(command -v clang++ || command -v clang++-14 || true)}"
if [ -z "$CXX_COMPILER" ]; then
  echo "fuzz: clang++ not found (packaging/install-deps.sh installs clang and libclang-rt-dev)" >&2
  exit 1
fi

echo "== building fuzz targets into $BUILD_DIR"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S "$FUZZ_DIR" -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_CXX_COMPILER="$CXX_COMPILER" >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" --target "${TARGETS[@]}" >"$BUILD_DIR/build.log" 2>&1 || {
  tail -40 "$BUILD_DIR/build.log" >&2
  echo "fuzz: build failed (log: $BUILD_DIR/build.log)" >&2
  exit 1
}

rm -rf "$BUILD_DIR/seeds"
python3 "$FUZZ_DIR/make_seeds.py" "$BUILD_DIR/seeds"
# Seeds written by the project's own writers (the GGUF export), kept as files;
# test_gguf_export checks they are still what the exporter writes.
for kept in "$FUZZ_DIR"/seeds/*/; do
  [ -d "$kept" ] || continue
  target="$(basename "$kept")"
  mkdir -p "$BUILD_DIR/seeds/$target"
  cp "$kept"* "$BUILD_DIR/seeds/$target/"
done

dictionary_for() {
  case "$1" in
  fuzz_gguf | fuzz_gguf_model) echo "$FUZZ_DIR/gguf.dict" ;;
  fuzz_tokenizer_encode | fuzz_run_blob) echo "" ;;
  *) echo "$FUZZ_DIR/json.dict" ;;
  esac
}

# Every sanitizer report stops the target (UBSan is built without recovery);
# -rss_limit_mb also caps single allocations at 2 GB, so a memory bomb counts.
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# One target's regressions and campaign; its summary line, ending in "  ok"
# when it passed, goes to $BUILD_DIR/TARGET.summary.
fuzz_target() {
  local target="$1"
  local binary="$BUILD_DIR/$target"
  local log="$BUILD_DIR/$target.log"
  local corpus="$BUILD_DIR/corpus/$target"
  local crashes="$CRASH_DIR/$target"
  local summary_file="$BUILD_DIR/$target.summary"
  mkdir -p "$corpus" "$crashes"

  # Inputs that once crashed must now pass.
  local regressions=("$FUZZ_DIR/regressions/$target"/*)
  if [ -e "${regressions[0]}" ]; then
    if ! "$binary" "${regressions[@]}" >"$log.regressions" 2>&1; then
      echo "$target: a regression input fails again (log: $log.regressions)" >&2
      grep -E "ERROR|FUZZ_CHECK|runtime error|Running:" "$log.regressions" | tail -5 >&2 || true
      printf '%-24s REGRESSION FAILED\n' "$target" >"$summary_file"
      return 1
    fi
  fi

  local options=(-max_total_time="$SECONDS_PER_TARGET" -timeout="${LRQ_FUZZ_TIMEOUT:-1}" -rss_limit_mb=2048
    -print_final_stats=1 -artifact_prefix="$crashes/")
  [ -n "${LRQ_FUZZ_RUNS:-}" ] && options+=(-runs="$LRQ_FUZZ_RUNS")
  local dict
  dict="$(dictionary_for "$target")"
  [ -n "$dict" ] && options+=(-dict="$dict")
  local before after status=0
  before=$(find "$crashes" -type f | wc -l)
  "$binary" "${options[@]}" "$corpus" "$BUILD_DIR/seeds/$target" >"$log" 2>&1 || status=$?
  after=$(find "$crashes" -type f | wc -l)
  local execs rate found verdict="ok" result=0
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  found=$((after - before))
  if [ "$status" -ne 0 ] || [ "$found" -gt 0 ]; then
    verdict="FAILED (exit $status; log: $log)"
    result=1
    grep -E "ERROR|FUZZ_CHECK|runtime error|SUMMARY|Test unit written" "$log" | head -6 >&2 || true
  fi
  printf '%-24s executions %10s  exec/s %7s  crashes %d  %s\n' "$target" "${execs:-?}" \
    "${rate:-?}" "$found" "$verdict" | tee "$summary_file"
  return "$result"
}

# libFuzzer runs one input at a time on one core: the targets run side by side,
# LRQ_FUZZ_JOBS at once (default: one per core), each for its full SECONDS.
jobs_max="${LRQ_FUZZ_JOBS:-$(nproc)}"
[ "$jobs_max" -ge 1 ] 2>/dev/null || jobs_max=1
failed=0
for target in "${TARGETS[@]}"; do
  rm -f "$BUILD_DIR/$target.summary"
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do
    wait -n || true # each verdict is read from its summary file below
  done
  fuzz_target "$target" &
done
wait
summary=()
for target in "${TARGETS[@]}"; do
  line="$(cat "$BUILD_DIR/$target.summary" 2>/dev/null || printf '%-24s NO RESULT' "$target")"
  [[ "$line" == *"  ok" ]] || failed=1
  summary+=("$line")
done

echo "== fuzz summary (${SECONDS_PER_TARGET} s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
