"""Connection limits: a client that sends nothing, or sends it slowly, gives its socket back."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serverutil import running_app

from edge_qwen.server.connections import ConnectionLimits, raise_open_file_limit

FAST = ConnectionLimits(header_timeout=0.5, body_timeout=0.5, idle_timeout=5, max_connections=8)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers ``ok`` after reading the body; ``/slow`` takes 1.5 s, longer than any read deadline."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_app(app, FAST) as base:
        yield base


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes ``sock`` (reading whatever it sent first)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(url: str) -> None:
    with connect(url) as sock:
        assert 0.3 < closed_within(sock, 5) < 2


def test_headers_sent_a_byte_at_a_time_do_not_hold_the_socket(url: str) -> None:
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    with connect(url) as sock:
        start = time.monotonic()
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - start + closed_within(sock, 5)
    assert elapsed < 2  # 100+ bytes at 20 a second would take 6 s


def test_a_body_that_never_comes_is_dropped_after_the_body_deadline(url: str) -> None:
    with connect(url) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        assert 0.8 < closed_within(sock, 5) < 3


def test_a_long_answer_is_not_cut_and_a_kept_alive_connection_gets_a_new_deadline(url: str) -> None:
    with httpx.Client(timeout=10) as client:
        assert client.get(url + "/slow").text == "ok"  # 1.5 s, three times the read deadline
        time.sleep(0.2)
        assert client.post(url + "/", content=b"x").text == "ok"  # the same connection, reused


def test_connections_past_the_cap_are_refused_and_the_others_keep_working() -> None:
    limits = ConnectionLimits(header_timeout=2, body_timeout=2, max_connections=4)
    with running_app(app, limits) as base:
        idle = [connect(base) for _ in range(4)]
        time.sleep(0.2)
        with connect(base) as extra:
            assert closed_within(extra, 5) < 1  # the fifth is refused at once
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(base + "/", timeout=10).text == "ok"


def test_the_open_file_limit_is_raised_towards_what_the_connections_need() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_open_file_limit(512) == min(512, hard)
        assert raise_open_file_limit(100) == min(512, hard)  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
