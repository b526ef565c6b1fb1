"""Draft lengths from the measured step cost: the fit, the choice, and the step loop on a fake
machine whose decode time is ``a + b * tokens`` (a CPU where a 9-token batch costs ~4 steps, and a
GPU-like one where it costs about one)."""

from __future__ import annotations

import pytest
from fake_decoder import FakeDecoder, echo_token, make_engine, next_token, out_tokens, run, solo, submit
from test_speculative import repetitive_prompts

from edge_qwen.runtime.speculation.spec_cost import StepCost, best_draft_length, expected_tokens


def fitted(a: float, b: float, sizes=(1, 1, 2, 3, 5, 8, 1, 4, 9, 2, 1, 6)) -> StepCost:
    cost = StepCost()
    for n in sizes:
        cost.observe(n, a + b * n)
    return cost


def test_the_fit_recovers_intercept_and_slope_and_ignores_prefill_batches():
    cost = fitted(0.030, 0.013)
    cost.observe(512, 5.0)  # a prefill chunk: another regime, left out
    a, b = cost.fit()
    assert a == pytest.approx(0.030) and b == pytest.approx(0.013)
    assert StepCost().fit() is None
    same_size = StepCost()
    for _ in range(20):
        same_size.observe(1, 0.03)
    assert same_size.fit() is None  # no spread in batch sizes: the slope is unknown


def test_expected_tokens_per_step():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(1.0, 5) == 6.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_the_best_length_follows_the_machine_and_the_acceptance():
    cpu, gpu = fitted(0.030, 0.013), fitted(0.030, 0.0003)
    assert best_draft_length(0.9, 10, 1, gpu) == 10  # verification is nearly free: draft all
    k_cpu = best_draft_length(0.9, 10, 1, cpu)
    assert 2 <= k_cpu <= 5
    assert best_draft_length(0.3, 10, 1, cpu) == 0  # rarely accepted: drafting would cost time
    assert best_draft_length(0.9, 10, 1, cpu, draft_cost=0.05) == 0  # a draft model slower than the gain
    assert best_draft_length(0.9, 7, 1, None) == 7  # no measurements yet: the drafter's own length


class TimedDecoder(FakeDecoder):
    """A fake context on a fake clock: each decode takes ``a + b * tokens`` seconds."""

    a: float = 0.030
    b: float = 0.013
    now: float = 0.0

    def decode(self, entries):
        rc = super().decode(entries)
        if rc == 0:
            self.now += self.a + self.b * sum(len(e.tokens) for e in entries)
        return rc


def timed_run(prompts, model, b: float, speculative) -> tuple[float, list[list[int]]]:
    decoder = TimedDecoder(n_cells=4096, model=model)
    decoder.b = b
    clock = lambda: decoder.now  # noqa: E731 - the fake decoder's time
    engine, _ = make_engine(parallel=1, model=model, decoder=decoder, cost=StepCost(), clock=clock)
    outs = []
    for p in prompts:
        _, sink = submit(engine, p, max_tokens=60, speculative=speculative)
        run(engine)
        outs.append(out_tokens(sink))
    return decoder.now, outs


@pytest.mark.parametrize("b", [0.013, 0.0003])
def test_lookup_never_costs_time_on_text_that_does_not_repeat(b):
    prompts = [list(range(3 + i, 40 + i)) for i in range(4)]
    plain, plain_out = timed_run(prompts, next_token, b, None)
    for option in ("lookup", {"mode": "lookup", "n_min": 1, "n": 1}):  # one-token matches: drafts galore
        spec, spec_out = timed_run(prompts, next_token, b, option)
        assert spec_out == plain_out == [solo(p, 60) for p in prompts]
        assert spec <= 1.03 * plain


def test_lookup_pays_off_on_text_that_repeats_on_either_machine():
    prompts = repetitive_prompts(4, seed=30)
    for b in (0.013, 0.0003):
        plain, plain_out = timed_run(prompts, echo_token, b, None)
        spec, spec_out = timed_run(prompts, echo_token, b, "lookup")
        assert spec_out == plain_out
        assert spec < plain
