"""The compute thread interleaves the steps of every model with work (no model waits for another's
whole answer) and keeps running when one model's step fails."""

from __future__ import annotations

import threading

import pytest

from edge_qwen.runtime.engine.compute import ComputeThread


class FakeEngine:
    def __init__(self, name: str, steps: int, log: list[str], fail_at: int | None = None) -> None:
        self.name, self.left, self.log, self.fail_at = name, steps, log, fail_at
        self.failed: BaseException | None = None
        self.done = threading.Event()

    @property
    def has_work(self) -> bool:
        return self.left > 0

    def step(self) -> None:
        self.left -= 1
        self.log.append(self.name)
        if self.fail_at is not None and self.left == self.fail_at:
            raise RuntimeError("boom")
        if not self.left:
            self.done.set()

    def fail_all(self, exc: BaseException) -> None:
        self.failed = exc
        self.left = 0
        self.done.set()


def test_steps_of_two_models_alternate() -> None:
    compute = ComputeThread()
    log: list[str] = []
    a, b = FakeEngine("a", 6, log), FakeEngine("b", 3, log)
    release = threading.Event()
    compute.submit(release.wait)  # both registrations are queued before the thread steps anything
    compute.register(a)
    compute.register(b)
    release.set()
    assert a.done.wait(5) and b.done.wait(5)
    assert log == ["a", "b"] * 3 + ["a"] * 3


def test_a_failing_model_does_not_stop_the_others() -> None:
    compute = ComputeThread()
    log: list[str] = []
    bad, good = FakeEngine("bad", 5, log, fail_at=3), FakeEngine("good", 5, log)
    compute.register(bad)
    compute.register(good)
    assert good.done.wait(5) and bad.done.wait(5)
    assert isinstance(bad.failed, RuntimeError) and log.count("good") == 5


class RemoteEngine(FakeEngine):
    """An engine split over an RPC worker; its step hangs, as llama.cpp does when the worker dies."""

    endpoints = frozenset({"10.0.0.2:50052"})

    def __init__(self, log: list[str]) -> None:
        super().__init__("remote", 100, log)
        self.in_step = threading.Event()
        self.abandoned: BaseException | None = None

    def step(self) -> None:
        self.log.append(self.name)
        self.in_step.set()
        threading.Event().wait()  # never returns

    def abandon(self, exc: BaseException) -> None:
        self.abandoned = exc
        self.left = 0


def test_a_dead_worker_abandons_its_stuck_thread_and_the_other_models_go_on() -> None:
    compute = ComputeThread()
    log: list[str] = []
    remote, local = RemoteEngine(log), FakeEngine("local", 3, log)
    compute.register(remote)
    assert remote.in_step.wait(5)
    stuck = compute.thread
    compute.register(local)  # queued behind the stuck step
    error = ConnectionError("worker 10.0.0.2:50052 died")
    compute.workers_lost(frozenset({"10.0.0.2:50052"}), error)
    assert local.done.wait(5) and log.count("local") == 3
    assert remote.abandoned is error and compute.thread is not stuck and compute.abandoned == 1
    # a call that would wait on the dead worker fails at once instead of hanging
    with pytest.raises(ConnectionError):
        compute.call(lambda: None, endpoints=frozenset({"10.0.0.2:50052"}))
    assert compute.call(lambda: 42) == 42
    assert log.count("remote") == 1  # never stepped again


def test_a_dead_worker_the_thread_is_not_waiting_on_keeps_the_thread() -> None:
    compute = ComputeThread()
    log: list[str] = []
    idle = RemoteEngine(log)
    idle.left = 0  # registered but with nothing to do
    compute.register(idle)
    thread = compute.thread
    compute.workers_lost(frozenset({"10.0.0.2:50052"}), ConnectionError("gone"))
    compute.wait_idle()
    assert compute.thread is thread and isinstance(idle.abandoned, ConnectionError)
