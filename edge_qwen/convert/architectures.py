"""What edge-qwen converts, as data: Hugging Face architecture -> GGUF architecture and its quirks.

A Qwen3 entry states only how it differs from Qwen2 (q/k norm, explicit head_dim); MoE entries say
how llama.cpp routes experts, so a checkpoint whose config disagrees is refused instead of silently
producing a model that computes something else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import gguf

from ..errors import CheckpointError, MultimodalNotSupportedError, UnsupportedArchitectureError
from .config_bounds import check_config, read_object
from .hf_config import normalize
from .hybrid_config import Hybrid, read_hybrid
from .pooling import Pooling, read_pooling
from .vision import mrope_sections

# transformers' Qwen2Config defaults: Qwen2-Audio's text_config leaves most keys to them (the rope
# base too: see .hf_config.ROPE_THETA_DEFAULTS).
QWEN2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """config.json with the language model's keys on top, Qwen2's defaults filling the gaps."""
    text = raw.get("text_config") or {}
    merged = {**QWEN2_DEFAULTS, **raw, **text}
    merged.setdefault("num_key_value_heads", merged["num_attention_heads"])
    return merged


T = gguf.MODEL_TENSOR
# llama.cpp's converter keeps routers and the Gated DeltaNet conv kernel in F32.
_HYBRID_F32 = frozenset({T.FFN_GATE_INP, T.FFN_GATE_INP_SHEXP, T.SSM_CONV1D})


@dataclass(frozen=True)
class Architecture:
    hf_name: str
    gguf_arch: gguf.MODEL_ARCH
    moe: bool = False
    # llama.cpp renormalizes the top-k router weights for this architecture (fixed in its graph).
    llama_norm_topk: bool | None = None
    # Tensors kept in F32 whatever the output type (llama.cpp's converter does the same).
    f32_tensors: frozenset[gguf.MODEL_TENSOR] = frozenset()
    # A vision-language checkpoint: the language model plus an mmproj GGUF (see .vision / .mmproj).
    vision: bool = False
    audio: bool = False  # an audio-language one (see .audio)
    # Which module names, reshapes and checks its tensors: "transformer" (every layer alike) or
    # "hybrid" (Gated DeltaNet + gated attention layers, an MTP head); see .families.
    family: str = "transformer"
    # Tensors live under model.language_model.* (a vision checkpoint's text half).
    nested_text: bool = False
    # Qwen3-VL: the vision tower's DeepStack outputs are added after the first language-model
    # layers (``n_deepstack_layers``, see .vision_qwen3).
    deepstack: bool = False
    # Qwen3-VL-MoE: each layer's experts packed in ``experts.gate_up_proj`` / ``down_proj``,
    # stored [E, d_in, d_out] (see .families.transformer)
    packed_experts: bool = False
    # The bare model (``Qwen3Model``, a Qwen3-Embedding checkpoint): tensors saved without the
    # ``model.`` prefix (``embed_tokens.*``, ``layers.N.*``, ``norm.*``) and no lm_head; read as the
    # causal LM's ``model.*`` ones, as llama.cpp's converter does (see :func:`as_causal_lm`, which
    # also takes the bare tensors of a ``pooling`` architecture).
    bare: bool = False
    # Reads sentence-transformers pooling (modules.json), as llama.cpp's converter does for this
    # architecture; ``rerank``: a Qwen3-Reranker of it converts to a RANK model (see .pooling).
    pooling: bool = False
    rerank: bool = False

    @property
    def multimodal(self) -> bool:
        return self.vision or self.audio

    @property
    def gguf_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]


ARCHITECTURES: dict[str, Architecture] = {
    a.hf_name: a
    for a in (
        Architecture("Qwen2ForCausalLM", gguf.MODEL_ARCH.QWEN2, pooling=True),
        Architecture("Qwen3ForCausalLM", gguf.MODEL_ARCH.QWEN3, pooling=True, rerank=True),
        Architecture("Qwen3Model", gguf.MODEL_ARCH.QWEN3, bare=True, pooling=True, rerank=True),
        Architecture(
            "Qwen3MoeForCausalLM",
            gguf.MODEL_ARCH.QWEN3MOE,
            moe=True,
            llama_norm_topk=True,
            f32_tensors=frozenset({T.FFN_GATE_INP}),
        ),
        Architecture(
            "Qwen2MoeForCausalLM",
            gguf.MODEL_ARCH.QWEN2MOE,
            moe=True,
            llama_norm_topk=False,
            f32_tensors=frozenset({T.FFN_GATE_INP, T.FFN_GATE_INP_SHEXP}),
        ),
        Architecture("Qwen2VLForConditionalGeneration", gguf.MODEL_ARCH.QWEN2VL, vision=True),
        Architecture("Qwen2_5_VLForConditionalGeneration", gguf.MODEL_ARCH.QWEN2VL, vision=True),
        Architecture("Qwen2AudioForConditionalGeneration", gguf.MODEL_ARCH.QWEN2, audio=True),
        Architecture(
            "Qwen3_5ForCausalLM", gguf.MODEL_ARCH.QWEN35, family="hybrid", f32_tensors=_HYBRID_F32
        ),
        Architecture(
            "Qwen3_5MoeForCausalLM",
            gguf.MODEL_ARCH.QWEN35MOE,
            moe=True,
            llama_norm_topk=True,
            family="hybrid",
            f32_tensors=_HYBRID_F32,
        ),
        Architecture(
            "Qwen3VLForConditionalGeneration", gguf.MODEL_ARCH.QWEN3VL, vision=True, deepstack=True
        ),
        Architecture(
            "Qwen3VLMoeForConditionalGeneration",
            gguf.MODEL_ARCH.QWEN3VLMOE,
            moe=True,
            llama_norm_topk=True,
            f32_tensors=frozenset({T.FFN_GATE_INP}),
            vision=True,
            deepstack=True,
            packed_experts=True,
        ),
        Architecture(
            "Qwen3_5ForConditionalGeneration",
            gguf.MODEL_ARCH.QWEN35,
            vision=True,
            family="hybrid",
            f32_tensors=_HYBRID_F32,
        ),
        Architecture(
            "Qwen3_5MoeForConditionalGeneration",
            gguf.MODEL_ARCH.QWEN35MOE,
            moe=True,
            llama_norm_topk=True,
            vision=True,
            family="hybrid",
            f32_tensors=_HYBRID_F32,
        ),
        Architecture(
            "Qwen3NextForCausalLM",
            gguf.MODEL_ARCH.QWEN3NEXT,
            moe=True,
            llama_norm_topk=True,
            family="hybrid",
            f32_tensors=_HYBRID_F32,
        ),
    )
}
# Multimodal Qwen architectures edge-qwen knows of but cannot convert yet.
NOT_YET_SUPPORTED = (
    "Qwen2_5OmniForConditionalGeneration",
    "Qwen2_5OmniModel",
    "Qwen3OmniMoeForConditionalGeneration",
)


HYBRID_HEAD_DIM = 256  # Qwen3_5TextConfig / Qwen3NextConfig's default head_dim
# transformers' norm_topk_prob when config.json has none: False for Qwen2/Qwen3 MoE; Qwen3-Next
# defaults to True and Qwen3.5-MoE's router always renormalizes (the key does not exist there).
NORM_TOPK_DEFAULTS: dict[str, bool] = {
    "Qwen3NextForCausalLM": True,
    "Qwen3_5MoeForCausalLM": True,
    "Qwen3_5MoeForConditionalGeneration": True,
    # Qwen3VLMoeTextConfig: True in transformers 4.57; 5.x has no key and its router always does
    "Qwen3VLMoeForConditionalGeneration": True,
}


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters of a checkpoint, read once from config.json and checked."""

    arch: Architecture
    raw: dict[str, Any]
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    rope_theta: float
    rms_eps: float
    tied: bool
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    mrope_sections: tuple[int, ...] = ()  # Qwen-VL: rotary frequencies per (t, h, w, -) position
    n_deepstack: int = 0  # Qwen3-VL: layers that add a DeepStack image embedding
    hybrid: Hybrid | None = None  # layer kinds, linear attention, MTP (hybrid families only)
    pooling: Pooling | None = None  # an embedding model's or a reranker's (see .pooling)

    @property
    def n_block(self) -> int:
        """GGUF blocks: the trunk's layers, then the MTP layers written after them."""
        return self.n_layer + (self.hybrid.n_mtp if self.hybrid is not None else 0)


