"""The scheduler's decisions, made on estimates before llama.cpp allocates anything: the settings a
model is loaded with (its context shrunk, then its KV cache quantized, to fit what the budget
leaves), the refusal with its ways out when nothing fits, and the idle models to evict for room.
Pure: :class:`~edge_qwen.scheduler.scheduler.Scheduler` calls it with its lock held.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BudgetExceededError
from ..settings import ModelSettings
from ..sizing.estimate import MemoryEstimate, ModelShape, estimate, largest_context

MiB = 2**20


@dataclass
class Entry:
    """One registered model: its file, settings and shape, and the scheduler's bookkeeping of it."""

    name: str
    path: Path
    settings: ModelSettings
    shape: ModelShape
    pin: bool = False
    keep_alive: float | None = None
    model: Any = None
    effective: ModelSettings | None = None
    estimate: MemoryEstimate | None = None
    adjustments: list[str] = field(default_factory=list)
    loading: bool = False
    busy: int = 0  # leases out (requests queued on or running in the model)
    waiting: int = 0  # requests waiting for their turn / for the model to be resident
    next_ticket: int = 0
    serving: int = 0
    last_used: float = 0.0
    measured_bytes: int | None = None
    loads: int = 0
    freeing: int = 0  # bytes of an unloaded model the compute thread has not freed yet
    load_error: str | None = None  # why the last load failed (a worker down, a bad file), until one works

    @property
    def charged(self) -> int:
        """Bytes of the budget this model holds (while loading, and until an unload is complete)."""
        held = self.freeing
        if (self.model is not None or self.loading) and self.estimate is not None:
            held += self.estimate.total_bytes
        return held


@dataclass
class Planner:
    """Fits models into ``budget`` bytes: the context may shrink to ``min_ctx``, then the KV cache be
    quantized (f16 -> q8_0 -> q4_0) when ``allow_kv_quantization``."""

    budget: int
    min_ctx: int
    allow_kv_quantization: bool
    cpu_features: frozenset[str]

    def estimate(self, entry: Entry, settings: ModelSettings) -> MemoryEstimate:
        # with RPC workers the layers are theirs: only the host's share counts against this budget
        return estimate(entry.shape, settings, cpu_features=self.cpu_features, gpu=bool(settings.rpc))

    def capacity(self, entry: Entry, entries: Iterable[Entry]) -> tuple[int, list[Entry]]:
        """Budget left once every evictable model is gone (pinned residents stay)."""
        pinned = [e for e in entries if e is not entry and e.pin and e.charged]
        return self.budget - sum(e.charged for e in pinned), pinned

    def plan(self, entry: Entry, entries: Iterable[Entry]) -> tuple[ModelSettings, MemoryEstimate, list[str]]:
        capacity, pinned = self.capacity(entry, entries)
        wanted = entry.settings
        est = self.estimate(entry, wanted)
        if est.total_bytes <= capacity:
            return wanted, est, []
        for kv in self.kv_ladder(wanted):
            trial = dataclasses.replace(wanted, cache_type_k=kv, cache_type_v=kv) if kv else wanted
            n_ctx = largest_context(
                entry.shape, trial, capacity, cpu_features=self.cpu_features,
                minimum=self.min_ctx, maximum=wanted.n_ctx,
            )  # fmt: skip
            if n_ctx is not None:
                chosen = dataclasses.replace(trial, n_ctx=n_ctx)
                notes = [f"n_ctx {wanted.n_ctx} -> {n_ctx}"] if n_ctx < est.n_ctx else []
                if kv:
                    notes.append(f"KV cache {wanted.cache_type_k} -> {kv}")
                return chosen, self.estimate(entry, chosen), notes
        raise self.refusal(entry, capacity, pinned)

    def kv_ladder(self, settings: ModelSettings) -> list[str | None]:
        ladder: list[str | None] = [None]
        if self.allow_kv_quantization:
            order = ["f16", "q8_0", "q4_0"]
            current = order.index(settings.cache_type_v) if settings.cache_type_v in order else 0
            ladder += order[current + 1 :]
        return ladder

    def refusal(self, entry: Entry, capacity: int, pinned: list[Entry]) -> BudgetExceededError:
        smallest_kv = self.kv_ladder(entry.settings)[-1] or entry.settings.cache_type_v
        floor = dataclasses.replace(
            entry.settings, n_ctx=self.min_ctx, cache_type_k=smallest_kv, cache_type_v=smallest_kv
        )
        need = self.estimate(entry, floor)
        suggestions: list[str] = []
        tiny = largest_context(entry.shape, floor, capacity, cpu_features=self.cpu_features, minimum=256)
        if tiny is not None:
            suggestions.append(f"allow a smaller context (n_ctx {tiny} fits; min_ctx is {self.min_ctx})")
        others = need.total_bytes - need.weights_bytes
        if capacity > others:
            suggestions.append(
                f"use a smaller quantization: weights must be at most {(capacity - others) / MiB:,.0f} MiB "
                f"(these are {need.weights_bytes / MiB:,.0f} MiB)"
            )
        freed = capacity
        for other in sorted(pinned, key=lambda e: -e.charged):
            freed += other.charged
            suggestions.append(f"unpin and unload {other.name!r} (frees {other.charged / MiB:,.0f} MiB)")
            if freed >= need.total_bytes:
                break
        suggestions.append(
            f"raise the budget to at least {(self.budget - capacity + need.total_bytes) / MiB:,.0f} MiB"
        )
        what = f"model {entry.name!r} ({entry.path.name}) at n_ctx {need.n_ctx} with a {smallest_kv} KV cache"
        return BudgetExceededError(what, need.total_bytes, capacity, suggestions)

    def victims(self, entry: Entry, need: int, entries: Iterable[Entry]) -> list[Entry] | None:
        """Idle models to evict (LRU first) so ``need`` fits; None when busy models must finish first."""
        entries = list(entries)
        free = self.budget - sum(e.charged for e in entries)
        if free >= need:
            return []
        pending = sum(e.freeing for e in entries)
        if pending and free + pending >= need:
            return None  # the unloads under way make room: wait for them, evict nothing more
        free += pending
        idle = sorted(
            (
                e for e in entries
                if e is not entry and e.model is not None and not e.pin and not e.busy and not e.waiting
            ),
            key=lambda e: e.last_used,
        )  # fmt: skip
        chosen: list[Entry] = []
        for candidate in idle:
            chosen.append(candidate)
            free += candidate.charged
            if free >= need:
                return chosen
        return None
