"""Multi-model scheduling under a memory budget: load, evict and refuse clearly, using the
estimates of :mod:`edge_qwen.sizing`."""

from __future__ import annotations

from .scheduler import Scheduler

__all__ = ["Scheduler"]
