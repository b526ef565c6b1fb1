"""The hostile-client suite (issue 25): each small request that used to take the server down, sent
to a real server on 127.0.0.1 while a normal client streams beside it.

Every case checks the status it gets, how long it takes, how much the process's memory grows, and
that the normal stream keeps its pace (no gap between its tokens longer than ``STALL_S``). Two
models are served: ``qwen`` (the real 0.5B) and ``hostile`` (the same weights under a chat template
given per case, standing in for a model file whose template loops, explodes or raises).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serverutil import running_server

from edge_qwen.runtime import Model
from edge_qwen.server import ServerConfig, StaticProvider
from edge_qwen.server.connections import ConnectionLimits

pytestmark = [pytest.mark.real, pytest.mark.slow]
STALL_S = 2.5  # the normal stream's longest gap between tokens (a token takes ~0.05 s here)
HI = [{"role": "user", "content": "hi"}]
LIMITS = ConnectionLimits(header_timeout=2.0, body_timeout=2.0, max_connections=400)


@dataclass
class Served:
    url: str
    hostile: Model  # its chat_template is set by the cases that need one


@pytest.fixture(scope="module")
def served(real_gguf: Path) -> Iterator[Served]:
    with (
        Model.load(real_gguf, n_ctx=1024, n_threads=1) as normal,
        Model.load(real_gguf, n_ctx=1024, n_threads=1) as hostile,
    ):
        provider = StaticProvider({"qwen": normal, "hostile": hostile})
        with running_server(provider, ServerConfig(), LIMITS) as url:
            yield Served(url, hostile)


def chat(model: str = "qwen", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": HI, "max_tokens": 4, "temperature": 0, **extra}


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


class Pace:
    """A normal client streaming 48 tokens from ``qwen`` on its own thread; records the gaps."""

    def __init__(self, url: str) -> None:
        self.gaps: list[float] = []
        self.finish: str | None = None
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)

    def _run(self, url: str) -> None:
        body = {**chat(max_tokens=48), "stream": True,
                "messages": [{"role": "user", "content": "Write a long story about a robot."}]}  # fmt: skip
        last = time.monotonic()
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    now = time.monotonic()
                    self.gaps.append(now - last)
                    last = now
                    choice = json.loads(line[6:])["choices"]
                    self.finish = (choice[0].get("finish_reason") if choice else None) or self.finish

    def __enter__(self) -> Pace:
        self._thread.start()
        time.sleep(0.5)  # streaming before the hostile request arrives
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=120)


Sender = Callable[[Served], list[httpx.Response]]


@dataclass(frozen=True)
class Hostile:
    name: str
    send: Sender
    status: int
    seconds: float  # the longest any of its requests may take
    template: str | None = None  # the ``hostile`` model's chat template for this case
    message: str = ""  # in every error's message


def post(body: object, model_url: str, **headers: str) -> httpx.Response:
    return httpx.post(model_url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def at_once(n: int, send: Sender) -> Sender:
    """``n`` copies of ``send``'s request, each on its own thread."""

    def run(s: Served) -> list[httpx.Response]:
        out: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: out.extend(send(s))) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        return out

    return run


def idle_sockets_then_a_request(s: Served) -> list[httpx.Response]:
    """300 connections that send nothing (macOS allows a process 256 files): a normal request is
    still answered, and the server closes every idle one at its header deadline."""
    host, port = s.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(300)]
    try:
        answer = post(chat(), s.url)
        time.sleep(LIMITS.header_timeout + 1)
        for sock in idle:
            sock.settimeout(2)
            assert sock.recv(1) == b"", "an idle connection is still open after the header deadline"
    finally:
        for sock in idle:
            sock.close()
    return [answer]


def schema(pattern_or_schema: object) -> dict[str, object]:
    inner = (
        {"type": "string", "pattern": pattern_or_schema}
        if isinstance(pattern_or_schema, str)
        else pattern_or_schema
    )
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": inner}}


def asking(model: str = "qwen", headers: dict[str, str] | None = None, **extra: object) -> Sender:
    return lambda s: [post(chat(model, **extra), s.url, **(headers or {}))]


def nested_json(s: Served) -> list[httpx.Response]:
    deep = b"[" * 200_000 + b"]" * 200_000
    json_type = {"Content-Type": "application/json"}
    return [httpx.post(s.url + "/v1/chat/completions", content=deep, headers=json_type, timeout=60)]


LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
RENDERS_100_MB = "{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}"

CASES = [
    Hostile("1 grammar (a?){1000}", asking(response_format=schema("^(a?){1000}$")), 400, 2,
            message="optional items in a row"),
    Hostile("1 grammar (a|b?){100}", asking(response_format=schema("^(a|b?){100}$")), 400, 2,
            message="limit of 40"),
    Hostile("2 a stop string of 90 kB", asking(stop=["a" * 90_000]), 400, 2, message="stop"),
    Hostile("3 a template that loops, six at once", at_once(6, asking("hostile")), 400, 10, template=LOOPS,
            message="longer than 5 s"),
    Hostile("4 a template that renders 100 MB", asking("hostile"), 400, 5, template=RENDERS_100_MB,
            message="rendered more than"),
    Hostile("4 a prompt of 900 kB, the context 1024 tokens",
            asking(messages=[{"role": "user", "content": "x" * 900_000}]), 400, 3, message="at least"),
    Hostile("5 {{1/0}} in a template", asking("hostile"), 400, 2, template="{{ 1 / 0 }}",
            message="chat template"),
    Hostile("6 300 idle connections", idle_sockets_then_a_request, 200, 30),
    Hostile("7 tools that are not objects", asking(tools=[{"function": "x"}]), 400, 2, message="tools"),
    Hostile("7 JSON nested 200,000 deep", nested_json, 400, 2),
    Hostile("8 a foreign Host", asking(headers={"Host": "attacker.example"}), 403, 2),
    Hostile("8 a foreign Origin", asking(headers={"Origin": "http://attacker.example"}), 403, 2),
    Hostile("12 logit_bias", asking(logit_bias={"1": 100}), 400, 2, message="logit_bias"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_request_is_refused_cheaply_and_the_normal_stream_keeps_its_pace(
    served: Served, case: Hostile
) -> None:
    served.hostile.chat_template = case.template
    before = rss()
    with Pace(served.url) as pace:
        start = time.monotonic()
        responses = case.send(served)
        took = time.monotonic() - start
    grown = rss() - before
    stall = max(pace.gaps[1:], default=0.0)
    print(json.dumps({"case": case.name, "status": sorted({r.status_code for r in responses}),
                      "seconds": round(took, 2), "rss_growth_mib": round(grown / 2**20, 1),
                      "normal_stream_longest_gap_s": round(stall, 2)}))  # fmt: skip

    statuses = {r.status_code for r in responses}
    assert statuses == {case.status}, [r.text[:300] for r in responses]
    for r in responses:
        if case.status >= 400:
            assert case.message in r.json()["error"]["message"], r.text[:500]
    assert took < case.seconds, f"{case.name}: {took:.1f} s"
    assert grown < 300 * 2**20, f"{case.name}: RSS grew {grown / 2**20:.0f} MiB"
    assert pace.finish == "length", "the normal stream did not finish"
    assert stall < STALL_S, f"the normal stream stalled {stall:.1f} s"
