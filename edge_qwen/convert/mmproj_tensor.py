"""One tensor of a projector (mmproj) GGUF, planned from checkpoint rows and written in its type:
shared by the vision (:mod:`.mmproj`) and audio (:mod:`.audio`) towers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

import gguf
import numpy as np

from ..errors import CheckpointError
from ._io import ordered_map
from .safetensors import TensorRef

Q = gguf.GGMLQuantizationType
T = gguf.MODEL_TENSOR
# --mmproj-type -> (type of 2-D weights, GGUF file type)
MMPROJ_TYPES: dict[str, tuple[Q, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
_STORAGE: dict[Q, np.dtype] = {
    Q.F32: np.dtype(np.float32),
    Q.F16: np.dtype(np.float16),
    Q.Q8_0: np.dtype(np.uint8),
}


@dataclass
class MmprojTensor:
    """One mmproj tensor: rows ``[start, stop)`` of a checkpoint tensor, optionally sliced further.

    Duck-types the ndarray attributes ``GGUFWriter.add_tensor`` reads, like ``PlannedTensor``.
    """

    name: str
    logical_shape: tuple[int, ...]
    ref: TensorRef
    rows: tuple[int, int]
    ggml_type: Q
    take: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE[self.ggml_type]

    @property
    def shape(self) -> tuple[int, ...]:
        """Storage shape: Q8_0 rows are bytes (gguf-py turns them back into the logical shape)."""
        if self.ggml_type == Q.Q8_0:
            block, size = gguf.GGML_QUANT_SIZES[Q.Q8_0]
            return (*self.logical_shape[:-1], self.logical_shape[-1] // block * size)
        return self.logical_shape

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def tofile(self, fout: IO[bytes]) -> None:
        start, stop = self.rows
        jobs = [(start + a, n) for a, n in self.ref.row_blocks() if start + a < stop]
        jobs = [(a, min(n, stop - a)) for a, n in jobs]
        for block in ordered_map(self._encoded, jobs):
            fout.write(block.data)

    def _encoded(self, job: tuple[int, int]) -> np.ndarray:
        block = self.ref.read_rows(*job)
        if self.take is not None:
            block = self.take(block)
        if self.ggml_type == Q.Q8_0:
            return np.ascontiguousarray(gguf.quants.quantize(block.reshape(block.shape[0], -1), Q.Q8_0))
        return np.ascontiguousarray(block.astype(self.dtype, copy=False))


def tensor_shape(
    ref: TensorRef, rows: tuple[int, int], take: Callable[[np.ndarray], np.ndarray] | None
) -> tuple[int, ...]:
    """The logical shape of rows ``[start, stop)`` of ``ref`` after ``take``."""
    shape = (rows[1] - rows[0], *ref.shape[1:])
    if take is not None:
        shape = take(np.empty((1, *shape[1:]), dtype=np.float32)).shape
        shape = (rows[1] - rows[0], *shape[1:])
    return tuple(int(d) for d in shape)


def mmproj_ggml_type(kind: gguf.MODEL_TENSOR, shape: tuple[int, ...], mmproj_type: str) -> Q:
    """Norms, biases, position tables F32; conv kernels F16 at most (ggml's convolutions, Whisper's
    conv1d always F16 as llama.cpp writes it); matrices as asked."""
    if len(shape) <= 1 or shape[-1] == 1 or kind in (T.A_ENC_EMBD_POS, T.V_ENC_EMBD_POS):
        return Q.F32  # position tables too (clip resizes Qwen3-VL's; llama.cpp writes them F32)
    want = MMPROJ_TYPES[mmproj_type][0]
    if kind == T.A_ENC_CONV1D:
        return Q.F16
    if kind == T.V_ENC_EMBD_PATCH:
        return Q.F32 if want == Q.F32 else Q.F16
    if want == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16  # rows not a whole number of Q8_0 blocks
    return want


def block_names(kinds: Iterable[gguf.MODEL_TENSOR], blocks: Iterable[int]) -> list[str]:
    """``<kind>.weight`` names of every block, for a completeness check."""
    chosen = list(blocks)
    return [gguf.TENSOR_NAMES[k].format(bid=b) + ".weight" for k in kinds for b in chosen]


def require_tensors(planned: list[MmprojTensor], need: list[str], tower: str) -> None:
    """Every name in ``need`` is planned, or the checkpoint is incomplete.

    Raises:
        CheckpointError: naming the first missing ones.
    """
    names = {p.name for p in planned}
    missing = [n for n in need if n not in names]
    if missing:
        raise CheckpointError(
            f"checkpoint lacks the {tower} tensors that become {missing[:4]}; it is incomplete"
        )
