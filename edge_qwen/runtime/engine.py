"""The generation engine: GGUF models, one compute thread that owns every llama.cpp context, and a
small API.

Layering follows mlx-lm:

* :class:`_Decoder` is the token step: prefill (reusing the longest cached prefix of the KV cache),
  sample one token, feed tokens back. It lives on the compute thread (:class:`_ComputeThread`) only.
* :func:`_respond` turns token steps into a stream of :class:`GenerationChunk` (streaming
  detokenizer, stop strings, reasoning/content split, thinking budget, cancellation).
* :class:`Model` renders and tokenizes on the caller's thread, queues the request FIFO, and exposes
  blocking (``generate``/``chat``), streaming (``stream``/``chat_stream``), async and batch twins —
  all of them go through the same queue and the same compute thread, chunks travel back through a
  per-request queue, and exceptions travel the same way and are re-raised on the caller's side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import llama_cpp.llama_cpp as L
import numpy as np

from .. import _llama
from ..errors import (
    ConfigError,
    ContextOverflowError,
    GenerationError,
    ModelClosedError,
    ModelLoadError,
    QueueTimeoutError,
)
from . import _native
from .chat_template import RenderedPrompt, render_chat
from .detokenizer import StreamingDetokenizer
from .presets import SamplingParams, preset_for, resolve
from .results import (
    FinishReason,
    GenerationChunk,
    GenerationResult,
    ModelSettings,
    ResultBuilder,
    Timings,
    Usage,
)
from .stopping import StopMatcher
from .thinking import THINK_CLOSE, ReasoningSplitter

Message = Mapping[str, Any]
_PENALTY_LAST_N = 64
_STARTED = object()  # worker -> caller: the request left the queue


# --- requests -----------------------------------------------------------------------------------


class _Request:
    """One queued generation. The caller and the worker race on it only through ``claim``/``expire``."""

    def __init__(
        self,
        tokens: list[int],
        params: SamplingParams,
        sink: Callable[[object], None],
        *,
        thinking_open: bool = False,
        thinking_budget: int | None = None,
    ) -> None:
        self.tokens = tokens
        self.params = params
        self.sink = sink
        self.thinking_open = thinking_open
        self.thinking_budget = thinking_budget
        self.submitted = time.perf_counter()
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._state = "queued"

    def claim(self) -> bool:
        """Worker side: take the request unless the caller gave up waiting for it."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "running"
            return True

    def expire(self) -> bool:
        """Caller side: give up on a request that has not started (queue timeout)."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "expired"
            return True

    def cancel(self) -> None:
        self.cancelled.set()


# --- the token step (worker thread only) ---------------------------------------------------------


class _Decoder:
    """KV-cache bookkeeping and the prefill/sample/feed primitives of one llama.cpp context."""

    def __init__(self, ctx: Any, vocab: Any, n_ctx: int, n_batch: int) -> None:
        self.ctx = ctx
        self.vocab = vocab
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.memory = L.llama_get_memory(ctx)
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        self.batch = _native.Batch(n_batch)
        self.kv_tokens: list[int] = []  # exactly the tokens whose K/V sit in sequence 0

    @property
    def room(self) -> int:
        return self.n_ctx - len(self.kv_tokens)

    def reuse_prefix(self, prompt: Sequence[int]) -> int:
        """Keep the longest common prefix with the cache (at least one prompt token stays to prefill)."""
        kv = self.kv_tokens
        limit = min(len(kv), len(prompt) - 1)
        keep = 0
        while keep < limit and kv[keep] == prompt[keep]:
            keep += 1
        self.truncate(keep)
        return keep

    def truncate(self, keep: int) -> None:
        """Drop cached tokens from position ``keep`` on."""
        if keep >= len(self.kv_tokens):
            return
        if not L.llama_memory_seq_rm(self.memory, 0, keep, -1):
            L.llama_memory_clear(self.memory, True)
            keep = 0
        del self.kv_tokens[keep:]

    def feed(self, tokens: Sequence[int], cancelled: threading.Event | None = None) -> bool:
        """Evaluate tokens in n_batch chunks; False if cancelled between chunks."""
        for start in range(0, len(tokens), self.n_batch):
            if cancelled is not None and start and cancelled.is_set():
                return False
            chunk = tokens[start : start + self.n_batch]
            self.batch.fill(chunk, len(self.kv_tokens))
            rc = L.llama_decode(self.ctx, self.batch.raw)
            if rc != 0:
                self._recover(rc)
            self.kv_tokens.extend(chunk)
        return True

    def _recover(self, rc: int) -> None:
        """Undo a failed decode's partial writes so the context stays usable, then report it."""
        L.llama_memory_seq_rm(self.memory, 0, len(self.kv_tokens), -1)
        if rc == 1:
            raise ContextOverflowError(len(self.kv_tokens) + 1, self.n_ctx)
        raise GenerationError(
            f"llama_decode failed with code {rc}; the request was dropped and the model is still usable. "
            f"If it repeats, reload the model (llama.cpp: {_llama.take_recent_errors() or 'no details'})"
        )

    def sample(self, sampler: Any) -> int:
        """Next token from the last logits: the sampler chain, or a plain argmax when it is None.

        Why the argmax path: llama_sampler_sample copies all ~152k logits into a candidate array
        every token (~0.5 ms, a few % of a small model's decode step); numpy's argmax over the
        logits in place costs a tenth of that and picks the same token as llama.cpp's greedy
        sampler (the first maximum).
        """
        if sampler is not None:
            return int(L.llama_sampler_sample(sampler, self.ctx, -1))
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
        return int(logits.argmax())

    def free(self) -> None:
        self.batch.free()


