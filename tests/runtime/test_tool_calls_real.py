"""Tool calls on the real Qwen2.5-Coder-0.5B: a required or named tool_choice always gives a call whose
arguments match the schema, in the JSON shape of its own template and in Qwen3.5's XML shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tool_defs import QWEN35_TEMPLATE, weather

from edge_qwen.runtime import GenerationResult, Model

pytestmark = [pytest.mark.real]
WEATHER = weather(("city", "days"))
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}
KINDS = {"string": str, "integer": int}


@pytest.fixture(scope="module")
def model(real_gguf: Path) -> Iterator[Model]:
    with Model.load(real_gguf, n_ctx=2048, n_threads=2) as loaded:
        yield loaded


def ask(model: Model, question: str, choice: Any, **extra: Any) -> GenerationResult:
    messages = [{"role": "user", "content": question}]
    return model.chat(
        messages, tools=[WEATHER, TIME], tool_choice=choice, temperature=0, max_tokens=96, **extra
    )


def assert_valid(result: GenerationResult, name: str | None = None) -> None:
    """A finished call of a declared tool whose arguments satisfy its schema."""
    assert result.finish_reason == "tool_calls" and result.tool_calls, result
    for call in result.tool_calls:
        tool = {"get_weather": WEATHER, "get_time": TIME}[call.name]
        assert name is None or call.name == name
        schema = tool["function"]["parameters"]  # type: ignore[index]
        arguments = json.loads(call.arguments)
        assert set(schema["required"]) <= set(arguments) <= set(schema["properties"])
        for key, value in arguments.items():
            prop = schema["properties"][key]
            assert isinstance(value, KINDS[prop["type"]]), (key, value)
            assert value in prop.get("enum", [value])


@pytest.mark.parametrize(
    "question", ["Weather in Kuala Lumpur for 3 days?", "Hello there!", "Write a haiku."]
)
def test_a_required_call_is_always_a_valid_call(model: Model, question: str) -> None:
    assert_valid(ask(model, question, "required"))


def test_a_named_function_is_the_one_called(model: Model) -> None:
    result = ask(model, "Weather in Kuala Lumpur?", {"type": "function", "function": {"name": "get_time"}})
    assert_valid(result, "get_time")


def test_auto_answers_a_weather_question_with_a_call_and_none_with_text(model: Model) -> None:
    assert_valid(ask(model, "Weather in Kuala Lumpur for 3 days?", "auto"), "get_weather")
    plain = ask(model, "Weather in Kuala Lumpur for 3 days?", "none")
    assert plain.tool_calls == () and plain.text and plain.finish_reason in ("stop", "length")


def test_a_tool_result_round_trips_through_the_template(model: Model) -> None:
    first = ask(model, "Weather in Kuala Lumpur for 3 days?", "required")
    (call,) = first.tool_calls
    messages = [
        {"role": "user", "content": "Weather in Kuala Lumpur for 3 days?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": call.id, "type": "function",
         "function": {"name": call.name, "arguments": json.loads(call.arguments)}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "rain", "celsius": 31}'},
    ]  # fmt: skip
    answer = model.chat(messages, tools=[WEATHER, TIME], temperature=0, max_tokens=48)
    assert answer.tool_calls == () and answer.text


def test_the_qwen35_xml_shape_is_enforced_and_read_back(model: Model) -> None:
    """Under Qwen3.5's own chat template the call comes in its XML shape; the grammar for that shape
    parses in llama.cpp and the call is read back with typed arguments. (One call: the 0.5B, given
    the choice under a template it was not trained on, would go on calling.)"""
    own = model.chat_template
    model.chat_template = QWEN35_TEMPLATE
    try:
        result = ask(model, "Weather in Kuala Lumpur for 3 days?", "required", parallel_tool_calls=False)
    finally:
        model.chat_template = own
    assert_valid(result)


def test_auto_constrains_a_call_once_the_model_opens_one(model: Model) -> None:
    """``auto`` leaves the model free until it emits ``<tool_call>`` (one token in Qwen's vocabulary);
    from that token on the lazy grammar holds the call to the schema. Checked on the request's own
    sampler chain: before the trigger any token may follow; after it, only the call's text."""
    import ctypes

    import llama_cpp.llama_cpp as L

    from edge_qwen.runtime.sampling import build_sampler

    messages = [{"role": "user", "content": "Weather in Kuala Lumpur?"}]
    spec = model.prepare_chat(messages, tools=[WEATHER], tool_choice="auto", temperature=0)
    assert spec.params.grammar_triggers == ("<tool_call>",)
    vocab = model.vocab.native
    sampler = build_sampler(spec.params, vocab)

    def allowed() -> set[int]:
        n = model.vocab.n_tokens
        data = (L.llama_token_data * n)(*[L.llama_token_data(i, 0.0, 0.0) for i in range(n)])
        candidates = L.llama_token_data_array(data, n, -1, False)
        L.llama_sampler_apply(sampler, ctypes.byref(candidates))
        return {data[i].id for i in range(n) if data[i].logit != float("-inf")}

    (sure,) = model.tokenize("Sure")
    (brace,) = model.tokenize("{")
    try:
        assert len(allowed()) == model.vocab.n_tokens  # free text: the model may answer in words
        (trigger,) = model.tokenize("<tool_call>", parse_special=True)
        L.llama_sampler_accept(sampler, trigger)
        after = allowed()
        assert brace in after and sure not in after and len(after) < 1000  # whitespace, then "{"
    finally:
        L.llama_sampler_free(sampler)
    free = model.chat([{"role": "user", "content": "Write a haiku about rain."}], tools=[WEATHER],
                      temperature=0, max_tokens=24)  # fmt: skip
    assert free.tool_calls == () and free.text
