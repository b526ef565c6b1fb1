"""How llama.cpp spreads a model over RPC workers, before loading: ``plan --rpc``.

With every layer offloaded (what ``--rpc`` does) and no tensor split given, llama.cpp weighs each
device by its free memory: the cumulative shares ``s_0 ≤ s_1 ≤ … = 1`` of the devices' free
memory, and layer ``il`` (the output layer counts as layer ``n_layer``) goes to the first device
with ``il / (n_layer + 1) < s_d`` (``llama-model.cpp``: ``std::upper_bound`` over the splits). Each
device then holds its layers' weights and K/V, and a compute buffer once it holds any layer; the
main host keeps the token embeddings. The per-layer sizes are :func:`~.offload.offload_inputs`'s.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from ..settings import ModelSettings
from .estimate import ModelShape
from .offload import offload_inputs


def layer_devices(n_layers: int, free_bytes: Sequence[float]) -> list[int]:
    """The device index of each of ``n_layers + 1`` layers (the last is the output layer)."""
    total = sum(free_bytes)
    if not free_bytes or total <= 0:
        raise ValueError("no device with free memory to split over")
    cumulative: list[float] = []
    running = 0.0
    for free in free_bytes:
        running += free
        cumulative.append(running / total)
    return [
        min(bisect.bisect_right(cumulative, il / (n_layers + 1)), len(free_bytes) - 1)
        for il in range(n_layers + 1)
    ]


def rpc_split(
    shape: ModelShape,
    settings: ModelSettings,
    workers: Sequence[tuple[str, int]],
    *,
    parallel: int | None = None,
    shares: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Per worker (``(endpoint, free bytes)``, in ``--rpc`` order): layers, weights, K/V, compute,
    the total and whether it fits its free memory; and what the main host keeps. ``shares`` (a
    ``--tensor-split``) replaces the free memory as the weights of the split.

    Raises:
        ValueError: more shares than workers.
    """
    if shares is not None and len(shares) > len(workers):
        raise ValueError(f"{len(shares)} tensor-split shares for {len(workers)} worker(s)")
    weights_of = list(shares) + [0.0] * (len(workers) - len(shares)) if shares else [f for _, f in workers]
    inputs = offload_inputs(shape, settings, parallel=parallel)
    owner = layer_devices(inputs.n_layers, weights_of)
    rows = []
    for d, (endpoint, free) in enumerate(workers):
        layers = [il for il in range(inputs.n_layers) if owner[il] == d]
        output = owner[inputs.n_layers] == d
        weights = sum(inputs.per_layer_bytes[il] for il in layers) + (inputs.output_bytes if output else 0)
        kv = sum(inputs.kv_per_layer_bytes[il] for il in layers)
        compute = inputs.fixed_device_bytes if layers or output else 0
        total = weights + kv + compute
        rows.append(
            {
                "endpoint": endpoint, "free_bytes": free, "layers": len(layers), "output": output,
                "weights_bytes": weights, "kv_bytes": kv, "compute_bytes": compute,
                "total_bytes": total, "fits": total <= free,
            }
        )  # fmt: skip
    embeddings = sum(t.n_bytes for t in shape.tensors if t.name.startswith("token_embd"))
    return {"workers": rows, "host_weights_bytes": embeddings, "fits": all(r["fits"] for r in rows)}


def format_rpc_split(split: dict[str, Any]) -> str:
    mib = 2**20
    lines = []
    for r in split["workers"]:
        output = " + output" if r["output"] else ""
        verdict = "fits" if r["fits"] else f"DOES NOT FIT its {r['free_bytes'] / mib:,.0f} MiB free"
        lines.append(
            f"rpc {r['endpoint']}: {r['layers']} layers{output} -> {r['total_bytes'] / mib:,.1f} MiB "
            f"(weights {r['weights_bytes'] / mib:,.1f}, KV {r['kv_bytes'] / mib:,.1f}, compute "
            f"{r['compute_bytes'] / mib:,.1f}); {verdict}"
        )
    host = f"main host keeps the token embeddings: {split['host_weights_bytes'] / mib:,.1f} MiB"
    if "host_bytes" in split:
        host += f"; in all {split['host_bytes'] / mib:,.1f} MiB (buffers, logits, tokenizer)"
    lines.append(host)
    return "\n".join(lines)
