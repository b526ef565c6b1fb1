"""The edge-qwen runtime: chat templates, streaming text, sampling presets and the llama.cpp engine.

Names are imported lazily so that ``import edge_qwen.runtime.text.chat_template`` (pure text) does not
load llama.cpp's shared libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "Model": ".model",
    "GenerationStream": ".model",
    "AsyncGenerationStream": ".model",
    "ModelSettings": "..settings",
    "GenerationChunk": ".results",
    "GenerationResult": ".results",
    "Usage": ".results",
    "Timings": ".results",
    "SamplingParams": ".presets",
    "RenderedPrompt": ".text.chat_template",
}

__all__ = [
    "AsyncGenerationStream",
    "GenerationChunk",
    "GenerationResult",
    "GenerationStream",
    "Model",
    "ModelSettings",
    "RenderedPrompt",
    "SamplingParams",
    "Timings",
    "Usage",
]

if TYPE_CHECKING:
    from ..settings import ModelSettings
    from .model import AsyncGenerationStream, GenerationStream, Model
    from .presets import SamplingParams
    from .results import GenerationChunk, GenerationResult, Timings, Usage
    from .text.chat_template import RenderedPrompt


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
