#!/usr/bin/env bash
# Prove a GPU backend end to end, in its own venv (the project's .venv is left alone):
#   scripts/check_backend.sh vulkan [--check-only]
# 1. checks what the build needs and says plainly what is missing (exit 3);
# 2. builds llama-cpp-python for the backend into $EDGE_QWEN_BACKEND_VENV
#    (default ~/.cache/edge-qwen-backends/venv-<backend>; rebuilt only when the build flags change);
# 3. runs the real Qwen2.5-Coder-0.5B with every layer on the device and compares its greedy tokens
#    with the CPU build's (.venv) for 3 prompts (scripts/backend_parity.py; exit 1 on a mismatch);
# 4. shows the device as `edge-qwen doctor` sees it from that venv.
# Vulkan needs headers >= 1.3.261 (vk::LayerSettingEXT); headers kept elsewhere (e.g. unpacked from
# a newer libvulkan-dev .deb) are used with VULKAN_INCLUDE_DIR=/path/to/include.
# Without a GPU, Mesa's lavapipe (mesa-vulkan-drivers) is a real Vulkan device on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_backend.sh
. scripts/_backend.sh
backend=${1:-}
check_only=${2:-}
MIN_VK=(1 3 261)
say() { echo "check_backend: $*" >&2; }
LDCACHE=$(ldconfig -p 2>/dev/null || true)  # (grep -q on a pipe would SIGPIPE ldconfig under pipefail)

vulkan_header() {  # prints "path major minor patch" of the first vulkan_core.h found
    local dir h major minor patch
    for dir in ${VULKAN_INCLUDE_DIR:-} ${VULKAN_SDK:+$VULKAN_SDK/include} /usr/include /usr/local/include; do
        h=$dir/vulkan/vulkan_core.h
        [ -f "$h" ] || continue
        patch=$(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\).*/\1/p' "$h")
        read -r major minor < <(sed -n \
            's/^#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, *\([0-9]*\), *\([0-9]*\),.*/\1 \2/p' "$h")
        echo "$dir ${major:-1} ${minor:-0} ${patch:-0}"
        return 0
    done
    return 1
}

