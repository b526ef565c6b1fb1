"""How much memory this process may use: the OS's numbers with cgroup limits honoured, budgets,
and device profiles (edge_qwen/data/devices.yaml) for planning on another machine.

Why cgroups: a container or a desktop app's sandbox may be limited far below the machine's RAM;
/proc/meminfo reports the machine, and exceeding the cgroup's ``memory.max`` invokes the OOM
killer on us even while MemAvailable looks comfortable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._data import read_data
from ..errors import ConfigError
from .speed import Throughput

MiB = 2**20
GiB = 2**30
_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")

# headroom kept free under an automatic budget: 10% of total memory, at least 256 MiB, at most 2 GiB
HEADROOM_FRACTION = 0.10
HEADROOM_MIN = 256 * MiB
HEADROOM_MAX = 2 * GiB


def parse_size(value: str | int | float) -> int:
    """``"3.5GB"`` -> 3_500_000_000, ``"512MiB"`` -> 536_870_912, ``1024`` -> 1024 (GB is 10^9, GiB 2^30)."""
    if isinstance(value, (int, float)):
        return int(value)
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigError(
            f"cannot read {value!r} as a size; write e.g. 3.5GB, 3500MB, 3.25GiB or a byte count"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def headroom(total: int) -> int:
    """Memory an automatic budget leaves alone.

    The kernel starts reclaiming page cache and, with swap, swapping when free memory approaches its
    watermarks; the rest of the system (a desktop, the shell, the app embedding us) also grows. 10%
    of total keeps us clear of that on a 4 GB Pi (~410 MiB) without wasting GiBs on a big desktop.
    """
    return int(min(max(total * HEADROOM_FRACTION, HEADROOM_MIN), HEADROOM_MAX))


@dataclass(frozen=True)
class SystemMemory:
    """Total and available bytes for this process, and what limited them."""

    total_bytes: int
    available_bytes: int
    source: str  # "meminfo", "cgroup v2 /path", "cgroup v1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total_bytes,
            "available_bytes": self.available_bytes,
            "source": self.source,
        }


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= 2**60 else value  # v1 spells "unlimited" as a huge number


def _meminfo(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _inactive_file(stat_path: Path) -> int:
    """Reclaimable page cache a cgroup is charged for (counts as available)."""
    try:
        for line in stat_path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_limit(root: Path) -> tuple[int, int, str] | None:
    """(limit, available under it, description) from cgroup v2 (walking up the tree) or v1."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    v2 = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
    best: tuple[int, int, str] | None = None
    if v2 is not None:
        rel = Path(v2.lstrip("/"))
        for part in [rel, *rel.parents]:
            base = root / "sys/fs/cgroup" / part
            limit = _read_int(base / "memory.max")
            if limit is None:
                continue
            used = (_read_int(base / "memory.current") or 0) - _inactive_file(base / "memory.stat")
            free = max(0, limit - max(0, used))
            if best is None or free < best[1]:
                best = (limit, free, f"cgroup v2 /{part}")
    v1 = root / "sys/fs/cgroup/memory"
    limit = _read_int(v1 / "memory.limit_in_bytes")
    if limit is not None:
        used = (_read_int(v1 / "memory.usage_in_bytes") or 0) - _inactive_file(v1 / "memory.stat")
        free = max(0, limit - max(0, used))
        if best is None or free < best[1]:
            best = (limit, free, "cgroup v1")
    return best


def system_memory(root: str | Path = "/") -> SystemMemory:
    """Total/available memory for this process: /proc/meminfo, tightened by any cgroup limit.

    ``root`` lets tests point at a fake /proc and /sys tree.
    """
    base = Path(root)
    info = _meminfo(base)
    total = info.get("MemTotal", 0)
    available = info.get("MemAvailable", info.get("MemFree", 0))
    source = "meminfo"
    cg = _cgroup_limit(base)
    if cg is not None:
        limit, free, where = cg
        if total == 0 or limit < total:
            total, source = limit, where
        if free < available or available == 0:
            available, source = free, where
    return SystemMemory(total, available, source)


