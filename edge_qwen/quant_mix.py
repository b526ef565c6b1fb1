"""A per-tensor quantization mix under a byte budget, searched for the model at hand.

llama.cpp's types (Q4_K_M, Q4_0, …) are fixed recipes: the same rule for every model. Here each
weight tensor gets its own type, chosen to lose the least for the bytes given:

1. **Measure** (streamed, one tensor at a time): every candidate type that fits the tensor's row
   length is applied with llama.cpp's own kernels (``ggml_quantize_chunk``, weighted by the
   importance matrix, as the quantizer will), dequantized with gguf-py, and its error is measured
   the way the importance matrix says it matters: ``Σ_j imatrix_j · Σ_i (w_ij − q_ij)²``, relative
   to the tensor's output energy ``Σ_j imatrix_j · Σ_i w_ij²``. That relative error, with the
   tensor's bytes, is one option.
2. **Choose** (a multiple-choice knapsack): from the cheapest option of every tensor, the upgrade
   with the largest loss reduction per extra byte is taken again and again (on each tensor's lower
   convex hull, so the order is right), while the file still fits the budget.
3. **Pick by measurement**: the loss of step 2 is a proxy. A few weightings of it (all tensors
   alike; the embeddings/output and the value/down projections counted more) give a few mixes of
   the same size; each is quantized and scored by its KL divergence from the original on the
   search's calibration text (the importance matrix's, never the quality report's), and the best
   one is kept.

Deterministic for the same inputs: no sampling, ties broken by name.
"""

from __future__ import annotations

import ctypes
import heapq
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

QT = gguf.GGMLQuantizationType
CANDIDATES: tuple[QT, ...] = (QT.Q3_K, QT.Q4_0, QT.IQ4_NL, QT.Q4_K, QT.Q5_0, QT.Q5_K, QT.Q6_K, QT.Q8_0)
# llama.cpp never quantizes these (llama-quant.cpp tensor_allows_quantization); they keep their type
_NEVER = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d", "pos_embd", "token_types", "altup", "laurel")
# proxy weightings tried in step 3: (label, {name fragment: factor})
WEIGHTINGS: tuple[tuple[str, Mapping[str, float]], ...] = (
    ("uniform", {}),
    ("embeddings x4", {"token_embd": 4.0, "output.weight": 4.0}),
    ("embeddings x4, v/down x2", {"token_embd": 4.0, "output.weight": 4.0, "attn_v": 2.0, "ffn_down": 2.0}),
)
_ROWS = 2048  # rows measured at once: memory stays a few MB per tensor


@dataclass(frozen=True)
class Option:
    type: QT
    bytes: int
    error: float  # relative, importance-weighted squared error


@dataclass
class TensorStats:
    name: str
    n_params: int
    options: list[Option] = field(default_factory=list)


@dataclass(frozen=True)
class Mix:
    """A type per searched tensor, the bytes they take, and the proxy loss of the choice."""

    types: dict[str, str]
    bytes: int
    loss: float
    weighting: str = "uniform"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.types.values():
            out[t] = out.get(t, 0) + 1
        return dict(sorted(out.items()))


def quantizable(tensor: Any) -> bool:
    name = tensor.name
    return len(tensor.shape) >= 2 and name.endswith("weight") and not any(s in name for s in _NEVER)


def _ggml() -> Any:
    from llama_cpp import _ggml as g

    lib = g.libggml
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p,
    ]  # fmt: skip
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes, lib.ggml_row_size.restype = [ctypes.c_int, ctypes.c_int64], ctypes.c_size_t
    return lib


