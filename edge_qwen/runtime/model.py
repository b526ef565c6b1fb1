"""The :class:`Model` facade: load a GGUF, render and tokenize on the caller's thread, then hand
typed requests to the model's step loop (:mod:`~edge_qwen.runtime.engine.batcher`) on the process's one
compute thread (:mod:`~edge_qwen.runtime.engine.compute`).

Blocking (``generate``/``chat``), streaming (``stream``/``chat_stream``), async and batch twins all
take the same path; chunks travel back through a per-request queue (:mod:`~edge_qwen.runtime.handles`)
and exceptions travel the same way, re-raised on the caller's side.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import llama_cpp.llama_cpp as L
import numpy as np

from ..errors import ConfigError, ModelClosedError
from ..registry import resolve_model
from ..settings import ModelSettings, settings_from
from . import _native
from .embedding import RERANK_TEMPLATE_KEY, as_matrix, embedding_spec, rerank_spec
from .engine.batcher import BatchEngine
from .engine.compute import ComputeThread
from .engine.decoder import NativeDecoder
from .engine.draft import DraftModel
from .engine.mtp import MtpHead, check_staging
from .engine.prompt_cache import PromptCache
from .engine.prompt_store import PromptStore, open_store
from .engine.threads import ThreadGovernor
from .handles import AsyncGenerationStream, GenerationStream, Submit, adrain, drain
from .loader import load_draft, load_media, load_mtp, load_native
from .lora import AdapterSlots
from .media.multimodal import MediaSupport
from .prompting import RequestBuilder
from .request import Request, RequestSpec, Sink
from .results import GenerationResult, SlotUsage
from .sampling import native_sequences
from .speculation.spec_cost import StepCost
from .speculation.speculative import spec_config
from .text.chat_template import RenderedPrompt
from .text.thinking import THINK_CLOSE, template_thinks
from .text.tool_calls import Tools
from .vocab import Vocabulary

MESSAGE_START = "<|im_start|>"  # ChatML: where a hybrid model's prompt is checkpointed

Message = Mapping[str, Any]

__all__ = ["AsyncGenerationStream", "GenerationStream", "Model"]


class Model:
    """A loaded GGUF with its own llama.cpp context. Use ``Model.load(path)``.

    All requests — sync, async, streamed, batched — are queued FIFO and admitted into the
    context's ``parallel`` sequence slots; admitted ones are decoded together, one token each per
    step, on the process's compute thread, the only thread that touches the context (steps of
    several models interleave there). ``close()`` (or ``with``) frees the context, the model and
    the batch buffers.
    """

    def __init__(
        self,
        path: Path,
        settings: ModelSettings,
        model: Any,
        ctx: Any,
        draft: tuple[Any, Any] | None = None,
        media: MediaSupport | None = None,
        mtp_ctx: Any = None,
    ) -> None:
        self.path = path
        self.settings = settings
        self._closed = False
        self._model = model
        self._ctx = ctx
        self.vocab = Vocabulary(model, self._check_open)
        self.n_ctx = int(L.llama_n_ctx(ctx))
        self.n_batch = int(L.llama_n_batch(ctx))
        self.architecture = _native.meta_value(model, "general.architecture") or "unknown"
        #: "last" (an embedding model), "rank" (a reranker) or None (a model that generates)
        self.pooling: str | None = {L.LLAMA_POOLING_TYPE_LAST: "last", L.LLAMA_POOLING_TYPE_RANK: "rank"}.get(
            int(L.llama_pooling_type(ctx))
        )
        self._think_close = self.vocab.tokenize(THINK_CLOSE, parse_special=True)
        self.parallel = int(L.llama_n_seq_max(ctx))
        governor = ThreadGovernor(int(L.llama_n_threads(ctx)), pinned=settings.n_threads)
        self._decoder = NativeDecoder(ctx, self.vocab.native, self.n_batch, governor)
        self._draft_native = draft
        self._draft_decoder: NativeDecoder | None = None
        drafter: DraftModel | MtpHead | None = None
        self._mtp_ctx = mtp_ctx
        self._mtp: MtpHead | None = None
        if mtp_ctx is not None:
            drafter = self._mtp = MtpHead(ctx, mtp_ctx, n_vocab=self.vocab.n_tokens)
        if draft is not None:
            dmodel, dctx = draft
            n_batch = int(L.llama_n_batch(dctx))
            self._draft_decoder = NativeDecoder(dctx, L.llama_model_get_vocab(dmodel), n_batch, governor)
            drafter = DraftModel(
                self._draft_decoder, parallel=self.parallel, n_batch=settings.prefill_chunk,
                n_vocab=self.vocab.n_tokens, max_batch=n_batch,
            )  # fmt: skip
        self._media = media
        self._engine = BatchEngine(
            self._decoder,
            native_sequences(self.vocab.native, self.vocab.piece, self._think_close),
            parallel=self.parallel,
            n_ctx=self.n_ctx,
            n_batch=self.n_batch,
            unified=settings.kv_unified,
            prefill_chunk=settings.prefill_chunk,
            name=path.name,
            draft=drafter,
            media=self._media,
            cost=StepCost(),
            prompt_cache=self._prompt_cache(path, settings),
            checkpoints=settings.ctx_checkpoints,
            boundary=self.vocab.special_token(MESSAGE_START),
            endpoints=frozenset(settings.rpc),
        )
        self.n_ctx_seq = self._engine.n_ctx_seq
        self._lock = threading.Lock()
        self._freed = threading.Event()
        self._compute = ComputeThread.get()
        self._compute.register(self._engine)
        self._lora = AdapterSlots(
            model, self._decoder.adapters, lambda fn: self._compute.call(fn, self._engine.endpoints)
        )
        self._requests = RequestBuilder(
            self.vocab, settings, architecture=self.architecture, n_ctx_seq=self.n_ctx_seq,
            lora=self._lora, media=media,
            draft_source="mtp" if mtp_ctx is not None else "draft" if draft is not None else None,
        )  # fmt: skip
        try:
            for name, adapter_path in settings.adapters:
                self._lora.add(name, adapter_path)
        except BaseException:
            self.close()
            raise

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str], **settings: Any) -> Model:
        """Load a GGUF file, or a registry name[:quant] already pulled (``"qwen3-4b"``). Keyword
        settings are the fields of :class:`ModelSettings`; ``adapters={"sql": "sql-lora.gguf"}``
        loads LoRA adapters that requests pick by name."""
        config = settings_from("Model.load", settings)
        spec_config(config.speculative)  # an unknown default mode fails before anything is loaded
        path = resolve_model(os.fspath(path))
        if config.mtp and config.draft is not None:
            raise ConfigError("draft= and mtp=True both draft tokens; load one of them")
        model, ctx = load_native(path, config)
        draft = media = mtp_ctx = None
        try:
            if config.draft is not None:
                draft = load_draft(Path(config.draft), config, model)
            if config.mtp:
                check_staging()  # a build without the MTP staging API fails here, freeing everything
                mtp_ctx = load_mtp(config, model, ctx)
            if config.mmproj is not None:
                media = load_media(config, model, ctx)
        except BaseException:
            if draft is not None:
                L.llama_free(draft[1])
                L.llama_model_free(draft[0])
            if mtp_ctx is not None:
                L.llama_free(mtp_ctx)
            L.llama_free(ctx)
            L.llama_model_free(model)
            raise
        return cls(path, config, model, ctx, draft, media, mtp_ctx)

    def close(self, *, wait: bool = True, on_freed: Callable[[], None] | None = None) -> None:
        """Queued requests fail with ModelClosedError, running ones end "cancelled", then llama.cpp's
        memory is freed on the compute thread. ``wait=False`` returns at once (``on_freed`` runs on
        the compute thread once the memory is gone): a caller holding a lock that others need, like
        the scheduler, must never wait for the compute thread."""
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            self._compute.submit(
                lambda: self._free(on_freed), self._engine.endpoints, lambda _: self._leave(on_freed)
            )
        elif on_freed is not None:
            self._compute.submit(on_freed)
        if wait and not self._compute.on_thread:
            self._freed.wait()

    def _leave(self, on_freed: Callable[[], None] | None) -> None:
        """An RPC worker died under this model: its memory cannot be freed (llama.cpp would wait on
        the dead worker for ever), so it is left as it is and only the bookkeeping ends."""
        self._freed.set()
        if on_freed is not None:
            on_freed()

    @property
    def lost(self) -> BaseException | None:
        """Why this model stopped for good (an RPC worker it uses died mid-computation), else None."""
        return self._engine.lost

    def _prompt_cache(self, path: Path, settings: ModelSettings) -> PromptCache:
        """The host-memory prompt cache, read back from and written to ``prompt_cache_dir`` if given."""
        self._store: PromptStore | None = None
        if not settings.prompt_cache_dir or settings.prompt_cache <= 0:
            return PromptCache(settings.prompt_cache)
        types = f"{settings.cache_type_k}/{settings.cache_type_v}/fa={settings.flash_attn}"
        self._store = open_store(path, settings.prompt_cache_dir, settings.prompt_cache_disk, types)
        saved = self._store.load(settings.prompt_cache)
        return PromptCache(settings.prompt_cache, entries=saved, on_save=self._store.put)

    def _free(self, on_freed: Callable[[], None] | None) -> None:
        """On the compute thread: end every request, drop the engine, free the context and weights."""
        if self._engine.lost is not None:
            return self._leave(on_freed)
        try:
            if self._store is not None:  # what the slots hold outlives the process
                self._engine.keep_slot_caches()
                self._store.flush()
            self._engine.close()
            self._compute.unregister(self._engine)
            self._decoder.free()
            if self._media is not None:
                self._media.close()  # before the model it projects into
            if self._mtp is not None:  # before the target context it reads from
                self._mtp.free()
                L.llama_free(self._mtp_ctx)
                self._mtp_ctx = None
            L.llama_free(self._ctx)
            if self._draft_native is not None and self._draft_decoder is not None:
                self._draft_decoder.free()
                L.llama_free(self._draft_native[1])
                L.llama_model_free(self._draft_native[0])
                self._draft_native = None
            self._lora.free_all()  # after the context that applied them, before their model
            L.llama_model_free(self._model)
            self._ctx = self._model = None
        finally:
            self._freed.set()
            if on_freed is not None:
                on_freed()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the vocabulary (its own object; these are the Model's names for it) ------------------------

    @property
    def chat_template(self) -> str | None:
        return self.vocab.chat_template

    @chat_template.setter
    def chat_template(self, template: str | None) -> None:
        self.vocab.chat_template = template

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``parse_special=False`` treats ``<|im_start|>`` in it as plain text."""
        return self.vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_piece(self, token: int, *, special: bool = True) -> bytes:
        return self.vocab.token_piece(token, special=special)

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return self.vocab.detokenize(tokens, special=special)

    @property
    def control_tokens(self) -> dict[int, str]:
        return self.vocab.control_tokens

    @property
    def metadata(self) -> dict[str, str]:
        return self.vocab.metadata

    def render(
        self,
        messages: Sequence[Message],
        *,
        enable_thinking: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> RenderedPrompt:
        """Render a conversation with the GGUF's own chat template (ChatML when it has none)."""
        return self.vocab.render(
            messages,
            enable_thinking=enable_thinking,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
        )

    def prompt_tokens(self, rendered: RenderedPrompt) -> list[int]:
        return self.vocab.prompt_tokens(rendered)

    @property
    def thinks(self) -> bool:
        """Whether the chat template has a thinking mode (``enable_thinking`` switches it)."""
        return template_thinks(self.vocab.chat_template)

    @property
    def mmproj(self) -> str | None:
        """The projector loaded for images / audio (``mmproj=``), or None for a text-only model."""
        return self._media.path if self._media is not None else None

    @property
    def has_draft(self) -> bool:
        """Whether a draft model (``draft=``) or the MTP head (``mtp=True``) was loaded to draft."""
        return self._requests.draft_source is not None

    # -- LoRA adapters ----------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded LoRA adapters (a request picks them with ``adapter=``/``adapters=``)."""
        return sorted(self._lora.names)

    @property
    def adapter_bytes(self) -> int:
        return self._lora.nbytes

    def add_adapter(self, name: str, path: str | os.PathLike[str]) -> None:
        """Load a GGUF LoRA adapter while the model serves requests."""
        self._check_open()
        self._lora.add(name, path)

    def remove_adapter(self, name: str) -> None:
        """Free an adapter no request uses any more (ConfigError while some still do)."""
        self._check_open()
        self._lora.remove(name, self._engine.uses_adapter, self._engine.drop_idle_caches)

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Model({str(self.path)!r}, architecture={self.architecture!r}, n_ctx={self.n_ctx}, "
            f"parallel={self.parallel})"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError(f"{self.path.name} was closed; load it again with Model.load(path)")

    # -- the compute thread's side ----------------------------------------------------------------

    def _submitter(self, spec: RequestSpec) -> Submit:
        def submit(sink: Sink) -> Request:
            request = Request(spec, sink)
            with self._lock:
                self._check_open()
                self._compute.submit(lambda: self._engine.submit(request))
            return request

        return submit

    def _stream(self, spec: RequestSpec) -> GenerationStream:
        return GenerationStream(self._submitter(spec), self.settings.queue_timeout)

    def _astream(self, spec_factory: Callable[[], RequestSpec]) -> AsyncGenerationStream:
        def submit(sink: Sink) -> Request:
            return self._submitter(spec_factory())(sink)

        return AsyncGenerationStream(submit, self.settings.queue_timeout)

    def slot_usage(self) -> SlotUsage:
        """Sequence slots busy and requests waiting (a racy read, for health pages and metrics)."""
        cache, table = self._engine.prompt_cache, self._engine.table
        return SlotUsage(
            slots_total=self.parallel, slots_busy=self._engine.slots_in_use,
            waiting=len(self._engine.waiting), prompt_cache_bytes=cache.used_bytes,
            prompt_cache_entries=len(cache.entries), prompt_cache_restored=cache.stats.restored,
            checkpoints=table.checkpoint_count, checkpoint_bytes=table.checkpoint_bytes,
        )  # fmt: skip

    # -- public API: text prompts ---------------------------------------------------------------------

    def stream(self, prompt: str | Sequence[int], **sampling: Any) -> GenerationStream:
        """Stream a plain completion of ``prompt`` (text or token ids; no chat template)."""
        return self._stream(self.prepare_completion(prompt, **sampling))

    def generate(self, prompt: str | Sequence[int], **sampling: Any) -> GenerationResult:
        """Complete ``prompt`` and return the whole answer (blocking)."""
        return drain(self.stream(prompt, **sampling))

    def generate_batch(
        self, prompts: Sequence[str | Sequence[int]], **sampling: Any
    ) -> list[GenerationResult]:
        """Run every prompt together (up to ``parallel`` at a time, the rest queued); results come back
        in the order of ``prompts``."""
        streams = [self.stream(p, **sampling) for p in prompts]
        return [drain(s) for s in streams]

    def astream(self, prompt: str | Sequence[int], **sampling: Any) -> AsyncGenerationStream:
        return self._astream(lambda: self.prepare_completion(prompt, **sampling))

    async def agenerate(self, prompt: str | Sequence[int], **sampling: Any) -> GenerationResult:
        return await adrain(self.astream(prompt, **sampling))

    # -- public API: embeddings and reranking ------------------------------------------------------

    def embed(self, texts: str | Sequence[str], *, normalize: bool = True) -> np.ndarray:
        """One row per text: its embedding (L2-normalised unless ``normalize=False``); the texts are
        prefilled together across the slots. Needs a pooling model (``self.pooling == "last"``)."""
        streams = [self._stream(s) for s in self.prepare_embeddings(texts)]  # all queued, then read
        return as_matrix([drain(s).embedding for s in streams], normalize)

    async def aembed(self, texts: str | Sequence[str], *, normalize: bool = True) -> np.ndarray:
        return await self.apooled(self.prepare_embeddings(texts), normalize=normalize)

    def rerank(self, query: str, documents: Sequence[str]) -> list[float]:
        """How relevant each document is to ``query`` (a reranker's P(yes), 0..1), in their order."""
        streams = [self._stream(s) for s in self.prepare_rerank(query, documents)]
        return [float(v) for v in as_matrix([drain(s).embedding for s in streams], False)[:, 0]]

    async def arerank(self, query: str, documents: Sequence[str]) -> list[float]:
        return [float(v) for v in (await self.apooled(self.prepare_rerank(query, documents)))[:, 0]]

    async def apooled(self, specs: Sequence[RequestSpec], *, normalize: bool = False) -> np.ndarray:
        """Run prepared embed requests together; their pooled outputs as rows (L2-normalised if asked)."""
        results = await asyncio.gather(*(adrain(self.astream_request(s)) for s in specs))
        return as_matrix([r.embedding for r in results], normalize)

    def prepare_embeddings(self, texts: str | Sequence[str]) -> list[RequestSpec]:
        """The typed requests that embed ``texts`` (run them with :meth:`astream_request`)."""
        return [embedding_spec(self.vocab, t, self.n_ctx_seq) for t in self._pooled("last", texts)]

    def prepare_rerank(self, query: str, documents: Sequence[str]) -> list[RequestSpec]:
        """The typed requests that score each document for ``query``."""
        docs = self._pooled("rank", documents)
        template = _native.meta_value(self._model, RERANK_TEMPLATE_KEY)
        return [rerank_spec(self.vocab, template, query, d, self.n_ctx_seq) for d in docs]

    def _pooled(self, kind: str, texts: str | Sequence[str]) -> list[str]:
        if self.pooling != kind:
            what = {"last": "an embedding model (Qwen3-Embedding) or load with pooling='last'",
                    "rank": "a reranker (Qwen3-Reranker) or load with pooling='rank'"}[kind]  # fmt: skip
            verb = "embed" if kind == "last" else "rank"
            raise ConfigError(f"{self.path.name} does not {verb}: use {what}")
        return [texts] if isinstance(texts, str) else list(texts)

    def _check_generates(self) -> None:
        if self.pooling is not None:
            raise ConfigError(
                f"{self.path.name} is loaded to {'embed' if self.pooling == 'last' else 'rank'} (pooling "
                f"{self.pooling!r}), not to generate: use embed()/rerank(), or load it without pooling"
            )

    # -- public API: chat ---------------------------------------------------------------------------

    def prepare_chat(
        self,
        messages: Sequence[Message],
        *,
        enable_thinking: bool | None = None,
        thinking_budget: int | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        truncate: bool = False,
        **sampling: Any,
    ) -> RequestSpec:
        """The typed request for a chat, rendered and tokenized once (``len(spec.tokens)`` is its
        prompt size); :meth:`stream_request` / :meth:`astream_request` run it.

        ``tools`` (OpenAI function entries) are shown to the model through its chat template, and the
        answer's calls come back in ``result.tool_calls``. ``tool_choice`` is ``"auto"`` (the model
        decides), ``"none"``, ``"required"`` or ``{"type": "function", "function": {"name": ...}}``;
        the last two are enforced with a grammar built from the tools' parameter schemas.
        """
        self._check_generates()
        template = self.vocab.chat_template
        declared = Tools.of(tools, tool_choice, parallel=parallel_tool_calls, template=template)
        return self._requests.chat(
            messages, sampling, enable_thinking=enable_thinking, thinking_budget=thinking_budget,
            tools=declared, truncate=truncate,
        )  # fmt: skip

    def prepare_completion(self, prompt: str | Sequence[int], **sampling: Any) -> RequestSpec:
        """The typed request for a plain completion (no chat template)."""
        self._check_generates()
        return self._requests.plain(prompt, sampling)

    def stream_request(self, spec: RequestSpec) -> GenerationStream:
        return self._stream(spec)

    def astream_request(self, spec: RequestSpec) -> AsyncGenerationStream:
        return self._astream(lambda: spec)

    def chat_stream(self, messages: Sequence[Message], **kwargs: Any) -> GenerationStream:
        """Stream the assistant's reply to ``messages`` rendered with the model's chat template
        (keywords as :meth:`prepare_chat`)."""
        return self._stream(self.prepare_chat(messages, **kwargs))

    def chat(self, messages: Sequence[Message], **kwargs: Any) -> GenerationResult:
        """The assistant's whole reply (blocking); keywords as :meth:`chat_stream`."""
        return drain(self.chat_stream(messages, **kwargs))

    def chat_batch(self, conversations: Sequence[Sequence[Message]], **kwargs: Any) -> list[GenerationResult]:
        """Answer every conversation together (see :meth:`generate_batch`)."""
        streams = [self.chat_stream(c, **kwargs) for c in conversations]
        return [drain(s) for s in streams]

    def achat_stream(self, messages: Sequence[Message], **kwargs: Any) -> AsyncGenerationStream:
        """:meth:`chat_stream` for asyncio: the prompt is prepared on a worker thread."""
        return self._astream(lambda: self.prepare_chat(messages, **kwargs))

    async def achat(self, messages: Sequence[Message], **kwargs: Any) -> GenerationResult:
        return await adrain(self.achat_stream(messages, **kwargs))

    def reset(self) -> None:
        """Empty the KV cache (after the requests already queued); the next prompt is prefilled whole."""
        drain(self._stream(self._requests.reset()))

