"""ReasoningSplitter: streamed Qwen3 answers split into reasoning and content like Qwen's template does."""

from __future__ import annotations

import pytest

from edge_qwen.runtime.text.thinking import (
    END_TAG,
    THINK_CLOSE,
    THINK_CLOSE_MINIMAL,
    ReasoningSplitter,
    reasoning_state,
)


def qwen_parse(text: str) -> tuple[str, str]:
    """How Qwen3's chat template splits a finished assistant message (its assistant branch)."""
    if "</think>" not in text:
        return "", text
    content = text.split("</think>")[-1].lstrip("\n")
    reasoning = text.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, content


def split(chunks: list[str], thinking_open: bool = False) -> tuple[str, str, list[tuple[str, str]]]:
    splitter = ReasoningSplitter(thinking_open=thinking_open)
    pieces = [piece for chunk in chunks for piece in splitter.push(chunk)] + splitter.flush()
    reasoning = "".join(text for kind, text in pieces if kind == "reasoning")
    content = "".join(text for kind, text in pieces if kind == "content")
    return reasoning, content, pieces


ANSWERS = [
    "<think>\nThe user adds 2 and 2.\nThat is 4.\n</think>\n\nThe answer is **4**.",
    "<think>\n\n</think>\n\nHello! How can I help?",  # Qwen3 with /no_think: an empty block
    "<think>\nline\n\n\nmore\n\n</think>\n\n\n\ncontent\n\nwith blank lines\n",
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_every_two_chunk_split_matches_qwens_own_parsing(answer: str) -> None:
    expected = qwen_parse(answer)
    for cut in range(len(answer) + 1):
        reasoning, content, pieces = split([answer[:cut], answer[cut:]])
        assert (reasoning, content) == expected, f"cut at {cut}"
        assert all("<think>" not in text and END_TAG not in text for _, text in pieces)


@pytest.mark.parametrize("answer", ANSWERS)
def test_character_by_character_stream_matches_whole_text(answer: str) -> None:
    assert split(list(answer))[:2] == qwen_parse(answer)


def test_prompt_that_opened_the_block_starts_in_reasoning() -> None:
    reasoning, content, _ = split(["Let me think", ".\n</think>", "\n\nDone."], thinking_open=True)
    assert (reasoning, content) == ("Let me think.", "Done.")


def test_text_without_tags_is_all_content_and_keeps_its_newlines() -> None:
    reasoning, content, pieces = split(["\nplain ", "answer\n\n"])
    assert (reasoning, content) == ("", "\nplain answer\n\n")
    assert pieces == [("content", "\nplain "), ("content", "answer\n\n")]  # one piece per push


def test_partial_tag_is_held_then_released_as_text_at_the_end() -> None:
    splitter = ReasoningSplitter(thinking_open=False)
    assert splitter.push("a < b and </thi") == [("content", "a < b and ")]
    assert splitter.flush() == [("content", "</thi")]


def test_reasoning_pieces_stream_before_the_block_closes() -> None:
    splitter = ReasoningSplitter(thinking_open=False)
    assert splitter.push("<think>\nstep one\n") == [("reasoning", "step one")]
    assert splitter.in_reasoning
    assert splitter.push("step two") == [("reasoning", "\nstep two")]
    assert splitter.push("</think>\n\nok") == [("content", "ok")]
    assert not splitter.in_reasoning


def test_unfinished_reasoning_drops_only_its_trailing_newlines_on_flush() -> None:
    reasoning, content, _ = split(["<think>\ncut off by max_tokens\n\n"])
    assert (reasoning, content) == ("cut off by max_tokens", "")


def test_budget_close_text_ends_reasoning_with_qwens_framing() -> None:
    assert THINK_CLOSE.endswith(THINK_CLOSE_MINIMAL) and THINK_CLOSE_MINIMAL == "\n</think>\n\n"
    assert "Considering the limited time by the user" in THINK_CLOSE
    reasoning, content, _ = split(["<think>\nI should count the", THINK_CLOSE, "It is 3."])
    assert reasoning.startswith("I should count the\n\nConsidering the limited time")
    assert reasoning.endswith("directly now.")
    assert content == "It is 3."


@pytest.mark.parametrize(
    ("prompt", "is_open"),
    [
        ("<|im_start|>assistant\n", False),
        ("<|im_start|>assistant\n<think>\n", True),
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        ("<think>a</think> then <think>\n", True),
    ],
)
def test_reasoning_state_of_a_prompt(prompt: str, is_open: bool) -> None:
    assert reasoning_state(prompt) is is_open
