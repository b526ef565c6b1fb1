"""The hyper-parameters only hybrid Qwen models have (Qwen3.5, Qwen3.5-MoE, Qwen3-Next): which
layers are Gated DeltaNet (linear attention) and which gated full attention, the linear-attention
head layout, partial rotary and M-RoPE sections, and the multi-token-prediction (MTP) head.

Read from config.json in either transformers layout; an absent key takes the default transformers
itself gives it (``Qwen3_5TextConfig`` / ``Qwen3NextConfig`` in 5.25), named here, and a value
llama.cpp's graph cannot run is refused with the key that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

LINEAR, FULL = "linear_attention", "full_attention"
# transformers' defaults (identical for the three families) for keys a config may leave out.
DEFAULTS: dict[str, Any] = {
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "full_attention_interval": 4,
    "partial_rotary_factor": 0.25,
}
# llama.cpp's QWEN35 / QWEN35MOE loaders require rope sections; this is the upstream default
# (Qwen3_5 rotary embedding's mrope_section), for a rotary width of 64.
QWEN35_MROPE_SECTION = (11, 11, 10)


@dataclass(frozen=True)
class LinearAttention:
    """A Gated DeltaNet layer's shape: key heads share a key/query projection, value heads are
    ``n_v_heads / n_k_heads`` per key head."""

    conv_kernel: int
    n_k_heads: int
    n_v_heads: int
    key_dim: int
    value_dim: int

    @property
    def qk_channels(self) -> int:
        return 2 * self.n_k_heads * self.key_dim

    @property
    def v_channels(self) -> int:
        return self.n_v_heads * self.value_dim

    @property
    def conv_channels(self) -> int:
        return self.qk_channels + self.v_channels

    @property
    def v_per_k(self) -> int:
        return self.n_v_heads // self.n_k_heads


@dataclass(frozen=True)
class Hybrid:
    """What makes a hybrid checkpoint's layers differ from one another."""

    layer_kinds: tuple[str, ...]  # LINEAR or FULL, one per trunk layer
    linear: LinearAttention
    rope_dims: int  # rotary width per head: head_dim × partial_rotary_factor
    full_attention_interval: int
    mrope_sections: tuple[int, ...]  # (t, h, w, 0) for Qwen3.5; () when the config has none
    n_mtp_declared: int  # mtp_num_hidden_layers (0 when the config does not say)
    n_mtp: int = 0  # MTP layers written (found in the checkpoint, unless left out)
    mtp_only: bool = False  # the GGUF holds the MTP head alone (a drafting file)

    def recurrent(self, bid: int) -> bool:
        return bid < len(self.layer_kinds) and self.layer_kinds[bid] == LINEAR

    @property
    def n_linear(self) -> int:
        return sum(kind == LINEAR for kind in self.layer_kinds)


def read_hybrid(cfg: dict[str, Any], path: Path, n_layer: int, head_dim: int, needs_sections: bool) -> Hybrid:
    """The hybrid part of ``cfg`` (text keys on top, rope keys normalized to transformers 4's names).

    Raises:
        CheckpointError: inconsistent layer kinds, a head layout llama.cpp cannot run, or rope
            sections that do not cover the rotary width.
    """

    def get(key: str) -> Any:
        value = cfg.get(key)
        return DEFAULTS[key] if value is None else value

    linear = LinearAttention(
        conv_kernel=_positive(path, "linear_conv_kernel_dim", get("linear_conv_kernel_dim")),
        n_k_heads=_positive(path, "linear_num_key_heads", get("linear_num_key_heads")),
        n_v_heads=_positive(path, "linear_num_value_heads", get("linear_num_value_heads")),
        key_dim=_positive(path, "linear_key_head_dim", get("linear_key_head_dim")),
        value_dim=_positive(path, "linear_value_head_dim", get("linear_value_head_dim")),
    )
    if linear.n_v_heads % linear.n_k_heads:
        raise CheckpointError(
            f"{path}: linear_num_value_heads={linear.n_v_heads} is not a multiple of "
            f"linear_num_key_heads={linear.n_k_heads}; the checkpoint's config.json is inconsistent"
        )
    if linear.key_dim != linear.value_dim:
        raise CheckpointError(
            f"{path}: linear_key_head_dim={linear.key_dim} != linear_value_head_dim={linear.value_dim}; "
            "llama.cpp's Gated DeltaNet uses one head size for both, so this model cannot run there"
        )
    interval = _positive(path, "full_attention_interval", get("full_attention_interval"))
    kinds = _layer_kinds(cfg, path, n_layer, interval)
    rope_dims = _rope_dims(cfg, path, head_dim)
    sections = _sections(cfg, path, rope_dims, needs_sections)
    n_mtp = cfg.get("mtp_num_hidden_layers") or 0
    return Hybrid(
        kinds, linear, rope_dims, interval, sections, _non_negative(path, "mtp_num_hidden_layers", n_mtp)
    )