def _build_sampler(params: SamplingParams, vocab: Any) -> Any:
    """The llama.cpp sampler chain for these parameters (the caller frees it); None for plain argmax."""
    plain_greedy = (params.temperature or 0.0) <= 0.0 and not _grammar_text(params)
    if plain_greedy and not _penalty_samplers_needed(params):
        return None
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    try:
        for sampler in _grammar_samplers(params, vocab) + _penalty_samplers(params, vocab):
            L.llama_sampler_chain_add(chain, sampler)
        for sampler in _value_samplers(params):
            L.llama_sampler_chain_add(chain, sampler)
    except BaseException:
        L.llama_sampler_free(chain)
        raise
    return chain


def _grammar_samplers(params: SamplingParams, vocab: Any) -> list[Any]:
    grammar = _grammar_text(params)
    if not grammar:
        return []
    sampler = L.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise ConfigError(
            "the grammar does not parse as GBNF (llama.cpp: "
            f"{_llama.take_recent_errors() or 'no details'}); fix the grammar or the JSON schema"
        )
    return [sampler]


def _penalty_samplers(params: SamplingParams, vocab: Any) -> list[Any]:
    """Repeat/presence/frequency penalties over the last 64 tokens.

    Why the top-k in front: llama.cpp's penalty sampler scans the whole 152k vocabulary every token
    (~5% of a 0.5B model's decode step). Penalties that only lower logits can move at most 64
    tokens down, so the final top-k (or argmax) after penalising is always inside the top
    ``k + 64`` before it; cutting there first gives identical results at a fraction of the cost.
    """
    if not _penalty_samplers_needed(params):
        return []
    repeat, freq, presence = _penalties(params)
    out = []
    greedy = (params.temperature or 0.0) <= 0.0
    keep = 1 if greedy else int(params.top_k or 0)
    if keep > 0 and repeat >= 1.0 and freq >= 0.0 and presence >= 0.0:
        out.append(L.llama_sampler_init_top_k(keep + _PENALTY_LAST_N))
    n_vocab = L.llama_vocab_n_tokens(vocab)
    out.append(L.llama_sampler_init_penalties(n_vocab, _PENALTY_LAST_N, repeat, freq, presence))
    return out


def _penalties(params: SamplingParams) -> tuple[float, float, float]:
    repeat = float(params.repeat_penalty if params.repeat_penalty is not None else 1.0)
    return repeat, float(params.frequency_penalty or 0.0), float(params.presence_penalty or 0.0)


def _penalty_samplers_needed(params: SamplingParams) -> bool:
    return _penalties(params) != (1.0, 0.0, 0.0)


