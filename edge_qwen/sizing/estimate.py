"""How many bytes a GGUF will take once llama.cpp has loaded it — computed from the header alone.

The model mirrors what llama.cpp allocates (and what it logs as ``model buffer size``, ``KV buffer
size``, ``compute buffer size``, ``output buffer size``), then says which of it becomes resident:

* **weights** — every tensor's bytes. Tensors a CPU repacks (``CPU_REPACK``/``AMX`` extra buffer
  types) move from the memory-mapped file into an anonymous copy; a tied output matrix gets a
  repacked *copy* of the embedding. With ``n_gpu_layers`` the repeating layers (and the output
  layer once ``n_gpu_layers > n_layer``) go to the device; the token embedding stays on the host.
* **KV cache** — ``n_layer × n_ctx × n_head_kv × (key_length + value_length)`` elements at the
  cache type's block size (f16: 2 bytes; q8_0: 34 per 32; q4_0: 18 per 32). On a hybrid
  (Qwen3.5, Qwen3-Next) only the attention layers have one.
* **recurrent state** — a hybrid's other layers keep f32 conv + SSM state per sequence, times
  ``1 + n_rs_seq`` where llama.cpp keeps rollback snapshots (``RS buffer size``), whatever the
  context; the runtime's **checkpoints** of that state (``ctx_checkpoints`` per slot) live in host
  memory beside it. With ``mtp=True`` the MTP head's layer is loaded and its own context keeps one
  attention layer of K/V over the same cells.
* **compute buffer** — llama.cpp reserves it for the worst case (every token of a ``n_ubatch`` batch
  asking for logits, and without flash attention the full ``n_ctx × n_ubatch × n_head`` scores).
  edge-qwen's runtime only ever asks for the last token's logits, so only the activations of a
  batch are ever touched; untouched reserved pages are never backed by RAM. ``committed_bytes``
  still reports the reserve for systems with strict overcommit.
* **output buffer** — logits for ``parallel`` sequences, and **overhead** — the tokenizer's
  in-memory tables (llama.cpp keeps tokens and merges in hash maps; ~161 bytes an entry).

The constants marked *calibrated* were fitted to llama.cpp b-0.3.36 on Qwen2.5-0.5B (24 layers,
896 wide, 151,936 tokens) and validated by tests/scheduler against llama.cpp's own log and the
process RSS; see benchmarks/bench_memory.py for the table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import gguf

from ..gguf_header import TensorInfo, read_header
from ..settings import ModelSettings, draft_settings
from .companions import adapter_file_bytes, file_shape, media_bytes
from .shape import ModelShape, model_shape

Q = gguf.GGMLQuantizationType
MiB = 2**20
CTX_PAD = 256  # llama.cpp pads n_ctx (and the KV cache) to this

# KV cache type -> (elements per block, bytes per block)
KV_TYPES: dict[str, tuple[int, int]] = {
    name: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
    for name in ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
}

# calibrated (see module docstring)
VOCAB_ENTRY_BYTES = 161  # llama_vocab + gguf metadata copies, per token and per merge
CONTEXT_OVERHEAD_BYTES = 1 * MiB  # threadpool, graph metadata, small context allocations
ACTIVATION_FACTOR = 3.5  # f32 activations touched per batch token, in units of (n_embd + n_ff)
AMX_SIZE_FACTOR = 1.083  # the AMX buffer is a bit larger than the tensors it repacks

# CPU weight repacking (ggml-cpu repack.cpp, ggml_repack_get_optimal_repack_type), as data:
# ggml type -> list of (CPU features all required, row multiple). First match wins.
REPACK_RULES: dict[str, list[tuple[frozenset[str], int]]] = {
    "Q4_0": [(frozenset({"avx2"}), 8), (frozenset({"neon", "i8mm"}), 4), (frozenset({"neon", "dotprod"}), 4)],
    "Q4_K": [(frozenset({"avx2"}), 8), (frozenset({"neon", "i8mm"}), 8), (frozenset({"neon", "dotprod"}), 8)],
    "Q5_K": [(frozenset({"neon", "i8mm"}), 8), (frozenset({"neon", "dotprod"}), 8)],
    "Q6_K": [(frozenset({"neon", "i8mm"}), 8), (frozenset({"neon", "dotprod"}), 8)],
    "Q2_K": [(frozenset({"avx512"}), 8)],
    "IQ4_NL": [(frozenset({"avx2"}), 8), (frozenset({"neon", "dotprod"}), 4)],
    "MXFP4": [(frozenset({"avx2"}), 8), (frozenset({"neon", "dotprod"}), 4)],
    "Q8_0": [(frozenset({"neon", "i8mm"}), 4), (frozenset({"neon", "dotprod"}), 4)],
}
# ggml types the AMX buffer takes (ggml-cpu/amx/common.h qtype_has_amx_kernels)
AMX_TYPES = frozenset({"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"})

# /proc/cpuinfo flag -> the feature names used above (x86 "flags", ARM "Features")
CPU_FLAG_FEATURES: dict[str, str] = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "amx_int8": "amx",
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
}


# A pseudo-feature: the runtime keeps every weight in the plain buffer (no CPU_REPACK, no AMX).
NO_EXTRA_BUFFERS = "no_extra_buffers"
# architectures whose recurrent state llama.cpp can roll back (llm_arch_supports_rs_rollback, of the
# ones edge-qwen runs): n_rs_seq snapshots of each sequence's state exist only there
RS_ROLLBACK_ARCHS = frozenset({"qwen35", "qwen35moe"})


def host_cpu_features() -> frozenset[str]:
    """What the installed llama.cpp uses on this machine, in the names of :data:`REPACK_RULES`.

    The CPU's flags say what it *could* run; the build decides what it does: ``amx`` only when
    ggml-cpu was compiled with AMX kernels (setup.sh builds with ``-mno-amx-int8`` under GCC 12,
    so an AMX CPU then repacks into CPU_REPACK like any AVX-512 one), and
    :data:`NO_EXTRA_BUFFERS` when the runtime turns the extra buffer types off here.
    """
    from .. import _llama  # loads the llama.cpp library: only when this machine is planned for

    features = {CPU_FLAG_FEATURES[f] for f in _llama.cpu_flags() if f in CPU_FLAG_FEATURES}
    if not _llama.build_has_amx():
        features.discard("amx")
    if not _llama.default_extra_buffers():
        features.add(NO_EXTRA_BUFFERS)
    return frozenset(features)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component; ``total_bytes`` is what the host must hold, ``device_bytes`` the GPU."""

    n_ctx: int  # padded: the context's KV cells, shared by its parallel sequences
    parallel: int
    cache_type_k: str
    cache_type_v: str
    n_ubatch: int
    flash_attn: bool
    weights_bytes: int  # host resident weights (mapped file + repacked copies)
    repack_bytes: int  # part of weights_bytes living in an anonymous repack buffer
    kv_bytes: int  # attention layers only
    compute_bytes: int  # llama.cpp's reserved compute buffer (what it logs)
    compute_resident_bytes: int  # the part a prefill batch touches (last-token logits only)
    output_bytes: int
    overhead_bytes: int
    device_weights_bytes: int = 0
    device_kv_bytes: int = 0
    device_compute_bytes: int = 0
    adapter_bytes: int = 0  # LoRA adapters loaded next to the weights
    draft_bytes: int = 0  # the draft model for speculative decoding: its whole estimate
    media_bytes: int = 0  # the projector (mmproj): weights, encoder compute buffer, embeddings
    prompt_cache_bytes: int = 0  # host copies of K/V the slots gave up (its budget, charged whole)
    recurrent_bytes: int = 0  # a hybrid's recurrent layers: conv + SSM state per sequence and snapshot
    checkpoint_bytes: int = 0  # a hybrid's state checkpoints in host memory (ctx_checkpoints per slot)
    mtp_weights_bytes: int = 0  # mtp=True: the MTP head's layer, loaded beside the trunk
    mtp_kv_bytes: int = 0  # mtp=True: the MTP context's K/V (one attention layer per head layer)

    @property
    def total_bytes(self) -> int:
        """Host bytes resident after load + a full prefill batch: what the budget is charged."""
        return (
            self.weights_bytes
            + self.adapter_bytes
            + self.draft_bytes
            + self.media_bytes
            + self.prompt_cache_bytes
            + self.kv_bytes
            + self.recurrent_bytes
            + self.checkpoint_bytes
            + self.mtp_weights_bytes
            + self.mtp_kv_bytes
            + self.compute_resident_bytes
            + self.output_bytes
            + self.overhead_bytes
        )

    @property
    def committed_bytes(self) -> int:
        """Host bytes llama.cpp allocates, touched or not (relevant with vm.overcommit_memory=2)."""
        return self.total_bytes - self.compute_resident_bytes + self.compute_bytes

    @property
    def device_bytes(self) -> int:
        return self.device_weights_bytes + self.device_kv_bytes + self.device_compute_bytes

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(
            total_bytes=self.total_bytes, committed_bytes=self.committed_bytes, device_bytes=self.device_bytes
        )
        return data


