#!/usr/bin/env python3
"""Tiny random-weight Hugging Face Qwen checkpoints, for converter tests and benchmarks.

Each checkpoint has the exact tensor names and config.json keys of the real model family
(Qwen2/2.5, Qwen3, Qwen3-MoE, Qwen2-MoE, and Qwen3's embedding and reranker releases), the real Qwen
tokenizer files, and weights drawn from a fixed seed at a scale that gives varied, non-degenerate
logits.

* ``qwen3-embedding``: the bare ``Qwen3Model`` sentence-transformers saves (no ``model.`` prefix, no
  lm_head) with ``modules.json`` and ``1_Pooling/config.json`` (last-token pooling), as
  Qwen3-Embedding ships; the same weights as ``qwen3`` of the same seed.
* ``qwen3-reranker``: a ``qwen3`` checkpoint whose ``_name_or_path`` names a Qwen3-Reranker (what
  converters recognise it by). Only numpy is needed: the
safetensors files are written by hand (8-byte little-endian header length, JSON header, raw data).

    python scripts/make_tiny_checkpoints.py OUT --arch qwen3 --dtype bf16 --shards 2
    python scripts/make_tiny_checkpoints.py tiny-qwen3-embedding --arch qwen3-embedding --dtype f32
    python scripts/make_tiny_checkpoints.py BIG --arch qwen2 --hidden 1024 --layers 8 --intermediate 2816

>>> make_checkpoint(tmp / "tiny-qwen3", arch="qwen3", dtype="f32")       # doctest: +SKIP
PosixPath('.../tiny-qwen3')
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ARCHS = ("qwen2", "qwen3", "qwen3moe", "qwen2moe", "qwen3-embedding", "qwen3-reranker")
DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
TORCH_DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Real Qwen ids: <|endoftext|>, <|im_end|>.
ENDOFTEXT, IM_END = 151643, 151645

# config.json of each family, as in the real releases but tiny. Overrides replace any key.
_COMMON: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": ENDOFTEXT,
    "eos_token_id": IM_END,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
    "max_window_layers": 2,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
_MOE: dict[str, Any] = {
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "moe_intermediate_size": 32,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": True},
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "attention_bias": False,
        "head_dim": 32,  # != hidden_size / num_attention_heads (16), as in real Qwen3
        "tie_word_embeddings": True,
    },
    "qwen3moe": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "attention_bias": False,
        "head_dim": 32,
        "norm_topk_prob": True,
        "tie_word_embeddings": False,
        **_MOE,
    },
    "qwen2moe": {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "eos_token_id": ENDOFTEXT,
        "norm_topk_prob": False,
        "qkv_bias": True,
        "shared_expert_intermediate_size": 96,
        "tie_word_embeddings": False,
        **_MOE,
        "num_experts": 6,
        "num_experts_per_tok": 3,
    },
}
CONFIGS["qwen3-embedding"] = {**CONFIGS["qwen3"], "architectures": ["Qwen3Model"]}
CONFIGS["qwen3-reranker"] = {**CONFIGS["qwen3"], "_name_or_path": "Qwen/Qwen3-Reranker-0.6B"}
# sentence-transformers' files of an embedding checkpoint (Qwen3-Embedding's, hidden size aside)
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
POOLING_MODES = (
    "cls_token",
    "mean_tokens",
    "max_tokens",
    "mean_sqrt_len_tokens",
    "weightedmean_tokens",
    "lasttoken",
)
SENTENCE_TRANSFORMERS: dict[str, str] = {"qwen3-embedding": "lasttoken"}  # arch -> pooling mode


@dataclass(frozen=True)
class Family:
    """Which optional tensors a family has."""

    qkv_bias: bool
    qk_norm: bool
    moe: bool
    shared_expert: bool
    bare: bool = False  # the bare model: no ``model.`` prefix, no lm_head (sentence-transformers)


FAMILIES = {
    "qwen2": Family(qkv_bias=True, qk_norm=False, moe=False, shared_expert=False),
    "qwen3": Family(qkv_bias=False, qk_norm=True, moe=False, shared_expert=False),
    "qwen3moe": Family(qkv_bias=False, qk_norm=True, moe=True, shared_expert=False),
    "qwen2moe": Family(qkv_bias=True, qk_norm=False, moe=True, shared_expert=True),
    "qwen3-embedding": Family(qkv_bias=False, qk_norm=True, moe=False, shared_expert=False, bare=True),
    "qwen3-reranker": Family(qkv_bias=False, qk_norm=True, moe=False, shared_expert=False),
}


# --- safetensors by hand ----------------------------------------------------------------------


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even like torch."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # cannot overflow uint32 for finite values (largest: 0xFF7FFFFF + 0x8000)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode(x: np.ndarray, dtype: str) -> bytes:
    """Raw little-endian bytes of ``x`` stored as ``dtype`` (bf16 / f16 / f32)."""
    if dtype == "bf16":
        return f32_to_bf16_bits(x).astype("<u2").tobytes()
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    if dtype == "f32":
        return x.astype("<f4").tobytes()
    raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> int:
    """Write ``tensors`` (float32 arrays) to ``path`` in ``dtype``; return the data size in bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        blob = encode(array, dtype)
        header[name] = {
            "dtype": DTYPES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the safetensors library does
    with path.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for blob in blobs:
            fh.write(blob)
    return offset


_NP_DTYPES: dict[str, np.dtype[Any]] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file as float32 arrays (BF16 / F16 / F32 only)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        np_dtype = _NP_DTYPES[info["dtype"]]
        raw = np.frombuffer(
            data, dtype=np_dtype, count=(end - start) // np_dtype.itemsize, offset=base + start
        )
        values = bf16_bits_to_f32(raw) if info["dtype"] == "BF16" else raw.astype(np.float32)
        out[name] = values.reshape(info["shape"])
    return out


def read_checkpoint(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder (single file or sharded with an index)."""
    root = Path(folder)
    index = root / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        tensors.update(read_safetensors(root / name))
    return tensors


# --- the model --------------------------------------------------------------------------------


def build_config(arch: str, dtype: str, tied: bool | None, overrides: dict[str, Any]) -> dict[str, Any]:
    if arch not in CONFIGS:
        raise ValueError(f"unknown arch {arch!r}; use one of {', '.join(ARCHS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    config = {**_COMMON, **CONFIGS[arch], "torch_dtype": TORCH_DTYPES[dtype], **overrides}
    if tied is not None:
        config["tie_word_embeddings"] = tied
    return dict(sorted(config.items()))


def tensor_shapes(arch: str, config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(Hugging Face name, shape) of every tensor, in the order the real checkpoints list them."""
    fam = FAMILIES[arch]
    d, n_layer = config["hidden_size"], config["num_hidden_layers"]
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or d // n_head
    vocab = config["vocab_size"]
    yield "model.embed_tokens.weight", (vocab, d)
    for i in range(n_layer):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (d,)
        yield f"{p}.post_attention_layernorm.weight", (d,)
        for proj, rows in (("q", n_head * head_dim), ("k", n_kv * head_dim), ("v", n_kv * head_dim)):
            yield f"{p}.self_attn.{proj}_proj.weight", (rows, d)
            if fam.qkv_bias:
                yield f"{p}.self_attn.{proj}_proj.bias", (rows,)
        yield f"{p}.self_attn.o_proj.weight", (d, n_head * head_dim)
        if fam.qk_norm:
            yield f"{p}.self_attn.q_norm.weight", (head_dim,)
            yield f"{p}.self_attn.k_norm.weight", (head_dim,)
        if fam.moe:
            yield from _moe_shapes(f"{p}.mlp", config, fam)
        else:
            yield from _mlp_shapes(f"{p}.mlp", d, config["intermediate_size"])
    yield "model.norm.weight", (d,)
    if not config["tie_word_embeddings"]:
        yield "lm_head.weight", (vocab, d)


def _mlp_shapes(prefix: str, d: int, ff: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield f"{prefix}.gate_proj.weight", (ff, d)
    yield f"{prefix}.up_proj.weight", (ff, d)
    yield f"{prefix}.down_proj.weight", (d, ff)


def _moe_shapes(prefix: str, config: dict[str, Any], fam: Family) -> Iterator[tuple[str, tuple[int, ...]]]:
    d = config["hidden_size"]
    yield f"{prefix}.gate.weight", (config["num_experts"], d)
    for e in range(config["num_experts"]):
        yield from _mlp_shapes(f"{prefix}.experts.{e}", d, config["moe_intermediate_size"])
    if fam.shared_expert:
        yield from _mlp_shapes(f"{prefix}.shared_expert", d, config["shared_expert_intermediate_size"])
        yield f"{prefix}.shared_expert_gate.weight", (1, d)


def init_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values at a scale where every block visibly changes the logits.

    Norm weights sit around 1 (but not at 1, so a converter that drops them is caught), biases are
    large enough to matter, and linear weights scale with 1/sqrt(fan_in).
    """
    if name.endswith("norm.weight"):
        return (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(".bias"):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = shape[-1]
    gain = 2.0 if name.endswith((".gate.weight", "shared_expert_gate.weight")) else 1.0
    return (gain * rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)


def make_tensors(arch: str, config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """The causal LM's tensors; a bare family's (see :class:`Family`) under the bare model's names."""
    rng = np.random.default_rng(seed)
    tensors = {name: init_tensor(name, shape, rng) for name, shape in tensor_shapes(arch, config)}
    if FAMILIES[arch].bare:
        tensors = {n.removeprefix("model."): t for n, t in tensors.items() if n != "lm_head.weight"}
    return tensors


# --- files ------------------------------------------------------------------------------------


def split_shards(tensors: dict[str, np.ndarray], shards: int) -> list[dict[str, np.ndarray]]:
    """Consecutive groups of roughly equal byte size, none empty (like save_pretrained's max_shard_size)."""
    if not 1 <= shards <= len(tensors):
        raise ValueError(f"shards must be between 1 and the number of tensors ({len(tensors)}), got {shards}")
    names = list(tensors)
    sizes = np.cumsum([tensors[n].size for n in names])
    groups: list[dict[str, np.ndarray]] = [{} for _ in range(shards)]
    for i, name in enumerate(names):
        k = min(int((sizes[i] - 1) * shards // sizes[-1]), shards - 1)
        k = max(k, shards - (len(names) - i))  # leave at least one tensor for every later shard
        k = min(k, i)  # and at least one for every earlier one
        groups[k][name] = tensors[name]
    # the two clamps can leave a hole when huge tensors come first; fill holes from the left
    for k in range(1, shards):
        while not groups[k] and len(groups[k - 1]) > 1:
            last = list(groups[k - 1])[-1]
            groups[k][last] = groups[k - 1].pop(last)
    return groups


def shard_name(k: int, n: int) -> str:
    return "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"


def default_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer, fetched and verified by scripts/fetch_assets.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fetch_assets

    return Path(fetch_assets.fetch_tokenizer(log=lambda msg: None))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _write_folder(
    folder: Path,
    config: dict[str, Any],
    tensors: dict[str, np.ndarray],
    dtype: str,
    shards: int,
    tokenizer_dir: Path,
    pooling: str | None = None,
) -> None:
    folder.mkdir(parents=True)
    _write_json(folder / "config.json", config)
    eos = [config["eos_token_id"], ENDOFTEXT] if config["eos_token_id"] != ENDOFTEXT else ENDOFTEXT
    _write_json(
        folder / "generation_config.json",
        {"bos_token_id": ENDOFTEXT, "eos_token_id": eos, "pad_token_id": ENDOFTEXT},
    )
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, folder / name)
    if pooling is not None:
        _write_sentence_transformers(folder, config["hidden_size"], pooling)
    groups = split_shards(tensors, shards)
    total = 0
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups):
        file = shard_name(k, shards)
        total += write_safetensors(folder / file, group, dtype)
        weight_map.update(dict.fromkeys(group, file))
    if shards > 1:
        _write_json(
            folder / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )


def _write_sentence_transformers(folder: Path, hidden: int, mode: str) -> None:
    """modules.json and 1_Pooling/config.json pooling by ``mode`` (one of :data:`POOLING_MODES`)."""
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; use one of {', '.join(POOLING_MODES)}")
    _write_json(folder / "modules.json", ST_MODULES)
    (folder / "1_Pooling").mkdir()
    pooling: dict[str, Any] = {"word_embedding_dimension": hidden}
    pooling.update({f"pooling_mode_{m}": m == mode for m in POOLING_MODES})
    pooling["include_prompt"] = True
    _write_json(folder / "1_Pooling" / "config.json", pooling)


def make_checkpoint(
    out_dir: str | os.PathLike[str],
    arch: str = "qwen2",
    dtype: str = "bf16",
    shards: int = 1,
    tied: bool | None = None,
    seed: int = 0,
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    pooling: str | None = None,
    **overrides: Any,
) -> Path:
    """Write a tiny random ``arch`` checkpoint to ``out_dir`` and return its path.

    ``tied`` None keeps the family's real default (dense: tied, MoE: untied); ``overrides`` replace
    config.json keys (``hidden_size=1024``, ``num_hidden_layers=8`` …). ``pooling``: the
    sentence-transformers pooling mode written (``lasttoken``, ``mean_tokens`` …; default: the
    family's, see :data:`SENTENCE_TRANSFORMERS`; ``""``: none). The folder appears complete or not
    at all: it is written under a temporary name and renamed.
    """
    final = Path(out_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; remove it or pass overwrite=True")
    config = build_config(arch, dtype, tied, overrides)
    tensors = make_tensors(arch, config, seed)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else default_tokenizer_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.incomplete")
    try:
        mode = SENTENCE_TRANSFORMERS.get(arch) if pooling is None else pooling or None
        _write_folder(tmp, config, tensors, dtype, shards, tok_dir, mode)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="checkpoint folder to create")
    parser.add_argument("--arch", choices=ARCHS, default="qwen2")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--shards", type=int, default=1)
    tie = parser.add_mutually_exclusive_group()
    tie.add_argument(
        "--tied", dest="tied", action="store_true", default=None, help="tie lm_head to embeddings"
    )
    tie.add_argument("--untied", dest="tied", action="store_false", help="write a separate lm_head.weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, help="hidden_size (default 64)")
    parser.add_argument("--layers", type=int, help="num_hidden_layers (default 2)")
    parser.add_argument("--intermediate", type=int, help="intermediate_size (default 128)")
    parser.add_argument("--heads", type=int, help="num_attention_heads (default 4)")
    parser.add_argument("--kv-heads", type=int, help="num_key_value_heads (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    keys = {
        "hidden": "hidden_size",
        "layers": "num_hidden_layers",
        "intermediate": "intermediate_size",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
    }
    overrides = {key: getattr(args, opt) for opt, key in keys.items() if getattr(args, opt) is not None}
    if args.layers is not None:
        overrides["max_window_layers"] = args.layers
    path = make_checkpoint(
        args.out,
        arch=args.arch,
        dtype=args.dtype,
        shards=args.shards,
        tied=args.tied,
        seed=args.seed,
        overwrite=args.overwrite,
        **overrides,
    )
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"{path}: {args.arch} {args.dtype}, {args.shards} shard(s), {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
