"""The OpenAI-compatible HTTP API on Starlette: chat and text completions, models, health, metrics.

Every request goes: API key -> rate limit -> body size -> schema -> limits -> admission ->
model lease (the provider/scheduler) -> generation. A failure at any step is an OpenAI-style error
``{"error": {"message", "type", "code", "param"}}`` with the HTTP status the step implies. Streams
are Server-Sent Events; a client that goes away cancels its generation within one token, also while
it is still waiting in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import (
    BudgetExceededError,
    ChatTemplateError,
    ConfigError,
    ContextOverflowError,
    GenerationError,
    MediaError,
    MediaTooLargeError,
    ModelClosedError,
    ModelLoadError,
    QueueFullError,
    QueueTimeoutError,
    UnknownModelError,
)
from ..runtime.media import SERVER_POLICY, MediaPolicy
from ..runtime.media_fetch import fetch_remote_parts
from ..runtime.results import GenerationChunk, GenerationResult, Usage
from . import security
from .formats import ChatFormat, Format, TextFormat, tool_names
from .metrics import CONTENT_TYPE, ServerMetrics, process_rss_bytes
from .provider import ModelProvider
from .schemas import ChatCompletionRequest, CompletionRequest

if TYPE_CHECKING:
    from ..runtime.model import AsyncGenerationStream, Model

log = logging.getLogger("edge_qwen.server")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ServerConfig:
    """Security and limits. ``None`` disables a limit; every refusal message names the limit."""

    api_key: str | None = None
    rate_per_min: float | None = None
    rate_burst: int | None = None
    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_prompt_tokens: int | None = None
    max_concurrency: int = 64
    log_prompts: bool = False
    #: where images and audio may come from: no local files; remote URLs only with a ``fetch``
    media_policy: MediaPolicy = SERVER_POLICY


class APIError(Exception):
    """An error response: HTTP status, OpenAI error type/code, and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def response(self, request_id: str) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers={**self.headers, "X-Request-ID": request_id})


# edge-qwen error -> (HTTP status, OpenAI error type, code)
_ERRORS: dict[type[Exception], tuple[int, str, str]] = {
    UnknownModelError: (404, "invalid_request_error", "model_not_found"),
    ContextOverflowError: (400, "invalid_request_error", "context_length_exceeded"),
    ChatTemplateError: (400, "invalid_request_error", "invalid_messages"),
    MediaError: (400, "invalid_request_error", "invalid_media"),  # status: the error's own .status
    MediaTooLargeError: (413, "invalid_request_error", "media_too_large"),
    ConfigError: (400, "invalid_request_error", "invalid_parameter"),
    QueueTimeoutError: (503, "server_error", "queue_timeout"),
    QueueFullError: (503, "server_error", "queue_full"),
    BudgetExceededError: (503, "server_error", "insufficient_memory"),
    ModelClosedError: (503, "server_error", "model_unavailable"),
    ModelLoadError: (503, "server_error", "model_unavailable"),
    GenerationError: (500, "server_error", "generation_failed"),
}


def register_error(exc_type: type[Exception], status: int, type: str, code: str) -> None:
    """Map another exception (e.g. a scheduler's queue-full error) to an HTTP error."""
    _ERRORS[exc_type] = (status, type, code)


def api_error(exc: Exception) -> APIError:
    for cls in type(exc).__mro__:
        if cls in _ERRORS:
            status, kind, code = _ERRORS[cls]
            if isinstance(exc, MediaError):
                return APIError(exc.status, str(exc), type=kind, code=code, param="messages")
            headers = {"Retry-After": "1"} if status in (429, 503) else None
            return APIError(status, str(exc), type=kind, code=code, headers=headers)
    return APIError(500, "internal error; see the server log", type="server_error", code="internal_error")


# --- the app -------------------------------------------------------------------------------------


