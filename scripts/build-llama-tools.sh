#!/usr/bin/env bash
# Build llama.cpp's llama-server, llama-bench, llama-batched-bench and llama-quantize from the pinned llama-cpp-python sdist.
# The sdist vendors the exact llama.cpp tree the Python binding uses, so the server speaks the same
# GGUF versions. Binaries are cached in ~/.cache/toolkit/llama.cpp-<version>/bin; a second run only
# checks. A user's own llama-server on PATH takes precedence at run time (toolkit/teacher/llama_tools.py).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_VERSION=0.3.36
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/toolkit
DEST=${TOOLKIT_LLAMA_TOOLS:-$CACHE/llama.cpp-$LLAMA_VERSION}
PYTHON=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-$(nproc)}

if [ -x "$DEST/bin/llama-server" ] && [ -x "$DEST/bin/llama-bench" ] && [ -x "$DEST/bin/llama-quantize" ] \
        && [ -x "$DEST/bin/llama-batched-bench" ]; then
    echo "llama.cpp tools already built: $DEST/bin"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/llama-tools.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download -q --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$LLAMA_VERSION"
tar -xzf "$work"/llama_cpp_python-"$LLAMA_VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"

# Same trap as scripts/setup.sh: ggml's AMX kernels segfault in VMs that do not grant AMX tile state.
flags=""
if [ "$(uname -m)" = x86_64 ]; then
    flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
# LLAMA_CURL=OFF: no libcurl needed, models are local files. Static ggml so the binaries are self-contained.
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" ${CMAKE_ARGS:-}
cmake --build "$work/build" -j "$JOBS" --target llama-server llama-bench llama-batched-bench llama-quantize

# Install atomically: a half-copied bin/ would pass the check above on the next run.
mkdir -p "$DEST"
rm -rf "$DEST/bin.tmp"
mkdir "$DEST/bin.tmp"
cp "$work"/build/bin/llama-server "$work"/build/bin/llama-bench "$work"/build/bin/llama-batched-bench \
    "$work"/build/bin/llama-quantize "$DEST/bin.tmp/"
rm -rf "$DEST/bin"
mv "$DEST/bin.tmp" "$DEST/bin"
echo "built: $DEST/bin"
