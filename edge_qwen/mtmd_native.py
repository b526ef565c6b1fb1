"""Thin, typed helpers over llama.cpp's libmtmd (``llama_cpp.mtmd_cpp``): an mmproj beside a loaded
text model, images as numpy arrays, prompts with media markers split into chunks, image encoding
and chunk evaluation (M-RoPE positions included) through mtmd's own helpers.

Ownership is explicit: every wrapper frees what it allocated on ``close()`` (or leaving ``with``),
and nothing here keeps a llama.cpp pointer beyond its owner's life. The caller owns the text model
and its context; like every llama.cpp context, an :class:`Mtmd` must be used from one thread.

>>> with Mtmd(mmproj_path, model, threads=2) as mtmd:                 # doctest: +SKIP
...     chunks = mtmd.tokenize(f"Describe {mtmd.marker}", [rgb])          # rgb: uint8 [H, W, 3]
...     [c.kind for c in chunks], chunks[1].grid             # ('text', 'image', …), (cols, rows)
...     embd = mtmd.encode(chunks[1])                        # float32 [n_tokens, n_embd]
...     n_past = mtmd.eval_chunks(lctx, chunks, n_past=0)    # the whole prompt into the KV cache
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import mtmd_cpp as M

from . import _llama
from .errors import ModelLoadError

KINDS = {
    M.MTMD_INPUT_CHUNK_TYPE_TEXT: "text",
    M.MTMD_INPUT_CHUNK_TYPE_IMAGE: "image",
    M.MTMD_INPUT_CHUNK_TYPE_AUDIO: "audio",
}
_logs_routed = False


def _route_logs() -> None:
    """Send clip/mtmd log lines through edge-qwen's single llama.cpp log callback."""
    global _logs_routed
    _llama.init_backend()
    if not _logs_routed:
        M.mtmd_helper_log_set(_llama._callback, ctypes.c_void_p(0))
        _logs_routed = True


@dataclass(frozen=True)
class Chunk:
    """One piece of a tokenized prompt: text tokens, or one image / audio clip's embeddings."""

    kind: str  # "text" | "image" | "audio"
    n_tokens: int  # KV cells it fills
    n_pos: int  # positions it advances (M-RoPE images: max(cols, rows), not cols x rows)
    tokens: tuple[int, ...]  # text chunks only
    grid: tuple[int, int] | None  # images: (cols, rows) of embeddings
    ptr: Any  # the mtmd_input_chunk, valid while its Chunks lives


