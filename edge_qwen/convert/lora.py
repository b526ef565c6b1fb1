"""``convert_lora``: a PEFT LoRA adapter -> a GGUF LoRA adapter llama.cpp applies at run time.

PEFT stores, per targeted projection ``W`` [out, in], ``lora_A`` [r, in] and ``lora_B`` [out, r];
the adapted layer computes ``W·x + scale·B·A·x``. llama.cpp's loader pairs ``<base tensor>.lora_a``
(ne = [in, r]) with ``.lora_b`` (ne = [r, out]) — the same row-major arrays — and multiplies by
``adapter.lora.alpha / r`` times the scale the caller chooses. Names come from gguf-py's
``TensorNameMap`` of the base architecture; anything without a place there is an error.

Per-expert MoE adapters (``mlp.experts.E.gate_proj``) are stacked like the base's experts
([n_expert, r, in] and [n_expert, out, r]), with zeros for experts the adapter leaves alone.
``fan_in_fan_out`` never changes the stored A/B (both are ``nn.Linear`` weights); it only says how
PEFT merges into a Conv1D base, and Qwen's projections are ``nn.Linear``, for which PEFT resets it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import gguf
import numpy as np

from .._atomic import atomic_path
from ..errors import (
    AdapterBaseMismatchError,
    AdapterError,
    AdapterShapeError,
    UnsupportedAdapterError,
)
from ..manifest import Manifest, write_manifest
from ._io import HashingFile, write_hashed
from .architectures import ARCHITECTURES
from .lora_base import TARGETS, BaseModel, find_declared_base, resolve_base
from .lora_config import LoraConfig, read_lora_config, resolve_adapter
from .metadata import Source
from .safetensors import TensorRef, read_header
from .source import REPO_ID

QT = gguf.GGMLQuantizationType
# --outtype -> (ggml type of the pairs, GGUF file type)
LORA_OUTTYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (QT.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (QT.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (QT.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (QT.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
LORA_NAME = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")
EXPERT = re.compile(r"^(.+\.mlp\.experts)\.(\d+)\.(\w+)$")


@dataclass(frozen=True)
class Pair:
    """One module's low-rank pair; ``factor`` folds a per-module scale into B (1.0 almost always)."""

    a: TensorRef
    b: TensorRef
    factor: float = 1.0


