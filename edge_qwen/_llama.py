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
import os
import threading
from collections.abc import Callable, Iterator
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
    if level == GGML_LOG_LEVEL_ERROR:
        _recent_errors.append(line.strip())
    for capture in list(_captures):
        capture._add(level, line)
    if os.environ.get("EDGE_QWEN_LLAMA_LOG"):
        os.write(2, text)


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
    return "amx_int8" in cpu_flags()


def default_extra_buffers() -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types.

    Off on CPUs with AMX: the AMX mat-mul of llama-cpp-python 0.3.36 segfaults in ``llama_decode``
    on multi-token batches (seen on this project's machines) and decodes slower; on elsewhere.
    """
    return not has_amx()
