"""Disconnects cancel generation and free the model, 100 concurrent streams all finish, metrics add up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serverutil import MODEL, chat_body, running_server

from edge_qwen.server import SchedulerProvider, ServerConfig

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.real, pytest.mark.slow]
LONG = chat_body("Write a long story about a robot.", max_tokens=400)


@pytest.fixture(scope="module")
def base_url(provider: SchedulerProvider) -> Iterator[str]:
    with running_server(provider, ServerConfig(max_concurrency=128)) as url:
        yield url


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    text = httpx.get(url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll until ``condition`` holds (a generous deadline, not a performance assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def generations(url: str, reason: str) -> float:
    return metrics(url).get(("edge_qwen_generations_total", (("model", MODEL), ("reason", reason))), 0.0)


def read_events(lines: Iterator[str], count: int) -> list[dict[str, object]]:
    """The next ``count`` SSE events. Takes an iterator that stays open: abandoning httpx's line
    iterator (``break``) would close the connection, i.e. disconnect."""
    events: list[dict[str, object]] = []
    while len(events) < count:
        line = next(lines)
        if line.startswith("data: {"):
            events.append(json.loads(line[len("data: ") :]))
    return events


def test_disconnect_mid_stream_cancels_and_frees_the_model(
    base_url: str, provider: SchedulerProvider
) -> None:
    before = generations(base_url, "cancelled")
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", base_url + "/v1/chat/completions", json={**LONG, "stream": True}) as r:
            assert r.status_code == 200
            assert len(read_events(r.iter_lines(), 4)) == 4  # role chunk + 3 pieces of text
    # closing the connection cancels the generation long before its 400 tokens
    wait_for(lambda: generations(base_url, "cancelled") == before + 1, "the cancelled generation")
    tokens = metrics(base_url)[("edge_qwen_completion_tokens_total", (("model", MODEL),))]
    assert tokens < 400
    wait_for(lambda: httpx.get(base_url + "/health").json()["models"][0]["in_flight"] == 0, "the lease back")
    reply = httpx.post(base_url + "/v1/chat/completions", json=chat_body(), timeout=60).json()
    assert reply["choices"][0]["finish_reason"] == "length"


def test_disconnect_while_queued_cancels_before_it_runs(base_url: str) -> None:
    before = generations(base_url, "cancelled")
    slots = httpx.get(base_url + "/health").json()["models"][0]["slots_total"] or 4
    with httpx.Client(timeout=60) as client, contextlib.ExitStack() as held:
        running = []
        for _ in range(slots):  # every sequence slot busy
            stream = held.enter_context(
                client.stream("POST", base_url + "/v1/chat/completions", json={**LONG, "stream": True})
            )
            lines = stream.iter_lines()
            read_events(lines, 2)
            running.append(lines)

        def queued() -> None:  # waits for a slot, then its client goes away
            with httpx.Client(timeout=1.0) as impatient, pytest.raises(httpx.ReadTimeout):
                impatient.post(base_url + "/v1/chat/completions", json={**LONG, "stream": True})

        worker = threading.Thread(target=queued)
        worker.start()
        worker.join()
        assert all(len(read_events(lines, 2)) == 2 for lines in running)  # the running ones still stream
    # the impatient one and the running ones still generating (a story may also end by itself);
    # each disconnect frees its slot within a step, but the steps run after the client has gone
    wait_for(lambda: generations(base_url, "cancelled") >= before + 2, "the cancellations")

    def idle() -> bool:
        health = httpx.get(base_url + "/health").json()
        return (
            health["queue_depth"] == 0
            and health["requests_in_flight"] == 0
            and health["models"][0]["slots_busy"] == 0
        )

    wait_for(idle, "every slot free and nothing queued")


def test_a_hundred_concurrent_streams_all_complete(base_url: str) -> None:
    async def one(client: openai.AsyncOpenAI) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model=MODEL, messages=chat_body()["messages"], max_tokens=4, temperature=0, stream=True
        )
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def run() -> list[tuple[str, str | None]]:
        async with openai.AsyncOpenAI(
            base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=600
        ) as c:
            return await asyncio.gather(*(one(c) for _ in range(100)))

    results = asyncio.run(run())
    assert len(results) == 100
    assert {finish for _, finish in results} == {"length"}
    assert len({text for text, _ in results}) == 1  # greedy: every client got the same answer
    assert metrics(base_url)[("edge_qwen_queue_depth", ())] == 0


def test_over_max_concurrency_is_503_with_retry_after(provider: SchedulerProvider) -> None:
    with running_server(provider, ServerConfig(max_concurrency=1)) as url, httpx.Client(timeout=60) as client:
        with client.stream("POST", url + "/v1/chat/completions", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()
            read_events(lines, 2)
            refused = client.post(url + "/v1/chat/completions", json=chat_body())
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert "limit of 1 concurrent" in refused.json()["error"]["message"]


def test_metrics_count_the_requests_made(provider: SchedulerProvider) -> None:
    with running_server(provider, ServerConfig(api_key="k")) as url:
        auth = {"Authorization": "Bearer k"}
        plain = httpx.post(url + "/v1/chat/completions", json=chat_body(), headers=auth, timeout=60).json()
        streamed = httpx.post(
            url + "/v1/chat/completions",
            json=chat_body(stream=True, stream_options={"include_usage": True}),
            headers=auth,
            timeout=60,
        )
        usage = json.loads(streamed.text.split("data: ")[-2])["usage"]
        httpx.post(url + "/v1/chat/completions", json=chat_body())  # 401
        raw = {**auth, "Content-Type": "application/json"}
        httpx.post(url + "/v1/chat/completions", content=b"{", headers=raw)  # 400
        text = httpx.get(url + "/metrics", headers=auth).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def requests(status: str) -> float:
        return samples.get(("edge_qwen_requests_total", (("endpoint", "chat"), ("status", status))), 0.0)

    assert (requests("200"), requests("401"), requests("400")) == (2, 1, 1)
    model = (("model", MODEL),)
    assert samples[("edge_qwen_prompt_tokens_total", model)] == plain["usage"]["prompt_tokens"] * 2
    assert samples[("edge_qwen_completion_tokens_total", model)] == 4 + usage["completion_tokens"]
    assert samples[("edge_qwen_time_to_first_token_seconds_count", model)] == 2
    assert samples[("edge_qwen_decode_tokens_per_second_count", model)] == 2
    assert samples[("edge_qwen_queue_depth", ())] == 0
    assert samples[("edge_qwen_model_resident", model)] == 1
    assert samples[("edge_qwen_memory_used_bytes", ())] > 0
    assert samples[("process_resident_memory_bytes", ())] > 0
