"""The step loop's scheduling logic, on a fake decoder (no model): batching, admission, prefill
chunking, prefix reuse, KV exhaustion and cancellation."""

from __future__ import annotations

import random

from fake_decoder import make_engine, out_tokens, run, solo, submit

from edge_qwen.errors import ContextOverflowError, GenerationError
from edge_qwen.runtime.engine.slots import Slot, choose_slot, common_prefix, idle_caches_to_drop


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 97) for _ in range(rng.randrange(3, 40))] for _ in range(n)]


def test_batched_outputs_equal_solo_runs_and_share_steps():
    engine, decoder = make_engine(parallel=4)
    jobs = [(p, submit(engine, p, max_tokens=20)[1]) for p in prompts(8)]
    steps = run(engine)
    for prompt, sink in jobs:
        assert out_tokens(sink) == solo(prompt, 20)
        assert sink.result().finish_reason in ("length", "stop")
    assert max(len({e[0] for e in b}) for b in decoder.batches) == 4  # four sequences in one decode
    assert steps < sum(20 + 1 for _ in jobs)  # far fewer steps than running them one by one


def test_fifo_admission_with_one_slot():
    engine, _ = make_engine(parallel=1)
    sinks = [submit(engine, p, max_tokens=3)[1] for p in prompts(3, seed=1)]
    order = []
    while engine.has_work:
        engine.step()
        order += [i for i, s in enumerate(sinks) if s.done and i not in order]
    assert order == [0, 1, 2]


def test_long_prompt_is_prefilled_in_chunks_without_stalling_streams():
    engine, decoder = make_engine(parallel=2, prefill_chunk=8)
    _, running = submit(engine, [5, 6, 7], max_tokens=40)
    engine.step()
    engine.step()  # the first request is generating now
    long_prompt = list(range(1, 90))
    _, late = submit(engine, long_prompt, max_tokens=4)
    run(engine)
    mixed = [b for b in decoder.batches if {e[0] for e in b} == {0, 1}]
    assert mixed, "the long prompt's chunks rode along with the running stream's tokens"
    for batch in mixed:
        decode_rows = [e for e in batch if e[1] == 1 and e[3]]
        prefill_rows = [e for e in batch if not (e[1] == 1 and e[3])]
        assert decode_rows and sum(e[1] for e in prefill_rows) <= 8
    assert out_tokens(late) == solo(long_prompt, 4)
    assert out_tokens(running) == solo([5, 6, 7], 40)


def test_logits_only_where_a_token_is_sampled():
    engine, decoder = make_engine(parallel=2, prefill_chunk=4)
    submit(engine, list(range(1, 20)), max_tokens=2)
    run(engine)
    for batch in decoder.batches:
        for _seq, n, pos, logits in batch:
            assert logits == (pos + n in (19, 20, 21)) or not logits


def test_prefix_reuse_picks_the_slot_with_the_longest_cached_prefix():
    engine, _ = make_engine(parallel=3)
    system = list(range(10, 40))
    _, first = submit(engine, system + [1, 2], max_tokens=4)
    _, other = submit(engine, [90, 91, 92], max_tokens=4)
    run(engine)
    _, follow_up = submit(engine, system + [1, 2, 3, 4], max_tokens=4)
    run(engine)
    assert follow_up.result().usage.cached_tokens == len(system) + 2
    assert out_tokens(follow_up) == solo(system + [1, 2, 3, 4], 4)
    assert first.result().usage.cached_tokens == 0 and other.result().usage.cached_tokens == 0


def test_a_shared_prefix_is_copied_from_a_running_sequence():
    engine, decoder = make_engine(parallel=2, prefill_chunk=64)
    system = list(range(20, 60))
    _, a = submit(engine, system + [1], max_tokens=30)
    engine.step()
    engine.step()
    _, b = submit(engine, system + [2, 3], max_tokens=5)
    run(engine)
    assert b.result().usage.cached_tokens == len(system)
    assert out_tokens(b) == solo(system + [2, 3], 5)
    assert out_tokens(a) == solo(system + [1], 30)


def test_kv_exhaustion_preempts_the_youngest_and_outputs_stay_exact():
    engine, decoder = make_engine(parallel=4, n_ctx=120)
    jobs = [(p, submit(engine, p, max_tokens=25)[1]) for p in prompts(6, seed=3)]
    run(engine)
    assert engine.stats.preemptions > 0
    for prompt, sink in jobs:
        assert out_tokens(sink) == solo(prompt, 25)
    assert len(decoder.cells) <= 120


def test_a_request_that_cannot_fit_now_waits_for_room():
    engine, _ = make_engine(parallel=4, n_ctx=64)
    _, big = submit(engine, list(range(1, 50)), max_tokens=5)
    _, second = submit(engine, list(range(2, 40)), max_tokens=5)
    engine.step()
    assert big.started and not second.started  # 49 + 38 cells do not fit in 64: it waits
    run(engine)
    assert second.started and out_tokens(second) == solo(list(range(2, 40)), 5)


def test_a_prompt_longer_than_the_context_is_refused():
    engine, _ = make_engine(parallel=2, n_ctx=32)
    _, sink = submit(engine, list(range(1, 40)))
    run(engine)
    assert isinstance(sink.items[-1], ContextOverflowError)


def test_split_cache_gives_each_sequence_its_share():
    engine, _ = make_engine(parallel=4, n_ctx=256, unified=False)
    assert engine.n_ctx_seq == 64
    _, sink = submit(engine, list(range(1, 60)), max_tokens=50)
    run(engine)
    assert sink.result().finish_reason == "length" and len(out_tokens(sink)) == 64 - 59 + 1


