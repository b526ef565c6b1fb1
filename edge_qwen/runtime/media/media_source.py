"""The encoded bytes behind one media source — bytes, a ``data:`` URL, bare base64, a local path or
an ``http(s)`` URL — each refused under the :class:`~edge_qwen.runtime.media.content.MediaPolicy` before it
is read in full. :mod:`edge_qwen.runtime.media.content` decodes what comes back.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ...errors import (
    LocalMediaRefusedError,
    MediaDecodeError,
    MediaTooLargeError,
    RemoteMediaError,
    UnsupportedMediaError,
)

if TYPE_CHECKING:
    from .content import MediaPolicy

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")  # two letters at least: C:\ is a path


def read_source(source: Any, *, policy: MediaPolicy, mime: str, raw_base64: bool) -> bytes:
    """The encoded bytes behind a URL, path or bytes, each refused before it is read in full.

    Raises:
        RemoteMediaError: an ``http(s)`` URL and the policy has no ``fetch``.
        LocalMediaRefusedError: a path or ``file://`` URL and the policy forbids local files.
        UnsupportedMediaError: a malformed ``data:`` URL or another scheme.
        MediaTooLargeError: over ``max_bytes``.
        MediaDecodeError: invalid base64 or an unreadable file.
    """
    limit = policy.limits.max_bytes
    if isinstance(source, bytes | bytearray | memoryview):
        return check_size(bytes(source), limit)
    if isinstance(source, os.PathLike):
        return _read_file(Path(source), policy)
    text = str(source).strip()
    match = _SCHEME.match(text[:64])
    scheme = match.group(1).lower() if match else ""
    if text.startswith("data:"):
        header, sep, payload = text.partition(",")
        if not sep or not header.endswith(";base64") or not header[5:].startswith(mime):
            raise UnsupportedMediaError(
                f"a data URL must look like 'data:{mime}/png;base64,...', not {header[:60]!r}"
            )
        return _b64decode(payload, limit)
    if scheme in ("http", "https"):
        if policy.fetch is None:
            raise RemoteMediaError(
                "remote media URLs are not fetched (edge-qwen runs offline; a server fetches them only "
                "with --allow-remote-media); download the file and send it inline as a data URL "
                f"('data:{mime}/...;base64,...')"
            )
        return check_size(policy.fetch(text, limit), limit)
    if scheme == "file":
        return _read_file(Path(unquote(urlparse(text).path)), policy)
    if scheme:
        raise UnsupportedMediaError(f"URL scheme {scheme!r} is not supported; send a data: URL")
    if raw_base64 and not (policy.allow_local_files and os.path.exists(text[:4096])):
        return _b64decode(text, limit)  # OpenAI's input_audio.data: bare base64
    return _read_file(Path(text), policy)


def is_remote_url(source: Any) -> bool:
    """Whether ``source`` is an ``http(s)://`` URL (what a policy's ``fetch`` reads)."""
    if not isinstance(source, str):
        return False
    match = _SCHEME.match(source.strip()[:64])
    return match is not None and match.group(1).lower() in ("http", "https")


def _read_file(path: Path, policy: MediaPolicy) -> bytes:
    if not policy.allow_local_files:
        raise LocalMediaRefusedError(
            "local files are not read here (a server must not open paths a client names); "
            "send the media inline as a data URL"
        )
    try:
        size = path.stat().st_size
        check_size(b"", policy.limits.max_bytes, size)
        return check_size(path.read_bytes(), policy.limits.max_bytes)
    except OSError as exc:
        raise MediaDecodeError(f"cannot read {path}: {exc.strerror or exc}; check the path") from exc


def _b64decode(payload: str, limit: int) -> bytes:
    payload = "".join(payload.split()) if any(c.isspace() for c in payload[:4096]) else payload
    check_size(b"", limit, len(payload) // 4 * 3)  # refused before decoding
    try:
        return check_size(base64.b64decode(payload, validate=True), limit)
    except (binascii.Error, ValueError) as exc:
        raise MediaDecodeError(f"the media is not valid base64 ({exc}); encode the file bytes") from exc


def check_size(data: bytes, limit: int, size: int | None = None) -> bytes:
    """``data``, or :class:`MediaTooLargeError` when it (or ``size``, if given) is over ``limit``."""
    size = len(data) if size is None else size
    if size > limit:
        raise MediaTooLargeError(
            "the media item's size (bytes)", size, limit, "send a smaller or more compressed file"
        )
    return data
