"""A checkpoint tensor as the GGUF wants it, without loading it: rows picked and reordered,
columns permuted, values mapped element by element.

llama.cpp's converter reshapes hybrid tensors in memory (A_log -> -exp(A_log), V heads regrouped,
fused expert and qkvz projections split). A :class:`TensorView` states the same change as index
arrays over the source's rows (the tensor seen as a 2-D matrix: every axis but the last flattened
into rows) and streams it block by block like :class:`~.safetensors.TensorRef`, so converting a
hybrid checkpoint stays as small in memory as a dense one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .safetensors import CHUNK_BYTES, TensorRef

Elementwise = Callable[[np.ndarray], np.ndarray]


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of a tensor seen as a matrix; a vector is one value per row."""
    if len(shape) <= 1:
        return (int(np.prod(shape, dtype=np.int64)), 1)
    return (int(np.prod(shape[:-1], dtype=np.int64)), shape[-1])


@dataclass(frozen=True, eq=False)
class TensorView:
    """``ref`` rows ``rows`` (all, in order, when None), columns ``cols``, then ``fn``; ``shape``
    is the result's (row-major) shape, whose matrix form must match the selection."""

    ref: TensorRef
    shape: tuple[int, ...]
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    fn: Elementwise | None = None

    def __post_init__(self) -> None:
        n_rows, row_len = matrix_shape(self.shape)
        src_rows, src_len = matrix_shape(self.ref.shape)
        want_rows = src_rows if self.rows is None else len(self.rows)
        want_len = src_len if self.cols is None else len(self.cols)
        if (n_rows, row_len) != (want_rows, want_len):
            raise ValueError(
                f"{self.ref.name}: a view of shape {self.shape} cannot hold {want_rows}x{want_len}"
            )

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def n_rows(self) -> int:
        return matrix_shape(self.shape)[0]

    def row_blocks(self, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
        row_bytes = matrix_shape(self.ref.shape)[1] * 4
        per = max(1, chunk_bytes // row_bytes)
        return [(s, min(per, self.n_rows - s)) for s in range(0, self.n_rows, per)]

    def read_rows(self, start: int, rows: int) -> np.ndarray:
        """Result rows ``start:start+rows`` as a float32 matrix. Thread-safe."""
        if self.rows is None:
            block = _source_rows(self.ref, start, rows)
        else:
            block = _gather(self.ref, self.rows[start : start + rows])
        if self.cols is not None:
            block = block[:, self.cols]
        if self.fn is not None:
            block = self.fn(block)
        return np.ascontiguousarray(block, dtype=np.float32)

    def read(self) -> np.ndarray:
        return self.read_rows(0, self.n_rows).reshape(self.shape)


@dataclass(frozen=True, eq=False)
class ExpertColumns:
    """Experts stored ``[E, d_in, d_out]`` (Qwen3-VL-MoE's packed ``gate_up_proj`` / ``down_proj``)
    as the ``[E, stop - start, d_in]`` tensor llama.cpp wants: columns ``start:stop`` of each
    expert's matrix, transposed. Streamed one expert at a time (one expert's matrix in memory)."""

    ref: TensorRef
    start: int
    stop: int

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def shape(self) -> tuple[int, ...]:
        n_expert, d_in, _ = self.ref.shape
        return (n_expert, self.stop - self.start, d_in)

    @property
    def n_rows(self) -> int:
        return self.shape[0] * self.shape[1]

    def row_blocks(self, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
        per = self.shape[1]
        return [(e * per, per) for e in range(self.shape[0])]

    def read_rows(self, start: int, rows: int) -> np.ndarray:
        """Whole experts only (the blocks :meth:`row_blocks` gives). Thread-safe."""
        per, d_in = self.shape[1], self.shape[2]
        if start % per or rows % per:
            raise ValueError(f"{self.name}: reads whole experts ({per} rows each), not {start}+{rows}")
        out = []
        for e in range(start // per, (start + rows) // per):
            expert = _source_rows(self.ref, e * d_in, d_in)  # [d_in, d_out]
            out.append(expert[:, self.start : self.stop].T)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def read(self) -> np.ndarray:
        return self.read_rows(0, self.n_rows).reshape(self.shape)


def _source_rows(ref: TensorRef, start: int, rows: int) -> np.ndarray:
    """Matrix rows ``start:start+rows`` of ``ref`` (its first axis may hold several of them)."""
    n_rows, row_len = matrix_shape(ref.shape)
    return ref.read_elements(start * row_len, rows * row_len).reshape(rows, row_len)


def _gather(ref: TensorRef, index: np.ndarray) -> np.ndarray:
    """The matrix rows ``index`` of ``ref``, read as few runs of consecutive rows as possible."""
    if len(index) == 0:
        return np.empty((0, matrix_shape(ref.shape)[1]), dtype=np.float32)
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    parts = [
        _source_rows(ref, int(run[0]), len(run))
        for run in np.split(np.asarray(index, dtype=np.int64), breaks)
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def regroup(n_groups: int, per_group: int, width: int) -> np.ndarray:
    """Row order that turns heads grouped by key head (``[g0v0, g0v1, g1v0, g1v1]``) into the tiled
    order ggml broadcasts over (``[g0v0, g1v0, g0v1, g1v1]``); each head spans ``width`` rows."""
    idx = np.arange(n_groups * per_group * width).reshape(n_groups, per_group, width)
    return idx.transpose(1, 0, 2).reshape(-1)
