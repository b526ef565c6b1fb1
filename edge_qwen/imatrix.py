"""The importance matrix of a model, computed in-process through llama.cpp (no ``llama-imatrix``).

For every weight matrix a quantizer rounds, the importance matrix holds the mean of ``x_j²`` over
calibration tokens for each input column ``j``: how much that column's rounding error matters to
the output. llama.cpp's quantizer weighs its rounding by it (``llama_model_quantize_params.imatrix``),
which makes the small types (Q4_0, Q3_K, IQ4) markedly better at the same size.

How it is collected: the calibration text is evaluated in chunks of ``chunk_size`` tokens (each on
an empty cache) with a ``cb_eval`` callback on the context. llama.cpp asks the callback about every
graph node; it says yes to the matrix products whose weight is a model tensor (``blk.*``), and when
one has run it reads the activations that entered it (``src[1]``, host memory on the CPU backend)
as a numpy view and adds their squares. Experts (``MUL_MAT_ID``) keep one row per expert, counted
by the tokens routed to it, as llama.cpp's own tool does.

The result is written beside the model as ``<model>.imatrix.gguf`` in llama.cpp's own format
(``<name>.in_sum2`` and ``<name>.counts`` tensors, ``imatrix.*`` keys), so ``llama-quantize
--imatrix`` reads it too, plus the sha256 of the model and of the calibration text; a later call
with both unchanged reuses it instead of recomputing.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np

from ._atomic import atomic_path
from ._data import data_path
from ._llama import capture_log, physical_cores
from .errors import GGUFFileError, ModelLoadError
from .gguf_header import check_gguf_file
from .logits import fill_batch, loaded_model, measuring_context, token_batch

SUFFIX = ".imatrix.gguf"
CHUNK = 512
CALIBRATION = "imatrix_calibration.txt"
_KEY_MODEL, _KEY_TEXT = "edge_qwen.imatrix.model_sha256", "edge_qwen.imatrix.calibration_sha256"
_GGML_OP_MUL_MAT, _GGML_OP_MUL_MAT_ID = 29, 30  # enum ggml_op in this llama.cpp's ggml.h (checked)
_F32 = 0


class _Tensor(ctypes.Structure):
    """``struct ggml_tensor`` of ggml.h (checked against ``ggml_tensor_overhead`` before use)."""


_Tensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * 4),
    ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_Tensor) * 10),
    ("view_src", ctypes.POINTER(_Tensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


@dataclass
class Imatrix:
    """Sums of squared activations per weight (``[n_mat, n_in]``: one row per expert) and the
    number of tokens each row saw."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    chunks: int = 0
    chunk_size: int = CHUNK
    dataset: str = CALIBRATION

    def means(self, name: str) -> np.ndarray:
        """What llama.cpp's quantizer takes: the mean per column, rows flattened (float32); a row
        that saw no token is all ones (no preference), as llama-quantize does."""
        sums, counts = self.sums[name], self.counts[name]
        out = np.ones_like(sums, dtype=np.float32)
        seen = counts > 0
        out[seen] = (sums[seen] / counts[seen, None]).astype(np.float32)
        return out.ravel()

    def add(self, name: str, rows: np.ndarray | None, squares: np.ndarray, n_mat: int) -> None:
        """Add ``squares[k]`` (one input vector squared) to row ``rows[k]`` of weight ``name``
        (``rows=None``: a plain matrix, every vector to its one row)."""
        if name not in self.sums:
            self.sums[name] = np.zeros((n_mat, squares.shape[-1]), dtype=np.float64)
            self.counts[name] = np.zeros(n_mat, dtype=np.int64)
        if rows is None:
            self.sums[name][0] += squares.sum(axis=0)
            self.counts[name][0] += len(squares)
            return
        order = np.argsort(rows, kind="stable")
        present, starts = np.unique(rows[order], return_index=True)
        self.sums[name][present] += np.add.reduceat(squares[order], starts, axis=0)
        self.counts[name] += np.bincount(rows, minlength=n_mat)

    def quantizer_input(self) -> dict[str, np.ndarray]:
        """{weight name: :meth:`means`}, what :func:`edge_qwen.quantize.quantize` takes."""
        return {name: self.means(name) for name in sorted(self.sums)}


def calibration_text() -> str:
    """The shipped calibration text: multilingual prose and code, not the quality report's text."""
    return data_path(CALIBRATION).read_text(encoding="utf-8")


