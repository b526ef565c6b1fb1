"""OpenAI JSON shapes: whole answers and stream chunks for chat and text completions.

Qwen3 reasoning goes to ``reasoning_content`` (the field DeepSeek and vLLM use); calls of the
request's tools become ``tool_calls`` (read by :class:`~edge_qwen.runtime.text.tool_calls.Tools`).
"""

from __future__ import annotations

import time
from typing import Any

from ..runtime.handles import AsyncGenerationStream
from ..runtime.results import GenerationChunk, GenerationResult
from ..runtime.text.tool_calls import Tools


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

    def bind(self, gen: AsyncGenerationStream) -> None:
        """Learn what the started request needs for its shapes (chat: its tools)."""

    def complete(self, result: GenerationResult) -> dict[str, Any]:
        raise NotImplementedError

    def first_chunk(self) -> dict[str, Any]:
        raise NotImplementedError

    def chunk(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        raise NotImplementedError

    def usage_chunk(self, result: GenerationResult) -> dict[str, Any]:
        return {**self.envelope(self.chunk_name, []), "usage": usage(result)}


class ChatFormat(Format):
    """Chat shapes. With tools, streamed content is held back until the end, because a call in the
    text must become ``tool_calls`` rather than content; :meth:`bind` learns the request's tools."""

    prefix = "chatcmpl-"
    chunk_name = "chat.completion.chunk"

    def __init__(self, request_id: str, model: str) -> None:
        super().__init__(request_id, model)
        self.tools: Tools | None = None
        self._held: list[str] = []

    def bind(self, gen: AsyncGenerationStream) -> None:
        self.tools = gen.tools

    def complete(self, result: GenerationResult) -> dict[str, Any]:
        calls = [c.to_openai() for c in result.tool_calls]
        message: dict[str, Any] = {"role": "assistant", "content": result.text or (None if calls else "")}
        if result.reasoning:
            message["reasoning_content"] = result.reasoning
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}
        return {**self.envelope("chat.completion", [choice]), "usage": usage(result)}

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return self.envelope(self.chunk_name, [{"index": 0, "delta": delta, "finish_reason": finish}])

    def first_chunk(self) -> dict[str, Any]:
        return self._delta({"role": "assistant", "content": ""})

    def chunk(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        out = []
        if chunk.text and chunk.kind == "reasoning":
            out.append(self._delta({"reasoning_content": chunk.text}))
        elif chunk.text and self.tools is not None:
            self._held.append(chunk.text)
        elif chunk.text:
            out.append(self._delta({"content": chunk.text}))
        if chunk.finish_reason is None:
            return out
        finish: str = chunk.finish_reason
        if self.tools is not None:
            content, calls = self.tools.parse("".join(self._held))
            if content:
                out.append(self._delta({"content": content}))
            for i, call in enumerate(calls):  # one delta per call, as OpenAI streams them
                out.append(self._delta({"tool_calls": [{"index": i, **call.to_openai()}]}))
            if calls and finish == "stop":
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
