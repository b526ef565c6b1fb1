"""OpenAI tool calls <-> Qwen's ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.

Qwen's chat templates render ``tools`` into the system prompt and the model answers a call as
JSON inside ``<tool_call>`` tags. The API returns those as ``message.tool_calls`` (arguments as a
JSON *string*, as OpenAI does) and takes them back in later assistant messages, where the
template wants ``arguments`` as an object again.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from typing import Any

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def parse_tool_calls(text: str, names: Collection[str] = ()) -> tuple[str, list[dict[str, Any]]]:
    """(the text without its tool calls, OpenAI ``tool_calls``); no calls -> (text, []).

    Calls are ``<tool_call>`` blocks, or — because ``<tool_call>`` is a special token in Qwen's
    vocabulary that detokenizing drops — an answer that is nothing but JSON call objects naming
    one of the request's tools (``names``).
    """
    calls = [c for c in (_call(m.group(1)) for m in _TOOL_CALL.finditer(text)) if c is not None]
    if calls:
        return _TOOL_CALL.sub("", text).strip(), calls
    bare = _bare_calls(text, names)
    return ("", bare) if bare else (text, [])


def _call(source: str | dict[str, Any]) -> dict[str, Any] | None:
    try:
        call = json.loads(source) if isinstance(source, str) else source
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": call["name"],
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _bare_calls(text: str, names: Collection[str]) -> list[dict[str, Any]]:
    """JSON objects back to back, each a call of a known tool; [] when the text is anything else."""
    decoder = json.JSONDecoder()
    pos, calls, text = 0, [], text.strip()
    while pos < len(text) and names:
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return []
        if not isinstance(obj, dict) or obj.get("name") not in names or set(obj) - {"name", "arguments"}:
            return []
        call = _call(obj)
        if call is None:
            return []
        calls.append(call)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return calls


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