def default_parallel(cores: int, memory: SystemMemory | None = None) -> int:
    """How many sequences a served model decodes together by default.

    On a CPU, decode is bound by memory bandwidth: batching P sequences costs little more per step
    than one, so aggregate speed grows with P (measured on 2 cores: 1.9x at 4, 2.8x at 8). Each
    sequence costs only a row of logits (~0.6 MB for Qwen's 152k vocabulary) since the KV cells are
    shared. So: 4 on any desktop CPU, 8 with 8+ cores and 8 GB, 2 below 2 GB (a small board).
    """
    mem = memory or system_memory()
    if mem.total_bytes and mem.total_bytes < 2 * 2**30:
        return 2
    if cores >= 8 and mem.total_bytes >= 8 * 2**30:
        return 8
    return 4


def automatic_budget(memory: SystemMemory | None = None) -> int:
    """Available memory minus :func:`headroom`."""
    mem = memory or system_memory()
    return max(0, mem.available_bytes - headroom(mem.total_bytes))


def resolve_budget(budget: str | int | float | None, memory: SystemMemory | None = None) -> int:
    """An explicit budget (``"3.5GB"``, bytes) or, for ``None``, the automatic one."""
    if budget is None:
        return automatic_budget(memory)
    value = parse_size(budget)
    if value <= 0:
        raise ConfigError(f"the memory budget must be positive, got {budget!r}")
    return value


@dataclass(frozen=True)
class DeviceProfile:
    """A machine to plan for (from edge_qwen/data/devices.yaml)."""

    name: str
    description: str
    ram_bytes: int
    os_reserved_bytes: int
    cpu_features: frozenset[str]
    cores: int
    vram_bytes: int = 0
    vram_reserved_bytes: int = 0
    throughput: Throughput | None = None  # effective llama.cpp CPU rates (decode_gb_s, prefill_gflop_s)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def budget_bytes(self) -> int:
        """RAM left for models: installed minus the OS's share minus :func:`headroom`."""
        return max(0, self.ram_bytes - self.os_reserved_bytes - headroom(self.ram_bytes))

    @property
    def vram_budget_bytes(self) -> int:
        return max(0, self.vram_bytes - self.vram_reserved_bytes)


def device_profiles() -> dict[str, DeviceProfile]:
    """Every profile of the data file, by name."""
    raw: dict[str, dict[str, Any]] = yaml.safe_load(read_data("devices.yaml"))
    known = {
        "description",
        "ram_bytes",
        "os_reserved_bytes",
        "cpu_features",
        "cores",
        "vram_bytes",
        "vram_reserved_bytes",
        "decode_gb_s",
        "prefill_gflop_s",
        "speed_basis",
    }
    return {
        name: DeviceProfile(
            name=name,
            description=str(row.get("description", "")),
            ram_bytes=int(row["ram_bytes"]),
            os_reserved_bytes=int(row.get("os_reserved_bytes", 0)),
            cpu_features=frozenset(row.get("cpu_features", [])),
            cores=int(row.get("cores", 1)),
            vram_bytes=int(row.get("vram_bytes", 0)),
            vram_reserved_bytes=int(row.get("vram_reserved_bytes", 0)),
            throughput=_throughput(name, row),
            extra={k: v for k, v in row.items() if k not in known},
        )
        for name, row in raw.items()
    }


def _throughput(name: str, row: dict[str, Any]) -> Throughput | None:
    if "decode_gb_s" not in row:
        return None
    return Throughput(
        decode_bytes_s=float(row["decode_gb_s"]) * 1e9,
        prefill_flop_s=float(row.get("prefill_gflop_s", 0)) * 1e9,
        basis=f"{name}: {row.get('speed_basis', 'estimate')}",
    )


def device_profile(name: str) -> DeviceProfile:
    profiles = device_profiles()
    if name not in profiles:
        raise ConfigError(f"no device profile {name!r}; choose one of {', '.join(sorted(profiles))}")
    return profiles[name]
