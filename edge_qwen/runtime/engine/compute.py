"""The one thread that runs llama.cpp for every model of the process.

Why one and not one per model: llama.cpp's CPU backend is built with OpenMP, and each host thread
that computes gets its own OpenMP team. With two teams on a few cores libgomp throttles its
spin-waits and both models decode ~35% slower (25.4 -> 16.8 tok/s measured: two 0.5B models,
2 cores). One thread means one team. Each context is still owned by exactly one thread.

The thread alternates: run the small tasks callers queued (submit a request, reset, close), then
one step of every model that has work, round-robin — so a request to model B waits for one step of
model A, never for the whole of A's answer. With nothing to step it blocks on the task queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Steppable(Protocol):
    @property
    def has_work(self) -> bool: ...
    def step(self) -> None: ...
    def fail_all(self, exc: BaseException) -> None: ...


class ComputeThread:
    """Tasks in FIFO order, and steps of the registered engines in turn."""

    _instance: ComputeThread | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._engines: list[Steppable] = []  # touched on the compute thread only
        self.thread = threading.Thread(target=self._run, name="edge-qwen-compute", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> ComputeThread:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def register(self, engine: Steppable) -> None:
        self.submit(lambda: self._engines.append(engine))

    def unregister(self, engine: Steppable) -> None:
        """On the compute thread (from a task): stop stepping ``engine``."""
        if engine in self._engines:
            self._engines.remove(engine)

    @property
    def on_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def call(self, fn: Callable[[], T]) -> T:
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

        self.submit(task)
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
        while True:
            self._run_pending_tasks()
            busy = [e for e in self._engines if e.has_work]
            if not busy:
                _run_task(self._tasks.get())
                continue
            for engine in busy:
                try:
                    engine.step()
                except BaseException as exc:  # noqa: BLE001 - one model's failure must not stop the others
                    engine.fail_all(exc)

    def _run_pending_tasks(self) -> None:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            _run_task(task)


def _run_task(task: Callable[[], None]) -> None:
    try:
        task()
    except BaseException:  # noqa: BLE001 - tasks report their own errors; the thread must live on
        import traceback

        traceback.print_exc()