def _layer_kinds(cfg: dict[str, Any], path: Path, n_layer: int, interval: int) -> tuple[str, ...]:
    kinds = cfg.get("layer_types")
    if kinds is None:  # transformers builds them from full_attention_interval
        return tuple(LINEAR if (i + 1) % interval else FULL for i in range(n_layer))
    if not isinstance(kinds, list) or len(kinds) != n_layer:
        count = len(kinds) if isinstance(kinds, list) else "no list of"
        raise CheckpointError(
            f"{path}: layer_types has {count} entries but num_hidden_layers is {n_layer}; "
            "fix config.json so that every layer has one kind"
        )
    unknown = sorted({str(k) for k in kinds} - {LINEAR, FULL})
    if unknown:
        raise CheckpointError(
            f"{path}: layer_types names {unknown}; a hybrid Qwen layer is {LINEAR!r} or {FULL!r}"
        )
    if FULL not in kinds:
        raise CheckpointError(f"{path}: layer_types has no {FULL!r} layer; this is not a Qwen hybrid layout")
    return tuple(kinds)


def _rope_dims(cfg: dict[str, Any], path: Path, head_dim: int) -> int:
    raw = cfg.get("rope_parameters")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    inner, outer = params.get("partial_rotary_factor"), cfg.get("partial_rotary_factor")
    if inner is not None and outer is not None and float(inner) != float(outer):
        raise CheckpointError(
            f"{path}: partial_rotary_factor={outer} but rope_parameters.partial_rotary_factor={inner}; "
            "keep the one the model was trained with"
        )
    factor = float(
        inner if inner is not None else outer if outer is not None else DEFAULTS["partial_rotary_factor"]
    )
    dims = int(head_dim * factor)
    if not 0 < factor <= 1 or dims % 2:
        raise CheckpointError(
            f"{path}: partial_rotary_factor {factor} × head_dim {head_dim} gives {head_dim * factor} "
            "rotary dimensions; it must be an even count within the head"
        )
    return dims


def _sections(cfg: dict[str, Any], path: Path, rope_dims: int, needs_sections: bool) -> tuple[int, ...]:
    scaling = cfg.get("rope_scaling") or {}
    given = scaling.get("mrope_section") if isinstance(scaling, dict) else None
    if given is None and not needs_sections:
        return ()
    sections = tuple(int(s) for s in (given if given is not None else QWEN35_MROPE_SECTION))
    if len(sections) not in (3, 4) or sum(sections) != rope_dims // 2:
        where = "rope_parameters.mrope_section" if given is not None else "the default mrope_section"
        raise CheckpointError(
            f"{path}: {where} {list(sections)} must be 3 sizes summing to half the rotary width "
            f"({rope_dims // 2}); set rope_parameters.mrope_section in config.json"
        )
    return (*sections, 0)[:4]


def _positive(path: Path, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{path}: {key} is {value!r}; it must be a positive integer")
    return value


def _non_negative(path: Path, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{path}: {key} is {value!r}; it must be a whole number")
    return value
