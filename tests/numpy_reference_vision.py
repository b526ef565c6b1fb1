"""An independent float64 numpy forward pass of Qwen2-VL / Qwen2.5-VL: image -> vision tower ->
patch merger -> image embeddings, and the language model over text + image embeddings with M-RoPE.

It reads the Hugging Face folder directly (config.json, preprocessor_config.json, safetensors) and
follows transformers' modeling_qwen2_vl / modeling_qwen2_5_vl and Qwen2VLImageProcessor — patch
flattening, 2-D vision rotary embedding, window attention with ``get_window_index``, the merger,
``get_rope_index`` — so the converted text GGUF + mmproj, run by llama.cpp's mtmd, can be checked
against something that shares no code with the converter. Only images whose sides are multiples
of patch x merge (28) are handled: those are the ones neither side resizes.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy_reference import linear, rms_norm, silu, softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from make_tiny_checkpoints import read_checkpoint  # noqa: E402

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class VisionSpec:
    qwen25: bool
    width: int
    n_head: int
    depth: int
    patch: int
    merge: int
    temporal: int
    window: int
    full_blocks: tuple[int, ...]
    mean: np.ndarray
    std: np.ndarray

    @property
    def head_dim(self) -> int:
        return self.width // self.n_head


def load_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], Weights]:
    """(config.json, weights) with tensor names in the hub layout (``model.layers.*``, ``visual.*``).

    Cached per folder (tests call the reference many times): treat the result as read-only.
    """
    return _load(str(Path(folder).resolve()))


@functools.lru_cache(maxsize=4)
def _load(folder: str) -> tuple[dict[str, Any], Weights]:
    root = Path(folder)
    cfg = json.loads((root / "config.json").read_text())
    weights: Weights = {}
    for name, t in read_checkpoint(root).items():
        if name.startswith("model.visual."):
            name = name[len("model.") :]
        elif name.startswith("model.language_model."):
            name = "model." + name[len("model.language_model.") :]
        elif name.startswith("language_model."):  # Qwen2-Audio
            name = name[len("language_model.") :]
        weights[name] = t.astype(np.float64)
    return cfg, weights


def vision_spec(folder: Path, cfg: dict[str, Any]) -> VisionSpec:
    v = cfg["vision_config"]
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    qwen25 = cfg["model_type"] == "qwen2_5_vl"
    return VisionSpec(
        qwen25=qwen25,
        width=v["hidden_size"] if qwen25 else v["embed_dim"],
        n_head=v["num_heads"],
        depth=v["depth"],
        patch=v["patch_size"],
        merge=v["spatial_merge_size"],
        temporal=v["temporal_patch_size"],
        window=v.get("window_size", 0),
        full_blocks=tuple(v.get("fullatt_block_indexes", range(v["depth"]))),
        mean=np.asarray(pre["image_mean"], dtype=np.float64),
        std=np.asarray(pre["image_std"], dtype=np.float64),
    )


# --- image processor --------------------------------------------------------------------------


def flatten_patches(image: np.ndarray, s: VisionSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 [H, W, 3] -> (pixel rows [N, C*T*P*P] in merge-block order, (grid_h, grid_w))."""
    h, w, c = image.shape
    if h % (s.patch * s.merge) or w % (s.patch * s.merge):
        raise ValueError(f"reference handles sides that are multiples of {s.patch * s.merge}, got {w}x{h}")
    x = (image.astype(np.float64) / 255.0 - s.mean) / s.std  # rescale, then normalize
    x = np.tile(x.transpose(2, 0, 1)[None], (s.temporal, 1, 1, 1))  # a still image: T identical frames
    gh, gw, m, p = h // s.patch, w // s.patch, s.merge, s.patch
    x = x.reshape(1, s.temporal, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, bh, bw, mh, mw, C, T, p, p)
    return x.reshape(gh * gw, c * s.temporal * p * p), (gh, gw)


