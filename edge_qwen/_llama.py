"""The one place that touches llama.cpp's process-wide state: backend start-up, the log callback,
and the CPU facts that decide how weights are loaded.

llama.cpp has a single, process-wide log callback. edge-qwen installs it once (quiet by default;
``EDGE_QWEN_LLAMA_LOG=1`` echoes everything to stderr) and lets code that wants llama.cpp's words —
a load failure to explain, quantization progress to show — subscribe for the duration of a block
with :func:`capture_log`. Nobody else calls ``llama_log_set``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as L

GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5

_lock = threading.Lock()
_captures: list[LogCapture] = []
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
_started = False


class LogCapture:
    """llama.cpp's log lines (the last ``keep``) and error lines while a :func:`capture_log` block runs."""

    def __init__(self, on_line: Callable[[int, str], None] | None = None, keep: int = 200) -> None:
        self.on_line = on_line
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.errors: list[str] = []

    def _add(self, level: int, line: str) -> None:
        self.lines.append(line)
        if level == GGML_LOG_LEVEL_ERROR:
            self.errors.append(line.strip())
        if self.on_line is not None:
            self.on_line(level, line)

    def tail(self, n: int = 3) -> str:
        """The last error lines, else the last line: what an exception should quote."""
        lines = self.errors[-n:] or "".join(self.lines).strip().splitlines()[-1:]
        return " | ".join(line.strip() for line in lines)


def _on_log(level: int, text: bytes | None, _user_data: Any) -> None:
    if not text:
        return
    line = text.decode("utf-8", "replace")
    if level == GGML_LOG_LEVEL_ERROR:  # kept short: errors quote it, and llama.cpp may echo a whole grammar
        _recent_errors.append(_shorten(line.strip()))
    for capture in list(_captures):
        capture._add(level, line)
    if os.environ.get("EDGE_QWEN_LLAMA_LOG"):
        os.write(2, text)


def _shorten(line: str, limit: int = 400) -> str:
    return line if len(line) <= limit else f"{line[:limit]}… ({len(line):,} characters)"


_callback = L.llama_log_callback(_on_log)  # module level: must outlive every llama.cpp call


def init_backend() -> None:
    """Install the log callback and start llama.cpp's backends, once per process."""
    global _started
    with _lock:
        if not _started:
            L.llama_log_set(_callback, ctypes.c_void_p(0))
            L.llama_backend_init()
            _started = True


@contextlib.contextmanager
def capture_log(on_line: Callable[[int, str], None] | None = None) -> Iterator[LogCapture]:
    """Collect what llama.cpp logs during the block (from any thread)."""
    init_backend()
    capture = LogCapture(on_line)
    with _lock:
        _captures.append(capture)
    try:
        yield capture
    finally:
        with _lock:
            _captures.remove(capture)


def take_recent_errors() -> str:
    """The error lines llama.cpp logged since the last call (a failure's reason)."""
    lines = [line for line in _recent_errors if line]
    _recent_errors.clear()
    return "; ".join(lines)


