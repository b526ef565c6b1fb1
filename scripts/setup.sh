#!/usr/bin/env bash
# Idempotent set-up shared by the README's two commands: a virtual environment in .venv with
# edge-qwen and its test extras, then the real Qwen artifacts (sha256-verified, cached in
# ~/.cache/edge-qwen). The first run builds llama-cpp-python from source (~6 min on 2 cores).
#
# EDGE_QWEN_BACKEND=auto|cpu|cuda|metal|vulkan picks llama.cpp's backend (default auto: Metal on
# macOS, CUDA where nvcc and an NVIDIA GPU are present, else CPU). The stamp file records what was
# built; llama-cpp-python is rebuilt only when the requested backend or build flags differ from it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_backend.sh
. scripts/_backend.sh
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.edge-qwen-installed

eq_choose_backend
eq_amx_fix
want_args=$(eq_cmake_args "$EQ_BACKEND")
echo "setup: llama.cpp backend $EQ_BACKEND ($EQ_WHY)${want_args:+; CMAKE_ARGS=$want_args}" >&2

build_env=(env CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
           CMAKE_ARGS="$want_args")
if [ -n "$EQ_CC" ]; then build_env+=(CC="$EQ_CC" CXX="$EQ_CXX"); fi
# pip caches the wheel it built keyed by the sdist, not by CMAKE_ARGS: bypass it for any non-default build
cache_opt=()
if [ -n "$want_args" ]; then cache_opt=(--no-cache-dir); fi

if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing edge-qwen into .venv (first time builds llama.cpp; a few minutes)" >&2
    "${build_env[@]}" .venv/bin/python -m pip install -q ${cache_opt[@]+"${cache_opt[@]}"} -e ".[test]"
    printf 'backend=%s\ncmake_args=%s\n' "$EQ_BACKEND" "$want_args" > "$stamp"
fi
# What the installed libraries contain (libggml-cuda/-vulkan/-metal) and the flags the stamp
# recorded (a stamp without a cmake_args line comes from the plain default build).
libdir=$(compgen -G ".venv/lib/python*/site-packages/llama_cpp/lib" | head -1 || true)
have_backend=$(eq_installed_backend "${libdir:-/nonexistent}")
have_args=$(sed -n 's/^cmake_args=//p' "$stamp")
if [ "$have_backend" != "$EQ_BACKEND" ] || [ "$have_args" != "$want_args" ]; then
    echo "setup: installed llama.cpp is '$have_backend' (CMAKE_ARGS='$have_args'); rebuilding" \
         "llama-cpp-python for '$EQ_BACKEND' (a few minutes)" >&2
    version=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
    "${build_env[@]}" .venv/bin/python -m pip install -q --force-reinstall --no-deps --no-cache-dir \
        "llama-cpp-python==$version"
    printf 'backend=%s\ncmake_args=%s\n' "$EQ_BACKEND" "$want_args" > "$stamp"
fi
.venv/bin/python scripts/build_report.py >&2
.venv/bin/python scripts/fetch_assets.py >&2
# The chat page's test drives a real headless Chromium; install Debian's where we may (root, apt).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Chromium for the chat page's browser test" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
        || echo "setup: could not install Chromium; the chat page's browser test will be skipped" >&2
fi
