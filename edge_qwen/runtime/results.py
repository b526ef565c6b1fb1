"""The small value types the engine hands back: settings, stream chunks, and finished results."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Kind = Literal["reasoning", "content"]
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class ModelSettings:
    """How to load a GGUF and size its llama.cpp context.

    ``n_ctx`` is rounded up to a multiple of 256 (llama.cpp does it anyway; every buffer is then
    sized from the context's real n_ctx). ``n_threads=None`` means the physical cores of this
    machine. ``flash_attn=None`` lets llama.cpp decide, except that a quantized V cache turns it
    on (llama.cpp needs flash attention for that); ``flash_attn=False`` with a quantized V cache
    is refused with :class:`~edge_qwen.errors.ConfigError`. ``extra_buffers`` controls llama.cpp's
    weight-repacking buffer types; ``None`` leaves them on unless the installed build has AMX
    kernels compiled by GCC < 13, whose AMX path crashes on multi-token batches
    (``edge_qwen._llama.extra_buffers_decision``).

    ``n_gpu_layers="auto"`` offloads as many layers as fit the GPU's free memory (with their KV and
    compute buffers, as llama.cpp places them) when the build has a GPU backend, none otherwise;
    an integer pins the count (-1: all).

    ``parallel`` sequences are decoded together (continuous batching). ``n_ctx`` is the total of KV
    cells: with ``kv_unified`` (the default) every sequence may use up to all of them, and they share
    what is free; with ``kv_unified=False`` each gets ``n_ctx / parallel``. ``prefill_chunk`` is how many
    prompt tokens a step may add while other sequences are generating (a long prompt then cannot
    stall their streams; alone, a prompt is prefilled in n_batch chunks). ``adapters`` are GGUF LoRA
    files loaded next to the weights, ``(name, path)`` pairs; a request picks them by name.

    ``draft`` is a smaller GGUF with the same vocabulary that drafts tokens for speculative
    decoding (loaded with the same context size and sequence count, on the same compute thread).
    ``speculative`` is the mode a request gets when it does not choose: ``"lookup"``, ``"draft"``,
    ``"off"``, or None (``"draft"`` when a draft model is loaded, otherwise off).

    ``mmproj`` is the projector GGUF of a vision or audio model (written by ``edge-qwen convert``
    beside the language model): chat messages may then carry images and audio clips.

    ``prompt_cache`` is how many bytes of host memory may hold K/V the slots had to give up
    (:mod:`~edge_qwen.runtime.prompt_cache`): with more conversations than slots, a returning one
    is restored instead of prefilled. 0 (the default) turns it off; the estimate charges it whole.
    """

    n_ctx: int = 4096
    n_threads: int | None = None
    n_threads_batch: int | None = None
    n_batch: int = 2048
    n_ubatch: int = 512
    n_gpu_layers: int | str = "auto"
    use_mmap: bool = True
    use_mlock: bool = False
    flash_attn: bool | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    extra_buffers: bool | None = None
    queue_timeout: float | None = None
    parallel: int = 4
    kv_unified: bool = True
    prefill_chunk: int = 128
    adapters: tuple[tuple[str, str], ...] = ()
    draft: str | None = None
    speculative: str | None = None
    mmproj: str | None = None
    prompt_cache: int = 0


def settings_from(caller: str, settings: dict[str, Any]) -> ModelSettings:
    """:class:`ModelSettings` from keyword arguments, with ``adapters`` as a mapping or pairs;
    an unknown keyword is a ConfigError that lists the accepted ones."""
    from ..errors import ConfigError

    given = dict(settings)
    given["adapters"] = adapter_files(given.get("adapters"))
    for name in ("draft", "mmproj"):
        if given.get(name) is not None:
            given[name] = os.fspath(given[name])
    try:
        return ModelSettings(**given)
    except TypeError as exc:
        names = ", ".join(f.name for f in fields(ModelSettings))
        raise ConfigError(f"{exc}; {caller} accepts {names}") from None


def adapter_files(value: Any) -> tuple[tuple[str, str], ...]:
    """``{"sql": "sql.gguf"}`` or ``[("sql", "sql.gguf")]`` as sorted (name, path) pairs."""
    from ..errors import ConfigError

    if not value:
        return ()
    pairs = value.items() if isinstance(value, Mapping) else value
    out = {}
    for name, path in pairs:
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigError(f"adapter name {name!r} must be a non-empty string without ':'")
        out[name] = os.fspath(path)
    return tuple(sorted(out.items()))


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


@dataclass(frozen=True)
class GenerationResult:
    """A finished answer: content text, reasoning text (Qwen3 thinking), why it ended, and counters."""

    text: str
    reasoning: str = ""
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    token_ids: tuple[int, ...] = ()

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

    def result(self) -> GenerationResult:
        final = self._final
        return GenerationResult(
            text="".join(self._text),
            reasoning="".join(self._reasoning),
            finish_reason=final.finish_reason if final and final.finish_reason else "cancelled",
            usage=final.usage if final and final.usage else Usage(),
            timings=final.timings if final and final.timings else Timings(),
            token_ids=tuple(self._ids),
        )