def load_hparams(folder: Path, aliases: Sequence[str] = ()) -> HParams:
    """Read and validate ``config.json`` (and an embedding / reranker checkpoint's pooling).

    ``aliases``: more names the checkpoint goes by (its hub repo's), for recognising a reranker.

    Raises:
        CheckpointError: config.json missing, not a JSON object, lacking a required key, or holding a
            value of the wrong kind or out of :mod:`.config_bounds`' bounds (naming the field).
        CheckpointError: a sentence-transformers pooling llama.cpp cannot run (see .pooling).
        UnsupportedArchitectureError: not one of :data:`ARCHITECTURES`.
    """
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: no config.json; point edge-qwen at a Hugging Face checkpoint folder "
            "(config.json, *.safetensors, tokenizer.json) or a hub repo id like Qwen/Qwen2.5-0.5B-Instruct"
        )
    cfg = read_object(path)
    check_config(cfg, path)  # before any value sizes anything
    names = [str(n) for n in cfg.get("architectures") or [cfg.get("model_type", "unknown")]]
    arch = ARCHITECTURES.get(names[0])
    if names[0] in NOT_YET_SUPPORTED:
        raise MultimodalNotSupportedError(names[0], list(ARCHITECTURES))
    if arch is not None and (arch.vision or arch.nested_text):  # newer transformers nest the text keys
        top_tied = cfg.get("tie_word_embeddings")
        cfg = {**cfg, **(cfg.get("text_config") or {})}
        if top_tied is not None:
            # lm_head belongs to the composite model, whose key transformers ties by; a text_config
            # may carry its class default instead (Qwen3-VL-MoE saved by transformers 5: True)
            cfg["tie_word_embeddings"] = top_tied
    if arch is not None and arch.audio:  # a text_config that leans on Qwen2Config's defaults
        cfg = text_config(cfg)
    if arch is None:
        raise UnsupportedArchitectureError(names[0], list(ARCHITECTURES))
    cfg = normalize(cfg, arch.hf_name, path)  # transformers 4 or 5 layout -> one

    def need(key: str) -> Any:
        if key not in cfg:
            raise CheckpointError(
                f"{path}: {arch.hf_name} config lacks {key!r}; the checkpoint is incomplete"
            )
        return cfg[key]

    n_head = int(need("num_attention_heads"))
    n_embd = int(need("hidden_size"))
    hp = HParams(
        arch=arch,
        raw=cfg,
        n_vocab=int(need("vocab_size")),
        n_embd=n_embd,
        n_layer=int(need("num_hidden_layers")),
        # hybrid MoE configs may have no dense width (Qwen3.5-MoE has none)
        n_ff=int(cfg.get("intermediate_size") or 0) if arch.moe else int(need("intermediate_size")),
        n_head=n_head,
        n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
        head_dim=int(cfg.get("head_dim") or _default_head_dim(arch, n_embd, n_head)),
        n_ctx=int(need("max_position_embeddings")),
        rope_theta=float(cfg["rope_theta"]),
        rms_eps=float(need("rms_norm_eps")),
        tied=bool(cfg.get("tie_word_embeddings", False)),
        n_expert=int(cfg.get("num_experts") or 0),
        n_expert_used=int(cfg.get("num_experts_per_tok") or 0),
        n_ff_exp=int(cfg.get("moe_intermediate_size") or 0),
        n_ff_shexp=int(cfg.get("shared_expert_intermediate_size") or 0),
    )
    if arch.moe:
        _check_moe(path, hp)
    if arch.vision and arch.family != "hybrid":
        sections = mrope_sections(folder, cfg, hp.head_dim, interleaved=arch.deepstack)
        hp = replace(hp, mrope_sections=sections)
    if arch.deepstack:
        hp = replace(hp, n_deepstack=_deepstack_layers(path, cfg, hp.n_layer))
    if arch.family == "hybrid":
        needs_sections = arch.gguf_arch in (gguf.MODEL_ARCH.QWEN35, gguf.MODEL_ARCH.QWEN35MOE)
        hybrid = read_hybrid(cfg, path, hp.n_layer, hp.head_dim, needs_sections)
        hp = replace(hp, hybrid=hybrid, mrope_sections=hybrid.mrope_sections)
    if arch.pooling:
        pooling = read_pooling(folder, cfg, arch.hf_name, rerank=arch.rerank, aliases=aliases)
        hp = replace(hp, pooling=pooling)
    return hp


