"""The server through the real ``openai`` client: chat (plain and streamed), completions, models."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from serverutil import MODEL, running_server

from edge_qwen.server import SchedulerProvider, ServerConfig

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.real]

MESSAGES = [{"role": "user", "content": "Write a Python function that adds two numbers."}]


@pytest.fixture(scope="module")
def base_url(provider: SchedulerProvider) -> Iterator[str]:
    with running_server(provider, ServerConfig(max_concurrency=128)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


def test_models_list_names_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_matches_the_runtime(client: openai.OpenAI, provider: SchedulerProvider) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
    with provider.scheduler.lease(MODEL) as model:  # the same greedy answer straight from the runtime
        direct = model.chat(MESSAGES, max_tokens=12, temperature=0)
    assert choice.message.content == direct.text
    assert reply.usage.prompt_tokens == direct.usage.prompt_tokens


def test_streamed_chat_equals_the_whole_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == whole.choices[0].message.content
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_stop_strings_and_seeded_sampling(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 0.9, "seed": 7}
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    assert first.choices[0].message.content == again.choices[0].message.content
    stopped = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0, stop=["def"]
    )
    assert "def" not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"


def test_text_completion_plain_and_streamed(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=8, temperature=0)
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 8
    streamed = client.completions.create(
        model=MODEL, prompt="def add(a, b):", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_json_response_format_gives_json(client: openai.OpenAI) -> None:
    import json

    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with a key 'sum' for 2+2."}],
        max_tokens=24,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_unknown_model_is_404_listing_the_served_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert MODEL in str(info.value)


def test_an_unknown_route_is_an_openai_shaped_404_listing_the_routes(base_url: str) -> None:
    for method, path, status in (("GET", "/v1/embeddingz", 404), ("DELETE", "/v1/models", 405)):
        reply = httpx.request(method, base_url + path)
        assert reply.status_code == status
        error = reply.json()["error"]
        assert path in error["message"] and "POST /v1/chat/completions" in error["message"]


def test_an_overlong_prompt_is_told_in_the_servers_words(client: openai.OpenAI) -> None:
    """The 400 names the server's option (serve --ctx), not the Python API's n_ctx / truncate=True."""
    long = [{"role": "user", "content": "word " * 700}]  # the test model's context holds 512
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=long, max_tokens=2)
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded"
    assert "edge-qwen serve --ctx" in error["message"] and "truncate=True" not in error["message"]


def test_health_reports_models_memory_and_queue(base_url: str) -> None:
    health = httpx.get(base_url + "/health").json()
    assert health["status"] == "ok"
    (model,) = health["models"]
    assert model["name"] == MODEL and model["resident"] is True
    assert 0 < health["memory"]["used_bytes"] <= health["memory"]["budget_bytes"]
    assert health["memory"]["process_rss_bytes"] > 0
    assert health["queue_depth"] == 0


def test_a_static_provider_serves_models_loaded_by_the_caller(provider: SchedulerProvider) -> None:
    from edge_qwen.server import StaticProvider

    with provider.scheduler.lease(MODEL) as model:  # an already loaded Model, e.g. in a desktop app
        static = StaticProvider({"mine": model})
        with running_server(static, ServerConfig()) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            assert [m.id for m in client.models.list().data] == ["mine"]
            reply = client.chat.completions.create(
                model="mine", messages=MESSAGES, max_tokens=3, temperature=0
            )
            health = httpx.get(url + "/health").json()
    assert reply.usage.completion_tokens == 3
    assert health["models"][0]["name"] == "mine" and health["queue_depth"] == 0


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tool_calls_come_back_as_openai_tool_calls(client: openai.OpenAI) -> None:
    import json

    messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    kwargs = {
        "model": MODEL,
        "messages": messages,
        "tools": [WEATHER_TOOL],
        "max_tokens": 60,
        "temperature": 0,
    }
    reply = client.chat.completions.create(**kwargs)
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    streamed = [c.choices[0] for c in client.chat.completions.create(**kwargs, stream=True)]
    (delta_call,) = next(c.delta.tool_calls for c in streamed if c.delta.tool_calls)
    assert delta_call.function.name == "get_weather" and streamed[-1].finish_reason == "tool_calls"


TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}


@pytest.mark.parametrize(
    ("question", "choice", "name"),
    [
        ("Hello there!", "required", None),
        ("What is the weather in Paris?", {"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ],
)
def test_a_required_or_named_tool_choice_is_always_a_call_streamed_or_not(
    client: openai.OpenAI, question: str, choice: object, name: str | None
) -> None:
    import json

    kwargs = {
        "model": MODEL, "messages": [{"role": "user", "content": question}], "tool_choice": choice,
        "tools": [WEATHER_TOOL, TIME_TOOL], "max_tokens": 60, "temperature": 0,
    }  # fmt: skip
    client.chat.completions.create(**kwargs)  # the prompt cached: the next two start from the same cells
    reply = client.chat.completions.create(**kwargs)
    assert reply.choices[0].finish_reason == "tool_calls"
    calls = reply.choices[0].message.tool_calls
    assert calls and all(name is None or c.function.name == name for c in calls)
    for call in calls:
        required = {"get_weather": {"city"}, "get_time": {"zone"}}[call.function.name]
        assert set(json.loads(call.function.arguments)) == required
    streamed = [c.choices[0] for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    deltas = [d for c in streamed for d in (c.delta.tool_calls or [])]
    assert [(d.function.name, d.function.arguments) for d in deltas] == [
        (c.function.name, c.function.arguments) for c in calls
    ]
    assert streamed[-1].finish_reason == "tool_calls"


def test_tool_choice_none_answers_in_text_and_an_unknown_name_is_a_400(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=16, temperature=0
    )
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER_TOOL], max_tokens=4,
            tool_choice={"type": "function", "function": {"name": "launch"}},
        )  # fmt: skip
