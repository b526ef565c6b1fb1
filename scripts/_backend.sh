# Sourced by scripts/setup.sh and scripts/check_backend.sh: which llama.cpp backend to build, the
# CMAKE_ARGS that build it, and which backend an installed llama-cpp-python actually contains.
#   eq_choose_backend            -> sets EQ_BACKEND and EQ_WHY from EDGE_QWEN_BACKEND (default auto)
#   eq_cmake_args BACKEND        -> prints the CMAKE_ARGS for it (+ the AMX/GCC 12 fix, + $CMAKE_ARGS)
#   eq_installed_backend LIBDIR  -> prints cuda|vulkan|metal|cpu|none from the libraries present
# shellcheck shell=bash

eq_gpu_visible() {  # an NVIDIA GPU this machine can use (driver loaded)
    if command -v nvidia-smi >/dev/null 2>&1 && [ -n "$(nvidia-smi -L 2>/dev/null | grep '^GPU')" ]; then
        return 0
    fi
    compgen -G "${EQ_NVIDIA_PROC:-/proc/driver/nvidia}/gpus/*" >/dev/null 2>&1
}

eq_nvcc() {
    local home=${EQ_CUDA_HOME:-/usr/local/cuda}
    command -v nvcc 2>/dev/null || { [ -x "$home/bin/nvcc" ] && echo "$home/bin/nvcc"; } || true
}

eq_choose_backend() {
    local want=${EDGE_QWEN_BACKEND:-auto} nvcc
    case "$want" in
        cpu|cuda|metal|vulkan) EQ_BACKEND=$want; EQ_WHY="EDGE_QWEN_BACKEND=$want"; return 0 ;;
        auto) ;;
        *) echo "setup: EDGE_QWEN_BACKEND must be auto, cpu, cuda, metal or vulkan (got '$want')" >&2
           return 2 ;;
    esac
    nvcc=$(eq_nvcc)
    if [ "$(uname -s)" = Darwin ]; then
        EQ_BACKEND=metal; EQ_WHY="auto: macOS, Metal is the GPU API"
    elif [ -n "$nvcc" ] && eq_gpu_visible; then
        EQ_BACKEND=cuda; EQ_WHY="auto: nvcc at $nvcc and an NVIDIA GPU is visible"
    elif [ -n "$nvcc" ]; then
        # A CUDA toolkit without a GPU (CI images, build boxes): a CUDA build takes far longer and
        # gains nothing here. EDGE_QWEN_BACKEND=cuda still forces it.
        EQ_BACKEND=cpu
        EQ_WHY="auto: nvcc at $nvcc but no NVIDIA GPU visible (nvidia-smi/driver); EDGE_QWEN_BACKEND=cuda forces CUDA"
    else
        EQ_BACKEND=cpu; EQ_WHY="auto: no macOS, no nvcc on PATH"
    fi
}

eq_has_amx() { grep -qw amx_int8 "${EQ_CPUINFO:-/proc/cpuinfo}" 2>/dev/null; }

eq_gcc_major() {  # major version of a compiler if it is GCC, else nothing
    local cc=$1 banner
    banner=$("$cc" --version 2>/dev/null || true)
    case "$banner" in *clang*|"") return 0 ;; esac
    "$cc" -dumpversion 2>/dev/null | cut -d. -f1
}

# On an AMX CPU, GCC 12 miscompiles ggml's tile config (see edge_qwen/_llama.py): prefer a compiler
# that does not (GCC >= 13, clang: whether it emits AMX code is checked after the build, see setup.sh),
# else build without AMX (repack buffers stay).
# Sets EQ_CC/EQ_CXX (maybe empty) and EQ_AMX_FLAGS, and says what it did on stderr.
eq_amx_fix() {
    EQ_CC=""; EQ_CXX=""; EQ_AMX_FLAGS=""
    eq_has_amx || return 0
    local cc=${CC:-cc} major cand
    major=$(eq_gcc_major "$cc")
    if [ -z "$major" ] || [ "$major" -ge 13 ]; then
        return 0
    fi
    for cand in gcc-14:g++-14 gcc-13:g++-13 clang-19:clang++-19 clang-18:clang++-18 clang-17:clang++-17 \
                clang-16:clang++-16 clang-15:clang++-15 clang:clang++; do
        if command -v "${cand%%:*}" >/dev/null 2>&1 && command -v "${cand##*:}" >/dev/null 2>&1; then
            EQ_CC=${cand%%:*}; EQ_CXX=${cand##*:}
            echo "setup: AMX CPU and $cc is GCC $major: building llama.cpp with $EQ_CC (whether its build" \
                 "has AMX kernels is checked once it is built)" >&2
            return 0
        fi
    done
    EQ_AMX_FLAGS="-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8"
    echo "setup: AMX CPU and $cc is GCC $major (miscompiles ggml's AMX tile config): building with" \
         "-mno-amx-int8; install gcc-13 or clang to keep AMX" >&2
}

eq_cmake_args() {
    local args=""
    case "$1" in
        cuda) args="-DGGML_CUDA=on" ;;
        metal) args="-DGGML_METAL=on" ;;
        vulkan) args="-DGGML_VULKAN=on" ;;
        cpu) [ "$(uname -s)" = Darwin ] && args="-DGGML_METAL=off" ;;
    esac
    # every build can serve as an RPC worker or use one (edge-qwen worker, --rpc)
    args="${args:+$args }-DGGML_RPC=on"
    [ -n "${EQ_AMX_FLAGS:-}" ] && args="${args:+$args }$EQ_AMX_FLAGS"
    [ -n "${CMAKE_ARGS:-}" ] && args="${args:+$args }$CMAKE_ARGS"
    echo "$args"
}

eq_installed_backend() {  # what the shared libraries of an installed llama_cpp say
    local lib=$1
    if [ ! -d "$lib" ] || ! compgen -G "$lib/libllama*" >/dev/null; then echo none; return; fi
    if compgen -G "$lib/libggml-cuda*" >/dev/null; then echo cuda
    elif compgen -G "$lib/libggml-vulkan*" >/dev/null; then echo vulkan
    elif compgen -G "$lib/libggml-metal*" >/dev/null; then echo metal
    else echo cpu
    fi
}