class Chunks(Sequence[Chunk]):
    """``mtmd_tokenize``'s output; owns the C chunk list."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._items = [
            _describe(M.mtmd_input_chunks_get(handle, i)) for i in range(M.mtmd_input_chunks_size(handle))
        ]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Chunk:  # type: ignore[override]  # no slices
        return self._items[i]

    @property
    def handle(self) -> Any:
        return self._handle

    @property
    def n_tokens(self) -> int:
        return sum(c.n_tokens for c in self._items)

    @property
    def n_pos(self) -> int:
        return sum(c.n_pos for c in self._items)

    def close(self) -> None:
        if self._handle is not None:
            M.mtmd_input_chunks_free(self._handle)
            self._handle = None
            self._items = []

    def __del__(self) -> None:  # a request refused before it ran still frees its chunks
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the library may be gone
            pass

    def __enter__(self) -> Chunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(ptr: Any) -> Chunk:
    kind = KINDS.get(M.mtmd_input_chunk_get_type(ptr), "unknown")
    tokens: tuple[int, ...] = ()
    grid = None
    if kind == "text":
        n = ctypes.c_size_t(0)
        data = M.mtmd_input_chunk_get_tokens_text(ptr, ctypes.byref(n))
        tokens = tuple(int(data[i]) for i in range(n.value)) if data else ()
    elif kind == "image":
        img = M.mtmd_input_chunk_get_tokens_image(ptr)
        grid = (int(M.mtmd_image_tokens_get_nx(img)), int(M.mtmd_image_tokens_get_ny(img)))
    return Chunk(
        kind,
        int(M.mtmd_input_chunk_get_n_tokens(ptr)),
        int(M.mtmd_input_chunk_get_n_pos(ptr)),
        tokens,
        grid,
        ptr,
    )


class Mtmd:
    """An mmproj GGUF loaded for a text model (``llama_model_p``) that the caller keeps alive.

    Raises:
        ModelLoadError: mtmd could not load the mmproj (quoting llama.cpp's reason).
    """

    def __init__(
        self,
        mmproj: str | os.PathLike[str],
        model: Any,
        *,
        threads: int | None = None,
        use_gpu: bool = False,
        warmup: bool = False,
        flash_attn: bool | None = False,
    ) -> None:
        _route_logs()
        params = M.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.print_timings = False
        params.n_threads = threads or _llama.physical_cores()
        params.warmup = warmup
        params.flash_attn_type = {
            None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
            True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[flash_attn]
        self._n_embd = int(llama_cpp.llama_model_n_embd_inp(model))  # what the projector must output
        with _llama.capture_log() as log:
            self._ctx = M.mtmd_init_from_file(os.fsencode(Path(mmproj)), model, params)
        if not self._ctx:
            raise ModelLoadError(
                f"llama.cpp's mtmd could not load the projector {mmproj} ({log.tail()}); check that it "
                "is an mmproj GGUF made for this model"
            )

    # --- facts -------------------------------------------------------------------------------

    @property
    def marker(self) -> str:
        """The placeholder a prompt uses where each image / audio clip goes (``<__media__>``)."""
        return (M.mtmd_default_marker() or b"").decode()

    @property
    def supports_vision(self) -> bool:
        return bool(M.mtmd_support_vision(self._ctx))

    @property
    def supports_audio(self) -> bool:
        return bool(M.mtmd_support_audio(self._ctx))

    @property
    def sample_rate(self) -> int:
        """Audio input rate in Hz (-1 without an audio encoder)."""
        return int(M.mtmd_get_audio_sample_rate(self._ctx))

    @property
    def uses_mrope(self) -> bool:
        return bool(M.mtmd_decode_use_mrope(self._ctx))

    # --- work --------------------------------------------------------------------------------

    def tokenize(self, text: str, media: Sequence[np.ndarray] = (), *, add_special: bool = False) -> Chunks:
        """Split ``text`` at its markers, one per media item, in order: an image is uint8 RGB
        ``[height, width, 3]``, an audio clip float32 mono ``[samples]`` at :attr:`sample_rate`.

        mtmd preprocesses each item here (image: resize to its grid, normalize; audio: log-mel
        spectrogram), so the arrays are not needed afterwards.

        Raises:
            ValueError: a malformed item, or markers and items that do not pair up.
        """
        bitmaps = [_bitmap(item) for item in media]
        try:
            raw = text.encode()
            inp = M.mtmd_input_text(raw, len(raw), add_special, True)
            handle = M.mtmd_input_chunks_init()
            array = (M.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*bitmaps)
            rc = M.mtmd_tokenize(self._ctx, handle, ctypes.byref(inp), array, len(bitmaps))
        finally:
            for b in bitmaps:
                M.mtmd_bitmap_free(b)
        if rc != 0:
            M.mtmd_input_chunks_free(handle)
            why = {
                1: "the number of media markers differs from the number of media items",
                2: "media preprocessing failed",
            }
            raise ValueError(f"mtmd_tokenize failed: {why.get(rc, f'error {rc}')}")
        return Chunks(handle)

    def encode(self, chunk: Chunk) -> np.ndarray:
        """The projector's embeddings of one image / audio chunk: float32 ``[n_tokens, n_embd]``."""
        if chunk.kind not in ("image", "audio"):
            raise ValueError(f"only image and audio chunks are encoded, not {chunk.kind}")
        if M.mtmd_encode_chunk(self._ctx, chunk.ptr) != 0:
            raise RuntimeError(f"mtmd_encode_chunk failed ({_llama.take_recent_errors()})")
        out = M.mtmd_get_output_embd(self._ctx)
        flat = np.ctypeslib.as_array(out, shape=(chunk.n_tokens * self._n_embd,))
        return flat.reshape(chunk.n_tokens, self._n_embd).copy()

    def eval_chunks(
        self,
        lctx: Any,
        chunks: Chunks,
        n_past: int = 0,
        *,
        seq_id: int = 0,
        n_batch: int = 512,
        logits_last: bool = True,
    ) -> int:
        """Decode every chunk into ``lctx``'s KV cache (images encoded first, M-RoPE positions set by
        mtmd); return the next position."""
        new_n_past = llama_cpp.llama_pos(0)
        rc = M.mtmd_helper_eval_chunks(
            self._ctx, lctx, chunks.handle, n_past, seq_id, n_batch, logits_last, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise RuntimeError(f"mtmd_helper_eval_chunks failed with {rc} ({_llama.take_recent_errors()})")
        return int(new_n_past.value)

    def eval_chunk(
        self,
        lctx: Any,
        chunk: Chunk,
        n_past: int,
        *,
        seq_id: int = 0,
        n_batch: int = 512,
        logits_last: bool = False,
    ) -> int:
        """Like :meth:`eval_chunks` for one chunk; return the next position."""
        new_n_past = llama_cpp.llama_pos(0)
        rc = M.mtmd_helper_eval_chunk_single(
            self._ctx, lctx, chunk.ptr, n_past, seq_id, n_batch, logits_last, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise RuntimeError(
                f"mtmd_helper_eval_chunk_single failed with {rc} ({_llama.take_recent_errors()})"
            )
        return int(new_n_past.value)

    def close(self) -> None:
        if self._ctx:
            M.mtmd_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Mtmd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bitmap(item: np.ndarray) -> Any:
    """An mtmd bitmap (owned by the caller) holding a copy of an RGB uint8 image or float32 audio."""
    if item.ndim == 1:
        pcm = np.ascontiguousarray(item, dtype=np.float32)
        if pcm.size == 0 or not np.isfinite(pcm).all():
            raise ValueError("audio must be a non-empty, finite float32 array")
        bitmap = M.mtmd_bitmap_init_from_audio(pcm.size, pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if not bitmap:
            raise ValueError(f"mtmd could not take {pcm.size} audio samples")
        return bitmap
    img = np.ascontiguousarray(item)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
        raise ValueError(f"an image must be uint8 [height, width, 3], got {img.dtype} {list(img.shape)}")
    data = img.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    bitmap = M.mtmd_bitmap_init(img.shape[1], img.shape[0], data)
    if not bitmap:
        raise ValueError(f"mtmd could not take a {img.shape[1]}x{img.shape[0]} image")
    return bitmap
