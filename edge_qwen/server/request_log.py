"""Per-request bookkeeping around every endpoint: a request id, the mapping of exceptions to error
responses, metrics, and one log line per request (its content only as a hash)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..runtime.results import GenerationResult
from .http_errors import APIError, api_error, is_mapped
from .streaming import SSEResponse

log = logging.getLogger("edge_qwen.server")


@dataclass
class RequestContext:
    request_id: str
    endpoint: str
    started: float
    status: int = 200
    model: str | None = None
    content_hash: str | None = None
    result: GenerationResult | None = None


def endpoint(
    server: Any, name: str, handler: Callable[[Request, RequestContext], Awaitable[Response]]
) -> Any:
    """Wrap a handler: request id, error mapping, metrics and one log line per request."""

    async def handle(request: Request) -> Response:
        ctx = RequestContext(uuid.uuid4().hex, name, time.perf_counter())
        server.metrics.in_flight.inc()
        response: Response | None = None
        try:
            server.check_site(request)
            response = await handler(request, ctx)
            response.headers.setdefault("X-Request-ID", ctx.request_id)
        except APIError as exc:
            response = exc.response(ctx.request_id)
        except ClientDisconnect:
            ctx.status = 499
        except Exception as exc:  # noqa: BLE001 - mapped to an HTTP error; unknown ones are logged
            err = api_error(exc)
            if err.status >= 500 and not is_mapped(exc):
                log.exception("request %s failed", ctx.request_id)
            response = err.response(ctx.request_id)
        if response is None:
            done(server, ctx, 499)
            return Response(status_code=499)
        if isinstance(response, SSEResponse):
            response.on_done = lambda: done(server, ctx, ctx.status)
        else:
            done(server, ctx, response.status_code)
        return response

    return handle


def done(server: Any, ctx: RequestContext, status: int) -> None:
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
