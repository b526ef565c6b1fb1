"""GGUF LoRA adapters on a loaded llama.cpp model: load, apply per context, free, size.

The primitives the runtime builds per-request adapters on (and that ``edge_qwen.logits`` uses to
measure them). llama.cpp's rules, which these functions make explicit:

* An adapter belongs to the model it was loaded on and is valid while that model lives. Freeing
  the model frees its adapters, so call :func:`free_adapter` *before* ``llama_model_free`` (never
  after), and only once no context still applies it.
* The adapters are set per context (:func:`apply_adapters`) and apply to every token that context
  decodes from then on; sequences with different adapter sets cannot share a decode step, and K/V
  computed under one set must not be reused under another.
* The effective scale of a pair is ``scale · adapter.lora.alpha / rank``; ``edge-qwen convert-lora``
  writes the alpha so that scale 1.0 is what PEFT computes, and 0.0 is the base model.

>>> lora = load_adapter(model, "sql-lora-f16.gguf")        # doctest: +SKIP
>>> apply_adapters(ctx, [(lora, 1.0)])                      # doctest: +SKIP
>>> apply_adapters(ctx, [])                                 # back to the base
>>> free_adapter(lora)                                      # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np

from ._llama import capture_log
from .errors import AdapterBaseMismatchError, AdapterLoadError, GGUFFileError
from .gguf_header import GGUFHeader, check_gguf_file, read_header

__all__ = [
    "Adapter",
    "adapter_bytes",
    "apply_adapters",
    "free_adapter",
    "load_adapter",
    "read_adapter_header",
]


@dataclass
class Adapter:
    """A LoRA adapter loaded on one model. ``handle`` is None once freed."""

    path: Path
    handle: Any  # llama_cpp.llama_adapter_lora_p
    architecture: str
    alpha: float
    nbytes: int  # tensor bytes llama.cpp holds for it (see adapter_bytes)

    @property
    def freed(self) -> bool:
        return self.handle is None


def read_adapter_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """The header of a GGUF LoRA adapter, checked to be one.

    Raises:
        GGUFFileError: not a GGUF, or a GGUF that is not a LoRA adapter (e.g. a whole model).
    """
    header = read_header(check_gguf_file(path))
    kind = header.metadata.get(gguf.Keys.General.TYPE)
    adapter_type = header.metadata.get(gguf.Keys.Adapter.TYPE)
    if kind != gguf.GGUFType.ADAPTER or adapter_type != "lora":
        raise GGUFFileError(
            f"{path} is not a GGUF LoRA adapter (general.type {kind!r}, adapter.type {adapter_type!r}); "
            "convert a PEFT adapter with `edge-qwen convert-lora`"
        )
    return header


def check_adapter_values(path: str | os.PathLike[str], header: GGUFHeader) -> None:
    """Refuse an adapter whose alpha or weights are NaN or infinite (it would load, then turn every
    answer into garbage). Reads the tensors once, a block at a time.

    Raises:
        AdapterLoadError: naming the key or the tensor, and the way out.
    """
    alpha = header.metadata.get(gguf.Keys.Adapter.LORA_ALPHA)
    if alpha is not None and not math.isfinite(float(alpha)):
        raise AdapterLoadError(f"{path}: adapter.lora.alpha is {alpha}; convert the adapter again")
    for tensor in gguf.GGUFReader(path).tensors:
        raw = np.asarray(tensor.data)
        rows = raw.reshape(-1, raw.shape[-1]) if raw.ndim > 1 else raw.reshape(1, -1)
        for start in range(0, rows.shape[0], 4096):
            values = gguf.quants.dequantize(rows[start : start + 4096], tensor.tensor_type)
            if not np.isfinite(values).all():
                raise AdapterLoadError(
                    f"{path}: tensor {tensor.name} holds NaN or infinite values; the adapter is corrupt "
                    "or was trained into divergence: convert it again from a good checkpoint"
                )


def adapter_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes llama.cpp allocates for the adapter's tensors (its file minus the header), for budgets."""
    return sum(t.n_bytes for t in read_adapter_header(path).tensors)


def _model_architecture(model: Any) -> str:
    buf = ctypes.create_string_buffer(128)
    n = llama_cpp.llama_model_meta_val_str(model, gguf.Keys.General.ARCHITECTURE.encode(), buf, len(buf))
    return buf.value.decode("utf-8", "replace") if n >= 0 else ""


def load_adapter(model: Any, path: str | os.PathLike[str]) -> Adapter:
    """Load a GGUF LoRA adapter onto ``model`` (a ``llama_model_p``).

    Raises:
        GGUFFileError: the file is missing, not GGUF, or not a LoRA adapter.
        AdapterBaseMismatchError: the adapter was converted for another architecture.
        AdapterLoadError: llama.cpp refused it (a tensor the base lacks, a shape that differs: the
            adapter belongs to another model of the same architecture).
    """
    header = read_adapter_header(path)
    check_adapter_values(path, header)
    model_arch = _model_architecture(model)
    if model_arch and header.architecture != model_arch:
        raise AdapterBaseMismatchError(
            f"{path} is a LoRA for {header.architecture!r} models but the loaded model is {model_arch!r}; "
            "load the base model the adapter was converted for"
        )
    with capture_log() as log:
        handle = llama_cpp.llama_adapter_lora_init(model, os.fsencode(path))
    if not handle:
        reason = log.tail() or "no reason logged"
        raise AdapterLoadError(
            f"llama.cpp could not load the LoRA {path} onto this model ({reason}); the adapter was "
            "converted for a different base model: convert it again with --base pointing at this one"
        )
    alpha = float(header.metadata.get(gguf.Keys.Adapter.LORA_ALPHA) or 0.0)
    nbytes = sum(t.n_bytes for t in header.tensors)
    return Adapter(Path(path), handle, header.architecture, alpha, nbytes)


def apply_adapters(ctx: Any, adapters: Sequence[tuple[Adapter, float]]) -> None:
    """Make exactly ``adapters`` (with their scales) active on ``ctx``; an empty list means the base.

    llama.cpp skips the work when the set is unchanged; a changed set rebuilds the graph on the next
    decode. Scale 0.0 is the same as leaving the adapter out.
    """
    for adapter, _ in adapters:
        if adapter.freed:
            raise ValueError(f"{adapter.path} was freed; load it again before applying it")
    n = len(adapters)
    if n == 0:
        status = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
    else:
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*(a.handle for a, _ in adapters))
        scales = (ctypes.c_float * n)(*(float(s) for _, s in adapters))
        status = llama_cpp.llama_set_adapters_lora(ctx, handles, n, scales)
    if status != 0:
        raise AdapterLoadError(f"llama_set_adapters_lora failed with status {status}")


def free_adapter(adapter: Adapter) -> None:
    """Free the adapter's memory now (idempotent). Call it before the model is freed, and only after
    every context that applied it has been given another set (or freed)."""
    if adapter.handle is not None:
        llama_cpp.llama_adapter_lora_free(adapter.handle)
        adapter.handle = None