def _value_samplers(params: SamplingParams) -> list[Any]:
    """top-k -> top-p -> min-p -> temperature -> draw, or plain argmax for temperature 0."""
    if (params.temperature or 0.0) <= 0.0:
        return [L.llama_sampler_init_greedy()]
    out = []
    if params.top_k and params.top_k > 0:
        out.append(L.llama_sampler_init_top_k(int(params.top_k)))
    if params.top_p is not None and params.top_p < 1.0:
        out.append(L.llama_sampler_init_top_p(float(params.top_p), 1))
    if params.min_p:
        out.append(L.llama_sampler_init_min_p(float(params.min_p), 1))
    seed = L.LLAMA_DEFAULT_SEED if params.seed is None else int(params.seed) & 0xFFFFFFFF
    out += [L.llama_sampler_init_temp(float(params.temperature)), L.llama_sampler_init_dist(seed)]
    return out


def _grammar_text(params: SamplingParams) -> str | None:
    """GBNF from ``grammar``, or converted from ``json_schema`` (dict or JSON text)."""
    if params.grammar and params.json_schema:
        raise ConfigError("pass either grammar or json_schema, not both")
    if params.json_schema:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        schema = params.json_schema
        return str(json_schema_to_gbnf(schema if isinstance(schema, str) else json.dumps(schema)))
    return params.grammar or None


# --- token steps -> chunks -------------------------------------------------------------------------


class _TextPipeline:
    """Detokenizer -> stop strings -> reasoning split; hands out decided text with its token ids."""

    def __init__(self, piece: Callable[[int], bytes], stops: Sequence[str], thinking_open: bool) -> None:
        self.detok = StreamingDetokenizer(piece)
        self.stopper = StopMatcher(list(stops))
        self.splitter = ReasoningSplitter(thinking_open)
        self.pending_ids: list[int] = []
        self.stopped = False

    @property
    def in_reasoning(self) -> bool:
        return self.splitter.in_reasoning

    def push_token(self, token: int) -> list[GenerationChunk]:
        self.pending_ids.append(token)
        return self._push(self.detok.add_token(token))

    def _push(self, text: str) -> list[GenerationChunk]:
        if self.stopped or not text:
            return []
        out, self.stopped = self.stopper.push(text)
        return self._chunks(self.splitter.push(out) if out else [])

    def finish(self) -> list[GenerationChunk]:
        pieces: list[GenerationChunk] = []
        if not self.stopped:
            pieces += self._push(self.detok.finalize())
        if not self.stopped:
            tail = self.stopper.flush()
            pieces += self._chunks(self.splitter.push(tail) if tail else [])
        return pieces + self._chunks(self.splitter.flush())

    def _chunks(self, parts: list[tuple[Any, str]]) -> list[GenerationChunk]:
        chunks = []
        for kind, text in parts:
            chunks.append(GenerationChunk(text=text, kind=kind, token_ids=tuple(self.pending_ids)))
            self.pending_ids = []
        return chunks


def _respond(
    decoder: _Decoder, req: _Request, piece: Callable[[int], bytes], think_close: Sequence[int]
) -> Iterator[GenerationChunk]:
    """Run one request on the decoder and yield its chunks; the last one carries the finish reason."""
    t0 = time.perf_counter()
    queue_ms = (t0 - req.submitted) * 1e3
    params = req.params
    prompt = req.tokens
    if not prompt:  # a reset request
        decoder.truncate(0)
        yield GenerationChunk("", finish_reason="stop", timings=Timings(queue_ms=queue_ms))
        return
    if len(prompt) >= decoder.n_ctx:
        raise ContextOverflowError(len(prompt), decoder.n_ctx)
    cached = decoder.reuse_prefix(prompt)
    usage = Usage(prompt_tokens=len(prompt), cached_tokens=cached)
    if req.cancelled.is_set() or not decoder.feed(prompt[cached:], req.cancelled):
        yield GenerationChunk("", finish_reason="cancelled", usage=usage, timings=Timings(queue_ms=queue_ms))
        return
    t_prefill = time.perf_counter()
    sampler = _build_sampler(params, decoder.vocab)
    text = _TextPipeline(piece, params.stop or (), req.thinking_open)
    budget = req.thinking_budget
    max_tokens = params.max_tokens if params.max_tokens is not None else decoder.n_ctx
    n_out = n_reasoning = 0
    t_first = t_last = t_prefill
    finish: FinishReason = "length"
    try:
        while True:
            if req.cancelled.is_set():
                finish = "cancelled"
                break
            if n_out >= max_tokens:
                break
            token = decoder.sample(sampler)
            t_last = time.perf_counter()
            if n_out == 0:
                t_first = t_last
            if L.llama_vocab_is_eog(decoder.vocab, token):
                finish = "stop"
                break
            n_out += 1
            yield from text.push_token(token)
            if text.stopped:
                finish = "stop"
                break
            feed = [token]
            if budget is not None and text.in_reasoning:
                n_reasoning += 1
                if n_reasoning >= budget and n_out < max_tokens:
                    feed += think_close
                    n_out += len(think_close)
                    for injected in think_close:
                        if sampler is not None:
                            L.llama_sampler_accept(sampler, injected)
                        yield from text.push_token(injected)
                    budget = None
            if len(feed) > decoder.room:
                break
            decoder.feed(feed)
        yield from text.finish()
    finally:
        if sampler is not None:
            L.llama_sampler_free(sampler)
    usage = dataclasses.replace(usage, completion_tokens=n_out)
    yield GenerationChunk(
        "",
        token_ids=tuple(text.pending_ids),
        finish_reason=finish,
        usage=usage,
        timings=_timings(t0, t_prefill, t_first, t_last, usage, queue_ms),
    )


