"""Hugging Face Qwen checkpoint -> GGUF, without torch.

Modules follow the data: ``source`` (folder or hub) -> ``architectures`` (config.json) ->
``safetensors`` (validated headers, streamed reads) -> ``tensors`` (names via gguf-py, output
types, expert stacking) -> ``tokenizer`` + ``metadata`` -> ``pipeline`` (atomic write, quantize,
quality report).
"""

from .pipeline import ConvertResult, convert

__all__ = ["ConvertResult", "convert"]