R = TypeVar("R")
BARE_EMBEDDING = "embed_tokens.weight"  # a bare model's token embedding (the causal LM's model.*)


def as_causal_lm(refs: dict[str, R], arch: Architecture) -> dict[str, R]:
    """A bare model's tensors under the causal LM's names (``layers.0.…`` -> ``model.layers.0.…``);
    any other checkpoint's as they are.

    Bare: a ``Qwen3Model``, or a causal LM that sentence-transformers saved as its bare model (the
    Qwen3-Embedding releases: config.json says ``Qwen3ForCausalLM``, the tensors have no prefix)."""
    if not (arch.bare or (arch.pooling and BARE_EMBEDDING in refs and f"model.{BARE_EMBEDDING}" not in refs)):
        return refs
    return {(name if name.startswith("model.") else f"model.{name}"): ref for name, ref in refs.items()}


def _deepstack_layers(path: Path, cfg: dict[str, Any], n_layer: int) -> int:
    indexes = (cfg.get("vision_config") or {}).get("deepstack_visual_indexes") or []
    if not isinstance(indexes, list) or len(indexes) > n_layer:
        raise CheckpointError(
            f"{path}: vision_config deepstack_visual_indexes {indexes!r} must list at most "
            f"num_hidden_layers ({n_layer}) blocks: one language-model layer takes each"
        )
    return len(indexes)


