"""What a model loads beside its own weights, priced for its memory estimate: LoRA adapter files,
a draft model's shape (:func:`~.estimate.draft_bytes` prices it), and a vision/audio projector
(mmproj). Each is read from
its file's header once per file version (estimates run in loops) and charged with the model: one
entry, one budget.
"""

from __future__ import annotations

import functools
import os

from ..gguf_header import read_header
from ..settings import ModelSettings
from .estimate_media import mmproj_memory
from .shape import ModelShape, model_shape


def _version(path: str) -> tuple[int, int] | None:
    """(size, mtime) of a file, the key of its cached reading; None when it is missing (loading
    names the missing file; the estimate leaves it out)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def adapter_file_bytes(path: str) -> int:
    """Tensor bytes of a LoRA adapter file."""
    version = _version(path)
    return 0 if version is None else _adapter_bytes_cached(path, *version)


@functools.lru_cache(maxsize=64)
def _adapter_bytes_cached(path: str, _size: int, _mtime: int) -> int:
    from ..adapters import adapter_bytes

    return adapter_bytes(path)


def file_shape(path: str) -> ModelShape | None:
    """A GGUF's :class:`~.shape.ModelShape`, read once per file version; None while it is missing."""
    version = _version(path)
    return None if version is None else _shape_cached(path, *version)


@functools.lru_cache(maxsize=16)
def _shape_cached(path: str, _size: int, _mtime: int) -> ModelShape:
    return model_shape(read_header(path))


def media_bytes(settings: ModelSettings) -> int:
    """The projector's memory for its largest image or clip (:mod:`.estimate_media`); image and
    audio tokens fill the text model's ``n_ctx`` cells, already counted in ``kv_bytes``."""
    version = None if settings.mmproj is None else _version(settings.mmproj)
    if settings.mmproj is None or version is None:
        return 0
    return _media_cached(settings.mmproj, *version, settings.flash_attn is not False)


@functools.lru_cache(maxsize=16)
def _media_cached(path: str, _size: int, _mtime: int, flash_attn: bool) -> int:
    return mmproj_memory(path, flash_attn=flash_attn).total_bytes
