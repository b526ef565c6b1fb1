"""Will a registry model fit? The scheduler's estimator, applied before any file exists.

edge-qwen has one memory estimator (:mod:`edge_qwen.sizing.estimate`); it works from a
:class:`~edge_qwen.sizing.estimate.ModelShape`. For a model that is not downloaded yet this
module builds that shape from the registry: the architecture numbers of models.yaml and the
registered file size (or, when the size is unconfirmed, parameters × the quant's bits per weight
from gguf-py's block sizes). The weights are described as one matrix of the quant's main type so
the estimator's CPU repacking rules apply as they would to the real file.

``Estimator`` is the small interface ``recommend`` and ``pull`` depend on, so tests can pass a
table instead: ``estimate(entry, quant, n_ctx) -> bytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gguf

from ..sizing.speed import Throughput
from .catalog import ModelEntry

Estimator = Callable[[ModelEntry, str, int], int]
Q = gguf.GGMLQuantizationType

# registry quant name -> the ggml type most of its weights have (llama.cpp's ftype naming)
MAIN_TYPE: dict[str, Q] = {
    "q2_k": Q.Q2_K,
    "q3_k_m": Q.Q3_K,
    "q4_0": Q.Q4_0,
    "q4_k_m": Q.Q4_K,
    "q4_k_s": Q.Q4_K,
    "q5_0": Q.Q5_0,
    "q5_k_m": Q.Q5_K,
    "q6_k": Q.Q6_K,
    "q8_0": Q.Q8_0,
    "f16": Q.F16,
    "bf16": Q.BF16,
}


def bits_per_weight(quant: str) -> float:
    block, size = gguf.GGML_QUANT_SIZES[MAIN_TYPE[quant]]
    return size * 8 / block


def weight_bytes(entry: ModelEntry, quant: str) -> int:
    """Registered file size, else parameters × nominal bits per weight (an underestimate for K mixes)."""
    src = entry.gguf.get(quant)
    if src is not None and src.size is not None:
        return src.size
    return int(entry.params_total * bits_per_weight(quant) / 8)


def token_cost(entry: ModelEntry, quant: str) -> tuple[float, float]:
    """(bytes read, FLOPs) to decode one token of ``entry`` at ``quant``: every weight the token
    touches, less an untied embedding (only its row is read), and for a MoE the active share."""
    a = entry.arch
    embedding = 0.0 if a.tied_embeddings else a.vocab * a.hidden * bits_per_weight(quant) / 8
    active = entry.params_active or entry.params_total
    share = active / entry.params_total
    return (weight_bytes(entry, quant) - embedding) * share, 2.0 * active


def registry_shape(entry: ModelEntry, quant: str) -> object:
    """A scheduler ModelShape for ``entry`` at ``quant``, from models.yaml alone."""
    from ..gguf_header import TensorInfo
    from ..sizing.estimate import ModelShape

    a = entry.arch
    n_bytes = weight_bytes(entry, quant)
    weights = TensorInfo("blk.0.weights", int(MAIN_TYPE[quant]), (a.hidden, 8 * a.layers), n_bytes, 0)
    # an explicit output tensor (size 0) so the estimator does not add a tied-embedding copy twice
    output = TensorInfo("output.weight", int(Q.F32), (0,), 0, n_bytes)
    hybrid: dict[str, object] = {}
    if a.hybrid:  # the state llama.cpp keeps per sequence (see sizing.shape._hybrid)
        d_inner = (a.linear_value_heads or 0) * (a.linear_value_head_dim or 0)
        d_state, groups = a.linear_key_head_dim or 0, a.linear_key_heads or 0
        hybrid = {
            "recurrent": a.recurrent(),
            "state_r_elements": (a.linear_conv - 1) * (d_inner + 2 * groups * d_state),
            "state_s_elements": d_state * d_inner,
            "n_nextn": a.mtp_layers,
        }
    return ModelShape(
        architecture=entry.gguf_arch,
        n_layer=a.layers,
        n_embd=a.hidden,
        n_ff=4 * a.hidden,  # only scales the activation scratch estimate
        n_head=a.heads,
        n_head_kv=(a.kv_heads,) * a.layers,
        key_length=a.head_dim,
        value_length=a.head_dim,
        n_vocab=a.vocab,
        n_merges=a.vocab,  # Qwen BPE: ~151k merges for ~151k tokens
        n_ctx_train=entry.max_context or entry.native_context,
        tensors=(weights, output),
        file_size=n_bytes,
        **hybrid,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Target:
    """What to fit: a budget in bytes, the CPU features that decide weight repacking, and how fast
    the machine runs llama.cpp (None: speed is not judged)."""

    budget_bytes: int
    cpu_features: frozenset[str]
    label: str  # "raspberry-pi-4-4gb", "budget 3.5GB", "this machine"
    throughput: Throughput | None = None


def resolve_target(device: str | None = None, budget: str | None = None) -> Target:
    """A device profile, an explicit budget, or this machine's available memory minus headroom."""
    from .._llama import physical_cores
    from ..sizing.device import device_profile, resolve_budget, system_memory
    from ..sizing.estimate import host_cpu_features
    from ..sizing.speed import host_throughput

    if device:
        profile = device_profile(device)
        return Target(profile.budget_bytes, profile.cpu_features, profile.name, profile.throughput)
    features = host_cpu_features()
    speed = host_throughput(physical_cores(), features)
    if budget:
        return Target(resolve_budget(budget), features, f"budget {budget} on this machine", speed)
    return Target(resolve_budget(None, system_memory()), features, "this machine", speed)


def scheduler_estimator(cpu_features: frozenset[str]) -> Estimator:
    """The scheduler's estimate (host bytes after load and a prefill batch) for registry entries."""
    from ..settings import ModelSettings
    from ..sizing.estimate import estimate

    def run(entry: ModelEntry, quant: str, n_ctx: int) -> int:
        settings = ModelSettings(n_ctx=n_ctx, n_gpu_layers=0)
        shape = registry_shape(entry, quant)
        return estimate(shape, settings, cpu_features=cpu_features).total_bytes  # type: ignore[arg-type]

    return run
