"""Read and validate a GGUF header fast: metadata scalars, array lengths and tensor infos.

Why not :class:`gguf.GGUFReader`: it turns every metadata array into numpy views, which takes
~6 s on a Qwen file (151,936 tokens + 151,387 merges). ``info``, ``plan``, ``quantize``, ``pull``
and the scheduler need the hyper-parameters, the *length* of the tokenizer arrays and the tensor
infos, so this reader walks the header with ``struct`` and skips array contents (one element can be
fetched on demand with :meth:`GGUFHeader.string_item`).

Why validate here: a file is checked before llama.cpp ever sees it, and every refusal is a
:class:`~edge_qwen.errors.GGUFFileError` naming the field and its byte offset, plus the way out.
The checks are the ones llama.cpp's own ``gguf_init_from_file`` makes (so a file this module
accepts is one llama.cpp will parse): every count and length against the bytes that remain, known
value and ggml types, at most 4 dims whose element count fits int64 and whose row is a whole number
of quant blocks, tensor data packed in header order at aligned offsets (no overlap, no gap), and the
data section's end within the file. Value types, the magic, the version and the quant block sizes
come from gguf-py's constants. Results are cached per (path, size, mtime).
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from .errors import GGUFFileError
from .gguf_consistency import model_problems
from .gguf_cursor import Cursor, format_error

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType
# llama.cpp's per-block hybrid flags; this gguf-py has no Keys name for them yet
RECURRENT_LAYERS: str = getattr(gguf.Keys.Attention, "RECURRENT_LAYERS", "{arch}.attention.recurrent_layers")
_MAGIC = gguf.GGUF_MAGIC.to_bytes(4, "little")  # b"GGUF"
MAX_DIMS = 4
MAX_NAME = 64  # a tensor name must be shorter than this
_INT64_MAX = (1 << 63) - 1
# The smallest encodings, to refuse a huge count before looping over it.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, one key byte, value type, a one-byte value
_MIN_TENSOR_BYTES = 8 + 1 + 4 + 4 + 8  # name length, one name byte, n_dims, type, offset

@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # GGUF order: ne[0] (row length) first
    n_bytes: int
    offset: int  # relative to the start of the tensor data

    @property
    def type_name(self) -> str:
        return QT(self.ggml_type).name


@dataclass(frozen=True)
class GGUFHeader:
    """Metadata scalars (and small numeric arrays), array lengths, and tensor infos of one GGUF."""

    path: Path
    file_size: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int]
    tensors: tuple[TensorInfo, ...]
    version: int = 3
    data_offset: int = 0  # where tensor data starts (header size, aligned)
    string_arrays: dict[str, int] = field(default_factory=dict)  # key -> offset of its first element
    alignment: int = gguf.GGUF_DEFAULT_ALIGNMENT
    value_types: dict[str, tuple[int, int | None]] = field(
        default_factory=dict
    )  # key -> (type, element type)

    def string_item(self, key: str, index: int) -> str | None:
        """Element ``index`` of a string array (e.g. a token's text), read from the file on demand."""
        start = self.string_arrays.get(key)
        if start is None or not 0 <= index < self.array_lengths.get(key, 0):
            return None
        with self.path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = Cursor(buf, self.path)
            cur.pos = start
            cur.skip_strings(index, key)
            return cur.string(f"{key}[{index}]")

    @property
    def data_end(self) -> int:
        """Byte offset just past the last tensor's data (the header's end when there are none)."""
        return max((self.data_offset + t.offset + t.n_bytes for t in self.tensors), default=self.data_offset)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get(gguf.Keys.General.ARCHITECTURE, ""))

    def arch_value(self, key_template: str) -> Any:
        """Value of an ``{arch}``-templated key from gguf.Keys (None when absent)."""
        return self.metadata.get(key_template.format(arch=self.architecture))

    def recurrent_layers(self, n_layer: int) -> tuple[bool, ...]:
        """Which of the first ``n_layer`` blocks keep a recurrent state (Gated DeltaNet hybrids), as
        llama.cpp decides: ``attention.recurrent_layers``, else every block but each
        ``full_attention_interval``-th (default 4); () for a model without SSM layers."""
        if not self.arch_value(gguf.Keys.SSM.CONV_KERNEL):
            return ()
        flags = self.arch_value(RECURRENT_LAYERS)
        if isinstance(flags, list):
            return tuple(bool(f) for f in flags[:n_layer])
        interval = int(self.arch_value(gguf.Keys.LLM.FULL_ATTENTION_INTERVAL) or 4)
        return tuple((i + 1) % interval != 0 for i in range(n_layer))


def _tensor_bytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[QT(ggml_type)]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