def test_cancelling_one_sequence_frees_its_slot_within_a_step_and_leaves_others_intact():
    engine, _ = make_engine(parallel=3)
    jobs = [submit(engine, p, max_tokens=30) for p in prompts(3, seed=5)]
    for _ in range(6):
        engine.step()
    victim, victim_sink = jobs[1]
    victim.cancel()
    engine.step()
    assert victim_sink.result().finish_reason == "cancelled"
    assert engine.slots_in_use == 2
    run(engine)
    for (request, sink), prompt in zip(jobs, prompts(3, seed=5), strict=True):
        if request is not victim:
            assert out_tokens(sink) == solo(prompt, 30)


def test_a_failed_decode_ends_its_sequences_and_the_engine_goes_on():
    engine, decoder = make_engine(parallel=2)
    _, first = submit(engine, [1, 2, 3], max_tokens=5)
    decoder.fail_next = 1
    engine.step()
    assert isinstance(first.items[-1], GenerationError)
    _, second = submit(engine, [4, 5, 6], max_tokens=5)
    run(engine)
    assert out_tokens(second) == solo([4, 5, 6], 5)


def test_stop_at_end_of_generation():
    engine, _ = make_engine()
    _, sink = submit(engine, [13, 13], max_tokens=5)
    run(engine)
    assert sink.result().finish_reason == "stop" and sink.result().text == ""


def test_sequences_with_different_adapters_never_share_a_step_and_take_turns():
    engine, decoder = make_engine(parallel=4)
    sql, tone = (("sql", 1.0),), (("tone", 0.5),)
    jobs = [(p, key, submit(engine, p, max_tokens=10, adapters=key)[1])
            for p, key in zip(prompts(4, seed=7), [(), sql, tone, sql], strict=True)]  # fmt: skip
    run(engine)
    for prompt, key, sink in jobs:
        assert out_tokens(sink) == solo(prompt, 10, key)
    key_of_slot = {i: key for i, (_, key, _) in enumerate(jobs)}  # four jobs, four empty slots, in order
    for batch, key in zip(decoder.batches, decoder.adapter_log, strict=True):
        assert {key_of_slot[e[0]] for e in batch} == {key}
    assert decoder.adapter_log[:3] == [(), sql, tone]  # the three sets take turns


def test_a_cache_computed_under_one_adapter_is_never_reused_for_another():
    engine, _ = make_engine(parallel=2)
    prompt = list(range(30, 60))
    _, first = submit(engine, prompt, max_tokens=3, adapters=(("a", 1.0),))
    run(engine)
    _, other = submit(engine, prompt, max_tokens=3, adapters=(("b", 1.0),))
    _, same = submit(engine, prompt, max_tokens=3, adapters=(("a", 1.0),))
    run(engine)
    assert other.result().usage.cached_tokens == 0
    assert same.result().usage.cached_tokens == len(prompt) - 1
    assert out_tokens(other) == solo(prompt, 3, (("b", 1.0),))


# -- slot choice, pure ---------------------------------------------------------------------------


def test_choose_slot_prefers_longest_prefix_then_empty_then_least_recent():
    a = Slot(0, [1, 2, 3, 4], last_used=5.0)
    b = Slot(1, [1, 2, 9], last_used=1.0)
    c = Slot(2, [], last_used=9.0)
    assert choose_slot([a, b, c], [1, 2, 3, 4, 5], allow_copy=False).slot is a
    assert choose_slot([a, b, c], [7, 7], allow_copy=False).slot is c
    assert choose_slot([a, b], [7, 7], allow_copy=False).slot is b  # the least recently used
    a.busy = True
    placed = choose_slot([a, b, c], [1, 2, 3, 4, 5], allow_copy=True)
    assert placed.slot is c and placed.donor is a and placed.cached == 4  # b's conversation stays
    placed = choose_slot([b, c], [1, 2, 7], allow_copy=True)  # another turn after b's shared prefix
    assert placed.slot is c and placed.donor is b and placed.cached == 2
    assert choose_slot([b], [1, 2, 7], allow_copy=True).slot is b  # no other slot: b is cut back
    other = Slot(5, [1, 2, 9, 9, 9], last_used=1.0)  # another user's conversation after [1, 2]
    old = Slot(3, [5, 5], last_used=0.5)  # an older conversation goes before that one is cut
    assert choose_slot([other, old], [1, 2, 7], allow_copy=True).slot is old
    assert choose_slot([other, Slot(4, [5], last_used=3.0)], [1, 2, 7], allow_copy=True).slot is other
    assert choose_slot([b, old], [1, 2, 7], allow_copy=True).slot is b  # most of b: its own new turn
    assert choose_slot([a], [1], allow_copy=True) is None


def test_at_least_one_prompt_token_is_always_evaluated():
    slot = Slot(0, [1, 2, 3])
    assert choose_slot([slot], [1, 2, 3], allow_copy=False).reuse == 2
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2


def test_idle_caches_are_dropped_least_recent_first():
    keep = Slot(0, [1] * 10)
    old, new = Slot(1, [2] * 10, last_used=1.0), Slot(2, [3] * 10, last_used=2.0)
    busy = Slot(3, [4] * 10, busy=True)
    assert idle_caches_to_drop([keep, old, new, busy], keep, need=15, free=10) == [old]
    assert idle_caches_to_drop([keep, old, new, busy], keep, need=5, free=10) == []
    assert idle_caches_to_drop([keep, old, new, busy], keep, need=40, free=10) is None
    # the slot lending its prefix to the new prompt is never dropped to make room for it
    assert idle_caches_to_drop([keep, old, new, busy], keep, need=15, free=10, also_keep=old) == [new]
