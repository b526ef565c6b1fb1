"""Memory a multimodal model adds on top of its language model, from the mmproj GGUF header.

Three terms (bytes unless said otherwise):

* **weights**: every mmproj tensor; clip reads them into its own backend buffer (no mmap).
* **encoder compute buffer** for the largest image / audio chunk, the peak of clip's graph. On
  CPU without flash attention it is the attention scores, which ggml keeps in place through the
  softmax, plus the f32 input that stays allocated:

  - vision (Qwen2-VL / 2.5-VL), ``P`` patches for ``T`` image tokens (``P = T * merge**2``),
    ``pixels = T * (patch * merge)**2``::

        4 * (3 * pixels + n_head * P**2 + window * P**2 + 2 * P * n_embd)

    ``window`` is 1 for Qwen2.5-VL (its f32 window mask), else 0. ``T`` is at most 4096: clip's
    ``set_limit_image_tokens(8, 4096)`` for Qwen-VL, so mtmd downsizes any larger picture.
  - audio (Qwen2-Audio's Whisper encoder), one 30 s chunk of ``F = 3000`` mel frames, ``F / 2``
    positions after the stride-2 convolution::

        4 * (n_mel * F + n_head * (F / 2)**2)

  Checked against the ``compute buffer size`` clip logs at warmup for the tiny converted models
  (tests/scheduler/test_estimate_media.py): vision at its 46x46-token warmup image 1112.2 MiB
  logged, audio 35.8 MiB logged, both within 1 %. With flash attention the score term goes and
  the FFN activations ``4 * P * (n_ff + 3 * n_embd)`` bound the peak instead (not measured).
* **KV cells**: a max-size item fills ``max_media_tokens`` cells of the text model's cache (an
  image: ``T``; audio: 750 per 30 s chunk). The text model's bytes per cell are
  :mod:`~edge_qwen.sizing.estimate`'s to apply. mtmd also keeps the projector's output,
  ``max_media_tokens * n_embd_lm * 4`` bytes (``embd_bytes``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import gguf

from ..errors import GGUFFileError
from ..gguf_header import GGUFHeader, read_header

CV, CA = gguf.Keys.ClipVision, gguf.Keys.ClipAudio
# Qwen2-VL, 2.5-VL and Qwen3-VL / Qwen3.5 (qwen3vl_merger: full attention like Qwen2-VL, plus
# DeepStack outputs appended to each token's embedding)
VPT = gguf.VisionProjectorType
QWEN_VL = {VPT.QWEN2VL, VPT.QWEN25VL, VPT.QWEN3VL}
QWEN_VL_MAX_TOKENS = 4096  # clip.cpp: set_limit_image_tokens(8, 4096) for Qwen2/2.5/3-VL
DEFAULT_MERGE = 2  # clip.cpp's Qwen-VL default when spatial_merge_size is absent
AUDIO_CHUNK_SECONDS = 30  # Whisper's window; mtmd splits longer clips into chunks
AUDIO_FRAMES_PER_CHUNK = 3000  # 16 kHz, hop 160
AUDIO_TOKENS_PER_CHUNK = 750  # stride-2 convolution, then the projector's 2x average pool
F32 = 4


@dataclass(frozen=True)
class MmprojEstimate:
    """What an mmproj costs beside its text model (see the module docstring for the formulas)."""

    weights_bytes: int
    compute_bytes: int  # encoder compute buffer for the largest item
    max_media_tokens: int  # KV cells the largest image / audio clip fills
    embd_bytes: int  # mtmd's copy of the largest item's embeddings

    @property
    def total_bytes(self) -> int:
        """Resident bytes except the KV cells (the caller prices those with the text model)."""
        return self.weights_bytes + self.compute_bytes + self.embd_bytes


def mmproj_memory(
    path: str | os.PathLike[str],
    *,
    max_image_tokens: int | None = None,
    max_audio_seconds: float = AUDIO_CHUNK_SECONDS,
    flash_attn: bool = False,
) -> MmprojEstimate:
    """Estimate an mmproj's memory from its header.

    Args:
        max_image_tokens: mtmd's ``image_max_tokens`` if the caller sets one (default: clip's 4096).
        max_audio_seconds: the longest clip accepted (``MediaLimits.max_audio_seconds``).
        flash_attn: whether mtmd runs the encoder with flash attention.

    Raises:
        GGUFFileError: not a readable GGUF, or an mmproj of a projector this estimate does not know.
    """
    header = read_header(path)
    weights = sum(t.n_bytes for t in header.tensors)
    if header.metadata.get(gguf.Keys.Clip.HAS_VISION_ENCODER):
        compute, tokens = _vision(header, max_image_tokens, flash_attn)
        deepstack = sum(bool(b) for b in header.metadata.get(CV.IS_DEEPSTACK_LAYERS) or [])
        n_embd_lm = int(header.metadata[CV.PROJECTION_DIM]) * (1 + deepstack)
    elif header.metadata.get(gguf.Keys.Clip.HAS_AUDIO_ENCODER):
        compute, tokens = _audio(header, max_audio_seconds, flash_attn)
        n_embd_lm = int(header.metadata[CA.PROJECTION_DIM])
    else:
        raise GGUFFileError(f"{path} has neither a vision nor an audio encoder; is it an mmproj GGUF?")
    return MmprojEstimate(weights, compute, tokens, tokens * n_embd_lm * F32)


def vision_compute_bytes(header: GGUFHeader, n_tokens: int, *, flash_attn: bool = False) -> int:
    """Peak of clip's Qwen-VL graph for an image of ``n_tokens`` (merged) tokens."""
    meta = header.metadata
    projector = _projector(header, CV.PROJECTOR_TYPE)
    if projector not in QWEN_VL:
        raise GGUFFileError(f"{header.path}: no memory model for vision projector {projector!r}")
    patch, merge = int(meta[CV.PATCH_SIZE]), int(meta.get(CV.SPATIAL_MERGE_SIZE, DEFAULT_MERGE))
    n_embd, n_ff, n_head = (
        int(meta[CV.EMBEDDING_LENGTH]),
        int(meta[CV.FEED_FORWARD_LENGTH]),
        int(meta[CV.Attention.HEAD_COUNT]),
    )
    patches = n_tokens * merge**2
    pixels = n_tokens * (patch * merge) ** 2
    if flash_attn:
        return F32 * (3 * pixels + patches * (n_ff + 3 * n_embd))
    window = 1 if projector == gguf.VisionProjectorType.QWEN25VL else 0
    return F32 * (3 * pixels + (n_head + window) * patches**2 + 2 * patches * n_embd)


