"""Qwen3-VL and Qwen3.5 vision towers: the ``qwen3vl_merger`` mmproj llama.cpp's clip runs.

The tower (transformers' ``Qwen3VLVisionModel``, reused by Qwen3.5) differs from Qwen2-VL's:

* the Conv3d patch embedding has a bias, and a learned position table (``pos_embed``, a square
  grid) is resized bilinearly to each image and added after it;
* blocks keep the fused ``attn.qkv`` (clip splits it by views) and use a GELU MLP
  (``linear_fc1`` / ``linear_fc2``);
* the merger normalizes before the 2x2 shuffle (``merger.norm`` becomes clip's post-norm), and
  Qwen3-VL's DeepStack mergers (``deepstack_merger_list.J``, normalized after the shuffle) turn
  the output of blocks ``deepstack_visual_indexes[J]`` into extra embeddings that the language
  model adds after its first layers. clip appends them to each image token's embedding
  (``n_embd × (1 + deepstack)`` values), in block order.

A layout clip's graph does not express is refused before anything is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from ..errors import CheckpointError
from .mmproj_tensor import MmprojTensor, block_names, mmproj_ggml_type, require_tensors, tensor_shape
from .safetensors import TensorRef
from .vision import add_vision_keys, preprocessor_stats

T = gguf.MODEL_TENSOR
# Hugging Face vision_config model_type of the towers this module converts
MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
CLIP_TEMPORAL = 2  # clip splits the Conv3d into exactly two Conv2d kernels
# the ViT MLP's activation clip's qwen3vl graph applies (GELU; its CPU kernel is the tanh form)
CLIP_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")


@dataclass(frozen=True)
class Qwen3VisionConfig:
    """The vision tower of a Qwen3-VL / Qwen3.5 checkpoint, as the mmproj GGUF describes it."""

    width: int
    n_ff: int
    n_head: int
    depth: int
    patch: int
    merge: int
    out_dim: int
    n_pos: int  # rows of the learned position table (a square grid)
    deepstack: tuple[int, ...]  # block indexes whose outputs feed a DeepStack merger
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    projector: str = gguf.VisionProjectorType.QWEN3VL

    @property
    def image_size(self) -> int:
        """The nominal size clip reads: the position grid's side in pixels."""
        return math.isqrt(self.n_pos) * self.patch


