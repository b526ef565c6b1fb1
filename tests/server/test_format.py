"""OpenAI shapes of Qwen3 reasoning: ``reasoning_content`` next to ``content``, whole and streamed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")

from edge_qwen.runtime.results import GenerationChunk, GenerationResult, ResultBuilder, Usage  # noqa: E402
from edge_qwen.runtime.text.tool_calls import Tools  # noqa: E402
from edge_qwen.server.formats import ChatFormat  # noqa: E402


def chat_format() -> ChatFormat:
    return ChatFormat("abc", "qwen3")


def test_reasoning_goes_to_reasoning_content() -> None:
    result = GenerationResult("4", reasoning="2+2 is 4.", finish_reason="stop", usage=Usage(10, 7, 0))
    body = chat_format().complete(result)
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "4", "reasoning_content": "2+2 is 4."}
    assert body["id"] == "chatcmpl-abc" and body["object"] == "chat.completion"
    assert body["usage"]["total_tokens"] == 17


def test_answers_without_reasoning_have_no_reasoning_field() -> None:
    message = chat_format().complete(GenerationResult("hi"))["choices"][0]["message"]
    assert "reasoning_content" not in message


def test_streamed_reasoning_and_content_are_separate_deltas() -> None:
    fmt = chat_format()
    chunks = [
        GenerationChunk("Let me think.", kind="reasoning"),
        GenerationChunk("Four.", kind="content"),
        GenerationChunk("", finish_reason="stop"),
    ]
    deltas = [c["choices"][0] for chunk in chunks for c in fmt.chunk(chunk)]
    assert [d["delta"] for d in deltas] == [{"reasoning_content": "Let me think."}, {"content": "Four."}, {}]
    assert [d["finish_reason"] for d in deltas] == [None, None, "stop"]


TOOLS = Tools.of([{"type": "function", "function": {"name": n}} for n in ("get_weather", "f")])


def answered(text: str) -> GenerationResult:
    """The result the runtime hands over: the request's tools read out of the text."""
    builder = ResultBuilder()
    builder.add(GenerationChunk(text, finish_reason="stop"))
    return builder.result(TOOLS)


def with_tools() -> ChatFormat:
    fmt = chat_format()
    fmt.tools = TOOLS  # what bind() takes from the started request
    return fmt


def test_qwen_tool_call_blocks_become_openai_tool_calls() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    choice = with_tools().complete(answered(text))["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_streamed_tool_calls_arrive_whole_at_the_end() -> None:
    fmt = with_tools()
    pieces = ["<tool_call>\n", '{"name": "f", ', '"arguments": {}}', "\n</tool_call>"]
    events = [e for p in pieces for e in fmt.chunk(GenerationChunk(p))]
    events += fmt.chunk(GenerationChunk("", finish_reason="stop"))
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, "tool_calls"]
    (call,) = events[0]["choices"][0]["delta"]["tool_calls"]
    assert call["index"] == 0 and call["function"] == {"name": "f", "arguments": "{}"}


def test_assistant_tool_calls_go_back_to_the_template_as_objects() -> None:
    from edge_qwen.server.schemas import ChatMessage

    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    message = ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [call]})
    assert message.to_template()["tool_calls"][0]["function"]["arguments"] == {"x": 1}


def test_bare_json_calls_of_known_tools_are_tool_calls() -> None:
    # <tool_call> is a special token that detokenizing drops: the model's text is just the JSON
    bare = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    choice = with_tools().complete(answered(bare))["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    other = '{"name": "unknown_tool", "arguments": {}}'  # not a tool of this request: plain content
    assert with_tools().complete(answered(other))["choices"][0]["message"]["content"] == other
