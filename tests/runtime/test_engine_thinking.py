"""Qwen3 thinking on a tiny random Qwen3 GGUF carrying the real Qwen3 tokenizer and chat template.

Random weights never decide to think on their own, so each test makes the reasoning happen by an
honest mechanism and checks what the engine does with it:

* a GBNF grammar forces the model to write ``<think>…</think>`` and an answer -> reasoning split;
* a "thinking" variant of the real template that pre-opens ``<think>`` in the generation prompt
  (as Qwen3-*-Thinking-2507 templates do) starts the model inside reasoning -> thinking budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from make_tiny_checkpoints import make_checkpoint

from edge_qwen.convert import convert
from edge_qwen.runtime import Model
from edge_qwen.runtime.text.thinking import THINK_CLOSE

pytestmark = [pytest.mark.real, pytest.mark.slow]

HI = [{"role": "user", "content": "hi"}]
CLOSED_BLOCK = "{{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}"
OPEN_OR_CLOSED_BLOCK = "{{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- else %}{{- '<think>\\n' }}{%- endif %}"


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Iterator[Model]:
    root = tmp_path_factory.mktemp("tiny-qwen3")
    checkpoint = make_checkpoint(
        root / "checkpoint", arch="qwen3", dtype="bf16", tokenizer_dir=qwen3_tokenizer_dir
    )
    gguf = convert(checkpoint, root / "gguf", outtype="f16", evaluate=False, quiet=True).gguf
    with Model.load(gguf, n_ctx=512, n_threads=1) as model:
        yield model


@pytest.fixture()
def pre_opened_template(tiny_qwen3: Model) -> Iterator[Model]:
    """Swap in the thinking-model variant of the template for one test."""
    original = tiny_qwen3.chat_template
    assert original is not None and CLOSED_BLOCK in original
    tiny_qwen3.chat_template = original.replace(CLOSED_BLOCK, OPEN_OR_CLOSED_BLOCK)
    yield tiny_qwen3
    tiny_qwen3.chat_template = original


def test_the_tiny_model_carries_the_real_qwen3_template(tiny_qwen3: Model) -> None:
    assert tiny_qwen3.architecture == "qwen3"
    assert tiny_qwen3.chat_template is not None and "enable_thinking" in tiny_qwen3.chat_template


def test_enable_thinking_false_closes_the_block_and_everything_is_content(tiny_qwen3: Model) -> None:
    rendered = tiny_qwen3.render(HI, enable_thinking=False)
    result = tiny_qwen3.chat(HI, enable_thinking=False, temperature=0, max_tokens=8)

    assert rendered.text.endswith("<think>\n\n</think>\n\n") and not rendered.thinking_open
    assert result.reasoning == "" and result.text


def test_enable_thinking_true_leaves_thinking_to_the_model(tiny_qwen3: Model) -> None:
    rendered = tiny_qwen3.render(HI, enable_thinking=True)
    assert rendered.text.endswith("<|im_start|>assistant\n") and not rendered.thinking_open


def test_reasoning_and_content_are_split(tiny_qwen3: Model) -> None:
    grammar = 'root ::= "<think>\\nweigh it\\n</think>\\n\\n" "Answer: yes."'
    options = {"enable_thinking": True, "temperature": 0, "max_tokens": 40, "grammar": grammar}
    result = tiny_qwen3.chat(HI, **options)
    chunks = list(tiny_qwen3.chat_stream(HI, **options))

    assert (result.reasoning, result.text, result.finish_reason) == ("weigh it", "Answer: yes.", "stop")
    assert "".join(c.text for c in chunks if c.kind == "reasoning") == "weigh it"
    assert "".join(c.text for c in chunks if c.kind == "content") == "Answer: yes."


def test_pre_opened_block_starts_in_reasoning(pre_opened_template: Model) -> None:
    rendered = pre_opened_template.render(HI, enable_thinking=True)
    result = pre_opened_template.chat(HI, enable_thinking=True, temperature=0, max_tokens=12)

    assert rendered.thinking_open
    assert result.reasoning and result.text == ""


def test_thinking_budget_closes_reasoning_and_the_answer_follows(pre_opened_template: Model) -> None:
    model = pre_opened_template
    close_ids = model.tokenize(THINK_CLOSE, parse_special=True)
    max_tokens = 5 + len(close_ids) + 6
    result = model.chat(HI, enable_thinking=True, thinking_budget=5, temperature=0, max_tokens=max_tokens)

    assert list(result.token_ids[5 : 5 + len(close_ids)]) == close_ids
    assert result.reasoning.endswith("I have to give the solution based on the thinking directly now.")
    assert result.text  # generation went on after </think>, as the answer
    assert result.usage.completion_tokens == len(result.token_ids) == 5 + len(close_ids) + 6


def test_without_a_budget_the_tiny_model_keeps_reasoning(pre_opened_template: Model) -> None:
    result = pre_opened_template.chat(HI, enable_thinking=True, temperature=0, max_tokens=16)
    assert result.text == "" and "I have to give" not in result.reasoning
