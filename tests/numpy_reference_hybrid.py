"""An independent float64 numpy forward pass of the hybrid Qwen families: Qwen3.5, Qwen3.5-MoE, Qwen3-Next.

Covers ``Qwen3_5ForCausalLM``, ``Qwen3_5MoeForCausalLM``, ``Qwen3NextForCausalLM`` and the text path of
``Qwen3_5(Moe)ForConditionalGeneration`` (tensors under ``model.language_model.*``, config under
``text_config``). Written from transformers 5.25's modeling_qwen3_5 / qwen3_5_moe / qwen3_next, not
from llama.cpp: Gated DeltaNet layers (causal conv, L2-normalised q/k, the gated delta rule run token
by token) interleaved with gated full attention (sigmoid output gate, partial NEOX rotary, q/k norm),
zero-centred RMSNorms (``x̂ · (1 + w)``), dense SwiGLU or softmax-top-k MoE with a gated shared expert.

Text-only M-RoPE: all three position streams equal the token index, so every rotary section turns by
the same angle and M-RoPE reduces to plain RoPE on the first ``head_dim · partial_rotary_factor`` dims.
Written for clarity, not speed: tiny checkpoints and a few dozen tokens.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_tiny_checkpoints import read_checkpoint  # noqa: E402
from numpy_reference import linear, mlp, rms_norm, silu, softmax  # noqa: E402

MRope = tuple[np.ndarray, list[int]]  # (positions [3, n], mrope_section)
Weights = dict[str, np.ndarray]

# architecture -> the model_type of its text config, whose config-class defaults apply
ARCHS = {
    "Qwen3_5ForCausalLM": "qwen3_5_text",
    "Qwen3_5ForConditionalGeneration": "qwen3_5_text",
    "Qwen3_5MoeForCausalLM": "qwen3_5_moe_text",
    "Qwen3_5MoeForConditionalGeneration": "qwen3_5_moe_text",
    "Qwen3NextForCausalLM": "qwen3_next",
}
# Defaults of Qwen3_5TextConfig / Qwen3_5MoeTextConfig / Qwen3NextConfig for keys a config.json may omit.
_COMMON_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 16,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "full_attention_interval": 4,  # only read when layer_types is absent
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen3_5_text": {"num_hidden_layers": 32, "num_key_value_heads": 4},
    "qwen3_5_moe_text": {"num_hidden_layers": 40, "num_key_value_heads": 2, "num_experts_per_tok": 8},
    "qwen3_next": {
        "num_hidden_layers": 48,
        "num_key_value_heads": 2,
        "num_experts": 512,
        "mlp_only_layers": [],
        "num_experts_per_tok": 10,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
    },
}
DEFAULT_THETA = 10_000.0  # RotaryEmbeddingConfigMixin.default_theta
DEFAULT_PARTIAL_ROTARY = 0.25  # the three config classes' __post_init__ default


@dataclass(frozen=True)
class Spec:
    """What transformers does for one checkpoint, read from config.json with the config classes' defaults."""

    layer_types: tuple[str, ...]  # "linear_attention" | "full_attention" per layer
    moe_layers: tuple[bool, ...]
    n_head: int
    n_kv: int
    head_dim: int
    rot_dim: int
    theta: float
    eps: float
    attn_bias: bool
    lin_k_heads: int
    lin_v_heads: int
    lin_dk: int
    lin_dv: int
    qkvz_fused: bool  # Qwen3-Next: one in_proj_qkvz / in_proj_ba, grouped per key head
    n_expert_used: int
    norm_topk: bool
    tied: bool


def _rope(text: dict[str, Any]) -> tuple[float, float]:
    """(theta, partial_rotary_factor) from transformers 5 ``rope_parameters`` or 4.x top-level keys /
    ``rope_scaling``; as in ``convert_rope_params_to_dict``, values inside the dict win."""
    params = text.get("rope_parameters") or text.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise NotImplementedError(f"numpy_reference_hybrid has no {rope_type!r} RoPE scaling")
    theta = params.get("rope_theta", text.get("rope_theta", DEFAULT_THETA))
    factor = params.get("partial_rotary_factor", text.get("partial_rotary_factor", DEFAULT_PARTIAL_ROTARY))
    return float(theta), float(factor)


