"""How a model is loaded and its llama.cpp context sized: :class:`ModelSettings`, shared by the
sizing layer (what it will cost), the runtime (what it loads) and the scheduler (what it admits)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class ModelSettings:
    """How to load a GGUF and size its llama.cpp context.

    ``n_ctx`` is rounded up to a multiple of 256 (llama.cpp does it anyway; every buffer is then
    sized from the context's real n_ctx). ``n_threads=None`` means the physical cores of this
    machine. ``flash_attn=None`` lets llama.cpp decide, except that a quantized V cache turns it
    on (llama.cpp needs flash attention for that); ``flash_attn=False`` with a quantized V cache
    is refused with :class:`~edge_qwen.errors.ConfigError`. ``extra_buffers`` controls llama.cpp's
    weight-repacking buffer types; ``None`` leaves them on unless the installed build has AMX
    kernels compiled by GCC < 13, whose AMX path crashes on multi-token batches
    (``edge_qwen._llama.extra_buffers_decision``).

    ``n_gpu_layers="auto"`` offloads as many layers as fit the GPU's free memory (with their KV and
    compute buffers, as llama.cpp places them) when the build has a GPU backend, none otherwise;
    an integer pins the count (-1: all).

    ``parallel`` sequences are decoded together (continuous batching). ``n_ctx`` is the total of KV
    cells: with ``kv_unified`` (the default) every sequence may use up to all of them, and they share
    what is free; with ``kv_unified=False`` each gets ``n_ctx / parallel``. ``prefill_chunk`` is how many
    prompt tokens a step may add while other sequences are generating (a long prompt then cannot
    stall their streams; alone, a prompt is prefilled in n_batch chunks). ``adapters`` are GGUF LoRA
    files loaded next to the weights, ``(name, path)`` pairs; a request picks them by name.

    ``draft`` is a smaller GGUF with the same vocabulary that drafts tokens for speculative
    decoding (loaded with the same context size and sequence count, on the same compute thread).
    ``mtp=True`` instead drafts with the model's own multi-token-prediction head (Qwen3.5,
    Qwen3-Next GGUFs converted with it): its weights and a one-layer context are loaded beside the
    model. ``speculative`` is the mode a request gets when it does not choose: ``"lookup"``,
    ``"draft"``, ``"mtp"``, ``"off"``, or None (``"draft"`` / ``"mtp"`` when a draft model / the MTP
    head is loaded, otherwise off).

    ``rpc`` names RPC workers (``HOST:PORT``, each running ``edge-qwen worker``): their devices join
    this machine's and the layers offloaded (``n_gpu_layers``; ``"auto"`` then means all of them) are
    split across them in proportion to their free memory, as llama.cpp does. Each worker is probed
    before loading; one that is down is a :class:`~edge_qwen.errors.RpcWorkerError` naming it.
    ``tensor_split`` overrides that split: one share per device, this machine's GPUs first, then the
    workers in ``rpc`` order (``(1, 3)``: a quarter of the layers on the first, the rest on the second).

    ``mmproj`` is the projector GGUF of a vision or audio model (written by ``edge-qwen convert``
    beside the language model): chat messages may then carry images and audio clips.

    ``prompt_cache`` is how many bytes of host memory may hold K/V the slots had to give up
    (:mod:`~edge_qwen.runtime.engine.prompt_cache`): with more conversations than slots, a returning one
    is restored instead of prefilled. 0 (the default) turns it off; the estimate charges it whole.
    ``pooling`` makes the model embed instead of generate: ``"last"`` (the last token's hidden state,
    as Qwen3-Embedding pools) or ``"rank"`` (a reranker's scores); None takes the GGUF's own pooling
    (an embedding or reranker GGUF sets it; a chat model has none and generates).
    ``prompt_cache_dir`` keeps those caches on disk too, and each slot's when the model closes, so
    that they survive a restart (:mod:`~edge_qwen.runtime.engine.prompt_store`; at most
    ``prompt_cache_disk`` bytes there); with a directory and no memory budget, 128 MiB is used.

    Hybrid models (Qwen3.5, Qwen3-Next) keep a recurrent state that cannot be cut back to a shared
    prefix: ``ctx_checkpoints`` is how many state checkpoints each slot keeps (taken at message
    starts and at the end of each prompt, :mod:`~edge_qwen.runtime.engine.checkpoints`; 0: none, so
    any divergence re-prefills), and ``recurrent_snapshots`` how many tokens of each step llama.cpp
    can roll the recurrent state back (``n_rs_seq``, Qwen3.5 only in this llama.cpp): the longest
    draft speculation tries there. Without snapshots (0, the default, and always on Qwen3-Next) each
    verification step saves the recurrent state first and a rejection goes back to it. The default
    is 0 because llama.cpp's snapshot rollback was measured inexact with several sequences in one
    batch (seeded sampling with drafts, 16 sequences: a chi-square p of 2e-18 against p 0.48
    with saved states; one sequence: p 0.07). Both are ignored on attention-only models.
    """

    n_ctx: int = 4096
    n_threads: int | None = None
    n_threads_batch: int | None = None
    n_batch: int = 2048
    n_ubatch: int = 512
    n_gpu_layers: int | str = "auto"
    use_mmap: bool = True
    use_mlock: bool = False
    flash_attn: bool | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    extra_buffers: bool | None = None
    queue_timeout: float | None = None
    parallel: int = 4
    kv_unified: bool = True
    prefill_chunk: int = 128
    adapters: tuple[tuple[str, str], ...] = ()
    draft: str | None = None
    mtp: bool = False
    speculative: str | None = None
    mmproj: str | None = None
    prompt_cache: int = 0
    prompt_cache_dir: str | None = None
    prompt_cache_disk: int = 2 << 30
    ctx_checkpoints: int = 4
    recurrent_snapshots: int = 0
    rpc: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()
    pooling: str | None = None


def parse_tensor_split(value: Any) -> tuple[float, ...]:
    """``"1,3"`` or a sequence of numbers -> shares; refused when not non-negative numbers with one above 0.

    Raises:
        ConfigError: naming the value.
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        shares = tuple(float(p) for p in parts if str(p).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"tensor_split {value!r}: give one number per device, e.g. 1,3") from None
    if not shares or any(not (x >= 0) or x == float("inf") for x in shares) or not any(shares):
        raise ConfigError(f"tensor_split {value!r}: shares must be finite, not negative, and not all 0")
    if len(shares) > 16:  # llama_max_devices()
        raise ConfigError(f"tensor_split {value!r}: at most 16 devices")
    return shares


DEFAULT_PROMPT_CACHE = 128 << 20  # host memory for the prompt cache when only its directory is given


def settings_from(caller: str, settings: dict[str, Any]) -> ModelSettings:
    """:class:`ModelSettings` from keyword arguments, with ``adapters`` as a mapping or pairs;
    an unknown keyword is a ConfigError that lists the accepted ones."""
    given = dict(settings)
    given["adapters"] = adapter_files(given.get("adapters"))
    for name in ("draft", "mmproj", "prompt_cache_dir"):
        if given.get(name) is not None:
            given[name] = os.fspath(given[name])
    if given.get("prompt_cache_dir") and not given.get("prompt_cache"):
        given["prompt_cache"] = DEFAULT_PROMPT_CACHE
    if given.get("rpc"):
        from .rpc import parse_endpoints

        given["rpc"] = parse_endpoints(given["rpc"])
    elif "rpc" in given:
        given["rpc"] = ()
    if given.get("tensor_split"):  # () / None: llama.cpp's split by free memory
        given["tensor_split"] = parse_tensor_split(given["tensor_split"])
    elif "tensor_split" in given:
        given["tensor_split"] = ()
    try:
        return ModelSettings(**given)
    except TypeError as exc:
        names = ", ".join(f.name for f in fields(ModelSettings))
        raise ConfigError(f"{exc}; {caller} accepts {names}") from None


def adapter_files(value: Any) -> tuple[tuple[str, str], ...]:
    """``{"sql": "sql.gguf"}`` or ``[("sql", "sql.gguf")]`` as sorted (name, path) pairs."""
    if not value:
        return ()
    pairs = value.items() if isinstance(value, Mapping) else value
    out = {}
    for name, path in pairs:
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigError(f"adapter name {name!r} must be a non-empty string without ':'")
        out[name] = os.fspath(path)
    return tuple(sorted(out.items()))


def draft_settings(settings: ModelSettings) -> ModelSettings:
    """The draft model's context: the target's cells, sequences and batch sizes (it reads prompts as
    the target prefills them), no adapters, no projector, no recurrent snapshots (it drafts one
    token per decode, and llama.cpp's snapshots roll back within one decode only)."""
    return dataclasses.replace(
        settings, adapters=(), draft=None, mtp=False, mmproj=None, recurrent_snapshots=0,
        prompt_cache=0, prompt_cache_dir=None, pooling=None,
    )  # fmt: skip
