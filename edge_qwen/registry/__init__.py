"""The Qwen model registry (models.yaml): names, sources, the local cache, and model choice."""

from __future__ import annotations

from .catalog import ModelEntry, QuantSource, Registry, load_registry, parse_spec
from .store import list_models, lookup, pull, remove, resolve_model

__all__ = [
    "ModelEntry",
    "QuantSource",
    "Registry",
    "list_models",
    "load_registry",
    "lookup",
    "parse_spec",
    "pull",
    "remove",
    "resolve_model",
]
