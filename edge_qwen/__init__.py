"""edge-qwen: run Qwen models offline — HF -> GGUF conversion, quantization, and a llama.cpp runtime.

``import edge_qwen`` stays cheap: public names are resolved on first use (module ``__getattr__``),
so llama.cpp's libraries load only when the runtime is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Model": "edge_qwen.runtime.model",
    "GenerationStream": "edge_qwen.runtime.model",
    "AsyncGenerationStream": "edge_qwen.runtime.model",
    "ModelSettings": "edge_qwen.settings",
    "GenerationChunk": "edge_qwen.runtime.results",
    "GenerationResult": "edge_qwen.runtime.results",
    "Usage": "edge_qwen.runtime.results",
    "Timings": "edge_qwen.runtime.results",
    "SamplingParams": "edge_qwen.runtime.presets",
    "convert": "edge_qwen.convert",
    "ConvertResult": "edge_qwen.convert",
    "convert_lora": "edge_qwen.convert.lora",
    "LoraResult": "edge_qwen.convert.lora",
    "quantize": "edge_qwen.quantize",
    "evaluate_quality": "edge_qwen.quality",
    "gguf_info": "edge_qwen.gguf_info",
    "Scheduler": "edge_qwen.scheduler.scheduler",
    "MemoryEstimate": "edge_qwen.sizing.estimate",
    "estimate_memory": "edge_qwen.sizing.estimate",
    "pull": "edge_qwen.registry.store",
    "resolve_model": "edge_qwen.registry.store",
}

__all__ = [
    "AsyncGenerationStream",
    "convert",
    "convert_lora",
    "ConvertResult",
    "LoraResult",
    "estimate_memory",
    "evaluate_quality",
    "GenerationChunk",
    "GenerationResult",
    "GenerationStream",
    "gguf_info",
    "MemoryEstimate",
    "Model",
    "ModelSettings",
    "pull",
    "quantize",
    "resolve_model",
    "SamplingParams",
    "Scheduler",
    "Timings",
    "Usage",
]

if TYPE_CHECKING:
    from .convert import ConvertResult, convert
    from .convert.lora import LoraResult, convert_lora
    from .gguf_info import gguf_info
    from .quality import evaluate_quality
    from .quantize import quantize
    from .registry.store import pull, resolve_model
    from .runtime.model import AsyncGenerationStream, GenerationStream, Model
    from .runtime.presets import SamplingParams
    from .runtime.results import GenerationChunk, GenerationResult, Timings, Usage
    from .scheduler.scheduler import Scheduler
    from .settings import ModelSettings
    from .sizing.estimate import MemoryEstimate, estimate_memory


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
