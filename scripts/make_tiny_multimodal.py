#!/usr/bin/env python3
"""Tiny random-weight Qwen2-VL, Qwen2.5-VL and Qwen2-Audio checkpoints, for the multimodal tests.

Same idea as ``make_tiny_checkpoints.py`` (whose safetensors writer and text-model tensors this
reuses): the exact tensor names and config.json keys of the real releases, the real Qwen
tokenizer, a real-shaped ``preprocessor_config.json``, tiny sizes. The sizes are ones llama.cpp's
clip loader accepts: patch 14, spatial merge 2, temporal patch 2, vision head dim divisible by 4,
and the language model's hidden size equal to the merger's output.

Two on-disk layouts exist in the wild, and one of each is produced:

* ``qwen2vl``: the hub layout of Qwen/Qwen2-VL-*: text keys at the top of config.json, tensors
  ``model.layers.*`` and ``visual.*``.
* ``qwen25vl``: the layout newer transformers writes: text keys under ``text_config``, tensors
  ``model.language_model.*`` and ``model.visual.*``; window attention (``fullatt_block_indexes``).

Qwen2-Audio (``qwen2audio``) has the hub layout of Qwen/Qwen2-Audio-7B-Instruct: ``audio_tower.*``
(Whisper encoder with its stored sinusoidal positions), ``multi_modal_projector.linear``,
``language_model.*``, and a text_config that leaves most keys to Qwen2Config's defaults. Its real
vocabulary adds ``<|audio_bos|>`` / ``<|audio_eos|>``; the Qwen3 tokenizer used here does not have
them, so mtmd tokenizes those markers as plain text (the embeddings are unaffected).

    python scripts/make_tiny_multimodal.py OUT --arch qwen25vl --dtype f32
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

from make_tiny_checkpoints import (  # noqa: E402
    DTYPES,
    ENDOFTEXT,
    IM_END,
    TOKENIZER_FILES,
    TORCH_DTYPES,
    default_tokenizer_dir,
    init_tensor,
    tensor_shapes,
    write_safetensors,
)

ARCHS = ("qwen2vl", "qwen25vl", "qwen2audio")
# Real Qwen2-VL special token ids (present in the Qwen2.5/Qwen3 tokenizer too).
VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD = 151652, 151653, 151654, 151655, 151656
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # the real preprocessor_config.json values
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_TEXT: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": ENDOFTEXT,
    "eos_token_id": IM_END,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 32768,
    "max_window_layers": 2,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    # head_dim 16 -> 8 rotary frequencies, split (temporal, height, width) like the real [16, 24, 24]
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    # Real: 1e6. With head_dim 16 that leaves the height/width sections only frequencies below 2e-3,
    # so a wrong image position would move the logits by ~1e-4 and go unnoticed; 10 makes them fast.
    "rope_theta": 10.0,
    "sliding_window": 32768,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
_TOKENS: dict[str, Any] = {
    "vision_start_token_id": VISION_START,
    "vision_end_token_id": VISION_END,
    "vision_token_id": VISION_PAD,
    "image_token_id": IMAGE_PAD,
    "video_token_id": VIDEO_PAD,
}
VISION_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2vl": {  # Qwen2-VL: embed_dim is the ViT width, hidden_size the LM width
        "depth": 2,
        "embed_dim": 64,
        "hidden_act": "quick_gelu",
        "hidden_size": 64,
        "in_chans": 3,
        "mlp_ratio": 2,
        "model_type": "qwen2_vl",
        "num_heads": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "qwen25vl": {
        "depth": 4,
        "fullatt_block_indexes": [1, 3],
        "hidden_act": "silu",
        "hidden_size": 64,
        "in_chans": 3,
        "intermediate_size": 96,
        "model_type": "qwen2_5_vl",
        "num_heads": 4,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
    },
}
HF_ARCHS = {"qwen2vl": "Qwen2VLForConditionalGeneration", "qwen25vl": "Qwen2_5_VLForConditionalGeneration"}
MODEL_TYPES = {"qwen2vl": "qwen2_vl", "qwen25vl": "qwen2_5_vl"}
PROCESSORS = {"qwen2vl": "Qwen2VLProcessor", "qwen25vl": "Qwen2_5_VLProcessor"}
NESTED_LAYOUT = {"qwen2vl": False, "qwen25vl": True}


def build_config(arch: str, dtype: str, tied: bool) -> dict[str, Any]:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; use one of {', '.join(ARCHS)}")
    if arch == "qwen2audio":
        return audio_config(dtype)
    text = {**_TEXT, "tie_word_embeddings": tied, "torch_dtype": TORCH_DTYPES[dtype]}
    top: dict[str, Any] = {
        "architectures": [HF_ARCHS[arch]],
        "model_type": MODEL_TYPES[arch],
        "transformers_version": "4.56.0" if NESTED_LAYOUT[arch] else "4.45.0",
        "vision_config": dict(VISION_CONFIGS[arch]),
        **_TOKENS,
    }
    if NESTED_LAYOUT[arch]:
        top["text_config"] = {**text, "model_type": f"{MODEL_TYPES[arch]}_text"}
        top["tie_word_embeddings"] = tied
    else:
        top.update(text)
    return dict(sorted(top.items()))


def vision_shapes(arch: str, v: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every ``visual.*`` tensor, in the order the real checkpoints list them."""
    width = v["embed_dim"] if arch == "qwen2vl" else v["hidden_size"]
    out = v["hidden_size"] if arch == "qwen2vl" else v["out_hidden_size"]
    ff = width * v["mlp_ratio"] if arch == "qwen2vl" else v["intermediate_size"]
    merged = width * v["spatial_merge_size"] ** 2
    layer_norm = arch == "qwen2vl"  # Qwen2-VL: LayerNorm (weight + bias); 2.5-VL: RMSNorm
    p = v["patch_size"]
    yield "visual.patch_embed.proj.weight", (width, v["in_chans"], v["temporal_patch_size"], p, p)
    for i in range(v["depth"]):
        b = f"visual.blocks.{i}"
        for norm in ("norm1", "norm2"):
            yield f"{b}.{norm}.weight", (width,)
            if layer_norm:
                yield f"{b}.{norm}.bias", (width,)
        yield f"{b}.attn.qkv.weight", (3 * width, width)
        yield f"{b}.attn.qkv.bias", (3 * width,)
        yield f"{b}.attn.proj.weight", (width, width)
        yield f"{b}.attn.proj.bias", (width,)
        if arch == "qwen2vl":
            mlp = [("fc1", (ff, width)), ("fc2", (width, ff))]
        else:
            mlp = [("gate_proj", (ff, width)), ("up_proj", (ff, width)), ("down_proj", (width, ff))]
        for name, shape in mlp:
            yield f"{b}.mlp.{name}.weight", shape
            yield f"{b}.mlp.{name}.bias", shape[:1]
    yield "visual.merger.ln_q.weight", (width,)
    if layer_norm:
        yield "visual.merger.ln_q.bias", (width,)
    yield "visual.merger.mlp.0.weight", (merged, merged)
    yield "visual.merger.mlp.0.bias", (merged,)
    yield "visual.merger.mlp.2.weight", (out, merged)
    yield "visual.merger.mlp.2.bias", (out,)


