"""The adapter folder (local, or from the hub) and its ``adapter_config.json`` as PEFT writes it:
what the adapter computes, and what llama.cpp cannot run.

PEFT's LoRA adds ``scale · B·A·x`` to a projection's output, with ``scale = alpha / r`` (or
``alpha / √r`` with ``use_rslora``); ``rank_pattern`` / ``alpha_pattern`` override ``r`` / ``alpha``
per module. Everything else a LoRA config can ask for that changes the computation beyond that
(DoRA's magnitude vectors, trained biases, full copies of whole modules) has no place in a llama.cpp
adapter, so it is refused here with the way out, before any tensor is read.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AdapterError, UnsupportedAdapterError
from .metadata import Source
from .source import REPO_ID

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "README.md"]
MERGE_HINT = (
    "merge it into the base with PEFT (`model.merge_and_unload()`, then `save_pretrained`) and convert "
    "the merged checkpoint with `edge-qwen convert`"
)


@dataclass(frozen=True)
class LoraConfig:
    """The parts of a PEFT LoRA config that decide the computation."""

    r: int
    alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    base_model: str | None = None  # base_model_name_or_path
    base_class: str | None = None  # auto_mapping.base_model_class, when PEFT recorded it
    raw: dict[str, Any] = field(default_factory=dict)

    def rank(self, module: str) -> int:
        """The rank of ``module`` (e.g. ``model.layers.0.self_attn.q_proj``)."""
        return int(self.rank_pattern[key]) if (key := _pattern_key(self.rank_pattern, module)) else self.r

    def scale(self, module: str) -> float:
        """PEFT's ``scaling[adapter]`` for ``module``: alpha / r, or alpha / √r with rsLoRA."""
        key = _pattern_key(self.alpha_pattern, module)
        alpha = float(self.alpha_pattern[key]) if key else self.alpha
        rank = self.rank(module)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    @property
    def default_scale(self) -> float:
        """The scale of modules no pattern overrides."""
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def llama_alpha(self) -> float:
        """The ``adapter.lora.alpha`` that makes llama.cpp's ``alpha / rank`` equal PEFT's default scale.

        llama.cpp always divides by the rank; for rsLoRA the written alpha is therefore alpha·√r.
        Modules whose rank or alpha differ (``*_pattern``) get the remaining factor folded into B.
        """
        return self.alpha * math.sqrt(self.r) if self.use_rslora else self.alpha


def _pattern_key(patterns: dict[str, Any], module: str) -> str | None:
    """PEFT's rule: a pattern matches a module name exactly or as a dotted suffix (regex allowed)."""
    if module in patterns:
        return module
    return next((key for key in patterns if re.match(rf"(.*\.)?({key})$", module)), None)


def read_lora_config(folder: Path) -> LoraConfig:
    """Read and check ``adapter_config.json``.

    Raises:
        AdapterError: the file is missing, not a LoRA config, or lacks ``r`` / ``lora_alpha``.
        UnsupportedAdapterError: DoRA, biases, ``modules_to_save`` and the other features listed in
            :func:`_refuse_unsupported`.
    """
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise AdapterError(
            f"{folder}: no adapter_config.json; pass the folder PEFT's save_pretrained wrote "
            "(adapter_config.json + adapter_model.safetensors) or a hub repo id of such an adapter"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path} is not valid JSON ({exc}); save the adapter again") from exc
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise UnsupportedAdapterError(
            f"{path}: peft_type {peft_type}; llama.cpp runs LoRA adapters only. Train a LoRA, or {MERGE_HINT}"
        )
    _refuse_unsupported(path, cfg)
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or isinstance(cfg.get(key), bool):
            raise AdapterError(
                f"{path}: {key!r} is missing or not a number; the adapter config is incomplete"
            )
    if int(cfg["r"]) <= 0:
        raise AdapterError(f"{path}: r = {cfg['r']}; a LoRA rank must be positive")
    if float(cfg["lora_alpha"]) == 0.0:
        # llama.cpp reads alpha 0 as "no alpha" (scale 1), the opposite of what PEFT computes (scale 0).
        raise UnsupportedAdapterError(
            f"{path}: lora_alpha is 0, so this adapter changes nothing; use the base model as it is"
        )
    auto = cfg.get("auto_mapping") or {}
    return LoraConfig(
        r=int(cfg["r"]),
        alpha=float(cfg["lora_alpha"]),
        use_rslora=bool(cfg.get("use_rslora", False)),
        fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
        rank_pattern={str(k): int(v) for k, v in (cfg.get("rank_pattern") or {}).items()},
        alpha_pattern={str(k): float(v) for k, v in (cfg.get("alpha_pattern") or {}).items()},
        base_model=cfg.get("base_model_name_or_path") or None,
        base_class=auto.get("base_model_class") if isinstance(auto, dict) else None,
        raw=cfg,
    )


