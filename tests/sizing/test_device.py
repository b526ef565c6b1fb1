"""Device memory: sizes, cgroup limits from a fake /proc + /sys tree, and the profiles data file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_qwen.errors import ConfigError
from edge_qwen.sizing.device import (
    automatic_budget,
    device_profile,
    device_profiles,
    headroom,
    parse_size,
    resolve_budget,
    system_memory,
)

MiB, GiB = 2**20, 2**30


def fake_root(tmp_path: Path, *, cgroup: str | None = None, limit: str = "max", current: int = 0) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text("MemTotal:       16000000 kB\nMemAvailable:   12000000 kB\n")
    (tmp_path / "proc/self/cgroup").write_text(f"0::{cgroup or '/'}\n")
    if cgroup:
        base = tmp_path / "sys/fs/cgroup" / cgroup.lstrip("/")
        base.mkdir(parents=True)
        (base / "memory.max").write_text(limit + "\n")
        (base / "memory.current").write_text(f"{current}\n")
        (base / "memory.stat").write_text(f"anon {current}\ninactive_file {100 * MiB}\n")
    return tmp_path


def test_parse_size() -> None:
    assert parse_size("3.5GB") == 3_500_000_000
    assert parse_size("512MiB") == 512 * MiB
    assert parse_size("2 GiB") == 2 * GiB
    assert parse_size(1024) == 1024
    with pytest.raises(ConfigError, match="3.5GB"):
        parse_size("lots")


def test_meminfo_without_cgroup_limit(tmp_path: Path) -> None:
    mem = system_memory(fake_root(tmp_path))
    assert (mem.total_bytes, mem.available_bytes, mem.source) == (
        16_000_000 * 1024,
        12_000_000 * 1024,
        "meminfo",
    )


def test_cgroup_v2_limit_wins(tmp_path: Path) -> None:
    root = fake_root(tmp_path, cgroup="/app.slice/edge", limit=str(2 * GiB), current=1 * GiB)
    mem = system_memory(root)
    assert mem.total_bytes == 2 * GiB
    assert mem.available_bytes == 1 * GiB + 100 * MiB  # inactive page cache is reclaimable
    assert mem.source == "cgroup v2 /app.slice/edge"


def test_automatic_budget_keeps_headroom(tmp_path: Path) -> None:
    mem = system_memory(fake_root(tmp_path))
    assert automatic_budget(mem) == mem.available_bytes - headroom(mem.total_bytes)
    assert (
        headroom(4 * GiB) == int(0.4 * GiB)
        and headroom(1 * GiB) == 256 * MiB
        and headroom(256 * GiB) == 2 * GiB
    )
    assert resolve_budget("3GiB", mem) == 3 * GiB
    assert resolve_budget(None, system_memory()) > 0  # this machine


def test_profiles_come_from_the_data_file() -> None:
    profiles = device_profiles()
    assert {"raspberry-pi-4-4gb", "raspberry-pi-5-8gb", "laptop-8gb", "laptop-16gb", "gpu-desktop"} <= set(
        profiles
    )
    pi4 = device_profile("raspberry-pi-4-4gb")
    assert (
        pi4.ram_bytes == 4 * GiB
        and "dotprod" not in pi4.cpu_features
        and 2 * GiB < pi4.budget_bytes < 4 * GiB
    )
    assert "dotprod" in device_profile("raspberry-pi-5-8gb").cpu_features
    assert device_profile("gpu-desktop").vram_budget_bytes > 0
    with pytest.raises(ConfigError, match="raspberry-pi-4-4gb"):
        device_profile("toaster")