def pad_ctx(n_ctx: int) -> int:
    return max(CTX_PAD, -(-n_ctx // CTX_PAD) * CTX_PAD)


def kv_cache_bytes(
    shape: ModelShape, n_ctx: int, cache_type_k: str, cache_type_v: str, layers: Iterable[int]
) -> int:
    """Exact KV bytes for the given layers: quantized types include their block scales."""
    kb, kt = KV_TYPES[cache_type_k]
    vb, vt = KV_TYPES[cache_type_v]
    total = 0
    for i in layers:
        if shape.recurrent and shape.recurrent[i]:
            continue  # a recurrent layer keeps a fixed-size state instead (recurrent_state_bytes)
        n_kv = shape.n_head_kv[i] if i < len(shape.n_head_kv) else shape.n_head_kv[-1]
        total += n_ctx * n_kv * (shape.key_length * kt // kb + shape.value_length * vt // vb)
    return total


def recurrent_state_bytes(
    shape: ModelShape, sequences: int, layers: Iterable[int], snapshots: int = 0
) -> int:
    """The recurrent state llama.cpp keeps for the given layers: f32 conv and SSM state, one copy per
    sequence (``n_seq_max`` cells) and per rollback snapshot (``n_rs_seq``), whatever the context."""
    per_layer = (shape.state_r_elements + shape.state_s_elements) * 4 * max(1, sequences) * (1 + snapshots)
    return sum(per_layer for i in layers if shape.recurrent and shape.recurrent[i])


def mtp_bytes(shape: ModelShape, settings: ModelSettings, n_ctx: int) -> tuple[int, int]:
    """(weights, K/V) of the MTP head when ``settings.mtp`` loads it: the nextn layers' tensors, and
    the MTP context's cache of one attention layer each over the target's ``n_ctx`` cells."""
    if not settings.mtp or shape.n_nextn <= 0:
        return 0, 0
    weights = sum(t.n_bytes for t in shape.tensors if (_layer_of(t.name) or 0) >= shape.n_layer)
    kb, kt = KV_TYPES[settings.cache_type_k]
    vb, vt = KV_TYPES[settings.cache_type_v]
    per_layer = n_ctx * shape.n_head_kv[-1] * (shape.key_length * kt // kb + shape.value_length * vt // vb)
    return weights, shape.n_nextn * per_layer


def rollback_snapshots(shape: ModelShape, settings: ModelSettings) -> int:
    """The ``n_rs_seq`` llama.cpp keeps for this model: ``recurrent_snapshots`` where the
    architecture supports recurrent rollback, else 0 (llama.cpp clamps it)."""
    return settings.recurrent_snapshots if shape.architecture in RS_ROLLBACK_ARCHS else 0


def compute_buffer_bytes(
    shape: ModelShape, n_ctx: int, n_ubatch: int, flash_attn: bool, quantized_kv: bool
) -> int:
    """llama.cpp's reserved compute buffer: the larger of the output phase (all-token logits) and,
    without flash attention, the attention phase (scores + mask over the whole context)."""
    output_phase = n_ubatch * (shape.n_vocab * 4 + shape.n_embd * 8)
    attention_phase = 0
    if not flash_attn:
        attention_phase = n_ubatch * (n_ctx * (shape.n_head + 1) * 4 + shape.n_embd * 21)
    extra = n_ubatch * shape.n_embd * 4 if (quantized_kv or not flash_attn) else 0
    return max(output_phase, attention_phase) + extra


def compute_resident_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int, flash_attn: bool) -> int:
    """The part of the compute buffer a batch touches when only the last token wants logits."""
    activations = int(n_ubatch * 4 * (shape.n_embd + shape.n_ff) * ACTIVATION_FACTOR) + shape.n_vocab * 4
    if not flash_attn:  # scores over the whole context once it is full
        activations += n_ubatch * n_ctx * (shape.n_head + 1) * 4
    return activations


def _layer_of(name: str) -> int | None:
    if name.startswith("blk."):
        return int(name.split(".")[1])
    return None


def _repack_target(t: TensorInfo, features: frozenset[str], amx: bool) -> float:
    """Size factor of the repacked copy of a mat-mul weight (0 when it stays in the mapped file)."""
    name = t.type_name
    rows = t.shape[1] if len(t.shape) > 1 else 1
    if len(t.shape) != 2:
        return 0.0
    if amx and name in AMX_TYPES:
        return AMX_SIZE_FACTOR
    for needs, multiple in REPACK_RULES.get(name, []):
        if needs <= features:
            return 1.0 if rows % multiple == 0 else 0.0
    return 0.0


def _offload(shape: ModelShape, n_gpu_layers: int | str, gpu: bool) -> tuple[set[int], bool]:
    """Layers on the device, and whether the output layer is too (llama.cpp: n_gpu_layers > n_layer).
    ``"auto"`` counts as all of them (the loader lowers it to what fits the device)."""
    if not isinstance(n_gpu_layers, int):
        n_gpu_layers = -1
    if not gpu or n_gpu_layers == 0:
        return set(), False
    n = shape.n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, shape.n_layer + 1)
    first = shape.n_layer - min(n, shape.n_layer)
    return set(range(first, shape.n_layer)), n > shape.n_layer


def weight_bytes(
    shape: ModelShape,
    features: frozenset[str],
    use_extra: bool,
    offloaded: set[int],
    output_on_device: bool,
    use_mmap: bool = True,
) -> tuple[int, int, int]:
    """(host bytes, of which repacked, device bytes) of the weights.

    With mmap, llama.cpp maps the file span from the first to the last tensor it keeps in place;
    repacked tensors inside that span were read through the mapping and stay resident, those
    outside it are unmapped. Without mmap only the kept tensors are read into memory.
    """
    amx = use_extra and "amx" in features
    kept: list[TensorInfo] = []
    repacked = device = 0
    for t in shape.tensors:
        layer = _layer_of(t.name)
        if layer is not None and layer >= shape.n_layer:
            continue  # an MTP layer after the trunk: llama.cpp skips it unless asked to load it
        on_device = (
            (layer in offloaded) if layer is not None else (output_on_device and t.name.startswith("output"))
        )
        if on_device:
            device += t.n_bytes
            continue
        factor = (
            _repack_target(t, features, amx) if use_extra and not t.name.startswith("token_embd") else 0.0
        )
        if factor:
            repacked += int(t.n_bytes * factor)
        else:
            kept.append(t)
    if shape.tied_output:  # llama.cpp multiplies by a duplicate of the embedding
        embd = next((t for t in shape.tensors if t.name.startswith("token_embd")), None)
        if embd is not None and output_on_device:
            device += embd.n_bytes
        elif embd is not None and use_extra:
            repacked += int(embd.n_bytes * _repack_target(embd, features, amx))
    if not kept:
        host = 0
    elif use_mmap:
        host = max(t.offset + t.n_bytes for t in kept) - min(t.offset for t in kept)
    else:
        host = sum(t.n_bytes for t in kept)
    return host + repacked, repacked, device


def draft_bytes(settings: ModelSettings, parallel: int, cpu_features: frozenset[str], gpu: bool) -> int:
    """A draft model's whole estimate (weights, its own KV cache of the target's ``n_ctx`` cells,
    its compute buffer for one step's catch-up); 0 without one (or while its file is missing)."""
    shape = None if settings.draft is None else file_shape(settings.draft)
    if shape is None:
        return 0
    draft = estimate(shape, draft_settings(settings), parallel=parallel, cpu_features=cpu_features, gpu=gpu)
    return draft.total_bytes


def estimate(
    shape: ModelShape,
    settings: ModelSettings,
    *,
    parallel: int | None = None,
    cpu_features: frozenset[str] = frozenset(),
    gpu: bool = False,
) -> MemoryEstimate:
    """The memory breakdown of one model under ``settings`` (see the module docstring).

    ``n_ctx`` is the context's total KV cells whatever ``parallel`` is (``settings.parallel`` unless
    given): the sequences share them (unified cache) or split them; more sequences cost only their
    logits rows.
    """
    parallel = settings.parallel if parallel is None else parallel
    n_ctx = pad_ctx(settings.n_ctx)
    n_ubatch = min(settings.n_ubatch, settings.n_batch, n_ctx)
    quantized_kv = settings.cache_type_k not in ("f16", "f32") or settings.cache_type_v not in ("f16", "f32")
    # flash_attn=None is "auto": llama.cpp enables it on CPU (and a quantized V cache requires it)
    flash = settings.flash_attn is not False or settings.cache_type_v not in ("f16", "f32")
    use_extra = settings.extra_buffers
    if use_extra is None:  # what the runtime does on the machine these features describe
        use_extra = NO_EXTRA_BUFFERS not in cpu_features
    offloaded, output_on_device = _offload(shape, settings.n_gpu_layers, gpu)
    host_w, repacked, device_w = weight_bytes(
        shape, cpu_features, use_extra, offloaded, output_on_device, settings.use_mmap
    )
    kv_ctx = n_ctx
    host_layers = [i for i in range(shape.n_layer) if i not in offloaded]
    kv_args = (kv_ctx, settings.cache_type_k, settings.cache_type_v)
    compute = compute_buffer_bytes(shape, kv_ctx, n_ubatch, flash, quantized_kv)
    resident = compute_resident_bytes(shape, kv_ctx, n_ubatch, flash)
    snapshots, all_layers = rollback_snapshots(shape, settings), range(shape.n_layer)
    mtp_weights, mtp_kv = mtp_bytes(shape, settings, kv_ctx)
    return MemoryEstimate(
        n_ctx=n_ctx,
        parallel=parallel,
        cache_type_k=settings.cache_type_k,
        cache_type_v=settings.cache_type_v,
        n_ubatch=n_ubatch,
        flash_attn=flash,
        weights_bytes=host_w,
        repack_bytes=repacked,
        kv_bytes=kv_cache_bytes(shape, *kv_args, host_layers),
        compute_bytes=0 if offloaded else compute,
        compute_resident_bytes=0 if offloaded else min(resident, compute),
        output_bytes=parallel * shape.n_vocab * 4,
        overhead_bytes=(shape.n_vocab + shape.n_merges) * VOCAB_ENTRY_BYTES + CONTEXT_OVERHEAD_BYTES,
        device_weights_bytes=device_w,
        device_kv_bytes=kv_cache_bytes(shape, *kv_args, sorted(offloaded)),
        device_compute_bytes=compute if offloaded else 0,
        adapter_bytes=sum(adapter_file_bytes(path) for _name, path in settings.adapters),
        draft_bytes=draft_bytes(settings, parallel, cpu_features, gpu),
        media_bytes=media_bytes(settings),
        prompt_cache_bytes=max(0, settings.prompt_cache),
        recurrent_bytes=recurrent_state_bytes(shape, parallel, host_layers, snapshots),
        checkpoint_bytes=recurrent_state_bytes(shape, parallel, all_layers) * settings.ctx_checkpoints,
        mtp_weights_bytes=mtp_weights,
        mtp_kv_bytes=mtp_kv,
    )


def estimate_memory(
    path: str | os.PathLike[str],
    settings: ModelSettings | None = None,
    *,
    parallel: int | None = None,
    cpu_features: frozenset[str] | None = None,
    gpu: bool = False,
    **overrides: Any,
) -> MemoryEstimate:
    """Estimate a GGUF's memory under ``settings`` (or ModelSettings defaults plus ``overrides``).

    ``cpu_features`` defaults to this machine's (they decide which weights llama.cpp repacks);
    pass a device profile's to plan for another machine. ``gpu`` says whether a GPU backend takes
    ``n_gpu_layers`` (a CPU-only llama.cpp ignores it).
    """
    base = settings or ModelSettings()
    if overrides:
        base = dataclasses.replace(base, **overrides)
    features = host_cpu_features() if cpu_features is None else cpu_features
    return estimate(model_shape(read_header(path)), base, parallel=parallel, cpu_features=features, gpu=gpu)


def largest_context(
    shape: ModelShape,
    settings: ModelSettings,
    available: int,
    *,
    parallel: int | None = None,
    cpu_features: frozenset[str] = frozenset(),
    gpu: bool = False,
    minimum: int = CTX_PAD,
    maximum: int | None = None,
) -> int | None:
    """The largest padded n_ctx in [minimum, maximum or the trained context] that fits ``available``."""

    def fits(n_ctx: int) -> bool:
        est = estimate(
            shape,
            dataclasses.replace(settings, n_ctx=n_ctx),
            parallel=parallel,
            cpu_features=cpu_features,
            gpu=gpu,
        )
        return est.total_bytes <= available

    top = pad_ctx(maximum) if maximum is not None else pad_ctx(shape.n_ctx_train or CTX_PAD)
    lo, hi = pad_ctx(minimum) // CTX_PAD, max(top, pad_ctx(minimum)) // CTX_PAD
    if not fits(lo * CTX_PAD):
        return None
    while lo < hi:  # total grows monotonically with n_ctx
        mid = (lo + hi + 1) // 2
        if fits(mid * CTX_PAD):
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_PAD
