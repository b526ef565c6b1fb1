"""The OpenAI-compatible HTTP server (``edge-qwen serve``); needs the ``server`` extra."""

from __future__ import annotations

from .app import APIError, ServerConfig, create_app, register_error
from .provider import ModelProvider, SchedulerProvider, StaticProvider, model_name

__all__ = [
    "APIError",
    "ModelProvider",
    "SchedulerProvider",
    "ServerConfig",
    "StaticProvider",
    "create_app",
    "model_name",
    "register_error",
]