def imatrix_path(model: str | os.PathLike[str]) -> Path:
    path = Path(model)
    return path.with_name(path.name.removesuffix(".gguf") + SUFFIX)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def compute_imatrix(
    model: str | os.PathLike[str],
    text: str | None = None,
    *,
    chunk_size: int = CHUNK,
    max_chunks: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Imatrix:
    """The importance matrix of ``model`` (an F16/BF16/F32 GGUF) over ``text`` (default: the
    shipped calibration text), ``chunk_size`` tokens per chunk."""
    path = check_gguf_file(model)
    _check_layout()
    result = Imatrix(chunk_size=chunk_size, dataset=CALIBRATION if text is None else "custom")
    text = calibration_text() if text is None else text
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(capture_log())
        native = stack.enter_context(loaded_model(path, log))
        vocab = llama_cpp.llama_model_get_vocab(native)
        tokens = _tokenize(vocab, text)
        n_chunks = len(tokens) // chunk_size
        if max_chunks is not None:
            n_chunks = min(n_chunks, max_chunks)
        if n_chunks == 0:
            raise ValueError(
                f"the calibration text has {len(tokens)} tokens, fewer than one chunk of {chunk_size}; "
                "give a longer text or a smaller chunk_size"
            )
        callback = llama_cpp.ggml_backend_sched_eval_callback(_collector(result))
        ctx = stack.enter_context(
            measuring_context(
                native, log, n_ctx=chunk_size, n_batch=chunk_size,
                threads=threads or physical_cores(), cb_eval=callback,
            )
        )  # fmt: skip
        batch = stack.enter_context(token_batch(chunk_size))
        memory = llama_cpp.llama_get_memory(ctx)
        for i in range(n_chunks):
            llama_cpp.llama_memory_clear(memory, True)
            fill_batch(batch, tokens[i * chunk_size : (i + 1) * chunk_size], 0)  # every row: the last
            # layer then runs on all tokens (with one output it would skip the rest)
            status = llama_cpp.llama_decode(ctx, batch)
            if status != 0:
                raise ModelLoadError(f"llama_decode failed with status {status} on calibration chunk {i}")
            result.chunks += 1
            if progress is not None:
                progress(i + 1, n_chunks)
    if not result.sums:
        raise ModelLoadError(
            f"{path.name}: no matrix product of a model weight was seen; is it a language model?"
        )
    return result


def _tokenize(vocab: Any, text: str) -> list[int]:
    raw = text.encode("utf-8")
    n = len(raw) + 16
    buf = (llama_cpp.llama_token * n)()
    count = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, n, False, False)
    return list(buf[:count])


def _check_layout() -> None:
    """The struct and enum values read here are this llama.cpp's; refuse another one."""
    from llama_cpp import _ggml

    lib = _ggml.libggml
    lib.ggml_tensor_overhead.argtypes, lib.ggml_tensor_overhead.restype = [], ctypes.c_size_t
    lib.ggml_op_name.argtypes, lib.ggml_op_name.restype = [ctypes.c_int], ctypes.c_char_p
    same = (
        lib.ggml_tensor_overhead() == ctypes.sizeof(_Tensor) + 32  # + sizeof(struct ggml_object)
        and lib.ggml_op_name(_GGML_OP_MUL_MAT) == b"MUL_MAT"
        and lib.ggml_op_name(_GGML_OP_MUL_MAT_ID) == b"MUL_MAT_ID"
    )
    if not same:
        raise ModelLoadError(
            "this llama.cpp's ggml_tensor layout is not the one edge-qwen reads; install the "
            "llama-cpp-python version pinned in pyproject.toml"
        )


def _name(tensor: _Tensor) -> str:
    """A weight's name without the ``#…#`` decoration some graphs add (as llama-imatrix does)."""
    name = tensor.name.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


def _view(t: _Tensor, dtype: type[np.generic]) -> np.ndarray:
    """A numpy view of a host tensor, axes reversed to numpy order (``ne[3], …, ne[0]``)."""
    shape = tuple(int(t.ne[i]) for i in range(3, -1, -1))
    strides = tuple(int(t.nb[i]) for i in range(3, -1, -1))
    span = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + np.dtype(dtype).itemsize
    buffer = memoryview((ctypes.c_char * span).from_address(int(t.data))).cast("B")
    return np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides)


def _collector(result: Imatrix) -> Callable[[Any, bool, Any], bool]:
    def collect(pointer: Any, ask: bool, _user: Any) -> bool:
        t = ctypes.cast(pointer, ctypes.POINTER(_Tensor)).contents
        if t.op not in (_GGML_OP_MUL_MAT, _GGML_OP_MUL_MAT_ID) or not t.src[0] or not t.src[1]:
            return False
        weight, x = t.src[0].contents, t.src[1].contents
        name = _name(weight)
        if not name.startswith("blk.") or x.type != _F32 or x.nb[0] != 4:
            return False
        if t.op == _GGML_OP_MUL_MAT and x.ne[1] < 16:  # small batches (llama-imatrix skips them too)
            return False
        if ask:
            return True
        acts = _view(x, np.float32).astype(np.float64)
        if t.op == _GGML_OP_MUL_MAT_ID:
            ids = _view(t.src[2].contents, np.int32)[0, 0]  # [n_tokens, n_used]
            n_used = ids.shape[1]
            picked = acts[0]  # [n_tokens, n_in_rows, n_in]; a row per used expert, or one shared
            if picked.shape[1] != n_used:
                picked = np.broadcast_to(picked[:, :1], (picked.shape[0], n_used, picked.shape[2]))
            squares = np.square(picked).reshape(-1, picked.shape[-1])
            result.add(name, ids.reshape(-1).astype(np.int64), squares, int(weight.ne[2]))
        else:
            n_mat = int(weight.ne[2] * weight.ne[3])
            flat = np.square(acts).reshape(-1, acts.shape[-1])
            result.add(name, None if n_mat == 1 else _mat_rows(acts.shape, weight), flat, n_mat)
        return True

    return collect