def load_qwen3_vision(folder: Path, raw: dict[str, Any], n_embd_text: int) -> Qwen3VisionConfig:
    """Read ``vision_config`` and ``preprocessor_config.json``; refuse what clip cannot run.

    Raises:
        CheckpointError: a missing file or key, or a layout llama.cpp's qwen3vl graph does not have.
    """
    where = f"{folder}/config.json"
    v = raw.get("vision_config")
    if not isinstance(v, dict):
        raise CheckpointError(f"{where}: a Qwen3-VL / Qwen3.5 config needs a vision_config mapping")

    def need(key: str) -> Any:
        if key not in v:
            raise CheckpointError(f"{where}: vision_config lacks {key!r}; the checkpoint is incomplete")
        return v[key]

    def integer(key: str) -> int:
        value = need(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{where}: vision_config {key}={value!r} must be a positive integer")
        return value

    mean, std = preprocessor_stats(folder)
    depth = integer("depth")
    deepstack = need("deepstack_visual_indexes") if "deepstack_visual_indexes" in v else []
    if not isinstance(deepstack, list) or not all(isinstance(i, int) and 0 <= i < depth for i in deepstack):
        raise CheckpointError(
            f"{where}: vision_config deepstack_visual_indexes {deepstack!r} must be block numbers below "
            f"depth {depth}"
        )
    if deepstack != sorted(set(deepstack)):
        raise CheckpointError(
            f"{where}: deepstack_visual_indexes {deepstack} are not increasing; clip feeds the DeepStack "
            "layers in block order, so the language model would add them to the wrong layers"
        )
    cfg = Qwen3VisionConfig(
        width=integer("hidden_size"),
        n_ff=integer("intermediate_size"),
        n_head=integer("num_heads"),
        depth=depth,
        patch=integer("patch_size"),
        merge=int(v.get("spatial_merge_size", 2)),
        out_dim=integer("out_hidden_size"),
        n_pos=integer("num_position_embeddings"),
        deepstack=tuple(deepstack),
        image_mean=mean,
        image_std=std,
    )
    _check_layout(where, v, cfg, n_embd_text)
    return cfg


def _check_layout(where: str, v: dict[str, Any], cfg: Qwen3VisionConfig, n_embd_text: int) -> None:
    fixed = {
        "temporal_patch_size": (v.get("temporal_patch_size", CLIP_TEMPORAL), (CLIP_TEMPORAL,)),
        "in_channels": (v.get("in_channels", v.get("in_chans", 3)), (3,)),
        "hidden_act": (v.get("hidden_act", CLIP_ACTIVATIONS[0]), CLIP_ACTIVATIONS),
    }
    for key, (have, allowed) in fixed.items():
        if have not in allowed:
            raise CheckpointError(
                f"{where}: vision_config {key}={have!r}, but llama.cpp's qwen3vl vision graph is built for "
                f"{' or '.join(map(repr, allowed))}; the converted projector would compute something else"
            )
    if math.isqrt(cfg.n_pos) ** 2 != cfg.n_pos:
        raise CheckpointError(
            f"{where}: num_position_embeddings {cfg.n_pos} is not a square grid; clip resizes the table "
            "as a square"
        )
    if cfg.merge < 1 or cfg.width % cfg.n_head or (cfg.width // cfg.n_head) % 4:
        raise CheckpointError(
            f"{where}: vision head size {cfg.width}/{cfg.n_head} must be a multiple of 4 "
            "(2-D rotary embedding over height and width), and spatial_merge_size at least 1"
        )
    if cfg.out_dim != n_embd_text:
        raise CheckpointError(
            f"{where}: the merger outputs {cfg.out_dim} values per token but the language model's "
            f"hidden size is {n_embd_text}; config.json mixes two models"
        )


# checkpoint name (hub layout, ``visual.`` prefix) -> (tensor kind, block), for what gguf-py's
# TensorNameMap does not name the way clip's qwen3vl graph reads it
_MERGER = re.compile(r"^visual\.merger\.(norm|linear_fc1|linear_fc2)\.(weight|bias)$")
_DEEPSTACK = re.compile(
    r"^visual\.deepstack_merger_list\.(\d+)\.(norm|linear_fc1|linear_fc2)\.(weight|bias)$"
)
PATCH = gguf.TENSOR_NAMES[T.V_ENC_EMBD_PATCH]


def _name(hf_name: str, vc: Qwen3VisionConfig, name_map: gguf.TensorNameMap) -> tuple[T, str] | None:
    m = _MERGER.match(hf_name)
    if m:
        part, suffix = m.groups()
        if part == "norm":
            return T.V_POST_NORM, f"{gguf.TENSOR_NAMES[T.V_POST_NORM]}.{suffix}"
        bid = 0 if part == "linear_fc1" else 2  # clip reads mm.0 and mm.2, as for Qwen2-VL
        return T.V_MMPROJ, f"{gguf.TENSOR_NAMES[T.V_MMPROJ].format(bid=bid)}.{suffix}"
    m = _DEEPSTACK.match(hf_name)
    if m:
        j, part, suffix = int(m.group(1)), m.group(2), m.group(3)
        if j >= len(vc.deepstack):
            return None
        kind = {"norm": T.V_DS_NORM, "linear_fc1": T.V_DS_FC1, "linear_fc2": T.V_DS_FC2}[part]
        return kind, f"{gguf.TENSOR_NAMES[kind].format(bid=vc.deepstack[j])}.{suffix}"
    if hf_name == "visual.patch_embed.proj.bias":
        return T.V_ENC_EMBD_PATCH, f"{PATCH}.bias"
    return name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))


