"""The caller's side of a request: a sync iterator and an async iterator of chunks.

Both take a ``submit(sink) -> Request`` callable; the worker pushes chunks (and finally an
exception or the last chunk) into the sink, which here is a per-request queue. A stream that is
dropped, closed or whose awaiting task is cancelled cancels its request; the step loop frees the
request's sequence at the start of its next step.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable

from ..errors import QueueTimeoutError
from .request import STARTED, Request
from .results import GenerationChunk, GenerationResult, ResultBuilder
from .text.tool_calls import Tools

Submit = Callable[[Callable[[object], None]], Request]


class GenerationStream:
    """A running request as a sync iterator of chunks; ``cancel()``/``close()`` stop it within a token.

    Dropping the stream (e.g. ``break`` out of a ``for`` loop over ``model.stream(...)``) cancels it.
    After the last chunk, :attr:`result` holds the assembled :class:`GenerationResult`.
    """

    def __init__(self, submit: Submit, queue_timeout: float | None):
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._builder = ResultBuilder()
        self._request = submit(self._items.put)
        self._timeout = queue_timeout
        self._started = False

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> GenerationChunk:
        if self._builder.done:
            raise StopIteration
        item = self._get()
        if isinstance(item, BaseException):
            self._builder = _finished_builder()
            raise item
        assert isinstance(item, GenerationChunk)
        self._builder.add(item)
        return item

    def _get(self) -> object:
        if not self._started:
            try:
                item = self._items.get(timeout=self._timeout)
            except queue.Empty:
                if self._request.expire():
                    raise QueueTimeoutError(_queue_timeout_message(self._timeout)) from None
                item = self._items.get()
            self._started = True
            if item is STARTED:
                item = self._items.get()
            return item
        return self._items.get()

    @property
    def tools(self) -> Tools | None:
        """The request's declared tools (their calls are read out of the answer), or None."""
        return self._request.spec.tools

    @property
    def result(self) -> GenerationResult:
        return self._builder.result(self.tools)

    def cancel(self) -> None:
        """Ask the worker to stop; the stream then ends with finish_reason "cancelled"."""
        self._request.cancel()

    def close(self) -> None:
        if not self._builder.done:
            self.cancel()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        request = getattr(self, "_request", None)
        if request is not None:
            request.cancel()


class AsyncGenerationStream:
    """The async twin of :class:`GenerationStream`; cancelling the awaiting task cancels the request."""

    def __init__(self, submit: Submit, queue_timeout: float | None):
        self._submit = submit
        self._timeout = queue_timeout
        self._items: asyncio.Queue[object] | None = None
        self._request: Request | None = None
        self._builder = ResultBuilder()
        self._started = False

    def __aiter__(self) -> AsyncGenerationStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._builder.done:
            raise StopAsyncIteration
        try:
            item = await self._get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if isinstance(item, BaseException):
            self._builder = _finished_builder()
            raise item
        assert isinstance(item, GenerationChunk)
        self._builder.add(item)
        return item

    async def _get(self) -> object:
        if self._items is None:
            await self._start()
        assert self._items is not None and self._request is not None
        if not self._started:
            try:
                item = await asyncio.wait_for(self._items.get(), self._timeout)
            except asyncio.TimeoutError:
                if self._request.expire():
                    raise QueueTimeoutError(_queue_timeout_message(self._timeout)) from None
                item = await self._items.get()
            self._started = True
            if item is STARTED:
                item = await self._items.get()
            return item
        return await self._items.get()

    async def _start(self) -> None:
        """Prepare and queue the request on a worker thread: rendering, tokenizing and decoding an
        image must not stall the event loop. A cancel while it is prepared cancels it once queued."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()
        self._items = items

        def sink(item: object) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody listens any more
                if self._request is not None:
                    self._request.cancel()

        queued = loop.run_in_executor(None, self._submit, sink)
        try:
            self._request = await asyncio.shield(queued)
        except asyncio.CancelledError:
            queued.add_done_callback(_cancel_when_queued)
            raise

    @property
    def tools(self) -> Tools | None:
        """The request's declared tools (their calls are read out of the answer), or None."""
        return self._request.spec.tools if self._request is not None else None

    @property
    def result(self) -> GenerationResult:
        return self._builder.result(self.tools)

    def cancel(self) -> None:
        if self._request is not None:
            self._request.cancel()

    async def aclose(self) -> None:
        if not self._builder.done:
            self.cancel()

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _finished_builder() -> ResultBuilder:
    builder = ResultBuilder()
    builder.add(GenerationChunk("", finish_reason="cancelled"))
    return builder


def _queue_timeout_message(timeout: float | None) -> str:
    return (
        f"the request waited more than {timeout}s for a free sequence slot and KV cache room; retry later, "
        "raise queue_timeout, or load the model with a larger parallel= or n_ctx="
    )


def drain(stream: GenerationStream) -> GenerationResult:
    for _ in stream:
        pass
    return stream.result


async def adrain(stream: AsyncGenerationStream) -> GenerationResult:
    async for _ in stream:
        pass
    return stream.result


def _cancel_when_queued(queued: asyncio.Future[Request]) -> None:
    if not queued.cancelled() and queued.exception() is None:
        queued.result().cancel()
