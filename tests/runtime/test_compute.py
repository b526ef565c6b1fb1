"""The compute thread interleaves the steps of every model with work (no model waits for another's
whole answer) and keeps running when one model's step fails."""

from __future__ import annotations

import threading

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
