"""The small value types the engine hands back: stream chunks, usage, timings and finished results."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the text layer builds chunks: it imports this module, not the other way round
    from .text.tool_calls import ToolCall, Tools

Kind = Literal["reasoning", "content"]
FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


@dataclass(frozen=True)
class SlotUsage:
    """A loaded model's sequence slots and prompt cache right now (a racy read, for health pages)."""

    slots_total: int = 0
    slots_busy: int = 0
    waiting: int = 0
    prompt_cache_bytes: int = 0
    prompt_cache_entries: int = 0
    prompt_cache_restored: int = 0
    checkpoints: int = 0  # a hybrid model's recurrent-state checkpoints held by the slots
    checkpoint_bytes: int = 0


@dataclass(frozen=True)
class Usage:
    """Token counts of one request; ``cached_tokens`` were reused from the KV cache, not prefilled."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def prefilled_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


@dataclass(frozen=True)
class Timings:
    """Wall-clock measurements of one request, taken on the worker thread once it starts the request.
    ``drafted_tokens``/``accepted_tokens``: speculative decoding's drafts and the ones the model kept."""

    ttft_ms: float = 0.0
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    queue_ms: float = 0.0
    drafted_tokens: int = 0
    accepted_tokens: int = 0


@dataclass(frozen=True)
class GenerationChunk:
    """One piece of a streamed answer. The last chunk of a stream carries finish_reason, usage, timings."""

    text: str
    kind: Kind = "content"
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    embedding: tuple[float, ...] | None = None  # an embedding request's vector (or rank scores), last chunk


@dataclass(frozen=True)
class GenerationResult:
    """A finished answer: content text, reasoning text (Qwen3 thinking), why it ended, and counters."""

    text: str
    reasoning: str = ""
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    token_ids: tuple[int, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # calls of the request's tools, taken out of ``text``
    embedding: tuple[float, ...] | None = None  # an embedding request's pooled vector (or rank scores)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["token_ids"] = list(self.token_ids)
        return data


class ResultBuilder:
    """Folds chunks into a :class:`GenerationResult` (used by streams and the blocking helpers)."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._ids: list[int] = []
        self._final: GenerationChunk | None = None

    def add(self, chunk: GenerationChunk) -> None:
        (self._reasoning if chunk.kind == "reasoning" else self._text).append(chunk.text)
        self._ids.extend(chunk.token_ids)
        if chunk.finish_reason is not None:
            self._final = chunk

    def extend(self, chunks: Iterable[GenerationChunk]) -> GenerationResult:
        for chunk in chunks:
            self.add(chunk)
        return self.result()

    @property
    def done(self) -> bool:
        return self._final is not None

    def result(self, tools: Tools | None = None) -> GenerationResult:
        """The answer so far; with ``tools``, their calls are read out of the text (:class:`Tools`)."""
        final = self._final
        text, calls = tools.parse("".join(self._text)) if tools is not None else ("".join(self._text), ())
        finish = final.finish_reason if final and final.finish_reason else "cancelled"
        return GenerationResult(
            text=text,
            tool_calls=calls,
            reasoning="".join(self._reasoning),
            finish_reason="tool_calls" if calls and finish == "stop" else finish,
            usage=final.usage if final and final.usage else Usage(),
            timings=final.timings if final and final.timings else Timings(),
            token_ids=tuple(self._ids),
            embedding=final.embedding if final else None,
        )
