"""Loading a GGUF and creating its llama.cpp context, every failure a clear error.

``n_ctx`` is the context's total KV cells; ``parallel`` sequences share them (unified cache) or
split them evenly (``kv_unified=False``). See :mod:`edge_qwen.runtime.engine.slots`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as L

from .. import _llama
from ..errors import BudgetExceededError, ConfigError, DraftModelError, ModelLoadError
from ..gguf_header import path_problem
from ..settings import ModelSettings, draft_settings
from . import _native
from .media.multimodal import MediaSupport


def load_native(path: Path, settings: ModelSettings) -> tuple[Any, Any]:
    """Load the weights and create the context, turning every failure into ModelLoadError."""
    if (problem := path_problem(path)) is not None:
        raise ModelLoadError(f"cannot load the model: {problem}")
    cparams = context_params(settings)
    _llama.init_backend()
    _llama.take_recent_errors()
    mparams = L.llama_model_default_params()
    devices = _devices(path, settings)  # kept alive until the load has copied the list
    if devices is not None:
        mparams.devices = ctypes.addressof(devices)
    split = _tensor_split(settings, devices)  # likewise
    if split is not None:
        mparams.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
    mparams.n_gpu_layers = gpu_layers(path, settings)
    mparams.load_mode = _native.LOAD_MODES[(settings.use_mmap, settings.use_mlock)]
    extra = settings.extra_buffers
    mparams.use_extra_bufts = _llama.default_extra_buffers() if extra is None else extra
    mparams.load_mtp = settings.mtp
    model = L.llama_model_load_from_file(os.fsencode(path), mparams)
    if not model:
        reason = _llama.take_recent_errors() or "llama.cpp gave no reason"
        raise ModelLoadError(
            f"cannot load {path}: {reason}. Check that it is a complete GGUF file of a model this "
            "llama.cpp supports (edge-qwen info PATH), or re-convert it"
        )
    if settings.mtp and int(L.llama_model_n_layer_nextn(model)) <= 0:
        L.llama_model_free(model)
        raise ConfigError(
            f"mtp=True, but {path.name} has no MTP head (no nextn layers). Convert the Qwen3.5 / "
            "Qwen3-Next checkpoint with it (edge-qwen convert keeps it unless --no-mtp), or draft "
            "with speculative='lookup' or a draft model"
        )
    if L.llama_model_is_recurrent(model) or L.llama_model_is_hybrid(model):
        cparams.n_rs_seq = settings.recurrent_snapshots  # rollback of rejected drafts
    try:
        pooling = pooling_of(model, settings)
    except ConfigError:
        L.llama_model_free(model)
        raise
    if pooling != L.LLAMA_POOLING_TYPE_NONE:
        cparams.embeddings, cparams.pooling_type = True, pooling
    ctx = L.llama_init_from_model(model, cparams)
    if not ctx:
        reason = _llama.take_recent_errors() or "llama.cpp gave no reason"
        L.llama_model_free(model)
        raise ModelLoadError(
            f"cannot create a context for {path}: {reason}. Try a smaller n_ctx, n_batch, or an f16 KV cache"
        )
    return model, ctx


POOLING = {"last": L.LLAMA_POOLING_TYPE_LAST, "rank": L.LLAMA_POOLING_TYPE_RANK}
_POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def pooling_of(model: Any, settings: ModelSettings) -> int:
    """The pooling the context runs: ``settings.pooling``, else the GGUF's; NONE for a chat model.

    Raises:
        ConfigError: a pooling the step loop cannot serve (mean, cls: they need the whole prompt in
            one batch and no reused prefix), or an unknown name.
    """
    if settings.pooling is not None:
        if settings.pooling not in POOLING:
            raise ConfigError(f"pooling {settings.pooling!r}: use 'last' (embeddings) or 'rank' (a reranker)")
        return POOLING[settings.pooling]
    arch = _native.meta_value(model, "general.architecture") or ""
    value = _native.meta_value(model, f"{arch}.pooling_type")
    kind = int(value) if value is not None and value.isdigit() else L.LLAMA_POOLING_TYPE_NONE
    if kind in (L.LLAMA_POOLING_TYPE_MEAN, L.LLAMA_POOLING_TYPE_CLS):
        raise ConfigError(
            f"this GGUF pools its embeddings by {_POOLING_NAMES[kind]}, which edge-qwen does not serve; it "
            "embeds with last-token pooling (Qwen3-Embedding) and ranks with a reranker's head"
        )
    pools = kind in (L.LLAMA_POOLING_TYPE_LAST, L.LLAMA_POOLING_TYPE_RANK)
    return kind if pools else L.LLAMA_POOLING_TYPE_NONE


def load_mtp(settings: ModelSettings, model: Any, ctx: Any) -> Any:
    """The MTP head's context on ``model`` (loaded with ``mtp=True``): one attention layer, as many
    cells and sequences as the target's ``ctx``, no recurrent snapshots.

    Raises:
        ModelLoadError: llama.cpp could not create it (naming its reason).
    """
    params = context_params(dataclasses.replace(settings, recurrent_snapshots=0))
    params.n_ctx = int(L.llama_n_ctx(ctx))
    params.ctx_type = L.LLAMA_CONTEXT_TYPE_MTP
    params.ctx_other = ctx
    params.n_rs_seq = 0
    _llama.take_recent_errors()
    mtp_ctx = L.llama_init_from_model(model, params)
    if not mtp_ctx:
        reason = _llama.take_recent_errors() or "llama.cpp gave no reason"
        raise ModelLoadError(
            f"cannot create the MTP head's context: {reason}. Load without mtp=True, or try a smaller n_ctx"
        )
    return mtp_ctx


def load_draft(path: Path, settings: ModelSettings, target: Any) -> tuple[Any, Any]:
    """Load the draft model for ``target`` (a loaded llama_model) and check that its vocabulary is
    the target's.

    Raises:
        DraftModelError: the file cannot be loaded, or its vocabulary differs (naming the way out).
    """
    from .engine.draft import vocab_mismatch

    try:
        model, ctx = load_native(path, draft_settings(settings))
    except ModelLoadError as exc:
        raise DraftModelError(f"the draft model: {exc}") from None
    ours, theirs = L.llama_model_get_vocab(target), L.llama_model_get_vocab(model)
    vocabs = {"target": ours, "draft": theirs}
    special = {
        name: (int(getter(ours)), int(getter(theirs)))
        for name, getter in (
            ("BOS", L.llama_vocab_bos), ("EOS", L.llama_vocab_eos), ("EOT", L.llama_vocab_eot)
        )  # fmt: skip
    }
    why = vocab_mismatch(
        int(L.llama_vocab_n_tokens(ours)),
        int(L.llama_vocab_n_tokens(theirs)),
        lambda which, i: L.llama_vocab_get_text(vocabs[which], i) or b"",
        special,
    )
    if why is not None:
        L.llama_free(ctx)
        L.llama_model_free(model)
        raise DraftModelError(
            f"{path.name} cannot draft for this model: {why}. A draft model needs the target's tokenizer: "
            "use a smaller model of the same family (e.g. Qwen2.5-0.5B for a Qwen2.5 model), or a "
            "lower-bit quantization of the same model"
        )
    return model, ctx


def _devices(path: Path, settings: ModelSettings) -> Any:
    """``llama_model_params.devices``: this machine's GPUs and the model's own RPC workers, when any
    worker is registered in this process (else None: llama.cpp's default, every local device).

    Workers are probed before llama.cpp sees them (it aborts the process on one that is down), and
    each must hold its share of the model (:func:`check_worker_shares`).
    """
    from .. import rpc

    if settings.rpc:
        statuses = rpc.require_workers(settings.rpc)
        if not settings.tensor_split or len(settings.tensor_split) <= len(statuses):
            check_worker_shares(path, settings, [(s.endpoint, s.free_bytes) for s in statuses])
        rpc.add_workers(settings.rpc, probed=statuses)  # one probe per load, not two
    if not rpc.registered():
        return None
    from ..backends import local_gpu_handles

    chosen = local_gpu_handles() + rpc.worker_devices(settings.rpc)
    return (ctypes.c_void_p * (len(chosen) + 1))(*chosen, None)


def check_worker_shares(path: Path, settings: ModelSettings, workers: list[tuple[str, int]]) -> None:
    """Refuse, before anything is sent, a split in which a worker gets more than its free memory
    (the plan ``plan --rpc`` shows; llama.cpp would fail the allocation on the worker).

    Raises:
        BudgetExceededError: naming the worker, what it would need and what it has.
    """
    from ..gguf_header import read_header
    from ..sizing.estimate import model_shape
    from ..sizing.rpc_split import rpc_split

    if _local_gpus():
        return  # local GPUs share the split; the per-worker prediction covers workers alone
    shares = settings.tensor_split or None
    split = rpc_split(model_shape(read_header(path)), settings, workers, shares=shares)
    for row in split["workers"]:
        if not row["fits"]:
            raise BudgetExceededError(
                f"{path.name}'s share on RPC worker {row['endpoint']} ({row['layers']} layers: weights, "
                "K/V and compute buffer)",
                row["total_bytes"],
                row["free_bytes"],
                [
                    "add a worker (--rpc)",
                    "move layers to the workers with more free memory (--tensor-split)",
                    "lower --ctx",
                    "or use a smaller quant",
                ],
            )


def _tensor_split(settings: ModelSettings, devices: Any) -> Any:
    """``llama_model_params.tensor_split`` from ``settings.tensor_split`` (one share per device in
    use), or None for llama.cpp's split by free memory.

    Raises:
        ConfigError: more shares than devices the model is loaded on.
    """
    if not settings.tensor_split:
        return None
    n_devices = len(devices) - 1 if devices is not None else len(_local_gpus())
    if len(settings.tensor_split) > n_devices:
        raise ConfigError(
            f"tensor_split has {len(settings.tensor_split)} shares but the model is loaded on {n_devices} "
            "device(s) (this machine's GPUs, then the RPC workers in --rpc order); give one share per device"
        )
    return (ctypes.c_float * int(L.llama_max_devices()))(*settings.tensor_split)


def _local_gpus() -> list[Any]:
    from ..backends import local_gpus

    return local_gpus()


AUTO_MARGIN = 256 * 2**20  # device memory left free for the driver and other programs


def gpu_layers(path: Path, settings: ModelSettings) -> int:
    """The layer count to offload: ``settings.n_gpu_layers``, or for ``"auto"`` as many as fit the
    first GPU's free memory (0 on a CPU-only build: nothing to decide, nothing read)."""
    value = settings.n_gpu_layers
    if isinstance(value, int):
        return value
    if value != "auto":
        raise ConfigError(f"n_gpu_layers={value!r}; use an integer (-1: all layers) or 'auto'")
    if settings.rpc:
        return -1  # the workers' devices take every layer, split by their free memory
    from ..backends import local_gpus

    gpus = local_gpus()  # a build with RPC says it offloads; a GPU of this machine decides
    if not gpus:
        return 0
    from ..gguf_header import read_header
    from ..sizing.estimate import model_shape
    from ..sizing.offload import auto_gpu_layers

    shape = model_shape(read_header(path))
    return auto_gpu_layers(shape, settings, gpus[0].free_bytes, margin_bytes=AUTO_MARGIN)


def context_params(settings: ModelSettings) -> Any:
    """llama_context_params from settings, validated before any memory is allocated."""
    for name in ("cache_type_k", "cache_type_v"):
        value = getattr(settings, name)
        if value not in _native.CACHE_TYPES:
            choices = sorted(_native.CACHE_TYPES)
            raise ConfigError(f"{name}={value!r} is not a KV cache type; use one of {choices}")
    flash = settings.flash_attn
    if settings.cache_type_v in _native.QUANTIZED_CACHE_TYPES:
        if flash is False:
            raise ConfigError(
                f"cache_type_v={settings.cache_type_v!r} needs flash attention, but flash_attn=False; "
                "enable flash_attn (or leave it unset) or use cache_type_v='f16'"
            )
        flash = True
    if settings.n_ctx <= 0 or settings.n_batch <= 0 or settings.n_ubatch <= 0:
        raise ConfigError("n_ctx, n_batch and n_ubatch must be positive")
    if not 1 <= settings.parallel <= 256:
        raise ConfigError(f"parallel must be between 1 and 256 sequences, got {settings.parallel!r}")
    if settings.prefill_chunk <= 0:
        raise ConfigError("prefill_chunk must be a positive number of tokens")
    if not 0 <= settings.ctx_checkpoints <= 64 or not 0 <= settings.recurrent_snapshots <= 64:
        raise ConfigError("ctx_checkpoints and recurrent_snapshots must be between 0 and 64")
    threads = settings.n_threads or _llama.physical_cores()
    n_ctx = _native.pad_ctx(settings.n_ctx)
    n_batch = min(settings.n_batch, n_ctx)
    if not settings.kv_unified and n_ctx // settings.parallel < _native.CTX_PAD:
        raise ConfigError(
            f"n_ctx {n_ctx} split over parallel={settings.parallel} sequences leaves under {_native.CTX_PAD} "
            "tokens each; raise n_ctx, lower parallel, or keep the unified KV cache (kv_unified=True)"
        )
    params = L.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = min(settings.n_ubatch, n_batch)
    params.n_seq_max = settings.parallel
    params.kv_unified = settings.kv_unified
    params.n_threads = threads
    params.n_threads_batch = settings.n_threads_batch or threads
    params.flash_attn_type = _native.FLASH_ATTN[flash]
    params.type_k = _native.CACHE_TYPES[settings.cache_type_k]
    params.type_v = _native.CACHE_TYPES[settings.cache_type_v]
    params.no_perf = True
    return params


def load_media(settings: ModelSettings, model: Any, ctx: Any) -> MediaSupport:
    """The projector (``settings.mmproj``) for images and audio, on the model's context."""
    assert settings.mmproj is not None
    from ..backends import local_gpus

    return MediaSupport(
        settings.mmproj, model, ctx, n_batch=int(L.llama_n_batch(ctx)), threads=int(L.llama_n_threads(ctx)),
        use_gpu=bool(local_gpus()) and settings.n_gpu_layers != 0,
        flash_attn=settings.flash_attn,  # auto: the encoder's attention scores never materialise
    )  # fmt: skip
