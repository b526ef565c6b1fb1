"""The host-memory prompt cache: caches the slots give up are kept and written back for a prompt
that continues them, exactly (fake decoder, no model); its byte budget, adapter keys and reset."""

from __future__ import annotations

from fake_decoder import make_engine, out_tokens, run, solo, submit

from edge_qwen.runtime.engine.prompt_cache import PromptCache

SYSTEM = list(range(10, 50))  # a 40-token system prompt every conversation starts with


def conversation(i: int) -> list[int]:
    return SYSTEM + [60 + i] * 12  # each conversation's own first turn


def test_more_conversations_than_slots_come_back_from_host_memory():
    engine, decoder = make_engine(parallel=2, prompt_cache=1 << 20)
    first = {}
    for i in range(4):  # four conversations through two slots: each pushes an older one out
        _, sink = submit(engine, conversation(i), max_tokens=6)
        run(engine)
        first[i] = out_tokens(sink)
    assert engine.prompt_cache.stats.saved >= 2
    follow_up = conversation(0) + first[0] + [7, 8, 9]  # conversation 0's second turn
    _, sink = submit(engine, follow_up, max_tokens=6)
    run(engine)
    assert decoder.loaded, "the saved cache was written back into a slot"
    # everything but the answer's last token, which was sampled and never decoded
    assert sink.result().usage.cached_tokens == len(conversation(0)) + len(first[0]) - 1
    assert out_tokens(sink) == solo(follow_up, 6)  # the restored K/V is exactly what a prefill computes


def test_without_a_budget_nothing_is_kept():
    engine, decoder = make_engine(parallel=2)
    for i in range(4):
        submit(engine, conversation(i), max_tokens=6)
        run(engine)
    follow_up = conversation(0) + [7, 8, 9]
    _, sink = submit(engine, follow_up, max_tokens=6)
    run(engine)
    assert not engine.prompt_cache.entries and not decoder.loaded
    assert sink.result().usage.cached_tokens == len(SYSTEM)  # only the slots' shared system prompt
    assert out_tokens(sink) == solo(follow_up, 6)


def test_the_budget_evicts_the_least_recently_used():
    cache = PromptCache(250, min_tokens=4)
    for i in range(3):
        assert cache.save([i + 1] * 10, (), lambda: b"x" * 100)
    assert cache.used_bytes <= 250 and len(cache.entries) == 2
    assert [e.tokens[0] for e in cache.entries] == [2, 3] and cache.stats.evicted == 1
    assert not cache.save([9] * 10, (), lambda: b"x" * 300)  # larger than the whole budget


def test_a_cache_is_saved_once_and_an_extension_replaces_it():
    cache = PromptCache(10_000, min_tokens=4)
    reads = []

    def state() -> bytes:
        reads.append(1)
        return b"s" * 10

    assert cache.save([1, 2, 3, 4, 5, 6], (), state)
    assert not cache.save([1, 2, 3, 4], (), state)  # already held inside the longer one
    assert cache.save([1, 2, 3, 4, 5, 6, 7, 8], (), state)  # extends it: the old entry goes
    assert len(cache.entries) == 1 and len(reads) == 2
    assert not cache.save([1, 2, 3], (), state)  # too short to be worth keeping
    assert not cache.save([1, 2, -5, -5, 3, 4], (), state)  # image cells are not kept


def test_best_prefix_respects_adapter_sets_and_the_limit():
    cache = PromptCache(10_000, min_tokens=2)
    cache.save([1, 2, 3, 4, 5], (("sql", 1.0),), lambda: b"a")
    cache.save([1, 2, 9, 9], (), lambda: b"b")
    entry, n = cache.best([1, 2, 3, 4, 5, 6], (), limit=5)
    assert n == 2 and entry is not None and entry.state == b"b"  # K/V under an adapter is not reused
    entry, n = cache.best([1, 2, 3, 4, 5], (("sql", 1.0),), limit=4)
    assert n == 4 and entry is not None and entry.state == b"a"
    cache.forget("sql")
    assert [e.state for e in cache.entries] == [b"b"]


def test_reset_forgets_saved_caches_too():
    engine, _ = make_engine(parallel=1, prompt_cache=1 << 20)
    for i in range(2):
        submit(engine, conversation(i), max_tokens=4)
        run(engine)
    assert engine.prompt_cache.entries
    submit(engine, [], max_tokens=1)  # an empty prompt is a cache reset
    run(engine)
    assert not engine.prompt_cache.entries


def test_a_restore_llama_cpp_refuses_falls_back_to_prefill():
    engine, decoder = make_engine(parallel=1, prompt_cache=1 << 20)
    for i in range(2):
        submit(engine, conversation(i), max_tokens=4)
        run(engine)
    decoder.load_state = lambda seq_id, state: False  # type: ignore[method-assign]
    follow_up = conversation(0) + [7, 8]
    _, sink = submit(engine, follow_up, max_tokens=5)
    run(engine)
    assert out_tokens(sink) == solo(follow_up, 5)
    assert sink.result().usage.cached_tokens == 0


def test_kv_exhaustion_keeps_dropped_idle_caches_in_host_memory():
    engine, decoder = make_engine(parallel=4, n_ctx=160, prompt_cache=1 << 20)
    for i in range(3):  # three idle caches of ~60 cells: the KV cache is nearly full
        submit(engine, conversation(i), max_tokens=8)
        run(engine)
    _, big = submit(engine, list(range(100, 190)), max_tokens=4)  # needs the idle caches' cells
    run(engine)
    assert engine.prompt_cache.stats.saved >= 1
    follow_up = conversation(0) + [1, 2]
    _, sink = submit(engine, follow_up, max_tokens=4)
    run(engine)
    assert out_tokens(sink) == solo(follow_up, 4) and out_tokens(big) == solo(list(range(100, 190)), 4)
    assert len(decoder.cells) <= 160


def test_a_preempted_sequence_comes_back_from_host_memory_exactly():
    engine, decoder = make_engine(parallel=4, n_ctx=150, prompt_cache=1 << 20)
    jobs = [(p, submit(engine, p, max_tokens=30)[1]) for p in (conversation(i) for i in range(3))]
    run(engine)
    assert engine.stats.preemptions > 0 and engine.prompt_cache.stats.restored > 0
    for prompt, sink in jobs:
        assert out_tokens(sink) == solo(prompt, 30)
    assert len(decoder.cells) <= 150
