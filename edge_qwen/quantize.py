"""Quantize a GGUF file in-process with llama.cpp's own quantizer (no ``llama-quantize`` binary).

Why in-process: llama-cpp-python already ships ``libllama`` with ``llama_model_quantize``, so the
same wheel that runs the model also produces its quantized variants, on any platform.

>>> result = quantize("qwen-f16.gguf", "q4_k_m", out_dir="out")      # doctest: +SKIP
>>> result.path                                                       # doctest: +SKIP
PosixPath('out/qwen-Q4_K_M.gguf')

Supported types live in :data:`QUANT_TYPES` (a table, not branches). Names are case-insensitive.

Safety rules:

* The input is validated as a readable GGUF first (:class:`~edge_qwen.errors.GGUFFileError`).
* Re-quantizing an already-quantized file loses quality twice, so it is refused with
  :class:`~edge_qwen.errors.RequantizeRefusedError` unless ``allow_requantize=True``
  (``--allow-requantize`` on the command line).
* The output is written under a temporary name in the destination folder and renamed only when
  llama.cpp reports success; a failure leaves nothing behind.

Every output gets a manifest beside it (:mod:`edge_qwen.manifest`).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ._atomic import atomic_path
from .errors import QuantizeError, RequantizeRefusedError
from .gguf_header import GGUFHeader, check_gguf_file, read_header
from .manifest import Manifest, manifest_path, write_manifest

FT = gguf.LlamaFileType
QT = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class QuantType:
    """One row of the quantization table."""

    name: str
    ftype: gguf.LlamaFileType  # same numbering as llama.h's ``enum llama_ftype`` (LLAMA_FTYPE_*)
    main_type: gguf.GGMLQuantizationType  # the type most 2-D weights get
    description: str

    @property
    def bits_per_weight(self) -> float:
        """Nominal bits per weight of the main type (K-quant mixes spend a little more)."""
        block, nbytes = gguf.GGML_QUANT_SIZES[self.main_type]
        return nbytes * 8 / block


_TABLE = [
    QuantType("Q8_0", FT.MOSTLY_Q8_0, QT.Q8_0, "8-bit; practically lossless, ~half of F16"),
    QuantType("Q6_K", FT.MOSTLY_Q6_K, QT.Q6_K, "6-bit K-quant; near-lossless"),
    QuantType("Q5_K_M", FT.MOSTLY_Q5_K_M, QT.Q5_K, "5-bit K-quant mix; very small loss"),
    QuantType("Q5_K_S", FT.MOSTLY_Q5_K_S, QT.Q5_K, "5-bit K-quant, smaller mix"),
    QuantType("Q4_K_M", FT.MOSTLY_Q4_K_M, QT.Q4_K, "4-bit K-quant mix; the usual default for edge devices"),
    QuantType("Q4_K_S", FT.MOSTLY_Q4_K_S, QT.Q4_K, "4-bit K-quant, smaller mix"),
    QuantType("Q4_0", FT.MOSTLY_Q4_0, QT.Q4_0, "4-bit legacy; fastest on ARM (runtime repacking), more loss"),
    QuantType("IQ4_NL", FT.MOSTLY_IQ4_NL, QT.IQ4_NL, "4-bit non-linear, Q4_0's size, less loss"),
    QuantType("Q3_K_M", FT.MOSTLY_Q3_K_M, QT.Q3_K, "3-bit K-quant mix; for the tightest memory, clear loss"),
    QuantType("F16", FT.MOSTLY_F16, QT.F16, "16-bit float; unquantized reference"),
    QuantType("BF16", FT.MOSTLY_BF16, QT.BF16, "bfloat16; unquantized reference"),
]
QUANT_TYPES: dict[str, QuantType] = {q.name: q for q in _TABLE}

# File types / tensor types that hold unquantized weights.
_FLOAT_FTYPES = frozenset({FT.ALL_F32, FT.MOSTLY_F16, FT.MOSTLY_BF16})
_FLOAT_TENSOR_TYPES = frozenset({QT.F32, QT.F16, QT.BF16, QT.F64})
_PRECISION_SUFFIX = re.compile(r"[-_.](f16|bf16|f32|fp16|fp32)$", re.IGNORECASE)
_PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")  # "[ 12/ 291] blk.0.attn_q.weight …"


@dataclass
class QuantizeResult:
    """What :func:`quantize` produced."""

    path: Path
    quant_type: str
    source: Path
    size: int  # bytes
    sha256: str
    elapsed_s: float
    manifest_path: Path
    requantized: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("path", "source", "manifest_path"):
            d[key] = str(d[key])
        return d


# --- table lookups ------------------------------------------------------------------------------


def quant_type(name: str) -> QuantType:
    """Look a type up case-insensitively (``q4_k_m`` -> ``Q4_K_M``)."""
    try:
        return QUANT_TYPES[name.strip().upper()]
    except KeyError:
        raise QuantizeError(
            f"unknown quantization type {name!r}; choose one of {', '.join(QUANT_TYPES)}"
        ) from None


def parse_quant_list(spec: str) -> list[QuantType]:
    """``"q4_k_m,q8_0"`` -> the table rows, duplicates dropped, order kept."""
    names = [part for part in (p.strip() for p in spec.split(",")) if part]
    if not names:
        raise QuantizeError(f"no quantization type given; choose from {', '.join(QUANT_TYPES)}")
    rows = [quant_type(n) for n in names]
    return list(dict.fromkeys(rows))


def default_output_name(in_path: str | os.PathLike[str], quant: str) -> str:
    """``qwen-f16.gguf`` + ``Q4_K_M`` -> ``qwen-Q4_K_M.gguf`` (precision suffix dropped)."""
    stem = _PRECISION_SUFFIX.sub("", Path(in_path).stem) or Path(in_path).stem
    return f"{stem}-{quant_type(quant).name}.gguf"


# --- input inspection ---------------------------------------------------------------------------


def open_gguf(path: str | os.PathLike[str]) -> GGUFHeader:
    """The validated header of a GGUF (:func:`edge_qwen.gguf_header.read_header`; ~25x faster than
    gguf-py's ``GGUFReader``, which builds numpy views of every token); :class:`GGUFFileError` if
    the file is missing, truncated or corrupt."""
    return read_header(check_gguf_file(path))


def check_quantizable(src: Path, target: str, allow_requantize: bool = False) -> list[str]:
    """Refuse what llama.cpp's quantizer should not take: a projector, or (unless allowed) a file
    already quantized. Returns why the file counts as quantized (empty: float weights)."""
    header = open_gguf(src)
    if header.architecture == "clip":
        raise QuantizeError(
            f"{src} is a vision/audio projector (mmproj); llama.cpp's quantizer takes language models "
            "only. Convert the checkpoint again with --mmproj-type q8_0 for a smaller projector"
        )
    reasons = quantized_reasons(header)
    if reasons and not allow_requantize:
        raise RequantizeRefusedError(
            f"{src} is already quantized ({'; '.join(reasons)}). Re-quantizing compounds the rounding "
            f"error, so {target} made from it will be worse than {target} made from the F16/BF16 "
            "original. Quantize the original GGUF instead, or opt in with --allow-requantize "
            "(allow_requantize=True) if you accept the quality loss."
        )
    return reasons


def quantized_reasons(header: GGUFHeader) -> list[str]:
    """Why the file counts as already quantized (empty list: it holds float weights)."""
    reasons = []
    ftype = header.metadata.get(gguf.Keys.General.FILE_TYPE)
    if isinstance(ftype, int) and ftype in {int(f) for f in FT} and FT(ftype) not in _FLOAT_FTYPES:
        reasons.append(f"{gguf.Keys.General.FILE_TYPE} is {FT(ftype).name}")
    matrices = (t for t in header.tensors if len(t.shape) >= 2)
    quantized = sorted({QT(t.ggml_type).name for t in matrices if t.ggml_type not in _FLOAT_TENSOR_TYPES})
    if quantized:
        reasons.append(f"weight tensors are {', '.join(quantized)}")
    return reasons


# --- llama.cpp log -> progress bar -------------------------------------------------------------


def _log_listener(echo: bool, progress: Any) -> Callable[[int, str], None]:
    """Echo llama.cpp's quantizer log when verbose; drive the progress bar from its "[ i/ n]" lines."""

    def on_line(level: int, line: str) -> None:
        if echo:
            sys.stderr.write(line)
        if progress is not None and (m := _PROGRESS.search(line)):
            done, total = int(m.group(1)), int(m.group(2))
            if progress.total != total:
                progress.reset(total=total)
            progress.update(done - progress.n)  # tqdm throttles the redraws

    return on_line


# --- quantize -----------------------------------------------------------------------------------


def _resolve_output(in_path: Path, quant: QuantType, out_path: Any, out_dir: Any) -> Path:
    if out_path is not None and out_dir is not None:
        raise QuantizeError("pass either out_path or out_dir, not both")
    if out_path is not None:
        out = Path(out_path)
    else:
        folder = Path(out_dir) if out_dir is not None else in_path.parent
        out = folder / default_output_name(in_path, quant.name)
    if out.resolve() == in_path.resolve():
        raise QuantizeError(f"output {out} would overwrite the input; choose another out_path or out_dir")
    return out


def _progress_bar(quiet: bool, desc: str) -> Any:
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=0, desc=desc, unit="tensor", file=sys.stderr, leave=False)


