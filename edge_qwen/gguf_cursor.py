"""Bounded little-endian reads of a GGUF header: every read is checked against the end of the
buffer and llama.cpp's own limits, and a failure names the field, its byte offset and the way out
(:func:`format_error`). The header's structure is :mod:`edge_qwen.gguf_header`'s job."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import gguf

from .errors import GGUFFileError

VT = gguf.GGUFValueType
# scalar value type -> struct format (little-endian GGUF)
_SCALAR: dict[int, str] = {
    VT.UINT8: "<B",
    VT.INT8: "<b",
    VT.UINT16: "<H",
    VT.INT16: "<h",
    VT.UINT32: "<I",
    VT.INT32: "<i",
    VT.FLOAT32: "<f",
    VT.BOOL: "<?",
    VT.UINT64: "<Q",
    VT.INT64: "<q",
    VT.FLOAT64: "<d",
}
_KEEP_ARRAY_MAX = 4096  # numeric arrays up to this length are kept (per-layer head counts etc.)
# Limits of llama.cpp's reader (ggml/src/gguf.cpp, ggml/include/ggml.h); gguf-py has no names for them.
MAX_STRING_LENGTH = 1 << 30
MAX_ARRAY_ELEMENTS = 1 << 30

WAY_OUT = (
    "Re-download it (for a registry model: `edge-qwen pull --verify NAME` checks the cached copy and "
    "`edge-qwen pull --force NAME` fetches it again) or re-convert it with `edge-qwen convert`."
)


def format_error(path: Path, what: str, offset: int, problem: str, way_out: str = WAY_OUT) -> GGUFFileError:
    """``<path> is truncated or corrupt: <field> at byte <offset>: <problem>. <way out>``."""
    kind = "is not a GGUF file" if what == "magic" else "is truncated or corrupt"
    return GGUFFileError(f"{path} {kind}: {what} at byte {offset:,}: {problem}. {way_out}")



class Cursor:
    """Reads little-endian values from a buffer, refusing any read past its end."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.path = path
        self.pos = 0
        self.end = len(buf)

    def fail(self, what: str, problem: str, offset: int | None = None) -> GGUFFileError:
        return format_error(self.path, what, self.pos if offset is None else offset, problem)

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise self.fail(what, f"needs {n:,} bytes but only {self.end - self.pos:,} remain in the file")

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        start = self.pos
        n = self.scalar("<Q", f"length of {what}")
        if n > MAX_STRING_LENGTH:
            raise self.fail(
                what, f"string length {n:,} exceeds llama.cpp's limit of {MAX_STRING_LENGTH:,}", start
            )
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", "replace")

    def skip_strings(self, count: int, what: str) -> None:
        buf, pos, end, unpack = self.buf, self.pos, self.end, struct.unpack_from
        for i in range(count):
            if end - pos < 8:
                self.pos = pos
                raise self.fail(f"{what}[{i}]", "the string's length is cut off by the end of the file")
            n = unpack("<Q", buf, pos)[0]
            if n > MAX_STRING_LENGTH or n > end - pos - 8:
                self.pos = pos
                raise self.fail(f"{what}[{i}]", f"string length {n:,} runs past the end of the file")
            pos += 8 + n
        self.pos = pos

    def value_type(self, what: str) -> int:
        start = self.pos
        vtype = self.scalar("<I", what)
        if vtype not in _SCALAR and vtype not in (VT.STRING, VT.ARRAY):
            raise self.fail(what, f"unknown GGUF value type {vtype}", start)
        return int(vtype)

    def value(self, vtype: int, key: str) -> tuple[Any, int | None]:
        """(value, array length) — arrays of strings/large arrays come back as None with their length."""
        if vtype == VT.STRING:
            return self.string(key), None
        if vtype != VT.ARRAY:
            return self.scalar(_SCALAR[vtype], key), None
        etype = self.value_type(f"element type of {key}")
        count_at = self.pos
        count = self.scalar("<Q", f"element count of {key}")
        if etype == VT.ARRAY:
            raise self.fail(key, "arrays of arrays are not supported by llama.cpp", count_at - 4)
        if count > MAX_ARRAY_ELEMENTS:
            raise self.fail(
                key, f"{count:,} elements exceed llama.cpp's limit of {MAX_ARRAY_ELEMENTS:,}", count_at
            )
        if etype == VT.STRING:
            self.need(8 * count, f"{count:,} strings of {key}")
            self.skip_strings(count, key)
            return None, count
        fmt = _SCALAR[etype]
        size = struct.calcsize(fmt)
        self.need(size * count, f"{count:,} elements of {key}")
        if count > _KEEP_ARRAY_MAX:
            self.pos += size * count
            return None, count
        values = list(struct.unpack_from(f"<{count}{fmt[1:]}", self.buf, self.pos))
        self.pos += size * count
        return values, count