@dataclass
class LoraTensor:
    """One GGUF tensor (``….lora_a`` or ``….lora_b``), encoded while gguf-py writes it.

    Duck-types what ``GGUFWriter`` reads from an ndarray (dtype, nbytes, tofile); the element
    shape is passed as ``raw_shape``. ``parts`` holds one pair, or one per expert (None: zeros).
    """

    name: str
    side: str  # "a" or "b"
    shape: tuple[int, ...]  # row-major element shape
    parts: list[Pair | None]
    ggml_type: gguf.GGMLQuantizationType
    dtype: np.dtype = field(default=np.dtype(np.float32))  # only so gguf-py does not treat it as bytes

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.ggml_type]
        rows = int(np.prod(self.shape[:-1], dtype=np.int64))
        return rows * (self.shape[-1] // block) * size

    def values(self) -> np.ndarray:
        """float32 data, shape ``self.shape``."""
        one = self.shape[-2:]
        blocks = [np.zeros(one, np.float32) if p is None else self._read(p) for p in self.parts]
        return blocks[0] if len(self.shape) == 2 else np.stack(blocks)

    def _read(self, pair: Pair) -> np.ndarray:
        if self.side == "a":
            return pair.a.read()
        b = pair.b.read()
        return b if pair.factor == 1.0 else (b.astype(np.float64) * pair.factor).astype(np.float32)

    def tofile(self, fout: IO[bytes]) -> None:
        fout.write(np.ascontiguousarray(gguf.quants.quantize(self.values(), self.ggml_type)).tobytes())


@dataclass
class LoraResult:
    """What ``convert_lora`` produced."""

    gguf: Path
    source: Source
    base: BaseModel
    config: LoraConfig
    manifest: Manifest

    def as_dict(self) -> dict[str, Any]:
        return {
            "gguf": str(self.gguf),
            "source": self.source.as_dict(),
            "base": self.base.as_dict(),
            "architecture": self.base.arch.hf_name,
            "rank": self.config.r,
            "alpha": self.config.alpha,
            "use_rslora": self.config.use_rslora,
            "scale": self.config.default_scale,
            "manifest": self.manifest.to_dict(),
        }


def convert_lora(
    adapter: str | Path,
    outdir: str | Path,
    *,
    base: str | Path | None = None,
    outtype: str = "f16",
    revision: str | None = None,
) -> LoraResult:
    """Convert a PEFT LoRA adapter (folder or hub repo id) to a GGUF LoRA adapter.

    Args:
        adapter: folder with ``adapter_config.json`` + ``adapter_model.safetensors``, or a hub repo id.
        outdir: where ``<name>-lora-<outtype>.gguf`` and its ``.json`` manifest go.
        base: the base checkpoint folder (config.json suffices) or its GGUF; default: the adapter's
            ``base_model_name_or_path`` when it is a local folder or in the Hugging Face cache.
        outtype: ``f16`` (default), ``f32``, ``bf16`` or ``q8_0`` (pairs whose rows do not split into
            Q8_0 blocks of 32 are written as F16).
        revision: hub revision of the adapter.

    Returns:
        A :class:`LoraResult` (the manifest is also written beside the GGUF).

    Raises:
        AdapterError: missing files, unmapped tensor names, an unusable config.
        UnsupportedAdapterError: DoRA, biases, modules_to_save, embedding / lm_head targets.
        AdapterShapeError: a rank or shape that disagrees with the config or the base.
        AdapterBaseMismatchError: the base's architecture is not the one the adapter was trained on.
        CheckpointError, GGUFFileError, DownloadError: the base or the adapter cannot be read.
    """
    if outtype not in LORA_OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(LORA_OUTTYPES)}, got {outtype!r}")
    started = time.perf_counter()
    source = resolve_adapter(adapter, revision)
    config = read_lora_config(source.folder)
    base_model = resolve_base(base, config.base_model)
    check_architecture(config, base_model, explicit_base=base is not None)
    tensors = plan_lora(read_adapter_tensors(source.folder), config, base_model, outtype)
    stem = re.sub(r"[-_.]?(lora|adapter)$", "", source.name.lower()) or "adapter"
    out = Path(outdir) / f"{stem}-lora-{outtype}.gguf"

    written: list[Manifest] = []

    def manifest_of(tmp: Path, sha256: str) -> None:
        """Written while the GGUF is still under its temporary name: a kill never leaves one without it."""
        written.append(
            write_manifest(
                out,
                measure=tmp,
                quant_type=outtype.upper(),
                source=source.as_dict(),
                elapsed_s=time.perf_counter() - started,
                sha256=sha256,
                kind="lora",
                base=base_model.as_dict(),
                lora={
                    "rank": config.r,
                    "alpha": config.alpha,
                    "use_rslora": config.use_rslora,
                    "gguf_alpha": config.llama_alpha(),
                    "scale": config.default_scale,
                    "n_pairs": len(tensors) // 2,
                    "targets": sorted({_kind_of(t.name) for t in tensors}),
                },
                tensor_types=_describe(tensors),
            )
        )

    write_lora_gguf(out, tensors, config, base_model, source, outtype, manifest=manifest_of)
    return LoraResult(out, source, base_model, config, written[-1])


def check_architecture(config: LoraConfig, base: BaseModel, *, explicit_base: bool) -> None:
    """Refuse a base whose architecture differs from the one the adapter records or declares."""
    trained_on = config.base_class
    if trained_on is None and explicit_base:
        declared = find_declared_base(config.base_model)
        if declared is not None:
            cfg = json.loads((declared / "config.json").read_text())
            trained_on = (cfg.get("architectures") or [None])[0]
    trained = ARCHITECTURES.get(trained_on) if trained_on else None
    if trained_on is not None and (trained is None or trained.gguf_arch != base.arch.gguf_arch):
        raise AdapterBaseMismatchError(
            f"the adapter was trained on a {trained_on} ({config.base_model or 'base_model_class'}) but "
            f"--base {base.source} is a {base.arch.hf_name}; pass the base the adapter was trained on"
        )