def audio_compute_bytes(header: GGUFHeader, *, flash_attn: bool = False) -> int:
    """Peak of clip's Whisper graph for one 30 s chunk (chunks are encoded one at a time)."""
    meta = header.metadata
    projector = _projector(header, CA.PROJECTOR_TYPE)
    if projector != gguf.VisionProjectorType.QWEN2A:
        raise GGUFFileError(f"{header.path}: no memory model for audio projector {projector!r}")
    n_mel, frames = int(meta[CA.NUM_MEL_BINS]), AUDIO_FRAMES_PER_CHUNK
    positions = frames // 2
    if flash_attn:
        n_embd, n_ff = int(meta[CA.EMBEDDING_LENGTH]), int(meta[CA.FEED_FORWARD_LENGTH])
        return F32 * (n_mel * frames + positions * (n_ff + 3 * n_embd))
    return F32 * (n_mel * frames + int(meta[CA.Attention.HEAD_COUNT]) * positions**2)


def _vision(header: GGUFHeader, max_tokens: int | None, flash_attn: bool) -> tuple[int, int]:
    tokens = min(max_tokens or QWEN_VL_MAX_TOKENS, QWEN_VL_MAX_TOKENS)
    return vision_compute_bytes(header, tokens, flash_attn=flash_attn), tokens


def _audio(header: GGUFHeader, max_seconds: float, flash_attn: bool) -> tuple[int, int]:
    chunks = max(1, math.ceil(max_seconds / AUDIO_CHUNK_SECONDS))
    return audio_compute_bytes(header, flash_attn=flash_attn), chunks * AUDIO_TOKENS_PER_CHUNK


def _projector(header: GGUFHeader, modality_key: str) -> str:
    """The projector type: the per-modality key, else the shared one (older mmproj files)."""
    return str(header.metadata.get(modality_key) or header.metadata.get(gguf.Keys.Clip.PROJECTOR_TYPE, ""))
