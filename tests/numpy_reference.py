"""An independent float64 numpy forward pass of Qwen2 / Qwen3 / Qwen2-MoE / Qwen3-MoE checkpoints.

It reads the Hugging Face folder directly (config.json + safetensors) and follows the semantics of
transformers' modeling_qwen2 / qwen3 / qwen2_moe / qwen3_moe, so the converter's GGUF, run by
llama.cpp, can be checked against something that shares no code with it.

Written for clarity, not speed: tiny checkpoints and a few dozen tokens.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from make_tiny_checkpoints import read_checkpoint, read_safetensors  # noqa: E402

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Spec:
    """What transformers does for one architecture, read from config.json with its defaults."""

    n_layer: int
    n_head: int
    n_kv: int
    head_dim: int
    eps: float
    theta: float
    qkv_bias: bool
    qk_norm: bool
    moe: bool
    shared_expert: bool
    n_expert_used: int
    norm_topk: bool
    tied: bool


def _rope_theta(cfg: dict[str, Any]) -> float:
    """The rope base as transformers 4 (``rope_theta``) or 5 (``rope_parameters``) saves it; both
    versions write it even at its default, so a config without one is an error here."""
    if cfg.get("rope_theta") is not None:
        return float(cfg["rope_theta"])
    return float(cfg["rope_parameters"]["rope_theta"])


def load_spec(cfg: dict[str, Any]) -> Spec:
    arch = cfg["architectures"][0]
    n_head = cfg["num_attention_heads"]
    qwen3 = arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
    moe = arch in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")
    if arch == "Qwen2ForCausalLM":
        qkv_bias = True  # Qwen2Attention: q/k/v always carry a bias
    elif arch == "Qwen2MoeForCausalLM":
        qkv_bias = bool(cfg.get("qkv_bias", True))
    elif qwen3:
        qkv_bias = bool(cfg.get("attention_bias", False))
    else:
        raise ValueError(f"numpy_reference does not know {arch}")
    return Spec(
        n_layer=cfg["num_hidden_layers"],
        n_head=n_head,
        n_kv=cfg.get("num_key_value_heads") or n_head,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_head,
        eps=cfg["rms_norm_eps"],
        theta=_rope_theta(cfg),
        qkv_bias=qkv_bias,
        qk_norm=qwen3,
        moe=moe,
        shared_expert=arch == "Qwen2MoeForCausalLM",
        n_expert_used=cfg.get("num_experts_per_tok", 0),
        norm_topk=bool(cfg.get("norm_topk_prob", False)),  # transformers' default for both MoE configs
        tied=bool(cfg.get("tie_word_embeddings", False)),
    )


# --- building blocks --------------------------------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Normalize over the last axis, then scale (no bias, no mean subtraction)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def rope(x: np.ndarray, theta: float) -> np.ndarray:
    """NEOX-style rotary embedding of ``x`` [tokens, heads, head_dim]: rotate the two halves."""
    n, _, d = x.shape
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]  # [tokens, d/2]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * cos + rotated * sin


def linear(x: np.ndarray, w: Weights, name: str, bias: bool = False) -> np.ndarray:
    """``x @ W.T (+ b)`` with the Hugging Face [out, in] weight layout."""
    y = x @ w[f"{name}.weight"].T
    return y + w[f"{name}.bias"] if bias else y


def attention(h: np.ndarray, w: Weights, p: str, s: Spec) -> np.ndarray:
    n = h.shape[0]
    q = linear(h, w, f"{p}.q_proj", s.qkv_bias).reshape(n, s.n_head, s.head_dim)
    k = linear(h, w, f"{p}.k_proj", s.qkv_bias).reshape(n, s.n_kv, s.head_dim)
    v = linear(h, w, f"{p}.v_proj", s.qkv_bias).reshape(n, s.n_kv, s.head_dim)
    if s.qk_norm:  # Qwen3: per-head RMSNorm over head_dim, before RoPE
        q = rms_norm(q, w[f"{p}.q_norm.weight"], s.eps)
        k = rms_norm(k, w[f"{p}.k_norm.weight"], s.eps)
    q, k = rope(q, s.theta), rope(k, s.theta)
    group = s.n_head // s.n_kv  # GQA: query head i reads kv head i // group
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(s.head_dim)
    scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
    out = np.einsum("hqk,khd->qhd", softmax(scores), v).reshape(n, s.n_head * s.head_dim)
    return linear(out, w, f"{p}.o_proj")


def mlp(h: np.ndarray, w: Weights, p: str) -> np.ndarray:
    """SwiGLU: down(silu(gate(h)) * up(h))."""
    return linear(silu(linear(h, w, f"{p}.gate_proj")) * linear(h, w, f"{p}.up_proj"), w, f"{p}.down_proj")


def moe(h: np.ndarray, w: Weights, p: str, s: Spec) -> np.ndarray:
    """Softmax over all router logits, keep the top k, optionally renormalize, mix the experts."""
    probs = softmax(linear(h, w, f"{p}.gate"))
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-probs[t], kind="stable")[: s.n_expert_used]
        weights = probs[t, top]
        if s.norm_topk:
            weights = weights / weights.sum()
        for e, g in zip(top, weights, strict=True):
            out[t] += g * mlp(h[t : t + 1], w, f"{p}.experts.{e}")[0]
    if s.shared_expert:  # Qwen2-MoE: always-on expert behind a sigmoid gate
        gate = 1.0 / (1.0 + np.exp(-linear(h, w, f"{p}.shared_expert_gate")))
        out += gate * mlp(h, w, f"{p}.shared_expert")
    return out


def router_margins(checkpoint_dir: str | os.PathLike[str], token_ids: Sequence[int]) -> np.ndarray:
    """For MoE checkpoints: per layer and token, the gap between the k-th and (k+1)-th router probability.

    A tiny gap means another implementation may legitimately pick a different expert; tests use it
    to tell a routing tie from a converter bug.
    """
    margins: list[np.ndarray] = []
    _forward(Path(checkpoint_dir), token_ids, margins)
    return np.array(margins)


# --- the model --------------------------------------------------------------------------------


def _forward(
    folder: Path,
    token_ids: Sequence[int],
    margins: list[np.ndarray] | None = None,
    weights: Weights | None = None,
) -> np.ndarray:
    cfg = json.loads((folder / "config.json").read_text())
    s = load_spec(cfg)
    if weights is None:
        weights = {name: t.astype(np.float64) for name, t in read_checkpoint(folder).items()}
    w = weights
    x = w["model.embed_tokens.weight"][np.asarray(token_ids)]
    for i in range(s.n_layer):
        p = f"model.layers.{i}"
        x = x + attention(rms_norm(x, w[f"{p}.input_layernorm.weight"], s.eps), w, f"{p}.self_attn", s)
        h = rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], s.eps)
        if s.moe:
            if margins is not None:
                probs = np.sort(softmax(linear(h, w, f"{p}.mlp.gate")), axis=-1)[:, ::-1]
                margins.append(probs[:, s.n_expert_used - 1] - probs[:, s.n_expert_used])
            x = x + moe(h, w, f"{p}.mlp", s)
        else:
            x = x + mlp(h, w, f"{p}.mlp")
    x = rms_norm(x, w["model.norm.weight"], s.eps)
    head = w["model.embed_tokens.weight"] if s.tied else w["lm_head.weight"]
    return x @ head.T


def reference_logits(checkpoint_dir: str | os.PathLike[str], token_ids: Sequence[int]) -> np.ndarray:
    """float64 logits ``[len(token_ids), vocab_size]`` of the checkpoint, as transformers computes them
    (in exact arithmetic on the stored weights)."""
    return _forward(Path(checkpoint_dir), token_ids)


# --- LoRA -------------------------------------------------------------------------------------


def merge_lora(
    checkpoint_dir: str | os.PathLike[str], adapter_dir: str | os.PathLike[str], scale: float = 1.0
) -> Weights:
    """float64 weights of the checkpoint with a PEFT LoRA merged in: ``W + scale · s · B·A`` per module.

    ``s`` is PEFT's ``lora_alpha / r`` (``/ √r`` with ``use_rslora``), with ``rank_pattern`` and
    ``alpha_pattern`` overrides. PEFT resets ``fan_in_fan_out`` to False for ``nn.Linear`` targets
    (every Qwen projection), so the delta is ``B·A`` in the [out, in] layout either way.
    """
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    w = {name: t.astype(np.float64) for name, t in read_checkpoint(checkpoint_dir).items()}
    lora = read_safetensors(Path(adapter_dir) / "adapter_model.safetensors")
    prefix, suffix = "base_model.model.", ".lora_A.weight"
    for name in [n for n in lora if n.endswith(suffix)]:
        module = name[len(prefix) : -len(suffix)]
        a, b = lora[name].astype(np.float64), lora[f"{prefix}{module}.lora_B.weight"].astype(np.float64)
        r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
        s = alpha / np.sqrt(r) if cfg.get("use_rslora") else alpha / r
        w[f"{module}.weight"] = w[f"{module}.weight"] + scale * s * (b @ a)
    return w


def _pattern_value(patterns: dict[str, Any], module: str, default: float) -> float:
    for key, value in patterns.items():
        if key == module or re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return float(default)


def reference_logits_with_lora(
    checkpoint_dir: str | os.PathLike[str],
    adapter_dir: str | os.PathLike[str],
    token_ids: Sequence[int],
    scale: float = 1.0,
) -> np.ndarray:
    """float64 logits of the checkpoint with the adapter merged at ``scale`` (see :func:`merge_lora`)."""
    return _forward(Path(checkpoint_dir), token_ids, weights=merge_lora(checkpoint_dir, adapter_dir, scale))
