"""Prompt-lookup speculative decoding on the real Qwen2.5-Coder-0.5B at temperature 0: the answer is
the one without speculation, for a code edit, a chat prompt and a JSON-schema prompt, alone and with
several sequences speculating in one batch.

The rule: llama.cpp's kernels may round a verification batch of k+1 tokens differently from a
one-token step, so where two greedy answers part it must be at a rounding near-tie, measured on
this machine (:mod:`near_tie`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from near_tie import assert_same_or_near_tie as _near_tie

from edge_qwen.runtime import GenerationResult, Model
from edge_qwen.runtime.handles import drain

pytestmark = [pytest.mark.real, pytest.mark.slow]

CODE = "\n".join(
    line
    for i in range(5)
    for line in (
        f"def bucket_{i}(rows):",
        "    x = 0",
        "    for row in rows:",
        f"        if row['group'] == {i}:",
        "            x += row['amount']",
        "    x = round(x, 2)",
        "    return x",
        "",
    )
)
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "languages": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "languages"],
}  # fmt: skip
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "code": (f"```python\n{CODE}```\nRename variable x to total and return the whole code.",
             {"max_tokens": 160}),
    "chat": ("Explain in three sentences why the sky is blue.", {"max_tokens": 60}),
    "json": ("Ada is 36 and speaks English and French. Describe her as JSON.",
             {"max_tokens": 40, "json_schema": SCHEMA}),
}  # fmt: skip


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def model(real_gguf: Path) -> Iterator[Model]:
    with Model.load(real_gguf, n_ctx=4096, parallel=3, n_threads=2) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def plain(model: Model) -> dict[str, GenerationResult]:
    out = {}
    for name, (text, options) in CASES.items():
        model.reset()
        out[name] = model.chat(ask(text), temperature=0, **options)
    return out


def assert_same_or_near_tie(model: Model, text: str, plain: GenerationResult, got: GenerationResult) -> None:
    _near_tie(model.path, model.prompt_tokens(model.render(ask(text))), plain, got)


@pytest.mark.parametrize("name", list(CASES))
def test_lookup_answers_as_without_speculation(model: Model, plain: dict[str, GenerationResult], name: str):
    text, options = CASES[name]
    model.reset()
    got = model.chat(ask(text), temperature=0, speculative="lookup", **options)
    assert_same_or_near_tie(model, text, plain[name], got)
    assert got.finish_reason == plain[name].finish_reason or got.token_ids != plain[name].token_ids
    assert got.timings.accepted_tokens <= got.timings.drafted_tokens
    if name == "code":
        assert got.timings.accepted_tokens >= 40, got.timings  # the edit copies most of the code
        assert "total" in got.text


def test_several_sequences_speculate_in_one_batch(model: Model, plain: dict[str, GenerationResult]):
    model.reset()
    streams = [model.chat_stream(ask(text), temperature=0, speculative="lookup", **options)
               for text, options in CASES.values()]  # fmt: skip
    results = [drain(s) for s in streams]
    for (name, (text, _)), got in zip(CASES.items(), results, strict=True):
        assert_same_or_near_tie(model, text, plain[name], got)
    assert sum(r.timings.accepted_tokens for r in results) >= 40
