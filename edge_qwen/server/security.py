"""Who may call the server and how often (API-key check, per-client token buckets), and what of a
request the log may hold (a content hash; media redacted).

Why constant time: comparing a secret with ``==`` returns as soon as a byte differs, which leaks
how much of a guess was right through response timing. :func:`hmac.compare_digest` does not.
Comparing SHA-256 digests of both sides also hides the key's length.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def key_matches(expected: str, presented: str | None) -> bool:
    """True when ``presented`` is the API key, compared in constant time."""
    if presented is None:
        return False
    want = hashlib.sha256(expected.encode("utf-8")).digest()
    got = hashlib.sha256(presented.encode("utf-8")).digest()
    return hmac.compare_digest(want, got)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent or malformed)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def client_id(api_key: str | None, host: str | None) -> str:
    """The rate-limit identity: a hash of the key when one was given, else the client address.

    Why a hash: identities end up in memory and logs; the key itself must not.
    """
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]
    return f"ip:{host or 'unknown'}"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets per client: ``rate_per_min`` requests a minute, bursts of up to ``burst``
    (default: a minute's worth).

    Each client's bucket refills continuously; a request takes one token or is refused with the
    seconds until a token is back (the ``Retry-After`` value). At most ``max_clients`` buckets are
    kept (least recently used ones are dropped, which only ever gives a client a full bucket).
    """

    def __init__(
        self,
        rate_per_min: float,
        burst: int | None = None,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_min <= 0:
            raise ValueError("rate_per_min must be > 0; leave the rate limit unset to disable it")
        self.rate = rate_per_min / 60.0
        self.burst = float(burst if burst is not None else max(1, math.ceil(rate_per_min)))
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """Take one token for ``client``: 0.0 when allowed, else the seconds to wait before retrying."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(client, None) or _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets[client] = bucket
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


def content_hash(text: str) -> str:
    """A short SHA-256 of request content for logs: correlates repeats without storing prompts."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]


def redacted_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
    return f"{prefix}<redacted {len(data)} chars sha256={content_hash(data)}>"


# --- cross-site requests ---------------------------------------------------------------------------

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(value: str | None) -> str:
    """The host of a ``Host`` header or an origin's netloc, lower case, without port or brackets
    (``"[::1]:8080"`` -> ``"::1"``)."""
    text = (value or "").strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def hosts_for(bind: str, given: str | None = None) -> frozenset[str] | None:
    """The Host names a server bound to ``bind`` answers: loopback, ``bind`` itself and the
    comma-separated ``given`` ones; None (any name) for a wildcard bind without a list, whose
    names cannot be known."""
    names = {host_name(n) for n in (given or "").split(",") if n.strip()}
    if bind in ("0.0.0.0", "::", ""):
        return frozenset(LOOPBACK_HOSTS | names) if names else None
    return frozenset(LOOPBACK_HOSTS | names | {host_name(f"[{bind}]" if ":" in bind else bind)})


def origins(given: str | None) -> frozenset[str]:
    """``--allowed-origins`` as exact origins (``http://localhost:3000``, no trailing slash)."""
    return frozenset(o.strip().rstrip("/") for o in (given or "").split(",") if o.strip())


def site_refusal(
    method: str,
    host: str | None,
    origin: str | None,
    content_type: str | None,
    allowed_hosts: frozenset[str] | None,
    allowed_origins: frozenset[str],
) -> tuple[int, str, str] | None:
    """Why a request that a web page could have made is refused, as (status, code, message), or
    None. A page on another site can make the browser send a "simple" POST (``text/plain``) with no
    preflight, and after DNS rebinding its requests carry a foreign ``Host``: both are refused."""
    if allowed_hosts is not None and host_name(host) not in allowed_hosts:
        names = ", ".join(sorted(allowed_hosts))
        return 403, "host_not_allowed", (
            f"Host {host_name(host)!r} is not a name this server answers to ({names}); a page on "
            "another site may be trying to reach it. Start serve with --allowed-hosts NAME to add one"
        )  # fmt: skip
    if origin is not None:
        from urllib.parse import urlsplit

        own = allowed_hosts if allowed_hosts is not None else LOOPBACK_HOSTS
        parts = urlsplit(origin.strip())
        if origin.strip() not in allowed_origins and (parts.hostname or "") not in own:
            return 403, "origin_not_allowed", (
                f"a request from the web page at {origin.strip()!r} was refused: this server serves "
                "other sites' pages only when started with --allowed-origins ORIGIN"
            )  # fmt: skip
    if method == "POST":
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return 415, "unsupported_media_type", (
                f"Content-Type must be application/json (got {media or 'none'!r}); send the body as JSON"
            )  # fmt: skip
    return None
