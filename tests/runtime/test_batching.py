"""Continuous batching on the real Qwen2.5-Coder-0.5B: sequences decoded together answer as they do
alone, never see each other's cache, reuse shared prefixes, survive a full KV cache, cancel cleanly,
and two models interleave on the one compute thread.

The rule for "answers as alone": llama.cpp's kernels round a batch of several sequences differently
from a batch of one, so greedy outputs may part. Where they do, the first differing token must be a
rounding near-tie after the common prefix, measured on this machine (:mod:`near_tie`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from near_tie import assert_same_or_near_tie as _near_tie

from edge_qwen.runtime import GenerationResult, Model

pytestmark = [pytest.mark.real, pytest.mark.slow]

QUESTIONS = [
    "Write a Python function to reverse a string.",
    "What is the capital of France?",
    "Explain recursion in one sentence.",
    "How do I sort a list in JavaScript?",
    "What is 17 * 23?",
    "Name three prime numbers.",
    "Write hello world in C.",
    "What does a GPU do?",
]
MAX_TOKENS = 24


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def model(real_gguf: Path) -> Iterator[Model]:
    with Model.load(real_gguf, n_ctx=2048, parallel=8, n_threads=2) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def solo(model: Model) -> list[GenerationResult]:
    answers = []
    for q in QUESTIONS:
        model.reset()  # each alone, from an empty cache
        answers.append(model.chat(ask(q), temperature=0, max_tokens=MAX_TOKENS))
    return answers


def assert_same_or_near_tie(
    model: Model, question: str, solo: GenerationResult, got: GenerationResult
) -> None:
    _near_tie(model.path, model.prompt_tokens(model.render(ask(question))), solo, got)


def test_eight_concurrent_streams_equal_their_solo_runs(
    model: Model, solo: list[GenerationResult]
) -> None:
    model.reset()
    results: list[GenerationResult | None] = [None] * len(QUESTIONS)

    def consume(i: int) -> None:
        stream = model.chat_stream(ask(QUESTIONS[i]), temperature=0, max_tokens=MAX_TOKENS)
        for _chunk in stream:
            pass
        results[i] = stream.result

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    for question, alone, together in zip(QUESTIONS, solo, results, strict=True):
        assert together is not None
        assert_same_or_near_tie(model, question, alone, together)


def test_chat_batch_runs_together_and_is_faster_than_one_by_one(
    model: Model, solo: list[GenerationResult]
) -> None:
    model.reset()
    start = time.perf_counter()
    batched = model.chat_batch([ask(q) for q in QUESTIONS], temperature=0, max_tokens=MAX_TOKENS)
    together = time.perf_counter() - start
    one_by_one = sum(r.timings.ttft_ms / 1e3 + r.usage.completion_tokens / max(r.timings.decode_tok_s, 1e-9)
                     for r in solo)  # fmt: skip
    assert together < one_by_one, f"batch {together:.1f}s vs sequential {one_by_one:.1f}s"
    for question, alone, got in zip(QUESTIONS, solo, batched, strict=True):
        assert_same_or_near_tie(model, question, alone, got)


def test_cancelling_one_sequence_leaves_the_others_intact(
    model: Model, solo: list[GenerationResult]
) -> None:
    model.reset()
    streams = [model.chat_stream(ask(q), temperature=0, max_tokens=MAX_TOKENS) for q in QUESTIONS[:4]]
    victim = streams[1]
    next(victim)
    victim.cancel()
    results = []
    for stream in streams:
        for _chunk in stream:
            pass
        results.append(stream.result)
    assert results[1].finish_reason == "cancelled"
    for i in (0, 2, 3):
        assert_same_or_near_tie(model, QUESTIONS[i], solo[i], results[i])


def test_a_shared_system_prompt_is_reused_across_sequences(model: Model) -> None:
    model.reset()
    system = {"role": "system", "content": "You are a terse assistant for a Python course. " * 8}
    first = model.chat([system, *ask("What is a list?")], temperature=0, max_tokens=4)
    second = model.chat([system, *ask("What is a dict?")], temperature=0, max_tokens=4)
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens >= 60  # the whole system turn came from the cache


def test_a_seeded_sample_reproduces_inside_a_batch(model: Model) -> None:
    model.reset()
    alone = model.chat(ask("Name a fruit."), temperature=1.0, seed=11, max_tokens=8)
    prompts = [ask("Name a fruit."), ask("Name a colour."), ask("Name a city.")]
    together = model.chat_batch(prompts, temperature=1.0, seed=11, max_tokens=8)
    assert together[0].text == alone.text


def test_a_full_kv_cache_preempts_and_every_answer_completes(real_gguf: Path) -> None:
    with Model.load(real_gguf, n_ctx=256, parallel=4, n_threads=2) as small:
        tasks = ["a stack class", "a queue class", "a binary tree class", "a linked list class"]
        prompts = [ask(f"Write {t} in Python.") for t in tasks]
        answers = small.chat_batch(prompts, temperature=0, max_tokens=70)
        assert small._engine.stats.preemptions > 0  # 24 shared + 4 x (~14 prompt + 70) cells > 256
        assert all(a.usage.completion_tokens == 70 for a in answers)
        assert all(a.finish_reason in ("stop", "length") and a.text for a in answers)
        with pytest.raises(Exception, match="context"):
            small.chat(ask("word " * 300), max_tokens=1)


def test_two_models_interleave_on_the_compute_thread(real_gguf: Path, model: Model) -> None:
    with Model.load(real_gguf, n_ctx=512, parallel=1, n_threads=2) as other:
        model.reset()
        module = "# A long Python module of utility functions\n"
        long_stream = model.stream(module, temperature=0, max_tokens=150)
        next(long_stream)
        done_a: list[float] = []

        def consume_a() -> None:
            for _chunk in long_stream:
                pass
            done_a.append(time.perf_counter())

        thread = threading.Thread(target=consume_a)
        thread.start()
        quick = other.chat(ask("Say hi."), temperature=0, max_tokens=3)
        done_b = time.perf_counter()
        thread.join(timeout=600)
        assert quick.text
        assert long_stream.result.usage.completion_tokens == 150
        assert done_b < done_a[0], "model B waited for the whole of model A's answer"
