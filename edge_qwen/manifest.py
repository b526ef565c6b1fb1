"""The manifest beside every file edge-qwen writes (``<output>.json``): what the file is, how big,
its sha256, what it was made from and with, and its quality figures. One typed value,
:class:`Manifest`; the JSON is its :meth:`~Manifest.to_dict`::

    {
      "schema": 1,                      # bumped on incompatible changes
      "path": "/abs/out/qwen-Q4_K_M.gguf",
      "file": "qwen-Q4_K_M.gguf",       # basename, handy when the folder moves
      "size": 397808192,                # bytes
      "sha256": "<64 hex>",
      "quant_type": "Q4_K_M",          # QUANT_TYPES name, or e.g. "F16" for the converter's output
      "source": "/abs/in/qwen-f16.gguf", # input GGUF path, or any JSON value the caller passes
                                        # (the converter passes its source dict); null if unknown
      "tools": {"edge_qwen": "0.1.0", "llama_cpp_python": "0.3.36", "gguf": "0.19.0"},
      "elapsed_s": 12.3,                # seconds spent producing the file; null if unknown
      "created": "2025-01-01T12:00:00+00:00",
      "quality": null | {...}           # edge_qwen.quality.QualityResult.as_dict() when evaluated
      ...                               # what a writer adds: kind, lora, tensor_types, the partner
    }                                   #   (mmproj / model), requantized, reference (Manifest.extra)

Every manifest is written atomically, and before the file it describes is renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ._atomic import write_json

MANIFEST_SCHEMA = 1


@dataclass(frozen=True)
class Manifest:
    """One output file's manifest (the module docstring shows its JSON)."""

    path: str
    file: str
    size: int
    sha256: str
    quant_type: str
    source: Any = None
    tools: Mapping[str, str | None] = field(default_factory=dict)
    elapsed_s: float | None = None
    created: str = ""
    quality: Mapping[str, Any] | None = None
    schema: int = MANIFEST_SCHEMA
    extra: Mapping[str, Any] = field(default_factory=dict)  # what the writer added (see above)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["tools"] = dict(self.tools)
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = {"path", "file", "size", "sha256", "quant_type"} - set(data)
        if missing:
            raise ValueError(f"manifest lacks {sorted(missing)}")
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
        )

    def replace(self, **changes: Any) -> Manifest:
        """This manifest with fields changed (unknown names land in ``extra``)."""
        return Manifest.from_dict({**self.to_dict(), **changes})


def _version(dist: str, module: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        mod = sys.modules.get(module)
        return getattr(mod, "__version__", None) if mod else None


def tool_versions() -> dict[str, str | None]:
    """Versions recorded in every manifest, so an output can be traced to the code that made it."""
    return {
        "edge_qwen": _version("edge-qwen", "edge_qwen"),
        "llama_cpp_python": _version("llama-cpp-python", "llama_cpp"),
        "gguf": _version("gguf", "gguf"),
    }


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_path(output_path: str | os.PathLike[str]) -> Path:
    """``out/model.gguf`` -> ``out/model.gguf.json``."""
    p = Path(output_path)
    return p.with_name(p.name + ".json")


def write_manifest(
    output_path: str | os.PathLike[str],
    *,
    quant_type: str,
    source: Any = None,
    elapsed_s: float | None = None,
    quality: Mapping[str, Any] | None = None,
    sha256: str | None = None,
    measure: str | os.PathLike[str] | None = None,
    **extra: Any,
) -> Manifest:
    """Write ``<output_path>.json`` and return it.

    Size and sha256 are measured from the file itself (pass ``sha256`` to skip re-hashing), or from
    ``measure``: the temporary file that will be renamed to ``output_path`` once its manifest is in
    place (so a kill never leaves an output without its manifest). ``source`` may be a path (stored
    resolved) or any JSON-ready value. The converter uses this for its F16 output too.
    """
    out = Path(output_path).resolve()
    measured = Path(measure) if measure is not None else out
    if isinstance(source, (str, os.PathLike)):
        source = str(Path(source).resolve())
    manifest = Manifest(
        path=str(out),
        file=out.name,
        size=measured.stat().st_size,
        sha256=sha256 or sha256_file(measured),
        quant_type=quant_type,
        source=source,
        tools=tool_versions(),
        elapsed_s=None if elapsed_s is None else round(float(elapsed_s), 3),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        quality=quality,
        extra=extra,
    )
    write_json(manifest_path(out), manifest.to_dict())
    return manifest


def read_manifest(output_path: str | os.PathLike[str]) -> Manifest:
    """The manifest of ``output_path``.

    Raises:
        OSError: it cannot be read. ValueError: it is not a manifest (bad JSON, missing fields).
    """
    data = json.loads(manifest_path(output_path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{manifest_path(output_path)} is not a manifest (a JSON object)")
    return Manifest.from_dict(data)


def update_manifest(output_path: str | os.PathLike[str], **changes: Any) -> Path:
    """Merge ``changes`` (e.g. ``quality=...``) into an existing manifest, atomically."""
    path = manifest_path(output_path)
    write_json(path, read_manifest(output_path).replace(**changes).to_dict())
    return path
