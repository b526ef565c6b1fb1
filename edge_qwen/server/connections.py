"""Connection limits: how long a client may take to send a request, and how many sockets may be open.

uvicorn's HTTP protocol times a connection out only between requests, and only until the next byte
arrives: a client that connects and sends nothing, or sends its headers a byte every few seconds
(slowloris), keeps its socket for good, and a few hundred of them use up the process's file
descriptors (macOS allows 256) so that every other client fails. :class:`GuardedH11Protocol` adds
a deadline to each request — the headers within ``header_timeout`` of the connection opening (or
of the previous response ending), the body within ``body_timeout`` after that — and refuses
connections beyond ``max_connections`` as soon as they open. Once a request has been read, the
answer takes as long as it takes.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("edge_qwen.server")


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection time limits (seconds) and the number of connections open at once."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: int = 5  # between requests on a kept-alive connection (uvicorn's timeout_keep_alive)
    max_connections: int = 256


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that apply ``limits``."""

    class Protocol(GuardedH11Protocol):
        guard = limits

    return {
        "http": Protocol,
        "timeout_keep_alive": limits.idle_timeout,
        "h11_max_incomplete_event_size": 16 * 1024,  # request line and headers
    }


def raise_open_file_limit(needed: int) -> int:
    """Raise this process's soft limit on open files towards ``needed`` (never above the hard limit);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return int(soft)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on reading each request and a cap on open connections."""

    guard = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > self.guard.max_connections:
            log.warning(
                "refused a connection: %d are open, the limit is %d",
                len(self.connections) - 1,
                self.guard.max_connections,
            )
            transport.abort()
            return
        self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_request()

    def _await_request(self) -> None:
        self._cancel_deadline()
        self._read_deadline = self.loop.call_later(self.guard.header_timeout, self._check_headers)

    def _cancel_deadline(self) -> None:
        deadline = getattr(self, "_read_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._read_deadline = None

    def _check_headers(self) -> None:
        self._read_deadline = None
        if self.conn.their_state is h11.IDLE:  # the request line and headers have not all arrived
            self._drop("headers", self.guard.header_timeout)
        elif self.conn.their_state is h11.SEND_BODY:
            self._read_deadline = self.loop.call_later(self.guard.body_timeout, self._check_body)

    def _check_body(self) -> None:
        self._read_deadline = None
        if self.conn.their_state is h11.SEND_BODY:
            self._drop("body", self.guard.header_timeout + self.guard.body_timeout)

    def _drop(self, what: str, seconds: float) -> None:
        if not self.transport.is_closing():
            log.info("closed a connection whose request %s did not arrive within %g s", what, seconds)
            self.transport.close()
