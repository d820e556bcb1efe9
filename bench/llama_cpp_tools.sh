#!/usr/bin/env bash
# Builds llama.cpp's command-line tools that the comparison benchmarks run against:
# llama-quantize, llama-imatrix, llama-perplexity and llama-tokenize, CPU only.
#
# usage: bench/llama_cpp_tools.sh [--src]
#   prints the directory holding the binaries (last line of stdout);
#   with --src, prints the llama.cpp source tree instead (convert_hf_to_gguf.py, gguf-py).
#
# The source is the PyPI source distribution of llama-cpp-python (its vendor/llama.cpp),
# pinned below so every figure names the llama.cpp it came from; nothing is taken from a
# model hub. The result is cached under ~/.cache/lrq-workbench/llama.cpp-VERSION/: a second
# call finds the binaries and returns at once. A build takes minutes on an idle machine.
# Environment: LLAMA_CPP_PYTHON_VERSION (default below), LRQ_CACHE (default
# ~/.cache/lrq-workbench), LLAMA_CPP_JOBS (default: all cores). Not part of the test suite.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE_ROOT="${LRQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lrq-workbench}"
DIR="$CACHE_ROOT/llama.cpp-$VERSION"
BIN="$DIR/bin"
SRC="$DIR/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
TOOLS=(llama-quantize llama-imatrix llama-perplexity llama-tokenize)

want_src=0
case "${1:-}" in
--src) want_src=1 ;;
"") ;;
-h | --help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "llama_cpp_tools.sh: unknown option '$1' (see --help)" >&2
    exit 2
    ;;
esac

done_already() {
    [[ -f "$DIR/BUILT" ]] || return 1
    for tool in "${TOOLS[@]}"; do [[ -x "$BIN/$tool" ]] || return 1; done
}

report() {
    if ((want_src)); then echo "$SRC"; else echo "$BIN"; fi
}

if done_already; then
    report
    exit 0
fi

mkdir -p "$DIR"
# Two benchmarks started together must not build the same tree twice.
exec 9>"$DIR/.lock"
flock 9
if done_already; then
    report
    exit 0
fi

log() { echo "llama_cpp_tools.sh: $*" >&2; }

if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
    mkdir -p "$DIR/download" "$DIR/src"
    tarball="$DIR/download/llama_cpp_python-$VERSION.tar.gz"
    if [[ ! -f "$tarball" ]]; then
        log "downloading the llama-cpp-python $VERSION source distribution from PyPI"
        python3 -m pip download --quiet --no-deps --no-binary :all: \
            "llama-cpp-python==$VERSION" -d "$DIR/download" >&2
    fi
    sha256sum "$tarball" | tee "$DIR/SOURCE_SHA256" >&2
    tar -xzf "$tarball" -C "$DIR/src"
fi
[[ -f "$SRC/CMakeLists.txt" ]] || {
    log "no llama.cpp tree at $SRC"
    exit 1
}

jobs="${LLAMA_CPP_JOBS:-$(nproc)}"
log "configuring $SRC (CPU only, Release, native)"
start=$(date +%s)
# Static libraries, so the cached binaries need nothing beside them. Only the tools the
# benchmarks run are built: no tests, examples, server, web UI or HTTPS download support.
cmake -S "$SRC" -B "$DIR/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_RPC=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON >&2
log "building ${TOOLS[*]} with $jobs jobs"
nice -n 10 cmake --build "$DIR/build" --target "${TOOLS[@]}" -j "$jobs" >&2

mkdir -p "$BIN"
for tool in "${TOOLS[@]}"; do
    found=$(find "$DIR/build" -type f -name "$tool" -perm -u+x | head -n 1)
    [[ -n "$found" ]] || {
        log "built, but no $tool binary under $DIR/build"
        exit 1
    }
    cp "$found" "$BIN/$tool"
done
end=$(date +%s)
{
    echo "llama-cpp-python $VERSION"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((end - start)) s with $jobs jobs"
} >"$DIR/BUILT"
log "$(tail -n 1 "$DIR/BUILT")"
report
