"""The text side of one sequence: streaming detokenizer -> stop strings -> reasoning/content split.

It hands out decided text as :class:`GenerationChunk` objects carrying the token ids they came from;
text that may still turn out to start a stop string, or an unfinished UTF-8 character, is held back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..results import GenerationChunk
from .detokenizer import StreamingDetokenizer
from .stopping import StopMatcher
from .thinking import ReasoningSplitter


class TextPipeline:
    """Detokenizer -> stop strings -> reasoning split; hands out decided text with its token ids."""

    def __init__(self, piece: Callable[[int], bytes], stops: Sequence[str], thinking_open: bool) -> None:
        self.detok = StreamingDetokenizer(piece)
        self.stopper = StopMatcher(list(stops))
        self.splitter = ReasoningSplitter(thinking_open)
        self.pending_ids: list[int] = []
        self.stopped = False

    @property
    def in_reasoning(self) -> bool:
        return self.splitter.in_reasoning

    def push_token(self, token: int) -> list[GenerationChunk]:
        self.pending_ids.append(token)
        return self._push(self.detok.add_token(token))

    def _push(self, text: str) -> list[GenerationChunk]:
        if self.stopped or not text:
            return []
        out, self.stopped = self.stopper.push(text)
        return self._chunks(self.splitter.push(out) if out else [])

    def finish(self) -> list[GenerationChunk]:
        pieces: list[GenerationChunk] = []
        if not self.stopped:
            pieces += self._push(self.detok.finalize())
        if not self.stopped:
            tail = self.stopper.flush()
            pieces += self._chunks(self.splitter.push(tail) if tail else [])
        return pieces + self._chunks(self.splitter.flush())

    def _chunks(self, parts: list[tuple[Any, str]]) -> list[GenerationChunk]:
        chunks = []
        for kind, text in parts:
            chunks.append(GenerationChunk(text=text, kind=kind, token_ids=tuple(self.pending_ids)))
            self.pending_ids = []
        return chunks
