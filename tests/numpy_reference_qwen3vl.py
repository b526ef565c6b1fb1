"""An independent float64 numpy forward pass of Qwen3-VL: image -> vision tower (learned positions
resized bilinearly, 2-D rotary, LayerNorm blocks, GELU MLP) -> patch merger and DeepStack mergers,
and the Qwen3 language model over text + image embeddings with interleaved M-RoPE, the DeepStack
embeddings added to the hidden states of the image tokens after the first layers.

Written from transformers' ``modeling_qwen3_vl`` (``Qwen3VLVisionModel.fast_pos_embed_interpolate``,
``rot_pos_emb``, ``Qwen3VLVisionPatchMerger``, ``Qwen3VLTextRotaryEmbedding.apply_interleaved_mrope``,
``Qwen3VLTextModel._deepstack_process``), sharing no code with the converter or llama.cpp. The image
processor part (rescale, normalize, patches in 2x2 merge-block order) is Qwen2-VL's, from
:mod:`numpy_reference_vision`; images whose sides are multiples of patch x merge are not resized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy_reference import linear, rms_norm, silu, softmax
from numpy_reference_vision import (
    VisionSpec,
    flatten_patches,
    gelu_erf,
    layer_norm,
    load_checkpoint,
    rotate_half,
    vision_attention,
    vision_rotary,
)

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class ImageFeatures:
    """What the vision tower hands the language model for one image, rows in raster order of the
    merged grid: the merger's embeddings and one array per DeepStack merger."""

    embeddings: np.ndarray
    deepstack: list[np.ndarray]

    def concatenated(self) -> np.ndarray:
        """Each token's embedding followed by its DeepStack ones: what llama.cpp's mtmd returns."""
        return np.concatenate([self.embeddings, *self.deepstack], axis=1)


