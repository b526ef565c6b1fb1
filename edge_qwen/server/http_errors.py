"""OpenAI-style error responses: :class:`APIError` and the mapping from edge-qwen's exceptions
(:mod:`edge_qwen.errors`) to an HTTP status, an error type and a code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

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
    RpcError,
    RpcWorkerError,
    UnknownModelError,
)


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
    RpcWorkerError: (503, "server_error", "rpc_worker_unavailable"),  # the model's worker is down or busy
    RpcError: (503, "server_error", "rpc_unavailable"),
    GenerationError: (500, "server_error", "generation_failed"),
}


def register_error(exc_type: type[Exception], status: int, type: str, code: str) -> None:
    """Map another exception (e.g. a scheduler's queue-full error) to an HTTP error."""
    _ERRORS[exc_type] = (status, type, code)


def is_mapped(exc: Exception) -> bool:
    """Whether ``exc``'s own type has a mapping (an unmapped error is logged with its traceback)."""
    return type(exc) in _ERRORS


def api_error(exc: Exception) -> APIError:
    for cls in type(exc).__mro__:
        if cls in _ERRORS:
            status, kind, code = _ERRORS[cls]
            if isinstance(exc, MediaError):
                return APIError(exc.status, str(exc), type=kind, code=code, param="messages")
            if isinstance(exc, ContextOverflowError):  # in the server's words, not the Python API's
                return APIError(status, context_overflow_message(exc), type=kind, code=code, param="messages")
            headers = {"Retry-After": "1"} if status in (429, 503) else None
            return APIError(status, str(exc), type=kind, code=code, headers=headers)
    return APIError(500, "internal error; see the server log", type="server_error", code="internal_error")


def context_overflow_message(exc: ContextOverflowError) -> str:
    return (
        f"the prompt is {'at least ' if exc.at_least else ''}{exc.prompt_tokens} tokens but this model's "
        f"context holds {exc.n_ctx} per "
        "request; shorten the conversation (drop old turns), or restart the server with a larger "
        "context: edge-qwen serve --ctx N (N is shared by --parallel sequences)"
    )


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server's limit of {limit} bytes; send a shorter request",
        code="request_too_large",
    )
