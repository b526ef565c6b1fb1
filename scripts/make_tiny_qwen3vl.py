#!/usr/bin/env python3
"""Tiny random-weight Qwen3-VL and Qwen3.5 (vision) checkpoints, for the current-generation
multimodal tests.

The layout of the real releases (Qwen/Qwen3-VL-2B-Instruct, Qwen/Qwen3.5-*): tensors under
``model.language_model.*`` and ``model.visual.*`` (``lm_head.*`` and Qwen3.5's ``mtp.*`` at the top),
text keys under ``text_config``, and the Qwen3-VL vision tower: a Conv3d patch embedding with a bias,
a learned position table (``pos_embed``, bilinearly resized to each image), LayerNorm blocks with a
fused ``attn.qkv`` and a GELU MLP, the patch merger (``merger.norm`` before the 2x2 shuffle), and
for Qwen3-VL the DeepStack mergers (``deepstack_merger_list.J``, norm after the shuffle) whose
outputs are added to the first language-model layers.

* ``qwen3vl``: Qwen3VLForConditionalGeneration, a Qwen3 language model with interleaved M-RoPE;
  ``qwen3vlmoe`` (Qwen3VLMoeForConditionalGeneration) the same with MoE layers whose experts are
  packed as the release stores them (``experts.gate_up_proj`` [E, hidden, 2 x ff]).
* ``qwen35vl`` / ``qwen35moevl``: Qwen3_5(Moe)ForConditionalGeneration, the Qwen3.5 (MoE) hybrid
  language model of ``make_tiny_hybrid.py`` (its MTP head included) with the same tower, no DeepStack.

``layout`` picks how config.json says it: ``v4`` (transformers 4.57: ``rope_theta`` and
``rope_scaling``) or ``v5`` (``rope_parameters``).

    python scripts/make_tiny_qwen3vl.py OUT --arch qwen3vl
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

import make_tiny_hybrid  # noqa: E402
from make_tiny_checkpoints import (  # noqa: E402
    DTYPES,
    TORCH_DTYPES,
    _write_folder,
    default_tokenizer_dir,
    init_tensor,
    tensor_shapes,
)
from make_tiny_multimodal import _init_vision, random_image  # noqa: E402

ARCHS = ("qwen3vl", "qwen3vlmoe", "qwen35vl", "qwen35moevl")
LAYOUTS = ("v4", "v5")
HF_ARCHS = {
    "qwen3vl": "Qwen3VLForConditionalGeneration",
    "qwen3vlmoe": "Qwen3VLMoeForConditionalGeneration",
    "qwen35vl": "Qwen3_5ForConditionalGeneration",
    "qwen35moevl": "Qwen3_5MoeForConditionalGeneration",
}
MODEL_TYPES = {
    "qwen3vl": "qwen3_vl",
    "qwen3vlmoe": "qwen3_vl_moe",
    "qwen35vl": "qwen3_5",
    "qwen35moevl": "qwen3_5_moe",
}
HYBRID_TEXT = {"qwen35vl": "qwen35", "qwen35moevl": "qwen35moe"}  # make_tiny_hybrid's arch
# Real special ids: vision start / end, image pad, video pad (Qwen3 vocabulary, then Qwen3.5's).
TOKEN_IDS = {
    **{a: {"vision_start_token_id": 151652, "vision_end_token_id": 151653,
           "image_token_id": 151655, "video_token_id": 151656} for a in ("qwen3vl", "qwen3vlmoe")},
    **{a: {"vision_start_token_id": 248053, "vision_end_token_id": 248054,
                 "image_token_id": 248056, "video_token_id": 248057} for a in HYBRID_TEXT},
}  # fmt: skip

_QWEN3VL_TEXT: dict[str, Any] = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 262144,
    "model_type": "qwen3_vl_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "use_cache": True,
    "vocab_size": 151936,
}
# head_dim 16 -> 8 rotary frequencies, interleaved t/h/w like the real [24, 20, 20]. The real base is
# 5e6; 10 makes the height and width frequencies fast enough that a wrong image position shows.
# [3, 3, 2] covers frequencies 0..7 exactly (t at 0, 3, 6; h at 1, 4, 7; w at 2, 5): llama.cpp's
# IMROPE gives a frequency no section reaches the 4th position (0 for text) where transformers keeps
# the temporal one. The real [24, 20, 20] leaves 61 and 62 of 64 so, at base 5e6 angles of ~4e-7
# per position; here they would be the fastest ones.
_QWEN3VL_ROPE = {"rope_type": "default", "mrope_interleaved": True, "mrope_section": [3, 3, 2]}
_QWEN3VL_THETA = 10.0

VISION: dict[str, Any] = {
    "depth": 3,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 64,
    "in_channels": 3,
    "initializer_range": 0.02,
    "intermediate_size": 96,
    "model_type": "qwen3_vl",
    "num_heads": 4,
    "num_position_embeddings": 16,  # a 4x4 table: every image here is resized from it
    "out_hidden_size": 64,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
DEEPSTACK = [0, 1]  # Qwen3-VL-2B: [5, 11, 17] of 24 blocks
# Qwen3-VL-30B-A3B's MoE keys, tiny (the router always renormalizes its top k)
_QWEN3VL_MOE = {"decoder_sparse_step": 1, "mlp_only_layers": [], "moe_intermediate_size": 32,
                "norm_topk_prob": True, "num_experts": 8, "num_experts_per_tok": 2}  # fmt: skip


def build_config(arch: str, dtype: str, layout: str = "v4", **text_overrides: Any) -> dict[str, Any]:
    if arch not in ARCHS or layout not in LAYOUTS:
        raise ValueError(f"arch must be one of {ARCHS} and layout one of {LAYOUTS}")
    vision = dict(VISION)
    if arch in ("qwen3vl", "qwen3vlmoe"):
        vision["deepstack_visual_indexes"] = list(DEEPSTACK)
        vision["model_type"] = MODEL_TYPES[arch]
        text = {**_QWEN3VL_TEXT, "torch_dtype": TORCH_DTYPES[dtype], **text_overrides}
        if arch == "qwen3vlmoe":
            text.update(_QWEN3VL_MOE, model_type="qwen3_vl_moe_text")
        if layout == "v5":
            text["rope_parameters"] = {**_QWEN3VL_ROPE, "rope_theta": _QWEN3VL_THETA}
        else:
            text.update(rope_scaling=dict(_QWEN3VL_ROPE), rope_theta=_QWEN3VL_THETA)
        tied = False
    else:
        vision.update(model_type=MODEL_TYPES[arch], deepstack_visual_indexes=[])
        # rope base 10 instead of 1e7, for the same reason as Qwen3-VL's; sections [2, 1, 1] cover
        # the 4 rotary frequencies exactly
        rope = {**make_tiny_hybrid._QWEN35_ROPE, "rope_theta": _QWEN3VL_THETA}
        overrides = {"rope_parameters": rope, **text_overrides}
        text = make_tiny_hybrid.build_config(HYBRID_TEXT[arch], dtype, overrides)
        text.pop("architectures")
        text["model_type"] = f"{MODEL_TYPES[arch]}_text"
        tied = bool(text["tie_word_embeddings"])
    vision["out_hidden_size"] = text["hidden_size"]
    config = {
        "architectures": [HF_ARCHS[arch]],
        "model_type": MODEL_TYPES[arch],
        "text_config": dict(sorted(text.items())),
        "tie_word_embeddings": tied,
        "transformers_version": "5.25.0" if layout == "v5" else "4.57.1",
        "vision_config": vision,
        **TOKEN_IDS[arch],
    }
    return dict(sorted(config.items()))


def vision_shapes(v: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(hub name, shape) of every ``model.visual.*`` tensor."""
    d, ff, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    merged, out = d * v["spatial_merge_size"] ** 2, v["out_hidden_size"]
    yield "model.visual.patch_embed.proj.weight", (d, v["in_channels"], v["temporal_patch_size"], p, p)
    yield "model.visual.patch_embed.proj.bias", (d,)
    yield "model.visual.pos_embed.weight", (v["num_position_embeddings"], d)
    for i in range(v["depth"]):
        b = f"model.visual.blocks.{i}"
        for norm in ("norm1", "norm2"):
            yield f"{b}.{norm}.weight", (d,)
            yield f"{b}.{norm}.bias", (d,)
        for name, shape in (("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)),
                            ("mlp.linear_fc1", (ff, d)), ("mlp.linear_fc2", (d, ff))):  # fmt: skip
            yield f"{b}.{name}.weight", shape
            yield f"{b}.{name}.bias", shape[:1]
    mergers = [("model.visual.merger", d)]
    mergers += [
        (f"model.visual.deepstack_merger_list.{j}", merged) for j in range(len(v["deepstack_visual_indexes"]))
    ]
    for prefix, norm_width in mergers:
        yield f"{prefix}.norm.weight", (norm_width,)
        yield f"{prefix}.norm.bias", (norm_width,)
        yield f"{prefix}.linear_fc1.weight", (merged, merged)
        yield f"{prefix}.linear_fc1.bias", (merged,)
        yield f"{prefix}.linear_fc2.weight", (out, merged)
        yield f"{prefix}.linear_fc2.bias", (out,)


def _nested(name: str) -> str:
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    return name  # lm_head.*, mtp.*


def make_tensors(arch: str, config: dict[str, Any], seed: int, *, mtp: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    text = config["text_config"]
    tensors: dict[str, np.ndarray] = {}
    if arch in ("qwen3vl", "qwen3vlmoe"):
        for name, shape in tensor_shapes(
            "qwen3", {**text, "tie_word_embeddings": config["tie_word_embeddings"]}
        ):
            if arch == "qwen3vlmoe" and ".mlp." in name:
                continue
            tensors[_nested(name)] = init_tensor(name, shape, rng)
        if arch == "qwen3vlmoe":
            tensors.update(_packed_experts(text, rng))
    else:
        for name, shape in make_tiny_hybrid.tensor_shapes(HYBRID_TEXT[arch], text, mtp=mtp, fused=False):
            tensors[_nested(name)] = make_tiny_hybrid.init_tensor(name, shape, rng)
    for name, shape in vision_shapes(config["vision_config"]):
        if name.endswith("pos_embed.weight"):
            tensors[name] = (0.5 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors[name] = _init_vision(name.replace(".norm.weight", ".ln_q.weight"), shape, rng)
    return tensors


def _packed_experts(text: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Qwen3-VL-MoE's layout: per layer a router and the experts packed as gate_up_proj
    [E, hidden, 2 x ff] and down_proj [E, ff, hidden] (parameters, no ``.weight``)."""
    e, d, f = text["num_experts"], text["hidden_size"], text["moe_intermediate_size"]
    out: dict[str, np.ndarray] = {}
    for i in range(text["num_hidden_layers"]):
        p = f"model.language_model.layers.{i}.mlp"
        out[f"{p}.gate.weight"] = (2.0 * rng.standard_normal((e, d)) / np.sqrt(d)).astype(np.float32)
        out[f"{p}.experts.gate_up_proj"] = (rng.standard_normal((e, d, 2 * f)) / np.sqrt(d)).astype(
            np.float32
        )
        out[f"{p}.experts.down_proj"] = (rng.standard_normal((e, f, d)) / np.sqrt(f)).astype(np.float32)
    return out


def preprocessor_config(v: dict[str, Any]) -> dict[str, Any]:
    """Like the real Qwen3-VL preprocessor_config.json (a Qwen2VLImageProcessorFast), tiny budget."""
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": v["spatial_merge_size"],
        "patch_size": v["patch_size"],
        "processor_class": "Qwen3VLProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 16777216, "shortest_edge": 65536},
        "temporal_patch_size": v["temporal_patch_size"],
    }


def make_qwen3vl_checkpoint(
    out_dir: str | os.PathLike[str],
    arch: str = "qwen3vl",
    dtype: str = "bf16",
    seed: int = 0,
    *,
    layout: str = "v4",
    mtp: bool = True,
    overwrite: bool = False,
    **text_overrides: Any,
) -> Path:
    """Write a tiny random ``arch`` checkpoint to ``out_dir`` (atomically) and return its path."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    final = Path(out_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; remove it or pass overwrite=True")
    config = build_config(arch, dtype, layout, **text_overrides)
    if arch in HYBRID_TEXT and not mtp:
        config["text_config"].pop("mtp_num_hidden_layers", None)
    tensors = make_tensors(arch, config, seed, mtp=mtp)
    log = lambda msg: None  # noqa: E731
    tok = (
        default_tokenizer_dir()
        if arch not in HYBRID_TEXT
        else Path(make_tiny_hybrid.fetch_assets.fetch_qwen35_tokenizer(log=log))
    )
    text = config["text_config"]
    # _write_folder reads the ids it writes to generation_config.json from the top level
    flat = {**config, "eos_token_id": text["eos_token_id"], "bos_token_id": text["bos_token_id"]}
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.incomplete")
    try:
        _write_folder(tmp, flat, tensors, dtype, 1, tok)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        pre = preprocessor_config(config["vision_config"])
        (tmp / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
        eot, im_end = text["bos_token_id"], text["eos_token_id"]
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
    parser.add_argument("--arch", choices=ARCHS, default="qwen3vl")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--layout", choices=LAYOUTS, default="v4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    path = make_qwen3vl_checkpoint(
        args.out, args.arch, args.dtype, args.seed, layout=args.layout, overwrite=args.overwrite
    )
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"{path}: {args.arch} {args.dtype} ({args.layout} config), {size / 2**20:.1f} MiB")
    return 0


__all__ = ["ARCHS", "make_qwen3vl_checkpoint", "random_image"]

if __name__ == "__main__":
    sys.exit(main())
