"""The one thread that runs llama.cpp for every model of the process.

Why one and not one per model: llama.cpp's CPU backend is built with OpenMP, and each host thread
that computes gets its own OpenMP team. With two teams on a few cores libgomp throttles its
spin-waits and both models decode ~35% slower (25.4 -> 16.8 tok/s measured: two 0.5B models,
2 cores). One thread means one team. Each context is still owned by exactly one thread.

The thread alternates: run the small tasks callers queued (submit a request, reset, close), then
one step of every model that has work, round-robin — so a request to model B waits for one step of
model A, never for the whole of A's answer. With nothing to step it blocks on the task queue.

A model split over RPC workers can leave the thread stuck in llama.cpp for good: when a worker dies
mid-computation, llama.cpp's connection thread would abort the whole process, and the RPC guard
(``rpc.on_worker_lost``) parks it instead, so the compute thread waits forever for its answer. The
guard then calls :meth:`ComputeThread.workers_lost`: the engines that use those workers end their
requests with the error and are never stepped again, and if the thread was waiting on one of them a
fresh thread takes over the others (the stuck one is abandoned, with whatever it held).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ... import rpc

T = TypeVar("T")


class Steppable(Protocol):
    @property
    def has_work(self) -> bool: ...
    def step(self) -> None: ...
    def fail_all(self, exc: BaseException) -> None: ...


_NONE: frozenset[str] = frozenset()


class _Task:
    """A queued callable, the RPC workers it may wait on, and what to do if it never returns."""

    __slots__ = ("fn", "endpoints", "on_lost")

    def __init__(
        self,
        fn: Callable[[], None],
        endpoints: frozenset[str] = _NONE,
        on_lost: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.fn, self.endpoints, self.on_lost = fn, endpoints, on_lost


def _endpoints(engine: Steppable) -> frozenset[str]:
    """The RPC workers an engine's steps wait on (``BatchEngine.endpoints``; none for others)."""
    return getattr(engine, "endpoints", _NONE)


class ComputeThread:
    """Tasks in FIFO order, and steps of the registered engines in turn."""

    _instance: ComputeThread | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._engines: list[Steppable] = []  # touched on the compute thread only
        self._lock = threading.Lock()  # guards the four fields below, never held across a step
        self._lost: set[str] = set()  # RPC workers that died: engines using them are not stepped
        self._busy_with: frozenset[str] = _NONE  # the workers the current step or task waits on
        self._current: _Task | None = None
        self.abandoned = 0  # threads left stuck in llama.cpp by a dead worker
        self._why: BaseException | None = None  # what the last lost worker's requests were told
        self._start()
        rpc.on_worker_lost(self.workers_lost)  # the RPC guard reports dead workers here

    def _start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="edge-qwen-compute", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> ComputeThread:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def submit(
        self,
        task: Callable[[], None],
        endpoints: frozenset[str] = _NONE,
        on_lost: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Queue ``task``. ``endpoints``: the RPC workers it may wait on (its model's); if one of
        them dies, ``on_lost`` runs instead of the task (or while the task is stuck in it)."""
        self._tasks.put(_Task(task, endpoints, on_lost))

    def register(self, engine: Steppable) -> None:
        self.submit(lambda: self._engines.append(engine))

    def workers_lost(self, endpoints: frozenset[str], exc: BaseException) -> None:
        """From any thread: these RPC workers died. Every engine using them ends its requests with
        ``exc`` and is not stepped again; if the thread is waiting on one of them (it never will
        stop), the task it runs fails with ``exc`` and a new thread takes over the rest."""
        with self._lock:
            self._lost |= endpoints
            self._why = exc
            stuck = bool(self._busy_with & endpoints)
            current = self._current if stuck else None
            if stuck:
                self._current = None
        self.submit(lambda: self._drop_lost(exc))
        if not stuck:
            return
        if current is not None and current.on_lost is not None:
            current.on_lost(exc)
        with self._lock:
            self._busy_with = _NONE
            self.abandoned += 1
            self._start()  # the old thread stops if it ever comes back

    def _drop_lost(self, exc: BaseException) -> None:
        with self._lock:
            lost = set(self._lost)
        for engine in [e for e in self._engines if _endpoints(e) & lost]:
            self._engines.remove(engine)
            abandon = getattr(engine, "abandon", engine.fail_all)
            abandon(exc)

    def unregister(self, engine: Steppable) -> None:
        """On the compute thread (from a task): stop stepping ``engine``."""
        if engine in self._engines:
            self._engines.remove(engine)

    @property
    def on_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def call(self, fn: Callable[[], T], endpoints: frozenset[str] = _NONE) -> T:
        """Run ``fn`` on the compute thread and return its result (or raise its exception)."""
        if self.on_thread:
            return fn()
        done = threading.Event()
        box: list[Any] = []

        def task() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                box.append((False, exc))
            finally:
                done.set()

        def lost(exc: BaseException) -> None:
            box.append((False, exc))
            done.set()

        self._tasks.put(_Task(task, endpoints, lost))
        done.wait()
        ok, value = box[0]  # (True, result) or (False, exception)
        if not ok:
            raise value
        return value

    def wait_idle(self) -> None:
        """Block until every task submitted so far has run (no-op on the compute thread itself)."""
        if self.on_thread:
            return
        done = threading.Event()
        self.submit(done.set)
        done.wait()

    def _run(self) -> None:
        me = threading.current_thread()
        while self.thread is me:
            if not self._run_pending_tasks(me):
                return
            busy = [e for e in self._engines if e.has_work]
            if not busy:
                if not self._run_task(me, self._tasks.get()):
                    return
                continue
            for engine in busy:
                if not self._enter(me, _endpoints(engine), None):
                    continue
                try:
                    engine.step()
                except BaseException as exc:  # noqa: BLE001 - one model's failure must not stop the others
                    engine.fail_all(exc)
                finally:
                    self._leave(me)

    def _enter(self, me: threading.Thread, endpoints: frozenset[str], task: _Task | None) -> bool:
        """Before a step or a task: False when it must not run (its worker is lost, or this thread
        was replaced)."""
        with self._lock:
            if self.thread is not me or endpoints & self._lost:
                return False
            self._busy_with, self._current = endpoints, task
            return True

    def _leave(self, me: threading.Thread) -> None:
        with self._lock:
            if self.thread is me:
                self._busy_with, self._current = _NONE, None

    def _run_pending_tasks(self, me: threading.Thread) -> bool:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return True
            if not self._run_task(me, task):
                return False

    def _run_task(self, me: threading.Thread, task: _Task) -> bool:
        """Run one task; False when this thread was replaced (the task goes back to the queue)."""
        if not self._enter(me, task.endpoints, task):
            if self.thread is not me:
                self._tasks.put(task)
                return False
            if task.on_lost is not None and self._why is not None:  # it would never return
                task.on_lost(self._why)
            return True
        try:
            task.fn()
        except BaseException:  # noqa: BLE001 - tasks report their own errors; the thread must live on
            import traceback

            traceback.print_exc()
        finally:
            self._leave(me)
        return True
