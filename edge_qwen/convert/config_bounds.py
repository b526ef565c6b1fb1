"""What a config.json value may be, as data, checked before the converter sizes anything by it.

config.json decides how much the converter allocates (the vocabulary is padded to ``vocab_size``,
gguf-py's name map is built for ``num_hidden_layers`` blocks), so a value that lies must be refused
first, with the field it is in. Every bound is far above what any released model has (Qwen3.5's
248,320-token vocabulary, 16,384-wide hidden states, 128 layers or heads, 10M-token contexts) and
far below what would exhaust memory; :func:`check_weights` then holds the sizes to the tensors the
safetensors headers really contain, before the tokenizer is padded or a tensor is planned.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ShapeMismatchError


@dataclass(frozen=True)
class Whole:
    """An integer from ``lo`` to ``hi`` (a bool, or a float such as ``1e12``, is not one)."""

    lo: int
    hi: int

    def refusal(self, value: Any) -> str | None:
        ok = _is_int(value) and self.lo <= value <= self.hi
        return None if ok else f"it must be a whole number from {self.lo:,} to {self.hi:,}"


@dataclass(frozen=True)
class Number:
    """A number above ``lo`` and at most ``hi`` (so never NaN or infinite)."""

    lo: float
    hi: float

    def refusal(self, value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and self.lo < value <= self.hi
        return None if ok else f"it must be a number above {self.lo:g} and at most {self.hi:g}"


@dataclass(frozen=True)
class Wholes:
    """A list of at most ``most`` integers, each from ``lo`` to ``hi``."""

    lo: int
    hi: int
    most: int

    def refusal(self, value: Any) -> str | None:
        ok = isinstance(value, list) and len(value) <= self.most
        ok = ok and all(_is_int(v) and self.lo <= v <= self.hi for v in value)
        return None if ok else f"it must list at most {self.most} whole numbers from {self.lo} to {self.hi:,}"


@dataclass(frozen=True)
class Kind:
    """A JSON value of one Python type: ``bool`` (the string ``"false"`` would read as true), ``list``
    of class names …"""

    type: type
    what: str

    def refusal(self, value: Any) -> str | None:
        return None if isinstance(value, self.type) else f"it must be {self.what}"


FLAG = Kind(bool, "true or false")
Rule = Whole | Number | Wholes | Kind
Table = dict[str, "Rule | Table"]  # a nested table: the key holds an object checked against it

MAX_VOCAB = 2**20  # 1,048,576 tokens; Qwen3.5 has 248,320, the largest released vocabularies 262,144
MAX_WIDTH = 2**16  # hidden sizes; the widest released models use 16,384
MAX_FF = 2**20  # MLP widths; the widest released ones are about 53,248
MAX_LAYERS = 1024  # blocks; the deepest released models have 126
MAX_HEADS = 1024  # attention heads; the most released models have 128
MAX_HEAD_DIM = 8192
MAX_CTX = 2**24  # 16,777,216 positions; the longest released contexts are 10M (GGUF stores a uint32)
MAX_EXPERTS = 4096  # routed experts; the most released models have 512

ROPE: Table = {
    "rope_theta": Number(0, 1e12),
    "factor": Number(0, 128),  # with MAX_CTX, the scaled context still fits GGUF's uint32
    "original_max_position_embeddings": Whole(1, MAX_CTX),
    "partial_rotary_factor": Number(0, 1),
    "mrope_section": Wholes(0, MAX_HEAD_DIM, 4),
    "mrope_interleaved": FLAG,
}
TEXT: Table = {
    "vocab_size": Whole(1, MAX_VOCAB),
    "hidden_size": Whole(1, MAX_WIDTH),
    "intermediate_size": Whole(0, MAX_FF),  # 0 or absent in MoE configs without dense layers
    "num_hidden_layers": Whole(1, MAX_LAYERS),
    "num_attention_heads": Whole(1, MAX_HEADS),
    "num_key_value_heads": Whole(1, MAX_HEADS),
    "head_dim": Whole(1, MAX_HEAD_DIM),
    "max_position_embeddings": Whole(1, MAX_CTX),
    "rms_norm_eps": Number(0, 1),
    "rope_theta": Number(0, 1e12),
    "rope_scaling": ROPE,
    "rope_parameters": ROPE,
    "partial_rotary_factor": Number(0, 1),
    "tie_word_embeddings": FLAG,
    "num_experts": Whole(0, MAX_EXPERTS),
    "num_local_experts": Whole(0, MAX_EXPERTS),
    "num_experts_per_tok": Whole(0, MAX_EXPERTS),
    "moe_intermediate_size": Whole(0, MAX_FF),
    "shared_expert_intermediate_size": Whole(0, MAX_FF),
    "norm_topk_prob": FLAG,
    "decoder_sparse_step": Whole(1, MAX_LAYERS),
    "full_attention_interval": Whole(1, MAX_LAYERS),
    "linear_conv_kernel_dim": Whole(1, 1024),
    "linear_num_key_heads": Whole(1, MAX_HEADS),
    "linear_num_value_heads": Whole(1, MAX_HEADS),
    "linear_key_head_dim": Whole(1, MAX_HEAD_DIM),
    "linear_value_head_dim": Whole(1, MAX_HEAD_DIM),
    "mtp_num_hidden_layers": Whole(0, MAX_LAYERS),
}
VISION: Table = {
    "depth": Whole(1, MAX_LAYERS),
    "hidden_size": Whole(1, MAX_WIDTH),
    "embed_dim": Whole(1, MAX_WIDTH),
    "out_hidden_size": Whole(1, MAX_WIDTH),
    "intermediate_size": Whole(1, MAX_FF),
    "mlp_ratio": Whole(1, 64),
    "num_heads": Whole(1, MAX_HEADS),
    "patch_size": Whole(1, 1024),
    "spatial_merge_size": Whole(1, 64),
    "temporal_patch_size": Whole(1, 64),
    "in_chans": Whole(1, 64),
    "in_channels": Whole(1, 64),
    "window_size": Whole(1, MAX_WIDTH),
    "num_position_embeddings": Whole(1, MAX_CTX),
    "fullatt_block_indexes": Wholes(0, MAX_LAYERS - 1, MAX_LAYERS),
    "deepstack_visual_indexes": Wholes(0, MAX_LAYERS - 1, MAX_LAYERS),
}
AUDIO: Table = {
    "d_model": Whole(1, MAX_WIDTH),
    "encoder_ffn_dim": Whole(1, MAX_FF),
    "encoder_attention_heads": Whole(1, MAX_HEADS),
    "encoder_layers": Whole(1, MAX_LAYERS),
    "num_mel_bins": Whole(1, 1024),
    "max_source_positions": Whole(1, MAX_CTX),
    "scale_embedding": FLAG,
}
CONFIG: Table = {
    **TEXT,
    "architectures": Kind(list, "a list of class names"),
    "text_config": TEXT,
    "vision_config": VISION,
    "audio_config": AUDIO,
}


def read_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold one object (config.json, an index, preprocessor_config.json).

    Raises:
        CheckpointError: not valid UTF-8 JSON, or a JSON value other than an object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a 5000-digit number, deep nesting
        raise CheckpointError(f"{path}: not valid JSON ({exc}); download the file again") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(data).__name__}, not an object; it is corrupt")
    return data


def check_config(cfg: dict[str, Any], path: Path, table: Table = CONFIG, where: str = "") -> None:
    """Every key of ``table`` that ``cfg`` sets (null means unset) is of its kind and within bounds.

    Raises:
        CheckpointError: naming the first field that is not, e.g. ``text_config.vocab_size``.
    """
    for key, rule in table.items():
        value = cfg.get(key)
        if value is None:
            continue
        field = f"{where}{key}"
        if isinstance(rule, dict):
            if not isinstance(value, dict):
                raise CheckpointError(f"{path}: {field} is {_shown(value)}; it must be an object")
            check_config(value, path, rule, f"{field}.")
            continue
        problem = rule.refusal(value)
        if problem is not None:
            raise CheckpointError(f"{path}: {field} is {_shown(value)}; {problem}")


# The language model's tensors, whichever class saved them (VL: model.language_model.*, Audio:
# language_model.model.*), spelled as the text-only checkpoints spell them.
_TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def check_weights(
    path: Path, shapes: dict[str, tuple[int, ...]], n_vocab: int, n_embd: int, n_layer: int
) -> None:
    """config.json's sizes against the tensors the headers hold, before anything is sized by them.

    ``shapes`` maps each checkpoint tensor name to its shape.

    Raises:
        ShapeMismatchError: the embedding (or lm_head) is not ``vocab_size`` × ``hidden_size``.
        CheckpointError: the checkpoint's ``model.layers.N`` are not layers 0 … ``num_hidden_layers`` - 1.
    """
    layers: set[int] = set()
    for name, shape in shapes.items():
        for old, new in _TEXT_PREFIXES:
            if name.startswith(old):
                name = new + name.removeprefix(old)
                break
        if name in ("model.embed_tokens.weight", "lm_head.weight") and tuple(shape) != (n_vocab, n_embd):
            raise ShapeMismatchError(
                f"{path}: vocab_size {n_vocab:,} × hidden_size {n_embd:,} but the checkpoint's {name} is "
                f"{' × '.join(f'{d:,}' for d in shape)}; config.json and the weights belong to different "
                "models"
            )
        if m := _LAYER.match(name):
            layers.add(int(m.group(1)))
    if layers != set(range(n_layer)):
        held = f"layers {min(layers)} to {max(layers)}" if layers else "no model.layers.*"
        missing = max(layers, default=-1) + 1 - len(layers)
        gaps = f" with {missing} missing" if missing else ""
        raise CheckpointError(
            f"{path}: num_hidden_layers is {n_layer:,} but the checkpoint holds {held}{gaps}; "
            "config.json and the weights belong to different models, or the download is incomplete"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
