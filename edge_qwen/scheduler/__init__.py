"""Memory planning and multi-model scheduling: estimate before loading, fit a budget or refuse clearly."""

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
from .scheduler import Scheduler

__all__ = [
    "DeviceProfile",
    "MemoryEstimate",
    "Scheduler",
    "SystemMemory",
    "device_profile",
    "device_profiles",
    "estimate_memory",
    "largest_context",
    "parse_size",
    "resolve_budget",
    "system_memory",
]