def read_adapter_tensors(folder: Path) -> dict[str, TensorRef]:
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        other = (
            "adapter_model.bin is a pickle, which edge-qwen does not read; "
            if (folder / "adapter_model.bin").is_file()
            else ""
        )
        raise AdapterError(
            f"{folder}: no adapter_model.safetensors; {other}save the adapter with "
            "save_pretrained(..., safe_serialization=True)"
        )
    return read_header(path)


def plan_lora(
    refs: dict[str, TensorRef], config: LoraConfig, base: BaseModel, outtype: str
) -> list[LoraTensor]:
    """Pair A with B per module, map to GGUF names, check ranks and shapes, stack experts."""
    modules = _pairs(refs)
    name_map = gguf.TensorNameMap(base.arch.gguf_arch, base.n_layer)
    grouped: dict[str, dict[int, Pair]] = {}
    for module, (a, b) in modules.items():
        m = EXPERT.match(module)
        key, expert = (f"{m.group(1)}.{m.group(3)}", int(m.group(2))) if m else (module, -1)
        _check_rank(module, a, b, config)
        grouped.setdefault(key, {})[expert] = Pair(a, b, _factor(module, config))
    tensors: list[LoraTensor] = []
    for key, parts in grouped.items():
        mapped = name_map.get_type_and_name(key + ".weight", try_suffixes=(".weight",))
        if mapped is None or mapped[0] not in TARGETS:
            raise UnsupportedAdapterError(
                f"the adapter targets {key!r}, which is not an attention or MLP projection of a "
                f"{base.arch.hf_name}; llama.cpp adapters cover q/k/v/o_proj and gate/up/down_proj. "
                "Retrain with target_modules among those, or merge the adapter and `edge-qwen convert` it"
            )
        tensors.extend(_lora_tensors(key, mapped[1], parts, base, outtype))
    if not tensors:
        raise AdapterError("adapter_model.safetensors holds no lora_A / lora_B pairs; nothing to convert")
    return tensors


def _pairs(refs: dict[str, TensorRef]) -> dict[str, tuple[TensorRef, TensorRef]]:
    halves: dict[str, dict[str, TensorRef]] = {}
    for name, ref in refs.items():
        m = LORA_NAME.match(name)
        if m is None:
            _refuse_tensor(name)
        assert m is not None
        halves.setdefault(m.group(1), {})[m.group(2)] = ref
    for module, half in halves.items():
        if set(half) != {"A", "B"}:
            missing = ({"A", "B"} - set(half)).pop()
            raise AdapterError(f"{module}: lora_{missing} is missing; the adapter file is incomplete")
    return {module: (half["A"], half["B"]) for module, half in halves.items()}


def _refuse_tensor(name: str) -> None:
    if "lora_magnitude_vector" in name:
        raise UnsupportedAdapterError(f"{name}: a DoRA magnitude vector; llama.cpp cannot run DoRA adapters")
    if "lora_embedding_" in name:
        raise UnsupportedAdapterError(
            f"{name}: a LoRA on the token embedding; llama.cpp adapters here cover the attention and MLP "
            "projections. Retrain without embed_tokens in target_modules, or merge and `edge-qwen convert`"
        )
    if name.endswith(".bias"):
        raise UnsupportedAdapterError(f"{name}: a trained bias; llama.cpp adapters cannot carry biases")
    raise UnsupportedAdapterError(
        f"{name}: not a lora_A / lora_B weight (a modules_to_save copy or another PEFT method); "
        "llama.cpp's LoRA loader takes low-rank pairs only. Merge the adapter and `edge-qwen convert` it"
    )


def _check_rank(module: str, a: TensorRef, b: TensorRef, config: LoraConfig) -> None:
    r = config.rank(module)
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != r or b.shape[1] != r:
        raise AdapterShapeError(
            f"{module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not have rank {r} as "
            "adapter_config.json says (r / rank_pattern); the config and the weights do not belong together"
        )


def _factor(module: str, config: LoraConfig) -> float:
    """What llama.cpp's ``alpha / rank`` misses of PEFT's scale for this module (1.0 without patterns)."""
    factor = config.scale(module) * config.rank(module) / config.llama_alpha()
    return 1.0 if abs(factor - 1.0) < 1e-12 else factor


