#!/usr/bin/env bash
# Quick start 2: set everything up, then run the whole test suite (CTest).
set -euo pipefail
cd "$(dirname "$0")"
packaging/install-deps.sh
packaging/build.sh
export LRQ_PYTHON="${LRQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lrq-workbench}/venv/bin/python"
# The default model is fetched (and its SHA-256 checked) before the tests use it.
build/app/lrq info default --quiet >/dev/null
# Two tests at a time on two cores: most tests spend much of their time in
# single-threaded work (process start-up, model loading, Python references,
# writing exports), which the other test's threads fill. Tests never depend on
# wall time, and each has its own scratch directories.
cd build && ctest --output-on-failure -j "$(nproc)"
