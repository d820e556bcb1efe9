#!/usr/bin/env bash
# Quick start 1: set everything up, then run the main job on the default model:
# the desktop workbench (Quantize view) when a display is available; otherwise
# an LRQ demo quantization, an RTN one on the same scheme, and the two side by side.
set -euo pipefail
cd "$(dirname "$0")"
packaging/install-deps.sh
packaging/build.sh
export LRQ_PYTHON="${LRQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lrq-workbench}/venv/bin/python"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${LRQ_HEADLESS:-}" ]; then
  exec build/app/lrq-workbench default --view quantize
fi
scheme="${LRQ_SCHEME:-W4A16}"
echo "== no display: LRQ (demo preset) and RTN at $scheme on the default model"
echo "== (full-precision reference: SmolLM2-135M-Instruct dequantized from Q4_1)"
run_id() { awk '/^run [^ ]+ finished/ {print $2}'; }
lrq_out=$(build/app/lrq quantize default --method lrq --preset demo --scheme "$scheme" \
  --eval-windows 8 | tee /dev/stderr)
rtn_out=$(build/app/lrq quantize default --method rtn --preset demo --scheme "$scheme" \
  --eval-windows 8 | tee /dev/stderr)
lrq_id=$(printf '%s\n' "$lrq_out" | run_id)
rtn_id=$(printf '%s\n' "$rtn_out" | run_id)
echo
echo "== side by side: what differs (lrq runs compare $lrq_id $rtn_id shows everything)"
build/app/lrq runs compare "$lrq_id" "$rtn_id" --differences
