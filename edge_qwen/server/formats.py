"""OpenAI JSON shapes: whole answers and stream chunks for chat and text completions.

Qwen3 reasoning goes to ``reasoning_content`` (the field DeepSeek and vLLM use); Qwen tool calls
become ``tool_calls`` (see :mod:`.tools`).
"""

from __future__ import annotations

import time
from typing import Any

from ..runtime.results import GenerationChunk, GenerationResult
from .tools import parse_tool_calls


def usage(result: GenerationResult) -> dict[str, Any]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


class Format:
    """OpenAI JSON for one endpoint: the whole answer, and the stream's chunks."""

    prefix = ""  # of the response id
    chunk_name = ""  # the "object" of stream chunks

    def __init__(self, request_id: str, model: str) -> None:
        self.id = self.prefix + request_id
        self.model = model
        self.created = int(time.time())

    def envelope(self, name: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": name,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def complete(self, result: GenerationResult) -> dict[str, Any]:
        raise NotImplementedError

    def first_chunk(self) -> dict[str, Any]:
        raise NotImplementedError

    def chunk(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        raise NotImplementedError

    def usage_chunk(self, result: GenerationResult) -> dict[str, Any]:
        return {**self.envelope(self.chunk_name, []), "usage": usage(result)}


class ChatFormat(Format):
    """Chat shapes. With ``tools``, streamed content is held back until the end, because a
    ``<tool_call>`` block must become ``tool_calls`` rather than text."""

    prefix = "chatcmpl-"
    chunk_name = "chat.completion.chunk"

    def __init__(self, request_id: str, model: str, *, tools: frozenset[str] | None = None) -> None:
        super().__init__(request_id, model)
        self.tools = tools
        self._held: list[str] = []

    def complete(self, result: GenerationResult) -> dict[str, Any]:
        content, calls = parse_tool_calls(result.text, self.tools) if self.tools else (result.text, [])
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
        if result.reasoning:
            message["reasoning_content"] = result.reasoning
        finish: str = result.finish_reason
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return {**self.envelope("chat.completion", [choice]), "usage": usage(result)}

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return self.envelope(self.chunk_name, [{"index": 0, "delta": delta, "finish_reason": finish}])

    def first_chunk(self) -> dict[str, Any]:
        return self._delta({"role": "assistant", "content": ""})

    def chunk(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        out = []
        if chunk.text and chunk.kind == "reasoning":
            out.append(self._delta({"reasoning_content": chunk.text}))
        elif chunk.text and self.tools:
            self._held.append(chunk.text)
        elif chunk.text:
            out.append(self._delta({"content": chunk.text}))
        if chunk.finish_reason is None:
            return out
        finish: str = chunk.finish_reason
        if self.tools:
            content, calls = parse_tool_calls("".join(self._held), self.tools)
            if content:
                out.append(self._delta({"content": content}))
            if calls:
                out.append(self._delta({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
                finish = "tool_calls"
        out.append(self._delta({}, finish))
        return out


class TextFormat(Format):
    prefix = "cmpl-"
    chunk_name = "text_completion"

    def __init__(self, request_id: str, model: str, echo: str) -> None:
        super().__init__(request_id, model)
        self.echo = echo

    def _choice(self, text: str, finish: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def complete(self, result: GenerationResult) -> dict[str, Any]:
        choice = self._choice(self.echo + result.text, result.finish_reason)
        return {**self.envelope("text_completion", [choice]), "usage": usage(result)}

    def first_chunk(self) -> dict[str, Any]:
        return self.envelope(self.chunk_name, [self._choice(self.echo, None)])

    def chunk(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        if not chunk.text and chunk.finish_reason is None:
            return []
        return [self.envelope(self.chunk_name, [self._choice(chunk.text, chunk.finish_reason)])]


def tool_names(tools: list[dict[str, Any]] | None) -> frozenset[str] | None:
    """Names of the request's function tools (None without tools: content is then streamed as is)."""
    if not tools:
        return None
    return frozenset(str((t.get("function") or {}).get("name", t.get("name", ""))) for t in tools)
