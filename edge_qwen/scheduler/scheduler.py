"""Several models under one memory budget: load on demand, evict idle models LRU, fit or refuse.

Every decision is made on :mod:`estimates <edge_qwen.sizing.estimate>` *before* llama.cpp
allocates anything — the budget is charged a model's estimate while it loads and while it is
resident, so concurrent loads cannot overshoot it together.

Requests for one model are served in arrival order (a ticket per request; a request passes its
turn on as soon as it has been queued on the model, whose step loop then runs up to ``parallel``
of them together). A model with a request
queued or running is never evicted; pinned models are never evicted; an idle model whose
``keep_alive`` ran out is unloaded by a background reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, QueueFullError, QueueTimeoutError
from ..gguf_header import read_header
from ..registry import resolve_model
from ..runtime.results import GenerationChunk, GenerationResult
from ..settings import ModelSettings, settings_from
from ..sizing.device import resolve_budget
from ..sizing.estimate import (
    MemoryEstimate,
    host_cpu_features,
    model_shape,
)
from .planning import Entry, Planner
from .snapshot import Snapshot, process_rss

MiB = 2**20
Loader = Callable[..., Any]  # Model.load(path, **settings) -> Model


def _default_loader(path: Path, **settings: Any) -> Any:
    from ..runtime.model import Model

    return Model.load(path, **settings)


class Scheduler:
    """Hold several GGUF models under one RAM budget. ``add`` names them; requests load them.

    ``budget``: bytes, a size string (``"3.5GB"``), or None for available memory minus headroom.
    ``min_ctx``: the smallest context a model may be shrunk to before KV quantization / refusal.
    ``max_queue``: requests per model (running + waiting) before :class:`QueueFullError`.
    ``queue_timeout``: seconds a request may wait for its turn and for memory (None: forever).
    """

    def __init__(
        self,
        budget: str | int | float | None = None,
        *,
        min_ctx: int = 512,
        allow_kv_quantization: bool = True,
        max_queue: int = 16,
        queue_timeout: float | None = None,
        cpu_features: frozenset[str] | None = None,
        loader: Loader | None = None,
    ) -> None:
        self.budget = resolve_budget(budget)
        self.min_ctx = min_ctx
        self.allow_kv_quantization = allow_kv_quantization
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.cpu_features = host_cpu_features() if cpu_features is None else cpu_features
        self._loader = loader or _default_loader
        self._entries: dict[str, Entry] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._peak_charged = 0
        self._reaper: threading.Thread | None = None

    # -- registry --------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        path: str | Path,
        *,
        pin: bool = False,
        keep_alive: float | None = None,
        **settings: Any,
    ) -> None:
        """Register a model under ``name`` (nothing is loaded yet): ``path`` is a GGUF or a registry
        name[:quant] already pulled. Settings: ModelSettings fields; ``adapters={"sql":
        "sql-lora.gguf"}`` adds LoRA adapters, counted in its memory estimate."""
        path = resolve_model(path)
        config = settings_from("Scheduler.add", settings)
        if config.queue_timeout is None and self.queue_timeout is not None:
            config = dataclasses.replace(config, queue_timeout=self.queue_timeout)
        shape = model_shape(read_header(path))
        with self._cond:
            if name in self._entries:
                raise ConfigError(
                    f"a model named {name!r} is already registered; pick another name or remove it"
                )
            self._entries[name] = Entry(name, Path(path), config, shape, pin=pin, keep_alive=keep_alive)
            if keep_alive is not None and self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="edge-qwen:reaper", daemon=True)
                self._reaper.start()

    @property
    def _planner(self) -> Planner:
        return Planner(self.budget, self.min_ctx, self.allow_kv_quantization, self.cpu_features)

    def plan(self, name: str) -> tuple[ModelSettings, MemoryEstimate, list[str]]:
        """Settings the model would be loaded with now (shrunk / KV-quantized to fit), or raise."""
        with self._cond:
            return self._planner.plan(self._entry(name), self._entries.values())

    def _entry(self, name: str) -> Entry:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"no model named {name!r} (registered: {known}); add it with Scheduler.add")
        return entry

    # -- residency -------------------------------------------------------------------------------

    def _unload_locked(self, entry: Entry) -> None:
        """Start unloading; never waits. The compute thread frees the memory after its current step,
        and the bytes stay charged until then — so a load that needs them waits on the condition,
        not on the compute thread with the lock held (that would stall ``/health`` and every lease)."""
        model, entry.model = entry.model, None
        entry.effective = None
        if model is not None:
            bytes_ = entry.estimate.total_bytes if entry.estimate is not None else 0
            entry.freeing += bytes_
            model.close(wait=False, on_freed=lambda: self._freed(entry, bytes_))
        self._cond.notify_all()

    def _freed(self, entry: Entry, bytes_: int) -> None:
        with self._cond:
            entry.freeing -= bytes_
            self._cond.notify_all()

    def _drop_lost_locked(self, entry: Entry) -> None:
        """A resident model that stopped for good (an RPC worker it uses died mid-computation) is
        unloaded, with the reason kept as its load error: /health shows it unavailable."""
        lost = getattr(entry.model, "lost", None)
        if lost is not None:
            entry.load_error = f"{type(lost).__name__}: {lost}"
            self._unload_locked(entry)

    def _ensure_resident(self, entry: Entry, deadline: float | None) -> None:
        """With the lock held and the entry's turn: make its model resident (may wait, evict, load)."""
        self._drop_lost_locked(entry)
        while entry.model is None:
            if not entry.loading:
                settings, est, notes = self._planner.plan(entry, self._entries.values())
                victims = self._planner.victims(entry, est.total_bytes, self._entries.values())
                if victims:  # start unloading them; their bytes count until the compute thread freed them
                    for victim in victims:
                        self._unload_locked(victim)
                    continue
                if victims is not None:
                    self._load_locked(entry, settings, est, notes)
                    continue
            self._wait(deadline)

    def _load_locked(
        self, entry: Entry, settings: ModelSettings, est: MemoryEstimate, notes: list[str]
    ) -> None:
        entry.loading, entry.estimate, entry.effective, entry.adjustments = True, est, settings, notes
        self._peak_charged = max(self._peak_charged, sum(e.charged for e in self._entries.values()))
        self._cond.release()
        failed: str | None = None
        try:
            before = process_rss()
            model = self._loader(entry.path, **dataclasses.asdict(settings))
            measured = process_rss() - before
        except Exception as exc:
            failed = f"{type(exc).__name__}: {exc}"  # shown in /health until a load succeeds
            raise
        finally:
            self._cond.acquire()
            entry.loading, entry.load_error = False, failed
            self._cond.notify_all()
        entry.model, entry.measured_bytes = model, measured
        entry.loads += 1
        entry.last_used = time.monotonic()

    def _wait(self, deadline: float | None) -> None:
        if self._closed:
            raise ConfigError("the scheduler was closed; create a new one")
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise QueueTimeoutError(
                "the request waited longer than its queue timeout for its turn or for memory; retry later, "
                "raise queue_timeout, or give the scheduler a larger budget"
            )
        self._cond.wait(remaining)

    # -- leases ----------------------------------------------------------------------------------

    def _acquire(self, name: str, timeout: float | None) -> tuple[Entry, Any]:
        """Wait for this request's turn and a resident model; the caller must then submit and _advance."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            entry = self._entry(name)
            if entry.busy + entry.waiting >= self.max_queue:
                raise QueueFullError(
                    f"{entry.busy + entry.waiting} requests are already queued for {name!r} (max_queue="
                    f"{self.max_queue}); retry later or create the Scheduler with a larger max_queue"
                )
            ticket = entry.next_ticket
            entry.next_ticket += 1
            entry.waiting += 1
            try:
                while entry.serving != ticket:
                    self._wait(deadline)
                try:
                    self._ensure_resident(entry, deadline)
                except BaseException:
                    entry.serving += 1  # give the turn away
                    self._cond.notify_all()
                    raise
                entry.busy += 1
                return entry, entry.model
            finally:
                entry.waiting -= 1

    def _advance(self, entry: Entry) -> None:
        """The request is queued on the model: the next ticket may go."""
        with self._cond:
            entry.serving += 1
            self._cond.notify_all()

    def _release(self, entry: Entry) -> None:
        with self._cond:
            entry.busy -= 1
            entry.last_used = time.monotonic()
            self._cond.notify_all()

    @contextlib.contextmanager
    def lease(self, name: str, timeout: float | None = None) -> Iterator[Any]:
        """The resident model, held busy (not evictable) for the block. Requests made on it inside
        the block are in this lease's FIFO turn."""
        entry, model = self._acquire(name, self.queue_timeout if timeout is None else timeout)
        try:
            self._advance(entry)
            yield model
        finally:
            self._release(entry)

    # -- requests (the runtime's API, through the scheduler) ------------------------------------

    def _stream(self, name: str, make: Callable[[Any], Any]) -> Iterator[GenerationChunk]:
        entry, model = self._acquire(name, self.queue_timeout)
        try:
            try:
                stream = make(model)
            finally:
                self._advance(entry)
            with stream:
                yield from stream
        finally:
            self._release(entry)

    def stream(self, name: str, prompt: str | Sequence[int], **sampling: Any) -> Iterator[GenerationChunk]:
        return self._stream(name, lambda m: m.stream(prompt, **sampling))

    def chat_stream(
        self, name: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> Iterator[GenerationChunk]:
        return self._stream(name, lambda m: m.chat_stream(messages, **kwargs))

    def generate(self, name: str, prompt: str | Sequence[int], **sampling: Any) -> GenerationResult:
        return _collect(self.stream(name, prompt, **sampling))

    def chat(self, name: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> GenerationResult:
        return _collect(self.chat_stream(name, messages, **kwargs))

    async def _acquire_async(self, name: str) -> tuple[Entry, Any]:
        """``_acquire`` on a worker thread. If the awaiting task is cancelled while the thread still
        waits, the turn and the model it later obtains are handed straight back (else they leak and
        every later request for the model waits for its timeout)."""
        pending = asyncio.get_running_loop().run_in_executor(None, self._acquire, name, self.queue_timeout)
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            pending.add_done_callback(self._hand_back)
            raise

    def _hand_back(self, acquired: asyncio.Future[tuple[Entry, Any]]) -> None:
        if not acquired.cancelled() and acquired.exception() is None:
            entry, _ = acquired.result()
            self._advance(entry)
            self._release(entry)

    async def _astream(self, name: str, make: Callable[[Any], Any]) -> AsyncIterator[GenerationChunk]:
        entry, model = await self._acquire_async(name)
        try:
            try:
                stream = make(model)
                first = await stream.__anext__()  # submits the request to the model's queue
            finally:
                self._advance(entry)
            yield first
            async for chunk in stream:
                yield chunk
        except StopAsyncIteration:
            return
        finally:
            self._release(entry)

    def astream(
        self, name: str, prompt: str | Sequence[int], **sampling: Any
    ) -> AsyncIterator[GenerationChunk]:
        return self._astream(name, lambda m: m.astream(prompt, **sampling))

    def achat_stream(
        self, name: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> AsyncIterator[GenerationChunk]:
        return self._astream(name, lambda m: m.achat_stream(messages, **kwargs))

    async def agenerate(self, name: str, prompt: str | Sequence[int], **sampling: Any) -> GenerationResult:
        return await _acollect(self.astream(name, prompt, **sampling))

    async def achat(
        self, name: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> GenerationResult:
        return await _acollect(self.achat_stream(name, messages, **kwargs))

    # -- explicit control ------------------------------------------------------------------------

    def load(self, name: str, timeout: float | None = None) -> None:
        """Make ``name`` resident now (evicting idle models as needed)."""
        with self.lease(name, timeout):
            pass

    def unload(self, name: str) -> bool:
        """Unload ``name`` if it is resident and idle; False when it is busy or not loaded."""
        with self._cond:
            entry = self._entry(name)
            if entry.model is None or entry.busy or entry.waiting:
                return False
            self._unload_locked(entry)
            return True

    def _reap(self) -> None:
        """Unload idle models whose keep_alive has run out."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for e in self._entries.values():
                    expired = e.keep_alive is not None and now - e.last_used >= e.keep_alive
                    if e.model is not None and expired and not e.busy and not e.waiting and not e.pin:
                        self._unload_locked(e)
                self._cond.wait(0.25)

    def snapshot(self) -> Snapshot:
        """Resident models with estimated and measured bytes, queue depths, and budget use."""
        with self._cond:
            for entry in self._entries.values():
                self._drop_lost_locked(entry)
            return Snapshot.of(list(self._entries.values()), self.budget, self._peak_charged)

    def close(self, timeout: float | None = None) -> list[str]:
        """Unload every model (waiting requests fail), then wait until their memory is freed.

        Returns the models still being freed after ``timeout`` seconds (none when it is None: wait for
        all). A model stays busy when llama.cpp does not return from its step, e.g. waiting on an RPC
        worker that stopped answering; its memory goes when the process ends.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closed = True
            for entry in self._entries.values():
                if entry.model is not None:
                    self._unload_locked(entry)
            self._cond.notify_all()
            while any(e.freeing for e in self._entries.values()):
                left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if left <= 0:
                    break
                self._cond.wait(left)
            return [name for name, e in self._entries.items() if e.freeing]

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _collect(chunks: Iterator[GenerationChunk]) -> GenerationResult:
    from ..runtime.results import ResultBuilder

    return ResultBuilder().extend(chunks)


async def _acollect(chunks: AsyncIterator[GenerationChunk]) -> GenerationResult:
    from ..runtime.results import ResultBuilder

    builder = ResultBuilder()
    async for chunk in chunks:
        builder.add(chunk)
    return builder.result()
