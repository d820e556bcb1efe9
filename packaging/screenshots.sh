#!/usr/bin/env bash
# Regenerates the README's screenshots from the real desktop app under Xvfb:
# `lrq-workbench --tour` opens the default model, runs LRQ, FlexRound, L²QER and
# RTN on its first four blocks (W3A16-g128, demo preset; about 4 minutes on 2
# cores) and saves the Quantize (live monitor), Runs, Compare and Learn views.
# Usage: packaging/screenshots.sh [OUT_DIR]   (default: docs/screenshots)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/screenshots}"
packaging/install-deps.sh >/dev/null
packaging/build.sh
mkdir -p "$out"
xvfb-run -a -s "-screen 0 1440x900x24" build/app/lrq-workbench --tour "$out"
rm -f "$out"/tour-runs.sqlite* "$out"/tour-scheme.json
ls -l "$out"/*.png
