"""The scheduler on the real 0.5B GGUF: the same file under different settings counts as different models."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge_qwen.errors import BudgetExceededError, QueueFullError, QueueTimeoutError
from edge_qwen.scheduler import Scheduler
from edge_qwen.sizing import estimate_memory

MiB = 2**20
CTX = {"a": 2048, "b": 2304, "c": 2560}


def three_models(path: Path, budget: int, **kwargs: object) -> Scheduler:
    scheduler = Scheduler(budget=budget, **kwargs)  # type: ignore[arg-type]
    for name, ctx in CTX.items():
        scheduler.add(name, path, n_ctx=ctx)
    return scheduler


def two_fit(path: Path) -> int:
    """A budget that holds the two largest of the three models but never all three."""
    sizes = sorted(estimate_memory(path, n_ctx=ctx).total_bytes for ctx in CTX.values())
    assert sizes[0] + sizes[1] + sizes[2] > sizes[1] + sizes[2] + 10 * MiB
    return sizes[1] + sizes[2] + 10 * MiB


def resident(scheduler: Scheduler) -> set[str]:
    return {m.name for m in scheduler.snapshot().models if m.resident}


def test_least_recently_used_idle_model_is_evicted(real_gguf: Path) -> None:
    with three_models(real_gguf, two_fit(real_gguf)) as s:
        s.load("a")
        s.load("b")
        s.generate("a", "def add(x, y):", max_tokens=2)  # a is now more recent than b
        s.load("c")
        assert resident(s) == {"a", "c"}
        s.load("b")
        assert resident(s) == {"b", "c"}  # a was least recently used
        snap = s.snapshot()
        assert snap.used_bytes <= snap.budget_bytes
        assert all(m.measured_load_bytes for m in snap.models if m.resident)


def test_a_busy_model_is_not_evicted(real_gguf: Path) -> None:
    with three_models(real_gguf, two_fit(real_gguf)) as s:
        s.load("a")
        s.load("b")
        with s.lease("a") as model:  # a is the LRU one but has a request in flight
            s.load("c")
            assert resident(s) == {"a", "c"}
            assert not model.closed
        s.generate("c", "x", max_tokens=1)
        s.load("b")
        assert resident(s) == {"b", "c"}


def test_pinned_model_is_never_evicted_and_named_in_refusals(real_gguf: Path) -> None:
    one = estimate_memory(real_gguf, n_ctx=2048).total_bytes
    with Scheduler(budget=one + 50 * MiB) as s:
        s.add("pinned", real_gguf, n_ctx=2048, pin=True)
        s.add("other", real_gguf, n_ctx=2048)
        s.load("pinned")
        with pytest.raises(BudgetExceededError) as err:
            s.load("other")
        assert "unpin and unload 'pinned'" in str(err.value)
        assert resident(s) == {"pinned"}


def test_context_shrinks_to_fit(real_gguf: Path) -> None:
    budget = estimate_memory(real_gguf, n_ctx=4096).total_bytes
    with Scheduler(budget=budget, min_ctx=1024) as s:
        s.add("big", real_gguf, n_ctx=32768)
        settings, est, notes = s.plan("big")
        assert 4096 <= settings.n_ctx < 32768 and settings.cache_type_v == "f16"
        assert est.total_bytes <= budget
        assert notes == [f"n_ctx 32768 -> {settings.n_ctx}"]
        with s.lease("big") as model:
            assert model.n_ctx == settings.n_ctx


def test_kv_cache_is_quantized_when_the_minimum_context_does_not_fit(real_gguf: Path) -> None:
    q8 = estimate_memory(real_gguf, n_ctx=32768, cache_type_k="q8_0", cache_type_v="q8_0").total_bytes
    with Scheduler(budget=q8 + MiB, min_ctx=32768) as s:
        s.add("long", real_gguf, n_ctx=32768)
        settings, est, notes = s.plan("long")
        assert (settings.n_ctx, settings.cache_type_k, settings.cache_type_v) == (32768, "q8_0", "q8_0")
        assert "KV cache f16 -> q8_0" in notes
    with Scheduler(budget=q8 + MiB, min_ctx=32768, allow_kv_quantization=False) as s:
        s.add("long", real_gguf, n_ctx=32768)
        with pytest.raises(BudgetExceededError):
            s.plan("long")


def test_refusal_names_required_available_and_ways_out(real_gguf: Path) -> None:
    with Scheduler(budget="400MiB") as s:
        s.add("m", real_gguf, n_ctx=4096)
        with pytest.raises(BudgetExceededError) as err:
            s.load("m")
    exc = err.value
    assert isinstance(exc, MemoryError)
    assert exc.available == 400 * MiB and exc.required > exc.available
    message = str(exc)
    assert "needs" in message and "MiB" in message and "400 MiB" in message
    assert "smaller quantization: weights must be at most" in message
    assert "raise the budget to at least" in message
    assert resident(s) == set()  # refused before anything was loaded


def test_queue_full_and_timeout(real_gguf: Path) -> None:
    one = estimate_memory(real_gguf, n_ctx=2560).total_bytes
    with three_models(real_gguf, one + 10 * MiB, max_queue=1, queue_timeout=0.3) as s:
        with s.lease("a"):
            with pytest.raises(QueueFullError, match="max_queue=1"):
                s.generate("a", "x", max_tokens=1)
            # b needs a's memory, but a is busy: wait, then time out
            with pytest.raises(QueueTimeoutError, match="queue timeout"):
                s.load("b")
        s.load("b")  # a is idle now and gets evicted
        assert resident(s) == {"b"}


def test_requests_for_one_model_run_in_arrival_order(real_gguf: Path) -> None:
    order: list[int] = []
    with three_models(real_gguf, two_fit(real_gguf)) as s:
        s.load("a")
        gate = threading.Event()

        def ask(i: int) -> None:
            if i:
                gate.wait()
            s.generate("a", f"# {i}\n", max_tokens=2)
            order.append(i)

        with s.lease("a"):
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            gate.set()
        for t in threads:
            t.join(60)
    assert sorted(order) == [0, 1, 2]


def test_budget_never_exceeded_during_mixed_async_load(real_gguf: Path, probe) -> None:
    # the probe's models a/b/c use n_ctx 2048/4096/8192: room for b + c, never for all three
    budget = sum(estimate_memory(real_gguf, n_ctx=ctx).total_bytes for ctx in (4096, 8192)) + 10 * MiB
    out = probe("sched", str(real_gguf), str(budget))
    assert out["samples"] > 20
    assert out["peak_charged"] <= budget
    assert out["peak"] - out["baseline"] <= budget
    assert all(isinstance(t, str) for t in out["texts"]) and len(out["texts"]) == 7
    assert out["loads"] == {"a": 1, "b": 1, "c": 1} or sum(out["loads"].values()) > 3  # c evicted one of a, b


def test_cancelling_an_async_request_still_waiting_for_memory_frees_what_it_gets(real_gguf: Path) -> None:
    """A client that gives up while queued (an HTTP disconnect) must not leave a model held busy."""
    import asyncio

    def hold(s: Scheduler, release: threading.Event) -> None:
        with s.lease("a"):
            release.wait(30)

    async def scenario(s: Scheduler) -> str:
        release = threading.Event()
        holder = threading.Thread(target=hold, args=(s, release))
        holder.start()
        await asyncio.sleep(0.3)  # "a" is resident and busy; the budget holds one model
        waiting = asyncio.create_task(s.achat("b", [{"role": "user", "content": "hi"}], max_tokens=2))
        await asyncio.sleep(0.3)  # ... so "b" waits for a's memory
        waiting.cancel()
        release.set()  # "a" goes idle: the abandoned request now gets "b" loaded
        await asyncio.to_thread(holder.join, 30)
        # "b" must be handed back, or "a" could never be loaded again (b would stay busy)
        answer = await s.agenerate("a", "def add(a, b):", max_tokens=3, temperature=0)
        return answer.finish_reason

    one = estimate_memory(real_gguf, n_ctx=2560).total_bytes
    with three_models(real_gguf, one + 10 * MiB, queue_timeout=20) as s:
        s.load("a")
        assert asyncio.run(scenario(s)) == "length"
        assert all(m.busy == 0 for m in s.snapshot().models)