def _read_version(cur: Cursor) -> int:
    version = int(cur.scalar("<I", "version"))
    if version and version & 0xFFFF == 0:
        raise cur.fail(
            "version", f"{version:#x} looks byte-swapped: a big-endian GGUF on a little-endian host", 4
        )
    if not 2 <= version <= gguf.GGUF_VERSION:
        raise cur.fail("version", f"GGUF version {version} is not supported (2..{gguf.GGUF_VERSION})", 4)
    return version


def _read_count(cur: Cursor, what: str, min_bytes: int) -> int:
    start = cur.pos
    n = int(cur.scalar("<Q", what))
    if n > _INT64_MAX or n * min_bytes > cur.end - cur.pos:
        raise cur.fail(
            what, f"{n:,} entries cannot fit in the {cur.end - cur.pos:,} bytes that remain", start
        )
    return n


_KV = tuple[dict[str, Any], dict[str, int], dict[str, int], dict[str, tuple[int, int | None]], dict[str, int]]


def _read_kv(cur: Cursor, n_kv: int) -> _KV:
    """metadata, array lengths, string-array starts, value types and each key's byte offset."""
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    string_arrays: dict[str, int] = {}
    types: dict[str, tuple[int, int | None]] = {}
    key_at: dict[str, int] = {}
    for i in range(n_kv):
        start = cur.pos
        key = cur.string(f"key of metadata entry {i}")
        if not key:
            raise cur.fail(f"key of metadata entry {i}", "the key is empty", start)
        if key in types:
            raise cur.fail(key, "the key appears twice", start)
        key_at[key] = start
        vtype = cur.value_type(f"value type of {key}")
        etype = (
            struct.unpack_from("<I", cur.buf, cur.pos)[0]
            if vtype == VT.ARRAY and cur.end - cur.pos >= 4
            else None
        )
        types[key] = (vtype, etype)
        if etype == VT.STRING:
            string_arrays[key] = cur.pos + 12  # after the element type and the count
        value, length = cur.value(vtype, key)
        if value is not None:
            metadata[key] = value
        if length is not None:
            lengths[key] = length
    return metadata, lengths, string_arrays, types, key_at


def _alignment(
    cur: Cursor, metadata: dict[str, Any], types: dict[str, tuple[int, int | None]], at: int
) -> int:
    key = gguf.Keys.General.ALIGNMENT
    if key not in types:
        return gguf.GGUF_DEFAULT_ALIGNMENT
    align = metadata.get(key)
    if types[key][0] != VT.UINT32 or not isinstance(align, int):
        raise cur.fail(key, f"must be a uint32 but has type {VT(types[key][0]).name}", at)
    if align <= 0 or align & (align - 1):
        raise cur.fail(key, f"alignment {align} is not a power of 2", at)
    return align