def _timings(
    t0: float, t_prefill: float, t_first: float, t_last: float, usage: Usage, queue_ms: float
) -> Timings:
    prefill_s = t_prefill - t0
    decode_s = t_last - t_first
    return Timings(
        ttft_ms=(t_first - t0) * 1e3,
        prefill_tok_s=usage.prefilled_tokens / prefill_s if prefill_s > 0 else 0.0,
        decode_tok_s=(usage.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0,
        queue_ms=queue_ms,
    )


# --- handles --------------------------------------------------------------------------------------


class GenerationStream:
    """A running request as a sync iterator of chunks; ``cancel()``/``close()`` stop it within a token.

    Dropping the stream (e.g. ``break`` out of a ``for`` loop over ``model.stream(...)``) cancels it.
    After the last chunk, :attr:`result` holds the assembled :class:`GenerationResult`.
    """

    def __init__(self, submit: Callable[[Callable[[object], None]], _Request], queue_timeout: float | None):
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._builder = ResultBuilder()
        self._request = submit(self._items.put)
        self._timeout = queue_timeout
        self._started = False

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> GenerationChunk:
        if self._builder.done:
            raise StopIteration
        item = self._get()
        if isinstance(item, BaseException):
            self._builder = _finished_builder()
            raise item
        assert isinstance(item, GenerationChunk)
        self._builder.add(item)
        return item

    def _get(self) -> object:
        if not self._started:
            try:
                item = self._items.get(timeout=self._timeout)
            except queue.Empty:
                if self._request.expire():
                    raise QueueTimeoutError(_queue_timeout_message(self._timeout)) from None
                item = self._items.get()
            self._started = True
            if item is _STARTED:
                item = self._items.get()
            return item
        return self._items.get()

    @property
    def result(self) -> GenerationResult:
        return self._builder.result()

    def cancel(self) -> None:
        """Ask the worker to stop; the stream then ends with finish_reason "cancelled"."""
        self._request.cancel()

    def close(self) -> None:
        if not self._builder.done:
            self.cancel()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        request = getattr(self, "_request", None)
        if request is not None:
            request.cancel()


class AsyncGenerationStream:
    """The async twin of :class:`GenerationStream`; cancelling the awaiting task cancels the request."""

    def __init__(self, submit: Callable[[Callable[[object], None]], _Request], queue_timeout: float | None):
        self._submit = submit
        self._timeout = queue_timeout
        self._items: asyncio.Queue[object] | None = None
        self._request: _Request | None = None
        self._builder = ResultBuilder()
        self._started = False

    def __aiter__(self) -> AsyncGenerationStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._builder.done:
            raise StopAsyncIteration
        try:
            item = await self._get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if isinstance(item, BaseException):
            self._builder = _finished_builder()
            raise item
        assert isinstance(item, GenerationChunk)
        self._builder.add(item)
        return item

    async def _get(self) -> object:
        if self._items is None:
            self._start()
        assert self._items is not None and self._request is not None
        if not self._started:
            try:
                item = await asyncio.wait_for(self._items.get(), self._timeout)
            except asyncio.TimeoutError:
                if self._request.expire():
                    raise QueueTimeoutError(_queue_timeout_message(self._timeout)) from None
                item = await self._items.get()
            self._started = True
            if item is _STARTED:
                item = await self._items.get()
            return item
        return await self._items.get()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()
        self._items = items

        def sink(item: object) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody listens any more
                if self._request is not None:
                    self._request.cancel()

        self._request = self._submit(sink)

    @property
    def result(self) -> GenerationResult:
        return self._builder.result()

    def cancel(self) -> None:
        if self._request is not None:
            self._request.cancel()

    async def aclose(self) -> None:
        if not self._builder.done:
            self.cancel()

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _finished_builder() -> ResultBuilder:
    builder = ResultBuilder()
    builder.add(GenerationChunk("", finish_reason="cancelled"))
    return builder


def _queue_timeout_message(timeout: float | None) -> str:
    return (
        f"the request waited more than {timeout}s for the model; retry later, raise queue_timeout, "
        "or load another Model instance for parallel work"
    )


# --- the model ----------------------------------------------------------------------------------


class _ComputeThread:
    """The one thread that runs llama.cpp for every :class:`Model` of the process, FIFO.

    Why one and not one per model: llama.cpp's CPU backend is built with OpenMP, and each host
    thread that computes gets its own OpenMP team. With two teams on a few cores libgomp throttles
    its spin-waits and both models decode ~35% slower (25.4 -> 16.8 tok/s measured: two 0.5B models,
    2 cores). One thread means one team; on an edge device two models computing at once would only
    share the same cores anyway. Each context is still owned by exactly one thread.
    """

    _instance: _ComputeThread | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="edge-qwen-compute", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> _ComputeThread:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def wait_idle(self) -> None:
        """Block until every task submitted so far has run (no-op on the compute thread itself)."""
        if threading.current_thread() is self.thread:
            return
        done = threading.Event()
        self.submit(done.set)
        done.wait()

    def _run(self) -> None:
        while True:
            self._tasks.get()()


class Model:
    """A loaded GGUF with its own llama.cpp context. Use ``Model.load(path)``.

    All requests — sync, async, streamed, batched — are queued FIFO and run one at a time on the
    process's compute thread, the only thread that touches the context (requests of several models
    share that FIFO). ``close()`` (or ``with``) frees the context, the model and the batch buffers.
    """

    def __init__(self, path: Path, settings: ModelSettings, model: Any, ctx: Any) -> None:
        self.path = path
        self.settings = settings
        self._closed = False
        self._model = model
        self._ctx = ctx
        self._vocab = L.llama_model_get_vocab(model)
        self.n_ctx = int(L.llama_n_ctx(ctx))
        self.n_batch = int(L.llama_n_batch(ctx))
        self.architecture = _native.meta_value(model, "general.architecture") or "unknown"
        self.chat_template = _native.meta_value(model, "tokenizer.chat_template")
        self._piece = _native.PieceCache(self._vocab, special=False)
        self._special_piece = _native.PieceCache(self._vocab, special=True)
        self._control: dict[int, str] | None = None
        self._think_close = self.tokenize(THINK_CLOSE, parse_special=True)
        self._decoder = _Decoder(ctx, self._vocab, self.n_ctx, self.n_batch)
        self._lock = threading.Lock()
        self._active: _Request | None = None
        self._compute = _ComputeThread.get()

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str], **settings: Any) -> Model:
        """Load a GGUF file. Keyword settings are the fields of :class:`ModelSettings`."""
        try:
            config = ModelSettings(**settings)
        except TypeError as exc:
            names = ", ".join(f.name for f in dataclasses.fields(ModelSettings))
            raise ConfigError(f"{exc}; Model.load accepts {names}") from None
        path = Path(path)
        model, ctx = _load_native(path, config)
        return cls(path, config, model, ctx)

    def close(self) -> None:
        """Stop the worker (queued requests fail with ModelClosedError) and free llama.cpp memory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            active = self._active
        if active is not None:
            active.cancel()
        # Requests still queued fail with ModelClosedError when their turn comes (see _serve);
        # once the compute thread has got past them, nothing of this model runs any more.
        self._compute.wait_idle()
        self._decoder.free()
        L.llama_free(self._ctx)
        L.llama_model_free(self._model)
        self._ctx = self._model = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, architecture={self.architecture!r}, n_ctx={self.n_ctx})"

    # -- vocabulary helpers ----------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``parse_special=False`` treats ``<|im_start|>`` in it as plain text."""
        self._check_open()
        return _native.tokenize(self._vocab, text, add_special=add_special, parse_special=parse_special)

    def token_piece(self, token: int, *, special: bool = True) -> bytes:
        """Raw bytes of one token (a piece may be part of a UTF-8 character)."""
        return (self._special_piece if special else self._piece)(token)

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return b"".join(self.token_piece(t, special=special) for t in tokens).decode("utf-8", "replace")

    @property
    def control_tokens(self) -> dict[int, str]:
        """id -> text of every CONTROL token (only these may come out of a chat template as specials)."""
        if self._control is None:
            self._control = _native.control_tokens(self._vocab)
        return self._control

    @property
    def metadata(self) -> dict[str, str]:
        return _native.metadata(self._model)

    def render(
        self,
        messages: Sequence[Message],
        *,
        enable_thinking: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> RenderedPrompt:
        """Render a conversation with the GGUF's own chat template (ChatML when it has none)."""
        kwargs: dict[str, Any] = {}
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        if tools:
            kwargs["tools"] = list(tools)
        return render_chat(
            [dict(m) for m in messages],
            template=self.chat_template,
            special_tokens=self.control_tokens.values(),
            bos_token=self._special_token_text(L.llama_vocab_bos(self._vocab)),
            eos_token=self._special_token_text(L.llama_vocab_eos(self._vocab)),
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )

    def prompt_tokens(self, rendered: RenderedPrompt) -> list[int]:
        """Tokenize each rendered segment with its own parse_special flag (user text stays text)."""
        tokens: list[int] = []
        for text, parse_special in rendered.segments:
            tokens += self.tokenize(text, parse_special=parse_special)
        bos = L.llama_vocab_bos(self._vocab)
        if L.llama_vocab_get_add_bos(self._vocab) and bos >= 0 and (not tokens or tokens[0] != bos):
            tokens.insert(0, bos)
        return tokens

    def _special_token_text(self, token: int) -> str:
        return self.token_piece(token).decode("utf-8", "replace") if token >= 0 else ""

    # -- request preparation (caller thread) ---------------------------------------------------------

    def _plain_request(self, prompt: str | Sequence[int], sampling: dict[str, Any]) -> dict[str, Any]:
        if isinstance(prompt, str):
            tokens = self.tokenize(prompt, add_special=True, parse_special=False)
        else:
            tokens = [int(t) for t in prompt]
        if not tokens:
            raise ConfigError("the prompt is empty; pass some text or token ids")
        self._check_fits(tokens)
        params = self._params(enable_thinking=None, sampling=sampling)
        return {"tokens": tokens, "params": params}

    def _chat_request(
        self,
        messages: Sequence[Message],
        sampling: dict[str, Any],
        *,
        enable_thinking: bool | None,
        thinking_budget: int | None,
        tools: Sequence[Mapping[str, Any]] | None,
        truncate: bool,
    ) -> dict[str, Any]:
        msgs = [dict(m) for m in messages]
        while True:
            rendered = self.render(msgs, enable_thinking=enable_thinking, tools=tools)
            tokens = self.prompt_tokens(rendered)
            if len(tokens) < self.n_ctx:
                break
            if not truncate or not _drop_oldest_turn(msgs):
                raise ContextOverflowError(len(tokens), self.n_ctx)
        if thinking_budget is not None and thinking_budget < 0:
            raise ConfigError("thinking_budget must be >= 0 (tokens of reasoning before the answer)")
        return {
            "tokens": tokens,
            "params": self._params(enable_thinking=enable_thinking, sampling=sampling),
            "thinking_open": rendered.thinking_open,
            "thinking_budget": thinking_budget,
        }

    def _params(self, *, enable_thinking: bool | None, sampling: dict[str, Any]) -> SamplingParams:
        preset = preset_for(self.architecture, enable_thinking is not False)
        return resolve(preset, **{k: v for k, v in sampling.items() if v is not None})

    def _check_fits(self, tokens: Sequence[int]) -> None:
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(len(tokens), self.n_ctx)

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError(f"{self.path.name} was closed; load it again with Model.load(path)")

    # -- queue and worker ------------------------------------------------------------------------

    def _submitter(self, spec: dict[str, Any]) -> Callable[[Callable[[object], None]], _Request]:
        def submit(sink: Callable[[object], None]) -> _Request:
            request = _Request(sink=sink, **spec)
            with self._lock:
                self._check_open()
                self._compute.submit(lambda: self._serve(request))
            return request

        return submit

    def _stream(self, spec: dict[str, Any]) -> GenerationStream:
        return GenerationStream(self._submitter(spec), self.settings.queue_timeout)

    def _astream(self, spec_factory: Callable[[], dict[str, Any]]) -> AsyncGenerationStream:
        def submit(sink: Callable[[object], None]) -> _Request:
            return self._submitter(spec_factory())(sink)

        return AsyncGenerationStream(submit, self.settings.queue_timeout)

    def _serve(self, request: _Request) -> None:
        """Run one request on the compute thread; chunks and errors go to the request's sink."""
        if self._closed:
            request.sink(ModelClosedError(f"{self.path.name} was closed before this request ran"))
            return
        if not request.claim():
            return
        with self._lock:
            self._active = request
        request.sink(_STARTED)
        try:
            for chunk in _respond(self._decoder, request, self._piece, self._think_close):
                request.sink(chunk)
        except BaseException as exc:  # noqa: BLE001 - travels to the caller and is re-raised there
            request.sink(exc)
        finally:
            with self._lock:
                self._active = None

    # -- public API: text prompts ---------------------------------------------------------------------

    def stream(self, prompt: str | Sequence[int], **sampling: Any) -> GenerationStream:
        """Stream a plain completion of ``prompt`` (text or token ids; no chat template)."""
        return self._stream(self._plain_request(prompt, sampling))

    def generate(self, prompt: str | Sequence[int], **sampling: Any) -> GenerationResult:
        """Complete ``prompt`` and return the whole answer (blocking)."""
        return _drain(self.stream(prompt, **sampling))

    def generate_batch(
        self, prompts: Sequence[str | Sequence[int]], **sampling: Any
    ) -> list[GenerationResult]:
        """Queue every prompt at once; results come back in the order of ``prompts``."""
        streams = [self.stream(p, **sampling) for p in prompts]
        return [_drain(s) for s in streams]

    def astream(self, prompt: str | Sequence[int], **sampling: Any) -> AsyncGenerationStream:
        return self._astream(lambda: self._plain_request(prompt, sampling))

    async def agenerate(self, prompt: str | Sequence[int], **sampling: Any) -> GenerationResult:
        return await _adrain(self.astream(prompt, **sampling))

    # -- public API: chat ---------------------------------------------------------------------------

    def chat_stream(
        self,
        messages: Sequence[Message],
        *,
        enable_thinking: bool | None = None,
        thinking_budget: int | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        truncate: bool = False,
        **sampling: Any,
    ) -> GenerationStream:
        """Stream the assistant's reply to ``messages`` rendered with the model's chat template."""
        spec = self._chat_request(
            messages,
            sampling,
            enable_thinking=enable_thinking,
            thinking_budget=thinking_budget,
            tools=tools,
            truncate=truncate,
        )
        return self._stream(spec)

    def chat(self, messages: Sequence[Message], **kwargs: Any) -> GenerationResult:
        """The assistant's whole reply (blocking); keywords as :meth:`chat_stream`."""
        return _drain(self.chat_stream(messages, **kwargs))

    def chat_batch(self, conversations: Sequence[Sequence[Message]], **kwargs: Any) -> list[GenerationResult]:
        streams = [self.chat_stream(c, **kwargs) for c in conversations]
        return [_drain(s) for s in streams]

    def achat_stream(
        self,
        messages: Sequence[Message],
        *,
        enable_thinking: bool | None = None,
        thinking_budget: int | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        truncate: bool = False,
        **sampling: Any,
    ) -> AsyncGenerationStream:
        def spec() -> dict[str, Any]:
            return self._chat_request(
                messages,
                sampling,
                enable_thinking=enable_thinking,
                thinking_budget=thinking_budget,
                tools=tools,
                truncate=truncate,
            )

        return self._astream(spec)

    async def achat(self, messages: Sequence[Message], **kwargs: Any) -> GenerationResult:
        return await _adrain(self.achat_stream(messages, **kwargs))

    def reset(self) -> None:
        """Empty the KV cache (after the requests already queued); the next prompt is prefilled whole."""
        _drain(self._stream({"tokens": [], "params": self._params(enable_thinking=None, sampling={})}))


def _drain(stream: GenerationStream) -> GenerationResult:
    for _ in stream:
        pass
    return stream.result


async def _adrain(stream: AsyncGenerationStream) -> GenerationResult:
    async for _ in stream:
        pass
    return stream.result


def _drop_oldest_turn(messages: list[dict[str, Any]]) -> bool:
    """Remove the oldest non-system turn (a user message and the replies up to the next user message)."""
    first = next((i for i, m in enumerate(messages) if m.get("role") != "system"), None)
    if first is None:
        return False
    nxt = next((i for i in range(first + 1, len(messages)) if messages[i].get("role") == "user"), None)
    if nxt is None:
        return False
    del messages[first:nxt]
    return True


# --- loading ------------------------------------------------------------------------------------


def _load_native(path: Path, settings: ModelSettings) -> tuple[Any, Any]:
    """Load the weights and create the context, turning every failure into ModelLoadError."""
    if not path.is_file():
        raise ModelLoadError(f"cannot load {path}: no such file; pass the path of a .gguf file")
    cparams = _context_params(settings)
    _llama.init_backend()
    _llama.take_recent_errors()
    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = settings.n_gpu_layers
    mparams.load_mode = _native.LOAD_MODES[(settings.use_mmap, settings.use_mlock)]
    extra = settings.extra_buffers
    mparams.use_extra_bufts = _llama.default_extra_buffers() if extra is None else extra
    model = L.llama_model_load_from_file(os.fsencode(path), mparams)
    if not model:
        reason = _llama.take_recent_errors() or "llama.cpp gave no reason"
        raise ModelLoadError(
            f"cannot load {path}: {reason}. Check that it is a complete GGUF file of a model this "
            "llama.cpp supports (edge-qwen info PATH), or re-convert it"
        )
    ctx = L.llama_init_from_model(model, cparams)
    if not ctx:
        reason = _llama.take_recent_errors() or "llama.cpp gave no reason"
        L.llama_model_free(model)
        raise ModelLoadError(
            f"cannot create a context for {path}: {reason}. Try a smaller n_ctx, n_batch, or an f16 KV cache"
        )
    return model, ctx


def _context_params(settings: ModelSettings) -> Any:
    """llama_context_params from settings, validated before any memory is allocated."""
    for name in ("cache_type_k", "cache_type_v"):
        value = getattr(settings, name)
        if value not in _native.CACHE_TYPES:
            choices = sorted(_native.CACHE_TYPES)
            raise ConfigError(f"{name}={value!r} is not a KV cache type; use one of {choices}")
    flash = settings.flash_attn
    if settings.cache_type_v in _native.QUANTIZED_CACHE_TYPES:
        if flash is False:
            raise ConfigError(
                f"cache_type_v={settings.cache_type_v!r} needs flash attention, but flash_attn=False; "
                "enable flash_attn (or leave it unset) or use cache_type_v='f16'"
            )
        flash = True
    if settings.n_ctx <= 0 or settings.n_batch <= 0 or settings.n_ubatch <= 0:
        raise ConfigError("n_ctx, n_batch and n_ubatch must be positive")
    threads = settings.n_threads or _llama.physical_cores()
    n_ctx = _native.pad_ctx(settings.n_ctx)
    n_batch = min(settings.n_batch, n_ctx)
    params = L.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = min(settings.n_ubatch, n_batch)
    params.n_seq_max = 1
    params.n_threads = threads
    params.n_threads_batch = settings.n_threads_batch or threads
    params.flash_attn_type = _native.FLASH_ATTN[flash]
    params.type_k = _native.CACHE_TYPES[settings.cache_type_k]
    params.type_v = _native.CACHE_TYPES[settings.cache_type_v]
    params.no_perf = True
    return params
