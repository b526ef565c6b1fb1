"""The server on continuous batching: concurrent clients share decode steps, none errors, and
/health and /metrics show the sequence slots in use."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from serverutil import MODEL, chat_body, running_server

from edge_qwen.server import SchedulerProvider, ServerConfig

pytestmark = [pytest.mark.real, pytest.mark.slow]


async def _stream(client: httpx.AsyncClient, url: str, i: int) -> int:
    body = chat_body(f"Count to {i + 3}.", max_tokens=8, stream=True)
    pieces = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            pieces += line.startswith("data: {")
    return pieces


def test_sixteen_concurrent_streaming_clients_all_succeed(provider: SchedulerProvider) -> None:
    with running_server(provider, ServerConfig(max_concurrency=64)) as url:
        seen_busy: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                health = httpx.get(url + "/health", timeout=30).json()
                seen_busy.append(health["models"][0]["slots_busy"])
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()

        async def main() -> list[int]:
            async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=32)) as client:
                return await asyncio.gather(*(_stream(client, url, i) for i in range(16)))

        try:
            counts = asyncio.run(main())
        finally:
            stop.set()
            watcher.join()
        assert all(n >= 2 for n in counts)
        health = httpx.get(url + "/health").json()["models"][0]
        assert health["slots_total"] == 4 and health["slots_busy"] == 0
        assert max(seen_busy) > 1, "requests were decoded together"
        metrics = httpx.get(url + "/metrics").text
        assert f'edge_qwen_model_slots_total{{model="{MODEL}"}} 4.0' in metrics
        assert f'edge_qwen_model_slots_busy{{model="{MODEL}"}} 0.0' in metrics
