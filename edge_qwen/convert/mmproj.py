"""Write the mmproj GGUF of a Qwen-VL checkpoint (vision tower + patch merger) or of a Qwen2-Audio
one (audio tower + projector, planned in :mod:`.audio`), for llama.cpp's clip / mtmd.

Names come from gguf-py's ``TensorNameMap(MODEL_ARCH.MMPROJ)`` and keys from ``GGUFWriter``'s
``add_clip_*`` / ``add_vision_*`` helpers. Two tensors are reshaped on the way, as clip.cpp expects:

* ``attn.qkv`` (one [3·width, width] matrix) becomes separate q, k and v tensors (row slices);
* the Conv3d patch embedding [width, 3, 2, p, p] becomes two Conv2d kernels, one per temporal
  frame (``v.patch_embd.weight`` and ``v.patch_embd.weight.1``); a still image is the same frame
  twice, so clip adds both convolutions of it.

Data is streamed in row blocks like the text converter's, and the file is written atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .._atomic import atomic_path
from ..errors import CheckpointError
from ..manifest import Manifest, write_manifest
from . import audio, vision_qwen3
from ._io import HashingFile, write_hashed
from .config_bounds import read_object
from .metadata import Source
from .mmproj_tensor import (
    MMPROJ_TYPES,
    MmprojTensor,
    block_names,
    mmproj_ggml_type,
    require_tensors,
    tensor_shape,
)
from .safetensors import TensorRef
from .vision import NOMINAL_IMAGE_SIZE, VisionConfig, add_vision_keys, load_vision_config

T = gguf.MODEL_TENSOR
PATCH = gguf.TENSOR_NAMES[T.V_ENC_EMBD_PATCH] + ".weight"


def default_mmproj_type(outtype: str) -> str:
    """F32 beside an F32 language model (exact comparisons), F16 otherwise (also for quantized ones)."""
    return "f32" if outtype == "f32" else "f16"


def plan_mmproj(refs: dict[str, TensorRef], vc: VisionConfig, mmproj_type: str) -> list[MmprojTensor]:
    """Every mmproj tensor from the checkpoint's ``visual.*`` tensors.

    Raises:
        CheckpointError: a vision tensor gguf-py cannot name, or a missing one.
    """
    # merger.mlp.{0,2} are block-numbered too, so the map must reach index 2 even for tiny towers
    name_map = gguf.TensorNameMap(gguf.MODEL_ARCH.MMPROJ, max(vc.depth, 3))
    planned: list[MmprojTensor] = []
    for hf_name, ref in refs.items():
        for part_name, rows, take in _parts(hf_name, ref):
            if hf_name.endswith("patch_embed.proj.weight"):
                gguf_name = PATCH + ("" if part_name.endswith("#0") else ".1")
                kind = T.V_ENC_EMBD_PATCH
            else:
                mapped = name_map.get_type_and_name(part_name, try_suffixes=(".weight", ".bias"))
                if mapped is None:
                    raise CheckpointError(
                        f"checkpoint tensor {hf_name!r} has no place in llama.cpp's Qwen-VL mmproj; "
                        "the checkpoint does not match its config.json architecture"
                    )
                kind, gguf_name = mapped
            shape = tensor_shape(ref, rows, take)
            planned.append(
                MmprojTensor(gguf_name, shape, ref, rows, mmproj_ggml_type(kind, shape, mmproj_type), take)
            )
    _check_complete(planned, vc)
    return planned


def _parts(hf_name: str, ref: TensorRef):
    """(name, rows, take) pieces of one checkpoint tensor."""
    n = ref.shape[0]
    if ".attn.qkv." in hf_name:
        third = n // 3
        return [
            (hf_name.replace(".qkv.", f".{x}."), (i * third, (i + 1) * third), None)
            for i, x in enumerate("qkv")
        ]
    if hf_name.endswith("patch_embed.proj.weight"):
        if len(ref.shape) != 5 or ref.shape[2] != 2:
            raise CheckpointError(
                f"{hf_name}: shape {list(ref.shape)}, expected a Conv3d [width, 3, 2, p, p]"
            )
        return [(f"{hf_name}#{t}", (0, n), _frame(t)) for t in (0, 1)]
    return [(hf_name, (0, n), None)]


def _frame(t: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda block: block[:, :, t]


def _check_complete(planned: list[MmprojTensor], vc: VisionConfig) -> None:
    need = [PATCH, PATCH + ".1", gguf.TENSOR_NAMES[T.V_POST_NORM] + ".weight"]
    need += block_names([T.V_MMPROJ], (0, 2))
    per_block = [T.V_ENC_ATTN_Q, T.V_ENC_ATTN_K, T.V_ENC_ATTN_V, T.V_ENC_ATTN_O, T.V_ENC_INPUT_NORM]
    per_block += [T.V_ENC_POST_ATTN_NORM, T.V_ENC_FFN_UP, T.V_ENC_FFN_DOWN]
    require_tensors(planned, need + block_names(per_block, range(vc.depth)), "vision")


def add_vision_metadata(writer: gguf.GGUFWriter, vc: VisionConfig) -> None:
    """Every key clip.cpp reads for Qwen2-VL / Qwen2.5-VL (through gguf-py's helpers)."""
    add_vision_keys(writer, vc, image_size=NOMINAL_IMAGE_SIZE, merge=2)
    if vc.qwen25:
        writer.add_vision_use_silu(True)
        writer.add_vision_n_wa_pattern(vc.n_wa_pattern)
        writer.add_vision_window_size(vc.window)


def write_mmproj(
    path: Path,
    add_metadata: Callable[[gguf.GGUFWriter], None],
    planned: list[MmprojTensor],
    source: Source,
    mmproj_type: str,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the mmproj GGUF atomically; return manifest fields (sha256, name)."""
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
        hashing: HashingFile | None = None
        try:
            for tensor in planned:
                writer.add_tensor(tensor.name, tensor, raw_dtype=tensor.ggml_type)  # type: ignore[arg-type]
            writer.add_type(gguf.GGUFType.MMPROJ)
            writer.add_name(f"{source.name} projector")
            writer.add_file_type(MMPROJ_TYPES[mmproj_type][1])
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            add_metadata(writer)
            hashing = write_hashed(writer, progress=progress)
        finally:
            writer.close()
    assert hashing is not None
    return {"sha256": hashing.sha256, "n_params": sum(int(np.prod(p.logical_shape)) for p in planned)}


def tensor_types(planned: list[MmprojTensor]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.ggml_type.name] = counts.get(p.ggml_type.name, 0) + 1
    return counts


# --- the convert pipeline's two steps ----------------------------------------------------------


@dataclass
class MmprojPlan:
    """A checked, not yet written mmproj: where it goes and every tensor in it."""

    path: Path
    projector: str
    add_metadata: Callable[[gguf.GGUFWriter], None]
    tensors: list[MmprojTensor]
    mmproj_type: str


def prepare_mmproj(
    source: Source, n_embd_text: int, refs: dict[str, TensorRef], outdir: Path, mmproj_type: str
) -> MmprojPlan:
    """Check the vision config and plan every tensor (before the language model is written).

    Raises:
        CheckpointError: see :func:`~.vision.load_vision_config` and :func:`plan_mmproj`.
    """
    raw = read_object(source.folder / "config.json")  # checked by load_hparams already
    path = outdir / f"mmproj-{source.name.lower()}-{mmproj_type}.gguf"
    if "audio_config" in raw:
        ac = audio.load_audio_config(source.folder, raw, n_embd_text)
        tensors = audio.plan_audio(refs, ac, mmproj_type)
        return MmprojPlan(path, ac.projector, lambda w: audio.add_audio_metadata(w, ac), tensors, mmproj_type)
    tower = (raw.get("vision_config") or {}).get("model_type", raw.get("model_type"))
    if str(tower) in vision_qwen3.MODEL_TYPES:
        q3 = vision_qwen3.load_qwen3_vision(source.folder, raw, n_embd_text)
        planned = vision_qwen3.plan_qwen3_mmproj(refs, q3, mmproj_type)
        add = lambda w: vision_qwen3.add_qwen3_vision_metadata(w, q3)  # noqa: E731
        return MmprojPlan(path, q3.projector, add, planned, mmproj_type)
    vc = load_vision_config(source.folder, raw, n_embd_text)
    tensors = plan_mmproj(refs, vc, mmproj_type)
    return MmprojPlan(path, vc.projector, lambda w: add_vision_metadata(w, vc), tensors, mmproj_type)


def finish_mmproj(plan: MmprojPlan, source: Source, model: Path, *, progress: bool = False) -> Manifest:
    """Write the mmproj and its manifest (which names the language model it belongs to)."""
    started = time.perf_counter()
    fields = write_mmproj(
        plan.path, plan.add_metadata, plan.tensors, source, plan.mmproj_type, progress=progress
    )
    return write_manifest(
        plan.path,
        quant_type=plan.mmproj_type.upper(),
        source=source.as_dict(),
        elapsed_s=time.perf_counter() - started,
        tensor_types=tensor_types(plan.tensors),
        kind="mmproj",
        projector=plan.projector,
        model=str(model.resolve()),
        **fields,
    )
