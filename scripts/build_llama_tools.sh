#!/usr/bin/env bash
# Build llama.cpp's reference tools (llama-bench, llama-batched-bench, llama-server, ggml-rpc-server) from the
# very llama.cpp that llama-cpp-python vendors (with RPC), so benchmarks compare like with like:
#   scripts/build_llama_tools.sh [TARGET ...]        (default: llama-bench)
# Prints the folder holding the binaries. Source: the llama-cpp-python sdist pinned in pyproject.toml
# (pip download); build: $EDGE_QWEN_TOOLS_DIR (default ~/.cache/edge-qwen-backends/llama-tools),
# niced, CPU only, the same AMX/GCC 12 rule as setup.sh. Rebuilding is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_backend.sh
. scripts/_backend.sh
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(llama-bench)
version=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
dir=${EDGE_QWEN_TOOLS_DIR:-$HOME/.cache/edge-qwen-backends/llama-tools}
src=$dir/llama_cpp_python-$version
mkdir -p "$dir"
if command -v flock >/dev/null; then  # two builds in one tree corrupt each other's objects
    exec 9>"$dir/.lock"
    flock -n 9 || { echo "build_llama_tools: waiting for another build in $dir" >&2; flock 9; }
fi
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
    echo "build_llama_tools: fetching the llama-cpp-python $version sdist" >&2
    .venv/bin/python -m pip download -q --no-deps --no-binary :all: -d "$dir" "llama-cpp-python==$version"
    tar -xzf "$dir/llama_cpp_python-$version.tar.gz" -C "$dir"
fi
eq_amx_fix
# shellcheck disable=SC2046  # the AMX flags are separate words
cmake -S "$src/vendor/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DGGML_RPC=ON \
    ${EQ_CC:+-DCMAKE_C_COMPILER=$EQ_CC -DCMAKE_CXX_COMPILER=$EQ_CXX} $EQ_AMX_FLAGS >/dev/null
nice -n 19 cmake --build "$dir/build" -j "$(nproc 2>/dev/null || sysctl -n hw.ncpu)" --target "${targets[@]}" >&2
echo "$dir/build/bin"
