"""The typed request that travels from a caller's thread to the compute thread.

A :class:`RequestSpec` is what the caller prepared (prompt tokens, sampling, thinking options);
a :class:`Request` is that spec in flight: where its chunks go (``sink``), its cancellation flag,
and the one race between caller and worker — a queue timeout on the caller's side against the
worker admitting it — settled by ``claim``/``expire`` under a small lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .presets import SamplingParams
from .speculation.speculative import SpecConfig
from .text.tool_calls import Tools

if TYPE_CHECKING:  # annotations only: the spans are made by .multimodal on the caller's thread
    from .media.multimodal import MediaSpan

Sink = Callable[[object], None]
STARTED = object()  # worker -> caller: the request left the queue and holds a sequence slot


AdapterSet = tuple[tuple[str, float], ...]  # (adapter name, scale), sorted by name; () is the base model


RequestKind = Literal["generate", "embed"]  # embed: the prompt's pooled output (a vector, or rank scores)


@dataclass(frozen=True)
class RequestSpec:
    """One generation as the caller prepared it (rendered and tokenized once). Empty ``tokens`` is a
    cache reset."""

    tokens: tuple[int, ...]
    params: SamplingParams
    thinking_open: bool = False
    thinking_budget: int | None = None
    adapters: AdapterSet = ()
    speculative: SpecConfig | None = None  # None or mode "off": no speculative decoding
    media: tuple[MediaSpan, ...] = ()  # images / audio standing in ``tokens`` as placeholders
    media_owners: tuple[Any, ...] = ()  # what keeps the spans' mtmd chunks alive (closed at the end)
    kind: RequestKind = "generate"
    tools: Tools | None = None  # declared tools: the answer's calls are read out of its text

    @property
    def text_tokens(self) -> int:
        """Prompt tokens that are text (the media placeholders left out)."""
        return len(self.tokens) - sum(span.n_pos for span in self.media)


class Request:
    """A spec in flight. Chunks, then a final chunk (or an exception) go to ``sink``."""

    def __init__(self, spec: RequestSpec, sink: Sink) -> None:
        self.spec = spec
        self.sink = sink
        self.submitted = time.perf_counter()
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._state = "queued"

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.spec.tokens

    @property
    def params(self) -> SamplingParams:
        return self.spec.params

    def claim(self) -> bool:
        """Worker side: take the request unless the caller gave up waiting for it."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "running"
            return True

    def expire(self) -> bool:
        """Caller side: give up on a request that has not started (queue timeout)."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "expired"
            return True

    @property
    def expired(self) -> bool:
        return self._state == "expired"

    def cancel(self) -> None:
        self.cancelled.set()
