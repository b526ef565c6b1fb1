"""A chat template is code from a model file: one that divides by zero, recurses, loops for ever,
renders hundreds of megabytes or builds one huge string is stopped quickly with a
ChatTemplateError naming the limit, never a traceback, a hang or an out-of-memory kill."""

from __future__ import annotations

import time

import pytest

from edge_qwen.errors import ChatTemplateError
from edge_qwen.runtime.text import template_limits
from edge_qwen.runtime.text.chat_template import render_chat

MESSAGES = [{"role": "user", "content": "hi"}]


def render(template: str) -> str:
    return render_chat(MESSAGES, template=template, special_tokens=["<|im_end|>"]).text


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ 1/0 }}", "ZeroDivisionError"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
        ("{{ 'a' * 2000000000 }}", "builds a value of 2,000,000,000 items"),
        (
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
            "rendered more than 8,000,0\\d+ characters",
        ),
    ],
)
def test_a_broken_or_hostile_template_is_one_clear_error(template: str, reason: str) -> None:
    with pytest.raises(ChatTemplateError, match=reason):
        render(template)


def test_a_template_that_loops_for_ever_is_stopped_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_limits, "RENDER_SECONDS", 0.5)
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match="ran longer than 0.5 s"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    assert time.monotonic() - started < 3
    assert render("{% for m in messages %}{{ m['content'] }}{% endfor %}") == "hi"  # the next one is fine
