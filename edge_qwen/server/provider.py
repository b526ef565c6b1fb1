"""How the server reaches models: a small interface, so the memory-budget scheduler plugs in.

The server never holds a :class:`~edge_qwen.runtime.model.Model` beyond one request. It asks a
provider for a *lease* (an async context manager yielding a loaded model), generates, and lets the
lease go; a scheduler can then evict, queue or refuse (``QueueTimeoutError`` → 503). ``snapshot()``
feeds ``/health`` and ``/metrics``.

:class:`SchedulerProvider` is the real one: the memory-budget :class:`~edge_qwen.scheduler.Scheduler`
(load on demand, LRU eviction, FIFO turns, max queue and queue timeout). :class:`StaticProvider`
serves models loaded up front, with no budget and no eviction, for embedding the app around
:class:`~edge_qwen.runtime.model.Model` objects one already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UnknownModelError
from ..runtime.results import SlotUsage
from ..scheduler.snapshot import ModelStatus

if TYPE_CHECKING:
    from ..runtime.model import Model
    from ..scheduler import Scheduler


@dataclass(frozen=True)
class ServedModel:
    """A model as ``/health`` shows it: the scheduler's status of it (a static model: its few facts)
    and how many requests hold or await it."""

    name: str
    path: str
    resident: bool
    n_ctx: int
    in_flight: int
    slots: SlotUsage
    status: ModelStatus | None = None
    media: bool = False
    pooling: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.status is not None:
            return {**self.status.to_dict(), "in_flight": self.in_flight}
        facts = {"name": self.name, "path": self.path, "resident": self.resident, "n_ctx": self.n_ctx,
                 "media": self.media, "pooling": self.pooling}  # fmt: skip
        return {**facts, "in_flight": self.in_flight, **asdict(self.slots)}


@dataclass(frozen=True)
class MemoryUse:
    budget_bytes: int | None = None  # None: no budget (models loaded up front)
    used_bytes: int | None = None
    peak_used_bytes: int | None = None


@dataclass(frozen=True)
class ServerSnapshot:
    """What ``/health`` and ``/metrics`` report, at one moment."""

    models: tuple[ServedModel, ...]
    memory: MemoryUse
    queue_depth: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [m.to_dict() for m in self.models],
            "memory": asdict(self.memory),
            "queue_depth": self.queue_depth,
        }


class ModelProvider(Protocol):
    """What the server needs from whoever owns the models."""

    def names(self) -> list[str]:
        """Model names a request may ask for (``GET /v1/models``)."""
        ...

    def lease(self, name: str) -> contextlib.AbstractAsyncContextManager[Model]:
        """A loaded model for one request; raises UnknownModelError for a name not in :meth:`names`."""
        ...

    def snapshot(self) -> ServerSnapshot:
        """The served models, the memory budget's use and the queue depth, now."""
        ...

    def close(self, timeout: float | None = None) -> list[str]:
        """Free every model (server shutdown); the names of those still busy after ``timeout`` s."""
        ...


class AdapterView:
    """A served ``BASE:NAME``: the base model, with the adapter set put into every request."""

    def __init__(self, model: Model, adapters: Mapping[str, float]) -> None:
        self._model = model
        self._adapters = dict(adapters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def prepare_chat(self, messages: Any, **kwargs: Any) -> Any:
        return self._model.prepare_chat(messages, adapters=self._adapters, **kwargs)

    def prepare_completion(self, prompt: Any, **kwargs: Any) -> Any:
        return self._model.prepare_completion(prompt, adapters=self._adapters, **kwargs)


Routes = Mapping[str, tuple[str, Mapping[str, float]]]  # "BASE:NAME" -> (base model, {adapter: scale})


def model_name(path: str | os.PathLike[str]) -> str:
    """The API name of a GGUF file: its file name without ``.gguf``."""
    name = Path(path).name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def unknown_model(name: str, known: list[str]) -> UnknownModelError:
    return UnknownModelError(
        f"model {name!r} is not served here; use one of {known} (GET /v1/models lists them)"
    )


class StaticProvider:
    """Models loaded once and kept resident; counts requests in flight for the snapshot."""

    def __init__(self, models: Mapping[str, Model], routes: Routes | None = None) -> None:
        self._models = dict(models)
        self._routes = dict(routes or {})
        self._in_flight = dict.fromkeys(self._models, 0)

    def names(self) -> list[str]:
        return list(self._models) + list(self._routes)

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Model]:
        base, adapters = self._routes.get(name, (name, {}))
        model = self._models.get(base)
        if model is None:
            raise unknown_model(name, self.names())
        self._in_flight[base] += 1
        try:
            yield AdapterView(model, adapters) if adapters else model  # type: ignore[misc]
        finally:
            self._in_flight[base] -= 1

    def snapshot(self) -> ServerSnapshot:
        models = tuple(
            ServedModel(
                name=name, path=str(model.path), resident=not model.closed, n_ctx=model.n_ctx,
                in_flight=self._in_flight[name], slots=SlotUsage() if model.closed else model.slot_usage(),
                media=bool(model.mmproj), pooling=model.pooling,
            )  # fmt: skip
            for name, model in self._models.items()
        )
        waiting = sum(max(0, n - 1) for n in self._in_flight.values())
        return ServerSnapshot(models, MemoryUse(), waiting)

    def close(self, timeout: float | None = None) -> list[str]:
        for model in self._models.values():
            model.close()
        return []


class SchedulerProvider:
    """Leases from the memory-budget scheduler.

    The scheduler waits for a request's turn (and for memory) on a blocking condition, so
    acquiring runs on a dedicated thread pool sized for the requests the server admits. Why the
    shield: if the client goes away while the thread is still waiting, the thread cannot be
    interrupted; the lease it eventually gets is released right away instead of leaking (a leaked
    lease would keep the model busy and never evictable).
    """

    def __init__(self, scheduler: Scheduler, *, max_waiting: int = 128, routes: Routes | None = None) -> None:
        self.scheduler = scheduler
        self._routes = dict(routes or {})
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_waiting), thread_name_prefix="edge-qwen:lease")

    def names(self) -> list[str]:
        return [m.name for m in self.scheduler.snapshot().models] + list(self._routes)

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Model]:
        if name not in self.names():
            raise unknown_model(name, self.names())
        base, adapters = self._routes.get(name, (name, {}))
        manager = self.scheduler.lease(base)
        future = asyncio.get_running_loop().run_in_executor(self._pool, manager.__enter__)
        try:
            model = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: _release_late(f, manager))
            raise
        try:
            yield AdapterView(model, adapters) if adapters else model  # type: ignore[misc]
        finally:
            manager.__exit__(None, None, None)

    def snapshot(self) -> ServerSnapshot:
        snap = self.scheduler.snapshot()
        models = tuple(
            ServedModel(
                name=m.name, path=m.path, resident=m.resident, n_ctx=m.n_ctx, in_flight=m.busy + m.waiting,
                slots=m.slots, status=m,
            )  # fmt: skip
            for m in snap.models
        )
        memory = MemoryUse(snap.budget_bytes, snap.used_bytes, snap.peak_used_bytes)
        return ServerSnapshot(models, memory, queue_depth=sum(m.waiting for m in snap.models))

    def close(self, timeout: float | None = None) -> list[str]:
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self.scheduler.close(timeout)


def _release_late(future: asyncio.Future[Any], manager: contextlib.AbstractContextManager[Any]) -> None:
    """A lease that arrived after its request was cancelled: give it back at once."""
    if not future.cancelled() and future.exception() is None:
        manager.__exit__(None, None, None)