def _read_tensor(cur: Cursor, index: int, seen: set[str]) -> TensorInfo:
    start = cur.pos
    name = cur.string(f"name of tensor {index}")
    if len(name.encode("utf-8", "replace")) >= MAX_NAME:
        raise cur.fail(
            f"name of tensor {index}", f"{len(name)} characters; llama.cpp allows {MAX_NAME - 1}", start
        )
    if name in seen:
        raise cur.fail(f"tensor {name}", "the name appears twice", start)
    seen.add(name)
    dims_at = cur.pos
    n_dims = cur.scalar("<I", f"dimension count of {name}")
    if n_dims > MAX_DIMS:
        raise cur.fail(
            f"dimension count of {name}", f"{n_dims} dims; ggml allows at most {MAX_DIMS}", dims_at
        )
    shape_at = cur.pos
    shape = tuple(int(cur.scalar("<Q", f"shape of {name}")) for _ in range(n_dims))
    n = 1
    for d in shape:
        if d > _INT64_MAX:
            raise cur.fail(f"shape of {name}", f"dimension {d:,} is negative as int64", shape_at)
        n *= d
        if n > _INT64_MAX:
            raise cur.fail(f"shape of {name}", f"{shape} has more elements than int64 can count", shape_at)
    type_at = cur.pos
    ggml_type = int(cur.scalar("<I", f"type of {name}"))
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[QT(ggml_type)]
    except (ValueError, KeyError):
        raise cur.fail(f"type of {name}", f"unknown ggml type {ggml_type}", type_at) from None
    row = shape[0] if shape else 1
    if row % block:
        raise cur.fail(
            f"shape of {name}",
            f"row of {row} elements is not a whole number of {QT(ggml_type).name} blocks ({block})",
            shape_at,
        )
    offset = int(cur.scalar("<Q", f"data offset of {name}"))
    return TensorInfo(name, ggml_type, shape, n // block * type_size, offset)


def _check_layout(
    cur: Cursor, tensors: list[TensorInfo], offsets_at: list[int], data_offset: int, align: int
) -> None:
    """llama.cpp wants tensor data packed in header order, each tensor at an aligned offset."""
    expected = 0
    for t, at in zip(tensors, offsets_at, strict=True):
        what = f"data offset of {t.name}"
        if t.offset % align:
            raise cur.fail(what, f"{t.offset:,} is not a multiple of the alignment ({align})", at)
        if t.offset < expected:
            raise cur.fail(
                what, f"{t.offset:,} overlaps the previous tensor's data, which ends at {expected:,}", at
            )
        if t.offset > expected:
            raise cur.fail(
                what, f"{t.offset:,} leaves a gap after the previous tensor (expected {expected:,})", at
            )
        end = data_offset + t.offset + t.n_bytes
        if end > cur.end:
            raise cur.fail(
                f"data of {t.name}",
                f"ends at byte {end:,} but the file has {cur.end:,} bytes (truncated)",
                data_offset + t.offset,
            )
        expected += -(-t.n_bytes // align) * align


def parse_header(buf: mmap.mmap | bytes, path: Path) -> GGUFHeader:
    """Parse and validate the header held in ``buf`` (the whole file); raise GGUFFileError."""
    cur = Cursor(buf, path)
    cur.need(4, "magic")
    if bytes(buf[:4]) != _MAGIC:
        raise cur.fail("magic", f"{bytes(buf[:4])!r} is not {_MAGIC!r}: this is not a GGUF file", 0)
    cur.pos = 4
    version = _read_version(cur)
    n_tensors = _read_count(cur, "tensor count", _MIN_TENSOR_BYTES)
    n_kv = _read_count(cur, "metadata entry count", _MIN_KV_BYTES)
    metadata, lengths, string_arrays, types, key_at = _read_kv(cur, n_kv)
    align = _alignment(cur, metadata, types, key_at.get(gguf.Keys.General.ALIGNMENT, 24))
    tensors: list[TensorInfo] = []
    offsets_at: list[int] = []
    tensor_at: dict[str, int] = {}
    seen: set[str] = set()
    for i in range(n_tensors):
        start = cur.pos
        tensors.append(_read_tensor(cur, i, seen))
        tensor_at[tensors[-1].name] = start
        offsets_at.append(cur.pos - 8)
    data_offset = -(-cur.pos // align) * align
    if tensors and data_offset > cur.end:
        raise cur.fail("tensor data", f"starts at {data_offset:,}, past the end of the file", cur.pos)
    _check_layout(cur, tensors, offsets_at, data_offset, align)
    header = GGUFHeader(
        path, cur.end, metadata, lengths, tuple(tensors), version, data_offset, string_arrays, align, types
    )
    for what, problem, where in model_problems(header)[:1]:
        raise cur.fail(
            what, f"{problem} (llama.cpp would refuse to load it)", key_at.get(where, tensor_at.get(where, 0))
        )
    return header


@functools.lru_cache(maxsize=32)
def _read_cached(path: str, size: int, mtime_ns: int) -> GGUFHeader:
    p = Path(path)
    if size == 0:
        raise format_error(p, "magic", 0, "the file is empty")
    with p.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return parse_header(buf, p)


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be a GGUF file, in words that name the way out (None: it is a file)."""
    p = Path(path).expanduser()
    if p.is_file():
        return None
    if p.is_dir():
        inside = sorted(f.name for f in p.glob("*.gguf"))[:4]
        if inside:
            return f"{path} is a folder, not a .gguf file; pass one of the files in it: {', '.join(inside)}"
        if (p / "config.json").is_file():
            return (
                f"{path} is a folder (a Hugging Face checkpoint?), not a .gguf file; convert it first: "
                f"edge-qwen convert {path} -o OUTDIR"
            )
        return f"{path} is a folder, not a .gguf file; pass the path of a .gguf model file"
    if p.exists():
        return f"{path} is not a regular file; pass the path of a .gguf model file"
    return f"{path} does not exist; pass the path of a .gguf model file or a registry name (edge-qwen models)"


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """The validated header of a GGUF (cached while the file is unchanged).

    Raises:
        GGUFFileError: the path is missing or not a file.
        GGUFFileError: the header is corrupt, truncated, or not what llama.cpp accepts; the
            message names the field, its byte offset and the way out.
    """
    p = Path(path).resolve()
    if (problem := path_problem(p)) is not None:
        raise GGUFFileError(problem.replace(str(p), str(path), 1))
    st = p.stat()
    try:
        return _read_cached(str(p), st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise GGUFFileError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None


def check_gguf_file(path: str | os.PathLike[str]) -> Path:
    """The path, once its header is known to be valid (:func:`read_header`): fail here with a clear
    message rather than later inside llama.cpp with an obscure one."""
    p = Path(path)
    if (problem := path_problem(p)) is not None:
        raise GGUFFileError(problem)
    with p.open("rb") as fh:
        magic = fh.read(4)
    if magic != _MAGIC:
        raise format_error(
            p,
            "magic",
            0,
            f"it starts with {magic!r}, not {_MAGIC!r}",
            "Pass a .gguf model file, or convert a Hugging Face checkpoint with `edge-qwen convert`.",
        )
    read_header(p)
    return p
