"""How many layers a GPU can take: llama.cpp puts the *last* ``n_gpu_layers`` repeating layers on
the device, together with their KV cache (``offload_kqv`` defaults to true) and the device compute
buffer, and the output layer once ``n_gpu_layers > n_layer``. :func:`plan_offload` is the pure
arithmetic; :func:`offload_inputs` takes its numbers from the estimator, so ``n_gpu_layers="auto"``
is ``offload_inputs(shape, settings).plan(device.free_bytes)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..settings import ModelSettings
from .estimate import ModelShape, estimate, kv_cache_bytes


@dataclass(frozen=True)
class OffloadInputs:
    """What offloading a model costs, layer by layer (bytes)."""

    n_layers: int
    per_layer_bytes: tuple[int, ...]  # weights of each repeating layer
    fixed_device_bytes: int  # the device compute buffer, there as soon as one layer is
    kv_per_layer_bytes: tuple[int, ...]
    output_bytes: int  # output norm + matrix (a tied one is a copy of the embedding)

    def plan(self, free_device_bytes: int, *, margin_bytes: int = 0) -> int:
        """:func:`plan_offload` for these sizes: how many layers fit ``free_device_bytes``."""
        return plan_offload(
            self.n_layers,
            self.per_layer_bytes,
            self.fixed_device_bytes,
            self.kv_per_layer_bytes,
            free_device_bytes,
            output_bytes=self.output_bytes,
            margin_bytes=margin_bytes,
        )


def plan_offload(
    n_layers: int,
    per_layer_bytes: int | Sequence[int],
    fixed_device_bytes: int,
    kv_per_layer_bytes: int | Sequence[int],
    free_device_bytes: int,
    *,
    output_bytes: int | None = None,
    margin_bytes: int = 0,
) -> int:
    """How many layers (``n_gpu_layers``) fit in ``free_device_bytes``.

    llama.cpp offloads the *last* n repeating layers; each brings its weights and its KV cache, and
    any offload at all puts the compute buffer (``fixed_device_bytes``) on the device. Per-layer
    sizes may be one number or one per layer (mixed quant types make layers differ). With
    ``output_bytes`` given and every layer on the device, the output layer is tried too, and
    ``n_layers + 1`` is returned when it fits (llama.cpp: ``n_gpu_layers > n_layer``).

    Returns 0 when not even one layer fits beside the fixed buffers.
    """
    weights = _per_layer(per_layer_bytes, n_layers)
    kv = _per_layer(kv_per_layer_bytes, n_layers)
    room = free_device_bytes - margin_bytes - fixed_device_bytes
    used = n = 0
    for i in reversed(range(n_layers)):
        if used + weights[i] + kv[i] > room:
            break
        used += weights[i] + kv[i]
        n += 1
    if n == n_layers and output_bytes is not None and used + output_bytes <= room:
        n += 1
    return n


def _per_layer(value: int | Sequence[int], n_layers: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n_layers
    if len(value) != n_layers:
        raise ValueError(f"expected {n_layers} per-layer sizes, got {len(value)}")
    return [int(v) for v in value]


def offload_inputs(
    shape: ModelShape, settings: ModelSettings, *, parallel: int | None = None
) -> OffloadInputs:
    """:func:`plan_offload`'s inputs (all but ``free_device_bytes``) for a model under settings.

    Weights per layer come from the header's tensors; the KV cache and the device compute buffer
    from :func:`~edge_qwen.sizing.estimate.estimate` itself (so however the estimator counts the
    context of parallel sequences, the plan agrees with it).
    """
    extra: dict[str, Any] = {} if parallel is None else {"parallel": parallel}
    one = estimate(shape, dataclasses.replace(settings, n_gpu_layers=1), gpu=True, **extra)
    on_host = estimate(shape, dataclasses.replace(settings, n_gpu_layers=0), gpu=True, **extra)
    k, v = settings.cache_type_k, settings.cache_type_v
    per_cell = [kv_cache_bytes(shape, 1, k, v, [i]) for i in range(shape.n_layer)]
    cells = on_host.kv_bytes // max(1, sum(per_cell))  # KV is linear in the cells: recover them
    per_layer = [0] * shape.n_layer
    output = 0
    for t in shape.tensors:
        if t.name.startswith("blk."):
            per_layer[int(t.name.split(".")[1])] += t.n_bytes
        elif t.name.startswith("output"):  # output.weight, output_norm.weight (as the estimator)
            output += t.n_bytes
    if shape.tied_output:  # the device gets its own copy of the embedding as the output matrix
        output += sum(t.n_bytes for t in shape.tensors if t.name.startswith("token_embd"))
    return OffloadInputs(
        n_layers=shape.n_layer,
        per_layer_bytes=tuple(per_layer),
        fixed_device_bytes=one.device_compute_bytes,
        kv_per_layer_bytes=tuple(cells * c for c in per_cell),
        output_bytes=output,
    )


def auto_gpu_layers(
    shape: ModelShape,
    settings: ModelSettings,
    free_device_bytes: int,
    *,
    parallel: int | None = None,
    margin_bytes: int = 0,
) -> int:
    """``n_gpu_layers="auto"``: as many layers as fit the device's free memory."""
    inputs = offload_inputs(shape, settings, parallel=parallel)
    return inputs.plan(free_device_bytes, margin_bytes=margin_bytes)


def offload_split(
    shape: ModelShape,
    settings: ModelSettings,
    device_memory_bytes: int,
    *,
    cpu_features: frozenset[str] = frozenset(),
    parallel: int | None = None,
) -> dict[str, Any]:
    """The host/device split of ``n_gpu_layers="auto"`` on a device with that much free memory
    (``plan --device-memory``): bytes per side, from the estimator with the chosen layer count."""
    n = auto_gpu_layers(shape, settings, device_memory_bytes, parallel=parallel)
    extra: dict[str, Any] = {} if parallel is None else {"parallel": parallel}
    placed = dataclasses.replace(settings, n_gpu_layers=n)
    est = estimate(shape, placed, cpu_features=cpu_features, gpu=True, **extra)
    return {
        "device_memory_bytes": device_memory_bytes,
        "n_gpu_layers": n,
        "n_layers": shape.n_layer,
        "output_on_device": n > shape.n_layer,
        "host_bytes": est.total_bytes,
        "device_bytes": est.device_bytes,
        "device_weights_bytes": est.device_weights_bytes,
        "device_kv_bytes": est.device_kv_bytes,
        "device_compute_bytes": est.device_compute_bytes,
    }


def format_offload(split: dict[str, Any]) -> str:
    """One line for ``plan``: how many layers go to the device, and the bytes on each side."""
    mib = 2**20
    layers = min(split["n_gpu_layers"], split["n_layers"])
    output = " + output" if split["output_on_device"] else ""
    return (
        f"offload to a device with {split['device_memory_bytes'] / mib:,.0f} MiB free: "
        f"{layers}/{split['n_layers']} layers{output} -> device {split['device_bytes'] / mib:,.1f} MiB "
        f"(weights {split['device_weights_bytes'] / mib:,.1f}, KV {split['device_kv_bytes'] / mib:,.1f}, "
        f"compute {split['device_compute_bytes'] / mib:,.1f}), host {split['host_bytes'] / mib:,.1f} MiB"
    )
