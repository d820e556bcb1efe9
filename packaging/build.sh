#!/usr/bin/env bash
# Configures and builds LRQ Workbench into build/ (Release, Ninja, ccache).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_DIR="${LRQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lrq-workbench}"
BUILD_DIR="${LRQ_BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DLRQ_PYTHON="$CACHE_DIR/venv/bin/python" "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
