"""Streaming detokenizer: token ids in, complete UTF-8 text out, one token at a time.

Qwen's byte-level BPE often splits one character over several tokens (a CJK character is three
bytes, an emoji four), so decoding token by token would print half characters. The detokenizer
keeps the undecided bytes and releases text only when characters are complete, like mlx-lm's
streaming detokenizers. It never stalls: bytes that can no longer become a valid character become
U+FFFD right away, and the concatenation of everything returned equals
``b"".join(token_bytes).decode("utf-8", errors="replace")`` exactly.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

REPLACEMENT = "\ufffd"


class StreamingDetokenizer:
    """Turn a stream of token ids into text without ever emitting half a character.

    >>> pieces = {1: b"\\xe3\\x81", 2: b"\\x93a"}     # "こ" split across two tokens
    >>> detok = StreamingDetokenizer(pieces.__getitem__)
    >>> detok.add_token(1), detok.add_token(2), detok.finalize()
    ('', 'こa', '')

    ``token_to_bytes`` maps a token id to its raw bytes (llama.cpp's ``token_to_piece``).
    ``max_lookahead`` bounds how many undecided bytes may wait for the rest of a character; UTF-8
    needs at most 3, so the default 4 only matters for callers that choose a smaller bound.
    """

    def __init__(self, token_to_bytes: Callable[[int], bytes], max_lookahead: int = 4) -> None:
        if max_lookahead < 1:
            raise ValueError(f"max_lookahead must be at least 1, got {max_lookahead}")
        self._token_to_bytes = token_to_bytes
        self._max_lookahead = max_lookahead
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chunks: list[str] = []
        self._text_cache: str | None = ""

    def add_token(self, token_id: int) -> str:
        """Add one token; return the text it completed (possibly ``""``)."""
        return self.add_bytes(self._token_to_bytes(token_id))

    def add_bytes(self, data: bytes) -> str:
        """Add raw bytes directly (e.g. an injected piece); same contract as :meth:`add_token`."""
        # The C incremental decoder replaces invalid bytes at once and buffers only a valid,
        # incomplete prefix (at most 3 bytes), so this is O(len(data)).
        text = self._decoder.decode(data)
        if len(self._decoder.getstate()[0]) > self._max_lookahead:
            text += self._drain_pending()
        return self._record(text)

    def finalize(self) -> str:
        """End of stream: flush undecided bytes (an incomplete character becomes U+FFFD)."""
        return self._record(self._decoder.decode(b"", final=True))

    def reset(self) -> None:
        """Forget everything, ready for a new stream."""
        self._decoder.reset()
        self._chunks.clear()
        self._text_cache = ""

    @property
    def pending_bytes(self) -> bytes:
        """Bytes received but not yet decided (the start of an unfinished character)."""
        return self._decoder.getstate()[0]

    @property
    def text(self) -> str:
        """All text returned so far, joined (cached between tokens)."""
        if self._text_cache is None:
            self._text_cache = "".join(self._chunks)
            self._chunks = [self._text_cache]
        return self._text_cache

    def _drain_pending(self) -> str:
        """Give up on the waiting bytes (more than ``max_lookahead``): one U+FFFD for them."""
        self._decoder.reset()
        return REPLACEMENT

    def _record(self, text: str) -> str:
        if text:
            self._chunks.append(text)
            self._text_cache = None
        return text
