"""Drafting with the model's own MTP head, on tiny random Qwen3.5, Qwen3.5-MoE and Qwen3-Next GGUFs
converted by edge-qwen with the head kept.

* The mechanics: the head's first draft after a prompt is the argmax of the float64 numpy MTP
  reference (tests/numpy_reference_hybrid.py) on the same tokens: the hidden states the target hands
  over, the head's K/V over the prompt and the pairing of token and state are all right.
* The answer: greedy output with MTP drafting every step, alone and with several sequences in one
  batch, is the answer without it (random weights: the drafts are nearly always rejected, so every
  step exercises the rollback of the recurrent state).
* Refusals name the way out: a GGUF without the head, a request for 'mtp' on a model loaded
  without it, a draft model and the head together.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from near_tie import assert_same_or_near_tie
from numpy_reference_hybrid import reference_mtp_logits

from edge_qwen.errors import ConfigError
from edge_qwen.runtime import Model
from edge_qwen.runtime.handles import drain

pytestmark = [pytest.mark.real]

ALWAYS = {"mode": "mtp", "adaptive": False, "p_min": 0.0, "max_pause": 0}  # draft every step
QUESTIONS = ["When do you open on Sundays?", "Can I renew a book twice?", "Where is the shelf of maps?"]


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe", "qwen3next"])
def test_the_first_draft_is_the_heads_prediction(
    hybrid_gguf: Callable[..., Path], tiny_hybrid: Callable[..., Path], arch: str
) -> None:
    rng = np.random.default_rng(7)
    prompt = [int(t) for t in rng.integers(200, 20000, 24)]
    with Model.load(hybrid_gguf(arch), n_ctx=512, parallel=1, n_threads=2, mtp=True) as model:
        first = model.generate(prompt, temperature=0, max_tokens=1, speculative="off")
        history = [*prompt, *first.token_ids]  # the prompt is decoded, its answer's first token not yet
        head = model._mtp
        assert head is not None
        drafts = model._compute.call(lambda: head.propose({0: (history, 1)}, {0: 0.0}))
    expected = int(reference_mtp_logits(tiny_hybrid(arch), history)[-1].argmax())
    assert drafts == {0: [expected]}


@pytest.mark.parametrize("arch", ["qwen35", "qwen3next"])
def test_greedy_answers_with_mtp_are_the_answers_without(hybrid_gguf: Callable[..., Path], arch: str) -> None:
    path = hybrid_gguf(arch)
    with Model.load(path, n_ctx=2048, parallel=3, n_threads=2, mtp=True) as model:
        plain = []
        for q in QUESTIONS:
            model.reset()
            plain.append(model.chat(ask(q), temperature=0, max_tokens=24, speculative="off"))
        model.reset()
        alone = model.chat(ask(QUESTIONS[0]), temperature=0, max_tokens=24, speculative=ALWAYS)
        model.reset()
        streams = [model.chat_stream(ask(q), temperature=0, max_tokens=24, speculative=ALWAYS)
                   for q in QUESTIONS]  # fmt: skip
        together = [drain(s) for s in streams]
        prompts = [model.prompt_tokens(model.render(ask(q))) for q in QUESTIONS]
    assert alone.timings.drafted_tokens >= 10  # it drafted on most steps
    assert_same_or_near_tie(path, prompts[0], plain[0], alone)
    assert sum(r.timings.drafted_tokens for r in together) >= 30
    for prompt, a, b in zip(prompts, plain, together, strict=True):
        assert_same_or_near_tie(path, prompt, a, b)


def test_mtp_is_the_default_drafter_once_loaded(hybrid_gguf: Callable[..., Path]) -> None:
    with Model.load(hybrid_gguf("qwen35"), n_ctx=1024, parallel=1, n_threads=2, mtp=True) as model:
        assert model.has_draft
        with pytest.raises(ConfigError, match="needs a draft model.*or 'mtp'"):
            model.chat(ask(QUESTIONS[0]), speculative="draft")


def test_refusals_name_the_way_out(hybrid_gguf: Callable[..., Path], real_gguf: Path) -> None:
    with pytest.raises(ConfigError, match="has no MTP head.*--no-mtp"):
        Model.load(hybrid_gguf("qwen35", mtp=False), mtp=True)
    with pytest.raises(ConfigError, match="has no MTP head"):
        Model.load(real_gguf, mtp=True)  # Qwen2.5: an attention-only model without one
    with pytest.raises(ConfigError, match="load one of them"):
        Model.load(hybrid_gguf("qwen35"), mtp=True, draft=real_gguf)
    with Model.load(hybrid_gguf("qwen35"), n_ctx=512, parallel=1, n_threads=2) as model:
        with pytest.raises(ConfigError, match=r"Model.load\(path, mtp=True\)"):
            model.chat(ask(QUESTIONS[0]), speculative="mtp")


def test_run_mtp_drafts_and_a_file_without_a_head_is_a_clear_error(
    hybrid_gguf: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_qwen.cli import main

    common = ["hello", "--max-tokens", "12", "--temperature", "0", "--ctx", "512", "--threads", "2", "--json"]
    answers = []
    for extra in ([], ["--mtp"]):
        assert main(["run", str(hybrid_gguf("qwen35")), *common, *extra]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    plain, mtp = answers
    assert mtp["text"] == plain["text"] and mtp["usage"]["completion_tokens"] == 12
    code = main(["run", str(hybrid_gguf("qwen35", mtp=False)), *common, "--mtp"])
    out, err = capsys.readouterr()
    assert code != 0 and "has no MTP head" in (out + err) and "Traceback" not in err