def load_spec(cfg: dict[str, Any]) -> Spec:
    arch = cfg["architectures"][0]
    if arch not in ARCHS:
        raise ValueError(f"numpy_reference_hybrid does not know {arch}")
    model_type = ARCHS[arch]
    raw = cfg.get("text_config") or cfg  # *ForConditionalGeneration nests the text model's keys
    text = {**_COMMON_DEFAULTS, **_DEFAULTS[model_type], **{k: v for k, v in raw.items() if v is not None}}
    if text.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"hidden_act {text['hidden_act']!r}")
    n_layer = text["num_hidden_layers"]
    interval = text["full_attention_interval"]
    layer_types = tuple(
        text.get("layer_types")
        or ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n_layer)]
    )
    if model_type == "qwen3_next":  # Qwen3NextDecoderLayer: sparse unless listed in mlp_only_layers
        moe_layers = tuple(
            i not in text["mlp_only_layers"]
            and text["num_experts"] > 0
            and (i + 1) % text["decoder_sparse_step"] == 0
            for i in range(n_layer)
        )
    else:  # Qwen3.5-MoE: every layer sparse; Qwen3.5: every layer dense
        moe_layers = (model_type == "qwen3_5_moe_text",) * n_layer
    theta, factor = _rope(text)
    return Spec(
        layer_types=layer_types,
        moe_layers=moe_layers,
        n_head=text["num_attention_heads"],
        n_kv=text["num_key_value_heads"],
        head_dim=text["head_dim"],
        rot_dim=int(text["head_dim"] * factor),
        theta=theta,
        eps=text["rms_norm_eps"],
        attn_bias=bool(text["attention_bias"]),
        lin_k_heads=text["linear_num_key_heads"],
        lin_v_heads=text["linear_num_value_heads"],
        lin_dk=text["linear_key_head_dim"],
        lin_dv=text["linear_value_head_dim"],
        qkvz_fused=model_type == "qwen3_next",
        n_expert_used=text.get("num_experts_per_tok", 0),
        # Qwen3_5MoeTopKRouter always renormalises; Qwen3NextTopKRouter follows norm_topk_prob
        norm_topk=model_type == "qwen3_5_moe_text" or bool(text.get("norm_topk_prob")),
        # the top-level key: the composite config's for *ForConditionalGeneration (lm_head is top-level)
        tied=bool(cfg.get("tie_word_embeddings", False)),
    )


# --- building blocks --------------------------------------------------------------------------


def zc_rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Qwen3_5RMSNorm / Qwen3NextRMSNorm: zero-centred weight, applied as ``(1 + w)``."""
    return rms_norm(x, 1.0 + weight, eps)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def l2norm(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """transformers' ``l2norm``: ``x · rsqrt(Σx² + eps)`` over the last axis (eps inside the root)."""
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps)


