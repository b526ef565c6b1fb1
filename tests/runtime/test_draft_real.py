"""Draft-model speculation with real llama.cpp contexts.

* Greedy, on the real Qwen2.5-Coder-0.5B drafting for itself (the only real pair here): the answer
  is the one without speculation for a code edit, a chat prompt and a JSON-schema prompt, alone and
  with several sequences speculating together (the measured near-tie rule of near_tie.py).
* Sampling, on a tiny random Qwen3 drafting for itself: over thousands of seeded requests, the
  tokens drawn with speculation follow the same distribution as without it (a chi-square test of
  homogeneity at the 0.1% level). A rule that accepted drafts too often would pile probability
  onto the draft's greedy token and fail it.
* A draft with another vocabulary is refused at load, naming the token that differs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from make_tiny_checkpoints import make_checkpoint
from test_speculative_real import CASES, ask, assert_same_or_near_tie

from edge_qwen.convert import convert
from edge_qwen.errors import ConfigError, DraftModelError
from edge_qwen.runtime import Model
from edge_qwen.runtime.handles import drain

pytestmark = [pytest.mark.real, pytest.mark.slow]
# drafting for itself never pays on a CPU (the draft costs what the target does), so the cost-aware
# default would rightly not draft: these tests draft regardless, to check what verification emits
ALWAYS = {"mode": "draft", "adaptive": False}


@pytest.fixture(scope="module")
def model(real_gguf: Path) -> Iterator[Model]:
    with Model.load(real_gguf, n_ctx=4096, parallel=3, n_threads=2, draft=real_gguf) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def tiny_qwen3_gguf(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("tiny-qwen3-draft")
    checkpoint = make_checkpoint(
        root / "checkpoint", arch="qwen3", dtype="bf16", tokenizer_dir=qwen3_tokenizer_dir
    )
    return convert(checkpoint, root / "gguf", outtype="f16", evaluate=False, quiet=True).gguf


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_answers_as_without_speculation(model: Model, name: str) -> None:
    text, options = CASES[name]
    model.reset()
    plain = model.chat(ask(text), temperature=0, speculative="off", **options)
    model.reset()
    got = model.chat(ask(text), temperature=0, speculative=ALWAYS, **options)
    assert_same_or_near_tie(model, text, plain, got)
    assert plain.timings.drafted_tokens == 0
    assert 0 < got.timings.accepted_tokens <= got.timings.drafted_tokens
    assert got.timings.accepted_tokens >= 0.8 * got.timings.drafted_tokens  # it drafts for itself


def test_several_sequences_speculate_in_one_batch(model: Model) -> None:
    model.reset()
    plain = [
        model.chat(ask(text), temperature=0, speculative="off", **options) for text, options in CASES.values()
    ]
    model.reset()
    streams = [model.chat_stream(ask(text), temperature=0, speculative={**ALWAYS, "k": 4}, **options)
               for text, options in CASES.values()]  # fmt: skip
    for (text, _), ref, got in zip(CASES.values(), plain, [drain(s) for s in streams], strict=True):
        assert_same_or_near_tie(model, text, ref, got)
        assert got.timings.drafted_tokens > 0


def test_a_draft_with_another_vocabulary_is_refused(real_gguf: Path, tiny_qwen3_gguf: Path) -> None:
    with pytest.raises(DraftModelError, match=r"cannot draft for this model: token \d+ is .* same family"):
        Model.load(real_gguf, n_ctx=512, parallel=1, n_threads=2, draft=tiny_qwen3_gguf)


def test_draft_mode_needs_a_draft_model(tiny_qwen3_gguf: Path) -> None:
    with Model.load(tiny_qwen3_gguf, n_ctx=512, parallel=1, n_threads=1) as plain:
        with pytest.raises(ConfigError, match="needs a draft model.*draft="):
            plain.generate("hello", max_tokens=2, speculative="draft")
        assert plain.generate("hello", max_tokens=2, speculative="lookup").usage.completion_tokens == 2


def chi_square_p(counts_a: Counter[tuple[int, ...]], counts_b: Counter[tuple[int, ...]]) -> tuple[float, int]:
    """Two-sample chi-square test of homogeneity over the outcomes (rare ones pooled so that every
    expected count is at least 5); the p-value by the Wilson-Hilferty approximation."""
    n_a, n_b = sum(counts_a.values()), sum(counts_b.values())
    cells: list[tuple[int, int]] = []
    pooled = [0, 0]
    for key in sorted(set(counts_a) | set(counts_b)):
        a, b = counts_a[key], counts_b[key]
        if (a + b) * min(n_a, n_b) / (n_a + n_b) < 5:
            pooled[0] += a
            pooled[1] += b
        else:
            cells.append((a, b))
    if sum(pooled):
        cells.append((pooled[0], pooled[1]))
    stat = 0.0
    for a, b in cells:
        total = a + b
        for observed, n in ((a, n_a), (b, n_b)):
            expected = total * n / (n_a + n_b)
            stat += (observed - expected) ** 2 / expected
    df = len(cells) - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2)), df


Draws = Counter[tuple[int, ...]]


def seeded_draws(model: Model, speculative: object, n: int) -> tuple[Draws, Draws, int, int]:
    """The 2nd and 3rd tokens of ``n`` seeded samples without speculation and of ``n`` with it
    (other seeds), and how many tokens the speculative ones drafted and accepted."""
    sampling = {"temperature": 1.0, "top_k": 4, "top_p": 1.0, "min_p": 0.0, "max_tokens": 3}
    draws = []
    for mode, seeds in (("off", range(n)), (speculative, range(n, 2 * n))):
        streams = [model.stream("The weather today is", seed=seed, speculative=mode, **sampling)
                   for seed in seeds]  # fmt: skip
        results = [drain(s) for s in streams]
        draws.append(Counter(r.token_ids[1:3] for r in results if len(r.token_ids) == 3))
    assert sum(draws[0].values()) > 0.95 * n and sum(draws[1].values()) > 0.95 * n
    drafted = sum(r.timings.drafted_tokens for r in results)
    return draws[0], draws[1], drafted, sum(r.timings.accepted_tokens for r in results)


def test_sampled_tokens_follow_the_target_distribution(tiny_qwen3_gguf: Path) -> None:
    with Model.load(tiny_qwen3_gguf, n_ctx=4096, parallel=16, n_threads=2, draft=tiny_qwen3_gguf) as tiny:
        plain, speculative, drafted, accepted = seeded_draws(tiny, {**ALWAYS, "p_min": 0.0}, 2000)
    assert 0.1 * drafted < accepted < 0.9 * drafted, (drafted, accepted)  # drafts kept and rejected
    p, df = chi_square_p(plain, speculative)
    assert df >= 8, "enough distinct outcomes for the test to mean something"
    assert p > 0.001, (
        f"the 2nd and 3rd tokens' distribution changed with speculation (p = {p:.2g}, df = {df})"
    )
