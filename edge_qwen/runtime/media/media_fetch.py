"""Fetching ``http(s)`` image URLs for a server that allows it (``serve --allow-remote-media``),
without becoming a proxy into the network it runs in (SSRF).

:class:`RemoteFetcher` is a :class:`~edge_qwen.runtime.media.content.MediaPolicy` ``fetch``. For each URL it

1. resolves the host once and refuses it if *any* address is not public: private, loopback,
   link-local (169.254.169.254, the cloud metadata service), shared (100.64/10), multicast,
   reserved or unspecified, for IPv4 and IPv6, looking inside IPv4-mapped, 6to4 and Teredo
   addresses too;
2. connects to that checked address itself (the ``Host`` header and TLS name stay the URL's),
   so a second DNS answer cannot swap in another address (DNS rebinding);
3. follows at most ``max_redirects`` redirects, each a new URL checked from step 1;
4. gives up after ``timeout`` seconds in all, and stops reading past the byte limit (the declared
   ``Content-Length`` is refused up front).

The standard library's ``http.client`` does the HTTP: it never follows redirects on its own and
lets the socket be chosen, which is exactly the control the guard needs.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from ...errors import MediaDecodeError, MediaTooLargeError, RemoteMediaError
from .media_source import is_remote_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, not "private" in Python < 3.13


def is_public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` may be fetched: a global unicast address, also looking inside IPv6 forms
    that carry an IPv4 address (``::ffff:127.0.0.1`` is loopback)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None and not is_public_address(inner):
            return False
    blocked = (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified or (ip.version == 4 and ip in _SHARED)
    )  # fmt: skip
    return ip.is_global and not blocked


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``socket.getaddrinfo``), as text."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise MediaDecodeError(
            f"cannot resolve the media URL's host {host!r} ({exc}); check the URL"
        ) from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class RemoteFetcher:
    """``fetch(url, max_bytes) -> bytes`` behind the SSRF guard (see the module docstring).

    ``resolve`` and ``allow`` default to :func:`resolve_host` and :func:`is_public_address`, looked
    up at call time; a test may pass others (e.g. to reach its own loopback server on purpose).
    """

    timeout: float = 10.0
    max_redirects: int = 3
    resolve: Callable[[str, int], list[str]] | None = None
    allow: Callable[[IPAddress], bool] | None = None

    def __call__(self, url: str, max_bytes: int) -> bytes:
        """The body of ``url``, at most ``max_bytes`` long.

        Raises:
            RemoteMediaError: not http(s), a refused address, too many redirects, an HTTP error.
            MediaTooLargeError: a body over ``max_bytes``.
            MediaDecodeError: the host cannot be resolved or reached, or the timeout ran out.
        """
        deadline = time.monotonic() + self.timeout
        for _ in range(self.max_redirects + 1):
            location = self._get(url, max_bytes, deadline)
            if isinstance(location, bytes):
                return location
            url = urljoin(url, location)
        raise RemoteMediaError(
            f"the media URL redirected more than {self.max_redirects} times; send a data URL"
        )

    def checked_address(self, host: str, port: int) -> str:
        """The address to connect to: ``host``'s first, once every address it has passes ``allow``."""
        resolve = self.resolve or resolve_host
        allow = self.allow or is_public_address
        addresses = [host] if _is_ip_literal(host) else resolve(host, port)
        if not addresses:
            raise MediaDecodeError(f"the media URL's host {host!r} has no address; check the URL")
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            if not allow(ip):
                raise RemoteMediaError(
                    f"the media URL's host {host!r} resolves to {ip}, a private, loopback, link-local "
                    "or otherwise non-public address; this server does not fetch from its own network. "
                    "Send the image inline as a data URL"
                )
        return addresses[0]

    def _get(self, url: str, max_bytes: int, deadline: float) -> bytes | str:
        """The body, or the ``Location`` of a redirect."""
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        if scheme not in ("http", "https") or not host:
            raise RemoteMediaError(f"only http(s) media URLs are fetched, not {url[:80]!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise RemoteMediaError(f"the media URL's port is invalid ({exc}); check the URL") from exc
        ip = self.checked_address(host, port)
        conn = _connection(scheme, host, port, ip, _left(deadline))
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers={"Accept": "image/*", "User-Agent": "edge-qwen"})
            response = conn.getresponse()
            if response.status in _REDIRECTS:
                return _location(response)
            if response.status != 200:
                raise RemoteMediaError(
                    f"the media URL answered HTTP {response.status}; check the URL or send a data URL"
                )
            return _read_capped(response, max_bytes, deadline, conn)
        except (OSError, http.client.HTTPException) as exc:
            raise MediaDecodeError(
                f"cannot fetch the media URL ({exc}); check it or send a data URL"
            ) from exc
        finally:
            conn.close()


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise MediaDecodeError("fetching the media URL timed out; send the image inline as a data URL")
    return left


def _connection(scheme: str, host: str, port: int, ip: str, timeout: float) -> http.client.HTTPConnection:
    cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    return cls(host, port, ip=ip, timeout=timeout)


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the checked ``ip``; ``host`` only names the server (``Host`` header)."""

    def __init__(self, host: str, port: int, *, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned_ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self.pinned_ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to the checked ``ip``, with the certificate verified for the URL's host name."""

    def __init__(self, host: str, port: int, *, ip: str, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.pinned_ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self.pinned_ip, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def _location(response: http.client.HTTPResponse) -> str:
    location = response.getheader("Location")
    if not location:
        raise RemoteMediaError(f"the media URL answered HTTP {response.status} without a Location")
    return location


def _read_capped(
    response: http.client.HTTPResponse, limit: int, deadline: float, conn: http.client.HTTPConnection
) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    body = bytearray()
    while True:
        if conn.sock is not None:
            conn.sock.settimeout(_left(deadline))
        chunk = response.read1(_CHUNK) if hasattr(response, "read1") else response.read(_CHUNK)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise _too_large(len(body), limit)


def _too_large(size: int, limit: int) -> MediaTooLargeError:
    return MediaTooLargeError(
        "the media item's size (bytes)", size, limit, "send a smaller or more compressed file"
    )


def fetch_remote_parts(messages: Sequence[Mapping[str, Any]], fetch: Callable[[str, int], bytes],
                       max_bytes: int) -> list[dict[str, Any]]:  # fmt: skip
    """``messages`` with every ``http(s)`` ``image_url`` replaced by the bytes ``fetch`` reads, so a
    server can fetch on a worker thread before the request is queued (the model then sees bytes)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [_fetched(part, fetch, max_bytes) for part in content]
        out.append({**message, "content": content})
    return out


def _fetched(part: Any, fetch: Callable[[str, int], bytes], max_bytes: int) -> Any:
    if not isinstance(part, Mapping) or part.get("type") != "image_url":
        return part
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, Mapping) else value
    if not is_remote_url(url):
        return part
    return {"type": "image_url", "image_url": {"url": fetch(str(url).strip(), max_bytes)}}
