"""Tool calls: tool_choice, the grammar that enforces a call, and reading calls back in both Qwen shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tool_defs import QWEN35_TEMPLATE, weather

from edge_qwen.errors import ConfigError
from edge_qwen.runtime.grammar_cost import check_grammar
from edge_qwen.runtime.text.chat_template import render_chat, template_from_config
from edge_qwen.runtime.text.tool_calls import Tools, tool_format

WEATHER = weather()
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def tools(choice: Any = None, *, fmt_template: str | None = None, parallel: bool | None = None) -> Tools:
    declared = Tools.of([WEATHER, TIME], choice, parallel=parallel, template=fmt_template)
    assert declared is not None
    return declared


@pytest.fixture(scope="module")
def qwen3_template(qwen3_tokenizer_dir: Path) -> str:
    template = template_from_config(json.loads((qwen3_tokenizer_dir / "tokenizer_config.json").read_text()))
    assert template is not None
    return template


def test_each_template_names_its_call_shape(qwen3_template: str) -> None:
    assert tool_format(qwen3_template) == "json"
    assert tool_format(QWEN35_TEMPLATE) == "xml"
    assert tool_format(None) == "json"


# --- tool_choice -------------------------------------------------------------------------------


def test_tool_choice_is_typed_and_checked_against_the_tools() -> None:
    assert tools().mode == "auto" and tools("none").rendered is None
    named = tools({"type": "function", "function": {"name": "get_time"}})
    assert (named.mode, named.name) == ("required", "get_time")
    with pytest.raises(ConfigError, match="'get_date', which is not among the tools"):
        tools({"type": "function", "function": {"name": "get_date"}})
    with pytest.raises(ConfigError, match="is not"):
        tools("always")
    with pytest.raises(ConfigError, match="needs tools"):
        Tools.of(None, "required")
    assert Tools.of(None, "auto") is None


# --- reading calls back ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        '\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n',  # the tags are control tokens
        'Sure:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
    ],
)
def test_a_json_call_is_read_in_every_shape_small_models_emit(text: str) -> None:
    content, (call,) = tools().parse(text)
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert content in ("", "Sure:")
    assert call.to_openai()["type"] == "function" and call.id.startswith("call_")


def test_text_that_only_looks_like_a_call_stays_text() -> None:
    for text in [
        '{"name": "rm_rf", "arguments": {}}',
        '{"city": "Paris"}',
        "It is sunny.",
        "```json\n[1]\n```",
    ]:
        assert tools().parse(text) == (text, ())
    assert tools("none").parse('{"name": "get_weather", "arguments": {}}')[1] == ()


def test_parallel_calls_and_the_first_only_without_parallel_tool_calls() -> None:
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    assert [c.name for c in tools().parse(text)[1]] == ["get_weather", "get_time"]
    assert [c.name for c in tools(parallel=False).parse(text)[1]] == ["get_weather"]


def test_a_qwen35_call_round_trips_through_its_own_template() -> None:
    """The Qwen3.5 template renders an assistant's call as XML; reading that back gives the call,
    with each parameter typed by its schema."""
    arguments = {"city": "Kuala Lumpur", "days": 3, "unit": "c"}
    call = {"function": {"name": "get_weather", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    prompt = render_chat(messages, template=QWEN35_TEMPLATE, special_tokens=[], tools=[WEATHER, TIME])
    answer = prompt.text.split("<|im_start|>assistant\n")[1]  # the rendered call, before the new turn
    assert "<function=get_weather>" in answer
    content, (call,) = tools(fmt_template=QWEN35_TEMPLATE).parse(answer)
    assert call.name == "get_weather" and json.loads(call.arguments) == arguments


# --- enforcing a call --------------------------------------------------------------------------


@pytest.mark.parametrize("template", [None, QWEN35_TEMPLATE], ids=["json", "xml"])
def test_required_and_named_choices_get_a_grammar_auto_and_none_do_not(template: str | None) -> None:
    assert tools(fmt_template=template).grammar() is None
    assert tools("none", fmt_template=template).grammar() is None
    required = tools("required", fmt_template=template).grammar()
    named = tools({"type": "function", "function": {"name": "get_time"}}, fmt_template=template).grammar()
    assert required is not None and named is not None
    for grammar in (required, named):
        check_grammar(grammar)  # within the cost limits
        assert grammar.startswith("root ::= call")
    assert "get_weather" in required and "get_weather" not in named
    one = tools("required", fmt_template=template, parallel=False).grammar()
    assert one is not None and '( "\\n" call )*' not in one