# --- vision tower -----------------------------------------------------------------------------


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def vision_norm(x: np.ndarray, w: Weights, name: str, s: VisionSpec) -> np.ndarray:
    if s.qwen25:
        return rms_norm(x, w[f"{name}.weight"], 1e-6)
    return layer_norm(x, w[f"{name}.weight"], w[f"{name}.bias"], 1e-6)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def vision_rotary(grid: tuple[int, int], s: VisionSpec) -> np.ndarray:
    """Angles [N, head_dim/2] in merge-block order: height frequencies, then width frequencies."""
    gh, gw, m = grid[0], grid[1], s.merge
    dim = s.head_dim // 2
    inv_freq = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    hpos = np.broadcast_to(np.arange(gh)[:, None], (gh, gw))
    wpos = np.broadcast_to(np.arange(gw)[None, :], (gh, gw))

    def blocks(pos: np.ndarray) -> np.ndarray:
        return pos.reshape(gh // m, m, gw // m, m).transpose(0, 2, 1, 3).reshape(-1)

    return np.concatenate(
        [blocks(hpos)[:, None] * inv_freq[None], blocks(wpos)[:, None] * inv_freq[None]], axis=-1
    )


def window_index(grid: tuple[int, int], s: VisionSpec) -> tuple[np.ndarray, list[int]]:
    """transformers' get_window_index: merged-token order grouped by window, and window boundaries."""
    lh, lw = grid[0] // s.merge, grid[1] // s.merge
    ws = s.window // s.merge // s.patch
    index = np.arange(lh * lw).reshape(lh, lw)
    pad_h, pad_w = ws - lh % ws, ws - lw % ws
    padded = np.full((lh + pad_h, lw + pad_w), -100)
    padded[:lh, :lw] = index
    nh, nw = (lh + pad_h) // ws, (lw + pad_w) // ws
    padded = padded.reshape(nh, ws, nw, ws).transpose(0, 2, 1, 3).reshape(nh * nw, ws * ws)
    seqlens = (padded != -100).sum(axis=1)
    flat = padded.reshape(-1)
    bounds = [0, *(np.cumsum(seqlens) * s.merge**2).tolist()]
    return flat[flat != -100], sorted(set(bounds))


def vision_attention(x: np.ndarray, w: Weights, p: str, s: VisionSpec, cos, sin, bounds) -> np.ndarray:
    n, hd = x.shape[0], s.head_dim
    qkv = linear(x, w, f"{p}.qkv", bias=True).reshape(n, 3, s.n_head, hd)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    q = q * cos[:, None] + rotate_half(q) * sin[:, None]
    k = k * cos[:, None] + rotate_half(k) * sin[:, None]
    out = np.zeros_like(q)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # attention only inside each span
        scores = np.einsum("qhd,khd->hqk", q[a:b], k[a:b]) / np.sqrt(hd)
        out[a:b] = np.einsum("hqk,khd->qhd", softmax(scores), v[a:b])
    return linear(out.reshape(n, s.width), w, f"{p}.proj", bias=True)


def vision_mlp(x: np.ndarray, w: Weights, p: str, s: VisionSpec) -> np.ndarray:
    if s.qwen25:  # SwiGLU with biases
        gate = silu(linear(x, w, f"{p}.gate_proj", bias=True))
        return linear(gate * linear(x, w, f"{p}.up_proj", bias=True), w, f"{p}.down_proj", bias=True)
    h = linear(x, w, f"{p}.fc1", bias=True)
    return linear(h / (1.0 + np.exp(-1.702 * h)), w, f"{p}.fc2", bias=True)  # quick_gelu


def image_embeddings(
    folder: str | os.PathLike[str], image: np.ndarray, *, full_attention: bool = False
) -> np.ndarray:
    """float64 [n_image_tokens, lm_hidden] the merger produces for ``image`` (uint8 [H, W, 3]), in
    raster order of the merged grid, as transformers' ``get_image_features`` returns them.

    ``full_attention`` ignores 2.5-VL's windows (for tests that check the windows matter).
    """
    root = Path(folder)
    cfg, w = load_checkpoint(root)
    s = vision_spec(root, cfg)
    pixels, grid = flatten_patches(image, s)
    x = pixels @ w["visual.patch_embed.proj.weight"].reshape(s.width, -1).T  # Conv3d, stride = kernel
    angles = vision_rotary(grid, s)
    n, per = x.shape[0], s.merge**2
    full = [0, n]
    windows = full
    order = np.arange(n // per)
    if s.qwen25 and not full_attention:
        order, windows = window_index(grid, s)
    x = x.reshape(n // per, per, -1)[order].reshape(n, -1)
    angles = angles.reshape(n // per, per, -1)[order].reshape(n, -1)
    emb = np.concatenate([angles, angles], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    for i in range(s.depth):
        p = f"visual.blocks.{i}"
        bounds = full if (not s.qwen25 or i in s.full_blocks) else windows
        x = x + vision_attention(vision_norm(x, w, f"{p}.norm1", s), w, f"{p}.attn", s, cos, sin, bounds)
        x = x + vision_mlp(vision_norm(x, w, f"{p}.norm2", s), w, f"{p}.mlp", s)
    x = vision_norm(x, w, "visual.merger.ln_q", s).reshape(n // per, per * s.width)
    x = linear(gelu_erf(linear(x, w, "visual.merger.mlp.0", bias=True)), w, "visual.merger.mlp.2", bias=True)
    return x[np.argsort(order)]


# --- language model with M-RoPE -----------------------------------------------------------------


def mrope_positions(n_before: int, grid_tokens: tuple[int, int], n_after: int) -> np.ndarray:
    """transformers' get_rope_index for text, one image of (rows, cols) merged tokens, text: [3, n]."""
    rows, cols = grid_tokens
    before = np.tile(np.arange(n_before), (3, 1))
    img = np.stack(
        [
            np.full(rows * cols, n_before),
            n_before + np.repeat(np.arange(rows), cols),
            n_before + np.tile(np.arange(cols), rows),
        ]
    )
    start = img.max() + 1
    after = np.tile(start + np.arange(n_after), (3, 1))
    return np.concatenate([before, img, after], axis=1)


def mrope(x: np.ndarray, positions: np.ndarray, sections: list[int], theta: float) -> np.ndarray:
    """apply_multimodal_rotary_pos_emb: frequency j uses the t, h or w position its section names."""
    d = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    which = np.repeat(np.arange(len(sections)), sections)  # [d/2]: 0 = t, 1 = h, 2 = w
    angles = positions[which].T * inv_freq[None]  # [n, d/2]
    emb = np.concatenate([angles, angles], axis=-1)[:, None]
    return x * np.cos(emb) + rotate_half(x) * np.sin(emb)


def lm_logits(
    folder: str | os.PathLike[str], embeddings: np.ndarray, positions: np.ndarray, n_last: int | None = None
) -> np.ndarray:
    """float64 logits [n, vocab] (or of the last ``n_last`` rows) of the language model over input
    embeddings at M-RoPE positions [3, n]. Without ``mrope_section`` (Qwen2-Audio's plain Qwen2)
    every frequency takes the first row, which is ordinary RoPE."""
    cfg, w = load_checkpoint(folder)
    t = cfg.get("text_config") or cfg
    n_head, n_kv = t["num_attention_heads"], t["num_key_value_heads"]
    hd, eps, n = t["hidden_size"] // n_head, t["rms_norm_eps"], embeddings.shape[0]
    sections = (t.get("rope_scaling") or {}).get("mrope_section") or [hd // 2, 0, 0]
    theta = t.get("rope_theta", 10000.0)  # Qwen2Config's default
    x = embeddings
    for i in range(t["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = rms_norm(x, w[f"{p}.input_layernorm.weight"], eps)
        q = mrope(
            linear(h, w, f"{p}.self_attn.q_proj", True).reshape(n, n_head, hd), positions, sections, theta
        )
        k = mrope(
            linear(h, w, f"{p}.self_attn.k_proj", True).reshape(n, n_kv, hd), positions, sections, theta
        )
        v = linear(h, w, f"{p}.self_attn.v_proj", True).reshape(n, n_kv, hd)
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        scores = q.transpose(1, 0, 2) @ k.transpose(1, 2, 0) / np.sqrt(hd)  # [heads, q, k]
        scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
        attn = (softmax(scores) @ v.transpose(1, 0, 2)).transpose(1, 0, 2).reshape(n, n_head * hd)
        x = x + linear(attn, w, f"{p}.self_attn.o_proj")
        h = rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        x = x + linear(
            silu(linear(h, w, f"{p}.mlp.gate_proj")) * linear(h, w, f"{p}.mlp.up_proj"),
            w,
            f"{p}.mlp.down_proj",
        )
    x = rms_norm(x[-(n_last or n) :], w["model.norm.weight"], eps)
    tied = cfg.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
    head = w["model.embed_tokens.weight"] if tied else w["lm_head.weight"]
    return x @ head.T


def token_embeddings(folder: str | os.PathLike[str], token_ids: list[int]) -> np.ndarray:
    _, w = load_checkpoint(folder)
    return w["model.embed_tokens.weight"][np.asarray(token_ids, dtype=np.int64)]