def _quantize_rows(lib: Any, qtype: QT, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """``rows`` (float32 [n, k]) through llama.cpp's quantizer and back through gguf-py."""
    n, k = rows.shape
    row_bytes = int(lib.ggml_row_size(int(qtype), k))
    out = np.empty(n * row_bytes, dtype=np.uint8)
    src = np.ascontiguousarray(rows, dtype=np.float32)
    weights = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    lib.ggml_quantize_chunk(
        int(qtype),
        src.ctypes.data,
        out.ctypes.data,
        0,
        n,
        k,
        None if weights is None else weights.ctypes.data,
    )
    return gguf.quants.dequantize(out.reshape(n, row_bytes), qtype).reshape(n, k)


def measure(
    model: str | os.PathLike[str],
    imatrix: Mapping[str, np.ndarray],
    *,
    candidates: Sequence[QT] = CANDIDATES,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[TensorStats], int]:
    """Every quantizable tensor's options, and the bytes of everything else (metadata, norms, …)."""
    lib = _ggml()
    reader = gguf.GGUFReader(model)
    fixed = int(reader.data_offset)
    stats: list[TensorStats] = []
    tensors = list(reader.tensors)
    for index, tensor in enumerate(tensors):
        if progress is not None:
            progress(index + 1, len(tensors))
        if not quantizable(tensor):
            fixed += int(tensor.n_bytes)
            continue
        k = int(tensor.shape[0])
        n_rows = int(tensor.n_elements) // k
        raw = np.asarray(tensor.data).reshape(n_rows, -1)  # a row in the file's type (BF16: bytes), mmap
        n_mat = int(np.prod(tensor.shape[2:])) if len(tensor.shape) > 2 else 1  # experts
        per_mat = raw.shape[0] // n_mat
        imat = imatrix.get(tensor.name)
        weights = (
            np.ones((n_mat, k)) if imat is None else np.asarray(imat, dtype=np.float64).reshape(n_mat, k)
        )
        entry = TensorStats(tensor.name, int(tensor.n_elements))
        errors = {q: 0.0 for q in candidates if k % gguf.GGML_QUANT_SIZES[q][0] == 0}
        signal = 0.0
        for m in range(n_mat):
            for start in range(m * per_mat, (m + 1) * per_mat, _ROWS):
                stop = min(start + _ROWS, (m + 1) * per_mat)
                rows = gguf.quants.dequantize(raw[start:stop], tensor.tensor_type).astype(np.float32)
                signal += float(np.sum(rows.astype(np.float64) ** 2 * weights[m]))
                for qtype in errors:
                    back = _quantize_rows(lib, qtype, rows, None if imat is None else weights[m])
                    errors[qtype] += float(np.sum((back.astype(np.float64) - rows) ** 2 * weights[m]))
        n_rows = raw.shape[0]
        for qtype, err in errors.items():
            size = int(lib.ggml_row_size(int(qtype), k)) * n_rows
            entry.options.append(Option(qtype, size, err / signal if signal > 0 else 0.0))
        stats.append(entry)
    return stats, fixed


def _hull(options: Iterable[Option], factor: float) -> list[Option]:
    """The options on the lower convex hull of (bytes, loss): each step buys the most per byte."""
    ordered = sorted(options, key=lambda o: (o.bytes, o.error))
    kept: list[Option] = []
    for o in ordered:
        if kept and o.error * factor >= kept[-1].error * factor:
            continue  # more bytes, no less loss
        while len(kept) >= 2:
            a, b = kept[-2], kept[-1]
            # b is above the segment a-o: skipping it is better
            if (b.error - a.error) * (o.bytes - a.bytes) >= (o.error - a.error) * (b.bytes - a.bytes):
                kept.pop()
            else:
                break
        kept.append(o)
    return kept


def _factor(name: str, weighting: Mapping[str, float]) -> float:
    return max([f for key, f in weighting.items() if key in name], default=1.0)


def choose(
    stats: Sequence[TensorStats],
    budget: int,
    weighting: Mapping[str, float] | None = None,
    label: str = "uniform",
) -> Mix:
    """The mix of least (weighted) loss whose tensors take at most ``budget`` bytes.

    Raises:
        ValueError: even the cheapest type of every tensor does not fit.
    """
    weighting = weighting or {}
    hulls = {s.name: _hull(s.options, _factor(s.name, weighting)) for s in stats}
    level = dict.fromkeys(hulls, 0)
    used = sum(h[0].bytes for h in hulls.values())
    if used > budget:
        raise ValueError(
            f"the cheapest types take {used} bytes, more than the {budget} bytes left for weights"
        )

    def step(name: str) -> tuple[float, str] | None:
        hull, i = hulls[name], level[name]
        if i + 1 >= len(hull):
            return None
        gain = (hull[i].error - hull[i + 1].error) * _factor(name, weighting)
        return -gain / (hull[i + 1].bytes - hull[i].bytes), name

    heap = [s for n in sorted(hulls) if (s := step(n)) is not None]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        hull, i = hulls[name], level[name]
        extra = hull[i + 1].bytes - hull[i].bytes
        if used + extra > budget:
            continue  # this upgrade does not fit; cheaper ones of other tensors still may
        used += extra
        level[name] = i + 1
        if (s := step(name)) is not None:
            heapq.heappush(heap, s)
    chosen = {n: hulls[n][level[n]] for n in hulls}
    loss = sum(o.error * _factor(n, weighting) for n, o in chosen.items())
    return Mix({n: o.type.name for n, o in sorted(chosen.items())}, used, loss, label)


def tensor_overrides(mix: Mix) -> list[tuple[str, int]]:
    """(exact-name regex, ggml type) pairs for ``llama_model_quantize_params.tt_overrides``."""
    import re

    return [(f"^{re.escape(name)}$", int(QT.__members__[kind])) for name, kind in mix.types.items()]


def weights_budget(target_bytes: int, fixed: int, n_tensors: int) -> int:
    """Bytes left for the searched tensors in a file of ``target_bytes`` (alignment padding kept)."""
    return target_bytes - fixed - 32 * n_tensors


def model_params(model: str | os.PathLike[str]) -> int:
    """Every weight of the model, the denominator of bits per weight."""
    return sum(int(t.n_elements) for t in gguf.GGUFReader(model).tensors)


def output_name(model: str | os.PathLike[str], target_bytes: int) -> str:
    """``<stem>-MIX-<bits per weight of the target>bpw.gguf``, the stem without its precision."""
    stem = Path(model).name.removesuffix(".gguf")
    for suffix in ("-F16", "-f16", "-BF16", "-bf16", "-F32", "-f32"):
        stem = stem.removesuffix(suffix)
    return f"{stem}-MIX-{8 * target_bytes / max(model_params(model), 1):.2f}bpw.gguf"
