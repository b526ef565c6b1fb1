"""Throughput helpers for writing a GGUF: an ordered, bounded parallel map and a file wrapper
that hashes what is written on a background thread (numpy casts, ``os.pread`` and hashlib all
release the GIL, so these overlap on a multi-core machine)."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None


def workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``map(fn, items)`` on a thread pool, results in order, at most ``workers() + 1`` in flight
    (so memory stays bounded however far the consumer lags)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(workers(), thread_name_prefix="edge-qwen-convert")
    window: deque[Future[R]] = deque()
    for item in items:
        window.append(_pool.submit(fn, item))
        if len(window) > workers():
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


def write_hashed(writer: Any, *, progress: bool = False) -> HashingFile:
    """Write a gguf-py ``GGUFWriter``'s file (header, metadata, tensors) through a
    :class:`HashingFile`; its ``sha256`` is ready once the caller has closed the writer."""
    writer.open_output_file()
    assert writer.fout is not None
    hashing = HashingFile(writer.fout[0])
    writer.fout = [hashing]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=progress)
    return hashing


class HashingFile:
    """Write-only file wrapper: sha256 of everything written, computed on a background thread."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._hash, name="edge-qwen-sha256", daemon=True)
        self._thread.start()
        self._digest: str | None = None

    def _hash(self) -> None:
        while (data := self._queue.get()) is not None:
            self._sha.update(data)

    def write(self, data: Any) -> int:
        n = self._raw.write(data)
        self._queue.put(data)
        return n or 0

    def tell(self) -> int:
        return self._raw.tell()

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        if self._digest is None:
            self._queue.put(None)
            self._thread.join()
            self._digest = self._sha.hexdigest()
            self._raw.close()

    @property
    def sha256(self) -> str:
        """Hex digest; valid after :meth:`close`."""
        if self._digest is None:
            raise RuntimeError("close the file before reading its sha256")
        return self._digest
