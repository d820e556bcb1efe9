#!/usr/bin/env bash
# Configures and builds LRQ Workbench into build/ (Release, Ninja, ccache).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_DIR="${LRQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lrq-workbench}"
BUILD_DIR="${LRQ_BUILD_DIR:-build}"
# Let ccache share objects between clones in different folders, also for
# files compiled with the precompiled header.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DLRQ_PYTHON="$CACHE_DIR/venv/bin/python" "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