def _init_vision(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith(("norm1.weight", "norm2.weight", "ln_q.weight")):
        return (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(".bias"):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))  # Conv3d: in_chans x t x p x p
    return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)


def make_tensors(arch: str, config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    if arch == "qwen2audio":
        return audio_tensors(config, seed)
    rng = np.random.default_rng(seed)
    text = config.get("text_config") or config
    tensors = {name: init_tensor(name, shape, rng) for name, shape in tensor_shapes("qwen2", text)}
    for name, shape in vision_shapes(arch, config["vision_config"]):
        tensors[name] = _init_vision(name, shape, rng)
    if NESTED_LAYOUT[arch]:
        tensors = {nested_name(n): t for n, t in tensors.items()}
    return tensors


def nested_name(hub_name: str) -> str:
    """transformers >= 4.52 nests both models under ``model.``; ``lm_head`` stays at the top."""
    if hub_name.startswith("visual."):
        return "model." + hub_name
    if hub_name.startswith("model."):
        return "model.language_model." + hub_name[len("model.") :]
    return hub_name


def preprocessor_config(arch: str, v: dict[str, Any]) -> dict[str, Any]:
    if arch == "qwen2audio":
        return dict(WHISPER_FEATURES)
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": CLIP_STD,
        "max_pixels": 12845056,
        "merge_size": v["spatial_merge_size"],
        "min_pixels": 3136,
        "patch_size": v["patch_size"],
        "processor_class": PROCESSORS[arch],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "temporal_patch_size": v["temporal_patch_size"],
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def make_multimodal_checkpoint(
    out_dir: str | os.PathLike[str],
    arch: str = "qwen2vl",
    dtype: str = "f32",
    tied: bool | None = None,
    seed: int = 0,
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a tiny random ``arch`` (qwen2vl / qwen25vl) checkpoint to ``out_dir``; return its path.

    ``tied`` None keeps the tiny default (Qwen2-VL tied like the 2B, Qwen2.5-VL untied like the 7B).
    The folder appears complete or not at all.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    final = Path(out_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; remove it or pass overwrite=True")
    config = build_config(arch, dtype, bool(tied) if tied is not None else arch == "qwen2vl")
    tensors = make_tensors(arch, config, seed)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else default_tokenizer_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.incomplete")
    try:
        tmp.mkdir()
        _write_json(tmp / "config.json", config)
        media = config.get("vision_config") or config["audio_config"]
        _write_json(tmp / "preprocessor_config.json", preprocessor_config(arch, media))
        _write_json(
            tmp / "generation_config.json",
            {"bos_token_id": ENDOFTEXT, "eos_token_id": [IM_END, ENDOFTEXT], "pad_token_id": ENDOFTEXT},
        )
        for name in TOKENIZER_FILES:
            shutil.copyfile(tok_dir / name, tmp / name)
        write_safetensors(tmp / "model.safetensors", tensors, dtype)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- Qwen2-Audio -------------------------------------------------------------------------------

# Qwen2-Audio-7B-Instruct's preprocessor_config.json (WhisperFeatureExtractor, 128 mel bins).
WHISPER_FEATURES: dict[str, Any] = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "Qwen2AudioProcessor",
    "return_attention_mask": True,
    "sampling_rate": 16000,
}
AUDIO_TOKEN = 151646  # <|AUDIO|> in Qwen2-Audio's own vocabulary


def audio_config(dtype: str) -> dict[str, Any]:
    """Like the real config: a text_config that leaves rope_theta and tie_word_embeddings to Qwen2's
    defaults, and a Whisper-style audio_config."""
    text = {
        k: _TEXT[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    }
    text.update(
        model_type="qwen2",
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rms_norm_eps=1e-05,
        vocab_size=151936,
        bos_token_id=ENDOFTEXT,
        eos_token_id=IM_END,
        torch_dtype=TORCH_DTYPES[dtype],
    )
    audio = {
        "activation_function": "gelu",
        "d_model": 64,
        "dropout": 0.0,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "encoder_layers": 2,
        "max_source_positions": 1500,
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": 128,
        "scale_embedding": False,
    }
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "audio_config": audio,
        "audio_token_index": AUDIO_TOKEN,
        "model_type": "qwen2_audio",
        "text_config": text,
        "transformers_version": "4.45.0",
    }


def sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's fixed position table (what Qwen2-Audio checkpoints store as embed_positions)."""
    increment = np.log(10000) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def audio_tensors(config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    text = {**config["text_config"], "tie_word_embeddings": False}
    out: dict[str, np.ndarray] = {}
    a = config["audio_config"]
    d, ff, mels = a["d_model"], a["encoder_ffn_dim"], a["num_mel_bins"]
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("audio_tower.conv1.weight", (d, mels, 3)),
        ("audio_tower.conv1.bias", (d,)),
        ("audio_tower.conv2.weight", (d, d, 3)),
        ("audio_tower.conv2.bias", (d,)),
    ]
    for i in range(a["encoder_layers"]):
        b = f"audio_tower.layers.{i}"
        shapes += [(f"{b}.self_attn.k_proj.weight", (d, d))]  # Whisper: no bias on k
        for proj in ("v_proj", "q_proj", "out_proj"):
            shapes += [(f"{b}.self_attn.{proj}.weight", (d, d)), (f"{b}.self_attn.{proj}.bias", (d,))]
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes += [(f"{b}.{norm}.weight", (d,)), (f"{b}.{norm}.bias", (d,))]
        shapes += [(f"{b}.fc1.weight", (ff, d)), (f"{b}.fc1.bias", (ff,))]
        shapes += [(f"{b}.fc2.weight", (d, ff)), (f"{b}.fc2.bias", (d,))]
    shapes += [("audio_tower.layer_norm.weight", (d,)), ("audio_tower.layer_norm.bias", (d,))]
    shapes += [("multi_modal_projector.linear.weight", (text["hidden_size"], d))]
    shapes += [("multi_modal_projector.linear.bias", (text["hidden_size"],))]
    for name, shape in shapes:
        if name.endswith("norm.weight"):
            out[name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith(".bias"):
            out[name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    out["audio_tower.embed_positions.weight"] = sinusoids(a["max_source_positions"], d)
    for name, shape in tensor_shapes("qwen2", text):  # the hub layout nests the LM under language_model.
        out["language_model." + name] = init_tensor(name, shape, rng)
    return out


def random_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """16 kHz mono float32: two tones plus noise, loud enough that Whisper's max-8 dB clamp, not the
    log floor, decides the silent frames."""
    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1870 * t) + 0.05 * noise).astype(
        np.float32
    )


def random_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A random RGB image, uint8 [height, width, 3]: what the tests feed to mtmd and the reference."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="checkpoint folder to create")
    parser.add_argument("--arch", choices=ARCHS, default="qwen2vl")
    parser.add_argument("--dtype", choices=list(DTYPES), default="f32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    path = make_multimodal_checkpoint(
        args.out, arch=args.arch, dtype=args.dtype, seed=args.seed, overwrite=args.overwrite
    )
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"{path}: {args.arch} {args.dtype}, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