def _refuse_unsupported(path: Path, cfg: dict[str, Any]) -> None:
    if cfg.get("use_dora"):
        raise UnsupportedAdapterError(
            f"{path}: use_dora is set; DoRA rescales every weight column by a learned magnitude, which a "
            f"llama.cpp LoRA cannot express. {MERGE_HINT[0].upper()}{MERGE_HINT[1:]}"
        )
    if str(cfg.get("bias", "none")) != "none":
        raise UnsupportedAdapterError(
            f"{path}: bias = {cfg['bias']!r}; the adapter trained bias vectors, which llama.cpp adapters "
            f"cannot carry. Retrain with bias='none', or {MERGE_HINT}"
        )
    if cfg.get("lora_bias"):
        raise UnsupportedAdapterError(
            f"{path}: lora_bias is set (lora_B has a bias); llama.cpp adapters cannot carry it. {MERGE_HINT}"
        )
    if cfg.get("modules_to_save"):
        raise UnsupportedAdapterError(
            f"{path}: modules_to_save = {cfg['modules_to_save']}; the adapter holds full trained copies of "
            "those modules (typically embed_tokens / lm_head after adding tokens), and llama.cpp's LoRA "
            f"loader only takes low-rank pairs. To run it, {MERGE_HINT}"
        )
    if cfg.get("trainable_token_indices"):
        raise UnsupportedAdapterError(
            f"{path}: trainable_token_indices replaces embedding rows, which llama.cpp adapters cannot do. "
            f"{MERGE_HINT[0].upper()}{MERGE_HINT[1:]}"
        )
    if cfg.get("layer_replication"):
        raise UnsupportedAdapterError(
            f"{path}: layer_replication changes the number of layers of the base; {MERGE_HINT}"
        )


def resolve_adapter(adapter: str | Path, revision: str | None) -> Source:
    """A local adapter folder as is; ``org/name`` from the hub (or its cache), adapter files only."""
    path = Path(adapter).expanduser()
    if path.is_dir():
        return Source(path)
    if path.exists():
        raise AdapterError(f"{path} is a file; pass the adapter folder that holds adapter_config.json")
    if not REPO_ID.match(str(adapter)):
        raise AdapterError(f"{adapter}: no such folder, and not a hub repo id like org/my-qwen-lora")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from ..errors import DownloadError

    try:
        folder = snapshot_download(str(adapter), revision=revision, allow_patterns=ADAPTER_FILES)
    except LocalEntryNotFoundError as exc:
        raise DownloadError(
            f"{adapter}@{revision or 'main'} is not in the local Hugging Face cache and the hub cannot be "
            "reached (offline or HF_HUB_OFFLINE=1). Download it on a connected machine "
            f"(`huggingface-cli download {adapter}`) and copy the cache, or pass a local folder."
        ) from exc
    except HfHubHTTPError as exc:
        raise DownloadError(f"downloading {adapter}: {exc}; check the repo id, revision and token") from exc
    return Source(Path(folder), repo_id=str(adapter), revision=Path(folder).name)
