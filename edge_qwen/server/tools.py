"""Assistant ``tool_calls`` sent back in a conversation, in the shape chat templates read.

The API returns calls with ``arguments`` as a JSON *string*, as OpenAI does (reading them out of the
answer is :mod:`edge_qwen.runtime.text.tool_calls`); Qwen's templates want ``arguments`` as an
object again when a later request carries the call.
"""

from __future__ import annotations

import json
from typing import Any


def template_tool_calls(tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant ``tool_calls`` from a request, with JSON-string arguments decoded for the template."""
    out = []
    for call in tool_calls:
        function = dict(call.get("function") or {})
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                function["arguments"] = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        out.append({**call, "function": function})
    return out