def plan_qwen3_mmproj(
    refs: dict[str, TensorRef], vc: Qwen3VisionConfig, mmproj_type: str
) -> list[MmprojTensor]:
    """Every mmproj tensor from the checkpoint's ``visual.*`` tensors.

    Raises:
        CheckpointError: a vision tensor with no place in clip's graph, or a missing one.
    """
    name_map = gguf.TensorNameMap(gguf.MODEL_ARCH.MMPROJ, max(vc.depth, 3))
    planned: list[MmprojTensor] = []
    for hf_name, ref in refs.items():
        if hf_name == "visual.patch_embed.proj.weight":
            planned += _patch_kernels(ref, mmproj_type)
            continue
        mapped = _name(hf_name, vc, name_map)
        if mapped is None:
            raise CheckpointError(
                f"checkpoint tensor {hf_name!r} has no place in llama.cpp's qwen3vl mmproj; "
                "the checkpoint does not match its config.json architecture"
            )
        kind, gguf_name = mapped
        rows = (0, ref.shape[0])
        shape = tensor_shape(ref, rows, None)
        planned.append(MmprojTensor(gguf_name, shape, ref, rows, mmproj_ggml_type(kind, shape, mmproj_type)))
    _check_complete(planned, vc)
    return planned


def _patch_kernels(ref: TensorRef, mmproj_type: str) -> list[MmprojTensor]:
    """The Conv3d [width, 3, 2, p, p] as clip's two Conv2d kernels, one per temporal frame."""
    if len(ref.shape) != 5 or ref.shape[2] != CLIP_TEMPORAL:
        raise CheckpointError(f"{ref.name}: shape {list(ref.shape)}, expected a Conv3d [width, 3, 2, p, p]")
    out = []
    for t, suffix in ((0, ".weight"), (1, ".weight.1")):
        take = _frame(t)
        rows = (0, ref.shape[0])
        shape = tensor_shape(ref, rows, take)
        kind_type = mmproj_ggml_type(T.V_ENC_EMBD_PATCH, shape, mmproj_type)
        out.append(MmprojTensor(PATCH + suffix, shape, ref, rows, kind_type, take))
    return out


def _frame(t: int):  # noqa: ANN202
    return lambda block: block[:, :, t]


def _check_complete(planned: list[MmprojTensor], vc: Qwen3VisionConfig) -> None:
    need = [f"{PATCH}.weight", f"{PATCH}.weight.1", f"{PATCH}.bias"]
    need += [gguf.TENSOR_NAMES[T.V_ENC_EMBD_POS] + ".weight", gguf.TENSOR_NAMES[T.V_POST_NORM] + ".weight"]
    need += [gguf.TENSOR_NAMES[T.V_MMPROJ].format(bid=b) + s for b in (0, 2) for s in (".weight", ".bias")]
    per_block = [T.V_ENC_ATTN_QKV, T.V_ENC_ATTN_O, T.V_ENC_INPUT_NORM, T.V_ENC_POST_ATTN_NORM]
    per_block += [T.V_ENC_FFN_UP, T.V_ENC_FFN_DOWN]
    need += block_names(per_block, range(vc.depth)) + block_names(
        [T.V_DS_NORM, T.V_DS_FC1, T.V_DS_FC2], vc.deepstack
    )
    require_tensors(planned, need, "vision")


def add_qwen3_vision_metadata(writer: gguf.GGUFWriter, vc: Qwen3VisionConfig) -> None:
    """Every key clip.cpp reads for the qwen3vl projector (through gguf-py's helpers)."""
    add_vision_keys(writer, vc, image_size=vc.image_size, merge=vc.merge)
    writer.add_vision_use_gelu(True)
    # written for Qwen3.5 too (every block False), as llama.cpp's converter does
    writer.add_vision_is_deepstack_layers([i in vc.deepstack for i in range(vc.depth)])