def quantize(
    in_path: str | os.PathLike[str],
    quant: str,
    out_path: str | os.PathLike[str] | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    allow_requantize: bool = False,
    quiet: bool = False,
    verbose: bool = False,
    imatrix: Mapping[str, np.ndarray] | None = None,
    imatrix_source: Mapping[str, Any] | None = None,
    overrides: Sequence[tuple[str, int]] = (),
    extra_manifest: Mapping[str, Any] | None = None,
    label: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> QuantizeResult:
    """Quantize ``in_path`` to ``quant`` and write ``out_path`` (or ``<out_dir>/<default name>``).

    ``threads=None`` lets llama.cpp use every core. ``quiet`` hides the progress bar; ``verbose``
    echoes llama.cpp's own log (otherwise only its tail appears, inside the error, on failure).
    ``imatrix``: {weight name: mean squared input per column, one block of columns per expert}
    (:meth:`edge_qwen.imatrix.Imatrix.quantizer_input`), which llama.cpp weighs its rounding by;
    ``imatrix_source`` describes it in the manifest. ``overrides``: (regex, ggml type) pairs that
    give matching tensors their own type (:mod:`edge_qwen.quant_mix`); ``extra_manifest`` adds keys
    to the manifest; ``label`` names the result's type instead of ``quant`` (``"MIX"``);
    ``metadata``: string keys written into the output GGUF (at most 127 bytes each). Returns a
    :class:`QuantizeResult`; a manifest JSON is written beside the output.
    """
    qt = quant_type(quant)
    src = Path(in_path)
    out = _resolve_output(src, qt, out_path, out_dir)  # cheap checks before parsing the header
    reasons = check_quantizable(src, qt.name, allow_requantize)
    native = _native_imatrix(imatrix) if imatrix else None
    extra: dict[str, Any] = dict(extra_manifest or {})
    if native is not None:
        extra["imatrix"] = dict(imatrix_source or {})
    manifest = _run_quantizer(
        src, out, qt, threads, bool(reasons), quiet, verbose, native, _native_overrides(overrides), extra,
        label or qt.name, _native_metadata(metadata or {}),
    )
    digest, elapsed = manifest.sha256, manifest.elapsed_s or 0.0
    return QuantizeResult(
        path=out,
        quant_type=label or qt.name,
        source=src,
        size=manifest.size,
        sha256=digest,
        elapsed_s=elapsed,
        manifest_path=manifest_path(out),
        requantized=bool(reasons),
    )


_QUANT_SIZE = re.compile(r"quant size\s*=\s*([\d.]+) MiB")


def dry_run_bytes(src: str | os.PathLike[str], quant: str) -> int | None:
    """Bytes of tensor data llama.cpp's quantizer would write for ``quant`` — its own per-tensor
    choices (K-quant mixes, row-size fallbacks such as Q4_K -> Q5_0 for 896-wide rows, the output
    matrix) — computed without quantizing (``dry_run``: nothing is read or written beyond the
    header). None when llama.cpp declines (an architecture this build does not know)."""
    import llama_cpp

    from ._llama import capture_log

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(quant_type(quant).ftype)
    params.nthread = 1
    params.allow_requantize = True
    params.dry_run = True
    with capture_log() as log:
        # llama.cpp takes an output path even when it writes nothing; point it where nothing lives
        rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(os.devnull), ctypes.byref(params))
    match = _QUANT_SIZE.search("".join(log.lines))
    return int(float(match.group(1)) * 2**20) if rc == 0 and match else None