def partial_rope(x: np.ndarray, rot_dim: int, theta: float, mrope: MRope | None = None) -> np.ndarray:
    """NEOX rotate_half RoPE on the first ``rot_dim`` dims of ``x`` [tokens, heads, head_dim]; the
    rest passes through. Positions are 0..n-1, or ``mrope``'s: Qwen3.5's interleaved M-RoPE
    (``apply_interleaved_mrope``), where frequency j takes the height position at j = 1, 4, 7… and
    the width one at 2, 5, 8… within their sections' reach, the temporal one elsewhere."""
    n = x.shape[0]
    inv_freq = theta ** (-np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    if mrope is None:
        angles = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]
    else:
        positions, sections = mrope
        which = np.zeros(rot_dim // 2, dtype=np.int64)
        for dim in (1, 2):
            which[dim : sections[dim] * 3 : 3] = dim
        angles = positions[which].T.astype(np.float64) * inv_freq[None, :]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
    rot, rest = x[..., :rot_dim], x[..., rot_dim:]
    half = rot_dim // 2
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return np.concatenate([rot * cos + rotated * sin, rest], axis=-1)


def causal_conv_silu(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Depthwise causal conv1d over time (``x`` [tokens, channels], ``weight`` [channels, 1, K]), zero
    history, no bias, then SiLU: ``out[t, c] = Σ_j W[c, j] · x[t - (K-1) + j, c]``."""
    w = weight.reshape(weight.shape[0], -1)
    k = w.shape[1]
    padded = np.concatenate([np.zeros((k - 1, x.shape[1])), x], axis=0)
    out = sum(padded[j : j + x.shape[0]] * w[:, j] for j in range(k))
    return silu(np.asarray(out))


def gated_delta_rule(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """The recurrence of ``torch_recurrent_gated_delta_rule``, one token at a time, state S [h, dk, dv]:
    S ← S·exp(g_t);  S ← S + k_t ⊗ β_t(v_t − Sᵀk_t);  o_t = Sᵀq_t. q and k already normalised/scaled."""
    n, h, dk = k.shape
    state = np.zeros((h, dk, v.shape[-1]))
    out = np.zeros_like(v)
    for t in range(n):
        state = state * np.exp(g[t])[:, None, None]
        delta = (v[t] - np.einsum("hkv,hk->hv", state, k[t])) * beta[t][:, None]
        state = state + k[t][:, :, None] * delta[:, None, :]
        out[t] = np.einsum("hkv,hk->hv", state, q[t])
    return out


def linear_attention(h: np.ndarray, w: Weights, p: str, s: Spec) -> np.ndarray:
    """Gated DeltaNet (``Qwen3_5GatedDeltaNet`` / ``Qwen3NextGatedDeltaNet``)."""
    n, nk, nv, dk, dv = h.shape[0], s.lin_k_heads, s.lin_v_heads, s.lin_dk, s.lin_dv
    r = nv // nk  # value heads per key head
    if s.qkvz_fused:
        # Qwen3-Next: rows grouped per key head as [q (dk) | k (dk) | v (r·dv) | z (r·dv)], and
        # in_proj_ba per key head as [b (r) | a (r)] (fix_query_key_value_ordering)
        qkvz = linear(h, w, f"{p}.in_proj_qkvz").reshape(n, nk, 2 * dk + 2 * r * dv)
        q, k = qkvz[..., :dk], qkvz[..., dk : 2 * dk]
        v, z = qkvz[..., 2 * dk : 2 * dk + r * dv], qkvz[..., 2 * dk + r * dv :]
        ba = linear(h, w, f"{p}.in_proj_ba").reshape(n, nk, 2 * r)
        b, a = ba[..., :r].reshape(n, nv), ba[..., r:].reshape(n, nv)
        mixed = np.concatenate([q.reshape(n, -1), k.reshape(n, -1), v.reshape(n, -1)], axis=-1)
        z = z.reshape(n, nv, dv)
    else:  # Qwen3.5: in_proj_qkv rows [q (nk·dk) | k (nk·dk) | v (nv·dv)], z / b / a separate
        mixed = linear(h, w, f"{p}.in_proj_qkv")
        z = linear(h, w, f"{p}.in_proj_z").reshape(n, nv, dv)
        b, a = linear(h, w, f"{p}.in_proj_b"), linear(h, w, f"{p}.in_proj_a")
    mixed = causal_conv_silu(mixed, w[f"{p}.conv1d.weight"])
    q = mixed[:, : nk * dk].reshape(n, nk, dk)
    k = mixed[:, nk * dk : 2 * nk * dk].reshape(n, nk, dk)
    v = mixed[:, 2 * nk * dk :].reshape(n, nv, dv)
    q, k = l2norm(q) / np.sqrt(dk), l2norm(k)
    # repeat_interleave over heads: value head j reads key/query head j // r (grouped, not tiled)
    q, k = np.repeat(q, r, axis=1), np.repeat(k, r, axis=1)
    beta = sigmoid(b)
    g = -np.exp(w[f"{p}.A_log"]) * np.logaddexp(0.0, a + w[f"{p}.dt_bias"])  # softplus
    out = gated_delta_rule(q, k, v, g, beta)
    out = rms_norm(out, w[f"{p}.norm.weight"], s.eps) * silu(z)  # RMSNormGated: plain weight, silu(z) gate
    return linear(out.reshape(n, nv * dv), w, f"{p}.out_proj")


def full_attention(h: np.ndarray, w: Weights, p: str, s: Spec, mrope: MRope | None = None) -> np.ndarray:
    """Gated attention (``Qwen3_5Attention`` / ``Qwen3NextAttention``)."""
    n, hd = h.shape[0], s.head_dim
    # q_proj rows per head are [query (head_dim) | gate (head_dim)]: view(n, H, 2·hd).chunk(2, -1)
    qg = linear(h, w, f"{p}.q_proj", s.attn_bias).reshape(n, s.n_head, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:].reshape(n, s.n_head * hd)
    k = linear(h, w, f"{p}.k_proj", s.attn_bias).reshape(n, s.n_kv, hd)
    v = linear(h, w, f"{p}.v_proj", s.attn_bias).reshape(n, s.n_kv, hd)
    q = zc_rms_norm(q, w[f"{p}.q_norm.weight"], s.eps)
    k = zc_rms_norm(k, w[f"{p}.k_norm.weight"], s.eps)
    q, k = partial_rope(q, s.rot_dim, s.theta, mrope), partial_rope(k, s.rot_dim, s.theta, mrope)
    group = s.n_head // s.n_kv  # GQA: query head i reads kv head i // group
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
    out = np.einsum("hqk,khd->qhd", softmax(scores), v).reshape(n, s.n_head * hd)
    return linear(out * sigmoid(gate), w, f"{p}.o_proj", s.attn_bias)


def expert(x: np.ndarray, w: Weights, p: str, e: int) -> np.ndarray:
    """Routed expert ``e``, stored per expert (``experts.E.gate_proj.weight``…) or fused
    (``experts.gate_up_proj`` [E, 2·ff, d], gate rows first; ``experts.down_proj`` [E, d, ff])."""
    if f"{p}.experts.gate_up_proj" not in w:
        return mlp(x, w, f"{p}.experts.{e}")
    gate_up = x @ w[f"{p}.experts.gate_up_proj"][e].T
    gate, up = np.split(gate_up, 2, axis=-1)
    return (silu(gate) * up) @ w[f"{p}.experts.down_proj"][e].T


def moe(h: np.ndarray, w: Weights, p: str, s: Spec, margins: list[np.ndarray] | None) -> np.ndarray:
    """Softmax router, top k, optional renormalisation; plus the sigmoid-gated shared expert."""
    probs = softmax(linear(h, w, f"{p}.gate"))
    if margins is not None:
        ranked = np.sort(probs, axis=-1)[:, ::-1]
        margins.append(ranked[:, s.n_expert_used - 1] - ranked[:, s.n_expert_used])
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-probs[t], kind="stable")[: s.n_expert_used]
        weights = probs[t, top] / probs[t, top].sum() if s.norm_topk else probs[t, top]
        for e, gw in zip(top, weights, strict=True):
            out[t] += gw * expert(h[t : t + 1], w, p, int(e))[0]
    return out + sigmoid(linear(h, w, f"{p}.shared_expert_gate")) * mlp(h, w, f"{p}.shared_expert")


def decoder_layer(
    x: np.ndarray,
    w: Weights,
    p: str,
    kind: str,
    sparse: bool,
    s: Spec,
    margins: list[np.ndarray] | None,
    mrope: MRope | None = None,
) -> np.ndarray:
    h = zc_rms_norm(x, w[f"{p}.input_layernorm.weight"], s.eps)
    if kind == "linear_attention":
        x = x + linear_attention(h, w, f"{p}.linear_attn", s)
    else:
        x = x + full_attention(h, w, f"{p}.self_attn", s, mrope)
    h = zc_rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], s.eps)
    return x + (moe(h, w, f"{p}.mlp", s, margins) if sparse else mlp(h, w, f"{p}.mlp"))


# --- the model --------------------------------------------------------------------------------


def _load(folder: Path) -> tuple[Spec, Weights, str]:
    spec = load_spec(json.loads((folder / "config.json").read_text()))
    w = {name: t.astype(np.float64) for name, t in read_checkpoint(folder).items()}
    prefix = "model.language_model" if "model.language_model.embed_tokens.weight" in w else "model"
    return spec, w, prefix


def _trunk(
    s: Spec, w: Weights, prefix: str, tokens: Sequence[int], margins: list[np.ndarray] | None = None
) -> np.ndarray:
    """The final-normed hidden states [tokens, hidden] (the input of lm_head)."""
    return _layers(s, w, prefix, w[f"{prefix}.embed_tokens.weight"][np.asarray(tokens)], margins)


def _layers(
    s: Spec,
    w: Weights,
    prefix: str,
    x: np.ndarray,
    margins: list[np.ndarray] | None = None,
    mrope: MRope | None = None,
) -> np.ndarray:
    for i, (kind, sparse) in enumerate(zip(s.layer_types, s.moe_layers, strict=True)):
        x = decoder_layer(x, w, f"{prefix}.layers.{i}", kind, sparse, s, margins, mrope)
    return zc_rms_norm(x, w[f"{prefix}.norm.weight"], s.eps)


def _head(s: Spec, w: Weights, prefix: str) -> np.ndarray:
    return w[f"{prefix}.embed_tokens.weight"] if s.tied else w["lm_head.weight"]


def reference_logits(checkpoint_dir: str | os.PathLike[str], token_ids: Sequence[int]) -> np.ndarray:
    """float64 logits ``[len(token_ids), vocab_size]``, causal, positions 0..n-1, as transformers computes
    them (in exact arithmetic on the stored weights)."""
    s, w, prefix = _load(Path(checkpoint_dir))
    return _trunk(s, w, prefix, token_ids) @ _head(s, w, prefix).T


def logits_from_embeddings(
    checkpoint_dir: str | os.PathLike[str], embeddings: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """float64 logits of the language model over input embeddings (text and image rows) at M-RoPE
    positions [3, n], with the sections of config.json's ``mrope_section``."""
    folder = Path(checkpoint_dir)
    s, w, prefix = _load(folder)
    text = json.loads((folder / "config.json").read_text())
    text = text.get("text_config") or text
    sections = list((text.get("rope_parameters") or text.get("rope_scaling") or {})["mrope_section"])
    return _layers(s, w, prefix, embeddings, None, (positions, sections)) @ _head(s, w, prefix).T


def router_margins(checkpoint_dir: str | os.PathLike[str], token_ids: Sequence[int]) -> np.ndarray:
    """For MoE checkpoints: per MoE layer and token, the gap between the k-th and (k+1)-th router
    probability (a tiny gap lets another implementation legitimately pick another expert)."""
    s, w, prefix = _load(Path(checkpoint_dir))
    margins: list[np.ndarray] = []
    _trunk(s, w, prefix, token_ids, margins)
    return np.array(margins)


def reference_mtp_logits(checkpoint_dir: str | os.PathLike[str], token_ids: Sequence[int]) -> np.ndarray:
    """float64 logits ``[len(token_ids) - 1, vocab]`` of the multi-token-prediction head (``mtp.*``).

    transformers 5.25 has no MTP module (it drops ``mtp.*`` on load). This follows vLLM's
    ``Qwen3_5MultiTokenPredictor`` (models/qwen3_5_mtp.py) and ``Qwen3NextMultiTokenPredictor``
    (models/qwen3_next_mtp.py), and SGLang's ``Qwen3NextForCausalLMMTP``, which all concatenate the
    EMBEDDING FIRST: ``fc(cat[pre_fc_norm_embedding(E[t_{i+1}]), pre_fc_norm_hidden(h_i)])``, where h_i
    is the trunk's final-normed hidden state at i (what both engines hand the drafter). That goes
    through ``mtp.layers.0`` (a full-attention layer, causal over the MTP slots, slot i at position i),
    then ``mtp.norm`` and the shared lm_head. Row i predicts token i + 2. All norms are zero-centred.
    """
    s, w, prefix = _load(Path(checkpoint_dir))
    if "mtp.fc.weight" not in w:
        raise ValueError(f"{checkpoint_dir} has no mtp.* tensors")
    hidden = _trunk(s, w, prefix, token_ids)[:-1]
    emb = w[f"{prefix}.embed_tokens.weight"][np.asarray(token_ids[1:])]
    emb = zc_rms_norm(emb, w["mtp.pre_fc_norm_embedding.weight"], s.eps)
    hidden = zc_rms_norm(hidden, w["mtp.pre_fc_norm_hidden.weight"], s.eps)
    x = linear(np.concatenate([emb, hidden], axis=-1), w, "mtp.fc")  # embedding first
    x = decoder_layer(x, w, "mtp.layers.0", "full_attention", "mtp.layers.0.mlp.gate.weight" in w, s, None)
    return zc_rms_norm(x, w["mtp.norm.weight"], s.eps) @ _head(s, w, prefix).T
