"""How many bytes a model takes, and where: the memory estimator (weights, repack, KV, compute,
companions and projectors), this machine's memory and device profiles, and GPU offload planning.
Below the runtime and the scheduler, which both ask it; it imports neither."""

from __future__ import annotations

from .device import (
    DeviceProfile,
    SystemMemory,
    device_profile,
    device_profiles,
    parse_size,
    resolve_budget,
    system_memory,
)
from .estimate import MemoryEstimate, estimate_memory, largest_context

__all__ = [
    "DeviceProfile",
    "MemoryEstimate",
    "SystemMemory",
    "device_profile",
    "device_profiles",
    "estimate_memory",
    "largest_context",
    "parse_size",
    "resolve_budget",
    "system_memory",
]
