#!/usr/bin/env python3
"""Tiny random PEFT LoRA adapters for a tiny checkpoint (scripts/make_tiny_checkpoints.py), for tests.

The folder looks like PEFT's ``save_pretrained`` output: ``adapter_config.json`` with PEFT's keys
and ``adapter_model.safetensors`` with names ``base_model.model.<module>.lora_A.weight`` [r, in]
and ``….lora_B.weight`` [out, r]. Unlike a fresh PEFT adapter (B = 0), both halves are random, at
a scale where ``scale · B·A`` is about half the size of the base weight, so the adapter visibly
changes the logits whatever r and alpha are.

    python scripts/make_tiny_adapters.py OUT --base CHECKPOINT --r 8 --alpha 16 --targets q_proj,v_proj
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_tiny_checkpoints import tensor_shapes, write_safetensors  # noqa: E402

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ARCH_OF = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe",
    "Qwen2MoeForCausalLM": "qwen2moe",
}


def _pattern(patterns: dict[str, Any], module: str) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: an exact name, or a dotted-suffix regex."""
    for key, value in patterns.items():
        if key == module or re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def adapter_config(base_dir: Path, **fields: Any) -> dict[str, Any]:
    """adapter_config.json as PEFT 0.15 writes it for a causal-LM LoRA; ``fields`` replace keys."""
    config: dict[str, Any] = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": str(base_dir),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": 8,
        "rank_pattern": {},
        "revision": None,
        "target_modules": list(ALL_TARGETS),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
    config.update(fields)
    return config


def config_from_gguf(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config.json with a dense Qwen GGUF's shapes: enough to make adapters for a real base file."""
    import gguf

    from edge_qwen.gguf_header import read_header

    h = read_header(path)
    value, K = h.arch_value, gguf.Keys
    n_embd, n_head = value(K.LLM.EMBEDDING_LENGTH), value(K.Attention.HEAD_COUNT)
    return {
        "architectures": [{"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[h.architecture]],
        "hidden_size": n_embd,
        "num_hidden_layers": value(K.LLM.BLOCK_COUNT),
        "intermediate_size": value(K.LLM.FEED_FORWARD_LENGTH),
        "num_attention_heads": n_head,
        "num_key_value_heads": value(K.Attention.HEAD_COUNT_KV),
        "head_dim": value(K.Attention.KEY_LENGTH) or n_embd // n_head,
        "vocab_size": h.array_lengths.get(K.Tokenizer.LIST, 151936),
        "tie_word_embeddings": "output.weight" not in {t.name for t in h.tensors},
        "max_position_embeddings": value(K.LLM.CONTEXT_LENGTH),
        "rms_norm_eps": value(K.Attention.LAYERNORM_RMS_EPS),
    }


def make_lora_tensors(base_dir: Path, config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Random lora_A / lora_B for every base projection named in ``target_modules``."""
    base = json.loads((base_dir / "config.json").read_text())
    rng = np.random.default_rng(seed)
    targets = tuple(config["target_modules"])
    out: dict[str, np.ndarray] = {}
    for name, shape in tensor_shapes(ARCH_OF[base["architectures"][0]], base):
        module = name.removesuffix(".weight")
        if not (name.endswith(".weight") and module.rsplit(".", 1)[-1] in targets):
            continue
        r = int(_pattern(config["rank_pattern"], module) or config["r"])
        alpha = float(_pattern(config["alpha_pattern"], module) or config["lora_alpha"])
        scale = alpha / math.sqrt(r) if config["use_rslora"] else alpha / r
        n_out, n_in = shape
        a = rng.standard_normal((r, n_in)) / math.sqrt(n_in)
        b = rng.standard_normal((n_out, r)) * 0.5 / ((abs(scale) or 1.0) * math.sqrt(r))
        out[f"base_model.model.{module}.lora_A.weight"] = a.astype(np.float32)
        out[f"base_model.model.{module}.lora_B.weight"] = b.astype(np.float32)
    return out


def make_adapter(
    out_dir: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    *,
    seed: int = 1,
    dtype: str = "f32",
    tensors: dict[str, np.ndarray] | None = None,
    overwrite: bool = False,
    **fields: Any,
) -> Path:
    """Write a random PEFT LoRA adapter for the checkpoint ``base_dir`` and return its folder.

    ``fields`` are adapter_config.json keys (``r=4``, ``lora_alpha=8``, ``use_rslora=True``,
    ``target_modules=["q_proj"]`` …). ``tensors`` adds or replaces tensors after the random ones
    are drawn (for building broken adapters). The folder appears complete or not at all.
    """
    final, base = Path(out_dir), Path(base_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; remove it or pass overwrite=True")
    config = adapter_config(base, **fields)
    weights = {**make_lora_tensors(base, config, seed), **(tensors or {})}
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.incomplete")
    try:
        tmp.mkdir()
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        write_safetensors(tmp / "adapter_model.safetensors", weights, dtype)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="adapter folder to create")
    parser.add_argument("--base", type=Path, required=True, help="the tiny checkpoint it adapts")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated module names")
    parser.add_argument("--rslora", action="store_true", help="use_rslora: scale alpha / sqrt(r)")
    parser.add_argument("--dtype", choices=("f32", "f16", "bf16"), default="f32")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    path = make_adapter(
        args.out,
        args.base,
        seed=args.seed,
        dtype=args.dtype,
        overwrite=args.overwrite,
        r=args.r,
        lora_alpha=args.alpha,
        target_modules=args.targets.split(","),
        use_rslora=args.rslora,
    )
    print(f"{path}: r={args.r} alpha={args.alpha} targets={args.targets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