# --- machine ------------------------------------------------------------------------------------


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads share one core's ALUs and slow decode)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, (os.cpu_count() or 2) // 2) if (os.cpu_count() or 1) > 1 else 1
    cores: set[str] = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as fh:
                cores.add(fh.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_amx() -> bool:
    """Whether this CPU has AMX-INT8 (what the *installed build* contains is :func:`build_has_amx`)."""
    return "amx_int8" in cpu_flags()


# --- what the installed build contains ----------------------------------------------------------
#
# The AMX crash. llama-cpp-python 0.3.36 built by GCC 12 with -march=native on an AMX CPU segfaults in
# llama_decode on multi-token batches when weights sit in the AMX extra buffer (batch 1 takes an
# AVX512-VNNI path, which is why single-token decoding works). The likely cause: GCC 12's
# ``_tile_loadconfig`` intrinsic declares that it reads only 8 bytes of the 64-byte tile config, so
# the optimiser drops the stores that fill ggml's stack ``tile_config_t`` before ``ldtilecfg``; the
# tiles are then configured from a zero-filled block with only the palette byte set, and the first
# tile load faults. Similar reports: llama.cpp issue #20824 (segfault in ggml_backend_amx_mul_mat);
# ollama moved its builds to GCC 13. Not confirmed on an AMX machine by this project yet: an
# ``objdump -d libggml-cpu.so`` there should show only a zero fill and the palette byte stored
# before ``ldtilecfg``. Builds without AMX (``-mno-amx-int8``, or a CPU without it) contain no
# ``ldtilecfg`` at all and keep the safe CPU_REPACK buffers. scripts/setup.sh builds with
# clang/GCC >= 13 or with -mno-amx-int8 on such CPUs.

AMX_SAFE_GCC = 13  # first GCC whose _tile_loadconfig declares the full 64-byte read
_GCC = re.compile(rb"GCC: \([^)]*\) (\d+)\.(\d+)")
_CLANG = re.compile(rb"clang version (\d+)\.(\d+)")


@functools.lru_cache(maxsize=1)
def build_system_info() -> str:
    """``llama_print_system_info()`` of the loaded library, e.g. ``CPU : SSE3 = 1 | ... | REPACK = 1 |``."""
    init_backend()
    return (L.llama_print_system_info() or b"").decode("utf-8", "replace").strip()


def build_has_amx() -> bool:
    """Whether ggml-cpu was compiled with AMX-INT8 kernels (``AMX_INT8 = 1``)."""
    return re.search(r"\bAMX_INT8 = 1\b", build_system_info()) is not None


def cpu_library() -> Path | None:
    """The installed ggml CPU backend library (``libggml-cpu.so``), if it can be found."""
    base = Path(str(getattr(L, "_base_path", "")))
    for name in ("libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll"):
        if (base / name).is_file():
            return base / name
    return None


@functools.lru_cache(maxsize=4)
def library_compiler(path: Path | None = None) -> tuple[str, int] | None:
    """("gcc" | "clang", major version) that built a shared library, from its ELF ``.comment``
    strings (``GCC: (Debian 12.2.0-14) 12.2.0``); ``None`` where none is recorded (macOS, stripped).
    A clang-built library also carries the system GCC's crt strings, so clang wins when present."""
    lib = path or cpu_library()
    if lib is None:
        return None
    try:
        data = lib.read_bytes()
    except OSError:
        return None
    if (m := _CLANG.search(data)) is not None:
        return "clang", int(m.group(1))
    majors = [int(m.group(1)) for m in _GCC.finditer(data)]
    return ("gcc", max(majors)) if majors else None


def extra_buffers_decision(
    build_amx: bool | None = None, compiler: tuple[str, int] | None | bool = False
) -> tuple[bool, str]:
    """(use llama.cpp's extra CPU buffer types?, why). Arguments default to the installed build's.

    ``EDGE_QWEN_EXTRA_BUFFERS=0|1`` overrides. Otherwise on, except when the build contains AMX
    kernels and was compiled by GCC < 13 (or by an unknown compiler): see the note above.
    """
    forced = os.environ.get("EDGE_QWEN_EXTRA_BUFFERS", "").strip().lower()
    if forced in ("0", "1", "false", "true", "off", "on", "no", "yes"):
        return forced in ("1", "true", "on", "yes"), f"EDGE_QWEN_EXTRA_BUFFERS={forced}"
    amx = build_has_amx() if build_amx is None else build_amx
    if not amx:
        return True, "this build has no AMX kernels; the CPU repack buffers are safe"
    cc = library_compiler() if compiler is False else compiler
    if isinstance(cc, tuple) and (cc[0] == "clang" or cc[1] >= AMX_SAFE_GCC):
        return True, f"AMX kernels built by {cc[0]} {cc[1]}"
    who = f"{cc[0]} {cc[1]}" if isinstance(cc, tuple) else "an unknown compiler"
    return False, (
        f"AMX kernels built by {who}: GCC < {AMX_SAFE_GCC} miscompiles the tile config (multi-token "
        "batches crash); rebuild with scripts/setup.sh (clang/GCC >= 13, else -mno-amx-int8)"
    )


def default_extra_buffers() -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (CPU_REPACK, AMX).

    Decided from what the installed build contains and who compiled it, not from the CPU flags:
    see :func:`extra_buffers_decision`.
    """
    return extra_buffers_decision()[0]
