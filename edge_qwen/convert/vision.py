"""Qwen2-VL / Qwen2.5-VL checkpoints: what llama.cpp's clip loader needs to know about the vision tower.

A VL checkpoint is two models in one folder. The language model becomes a ``qwen2vl`` GGUF through
the text converter (M-RoPE sections in ``rope.dimension_sections``); the vision tower and patch
merger become an mmproj GGUF (:mod:`.mmproj`). This module reads and checks the vision side of
``config.json`` and ``preprocessor_config.json`` and splits the checkpoint's tensors between the two.

llama.cpp's graph for these projectors hard-codes part of the layout (temporal patch 2, merge 2,
a 112-pixel attention window for 2.5-VL, window layers on a regular pattern); a checkpoint that
differs is refused here rather than converted into a model that computes something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gguf

from ..errors import CheckpointError
from .config_bounds import read_object
from .safetensors import TensorRef

# Hugging Face vision families -> (projector type, activation of the ViT MLP)
FAMILIES: dict[str, tuple[str, str]] = {
    "qwen2_vl": (gguf.VisionProjectorType.QWEN2VL, "quick_gelu"),  # LayerNorm, fc1/fc2 MLP
    "qwen2_5_vl": (gguf.VisionProjectorType.QWEN25VL, "silu"),  # RMSNorm, SwiGLU MLP, windows
}
# Fixed in clip.cpp's qwen2vl graph and preprocessing.
CLIP_MERGE, CLIP_TEMPORAL, CLIP_WINDOW = 2, 2, 112
# The clip loader requires clip.vision.image_size; Qwen-VL has no fixed size (images are resized
# to multiples of patch x merge within a pixel budget), so this is only the nominal value llama.cpp
# itself writes for these models.
NOMINAL_IMAGE_SIZE = 560
VISION_EPS = 1e-6  # transformers hard-codes eps=1e-6 for the ViT's and merger's norms


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower of a Qwen-VL checkpoint, as the mmproj GGUF describes it."""

    model_type: str
    projector: str
    width: int
    n_ff: int
    n_head: int
    depth: int
    patch: int
    out_dim: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    n_wa_pattern: int = 0  # 2.5-VL: every n-th block attends to the whole image
    window: int = 0

    @property
    def qwen25(self) -> bool:
        return self.model_type == "qwen2_5_vl"


def load_vision_config(folder: Path, raw: dict[str, Any], n_embd_text: int) -> VisionConfig:
    """Read ``vision_config`` and ``preprocessor_config.json``; refuse what clip.cpp cannot run.

    Raises:
        CheckpointError: a missing file or key, or a layout llama.cpp's Qwen-VL graph does not have.
    """
    model_type = str(raw.get("model_type", ""))
    v = raw.get("vision_config")
    if model_type not in FAMILIES or not isinstance(v, dict):
        raise CheckpointError(f"{folder}/config.json: a Qwen-VL config needs model_type and vision_config")
    projector, act = FAMILIES[model_type]
    qwen25 = model_type == "qwen2_5_vl"

    def need(key: str) -> Any:
        if key not in v:
            raise CheckpointError(
                f"{folder}/config.json: vision_config lacks {key!r}; the checkpoint is incomplete"
            )
        return v[key]

    width, depth = int(need("hidden_size" if qwen25 else "embed_dim")), int(need("depth"))
    mean, std = preprocessor_stats(folder)
    n_wa_pattern, window = _window_layout(folder, v, depth) if qwen25 else (0, 0)
    cfg = VisionConfig(
        model_type=model_type,
        projector=projector,
        width=width,
        n_ff=int(need("intermediate_size")) if qwen25 else width * int(need("mlp_ratio")),
        n_head=int(need("num_heads")),
        depth=depth,
        patch=int(need("patch_size")),
        out_dim=int(need("out_hidden_size" if qwen25 else "hidden_size")),
        image_mean=mean,
        image_std=std,
        n_wa_pattern=n_wa_pattern,
        window=window,
    )
    _check_layout(folder, v, cfg, act, n_embd_text)
    return cfg


def preprocessor_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: no preprocessor_config.json; a Qwen-VL checkpoint ships one (image mean/std). "
            "Download it with the weights."
        )
    pre = read_object(path)
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in mean + std
    ):
        raise CheckpointError(f"{path}: image_mean and image_std must be lists of 3 numbers")
    return tuple(map(float, mean)), tuple(map(float, std))


def _window_layout(folder: Path, v: dict[str, Any], depth: int) -> tuple[int, int]:
    """2.5-VL's full-attention blocks as llama.cpp's single period ``n_wa_pattern``; the window."""
    full = v.get("fullatt_block_indexes")
    if not full:
        raise CheckpointError(f"{folder}/config.json: Qwen2.5-VL vision_config needs fullatt_block_indexes")
    period = int(full[0]) + 1
    if sorted(full) != [i for i in range(depth) if (i + 1) % period == 0]:
        raise CheckpointError(
            f"{folder}/config.json: fullatt_block_indexes {full} are not every {period}-th block; "
            "llama.cpp's Qwen2.5-VL graph only expresses a regular pattern"
        )
    return period, int(v.get("window_size", CLIP_WINDOW))


