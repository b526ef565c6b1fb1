"""Helpers of the server tests: a real uvicorn server on a free loopback port, request bodies."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from edge_qwen.server import ModelProvider, ServerConfig, create_app
from edge_qwen.server.connections import ConnectionLimits, uvicorn_options

MODEL = "qwen-coder"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(
    provider: ModelProvider, config: ServerConfig, limits: ConnectionLimits | None = None
) -> Iterator[str]:
    """Serve ``provider`` on a free loopback port as ``serve`` does (with its connection limits);
    yields the base URL (``http://127.0.0.1:PORT``)."""
    with running_app(create_app(provider, config), limits) as url:
        yield url


@contextlib.contextmanager
def running_app(app: Any, limits: ConnectionLimits | None = None) -> Iterator[str]:
    """Serve an ASGI ``app`` on a free loopback port with ``serve``'s connection limits."""
    port = free_port()
    options = uvicorn_options(limits or ConnectionLimits())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def chat_body(content: str = "Say hello.", **extra: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }
