"""Streaming a generation over HTTP: Server-Sent Events that always release their lease, and waits
that end (cancelling the generation) when the client disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse

from ..runtime.results import GenerationResult, Usage

if TYPE_CHECKING:
    from ..runtime.model import AsyncGenerationStream

T = TypeVar("T")


def partial_result(result: GenerationResult) -> GenerationResult:
    """A cancelled stream's result: its final chunk (with usage) never arrived, so count what did."""
    if result.usage.prompt_tokens or not result.token_ids:
        return result
    return dataclasses.replace(result, usage=Usage(completion_tokens=len(result.token_ids)))


async def drain(gen: AsyncGenerationStream) -> GenerationResult:
    async for _ in gen:
        pass
    return gen.result


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first; then cancel it (and its generation)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            watcher.cancel()
            raise ClientDisconnect()
        watcher.cancel()
    return task.result()


async def wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def closer(
    cleanup: contextlib.AsyncExitStack, release: contextlib.ExitStack
) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        try:
            await cleanup.aclose()
        finally:
            release.close()

    return close


class SSEResponse(StreamingResponse):
    """Server-Sent Events that always release their lease, even when the client vanished early."""

    def __init__(
        self, events: AsyncIterator[bytes], *, on_close: Callable[[], Awaitable[None]], request_id: str
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-ID": request_id, "X-Accel-Buffering": "no"},
        )
        self._events = events
        self._on_close = on_close
        self.on_done: Callable[[], None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()
            await self._on_close()
            if self.on_done is not None:
                self.on_done()


def sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
