"""Hybrid models (Qwen3.5, Qwen3-Next) in the step loop, on a fake hybrid decoder: a recurrent state
per sequence that cannot be cut back, so a cached prefix is reused only through state checkpoints,
and rejected drafts are rolled back with llama.cpp's per-step snapshots. Every output is compared
with what the sequence generates alone (a fresh full prefill); the fake fails a test whose engine
decodes on a recurrent state that does not match the cached tokens."""

from __future__ import annotations

from fake_decoder import make_engine, next_token, out_tokens, run, solo, submit

from edge_qwen.runtime.engine.checkpoints import (
    Checkpoint,
    checkpoint_positions,
    keep_recent,
    reusable_prefix,
)

START = 96  # the fake vocabulary's "<|im_start|>"
SYSTEM = [START, *range(10, 50), 13]  # a 42-token system message
ANSWER = 24
NEXT_QUESTION = [13, START, 3, *[62] * 18, START, 5]  # a reply's end, a question, the next opening


def chat(*questions: int) -> list[int]:
    """A ChatML-shaped prompt: the system message, one 20-token user message per question, and the
    reply's opening."""
    prompt = list(SYSTEM)
    for q in questions:
        prompt += [START, 3, *[q] * 18]
    return prompt + [START, 5]


def hybrid(**options):
    options.setdefault("boundary", START)
    return make_engine(recurrent=True, **options)


# -- where checkpoints go ------------------------------------------------------------------------------


def test_a_prompt_is_checkpointed_after_its_system_prompt_before_its_last_question_and_at_its_end():
    prompt = chat(60, 61, 62)
    assert checkpoint_positions(prompt, START) == [len(SYSTEM), len(chat(60, 61)) - 2, len(prompt)]
    assert checkpoint_positions(prompt, None) == [len(prompt)]  # no message starts known: the end
    assert checkpoint_positions(prompt, START, after=len(SYSTEM)) == [len(chat(60, 61)) - 2, len(prompt)]


def test_a_short_question_still_gets_its_own_checkpoint_before_the_end():
    prompt = [START, 1, 2, START, 5, START, 7]  # system, a two-token question, the reply's header
    assert checkpoint_positions(prompt, START) == [3, len(prompt)]


def test_a_cache_is_reusable_up_to_a_checkpoint_or_whole_when_it_continues():
    marks = [Checkpoint(40, b"a"), Checkpoint(80, b"b")]
    assert reusable_prefix(100, 100, marks) == 100  # the prompt continues the live state
    assert reusable_prefix(100, 100, marks, live=False) == 80  # a donor lends only checkpoints
    assert reusable_prefix(79, 100, marks) == 40  # one token short of a checkpoint: the one before
    assert reusable_prefix(80, 100, marks) == 80  # exactly at it
    assert reusable_prefix(39, 100, marks) == 0


def test_a_slot_keeps_its_earliest_checkpoint_and_its_latest_ones():
    marks: list[Checkpoint] = []
    for n in (40, 80, 120, 160, 200):
        marks = keep_recent(marks, Checkpoint(n, b"x"), per_slot=3)
    assert [c.n_tokens for c in marks] == [40, 160, 200]


# -- prefix reuse through checkpoints --------------------------------------------------------------------


def test_a_shared_system_prompt_is_reused_from_its_checkpoint():
    engine, decoder = hybrid(parallel=1)
    submit(engine, chat(60), max_tokens=6)
    run(engine)
    second = chat(61)  # another user: the same system message, another question
    _, sink = submit(engine, second, max_tokens=6)
    run(engine)
    assert sink.result().usage.cached_tokens == len(SYSTEM)
    assert decoder.partial_loads == 1
    assert out_tokens(sink) == solo(second, 6)