def _check_layout(folder: Path, v: dict[str, Any], cfg: VisionConfig, act: str, n_embd_text: int) -> None:
    fixed = {
        "spatial_merge_size": (int(v.get("spatial_merge_size", CLIP_MERGE)), CLIP_MERGE),
        "temporal_patch_size": (int(v.get("temporal_patch_size", CLIP_TEMPORAL)), CLIP_TEMPORAL),
        "in_chans": (int(v.get("in_chans", v.get("in_channels", 3))), 3),
        "hidden_act": (v.get("hidden_act", act), act),
    }
    if cfg.qwen25:
        fixed["window_size"] = (cfg.window, CLIP_WINDOW)
    for key, (have, want) in fixed.items():
        if have != want:
            raise CheckpointError(
                f"{folder}/config.json: vision_config {key}={have!r}, but llama.cpp's {cfg.model_type} "
                f"vision graph is built for {want!r}; the converted projector would compute something else"
            )
    if cfg.width % cfg.n_head or (cfg.width // cfg.n_head) % 4:
        raise CheckpointError(
            f"{folder}/config.json: vision head size {cfg.width}/{cfg.n_head} must be a multiple of 4 "
            "(2-D rotary embedding over height and width)"
        )
    if cfg.out_dim != n_embd_text:
        raise CheckpointError(
            f"{folder}/config.json: the merger outputs {cfg.out_dim} values per token but the language "
            f"model's hidden size is {n_embd_text}; config.json mixes two models"
        )


# transformers' Qwen3VLTextRotaryEmbedding when rope_scaling names no sections (head_dim 128)
QWEN3VL_DEFAULT_SECTIONS = [24, 20, 20]


def mrope_sections(
    folder: Path, raw: dict[str, Any], head_dim: int, *, interleaved: bool = False
) -> tuple[int, int, int, int]:
    """``rope_scaling.mrope_section`` (temporal, height, width), padded to llama.cpp's four.

    ``interleaved``: Qwen3-VL, whose frequencies alternate t/h/w (llama.cpp's qwen3vl graph always
    does); a config that says ``mrope_interleaved: false`` is refused, and with no sections the
    model's default applies where it fits the head size.
    """
    scaling = raw.get("rope_scaling") or {}
    sections = list(scaling.get("mrope_section") or [])
    if interleaved:
        if scaling.get("mrope_interleaved") is False:
            raise CheckpointError(
                f"{folder}/config.json: rope_scaling.mrope_interleaved is false, but llama.cpp's Qwen3-VL "
                "graph interleaves the M-RoPE sections; the converted model would compute something else"
            )
        if not sections and sum(QWEN3VL_DEFAULT_SECTIONS) == head_dim // 2:
            sections = list(QWEN3VL_DEFAULT_SECTIONS)
    if len(sections) != 3 or sum(sections) != head_dim // 2:
        raise CheckpointError(
            f"{folder}/config.json: rope_scaling.mrope_section {sections} must be three sizes summing to "
            f"head_dim/2 = {head_dim // 2} (Qwen-VL's temporal/height/width M-RoPE split)"
        )
    return (int(sections[0]), int(sections[1]), int(sections[2]), 0)


# checkpoint prefix -> hub-layout prefix, and the prefixes that belong to the mmproj
_RENAMES = (
    ("model.visual.", "visual."),
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),  # Qwen2-Audio
    ("language_model.lm_head.", "lm_head."),
)
MEDIA_PREFIXES = ("visual.", "audio_tower.", "multi_modal_projector.")


def split_checkpoint(refs: dict[str, TensorRef]) -> tuple[dict[str, TensorRef], dict[str, TensorRef]]:
    """(language-model tensors, vision / audio tensors), both named in the hub layout.

    transformers >= 4.52 saves ``model.language_model.*`` and ``model.visual.*``; the hub releases
    use ``model.*`` and ``visual.*`` (Qwen2-Audio: ``language_model.model.*``, ``audio_tower.*``).
    All become ``model.*`` / ``lm_head.*`` and the media prefixes, which gguf-py's name maps know.
    """
    text: dict[str, TensorRef] = {}
    media: dict[str, TensorRef] = {}
    for name, ref in refs.items():
        for old, new in _RENAMES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        (media if name.startswith(MEDIA_PREFIXES) else text)[name] = ref
    return text, media


class TowerShape(Protocol):
    """What every Qwen-VL vision config (:class:`VisionConfig`, ``vision_qwen3.Qwen3VisionConfig``) has."""

    @property
    def projector(self) -> str: ...
    @property
    def out_dim(self) -> int: ...
    @property
    def patch(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def n_ff(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def n_head(self) -> int: ...
    @property
    def image_mean(self) -> tuple[float, ...]: ...
    @property
    def image_std(self) -> tuple[float, ...]: ...


def add_vision_keys(writer: gguf.GGUFWriter, vc: TowerShape, *, image_size: int, merge: int) -> None:
    """The keys clip.cpp reads for every Qwen-VL projector (through gguf-py's helpers)."""
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(vc.projector)
    writer.add_vision_projection_dim(vc.out_dim)
    writer.add_vision_image_size(image_size)
    writer.add_vision_patch_size(vc.patch)
    writer.add_vision_embedding_length(vc.width)
    writer.add_vision_feed_forward_length(vc.n_ff)
    writer.add_vision_block_count(vc.depth)
    writer.add_vision_head_count(vc.n_head)
    writer.add_vision_attention_layernorm_eps(VISION_EPS)
    writer.add_vision_image_mean(list(vc.image_mean))
    writer.add_vision_image_std(list(vc.image_std))
    writer.add_vision_spatial_merge_size(merge)
