"""Hybrid models in the real runtime: tiny random Qwen3.5, Qwen3.5-MoE and Qwen3-Next GGUFs
(converted by edge-qwen, run by llama.cpp). Their recurrent state cannot be cut back to a shared
prefix, so prefix reuse goes through state checkpoints and speculation through llama.cpp's
recurrent snapshots (``n_rs_seq``); either way the answer must be token for token the one a fresh
full prefill gives. Random weights: the words mean nothing, the token ids are the test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from near_tie import assert_same_or_near_tie

from edge_qwen.runtime import GenerationResult, Model
from edge_qwen.runtime.handles import drain
from edge_qwen.sizing import estimate_memory

pytestmark = [pytest.mark.real]

ARCHS = ["qwen35", "qwen35moe", "qwen3next"]
SYSTEM = (
    "You are the help desk of a small library. Answer briefly and politely. "
    + " ".join(f"Rule {i}: books of shelf {i} go back to shelf {i} before closing time." for i in range(24))
)
QUESTIONS = ["When do you open on Sundays?", "Can I renew a book twice?", "Where is the shelf of maps?"]


def chat(question: str, *history: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}]
    for i, text in enumerate(history):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return [*messages, {"role": "user", "content": question}]


def fresh(model: Model, messages: list[dict[str, str]], **options: object) -> GenerationResult:
    """The answer with nothing reused: empty slots, empty prompt cache."""
    model.reset()
    got = model.chat(messages, **{"temperature": 0, "max_tokens": 16, **options})
    assert got.usage.cached_tokens == 0
    return got


@pytest.mark.parametrize("arch", ARCHS)
def test_a_shared_system_prompt_is_restored_from_a_checkpoint(
    hybrid_gguf: Callable[..., Path], arch: str
) -> None:
    with Model.load(hybrid_gguf(arch), n_ctx=2048, parallel=1, n_threads=2) as model:
        system = len(model.prompt_tokens(model.render(chat("")[:1], add_generation_prompt=False)))
        first = model.chat(chat(QUESTIONS[0]), temperature=0, max_tokens=16)
        second = model.chat(chat(QUESTIONS[1]), temperature=0, max_tokens=16)
        # the checkpoint sits where the first user message starts: the whole system prompt is reused
        assert system - 2 <= second.usage.cached_tokens < second.usage.prompt_tokens
        assert first.usage.cached_tokens == 0
        usage = model.slot_usage()  # each checkpoint is one copy of the state the estimate charges
        per_copy = estimate_memory(model.path, parallel=1, ctx_checkpoints=1).checkpoint_bytes
        assert usage.checkpoints >= 2
        assert usage.checkpoint_bytes == pytest.approx(usage.checkpoints * per_copy, rel=0.03)
        assert second.token_ids == fresh(model, chat(QUESTIONS[1])).token_ids


def test_the_next_turn_continues_the_last_prompt(hybrid_gguf: Callable[..., Path]) -> None:
    with Model.load(hybrid_gguf("qwen35"), n_ctx=2048, parallel=1, n_threads=2) as model:
        first = model.chat(chat(QUESTIONS[0]), temperature=0, max_tokens=16)
        turn = chat(QUESTIONS[1], QUESTIONS[0], first.text)
        again = model.chat(turn, temperature=0, max_tokens=16)
        assert again.usage.cached_tokens >= first.usage.prompt_tokens
        assert again.token_ids == fresh(model, turn).token_ids


def test_an_edited_question_goes_back_to_the_checkpoint_before_it(hybrid_gguf: Callable[..., Path]) -> None:
    with Model.load(hybrid_gguf("qwen3next"), n_ctx=2048, parallel=1, n_threads=2) as model:
        first = model.chat(chat(QUESTIONS[0]), temperature=0, max_tokens=16)
        second = model.chat(chat(QUESTIONS[1], QUESTIONS[0], first.text), temperature=0, max_tokens=16)
        edited = chat(QUESTIONS[2], QUESTIONS[0], first.text)  # the second question, rewritten
        third = model.chat(edited, temperature=0, max_tokens=16)
        assert first.usage.prompt_tokens <= third.usage.cached_tokens < second.usage.prompt_tokens
        assert third.token_ids == fresh(model, edited).token_ids


def test_the_prompt_cache_keeps_checkpoints(hybrid_gguf: Callable[..., Path]) -> None:
    with Model.load(hybrid_gguf("qwen35"), n_ctx=2048, parallel=1, n_threads=2,
                    prompt_cache=16 << 20) as model:  # fmt: skip
        answers = [model.chat([{"role": "user", "content": q}], temperature=0, max_tokens=16)
                   for q in QUESTIONS]  # fmt: skip
        turn = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": answers[0].text},
                {"role": "user", "content": "And on Mondays?"}]  # fmt: skip
        again = model.chat(turn, temperature=0, max_tokens=16)
        assert model.slot_usage().prompt_cache_restored == 1
        assert again.usage.cached_tokens >= answers[0].usage.prompt_tokens
        assert again.token_ids == fresh(model, turn).token_ids


LOOKUP = {"mode": "lookup", "adaptive": False, "n_min": 1}
DRAFT = {"mode": "draft", "adaptive": False, "p_min": 0.0, "k": 4, "max_pause": 0}


@pytest.mark.parametrize("arch", ARCHS)
def test_draft_speculation_rolls_rejected_tokens_back(hybrid_gguf: Callable[..., Path], arch: str) -> None:
    """The draft is the same random model quantized to Q8_0: it agrees with the target on some
    tokens and not on others, so verification keeps part of most drafts and rolls the rest of the
    recurrent state back (``n_rs_seq``)."""
    path = hybrid_gguf(arch)
    messages = chat(QUESTIONS[0])
    with Model.load(path, n_ctx=2048, parallel=1, n_threads=2, draft=hybrid_gguf(arch, "q8_0")) as model:
        plain = fresh(model, messages, max_tokens=32, speculative="off")
        model.reset()
        got = model.chat(messages, temperature=0, max_tokens=32, speculative=DRAFT)
        prompt = model.prompt_tokens(model.render(messages))
    assert 0 < got.timings.accepted_tokens < got.timings.drafted_tokens, got.timings
    assert_same_or_near_tie(path, prompt, plain, got)


def test_several_hybrid_sequences_share_one_batch(hybrid_gguf: Callable[..., Path]) -> None:
    path = hybrid_gguf("qwen35")
    conversations = [chat(q) for q in QUESTIONS]
    with Model.load(path, n_ctx=2048, parallel=3, n_threads=2, draft=hybrid_gguf("qwen35", "q8_0")) as model:
        alone = [fresh(model, c, speculative="off") for c in conversations]
        model.reset()
        model.chat(chat("Hello"), temperature=0, max_tokens=4)  # leaves the system prompt's checkpoint
        streams = [model.chat_stream(c, temperature=0, max_tokens=16, speculative=DRAFT)
                   for c in conversations]  # fmt: skip
        together = [drain(s) for s in streams]
        prompts = [model.prompt_tokens(model.render(c)) for c in conversations]
    assert sum(r.usage.cached_tokens for r in together) > 0
    drafted = sum(r.timings.drafted_tokens for r in together)
    assert drafted > sum(r.timings.accepted_tokens for r in together) > 0
    for prompt, a, b in zip(prompts, alone, together, strict=True):
        assert_same_or_near_tie(path, prompt, a, b)


@pytest.mark.slow
def test_a_preempted_hybrid_sequence_resumes_with_the_same_answer(hybrid_gguf: Callable[..., Path]) -> None:
    """Three answers that outgrow the cells together: the youngest is paused, its cache given up,
    and re-prefilled later (from a checkpoint where one is left); each answer is the one it gives
    alone."""
    path = hybrid_gguf("qwen35")
    conversations = [[{"role": "user", "content": f"{q} " * 20}] for q in QUESTIONS]
    with Model.load(path, n_ctx=512, parallel=3, n_threads=2) as model:
        alone = [fresh(model, c, max_tokens=120) for c in conversations]
        model.reset()
        together = model.chat_batch(conversations, temperature=0, max_tokens=120)
        preempted = model._engine.stats.preemptions
        prompts = [model.prompt_tokens(model.render(c)) for c in conversations]
    assert preempted > 0
    for prompt, a, b in zip(prompts, alone, together, strict=True):
        assert_same_or_near_tie(path, prompt, a, b)


@pytest.mark.slow
def test_sampling_with_speculation_keeps_the_targets_distribution(hybrid_gguf: Callable[..., Path]) -> None:
    """Seeded sampling on Qwen3.5 with its Q8_0 copy drafting: the 2nd and 3rd tokens drawn with
    speculation (drafts kept and rolled back) follow the distribution drawn without it."""
    from test_draft_real import chi_square_p, seeded_draws

    with Model.load(hybrid_gguf("qwen35"), n_ctx=4096, parallel=16, n_threads=2,
                    draft=hybrid_gguf("qwen35", "q8_0")) as model:  # fmt: skip
        plain, speculative, drafted, accepted = seeded_draws(model, DRAFT, 2000)
    assert 0.05 * drafted < accepted < 0.95 * drafted, (drafted, accepted)  # drafts kept and rejected
    p, df = chi_square_p(plain, speculative)
    assert df >= 8 and p > 0.001, (p, df)