def vision_spec(folder: Path, cfg: dict[str, Any]) -> VisionSpec:
    import json

    v = cfg["vision_config"]
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    return VisionSpec(
        qwen25=False,
        width=v["hidden_size"],
        n_head=v["num_heads"],
        depth=v["depth"],
        patch=v["patch_size"],
        merge=v["spatial_merge_size"],
        temporal=v["temporal_patch_size"],
        window=0,
        full_blocks=tuple(range(v["depth"])),
        mean=np.asarray(pre["image_mean"], dtype=np.float64),
        std=np.asarray(pre["image_std"], dtype=np.float64),
    )


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """transformers' ``gelu_pytorch_tanh``."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def position_table(table: np.ndarray, grid: tuple[int, int], merge: int) -> np.ndarray:
    """fast_pos_embed_interpolate: the square table bilinearly sampled at ``linspace(0, side-1, n)``
    rows and columns (corners aligned), then put in merge-block order like the patches."""
    side = int(round(np.sqrt(table.shape[0])))
    gh, gw = grid
    grid_table = table.reshape(side, side, -1)

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.linspace(0, side - 1, n)
        lo = pos.astype(np.int64)
        return lo, np.minimum(lo + 1, side - 1), pos - lo

    h0, h1, dh = axis(gh)
    w0, w1, dw = axis(gw)
    out = (
        grid_table[h0][:, w0] * ((1 - dh)[:, None] * (1 - dw)[None])[..., None]
        + grid_table[h0][:, w1] * ((1 - dh)[:, None] * dw[None])[..., None]
        + grid_table[h1][:, w0] * (dh[:, None] * (1 - dw)[None])[..., None]
        + grid_table[h1][:, w1] * (dh[:, None] * dw[None])[..., None]
    )  # [gh, gw, width], raster order
    m = merge
    out = out.reshape(gh // m, m, gw // m, m, -1).transpose(0, 2, 1, 3, 4)
    return out.reshape(gh * gw, -1)


def merger(x: np.ndarray, w: Weights, p: str, per: int, *, after_shuffle: bool) -> np.ndarray:
    """Qwen3VLVisionPatchMerger: LayerNorm before (merger) or after (DeepStack) the 2x2 shuffle."""
    n, width = x.shape
    if after_shuffle:
        x = layer_norm(x.reshape(n // per, per * width), w[f"{p}.norm.weight"], w[f"{p}.norm.bias"], 1e-6)
    else:
        x = layer_norm(x, w[f"{p}.norm.weight"], w[f"{p}.norm.bias"], 1e-6).reshape(n // per, per * width)
    return linear(gelu_erf(linear(x, w, f"{p}.linear_fc1", bias=True)), w, f"{p}.linear_fc2", bias=True)


def image_features(folder: str | os.PathLike[str], image: np.ndarray) -> ImageFeatures:
    """float64 features of ``image`` (uint8 [H, W, 3]) as transformers' get_image_features returns them."""
    root = Path(folder)
    cfg, w = load_checkpoint(root)
    s = vision_spec(root, cfg)
    v = cfg["vision_config"]
    pixels, grid = flatten_patches(image, s)
    x = (
        pixels @ w["visual.patch_embed.proj.weight"].reshape(s.width, -1).T
        + w["visual.patch_embed.proj.bias"]
    )
    x = x + position_table(w["visual.pos_embed.weight"], grid, s.merge)
    angles = vision_rotary(grid, s)
    emb = np.concatenate([angles, angles], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    n, per = x.shape[0], s.merge**2
    deepstack: list[np.ndarray] = []
    indexes = list(v.get("deepstack_visual_indexes") or [])
    for i in range(s.depth):
        p = f"visual.blocks.{i}"
        h = layer_norm(x, w[f"{p}.norm1.weight"], w[f"{p}.norm1.bias"], 1e-6)
        x = x + vision_attention(h, w, f"{p}.attn", s, cos, sin, [0, n])
        h = layer_norm(x, w[f"{p}.norm2.weight"], w[f"{p}.norm2.bias"], 1e-6)
        x = x + linear(
            gelu_tanh(linear(h, w, f"{p}.mlp.linear_fc1", bias=True)), w, f"{p}.mlp.linear_fc2", True
        )
        if i in indexes:
            j = indexes.index(i)
            deepstack.append(merger(x, w, f"visual.deepstack_merger_list.{j}", per, after_shuffle=True))
    return ImageFeatures(merger(x, w, "visual.merger", per, after_shuffle=False), deepstack)


# --- language model -----------------------------------------------------------------------------


def interleaved_sections(sections: list[int], half: int) -> np.ndarray:
    """apply_interleaved_mrope: which position row (0 = t, 1 = h, 2 = w) each of the ``half``
    frequencies takes: h at 1, 4, 7… and w at 2, 5, 8… within their section's reach, t elsewhere."""
    which = np.zeros(half, dtype=np.int64)
    for dim, offset in ((1, 1), (2, 2)):
        which[offset : sections[dim] * 3 : 3] = dim
    return which


def text_rope(cfg: dict[str, Any]) -> tuple[list[int], float]:
    t = cfg["text_config"]
    params = t.get("rope_parameters") or {}
    scaling = t.get("rope_scaling") or params
    theta = params.get("rope_theta", t.get("rope_theta"))
    return list(scaling["mrope_section"]), float(theta)


def imrope(x: np.ndarray, positions: np.ndarray, sections: list[int], theta: float) -> np.ndarray:
    d = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    which = interleaved_sections(sections, d // 2)
    angles = positions[which].T * inv_freq[None]  # [n, d/2]
    emb = np.concatenate([angles, angles], axis=-1)[:, None]
    return x * np.cos(emb) + rotate_half(x) * np.sin(emb)


def packed_moe(h: np.ndarray, w: Weights, p: str, top_k: int) -> np.ndarray:
    """Qwen3VLMoeTextSparseMoeBlock: softmax router, top k renormalized, experts packed as the
    checkpoint stores them (``gate_up_proj`` [E, hidden, 2 x ff], ``down_proj`` [E, ff, hidden])."""
    probs = softmax(h @ w[f"{p}.gate.weight"].T)
    gate_up, down = w[f"{p}.experts.gate_up_proj"], w[f"{p}.experts.down_proj"]
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-probs[t], kind="stable")[:top_k]
        weights = probs[t, top] / probs[t, top].sum()
        for e, g in zip(top, weights, strict=True):
            gate, up = np.split(h[t] @ gate_up[e], 2)
            out[t] += g * ((silu(gate) * up) @ down[e])
    return out


def lm_logits(
    folder: str | os.PathLike[str],
    embeddings: np.ndarray,
    positions: np.ndarray,
    deepstack: list[np.ndarray] | None = None,
    visual: np.ndarray | None = None,
) -> np.ndarray:
    """float64 logits [n, vocab] of the language model over input embeddings at M-RoPE positions
    [3, n]; ``deepstack[i]`` is added to rows ``visual`` after layer ``i``."""
    cfg, w = load_checkpoint(folder)
    t = cfg["text_config"]
    n_head, n_kv, hd, eps = (
        t["num_attention_heads"],
        t["num_key_value_heads"],
        t["head_dim"],
        t["rms_norm_eps"],
    )
    sections, theta = text_rope(cfg)
    n = embeddings.shape[0]
    x = embeddings.copy()
    for i in range(t["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = rms_norm(x, w[f"{p}.input_layernorm.weight"], eps)
        q = linear(h, w, f"{p}.self_attn.q_proj").reshape(n, n_head, hd)
        k = linear(h, w, f"{p}.self_attn.k_proj").reshape(n, n_kv, hd)
        v = linear(h, w, f"{p}.self_attn.v_proj").reshape(n, n_kv, hd)
        q = imrope(rms_norm(q, w[f"{p}.self_attn.q_norm.weight"], eps), positions, sections, theta)
        k = imrope(rms_norm(k, w[f"{p}.self_attn.k_norm.weight"], eps), positions, sections, theta)
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        scores = q.transpose(1, 0, 2) @ k.transpose(1, 2, 0) / np.sqrt(hd)
        scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
        attn = (softmax(scores) @ v.transpose(1, 0, 2)).transpose(1, 0, 2).reshape(n, n_head * hd)
        x = x + linear(attn, w, f"{p}.self_attn.o_proj")
        h = rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        if f"{p}.mlp.gate.weight" in w:  # Qwen3-VL-MoE
            x = x + packed_moe(h, w, f"{p}.mlp", t["num_experts_per_tok"])
        else:
            gate, up = linear(h, w, f"{p}.mlp.gate_proj"), linear(h, w, f"{p}.mlp.up_proj")
            x = x + linear(silu(gate) * up, w, f"{p}.mlp.down_proj")
        if deepstack is not None and visual is not None and i < len(deepstack):
            x[visual] += deepstack[i]
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T
