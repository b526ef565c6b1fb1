"""Unloading never blocks the scheduler: the lock that ``/health`` and every lease take is never held
while waiting for the compute thread, and freed memory is charged until it really is free."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from edge_qwen.runtime.results import SlotUsage
from edge_qwen.scheduler import Scheduler
from edge_qwen.sizing import estimate_memory

FREE_DELAY = 1.0  # the compute thread is busy with another model's step for this long


class SlowToFreeModel:
    """Stands in for Model: close(wait=False) returns at once, the memory goes later."""

    loaded: list[str] = []

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        SlowToFreeModel.loaded.append(name)

    def close(self, *, wait: bool = True, on_freed: Any = None) -> None:
        assert not wait, "the scheduler waited for the compute thread"
        self.closed = True
        threading.Timer(FREE_DELAY, on_freed).start()

    def slot_usage(self) -> SlotUsage:
        return SlotUsage(slots_total=4)


def test_evicting_never_holds_the_lock_and_loads_only_once_memory_is_free(real_gguf: Path) -> None:
    one = estimate_memory(real_gguf, n_ctx=2048).total_bytes
    loads: list[tuple[str, float]] = []

    def loader(path: Path, **settings: Any) -> SlowToFreeModel:
        loads.append((str(settings["n_ctx"]), time.monotonic()))
        return SlowToFreeModel(str(settings["n_ctx"]))

    with Scheduler(budget=int(one * 1.5), loader=loader) as s:
        s.add("a", real_gguf, n_ctx=2048)
        s.add("b", real_gguf, n_ctx=2048)
        s.load("a")
        started = time.monotonic()
        worker = threading.Thread(target=s.load, args=("b",))
        worker.start()
        time.sleep(0.2)
        t = time.monotonic()
        snap = s.snapshot()  # what /health does, while a's memory is still being freed
        assert time.monotonic() - t < 0.1
        assert [m.resident for m in snap.models] == [False, False]
        assert snap.used_bytes >= one  # a's bytes stay charged until freed
        worker.join(timeout=10)
        assert loads[-1][1] - started >= FREE_DELAY * 0.9  # b loaded only after a was freed
        assert s.snapshot().model("b").slots.slots_total == 4
