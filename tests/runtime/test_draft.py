"""Draft-model speculation on fake decoders: the draft model mirrors each target slot, drafts for all
speculating sequences together, and the target's answer is exactly the one without speculation
(greedy and seeded sampling), with several sequences, small batches and cancellation."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from fake_decoder import (
    VOCAB,
    FakeDecoder,
    FakeSampler,
    echo_token,
    make_engine,
    out_tokens,
    run,
    solo,
    submit,
)
from test_speculative import assert_kv_matches_slots, repetitive_prompts

from edge_qwen.runtime.engine.draft import DraftModel, vocab_mismatch


def close_draft(history: Sequence[int], adapters: object = ()) -> int:
    """A draft model that agrees with the target (``echo_token``) about three times in four."""
    token = echo_token(history, adapters)
    return token if (len(history) * 7 + token) % 4 else 1 + (token + 1) % (VOCAB - 1)


def wrong_draft(history: Sequence[int], adapters: object = ()) -> int:
    """A draft model that never agrees with the target."""
    return 1 + echo_token(history, adapters) % (VOCAB - 1)


def draft_model(model=close_draft, *, parallel: int = 4, n_batch: int = 512, n_vocab: int = VOCAB,
                confidence=lambda token: 1.0,
                recurrent: bool = False) -> tuple[DraftModel, FakeDecoder]:  # fmt: skip
    decoder = FakeDecoder(n_cells=8192, model=model, confidence=confidence, recurrent=recurrent)
    return DraftModel(decoder, parallel=parallel, n_batch=n_batch, n_vocab=n_vocab), decoder


# -- the draft model alone -------------------------------------------------------------------------


def test_it_drafts_its_greedy_continuation_and_keeps_what_it_already_read():
    draft, decoder = draft_model(echo_token)
    history = repetitive_prompts(1)[0]
    proposed = draft.propose({0: (history, 5)}, {0: 0.0})[0]
    assert proposed == solo(history, 5, model=echo_token)
    assert draft.cached[0] == [*history, *proposed[:-1]] == decoder.history(0)  # the last is not fed
    fed = sum(n for batch in decoder.batches for _, n, _, _ in batch)
    # the target accepted two drafted tokens and sampled its own third: only the difference is fed
    draft.propose({0: ([*history, *proposed[:2], 50], 3)}, {0: 0.0})
    assert decoder.history(0)[: len(history) + 3] == [*history, *proposed[:2], 50]
    assert sum(n for batch in decoder.batches for _, n, _, _ in batch) - fed == 1 + 2  # [50] + 2 drafted


def test_a_hybrid_draft_model_goes_back_to_the_state_before_its_draft():
    """A recurrent draft cannot cut its drafted tokens: it restores the state checkpointed where
    its catch-up ended and feeds only what the target accepted since, not the whole history."""
    draft, decoder = draft_model(echo_token, recurrent=True)
    history = repetitive_prompts(1)[0]
    proposed = draft.propose({0: (history, 5)}, {0: 0.0})[0]
    fed = sum(n for batch in decoder.batches for _, n, _, _ in batch)
    again = draft.propose({0: ([*history, *proposed[:2], 50], 3)}, {0: 0.0})[0]
    assert decoder.partial_loads == 1
    fed_now = sum(n for batch in decoder.batches for _, n, _, _ in batch)
    assert fed_now - fed == 3 + 2  # the 2 accepted and [50] again, then 2 drafted
    assert again == solo([*history, *proposed[:2], 50], 3, model=echo_token)


def test_unconfident_and_unknown_tokens_end_a_draft():
    draft, _ = draft_model(echo_token, confidence=lambda token: 0.3)
    history = repetitive_prompts(1)[0]
    assert draft.propose({0: (history, 5)}, {0: 0.5}) == {}
    assert draft.propose({0: (history, 5)}, {0: 0.2})[0] == solo(history, 5, model=echo_token)
    small_vocab, _ = draft_model(
        echo_token, n_vocab=2
    )  # every draft token is outside the target's vocabulary
    assert small_vocab.propose({0: (history, 5)}, {0: 0.0}) == {}


def test_a_long_prompt_catches_up_over_several_steps():
    draft, decoder = draft_model(echo_token, n_batch=8)
    history = list(range(1, 30))
    steps = 0
    while not draft.propose({0: (history, 3)}, {0: 0.0}):
        steps += 1
        assert max(n for batch in decoder.batches for _, n, _, _ in batch) <= 8
    assert steps == 3 and draft.cached[0][:29] == history  # 8 + 8 + 8, then 5 and the draft


def test_a_full_draft_context_skips_drafting_instead_of_failing():
    draft, decoder = draft_model(echo_token)
    decoder.n_cells = 4
    assert draft.propose({0: (list(range(1, 10)), 3)}, {0: 0.0}) == {}
    assert decoder.history(0) == [] and draft.cached[0] == []


# -- in the step loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [close_draft, wrong_draft, echo_token])
def test_greedy_output_is_the_target_alone(model):
    prompts = repetitive_prompts(5, seed=11)
    draft, draft_decoder = draft_model(model)
    engine, decoder = make_engine(parallel=4, model=echo_token, draft=draft)
    jobs = [submit(engine, p, max_tokens=40, speculative="draft")[1] for p in prompts]
    while engine.has_work:
        engine.step()
        assert_kv_matches_slots(engine, decoder)
        for seq_id, cached in enumerate(draft.cached):
            assert draft_decoder.history(seq_id) == cached  # the mirror is exact, drafts included
    for prompt, sink in zip(prompts, jobs, strict=True):
        assert out_tokens(sink) == solo(prompt, 40, model=echo_token)
    timings = [s.result().timings for s in jobs]
    drafted, accepted = sum(t.drafted_tokens for t in timings), sum(t.accepted_tokens for t in timings)
    assert drafted > 0 and accepted <= drafted
    if model is echo_token:
        assert accepted == drafted
    if model is wrong_draft:
        assert accepted == 0
    assert max(len(b) for b in decoder.drafts) >= 2  # several sequences verified in one batch


def test_several_sequences_draft_in_one_draft_decode():
    prompts = repetitive_prompts(3, seed=12)
    draft, draft_decoder = draft_model(echo_token)
    engine, _ = make_engine(parallel=3, model=echo_token, draft=draft)
    for p in prompts:
        submit(engine, p, max_tokens=20, speculative={"mode": "draft", "k": 4})
    run(engine)
    assert max(len(batch) for batch in draft_decoder.batches) == 3


def test_seeded_sampling_draws_exactly_as_without_speculation():
    prompts = repetitive_prompts(4, seed=13)
    draft, _ = draft_model(close_draft)
    engine, _ = make_engine(model=echo_token, draft=draft)
    jobs = [submit(engine, p, max_tokens=50, seed=i, speculative="draft")[1] for i, p in enumerate(prompts)]
    run(engine)
    for i, (prompt, sink) in enumerate(zip(prompts, jobs, strict=True)):
        assert out_tokens(sink) == solo(prompt, 50, model=echo_token, sampler=FakeSampler(i))
    assert sum(s.result().timings.accepted_tokens for s in jobs) > 0


def test_small_batches_max_tokens_and_cancellation():
    prompts = repetitive_prompts(3, seed=14)
    draft, draft_decoder = draft_model(close_draft, n_batch=6)
    engine, decoder = make_engine(parallel=3, n_batch=10, model=echo_token, draft=draft)
    jobs = [
        submit(engine, p, max_tokens=m, speculative="draft")
        for p, m in zip(prompts, (3, 30, 30), strict=True)
    ]
    for _ in range(4):
        engine.step()
    victim, victim_sink = jobs[2]
    victim.cancel()
    run(engine)
    assert victim_sink.result().finish_reason == "cancelled"
    assert all(sum(e[1] for e in batch) <= 10 for batch in decoder.batches)
    for (request, sink), prompt, m in zip(jobs, prompts, (3, 30, 30), strict=True):
        if request is not victim:
            assert out_tokens(sink) == solo(prompt, m, model=echo_token)
    assert_kv_matches_slots(engine, decoder)


def test_a_request_for_the_draft_without_a_draft_model_does_not_draft():
    engine, decoder = make_engine(model=echo_token)  # the Model refuses it up front; the engine copes
    _, sink = submit(engine, repetitive_prompts(1)[0], max_tokens=10, speculative="draft")
    run(engine)
    assert not decoder.drafts and out_tokens(sink) == solo(repetitive_prompts(1)[0], 10, model=echo_token)


# -- vocabulary compatibility ----------------------------------------------------------------------


def spelled(vocab: dict[str, list[bytes]]):
    return lambda which, i: vocab[which][i]


def test_vocab_check_names_what_differs():
    same = [f"t{i}".encode() for i in range(300)]
    special = {"EOS": (2, 2)}
    assert vocab_mismatch(300, 300, spelled({"target": same, "draft": same}), special) is None
    padded = same + [b"[PAD]"] * 100  # a larger model's padded vocabulary, within llama.cpp's slack
    assert vocab_mismatch(400, 300, spelled({"target": padded, "draft": same}), special) is None
    assert "differ in size" in vocab_mismatch(600, 300, spelled({"target": same * 2, "draft": same}), special)
    assert "EOS" in vocab_mismatch(300, 300, spelled({"target": same, "draft": same}), {"EOS": (2, 3)})
    other = [*same[:42], b"hello", *same[43:]]
    why = vocab_mismatch(300, 300, spelled({"target": same, "draft": other}), special)
    assert why == "token 42 is 't42' in the target but 'hello' in the draft"


def test_the_draft_model_reads_the_prompt_in_the_prefill_step():
    """No catch-up stall at the first token: the prompt the target just prefilled is read then."""
    prompt = repetitive_prompts(1, seed=15)[0]
    draft, _ = draft_model(echo_token)
    engine, _ = make_engine(parallel=1, model=echo_token, draft=draft, prefill_chunk=512)
    submit(engine, prompt, max_tokens=20, speculative="draft")
    engine.step()  # the whole prompt in one step
    assert draft.cached[0] == list(prompt)
    run(engine)