class _Server:
    def __init__(self, provider: ModelProvider, config: ServerConfig) -> None:
        self.provider = provider
        self.config = config
        self.metrics = ServerMetrics(provider.snapshot)
        self.limiter = (
            security.RateLimiter(config.rate_per_min, config.rate_burst) if config.rate_per_min else None
        )
        self.admitted = 0

    # -- guards ---------------------------------------------------------------------------------

    def authorize(self, request: Request) -> str | None:
        """The presented key (checked when the server has one); raises 401."""
        presented = security.bearer_token(request.headers.get("authorization"))
        if presented is None:
            presented = request.headers.get("x-api-key")
        if self.config.api_key is not None and not security.key_matches(self.config.api_key, presented):
            raise APIError(
                401,
                "missing or wrong API key; send 'Authorization: Bearer <key>' with the server's key",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return presented

    def rate_limit(self, request: Request, key: str | None) -> None:
        if self.limiter is None:
            return
        client = security.client_id(key, request.client.host if request.client else None)
        wait = self.limiter.acquire(client)
        if wait > 0:
            raise APIError(
                429,
                f"rate limit of {self.config.rate_per_min:g} requests/min exceeded; retry in {wait:.1f}s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    async def read_json(self, request: Request, schema: type[M]) -> M:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(limit)
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON ({exc}); send a JSON object") from None
        try:
            return schema.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise APIError(400, f"{where}: {first['msg']}", param=where or None) from None

    @contextlib.contextmanager
    def admission(self) -> Any:
        if self.admitted >= self.config.max_concurrency:
            raise APIError(
                503,
                f"the server is at its limit of {self.config.max_concurrency} concurrent requests; "
                "retry shortly or raise --max-concurrency",
                type="server_error",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    def check_prompt_tokens(self, n_tokens: int, model: Model) -> None:
        limit = self.config.max_prompt_tokens
        if limit is not None and n_tokens > limit:
            raise APIError(
                400,
                f"the prompt is {n_tokens} tokens; this server accepts at most {limit} prompt tokens. "
                "Shorten the conversation",
                code="prompt_too_long",
            )
        if n_tokens >= model.n_ctx_seq:
            raise api_error(ContextOverflowError(n_tokens, model.n_ctx_seq))

    # -- endpoints --------------------------------------------------------------------------------

    async def chat_completions(self, request: Request, ctx: _RequestContext) -> Response:
        key = self.authorize(request)
        self.rate_limit(request, key)
        body = await self.read_json(request, ChatCompletionRequest)
        if len(body.messages) > self.config.max_messages:
            raise APIError(
                400,
                f"{len(body.messages)} messages; this server accepts at most {self.config.max_messages} "
                "per request. Drop older turns",
                code="too_many_messages",
                param="messages",
            )
        try:
            messages = [m.to_template() for m in body.messages]
            sampling = body.sampling()
        except ValueError as exc:
            raise APIError(400, str(exc)) from None
        ctx.model = body.model
        ctx.content_hash = security.content_hash(json.dumps(messages, sort_keys=True, ensure_ascii=False))
        if self.config.log_prompts:
            shown = _redacted_messages(messages)
            log.debug("request %s messages=%s", ctx.request_id, json.dumps(shown, ensure_ascii=False))
        kwargs: dict[str, Any] = {"enable_thinking": body.thinking(), "thinking_budget": body.thinking_budget}
        if body.tools:
            kwargs["tools"] = body.tools
        media = any(m.has_media for m in body.messages)
        policy = self.config.media_policy
        if media:
            kwargs["media_policy"] = policy

        def start(model: Model) -> AsyncGenerationStream:
            chat = messages
            if media and policy.fetch is not None and model.mmproj:  # on a worker thread, off the loop
                chat = fetch_remote_parts(messages, policy.fetch, policy.limits.max_bytes)
            # with media, the limit counts the text; the model checks the context with media tokens
            counted = [_text_only(m) for m in chat] if media else chat
            rendered = model.render(counted, enable_thinking=kwargs["enable_thinking"], tools=body.tools)
            self.check_prompt_tokens(len(model.prompt_tokens(rendered)), model)
            return model.achat_stream(chat, **kwargs, **sampling)

        formatter = ChatFormat(ctx.request_id, body.model, tools=tool_names(body.tools))
        return await self.generate(
            request, ctx, body.model, body.stream, body.include_usage, start, formatter
        )

    async def completions(self, request: Request, ctx: _RequestContext) -> Response:
        key = self.authorize(request)
        self.rate_limit(request, key)
        body = await self.read_json(request, CompletionRequest)
        prompt = body.prompt_text()
        try:
            sampling = body.sampling()
        except ValueError as exc:
            raise APIError(400, str(exc)) from None
        ctx.model = body.model
        ctx.content_hash = security.content_hash(prompt)
        if self.config.log_prompts:
            log.debug("request %s prompt=%s", ctx.request_id, json.dumps(prompt, ensure_ascii=False))

        def start(model: Model) -> AsyncGenerationStream:
            self.check_prompt_tokens(len(model.tokenize(prompt, add_special=True)), model)
            return model.astream(prompt, **sampling)

        formatter = TextFormat(ctx.request_id, body.model, prompt if body.echo else "")
        return await self.generate(
            request, ctx, body.model, body.stream, body.include_usage, start, formatter
        )

    async def generate(
        self,
        request: Request,
        ctx: _RequestContext,
        name: str,
        stream: bool,
        include_usage: bool,
        start: Callable[[Model], AsyncGenerationStream],
        fmt: Format,
    ) -> Response:
        """Admit, lease the model, start generating; the lease ends with the response."""
        with contextlib.ExitStack() as admitted:
            admitted.enter_context(self.admission())
            async with contextlib.AsyncExitStack() as held:
                model = await held.enter_async_context(self.provider.lease(name))
                gen = await asyncio.to_thread(start, model)  # renders and tokenizes: off the event loop
                held.push_async_callback(gen.aclose)
                try:
                    if not stream:
                        result = await _until_disconnect(request, _drain(gen))
                        self.finish(ctx, result)
                        return JSONResponse(fmt.complete(result), headers={"X-Request-ID": ctx.request_id})
                    first = await _until_disconnect(request, gen.__anext__())
                except ClientDisconnect:
                    self.finish(ctx, _partial(gen.result))
                    raise
                events = self.events(ctx, gen, first, fmt, include_usage)
                # the stream now owns the admission slot and the lease
                release = admitted.pop_all()
                cleanup = held.pop_all()
                return _SSEResponse(events, on_close=_closer(cleanup, release), request_id=ctx.request_id)
        raise AssertionError("unreachable")

    async def events(
        self,
        ctx: _RequestContext,
        gen: AsyncGenerationStream,
        first: GenerationChunk,
        fmt: Format,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        chunk: GenerationChunk | None = first
        try:
            yield _sse(fmt.first_chunk())
            while chunk is not None:
                for payload in fmt.chunk(chunk):
                    yield _sse(payload)
                if chunk.finish_reason is not None:
                    break
                chunk = await gen.__anext__()
        except StopAsyncIteration:
            pass
        except Exception as exc:  # noqa: BLE001 - headers are sent: report in-band, then end the stream
            err = api_error(exc)
            ctx.status = err.status
            log.warning("request %s failed mid-stream: %s", ctx.request_id, exc)
            yield _sse(err.body())
            yield b"data: [DONE]\n\n"
            return
        except BaseException:  # the client went away (cancellation): stop the model, count it
            gen.cancel()
            ctx.status = 499
            self.finish(ctx, _partial(gen.result))
            raise
        result = gen.result
        self.finish(ctx, result)
        if include_usage:
            yield _sse(fmt.usage_chunk(result))
        yield b"data: [DONE]\n\n"

    def finish(self, ctx: _RequestContext, result: GenerationResult) -> None:
        ctx.result = result
        self.metrics.observe_generation(ctx.model or "", result)

    async def list_models(self, request: Request, ctx: _RequestContext) -> Response:
        key = self.authorize(request)
        self.rate_limit(request, key)
        data = [
            {"id": n, "object": "model", "created": 0, "owned_by": "edge-qwen"} for n in self.provider.names()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request, ctx: _RequestContext) -> Response:
        snap = self.provider.snapshot()
        memory = dict(snap.get("memory", {}))
        memory["process_rss_bytes"] = process_rss_bytes()
        body = {
            "status": "ok",
            "models": snap.get("models", []),
            "memory": memory,
            "queue_depth": snap.get("queue_depth", 0),
            "requests_in_flight": self.admitted,
            "max_concurrency": self.config.max_concurrency,
        }
        return JSONResponse(body)

    async def prometheus(self, request: Request, ctx: _RequestContext) -> Response:
        self.authorize(request)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


# --- request bookkeeping ----------------------------------------------------------------------------


@dataclass
class _RequestContext:
    request_id: str
    endpoint: str
    started: float
    status: int = 200
    model: str | None = None
    content_hash: str | None = None
    result: GenerationResult | None = None


def _endpoint(
    server: _Server, name: str, handler: Callable[[Request, _RequestContext], Awaitable[Response]]
) -> Any:
    """Wrap a handler: request id, error mapping, metrics and one log line per request."""

    async def endpoint(request: Request) -> Response:
        ctx = _RequestContext(uuid.uuid4().hex, name, time.perf_counter())
        server.metrics.in_flight.inc()
        response: Response | None = None
        try:
            response = await handler(request, ctx)
            response.headers.setdefault("X-Request-ID", ctx.request_id)
        except APIError as exc:
            response = exc.response(ctx.request_id)
        except ClientDisconnect:
            ctx.status = 499
        except Exception as exc:  # noqa: BLE001 - mapped to an HTTP error; unknown ones are logged
            err = api_error(exc)
            if err.status >= 500 and type(exc) not in _ERRORS:
                log.exception("request %s failed", ctx.request_id)
            response = err.response(ctx.request_id)
        if response is None:
            _done(server, ctx, 499)
            return Response(status_code=499)
        if isinstance(response, _SSEResponse):
            response.on_done = lambda: _done(server, ctx, ctx.status)
        else:
            _done(server, ctx, response.status_code)
        return response

    return endpoint


def _done(server: _Server, ctx: _RequestContext, status: int) -> None:
    server.metrics.in_flight.dec()
    elapsed = time.perf_counter() - ctx.started
    server.metrics.requests.labels(ctx.endpoint, str(status)).inc()
    server.metrics.latency.labels(ctx.endpoint).observe(elapsed)
    if ctx.endpoint in ("health", "metrics") and status == 200:
        return
    r = ctx.result
    log.info(
        "request %s %s model=%s status=%s content_sha256=%s prompt_tokens=%s completion_tokens=%s "
        "finish=%s ttft_ms=%s decode_tok_s=%s total_ms=%.1f",
        ctx.request_id,
        ctx.endpoint,
        ctx.model,
        status,
        ctx.content_hash,
        r.usage.prompt_tokens if r else None,
        r.usage.completion_tokens if r else None,
        r.finish_reason if r else None,
        f"{r.timings.ttft_ms:.1f}" if r else None,
        f"{r.timings.decode_tok_s:.1f}" if r else None,
        elapsed * 1e3,
    )


def create_app(provider: ModelProvider, config: ServerConfig | None = None) -> Starlette:
    """The ASGI app serving ``provider``'s models under ``config``'s security and limits."""
    server = _Server(provider, config or ServerConfig())
    routes = [
        Route("/v1/chat/completions", _endpoint(server, "chat", server.chat_completions), methods=["POST"]),
        Route("/v1/completions", _endpoint(server, "completions", server.completions), methods=["POST"]),
        Route("/v1/models", _endpoint(server, "models", server.list_models), methods=["GET"]),
        Route("/health", _endpoint(server, "health", server.health), methods=["GET"]),
        Route("/metrics", _endpoint(server, "metrics", server.prometheus), methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.server = server
    return app


# --- generation helpers -----------------------------------------------------------------------------


def _partial(result: GenerationResult) -> GenerationResult:
    """A cancelled stream's result: its final chunk (with usage) never arrived, so count what did."""
    if result.usage.prompt_tokens or not result.token_ids:
        return result
    return dataclasses.replace(result, usage=Usage(completion_tokens=len(result.token_ids)))


async def _drain(gen: AsyncGenerationStream) -> GenerationResult:
    async for _ in gen:
        pass
    return gen.result


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first; then cancel it (and its generation)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
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


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _closer(
    cleanup: contextlib.AsyncExitStack, release: contextlib.ExitStack
) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        try:
            await cleanup.aclose()
        finally:
            release.close()

    return close


class _SSEResponse(StreamingResponse):
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


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _text_only(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message with its media parts left out (what the prompt-token limit counts)."""
    content = message.get("content")
    if not isinstance(content, list):
        return dict(message)
    text = "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return {**message, "content": text}


def _redacted_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` for ``--log-prompts``: inline media (data: URLs, base64 audio) replaced by a
    short description with its size and hash, so the log holds neither the media nor megabytes."""
    out = []
    for message in messages:
        content = message.get("content")
        out.append({**message, "content": [_redacted_part(p) for p in content]} if isinstance(content, list)
                   else message)  # fmt: skip
    return out


def _redacted_part(part: Any) -> Any:
    if not isinstance(part, Mapping):
        return part
    if part.get("type") == "image_url" and isinstance(part.get("image_url"), Mapping):
        url = str(part["image_url"].get("url", ""))
        if not url.startswith("data:"):
            return part
        return {**part, "image_url": {"url": _redacted(url.partition(",")[0] + ",", url)}}
    if part.get("type") == "input_audio" and isinstance(part.get("input_audio"), Mapping):
        audio = part["input_audio"]
        return {**part, "input_audio": {**audio, "data": _redacted("", str(audio.get("data", "")))}}
    return part


def _redacted(prefix: str, data: str) -> str:
    return f"{prefix}<redacted {len(data)} chars sha256={security.content_hash(data)}>"


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server's limit of {limit} bytes; send a shorter request",
        code="request_too_large",
    )
