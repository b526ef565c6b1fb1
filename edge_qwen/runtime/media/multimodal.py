"""Images and audio in a prompt: how they travel through the step loop.

A prompt with media is still one token list. Each image or audio chunk that mtmd made stands in it
as ``n_pos`` copies of a *placeholder id* — a negative number derived from the item's content hash
and its place in the prompt — so that:

* list positions are llama.cpp positions: a Qwen2-VL image fills ``n_tokens`` KV cells but
  advances M-RoPE positions by only ``n_pos`` (``max(cols, rows)``), and the text after it starts
  right there;
* prefix reuse needs nothing new: a follow-up turn about the same image has the same placeholders,
  so the slot's cached image is kept and not encoded again; another image differs at its first one;
* a slot is never cut inside an image (:func:`~edge_qwen.runtime.engine.slots.media_boundary`): all of
  an image's cells carry its first position, so removing from inside it would keep them all.

The cells an image fills beyond its positions (``n_tokens - n_pos``) are counted separately, for
KV accounting and usage. The step loop feeds each :class:`MediaSpan` through mtmd's own helper
(encode, then decode the embeddings with M-RoPE positions) on the compute thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...mtmd_native import Chunks, Mtmd
from .content import MediaItem, MediaPolicy, extract_media, split_at_markers
from .content import MediaPrompt as ExtractedMedia


@dataclass(frozen=True)
class MediaSpan:
    """One image or audio chunk of a prompt, at token index ``start``."""

    start: int
    n_pos: int  # placeholder ids (= positions) it takes in the token list
    n_tokens: int  # KV cells it fills
    kind: str
    chunk: Any  # the mtmd chunk (kept alive by the prompt's Chunks)

    @property
    def extra_cells(self) -> int:
        return self.n_tokens - self.n_pos


@dataclass(frozen=True)
class MediaTokens:
    """A tokenized prompt with media: the token list, the spans, and the mtmd chunk lists that own
    the spans' chunks (closed when the request is done)."""

    tokens: list[int]
    spans: tuple[MediaSpan, ...]
    owners: tuple[Chunks, ...]

    @property
    def extra_cells(self) -> int:
        return sum(s.extra_cells for s in self.spans)

    @property
    def n_media_tokens(self) -> int:
        return sum(s.n_tokens for s in self.spans)


def placeholder(digest: str, index: int) -> int:
    """The id standing for the ``index``-th media item of a prompt (negative: never a real token)."""
    h = hashlib.sha256(f"{digest}:{index}".encode()).digest()
    return -1 - int.from_bytes(h[:4], "little") % (2**30)


def tokenize_with_media(
    mtmd: Mtmd,
    segments: Sequence[tuple[str, bool]],
    items: Sequence[MediaItem],
    tokenize: Callable[[str, bool], list[int]],
) -> MediaTokens:
    """The rendered prompt's segments (text keeps its control-token protection) with each marker
    replaced by mtmd's chunks for its item: the model's own start/end markers as text, and the
    media span. Runs on the caller's thread (``mtmd_tokenize`` is thread-safe)."""
    tokens: list[int] = []
    spans: list[MediaSpan] = []
    owners: list[Chunks] = []
    try:
        for piece in split_at_markers(segments, mtmd.marker, len(items)):
            if not isinstance(piece, int):
                text, special = piece
                tokens += tokenize(text, special)
                continue
            item = items[piece]
            chunks = mtmd.tokenize(mtmd.marker, [item.array])
            owners.append(chunks)
            for chunk in chunks:
                if chunk.kind == "text":
                    tokens += chunk.tokens
                    continue
                spans.append(MediaSpan(len(tokens), chunk.n_pos, chunk.n_tokens, chunk.kind, chunk))
                tokens += [placeholder(item.digest, piece)] * chunk.n_pos
    except BaseException:
        for chunks in owners:
            chunks.close()
        raise
    return MediaTokens(tokens, tuple(spans), tuple(owners))


class MediaSupport:
    """A model's projector (mmproj) and what the model needs of it: turning a conversation with
    images or audio into a :class:`MediaTokens` prompt (caller thread) and feeding a span into a
    sequence (compute thread, :class:`~edge_qwen.runtime.engine.batcher.MediaFeeder`)."""

    def __init__(
        self, mmproj: str, model: Any, ctx: Any, *, n_batch: int, threads: int, use_gpu: bool,
        flash_attn: bool | None = None,
    ) -> None:  # fmt: skip
        self.mtmd = Mtmd(mmproj, model, threads=threads, use_gpu=use_gpu, flash_attn=flash_attn)
        self._ctx = ctx
        self._n_batch = n_batch
        self.path = mmproj

    @property
    def part_text(self) -> dict[str, str]:
        """How each media part is written into the message text (Qwen2-Audio's template numbers its
        clips: ``Audio 1: <marker>``)."""
        from .content import DEFAULT_PART_TEXT, QWEN2_AUDIO_PART_TEXT

        return dict(QWEN2_AUDIO_PART_TEXT if self.mtmd.supports_audio else DEFAULT_PART_TEXT)

    def extract(self, messages: Sequence[Mapping[str, Any]], policy: MediaPolicy) -> ExtractedMedia:
        from .media_audio import mtmd_mp3_decoder

        audio = self.mtmd.supports_audio
        return extract_media(
            messages,
            marker=self.mtmd.marker,
            policy=policy,
            sample_rate=self.mtmd.sample_rate if audio else None,
            mp3_decoder=mtmd_mp3_decoder(self.mtmd) if audio else None,
            part_text=self.part_text,
        )

    def eval_media(self, span: Any, seq_id: int, pos: int) -> int:
        try:
            self.mtmd.eval_chunk(self._ctx, span.chunk, pos, seq_id=seq_id, n_batch=self._n_batch)
        except RuntimeError:
            return -1
        return 0

    def close(self) -> None:
        self.mtmd.close()
