"""What the scheduler holds right now, as typed values: one :class:`ModelStatus` per registered
model and the :class:`Snapshot` of the whole budget. ``to_dict`` gives the JSON ``/health`` shows."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

from ..runtime.results import SlotUsage
from .planning import Entry


def process_rss() -> int:
    """This process's resident set size in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True)
class ModelStatus:
    """One registered model: resident or not, its leases and queue, its bytes, its slots."""

    name: str
    path: str
    resident: bool
    loading: bool
    pinned: bool
    busy: int  # leases out (requests queued on or running in the model)
    waiting: int  # requests waiting for their turn or for the model to be loaded
    n_ctx: int
    cache_type: str
    estimated_bytes: int
    measured_load_bytes: int | None
    idle_s: float | None
    adjustments: tuple[str, ...]
    loads: int
    slots: SlotUsage
    load_error: str | None = None  # why the last load failed (e.g. its RPC worker is down)
    media: bool = False  # loaded with a projector: chat messages may carry images and audio
    pooling: str | None = None  # "last"/"rank": an embedding model or a reranker, not a chat model

    @property
    def available(self) -> bool:
        """Whether a request can expect an answer: resident, or its last load did not fail."""
        return self.resident or self.load_error is None

    @classmethod
    def of(cls, entry: Entry, now: float) -> ModelStatus:
        settings = entry.effective or entry.settings
        resident = entry.model is not None
        usage = getattr(entry.model, "slot_usage", None)
        return cls(
            name=entry.name, path=str(entry.path), resident=resident, loading=entry.loading,
            pinned=entry.pin, busy=entry.busy, waiting=entry.waiting, n_ctx=settings.n_ctx,
            cache_type=settings.cache_type_v, estimated_bytes=entry.charged,
            measured_load_bytes=entry.measured_bytes if resident else None,
            idle_s=round(now - entry.last_used, 3) if resident else None,
            adjustments=tuple(entry.adjustments), loads=entry.loads,
            slots=usage() if resident and usage is not None else SlotUsage(),
            load_error=entry.load_error, media=settings.mmproj is not None,
            pooling=getattr(entry.model, "pooling", None) if resident else settings.pooling,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "slots"}
        data["adjustments"] = list(self.adjustments)
        data["available"] = self.available
        slots = self.slots
        data.update(slots_total=slots.slots_total, slots_busy=slots.slots_busy,
                    prompt_cache_bytes=slots.prompt_cache_bytes,
                    prompt_cache_restored=slots.prompt_cache_restored)  # fmt: skip
        return data


@dataclass(frozen=True)
class Snapshot:
    """The budget and every model, at one moment."""

    budget_bytes: int
    used_bytes: int
    peak_used_bytes: int
    process_rss_bytes: int
    models: tuple[ModelStatus, ...]

    @classmethod
    def of(cls, entries: list[Entry], budget: int, peak: int) -> Snapshot:
        now = time.monotonic()
        used = sum(e.charged for e in entries)
        return cls(
            budget_bytes=budget, used_bytes=used, peak_used_bytes=max(peak, used),
            process_rss_bytes=process_rss(), models=tuple(ModelStatus.of(e, now) for e in entries),
        )  # fmt: skip

    def model(self, name: str) -> ModelStatus:
        return next(m for m in self.models if m.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes,
            "peak_used_bytes": self.peak_used_bytes,
            "process_rss_bytes": self.process_rss_bytes,
            "models": [m.to_dict() for m in self.models],
        }