def _native_imatrix(imatrix: Mapping[str, np.ndarray]) -> tuple[Any, list[Any]]:
    """``llama_model_imatrix_data`` entries (ended by a null name) and what must stay alive while
    llama.cpp reads them."""
    import llama_cpp

    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    keep: list[Any] = []
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        array = np.ascontiguousarray(values, dtype=np.float32).ravel()
        if not np.all(np.isfinite(array)):
            raise QuantizeError(f"the importance matrix of {name} holds NaN or infinite values; recompute it")
        encoded = name.encode()
        keep += [array, encoded]
        entries[i].name = encoded
        entries[i].data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = array.size
    return entries, keep


def _native_overrides(overrides: Sequence[tuple[str, int]]) -> tuple[Any, list[Any]] | None:
    """``llama_model_tensor_override`` entries (ended by a null pattern), kept alive by the caller."""
    if not overrides:
        return None
    import llama_cpp

    entries = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
    keep: list[Any] = []
    for i, (pattern, ggml_type) in enumerate(overrides):
        encoded = pattern.encode()
        keep.append(encoded)
        entries[i].pattern = encoded
        entries[i].type = ggml_type
    return entries, keep


def _native_metadata(metadata: Mapping[str, str]) -> Any:
    """``llama_model_kv_override`` string entries (ended by an empty key), or None."""
    if not metadata:
        return None
    import llama_cpp

    entries = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()
    for i, (key, value) in enumerate(metadata.items()):
        raw = value.encode()
        if len(key.encode()) >= 128 or len(raw) >= 128:
            raise QuantizeError(f"metadata {key!r} is longer than llama.cpp's 127 bytes")
        entries[i].key = key.encode()
        entries[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        entries[i].value.val_str = raw  # type: ignore[union-attr]  # a ctypes union field
    return entries


def _run_quantizer(
    src: Path,
    out: Path,
    qt: QuantType,
    threads: int | None,
    requant: bool,
    quiet: bool,
    verbose: bool,
    imatrix: tuple[Any, list[Any]] | None = None,
    overrides: tuple[Any, list[Any]] | None = None,
    extra: dict[str, Any] | None = None,
    label: str | None = None,
    metadata: Any = None,
) -> Manifest:
    """Call ``llama_model_quantize`` into a temporary sibling of ``out``; on success write the
    manifest, then rename. Returns the manifest.

    The order keeps a kill at any point safe: the old ``out`` goes before its manifest is replaced,
    and the new file arrives only after its manifest, so ``out`` never exists beside a manifest
    that does not describe it."""
    import llama_cpp

    from ._llama import capture_log

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(qt.ftype)
    params.nthread = int(threads or 0)
    params.allow_requantize = requant
    if imatrix is not None:
        params.imatrix = ctypes.cast(imatrix[0], ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    if metadata is not None:
        params.kv_overrides = ctypes.cast(metadata, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    if overrides is not None:
        params.tt_overrides = ctypes.cast(overrides[0], ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    bar = _progress_bar(quiet, f"{src.name} -> {qt.name}")
    start = time.perf_counter()
    try:
        with atomic_path(out) as tmp:
            with capture_log(_log_listener(verbose, bar)) as log:
                rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(tmp), ctypes.byref(params))
                if rc != 0:
                    raise QuantizeError(
                        f"llama.cpp could not quantize {src} to {qt.name} (code {rc}): {log.tail()}. "
                        "Check that this llama-cpp-python supports the model's architecture (`edge-qwen "
                        "info` shows it) and that the disk has room; pass verbose=True for llama.cpp's "
                        "full log."
                    )
            elapsed = time.perf_counter() - start
            out.unlink(missing_ok=True)
            return write_manifest(
                out, measure=tmp, quant_type=label or qt.name, source=src, elapsed_s=elapsed,
                requantized=requant, **(extra or {}),
            )
    finally:
        if bar is not None:
            bar.close()
