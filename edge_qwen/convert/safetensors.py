"""Read safetensors files without torch, validating the header before trusting it.

Tensors are never loaded whole: :meth:`TensorRef.read_rows` reads row blocks with
``os.pread`` into small buffers, so converting a multi-GB checkpoint keeps resident memory to a
few tens of MB (memory-mapping would leave every touched page counted in the process RSS).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeGuard

import numpy as np

from ..errors import CheckpointError, SafetensorsError
from .config_bounds import read_object

# safetensors dtype -> (numpy storage dtype, bytes per element). BF16 is stored as raw uint16.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "BF16": (np.dtype("<u2"), 2),
    "F16": (np.dtype("<f2"), 2),
    "F32": (np.dtype("<f4"), 4),
}
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit
MAX_DIMS = 8  # the most a checkpoint tensor has is 5 (a Qwen-VL patch embedding)
CHUNK_BYTES = 8 * 2**20  # small blocks keep peak memory low; larger ones are no faster


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live; nothing is read until asked."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in ``file``
    nbytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def row_blocks(self, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
        """(first row, row count) of consecutive blocks of about ``chunk_bytes`` each."""
        rows_per_chunk = max(1, chunk_bytes // max(self.nbytes // max(self.n_rows, 1), 1))
        return [
            (start, min(rows_per_chunk, self.n_rows - start))
            for start in range(0, self.n_rows, rows_per_chunk)
        ]

    def read_rows(self, start: int, rows: int) -> np.ndarray:
        """Rows ``start:start+rows`` as float32, shape (rows, *shape[1:]). Thread-safe (pread)."""
        per_row = int(np.prod(self.shape[1:], dtype=np.int64))
        return self.read_elements(start * per_row, rows * per_row).reshape((rows, *self.shape[1:]))

    def read_elements(self, first: int, count: int) -> np.ndarray:
        """Elements ``first:first+count`` of the flattened tensor as float32. Thread-safe (pread)."""
        storage, size = DTYPES[self.dtype]
        if first < 0 or first + count > self.nbytes // size:
            raise ValueError(f"{self.name}: elements {first}..{first + count} outside the tensor")
        fd = os.open(self.file, os.O_RDONLY)
        try:
            raw = os.pread(fd, count * size, self.offset + first * size)
        finally:
            os.close(fd)
        if len(raw) != count * size:
            raise SafetensorsError(
                f"{self.file}: tensor {self.name!r} is cut short; the file is truncated. Download it again."
            )
        return to_float32(np.frombuffer(raw, dtype=storage), self.dtype)

    def read(self) -> np.ndarray:
        """The whole tensor as float32 (only for small tensors and tests)."""
        return self.read_rows(0, self.n_rows).reshape(self.shape)


def to_float32(block: np.ndarray, dtype: str) -> np.ndarray:
    """Exact widening of BF16/F16/F32 storage to float32."""
    if dtype == "BF16":
        return np.left_shift(block, 16, dtype=np.uint32).view(np.float32)
    return block.astype(np.float32, copy=False)


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate one safetensors file's header.

    Raises:
        SafetensorsError: bad header length, invalid JSON, unknown dtype, offsets outside the
            file, sizes that do not match shape × dtype, or overlapping tensors.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise SafetensorsError(f"{path}: only {size} bytes, not a safetensors file; download it again")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise SafetensorsError(
                f"{path}: header claims {header_len} bytes but the file has {size}; "
                "the file is truncated or not safetensors. Download it again."
            )
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, or a 5000-digit number
            raise SafetensorsError(f"{path}: header is not valid JSON ({exc}); download it again") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(
            f"{path}: header is a JSON {type(header).__name__}, not an object of tensors; the file is "
            "corrupt or not safetensors. Download it again."
        )
    data_start, data_len = 8 + header_len, size - 8 - header_len
    refs = {
        name: _tensor_ref(path, name, info, data_start, data_len)
        for name, info in header.items()
        if name != "__metadata__"
    }
    _check_no_overlap(path, refs.values())
    return refs


def _tensor_ref(path: Path, name: str, info: object, data_start: int, data_len: int) -> TensorRef:
    if not isinstance(info, dict):
        raise SafetensorsError(
            f"{path}: tensor {name!r} has header entry {str(info)[:40]!r}, not an object with dtype, "
            "shape and data_offsets; the file is corrupt. Download it again."
        )
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SafetensorsError(
            f"{path}: tensor {name!r} has dtype {dtype!r}; edge-qwen reads {', '.join(DTYPES)} checkpoints"
        )
    if not (_naturals(shape) and len(shape) <= MAX_DIMS and _naturals(offsets) and len(offsets) == 2):
        raise SafetensorsError(
            f"{path}: tensor {name!r} has shape {str(shape)[:40]} and data_offsets {str(offsets)[:40]}; "
            f"they must list at most {MAX_DIMS} sizes and two offsets, all whole numbers. The file is "
            "corrupt; download it again."
        )
    begin, end = offsets
    expected = math.prod(shape) * DTYPES[dtype][1]  # Python ints: a hostile shape cannot overflow
    if not 0 <= begin <= end:
        raise SafetensorsError(f"{path}: tensor {name!r} has invalid offsets {offsets}")
    if end > data_len:
        raise SafetensorsError(
            f"{path}: tensor {name!r} ends at byte {end} of the data section but the file holds "
            f"{data_len}; the file is truncated. Download it again."
        )
    if end - begin != expected:
        raise SafetensorsError(
            f"{path}: tensor {name!r} spans {end - begin} bytes but shape {shape} × {dtype} needs {expected}"
        )
    return TensorRef(name, path, dtype, tuple(shape), data_start + begin, end - begin)


def _naturals(value: object) -> TypeGuard[list[int]]:
    """A JSON list of non-negative integers (``true`` is not one)."""
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _check_no_overlap(path: Path, refs) -> None:
    previous: TensorRef | None = None
    for ref in sorted(refs, key=lambda r: r.offset):
        if previous is not None and ref.offset < previous.offset + previous.nbytes:
            raise SafetensorsError(
                f"{path}: tensors {previous.name!r} and {ref.name!r} overlap; file is corrupt"
            )
        previous = ref


def open_checkpoint(folder: Path) -> dict[str, TensorRef]:
    """All tensors of a checkpoint: ``model.safetensors`` or the shards named by its index.

    Raises:
        CheckpointError: no weights, a shard named by the index is missing, or the index names
            a tensor its shard does not contain.
    """
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = _weight_map(index_file)
        refs: dict[str, TensorRef] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise CheckpointError(
                    f"{folder}: shard {shard} named in model.safetensors.index.json is missing; "
                    "download the complete checkpoint"
                )
            refs.update(read_header(folder / shard))
        missing = sorted(set(weight_map) - set(refs))
        if missing:
            raise CheckpointError(f"{folder}: index lists tensors no shard holds, e.g. {missing[:3]}")
        return refs
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{folder}: no *.safetensors weights found; edge-qwen converts safetensors checkpoints "
            "(convert .bin/.pt checkpoints to safetensors first)"
        )
    refs = {}
    for file in files:
        refs.update(read_header(file))
    return refs


def _weight_map(index_file: Path) -> dict[str, str]:
    """The index's ``weight_map``: tensor name -> shard file, each a path inside the folder.

    Raises:
        CheckpointError: the index is not a JSON object, has no ``weight_map`` object of strings,
            or names a shard outside the checkpoint folder.
    """
    weight_map = read_object(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{index_file}: no weight_map object (tensor name -> shard file); the index is corrupt. "
            "Download it again, or delete it to read every *.safetensors in the folder."
        )
    for shard in set(weight_map.values()):
        if not shard or PurePosixPath(shard).is_absolute() or ".." in PurePosixPath(shard).parts:
            raise CheckpointError(
                f"{index_file}: weight_map names shard {shard!r}, which is not a file inside the "
                "checkpoint folder; the index is corrupt or hostile"
            )
    return weight_map