def _mat_rows(shape: tuple[int, ...], weight: _Tensor) -> np.ndarray:
    """For a 3-D/4-D weight: which of its matrices each activation row goes through."""
    n3, n2, n1 = shape[0], shape[1], shape[2]
    i3, i2 = np.meshgrid(np.arange(n3), np.arange(n2), indexing="ij")
    mat = (i3 % weight.ne[3]) * weight.ne[2] + (i2 % weight.ne[2])
    return np.repeat(mat.reshape(-1), n1).astype(np.int64)


# --- the file ----------------------------------------------------------------------------------


def save_imatrix(
    result: Imatrix, path: str | os.PathLike[str], *, model_sha256: str, text_sha256: str
) -> Path:
    """Write ``result`` in llama.cpp's imatrix GGUF format, atomically."""
    final = Path(path)
    with atomic_path(final) as tmp:
        writer = gguf.GGUFWriter(tmp, arch="imatrix")  # arch is only a required field of gguf-py
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array("imatrix.datasets", [result.dataset])
        writer.add_uint32("imatrix.chunk_count", result.chunks)
        writer.add_uint32("imatrix.chunk_size", result.chunk_size)
        writer.add_string(_KEY_MODEL, model_sha256)
        writer.add_string(_KEY_TEXT, text_sha256)
        for name in sorted(result.sums):
            writer.add_tensor(f"{name}.in_sum2", result.sums[name].astype(np.float32))
            writer.add_tensor(f"{name}.counts", result.counts[name].astype(np.float32).reshape(-1, 1))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return final


def load_imatrix(path: str | os.PathLike[str]) -> tuple[Imatrix, dict[str, str]]:
    """An imatrix GGUF (ours or llama-imatrix's) and its edge-qwen keys (model and text sha256)."""
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise GGUFFileError(f"{path}: not a readable imatrix GGUF ({exc}); delete it to recompute") from exc
    result = Imatrix()
    keys: dict[str, str] = {}
    for key in (_KEY_MODEL, _KEY_TEXT):
        f = reader.get_field(key)
        if f is not None:
            keys[key] = str(f.contents())
    datasets = reader.get_field("imatrix.datasets")
    if datasets is not None and datasets.contents():
        result.dataset = str(datasets.contents()[0])
    for key, attr in (("imatrix.chunk_count", "chunks"), ("imatrix.chunk_size", "chunk_size")):
        f = reader.get_field(key)
        if f is not None:
            setattr(result, attr, int(f.contents()))
    tensors = {t.name: t for t in reader.tensors}
    for tname, tensor in tensors.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = tname.removesuffix(".in_sum2")
        counts = tensors.get(f"{name}.counts")
        if counts is None:
            raise GGUFFileError(f"{path}: {name} has sums but no counts; delete it to recompute")
        n_mat = int(np.asarray(counts.data).size)
        result.sums[name] = np.asarray(tensor.data, dtype=np.float64).reshape(n_mat, -1)
        result.counts[name] = np.asarray(counts.data).reshape(-1).astype(np.int64)
    return result, keys


def ensure_imatrix(
    model: str | os.PathLike[str], *, progress: Callable[[int, int], None] | None = None, **options: Any
) -> tuple[Path, Imatrix, bool]:
    """The imatrix beside ``model`` for the shipped calibration text: reused when it was computed
    from this very file and text, else computed and written. Returns (path, imatrix, reused)."""
    path = check_gguf_file(model)
    target = imatrix_path(path)
    model_sha = _sha256(path)
    text_sha = hashlib.sha256(calibration_text().encode("utf-8")).hexdigest()
    if target.is_file():
        with contextlib.suppress(GGUFFileError):
            cached, keys = load_imatrix(target)
            if keys.get(_KEY_MODEL) == model_sha and keys.get(_KEY_TEXT) == text_sha:
                return target, cached, True
    result = compute_imatrix(path, progress=progress, **options)
    save_imatrix(result, target, model_sha256=model_sha, text_sha256=text_sha)
    return target, result, False