def _lora_tensors(
    key: str, gguf_name: str, parts: dict[int, Pair], base: BaseModel, outtype: str
) -> list[LoraTensor]:
    want = base.shapes.get(gguf_name)
    if want is None:
        raise AdapterShapeError(
            f"{key}: the base has no tensor {gguf_name}; pass the base the adapter belongs to"
        )
    first = next(iter(parts.values()))
    r, (n_in, n_out) = first.a.shape[0], (first.a.shape[1], first.b.shape[0])
    experts = len(want) == 3
    if (-1 in parts) == experts or (experts and max(parts) >= want[0]):
        raise AdapterShapeError(
            f"{key}: the adapter's experts {sorted(parts)[:4]}… do not fit the base's {want}; "
            "pass the base the adapter was trained on"
        )
    for pair in parts.values():
        if pair.a.shape != (r, n_in) or pair.b.shape != (n_out, r):
            raise AdapterShapeError(f"{key}: experts of the adapter have different ranks or shapes")
    if (n_out, n_in) != tuple(want[-2:]):
        raise AdapterShapeError(
            f"{key}: the adapter maps {n_in} -> {n_out} features but the base's {gguf_name} is "
            f"{want[-1]} -> {want[-2]}; the adapter belongs to a different base model. "
            "Pass its base with --base"
        )
    ordered: list[Pair | None] = [parts.get(e) for e in range(want[0])] if experts else [parts[-1]]
    lead = (want[0],) if experts else ()
    ggml = LORA_OUTTYPES[outtype][0]
    return [
        LoraTensor(f"{gguf_name}.lora_a", "a", (*lead, r, n_in), ordered, _fit(ggml, n_in)),
        LoraTensor(f"{gguf_name}.lora_b", "b", (*lead, n_out, r), ordered, _fit(ggml, r)),
    ]


def _fit(ggml: gguf.GGMLQuantizationType, row: int) -> gguf.GGMLQuantizationType:
    """Q8_0 needs rows of whole 32-element blocks (B's rows are the rank); otherwise F16."""
    return ggml if row % gguf.GGML_QUANT_SIZES[ggml][0] == 0 else QT.F16


def write_lora_gguf(
    path: Path,
    tensors: Sequence[LoraTensor],
    config: LoraConfig,
    base: BaseModel,
    source: Source,
    outtype: str,
    manifest: Callable[[Path, str], None] | None = None,
) -> str:
    """Write the adapter GGUF atomically; return its sha256. ``manifest(tmp, sha256)`` runs before
    the rename (an old file at ``path`` is removed first, so it never sits beside the new manifest)."""
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, base.arch.gguf_name)
        hashing: HashingFile | None = None
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, config.llama_alpha())
            writer.add_name(source.name)
            writer.add_file_type(LORA_OUTTYPES[outtype][1])
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            if source.repo_id:
                url = f"https://huggingface.co/{source.repo_id}"
                writer.add_source_repo_url(url)
                writer.add_source_url(f"{url}/tree/{source.revision}" if source.revision else url)
            if config.base_model:
                writer.add_base_model_count(1)
                writer.add_base_model_name(0, config.base_model.rstrip("/").split("/")[-1])
                if REPO_ID.match(config.base_model) and not Path(config.base_model).exists():
                    writer.add_base_model_repo_url(0, f"https://huggingface.co/{config.base_model}")
            for t in tensors:
                writer.add_tensor(t.name, t, raw_shape=t.shape, raw_dtype=t.ggml_type)  # type: ignore[arg-type]
            hashing = write_hashed(writer)
        finally:
            writer.close()
        assert hashing is not None
        if manifest is not None:
            path.unlink(missing_ok=True)
            manifest(tmp, hashing.sha256)
    return hashing.sha256


def _kind_of(name: str) -> str:
    """``blk.3.attn_q.weight.lora_a`` -> ``attn_q``."""
    return name.split(".")[2]


def _describe(tensors: Sequence[LoraTensor]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t.ggml_type.name] = counts.get(t.ggml_type.name, 0) + 1
    return counts


__all__ = ["LORA_OUTTYPES", "LoraResult", "convert_lora"]
