#!/usr/bin/env python3
"""Tiny random-weight hybrid Qwen checkpoints: Qwen3.5, Qwen3.5-MoE and Qwen3-Next, with an MTP head.

Tensor names, shapes and config.json keys are those transformers 5.25 saves for the family
(``Qwen3_5ForCausalLM`` / ``Qwen3_5MoeForCausalLM`` / ``Qwen3NextForCausalLM``), plus the ``mtp.*``
tensors the real releases carry (transformers itself drops them on load). Qwen3.5 uses the real
Qwen3.5 vocabulary (248,320 tokens, from scripts/fetch_assets.py); Qwen3-Next the Qwen3 one, as the
real model does. Layers 0-2 are Gated DeltaNet, layer 3 full attention (``full_attention_interval``
4), with 2 key heads and 4 value heads so that the grouped -> tiled value-head reorder matters.

    python scripts/make_tiny_hybrid.py OUT --arch qwen35 [--dtype bf16] [--fused-experts] [--no-mtp]
    python scripts/make_tiny_hybrid.py BIG --arch qwen35 --hidden 2560 --layers 32 ...   # real dims

>>> make_hybrid(tmp / "tiny-qwen35", arch="qwen35", dtype="f32")   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_assets  # noqa: E402
from make_tiny_checkpoints import DTYPES, TORCH_DTYPES, _write_folder  # noqa: E402

ARCHS = ("qwen35", "qwen35moe", "qwen3next")
Shapes = Iterator[tuple[str, tuple[int, ...]]]

_COMMON: dict[str, Any] = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "max_position_embeddings": 4096,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "transformers_version": "5.25.0",
    "use_cache": True,
}
_MOE: dict[str, Any] = {
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
}
# Qwen3.5's rotary width is head_dim / 4 = 8 here: M-RoPE sections (t, h, w) sum to half of it.
_QWEN35_ROPE = {
    "rope_type": "default",
    "rope_theta": 10000000.0,
    "partial_rotary_factor": 0.25,
    "mrope_section": [2, 1, 1],
    "mrope_interleaved": True,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "qwen35": {
        "architectures": ["Qwen3_5ForCausalLM"],
        "model_type": "qwen3_5_text",
        "intermediate_size": 128,
        "rope_parameters": _QWEN35_ROPE,
        "tie_word_embeddings": True,
        "mtp_num_hidden_layers": 1,
    },
    "qwen35moe": {
        "architectures": ["Qwen3_5MoeForCausalLM"],
        "model_type": "qwen3_5_moe_text",
        "rope_parameters": _QWEN35_ROPE,
        "tie_word_embeddings": False,
        "mtp_num_hidden_layers": 1,
        **_MOE,
    },
    "qwen3next": {  # saved by transformers 4.57 (top-level rope keys); no mtp_num_hidden_layers
        "architectures": ["Qwen3NextForCausalLM"],
        "model_type": "qwen3_next",
        "intermediate_size": 128,
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "rope_scaling": None,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "full_attention_interval": 4,
        "tie_word_embeddings": False,
        "transformers_version": "4.57.1",
        **_MOE,
    },
}
# Real special-token ids of each vocabulary: <|endoftext|>, <|im_end|>.
SPECIALS = {"qwen35": (248044, 248046), "qwen3": (151643, 151645)}


def build_config(arch: str, dtype: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if arch not in CONFIGS:
        raise ValueError(f"unknown arch {arch!r}; use one of {', '.join(ARCHS)}")
    vocab = "qwen3" if arch == "qwen3next" else "qwen35"
    eot, im_end = SPECIALS[vocab]
    config = {
        **_COMMON,
        **CONFIGS[arch],
        "vocab_size": 151936 if vocab == "qwen3" else fetch_assets.QWEN35_VOCAB_SIZE,
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "torch_dtype": TORCH_DTYPES[dtype],
        **overrides,
    }
    if "layer_types" not in config and arch != "qwen3next":  # transformers 5 writes them out
        interval = 4
        config["layer_types"] = [
            "linear_attention" if (i + 1) % interval else "full_attention"
            for i in range(config["num_hidden_layers"])
        ]
    return dict(sorted(config.items()))


def _is_linear(config: dict[str, Any], i: int) -> bool:
    kinds = config.get("layer_types")
    if kinds is not None:
        return bool(kinds[i] == "linear_attention")
    return bool((i + 1) % config.get("full_attention_interval", 4))


def tensor_shapes(arch: str, config: dict[str, Any], *, mtp: bool, fused: bool) -> Shapes:
    """(name, shape) of every tensor, trunk first, then the MTP head."""
    d, vocab = config["hidden_size"], config["vocab_size"]
    yield "model.embed_tokens.weight", (vocab, d)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        yield from _norms(p, d)
        yield from (_linear_attention(p, arch, config) if _is_linear(config, i) else _attention(p, config))
        yield from _ffn(f"{p}.mlp", arch, config, fused)
    yield "model.norm.weight", (d,)
    if not config["tie_word_embeddings"]:
        yield "lm_head.weight", (vocab, d)
    if mtp:
        yield "mtp.fc.weight", (d, 2 * d)
        yield "mtp.pre_fc_norm_embedding.weight", (d,)
        yield "mtp.pre_fc_norm_hidden.weight", (d,)
        yield from _norms("mtp.layers.0", d)
        yield from _attention("mtp.layers.0", config)
        yield from _ffn("mtp.layers.0.mlp", arch, config, fused)
        yield "mtp.norm.weight", (d,)


def _norms(p: str, d: int) -> Shapes:
    yield f"{p}.input_layernorm.weight", (d,)
    yield f"{p}.post_attention_layernorm.weight", (d,)


def _attention(p: str, config: dict[str, Any]) -> Shapes:
    d, hd = config["hidden_size"], config["head_dim"]
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    yield f"{p}.self_attn.q_proj.weight", (2 * n_head * hd, d)  # query and gate, per head
    yield f"{p}.self_attn.k_proj.weight", (n_kv * hd, d)
    yield f"{p}.self_attn.v_proj.weight", (n_kv * hd, d)
    yield f"{p}.self_attn.o_proj.weight", (d, n_head * hd)
    yield f"{p}.self_attn.q_norm.weight", (hd,)
    yield f"{p}.self_attn.k_norm.weight", (hd,)


def _linear_attention(p: str, arch: str, config: dict[str, Any]) -> Shapes:
    d = config["hidden_size"]
    nk, nv = config["linear_num_key_heads"], config["linear_num_value_heads"]
    dk, dv = config["linear_key_head_dim"], config["linear_value_head_dim"]
    conv = 2 * nk * dk + nv * dv
    la = f"{p}.linear_attn"
    if arch == "qwen3next":
        yield f"{la}.in_proj_qkvz.weight", (conv + nv * dv, d)
        yield f"{la}.in_proj_ba.weight", (2 * nv, d)
    else:
        yield f"{la}.in_proj_qkv.weight", (conv, d)
        yield f"{la}.in_proj_z.weight", (nv * dv, d)
        yield f"{la}.in_proj_b.weight", (nv, d)
        yield f"{la}.in_proj_a.weight", (nv, d)
    yield f"{la}.conv1d.weight", (conv, 1, config["linear_conv_kernel_dim"])
    yield f"{la}.dt_bias", (nv,)
    yield f"{la}.A_log", (nv,)
    yield f"{la}.norm.weight", (dv,)
    yield f"{la}.out_proj.weight", (d, nv * dv)


def _ffn(p: str, arch: str, config: dict[str, Any], fused: bool) -> Shapes:
    d = config["hidden_size"]
    if arch == "qwen35":
        yield from _mlp(p, d, config["intermediate_size"])
        return
    n, ff = config["num_experts"], config["moe_intermediate_size"]
    yield f"{p}.gate.weight", (n, d)
    if fused:
        yield f"{p}.experts.gate_up_proj", (n, 2 * ff, d)
        yield f"{p}.experts.down_proj", (n, d, ff)
    else:
        for e in range(n):
            yield from _mlp(f"{p}.experts.{e}", d, ff)
    yield from _mlp(f"{p}.shared_expert", d, config["shared_expert_intermediate_size"])
    yield f"{p}.shared_expert_gate.weight", (1, d)


def _mlp(p: str, d: int, ff: int) -> Shapes:
    yield f"{p}.gate_proj.weight", (ff, d)
    yield f"{p}.up_proj.weight", (ff, d)
    yield f"{p}.down_proj.weight", (d, ff)


def init_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values at a scale where every block changes the logits. Zero-centred norms (applied as
    1 + w) sit around 0 and the gated norm around 1, so a converter that mixes them up is caught;
    A_log and dt_bias are off their init values."""
    if name.endswith(".linear_attn.norm.weight"):
        return (1.0 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith("norm.weight") or name.endswith(
        ("pre_fc_norm_embedding.weight", "pre_fc_norm_hidden.weight")
    ):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(".A_log"):
        return np.log(rng.uniform(0.5, 8.0, shape)).astype(np.float32)
    if name.endswith(".dt_bias"):
        return rng.standard_normal(shape).astype(np.float32)
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = shape[-1]
    gain = 2.0 if name.endswith((".gate.weight", "shared_expert_gate.weight")) else 1.0
    return (gain * rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)


def make_hybrid(
    out_dir: str | os.PathLike[str],
    arch: str = "qwen35",
    dtype: str = "bf16",
    seed: int = 0,
    *,
    mtp: bool = True,
    fused_experts: bool = False,
    shards: int = 1,
    overwrite: bool = False,
    **overrides: Any,
) -> Path:
    """Write a tiny random hybrid checkpoint to ``out_dir`` (atomically) and return its path.
    ``overrides`` replace config.json keys; ``mtp=False`` writes no MTP head (and no
    ``mtp_num_hidden_layers``)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    final = Path(out_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; remove it or pass overwrite=True")
    config = build_config(arch, dtype, overrides)
    if not mtp:
        config.pop("mtp_num_hidden_layers", None)
    rng = np.random.default_rng(seed)
    shapes = tensor_shapes(arch, config, mtp=mtp, fused=fused_experts)
    tensors = {name: init_tensor(name, shape, rng) for name, shape in shapes}
    log = lambda msg: None  # noqa: E731
    tok = (
        fetch_assets.fetch_tokenizer(log=log)
        if arch == "qwen3next"
        else fetch_assets.fetch_qwen35_tokenizer(log=log)
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.incomplete")
    try:
        _write_folder(tmp, config, tensors, dtype, shards, Path(tok))
        eot, im_end = config["bos_token_id"], config["eos_token_id"]
        generation = {"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", choices=ARCHS, default="qwen35")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--no-mtp", dest="mtp", action="store_false", help="no mtp.* head")
    parser.add_argument("--fused-experts", action="store_true", help="experts.gate_up_proj (E, 2F, D)")
    parser.add_argument("--overwrite", action="store_true")
    for opt, key in (
        ("hidden", "hidden_size"),
        ("layers", "num_hidden_layers"),
        ("intermediate", "intermediate_size"),
        ("heads", "num_attention_heads"),
        ("kv-heads", "num_key_value_heads"),
        ("head-dim", "head_dim"),
        ("linear-k-heads", "linear_num_key_heads"),
        ("linear-v-heads", "linear_num_value_heads"),
        ("linear-head-dim", "linear_key_head_dim"),
        ("experts", "num_experts"),
        ("experts-used", "num_experts_per_tok"),
        ("expert-intermediate", "moe_intermediate_size"),
    ):
        parser.add_argument(f"--{opt}", type=int, dest=key, help=key)
    args = parser.parse_args(argv)
    overrides = {
        k: v for k, v in vars(args).items() if v is not None and k in _COMMON | _MOE | CONFIGS["qwen35"]
    }
    if "linear_key_head_dim" in overrides:
        overrides["linear_value_head_dim"] = overrides["linear_key_head_dim"]
    if "head_dim" in overrides and args.arch != "qwen3next":  # sections follow the rotary width
        half = overrides["head_dim"] // 8  # half the rotary width; 32 -> [11, 11, 10] as released
        third = -(-half // 3)
        overrides["rope_parameters"] = dict(_QWEN35_ROPE, mrope_section=[third, third, half - 2 * third])
    path = make_hybrid(
        args.out,
        arch=args.arch,
        dtype=args.dtype,
        seed=args.seed,
        mtp=args.mtp,
        fused_experts=args.fused_experts,
        shards=args.shards,
        overwrite=args.overwrite,
        **overrides,
    )
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"{path}: {args.arch} {args.dtype}, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