def test_users_sharing_a_system_prompt_keep_their_own_conversations_cached():
    """The second user borrows the system prompt into another slot (here the one an older, unrelated
    request left) instead of cutting the first user's conversation back to it: each user's next
    turn continues its own."""
    engine, _ = hybrid(parallel=2)
    submit(engine, [START, 7, 8, 9, START, 5], max_tokens=4)  # a warm-up, unrelated
    run(engine)
    sinks = {}
    for q in (60, 61):
        _, sinks[q] = submit(engine, chat(q), max_tokens=ANSWER)
        run(engine)
    assert sinks[61].result().usage.cached_tokens == len(SYSTEM)  # borrowed from the first slot
    for q in (60, 61):
        turn = chat(q) + out_tokens(sinks[q]) + NEXT_QUESTION
        _, sink = submit(engine, turn, max_tokens=6)
        run(engine)
        assert sink.result().usage.cached_tokens >= len(chat(q))  # its own conversation, still cached
        assert out_tokens(sink) == solo(turn, 6)


def answered(engine, prompt: list[int]) -> list[int]:
    """Run ``prompt`` to its full answer and return the answer's tokens."""
    _, sink = submit(engine, prompt, max_tokens=ANSWER)
    run(engine)
    return out_tokens(sink)


def test_the_next_chat_turn_is_reused_from_the_end_of_the_previous_prompt_when_the_reply_is_re_rendered():
    engine, _ = hybrid(parallel=1)
    first = chat(60)
    reply = answered(engine, first)
    # the template renders the reply differently (Qwen3 drops <think>): the prefix ends at the prompt
    second = first + [reply[0] + 1, *reply[1:]] + NEXT_QUESTION
    _, sink = submit(engine, second, max_tokens=6)
    run(engine)
    assert sink.result().usage.cached_tokens == len(first)
    assert out_tokens(sink) == solo(second, 6)


def test_a_turn_that_continues_the_cache_exactly_needs_no_checkpoint():
    engine, decoder = hybrid(parallel=1)
    first = chat(60)
    reply = answered(engine, first)
    second = first + reply + NEXT_QUESTION
    _, sink = submit(engine, second, max_tokens=6)
    run(engine)
    assert sink.result().usage.cached_tokens == len(first) + len(reply) - 1  # the last was never decoded
    assert decoder.partial_loads == 0
    assert out_tokens(sink) == solo(second, 6)


def test_an_edited_last_question_goes_back_to_the_checkpoint_before_it():
    engine, _ = hybrid(parallel=1)
    submit(engine, chat(60, 61), max_tokens=6)
    run(engine)
    edited = chat(60, 70)
    _, sink = submit(engine, edited, max_tokens=6)
    run(engine)
    assert sink.result().usage.cached_tokens == len(chat(60)) - 2  # before the edited question
    assert out_tokens(sink) == solo(edited, 6)


def test_a_checkpoint_one_token_past_the_common_prefix_is_not_used():
    engine, _ = hybrid(parallel=1)
    submit(engine, chat(60), max_tokens=6)
    run(engine)
    # the same system message but its last token: the checkpoint after it does not serve the prompt
    other = [*SYSTEM[:-1], 14, START, 3, *[60] * 18, START, 5]
    _, sink = submit(engine, other, max_tokens=6)
    run(engine)
    assert sink.result().usage.cached_tokens == 0
    assert out_tokens(sink) == solo(other, 6)


def test_a_prompt_that_ends_exactly_at_a_checkpoint_still_evaluates_its_last_token():
    engine, _ = hybrid(parallel=1)
    prompt = chat(60)
    submit(engine, prompt, max_tokens=6)
    run(engine)
    _, sink = submit(engine, prompt, max_tokens=6)  # the same prompt again: its logits are needed
    run(engine)
    assert sink.result().usage.cached_tokens < len(prompt)
    assert out_tokens(sink) == solo(prompt, 6)


def test_another_slot_borrows_a_system_prompt_checkpoint_from_a_busy_one():
    engine, decoder = hybrid(parallel=2)
    long_one = chat(60)
    submit(engine, long_one, max_tokens=40)
    for _ in range(12):
        engine.step()  # the first conversation is generating in slot 0
    second = chat(61)
    _, sink = submit(engine, second, max_tokens=6)
    run(engine)
    assert sink.result().usage.cached_tokens == len(SYSTEM)  # its K/V copied, its state a checkpoint
    assert out_tokens(sink) == solo(second, 6)


