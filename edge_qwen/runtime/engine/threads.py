"""How many threads llama.cpp should use right now, from the cores other processes leave free.

A desktop app shares the CPU. llama.cpp's threads meet at a barrier after every graph node, so one
of them losing its core to another process stalls all of them: on 2 cores with one competing busy
process, 2 threads decode at 0.33x their solo speed while 1 thread keeps 0.78x. The governor
measures what *others* use and gives llama.cpp the rest.

Signal: CPU time, not run-queue snapshots. Every ``interval`` seconds it reads the busy time of the
CPUs this process may run on (``/proc/stat`` ``cpuN`` lines: user+nice+system+irq+softirq+steal;
steal too, because a hypervisor's share is just as unavailable) and this process's own CPU time
(``/proc/self/stat`` utime+stime, all threads). ``others = (Δbusy − Δown) / Δt`` cores. An
instantaneous ``procs_running`` count would include our own spinning OpenMP workers and flicker;
time deltas integrate over the interval and subtract us exactly.

Hysteresis: drop from n threads when less than ``n − 0.5`` cores are free, rise to n+1 only when
at least ``n + 0.75`` are; a new count must be seen on two consecutive readings. Between readings
``threads(now)`` is one comparison, so it can be called before every decode step; with nothing else
running it returns the maximum. A pinned count (``--threads N``) is returned as is.

Where ``/proc`` does not exist (macOS, Windows) the maximum is returned.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DROP_BELOW = 0.5  # drop from n when free < n - DROP_BELOW
RISE_ABOVE = 0.75  # rise to n+1 when free >= n + RISE_ABOVE
CONFIRM = 2  # consecutive readings that must agree before the count changes


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds: busy time of our CPUs, and this process's own time."""

    busy_s: float
    own_s: float
    n_cpus: int


def read_cpu_sample(cpus: Iterable[int] | None = None, root: str | Path = "/") -> CpuSample | None:
    """A :class:`CpuSample` from ``/proc`` (``None`` where there is none); ``root`` is for tests."""
    base = Path(root)
    try:
        wanted = {f"cpu{c}" for c in (cpus if cpus is not None else os.sched_getaffinity(0))}
        stat = (base / "proc/stat").read_text()
        own = (base / "proc/self/stat").read_text()
    except (OSError, AttributeError):
        return None
    tick = _clock_tick()
    busy = 0
    n = 0
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            # user nice system idle iowait irq softirq steal ...
            v = [int(x) for x in fields[1:9]] + [0] * 8
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
            n += 1
    if n == 0:
        return None
    # /proc/self/stat: the command may hold spaces; fields after ")" start at state (field 3)
    after = own.rsplit(")", 1)[1].split()
    own_ticks = int(after[11]) + int(after[12])  # utime (14), stime (15)
    return CpuSample(busy / tick, own_ticks / tick, n)


def _clock_tick() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 100


class ThreadGovernor:
    """``gov.threads(now)`` -> the thread count for the next step (``now``: ``time.monotonic()``).

    Args:
        max_threads: the ceiling, normally the physical cores (``_llama.physical_cores()``).
        pinned: a fixed count (``--threads N``); the governor then never reads anything.
        interval: seconds between readings of ``/proc`` (calls in between are free).
        sampler: where readings come from (tests pass a fake); ``None`` disables governing.
    """

    def __init__(
        self,
        max_threads: int,
        *,
        pinned: int | None = None,
        interval: float = 0.5,
        sampler: Callable[[], CpuSample | None] | None = read_cpu_sample,
    ) -> None:
        self.max_threads = max(1, int(max_threads))
        self.pinned = pinned
        self.interval = interval
        self._sampler = sampler
        self._current = self.max_threads if pinned is None else max(1, int(pinned))
        self._last: tuple[float, CpuSample] | None = None
        self._next_read = float("-inf")
        self._pending: tuple[int, int] | None = None  # (candidate, times seen)
        self.others_cores = 0.0  # what other processes used over the last interval

    def threads(self, now: float) -> int:
        if self.pinned is not None or self._sampler is None or now < self._next_read:
            return self._current
        self._next_read = now + self.interval
        sample = self._sampler()
        if sample is None:
            return self._current
        previous, self._last = self._last, (now, sample)
        if previous is None or now <= previous[0]:
            return self._current
        elapsed = now - previous[0]
        others = (sample.busy_s - previous[1].busy_s - (sample.own_s - previous[1].own_s)) / elapsed
        self.others_cores = max(0.0, others)
        free = min(float(self.max_threads), sample.n_cpus - self.others_cores)
        self._consider(self._target(free))
        return self._current

    def _target(self, free: float) -> int:
        n = self._current
        if free < n - DROP_BELOW:
            return max(1, min(n - 1, round(free)))
        if n < self.max_threads and free >= n + RISE_ABOVE:
            return min(self.max_threads, int(free + 1 - RISE_ABOVE))
        return n

    def _consider(self, target: int) -> None:
        if target == self._current:
            self._pending = None
            return
        seen = self._pending[1] + 1 if self._pending and self._pending[0] == target else 1
        self._pending = (target, seen)
        if seen >= CONFIRM:
            self._current, self._pending = target, None
