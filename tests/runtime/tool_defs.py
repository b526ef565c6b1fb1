"""The tools the tool-call tests declare, and the real Qwen3.5 chat template (tests/runtime/data)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

QWEN35_TEMPLATE = (Path(__file__).parent / "data" / "qwen3.5-4b.jinja").read_text("utf-8")


def weather(required: tuple[str, ...] = ("city",)) -> dict[str, Any]:
    """get_weather(city, days, unit): ``required`` names the parameters a call must carry."""
    return copy.deepcopy(
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather of a city",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "days": {"type": "integer"},
                        "unit": {"type": "string", "enum": ["c", "f"]},
                    },
                    "required": list(required),
                },
            },
        }
    )
