"""config.json as transformers writes it, in either of its layouts, turned into the one the converter
reads.

transformers 5 moved ``rope_theta`` and ``rope_scaling`` into one ``rope_parameters`` mapping
(``{"rope_type", "rope_theta", "factor", "original_max_position_embeddings", "mrope_section"}``) and
renamed Qwen3-MoE's ``num_experts`` to ``num_local_experts``; transformers 4 wrote the old keys.
Checked against configs saved by transformers 4.57.6 and 5.25.0 (``tests/convert/data``). A value
that changes the math is read from whichever layout holds it; where neither does, it is the default
transformers itself uses for that family (:data:`ROPE_THETA_DEFAULTS`), never a guess, and two
layouts that disagree are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError

# transformers' own default rope base per architecture (the same in 4.57 and 5.25): what a config
# that states none means. Qwen2-Audio's language model is a Qwen2Config.
ROPE_THETA_DEFAULTS: dict[str, float] = {
    "Qwen2ForCausalLM": 10000.0,
    "Qwen3ForCausalLM": 10000.0,
    "Qwen3Model": 10000.0,  # the same Qwen3Config (Qwen3-Embedding)
    "Qwen2MoeForCausalLM": 10000.0,
    "Qwen3MoeForCausalLM": 10000.0,
    "Qwen2VLForConditionalGeneration": 1000000.0,
    "Qwen2_5_VLForConditionalGeneration": 1000000.0,
    "Qwen2AudioForConditionalGeneration": 10000.0,
    # RotaryEmbeddingConfigMixin.default_theta (transformers 5.25): the hybrid configs set none
    "Qwen3_5ForCausalLM": 10000.0,
    "Qwen3_5MoeForCausalLM": 10000.0,
    "Qwen3_5ForConditionalGeneration": 10000.0,  # the same Qwen3_5TextConfig under text_config
    "Qwen3_5MoeForConditionalGeneration": 10000.0,
    "Qwen3NextForCausalLM": 10000.0,
}
# No Qwen3-VL entry on purpose: Qwen3VLTextConfig's default base is 5,000,000 in transformers 4.57
# and 500,000 in 5.x, so a Qwen3-VL config without one is refused rather than guessed.
# transformers 5 name -> the name the converter reads (transformers 4's)
RENAMED_KEYS: dict[str, str] = {"num_local_experts": "num_experts"}


def normalize(cfg: dict[str, Any], architecture: str, path: Path) -> dict[str, Any]:
    """``cfg`` (text keys already on top) with ``rope_theta``, ``rope_scaling`` and the renamed keys
    in transformers 4's layout, whichever layout it came in.

    Raises:
        CheckpointError: the two layouts disagree, or no rope base is given for a family whose
            transformers default is unknown here.
    """
    out = dict(cfg)
    for new, old in RENAMED_KEYS.items():
        if out.get(new) is not None:
            if out.get(old) is not None and out[old] != out[new]:
                raise CheckpointError(f"{path}: {old}={out[old]} but {new}={out[new]}; fix config.json")
            out[old] = out[new]
    params = out.get("rope_parameters")
    if isinstance(params, dict):
        out["rope_theta"] = _one_value(out, params, path)
        rest = {k: v for k, v in params.items() if k != "rope_theta"}
        if out.get("rope_scaling") is None and _scales(rest):
            out["rope_scaling"] = rest
    if out.get("rope_theta") is None:
        if architecture not in ROPE_THETA_DEFAULTS:
            raise CheckpointError(
                f"{path}: no rope_theta (nor rope_parameters.rope_theta) and no known transformers "
                f"default for {architecture}; add the model's rope base to config.json"
            )
        out["rope_theta"] = ROPE_THETA_DEFAULTS[architecture]
    return out


def _one_value(cfg: dict[str, Any], params: dict[str, Any], path: Path) -> Any:
    """The rope base, from ``rope_parameters`` or the top level; refused when both say different."""
    inner, outer = params.get("rope_theta"), cfg.get("rope_theta")
    if inner is not None and outer is not None and float(inner) != float(outer):
        raise CheckpointError(
            f"{path}: rope_theta={outer} but rope_parameters.rope_theta={inner}; config.json mixes "
            "transformers 4 and 5 layouts — keep the one the model was trained with"
        )
    return inner if inner is not None else outer


def _scales(params: dict[str, Any]) -> bool:
    """Whether ``rope_parameters`` (less its base) says more than plain RoPE: a scaling type or
    Qwen-VL's M-RoPE sections."""
    kind = params.get("rope_type") or params.get("type")
    return kind not in (None, "default") or any(k not in ("rope_type", "type") for k in params)