def _default_head_dim(arch: Architecture, n_embd: int, n_head: int) -> int:
    return HYBRID_HEAD_DIM if arch.family == "hybrid" else n_embd // n_head


def _check_moe(path: Path, hp: HParams) -> None:
    cfg = hp.raw
    if not (hp.n_expert and hp.n_expert_used and hp.n_ff_exp):
        raise CheckpointError(
            f"{path}: MoE config needs num_experts, num_experts_per_tok, moe_intermediate_size"
        )
    norm = bool(cfg.get("norm_topk_prob", NORM_TOPK_DEFAULTS.get(hp.arch.hf_name, False)))
    if norm != hp.arch.llama_norm_topk:
        raise CheckpointError(
            f"{path}: norm_topk_prob={norm}, but llama.cpp's {hp.arch.gguf_name} always uses "
            f"{hp.arch.llama_norm_topk}; the converted model would compute different outputs"
        )
    if cfg.get("mlp_only_layers") or (cfg.get("decoder_sparse_step") or 1) != 1:
        raise CheckpointError(
            f"{path}: mixes dense and MoE layers (mlp_only_layers / decoder_sparse_step), "
            "which llama.cpp's Qwen MoE graph does not support"
        )


def expected_shape(tensor: gguf.MODEL_TENSOR, hp: HParams, bias: bool) -> tuple[int, ...] | None:
    """The Hugging Face (row-major) shape ``config.json`` implies, or None if not checked."""
    q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    shapes: dict[gguf.MODEL_TENSOR, tuple[int, ...]] = {
        T.TOKEN_EMBD: (hp.n_vocab, hp.n_embd),
        T.OUTPUT: (hp.n_vocab, hp.n_embd),
        T.OUTPUT_NORM: (hp.n_embd,),
        T.ATTN_NORM: (hp.n_embd,),
        T.FFN_NORM: (hp.n_embd,),
        T.ATTN_Q: (q, hp.n_embd),
        T.ATTN_K: (kv, hp.n_embd),
        T.ATTN_V: (kv, hp.n_embd),
        T.ATTN_OUT: (hp.n_embd, q),
        T.ATTN_Q_NORM: (hp.head_dim,),
        T.ATTN_K_NORM: (hp.head_dim,),
        T.FFN_GATE: (hp.n_ff, hp.n_embd),
        T.FFN_UP: (hp.n_ff, hp.n_embd),
        T.FFN_DOWN: (hp.n_embd, hp.n_ff),
        T.FFN_GATE_INP: (hp.n_expert, hp.n_embd),
        T.FFN_GATE_EXP: (hp.n_expert, hp.n_ff_exp, hp.n_embd),
        T.FFN_UP_EXP: (hp.n_expert, hp.n_ff_exp, hp.n_embd),
        T.FFN_DOWN_EXP: (hp.n_expert, hp.n_embd, hp.n_ff_exp),
        T.FFN_GATE_SHEXP: (hp.n_ff_shexp, hp.n_embd),
        T.FFN_UP_SHEXP: (hp.n_ff_shexp, hp.n_embd),
        T.FFN_DOWN_SHEXP: (hp.n_embd, hp.n_ff_shexp),
        T.FFN_GATE_INP_SHEXP: (1, hp.n_embd),
    }
    shape = shapes.get(tensor)
    if shape is None:
        return None
    return shape[:1] if bias else shape
