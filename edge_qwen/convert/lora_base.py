"""The base model a LoRA adapter is converted against: its architecture and the shape of every weight.

Only shapes are needed, never the weights: a checkpoint folder gives them through ``config.json``
(the same table ``convert`` checks checkpoints against), a GGUF through its header's tensor infos.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf

from ..errors import AdapterError, GGUFFileError
from .architectures import ARCHITECTURES, Architecture, expected_shape, load_hparams
from .source import REPO_ID

T = gguf.MODEL_TENSOR
# Base weights a LoRA may target: the attention and MLP projections (per expert and shared too).
TARGETS: frozenset[gguf.MODEL_TENSOR] = frozenset(
    {
        T.ATTN_Q,
        T.ATTN_K,
        T.ATTN_V,
        T.ATTN_OUT,
        T.FFN_GATE,
        T.FFN_UP,
        T.FFN_DOWN,
        T.FFN_GATE_EXP,
        T.FFN_UP_EXP,
        T.FFN_DOWN_EXP,
        T.FFN_GATE_SHEXP,
        T.FFN_UP_SHEXP,
        T.FFN_DOWN_SHEXP,
    }
)

# The text architectures whose adapters are converted (multimodal entries of ARCHITECTURES share
# GGUF names with them but not the tensor layout of a PEFT adapter).
TEXT_ARCHS = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM")
BY_GGUF: dict[str, Architecture] = {ARCHITECTURES[n].gguf_name: ARCHITECTURES[n] for n in TEXT_ARCHS}


@dataclass(frozen=True)
class BaseModel:
    """What conversion checks an adapter against."""

    arch: Architecture
    n_layer: int
    shapes: dict[str, tuple[int, ...]]  # GGUF tensor name -> row-major shape ([n_expert,] out, in)
    source: str  # the folder or GGUF it was read from
    n_expert: int = 0

    def as_dict(self) -> dict[str, str]:
        return {"path": self.source, "architecture": self.arch.hf_name}


def base_from_checkpoint(folder: Path) -> BaseModel:
    """Shapes implied by ``config.json`` (raises CheckpointError / UnsupportedArchitectureError)."""
    hp = load_hparams(folder)
    if hp.arch.hf_name not in TEXT_ARCHS:
        raise AdapterError(
            f"{folder}: a {hp.arch.hf_name} base; edge-qwen converts adapters for {', '.join(TEXT_ARCHS)}"
        )
    allowed = set(gguf.MODEL_TENSORS[hp.arch.gguf_arch]) & TARGETS
    shapes: dict[str, tuple[int, ...]] = {}
    for kind in allowed:
        if kind in (T.FFN_GATE_SHEXP, T.FFN_UP_SHEXP, T.FFN_DOWN_SHEXP) and not hp.n_ff_shexp:
            continue
        shape = expected_shape(kind, hp, bias=False)
        for bid in range(hp.n_layer):
            if shape is not None:
                shapes[gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"] = shape
    return BaseModel(hp.arch, hp.n_layer, shapes, str(folder), hp.n_expert)


def base_from_gguf(path: Path) -> BaseModel:
    """Shapes of the GGUF's own tensors, read from its header."""
    from ..gguf_header import read_header

    header = read_header(path)
    kind = header.metadata.get(gguf.Keys.General.TYPE, gguf.GGUFType.MODEL)
    if kind != gguf.GGUFType.MODEL:
        raise AdapterError(f"{path} is a GGUF of type {kind!r}, not a model; pass the base model's GGUF")
    arch = BY_GGUF.get(header.architecture)
    if arch is None:
        raise AdapterError(
            f"{path}: architecture {header.architecture!r}; edge-qwen converts adapters for "
            f"{', '.join(BY_GGUF)} bases"
        )
    n_layer = int(header.arch_value(gguf.Keys.LLM.BLOCK_COUNT) or 0)
    n_expert = int(header.arch_value(gguf.Keys.LLM.EXPERT_COUNT) or 0)
    shapes = {t.name: tuple(reversed(t.shape)) for t in header.tensors}
    return BaseModel(arch, n_layer, shapes, str(path), n_expert)


def resolve_base(base: str | os.PathLike[str] | None, declared: str | None) -> BaseModel:
    """``--base`` (a checkpoint folder or a GGUF), else the adapter's ``base_model_name_or_path``.

    The declared base is used when it is a local folder or a repo already in the Hugging Face
    cache; nothing is downloaded for it (only ``config.json`` would be needed).

    Raises:
        AdapterError: no base given and the declared one is not available locally.
        GGUFFileError, CheckpointError: the base cannot be read.
    """
    if base is not None:
        return _open_base(Path(base).expanduser())
    found = find_declared_base(declared)
    if found is None:
        raise AdapterError(
            f"the adapter's base_model_name_or_path is {declared!r}, which is neither a local folder nor in "
            "the Hugging Face cache; pass --base with the base checkpoint folder (config.json is enough) "
            "or its GGUF"
        )
    return base_from_checkpoint(found)


def find_declared_base(declared: str | None) -> Path | None:
    """The folder holding the declared base's config.json, when it is available without a download."""
    if not declared:
        return None
    path = Path(declared).expanduser()
    if (path / "config.json").is_file():
        return path
    if not REPO_ID.match(declared):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(declared, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def _open_base(path: Path) -> BaseModel:
    if path.is_dir():
        return base_from_checkpoint(path)
    if path.is_file():
        from ..gguf_header import check_gguf_file

        return base_from_gguf(check_gguf_file(path))
    raise GGUFFileError(
        f"--base {path} does not exist; pass the base checkpoint folder (config.json is enough) or its GGUF"
    )
