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
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import ContextOverflowError
from ..runtime.media.content import SERVER_POLICY, MediaPolicy
from ..runtime.media.media_fetch import fetch_remote_parts
from ..runtime.results import GenerationChunk, GenerationResult
from ..scheduler.snapshot import process_rss
from . import page, retrieval, security
from .formats import ChatFormat, Format, TextFormat
from .http_errors import APIError, api_error, register_error, too_large
from .metrics import CONTENT_TYPE, ServerMetrics
from .provider import ModelProvider
from .request_log import RequestContext, endpoint
from .schemas import ChatCompletionRequest, CompletionRequest
from .streaming import SSEResponse, closer, drain, partial_result, sse, until_disconnect

if TYPE_CHECKING:
    from ..runtime.model import AsyncGenerationStream, Model

__all__ = ["APIError", "ServerConfig", "create_app", "register_error"]

log = logging.getLogger("edge_qwen.server")
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
    #: the ``Host`` names answered: loopback unless told (``serve`` adds ``--host`` and
    #: ``--allowed-hosts``); None answers any name, which lets DNS-rebinding pages in
    allowed_hosts: frozenset[str] | None = security.LOOPBACK_HOSTS
    #: web pages of other origins that may call the server (a browser's ``Origin`` header)
    allowed_origins: frozenset[str] = frozenset()


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
        # one rendering thread per admitted request: a template that runs to its deadline (5 s) ties
        # up its own thread, never the ones other requests (and other models) render on
        self.renderers = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="edge-qwen-render")

    # -- guards ---------------------------------------------------------------------------------

    def check_site(self, request: Request) -> None:
        """Refuse what only a web page of another site would send (403/415)."""
        refused = security.site_refusal(
            request.method, request.headers.get("host"), request.headers.get("origin"),
            request.headers.get("content-type"), self.config.allowed_hosts, self.config.allowed_origins,
        )  # fmt: skip
        if refused is not None:
            status, code, message = refused
            raise APIError(status, message, code=code)

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
            raise too_large(limit)
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise too_large(limit)
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON ({exc}); send a JSON object") from None
        except RecursionError:
            raise APIError(400, "the body's JSON nests too deeply; send a flatter object") from None
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

    async def chat_completions(self, request: Request, ctx: RequestContext) -> Response:
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
            shown = security.redacted_messages(messages)
            log.debug("request %s messages=%s", ctx.request_id, json.dumps(shown, ensure_ascii=False))
        kwargs: dict[str, Any] = {"enable_thinking": body.thinking(), "thinking_budget": body.thinking_budget}
        if body.tools:
            kwargs["tools"] = body.tools
        if body.tool_choice is not None:
            choice = body.tool_choice
            kwargs["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
        if body.parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = body.parallel_tool_calls
        media = any(m.has_media for m in body.messages)
        policy = self.config.media_policy
        if media:
            kwargs["media_policy"] = policy

        def start(model: Model) -> AsyncGenerationStream:
            chat = messages
            if media and policy.fetch is not None and model.mmproj:  # on a worker thread, off the loop
                chat = fetch_remote_parts(messages, policy.fetch, policy.limits.max_bytes)
            spec = model.prepare_chat(chat, **kwargs, **sampling)  # rendered and tokenized once
            self.check_prompt_tokens(spec.text_tokens, model)  # the limit counts text, not media
            return model.astream_request(spec)

        formatter = ChatFormat(ctx.request_id, body.model)
        return await self.generate(
            request, ctx, body.model, body.stream, body.include_usage, start, formatter
        )

    async def completions(self, request: Request, ctx: RequestContext) -> Response:
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
            spec = model.prepare_completion(prompt, **sampling)
            self.check_prompt_tokens(len(spec.tokens), model)
            return model.astream_request(spec)

        formatter = TextFormat(ctx.request_id, body.model, prompt if body.echo else "")
        return await self.generate(
            request, ctx, body.model, body.stream, body.include_usage, start, formatter
        )

    async def generate(
        self,
        request: Request,
        ctx: RequestContext,
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
                loop = asyncio.get_running_loop()
                gen = await loop.run_in_executor(self.renderers, start, model)  # renders and tokenizes
                held.push_async_callback(gen.aclose)
                try:
                    if not stream:
                        result = await until_disconnect(request, drain(gen))
                        self.finish(ctx, result)
                        return JSONResponse(fmt.complete(result), headers={"X-Request-ID": ctx.request_id})
                    first = await until_disconnect(request, gen.__anext__())
                    fmt.bind(gen)  # the request is submitted now: its tools are known
                except ClientDisconnect:
                    self.finish(ctx, partial_result(gen.result))
                    raise
                events = self.events(ctx, gen, first, fmt, include_usage)
                # the stream now owns the admission slot and the lease
                release = admitted.pop_all()
                cleanup = held.pop_all()
                return SSEResponse(events, on_close=closer(cleanup, release), request_id=ctx.request_id)
        raise AssertionError("unreachable")

    async def events(
        self,
        ctx: RequestContext,
        gen: AsyncGenerationStream,
        first: GenerationChunk,
        fmt: Format,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        chunk: GenerationChunk | None = first
        try:
            yield sse(fmt.first_chunk())
            while chunk is not None:
                for payload in fmt.chunk(chunk):
                    yield sse(payload)
                if chunk.finish_reason is not None:
                    break
                chunk = await gen.__anext__()
        except StopAsyncIteration:
            pass
        except Exception as exc:  # noqa: BLE001 - headers are sent: report in-band, then end the stream
            err = api_error(exc)
            ctx.status = err.status
            log.warning("request %s failed mid-stream: %s", ctx.request_id, exc)
            yield sse(err.body())
            yield b"data: [DONE]\n\n"
            return
        except BaseException:  # the client went away (cancellation): stop the model, count it
            gen.cancel()
            ctx.status = 499
            self.finish(ctx, partial_result(gen.result))
            raise
        result = gen.result
        self.finish(ctx, result)
        if include_usage:
            yield sse(fmt.usage_chunk(result))
        yield b"data: [DONE]\n\n"

    def finish(self, ctx: RequestContext, result: GenerationResult) -> None:
        ctx.result = result
        self.metrics.observe_generation(ctx.model or "", result)

    async def list_models(self, request: Request, ctx: RequestContext) -> Response:
        key = self.authorize(request)
        self.rate_limit(request, key)
        data = [
            {"id": n, "object": "model", "created": 0, "owned_by": "edge-qwen"} for n in self.provider.names()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request, ctx: RequestContext) -> Response:
        snap = self.provider.snapshot().to_dict()
        body = {
            "status": "ok",
            "models": snap["models"],
            "memory": {**snap["memory"], "process_rss_bytes": process_rss() or None},
            "queue_depth": snap["queue_depth"],
            "requests_in_flight": self.admitted,
            "max_concurrency": self.config.max_concurrency,
        }
        return JSONResponse(body)

    async def prometheus(self, request: Request, ctx: RequestContext) -> Response:
        self.authorize(request)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def create_app(provider: ModelProvider, config: ServerConfig | None = None) -> Starlette:
    """The ASGI app serving ``provider``'s models under ``config``'s security and limits."""
    server = _Server(provider, config or ServerConfig())

    async def embeddings(request: Request, ctx: RequestContext) -> Response:
        return await retrieval.embeddings(server, request, ctx)

    async def rerank(request: Request, ctx: RequestContext) -> Response:
        return await retrieval.rerank(server, request, ctx)

    async def page_file(request: Request, ctx: RequestContext) -> Response:
        return await page.serve_file(request)

    routes = [
        Route("/v1/chat/completions", endpoint(server, "chat", server.chat_completions), methods=["POST"]),
        Route("/v1/completions", endpoint(server, "completions", server.completions), methods=["POST"]),
        Route("/v1/embeddings", endpoint(server, "embeddings", embeddings), methods=["POST"]),
        Route("/v1/rerank", endpoint(server, "rerank", rerank), methods=["POST"]),
        Route("/v1/models", endpoint(server, "models", server.list_models), methods=["GET"]),
        Route("/health", endpoint(server, "health", server.health), methods=["GET"]),
        *(Route(path, endpoint(server, "page", page_file), methods=["GET"]) for path in page.FILES),
        Route("/metrics", endpoint(server, "metrics", server.prometheus), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _no_route, 405: _no_route})
    app.state.server = server
    return app


async def _no_route(request: Request, exc: Exception) -> Response:
    """An unknown path or method, answered like every other error: OpenAI-shaped JSON."""
    status = getattr(exc, "status_code", 404)
    what = "no such route" if status == 404 else f"method {request.method} is not allowed here"
    known = (
        "POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, POST /v1/rerank, "
        "GET /v1/models, GET /health, GET /metrics"
    )
    error = APIError(status, f"{what}: {request.method} {request.url.path}; this server has {known}",
                     code="not_found" if status == 404 else "method_not_allowed")  # fmt: skip
    return JSONResponse(error.body(), status)

