"""Speculative decoding by prompt lookup, on a fake decoder: the drafter, the acceptance walk, and
the step loop verifying drafts (exactness, KV rollback, several sequences, limits, cancellation)."""

from __future__ import annotations

import random

import pytest
from fake_decoder import FakeSampler, echo_token, make_engine, out_tokens, run, solo, submit

from edge_qwen.errors import ConfigError
from edge_qwen.runtime.speculation.speculative import LookupDrafter, SpecConfig, spec_config, verify


def repetitive_prompts(n: int, seed: int = 0) -> list[list[int]]:
    """Prompts that repeat a phrase, so the echo model copies and lookup finds matches."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phrase = [rng.randrange(1, 97) for _ in range(rng.randrange(6, 14))]
        noise = [rng.randrange(1, 97) for _ in range(rng.randrange(0, 5))]
        out.append(phrase + noise + phrase[:4])
    return out


def assert_kv_matches_slots(engine, decoder) -> None:
    for slot in engine.slots:
        assert decoder.history(slot.seq_id) == slot.tokens


# -- the drafter, pure -----------------------------------------------------------------------------


def test_lookup_drafts_what_followed_the_latest_occurrence_of_the_suffix():
    drafter = LookupDrafter(SpecConfig(n=3, n_min=2, k=4))
    tokens = [1, 2, 3, 4, 5, 6, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    assert drafter.propose(tokens, limit=10) == [7, 8, 1, 2]  # the later of the two matches
    assert drafter.propose(tokens, limit=2) == [7, 8]
    assert drafter.propose([*tokens, 60, 8, 1], limit=10) == [2, 3, 60, 8]  # falls back to a 2-gram
    assert drafter.propose([5, 6, 7, 8], limit=10) == []  # nothing repeats


def test_back_off_shrinks_then_pauses_drafting_and_a_hit_restores_it():
    drafter = LookupDrafter(SpecConfig(k=8, max_pause=8))
    drafter.observe(8, 0)
    assert (drafter.k_now, drafter.pause) == (4, 0)
    drafter.observe(4, 0)
    assert (drafter.k_now, drafter.pause) == (2, 2)
    assert drafter.propose([1, 2, 3, 1, 2, 3], limit=8) == []  # paused
    drafter.observe(0, 0)
    drafter.observe(0, 0)
    assert drafter.pause == 0 and drafter.propose([1, 2, 3, 1, 2], limit=8) == [3, 1]
    drafter.observe(2, 2)
    assert drafter.k_now == 4
    drafter.observe(4, 1)
    assert drafter.k_now == 2
    for _ in range(6):
        drafter.observe(drafter.k_now, 0)
    assert drafter.pause == 8  # capped at max_pause
    assert (drafter.drafted, drafter.accepted) == (8 + 4 + 2 + 4 + 2 + 1 + 1 + 1 + 1 + 1, 3)


def test_verify_keeps_the_matching_prefix_plus_the_targets_own_token():
    targets = [7, 8, 5, 9]  # the target's token after [last], [last, 7], [last, 7, 8], ...
    taken: list[int] = []

    def take(token: int) -> bool:
        taken.append(token)
        return True

    assert verify([7, 8, 9], targets.__getitem__, take) == 2 and taken == [7, 8, 5]
    taken.clear()
    assert verify([7, 8, 5], targets.__getitem__, take) == 3 and taken == [7, 8, 5, 9]
    taken.clear()
    assert verify([], targets.__getitem__, take) == 0 and taken == [7]
    taken.clear()
    assert verify([7, 8, 5], targets.__getitem__, lambda t: taken.append(t) or len(taken) < 2) == 1
    assert taken == [7, 8]  # the sequence finished on its second token: nothing after it is taken


def test_speculative_option_values():
    assert spec_config(None) is None
    assert spec_config("lookup") == SpecConfig()
    assert spec_config(False) == SpecConfig(mode="off") and not spec_config("off").enabled
    assert spec_config({"mode": "lookup", "n": 4, "k": 6}) == SpecConfig(n=4, k=6)
    assert spec_config("draft") == SpecConfig(mode="draft", k=6)  # a draft model drafts fewer per step
    assert spec_config({"mode": "draft", "k": 4, "p_min": 0.5}).p_min == 0.5
    for bad in ({"mode": "ngram"}, {"kk": 3}, {"k": 0}, {"n": 1, "n_min": 2}, {"p_min": 1.0}, 3):
        with pytest.raises(ConfigError):
            spec_config(bad)
    assert spec_config("mtp") == SpecConfig(mode="mtp", k=3)  # one MTP block: short drafts


# -- the step loop -----------------------------------------------------------------------------------


def test_greedy_output_is_the_plain_output_with_fewer_steps():
    prompts = repetitive_prompts(6)
    plain_engine, _ = make_engine(parallel=4, model=echo_token)
    plain = [submit(plain_engine, p, max_tokens=40)[1] for p in prompts]
    plain_steps = run(plain_engine)
    engine, decoder = make_engine(parallel=4, model=echo_token)
    jobs = [submit(engine, p, max_tokens=40, speculative="lookup")[1] for p in prompts]
    steps = 0
    while engine.has_work:
        engine.step()
        steps += 1
        assert_kv_matches_slots(engine, decoder)  # rejected drafts never outlive their step
    for prompt, sink, ref in zip(prompts, jobs, plain, strict=True):
        assert out_tokens(sink) == out_tokens(ref) == solo(prompt, 40, model=echo_token)
        assert sink.result().finish_reason == ref.result().finish_reason
    timings = [s.result().timings for s in jobs]
    assert sum(t.accepted_tokens for t in timings) > 0
    assert all(t.accepted_tokens <= t.drafted_tokens for t in timings)
    assert sum(t.drafted_tokens for t in timings) > sum(t.accepted_tokens for t in timings)  # rejections too
    assert max(len(b) for b in decoder.drafts) >= 2  # several sequences speculated in one batch
    assert engine.stats.accepted_tokens == sum(t.accepted_tokens for t in timings)
    assert steps < plain_steps


def test_rejected_drafts_are_removed_from_the_kv_cache():
    engine, decoder = make_engine(parallel=1, model=echo_token)
    prompt = repetitive_prompts(1, seed=3)[0]
    _, sink = submit(engine, prompt, max_tokens=60, speculative={"k": 6})
    removed = []
    seq_rm = decoder.seq_rm

    def spy(seq_id: int, p0: int) -> bool:
        removed.append(p0)
        return seq_rm(seq_id, p0)

    decoder.seq_rm = spy  # type: ignore[method-assign]
    run(engine)
    assert removed, "some draft was rejected and rolled back"
    assert out_tokens(sink) == solo(prompt, 60, model=echo_token)
    assert_kv_matches_slots(engine, decoder)


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 13, 31])
def test_max_tokens_inside_an_accepted_run(max_tokens):
    prompt = repetitive_prompts(1, seed=4)[0]
    engine, decoder = make_engine(parallel=2, model=echo_token)
    _, sink = submit(engine, prompt, max_tokens=max_tokens, speculative="lookup")
    run(engine)
    assert out_tokens(sink) == solo(prompt, max_tokens, model=echo_token)
    assert sink.result().usage.completion_tokens == max_tokens
    assert all(len(d) <= max_tokens - 1 for batch in decoder.drafts for _, d in batch)


def test_a_stop_string_inside_an_accepted_run():
    prompt = repetitive_prompts(1, seed=5)[0]
    reference = solo(prompt, 40, model=echo_token)
    stop = f"<{reference[9]}>"
    expected = reference[: reference.index(reference[9])]
    plain_engine, _ = make_engine(model=echo_token)
    _, plain = submit(plain_engine, prompt, max_tokens=40, stop=[stop])
    run(plain_engine)
    engine, decoder = make_engine(model=echo_token)
    _, sink = submit(engine, prompt, max_tokens=40, stop=[stop], speculative="lookup")
    run(engine)
    assert out_tokens(sink) == out_tokens(plain) == expected
    assert sink.result().finish_reason == "stop"
    assert sink.result().usage == plain.result().usage
    assert_kv_matches_slots(engine, decoder)


def test_seeded_sampling_draws_exactly_as_without_speculation():
    """A draw that equals the draft keeps it, any other draw replaces it: one draw per emitted token,
    so a seeded stream is the same and the sampler state advances only on emitted tokens."""
    prompts = repetitive_prompts(4, seed=6)
    plain_engine, _ = make_engine(model=echo_token)
    plain = [submit(plain_engine, p, max_tokens=50, seed=i)[1] for i, p in enumerate(prompts)]
    run(plain_engine)
    samplers: list[FakeSampler] = []
    engine, decoder = make_engine(model=echo_token, on_sequence=lambda seq: samplers.append(seq.sampler))
    jobs = [submit(engine, p, max_tokens=50, seed=i, speculative="lookup")[1] for i, p in enumerate(prompts)]
    run(engine)
    for i, (prompt, sink, ref) in enumerate(zip(prompts, jobs, plain, strict=True)):
        expected = solo(prompt, 50, model=echo_token, sampler=FakeSampler(i))
        assert out_tokens(sink) == out_tokens(ref) == expected
    for sampler, sink in zip(samplers, jobs, strict=True):
        assert sampler.log == out_tokens(sink)  # the chain saw exactly the emitted tokens
    assert sum(s.result().timings.accepted_tokens for s in jobs) > 0


def test_cancel_between_speculative_steps_leaves_the_others_exact():
    prompts = repetitive_prompts(3, seed=7)
    engine, decoder = make_engine(parallel=3, model=echo_token)
    jobs = [submit(engine, p, max_tokens=40, speculative="lookup") for p in prompts]
    for _ in range(5):
        engine.step()
    victim, victim_sink = jobs[1]
    victim.cancel()
    engine.step()
    assert victim_sink.result().finish_reason == "cancelled"
    assert_kv_matches_slots(engine, decoder)
    run(engine)
    for (request, sink), prompt in zip(jobs, prompts, strict=True):
        if request is not victim:
            assert out_tokens(sink) == solo(prompt, 40, model=echo_token)


def test_drafts_fit_the_batch_and_the_kv_cache():
    prompts = repetitive_prompts(4, seed=8)
    engine, decoder = make_engine(parallel=4, n_batch=8, model=echo_token)
    jobs = [submit(engine, p, max_tokens=30, speculative={"k": 10})[1] for p in prompts]
    run(engine)
    assert all(sum(e[1] for e in batch) <= 8 for batch in decoder.batches)
    for prompt, sink in zip(prompts, jobs, strict=True):
        assert out_tokens(sink) == solo(prompt, 30, model=echo_token)
    small, small_decoder = make_engine(parallel=1, n_ctx=len(prompts[0]) + 12, model=echo_token)
    _, sink = submit(small, prompts[0], max_tokens=11, speculative={"k": 10})
    run(small)
    assert out_tokens(sink) == solo(prompts[0], 11, model=echo_token)
    assert small_decoder.drafts, "drafts were tried"


def test_off_and_default_do_not_speculate():
    prompt = repetitive_prompts(1)[0]
    for option in (None, "off"):
        engine, decoder = make_engine(model=echo_token)
        _, sink = submit(engine, prompt, max_tokens=20, speculative=option)
        run(engine)
        assert not decoder.drafts and sink.result().timings.drafted_tokens == 0


def test_server_metrics_count_drafted_and_accepted_tokens():
    from edge_qwen.runtime.results import GenerationResult, Timings, Usage
    from edge_qwen.server.metrics import ServerMetrics
    from edge_qwen.server.provider import MemoryUse, ServerSnapshot

    metrics = ServerMetrics(lambda: ServerSnapshot((), MemoryUse(), 0))
    timings = Timings(drafted_tokens=10, accepted_tokens=7)
    metrics.observe_generation("coder", GenerationResult("x", usage=Usage(3, 5), timings=timings))
    text = metrics.render().decode()
    assert 'edge_qwen_speculative_drafted_tokens_total{model="coder"} 10.0' in text
    assert 'edge_qwen_speculative_accepted_tokens_total{model="coder"} 7.0' in text


def test_a_thinking_budget_ending_inside_an_accepted_run():
    """The budget injects the close-think tokens after the token that exhausts it: the drafted tokens
    after that token are dropped and the injected ones are fed next, as without speculation."""
    prompt = repetitive_prompts(1, seed=1)[0]  # its first draft: 9 of 10 tokens accepted without a budget
    results = []
    for option in (None, "lookup"):
        engine, decoder = make_engine(model=echo_token, think_close=[50, 51])
        _, sink = submit(engine, prompt, max_tokens=30, speculative=option, thinking_budget=4)
        run(engine)
        assert_kv_matches_slots(engine, decoder)
        results.append((sink.result().text, sink.result().reasoning, sink.result().usage))
    assert decoder.drafts and len(decoder.drafts[0][0][1]) > 4  # the budget ran out inside that draft
    assert results[0] == results[1]
    assert "<50><51>" in results[0][0] + results[0][1]


def test_lookup_never_drafts_a_media_placeholder():
    """Images stand in a prompt as runs of a negative placeholder id; a draft must stop before one."""
    drafter = LookupDrafter(SpecConfig(n=2, n_min=2, k=6))
    image = [-77] * 4
    tokens = [5, 6, 7, *image, 9, 5, 6]
    assert drafter.propose(tokens, limit=6) == [7]
