#!/usr/bin/env bash
# Installs everything LRQ Workbench needs on Debian bookworm, idempotently:
# build tools and libraries (apt), a Python venv with the reference-check
# packages, the default texts (Debian's jargon-text for calibration and in-domain
# evaluation, debian-policy for out-of-domain evaluation) and the default model.
# Usage: packaging/install-deps.sh            (as root, or with sudo available)
set -euo pipefail

CACHE_DIR="${LRQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lrq-workbench}"
VENV_DIR="$CACHE_DIR/venv"

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config clang-format
  clang libclang-rt-dev
  qt6-base-dev qt6-svg-dev libqt6opengl6-dev libgl-dev libqcustomplot-dev libqcustomplot2.1-qt6
  libspdlog-dev libtorch-dev libopenblas0-openmp nlohmann-json3-dev libpcre2-dev
  libsqlite3-dev zlib1g-dev
  python3 python3-pip python3-venv
  jargon-text debian-policy fonts-dejavu-core xvfb xauth
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "install-deps: need root (or sudo) to install: $*" >&2; exit 1
  fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "== Debian packages: all present"
fi

# LibTorch's matmul is ~50x slower on the reference BLAS: make sure OpenBLAS
# (OpenMP flavour) is the selected libblas/liblapack.
for alt in libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu; do
  target=$(update-alternatives --list "$alt" 2>/dev/null | grep openblas-openmp | head -1 || true)
  if [ -n "$target" ] && [ "$(readlink -f "/etc/alternatives/$alt")" != "$(readlink -f "$target")" ]; then
    as_root update-alternatives --set "$alt" "$target"
  fi
done

# Python venv for the independent reference computations the tests run.
mkdir -p "$CACHE_DIR"
if [ ! -x "$VENV_DIR/bin/python" ] || ! "$VENV_DIR/bin/python" -c "import numpy, gguf, tokenizers" 2>/dev/null; then
  echo "== creating Python venv with numpy, gguf, tokenizers in $VENV_DIR"
  /usr/bin/python3 -m venv "$VENV_DIR"
  "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check \
    "numpy>=1.26,<3" "gguf==0.19.0" "tokenizers>=0.20,<1"
else
  echo "== Python venv: ready ($VENV_DIR)"
fi

# The oldest `tokenizers` release with a wheel for the venv's Python, in its own
# folder (not the venv): test_compressed_tensors checks through PYTHONPATH that
# the HF export's tokenizer.json reads there too (merges as "a b" strings).
OLD_TOKENIZERS="$CACHE_DIR/tokenizers-old"
if [ ! -d "$OLD_TOKENIZERS/tokenizers" ]; then
  echo "== installing tokenizers 0.13.3 into $OLD_TOKENIZERS"
  "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
    --no-deps --target "$OLD_TOKENIZERS" "tokenizers==0.13.3" ||
    echo "   (not installed: the test then checks the current release only)"
fi

# Default texts: Debian's jargon-text and debian-policy. Images that drop
# /usr/share/doc get a private copy unpacked from each package into the cache.
cache_text() { # package, file under /usr/share/doc/PACKAGE
  if [ ! -f "/usr/share/doc/$1/$2" ] && [ ! -f "$CACHE_DIR/text/$2" ]; then
    echo "== unpacking $1 into $CACHE_DIR/text"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq "$1" && dpkg-deb -x "$1"_*.deb root)
    mkdir -p "$CACHE_DIR/text"
    cp "$tmp/root/usr/share/doc/$1/$2" "$CACHE_DIR/text/$2"
    rm -rf "$tmp"
  fi
}
cache_text jargon-text jargon.txt.gz
cache_text debian-policy policy.txt.gz
echo "== dependencies ready"