def test_without_checkpoints_a_hybrid_reprefills_but_stays_correct():
    engine, decoder = hybrid(parallel=1, checkpoints=0)
    submit(engine, chat(60), max_tokens=6)
    run(engine)
    second = chat(61)
    _, sink = submit(engine, second, max_tokens=6)
    run(engine)
    assert sink.result().usage.cached_tokens == 0
    assert out_tokens(sink) == solo(second, 6)


def test_the_prompt_cache_keeps_a_hybrid_slots_checkpoints():
    engine, decoder = hybrid(parallel=1, prompt_cache=1 << 20)
    submit(engine, chat(60), max_tokens=6)
    run(engine)
    submit(engine, [START, *range(200, 240)], max_tokens=6)  # another conversation takes the slot
    run(engine)
    second = chat(61)
    _, sink = submit(engine, second, max_tokens=6)
    run(engine)
    assert decoder.loaded, "the saved cache was written back"
    assert sink.result().usage.cached_tokens == len(SYSTEM)  # and cut back to its checkpoint
    assert out_tokens(sink) == solo(second, 6)


def test_many_conversations_under_preemption_match_their_solo_runs():
    engine, _ = hybrid(parallel=3, n_ctx=300, prompt_cache=1 << 20)
    prompts = [chat(60 + i % 3, 70 + i) for i in range(7)]
    sinks = [submit(engine, p, max_tokens=30)[1] for p in prompts]
    run(engine)
    assert engine.stats.preemptions > 0
    for prompt, sink in zip(prompts, sinks, strict=True):
        assert out_tokens(sink) == solo(prompt, 30)


# -- speculation with rollback ---------------------------------------------------------------------------


ALWAYS = {"mode": "lookup", "adaptive": False, "max_pause": 0}  # draft whatever it costs, never pause


def counting(history, adapters=()):
    """A model that mostly counts 10, 11 … 49, 10 … (the system prompt holds the count, so prompt
    lookup drafts it), except where the hash of the history says otherwise (about 1 in 5)."""
    token = next_token(history, adapters)
    last = history[-1] if history else 0
    return token if token % 5 == 0 else 10 + (last - 9) % 40


def test_lookup_drafts_on_a_hybrid_and_rolls_rejected_tokens_back():
    engine, decoder = hybrid(parallel=2, model=counting, rollback_window=4)
    prompts = [chat(60) * 2, chat(61) * 2]
    sinks = [
        submit(engine, p, max_tokens=40, speculative=ALWAYS)[1] for p in prompts
    ]
    run(engine)
    assert engine.stats.drafted_tokens > 0
    assert engine.stats.accepted_tokens < engine.stats.drafted_tokens  # some were rolled back
    assert max(len(d) for step in decoder.drafts for _, d in step) <= 4  # within llama.cpp's snapshots
    for prompt, sink in zip(prompts, sinks, strict=True):
        assert out_tokens(sink) == solo(prompt, 40, model=counting)


def test_without_snapshots_a_hybrid_saves_its_state_before_each_verification():
    """Qwen3-Next has no recurrent snapshots in this llama.cpp: a rejection goes back to the state
    saved before the verification step and feeds the accepted tokens again."""
    engine, decoder = hybrid(parallel=2, model=counting, rollback_window=0)
    prompts = [chat(60) * 2, chat(61) * 2]
    sinks = [
        submit(engine, p, max_tokens=40, speculative=ALWAYS)[1] for p in prompts
    ]
    run(engine)
    assert engine.stats.accepted_tokens < engine.stats.drafted_tokens  # some were rejected
    assert max(len(d) for step in decoder.drafts for _, d in step) > 4  # not capped by a window
    assert decoder.partial_loads > 0  # the saved states were put back: only accepted tokens are fed again
    assert engine.stats.decoded_tokens <= sum(map(len, prompts)) + 2 * 40 + 2 * engine.stats.drafted_tokens
    for prompt, sink in zip(prompts, sinks, strict=True):
        assert out_tokens(sink) == solo(prompt, 40, model=counting)
