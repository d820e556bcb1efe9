#!/usr/bin/env bash
# Quick start 1: set everything up, then run the main job on the default model:
# the desktop app when a display is available, otherwise a headless `lrq` run.
set -euo pipefail
cd "$(dirname "$0")"
packaging/install-deps.sh
packaging/build.sh
export LRQ_PYTHON="${LRQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lrq-workbench}/venv/bin/python"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${LRQ_HEADLESS:-}" ]; then
  exec build/app/lrq-workbench default
fi
echo "== no display: headless run on the default model"
info=$(mktemp)
build/app/lrq info default > "$info"
head -12 "$info" && rm -f "$info"
build/app/lrq eval default --seq-len 512
build/app/lrq generate default --prompt "The capital of France is" --max-new-tokens 24