check_vulkan() {  # sets VK_INCLUDE; returns 3 with every missing piece listed
    local missing=() found dir major minor patch
    if found=$(vulkan_header); then
        read -r dir major minor patch <<<"$found"
        say "Vulkan headers $major.$minor.$patch in $dir"
        if (( major * 1000000 + minor * 1000 + patch < MIN_VK[0] * 1000000 + MIN_VK[1] * 1000 + MIN_VK[2] )); then
            missing+=("Vulkan headers >= ${MIN_VK[0]}.${MIN_VK[1]}.${MIN_VK[2]}, found $major.$minor.$patch (this llama.cpp\
 uses vk::LayerSettingEXT from VK_EXT_layer_settings). Debian 12 ships 1.3.239 and bookworm-backports has no newer\
 libvulkan-dev; use Debian 13 (1.4.x), the LunarG SDK (VULKAN_SDK=...), or unpack a newer libvulkan-dev .deb\
 (dpkg -x) and set VULKAN_INCLUDE_DIR=<dir>/usr/include")
        fi
        VK_INCLUDE=$dir
    else
        missing+=("Vulkan headers (vulkan/vulkan_core.h): apt-get install libvulkan-dev (>= 1.3.261)")
    fi
    command -v glslc >/dev/null || missing+=("glslc (the GLSL to SPIR-V compiler): apt-get install glslc")
    if ! grep -q 'libvulkan\.so\.1 ' <<<"$LDCACHE"; then
        missing+=("the Vulkan loader libvulkan.so.1: apt-get install libvulkan1")
    fi
    if ! compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null && ! compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null; then
        missing+=("a Vulkan driver (ICD): a GPU driver, or Mesa's lavapipe on the CPU: apt-get install mesa-vulkan-drivers")
    fi
    [ -f /usr/include/spirv/unified1/spirv.hpp ] || [ -n "${VULKAN_SDK:-}" ] || \
        say "note: spirv-headers not found (apt-get install spirv-headers); the build may need them"
    if [ ${#missing[@]} -gt 0 ]; then
        say "cannot build the Vulkan backend here; missing:"
        printf '  - %s\n' "${missing[@]}" >&2
        return 3
    fi
    if command -v vulkaninfo >/dev/null; then
        local summary
        summary=$(vulkaninfo --summary 2>/dev/null || true)
        grep -E 'deviceName|deviceType|driverName|apiVersion' <<<"$summary" | sed 's/^/check_backend:   /' >&2 || true
        # ggml skips CPU-type Vulkan devices (lavapipe) unless they are named explicitly
        if [ -z "${GGML_VK_VISIBLE_DEVICES:-}" ] && grep -q 'deviceType' <<<"$summary" \
                && ! grep 'deviceType' <<<"$summary" | grep -vq 'PHYSICAL_DEVICE_TYPE_CPU'; then
            export GGML_VK_VISIBLE_DEVICES=0
            say "only CPU Vulkan devices (lavapipe): GGML_VK_VISIBLE_DEVICES=0 makes ggml use the first"
        fi
    fi
}

case "$backend" in
    vulkan)
        check_vulkan
        extra="-DVulkan_INCLUDE_DIR=$VK_INCLUDE"
        # without libvulkan-dev there is no unversioned libvulkan.so to link: point at the loader
        if ! grep -q 'libvulkan\.so ' <<<"$LDCACHE"; then
            extra="$extra -DVulkan_LIBRARY=$(sed -n 's/.*libvulkan\.so\.1 .*=> //p' <<<"$LDCACHE" | head -1)"
        fi ;;
    cuda|metal)
        say "$backend: build it into .venv with EDGE_QWEN_BACKEND=$backend bash scripts/setup.sh, then run" \
            ".venv/bin/edge-qwen doctor (this script proves only vulkan on machines without that GPU)"
        exit 2 ;;
    *) echo "usage: scripts/check_backend.sh vulkan [--check-only]" >&2; exit 2 ;;
esac
[ "$check_only" = --check-only ] && { say "all build requirements present"; exit 0; }

EQ_AMX_FLAGS=""
eq_amx_fix
args="$(eq_cmake_args "$backend") $extra"
venv=${EDGE_QWEN_BACKEND_VENV:-$HOME/.cache/edge-qwen-backends/venv-$backend}
stamp=$venv/.edge-qwen-backend
version=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
t0=$(date +%s)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$version $args" ]; then
    say "building llama-cpp-python $version with CMAKE_ARGS='$args' into $venv (nice 19; 10+ min on 2 cores)"
    [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
    env CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        ${EQ_CC:+CC=$EQ_CC CXX=$EQ_CXX} \
        nice -n 19 "$venv/bin/python" -m pip install -q --no-cache-dir --force-reinstall "llama-cpp-python==$version"
    "$venv/bin/python" -m pip install -q -e .  # edge-qwen and its other dependencies (for doctor)
    echo "$version $args" > "$stamp"
fi
t1=$(date +%s)
say "build: $((t1 - t0)) s"

model=$(.venv/bin/python scripts/fetch_assets.py --only gguf --json | .venv/bin/python -c \
    'import json, sys; print(json.load(sys.stdin)["gguf"])')
out=${TMPDIR:-/tmp}/edge-qwen-parity-$$
mkdir -p "$out"
.venv/bin/python scripts/backend_parity.py "$model" --gpu-layers 0 > "$out/cpu.json"
t2=$(date +%s)
"$venv/bin/python" scripts/backend_parity.py "$model" --gpu-layers 99 > "$out/$backend.json"
t3=$(date +%s)
say "greedy tokens: CPU build $((t2 - t1)) s, $backend build (all layers offloaded) $((t3 - t2)) s"
"$venv/bin/edge-qwen" doctor --offline | sed -n '/^llama.cpp/,/^$/p' >&2 || true
.venv/bin/python scripts/backend_parity.py --compare "$out/cpu.json" "$out/$backend.json"
