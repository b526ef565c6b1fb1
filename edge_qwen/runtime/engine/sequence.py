"""One request's generation state on the compute thread, kept in an object instead of generator
locals so the step loop can advance many of them by one token per step.

A :class:`Sequence` knows every token that belongs in its KV cache (``tokens``: the prompt, then
each sampled or injected token), owns its sampler chain, its text pipeline (detokenizer, stop
strings, reasoning split), its thinking budget and its counters, and turns each sampled token into
chunks for the caller. Which of its tokens are already in the cache is the slot's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import Any

from ..request import Request
from ..results import FinishReason, GenerationChunk, Timings, Usage
from ..speculation.speculative import make_drafter
from ..text.pipeline import TextPipeline


class Sequence:
    """The worker-side state of one admitted request."""

    def __init__(
        self,
        request: Request,
        *,
        sampler: Any,
        piece: Callable[[int], bytes],
        think_close: Seq[int],
        n_ctx_seq: int,
        free_sampler: Callable[[Any], None],
    ) -> None:
        self.request = request
        spec = request.spec
        self.key = spec.adapters
        self.tokens: list[int] = list(spec.tokens)
        self.media = {span.start: span for span in spec.media}  # token index -> MediaSpan
        self.extra_cells = sum(span.extra_cells for span in spec.media)  # media cells beyond positions
        self.n_prompt = len(spec.tokens) + self.extra_cells  # media count as the KV cells they fill
        self.sampler = sampler
        self._free_sampler = free_sampler
        self.text = TextPipeline(piece, spec.params.stop or (), spec.thinking_open)
        self._think_close = list(think_close)
        self._budget = spec.thinking_budget
        self._n_reasoning = 0
        self.max_tokens = spec.params.max_tokens if spec.params.max_tokens is not None else n_ctx_seq
        self.n_ctx_seq = n_ctx_seq
        self.n_out = 0
        self.cached = 0
        self.finish: FinishReason | None = None
        self.prefilling = True  # its pending tokens are (part of) a prompt, fed in budgeted chunks
        self.admitted_at = 0.0  # admission order, for preemption (the youngest goes first)
        self.t_start = self.t_prefill = self.t_first = self.t_last = 0.0
        self.queue_ms = 0.0
        config = spec.speculative
        self.drafter = make_drafter(config)
        self.embedding: tuple[float, ...] | None = None  # an embed request's result, read after its prefill

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, cached: int) -> None:
        """Admitted into a slot holding its first ``cached`` tokens: the rest is prompt to prefill."""
        self.prefilling = True
        now = time.perf_counter()
        if not self.t_start:
            self.t_start = now
            self.queue_ms = (now - self.request.submitted) * 1e3
            self.cached = cached + sum(s.extra_cells for s in self.media.values() if s.start < cached)
        self.admitted_at = now

    @property
    def cancelled(self) -> bool:
        return self.request.cancelled.is_set()

    def emit(self, chunks: Seq[GenerationChunk]) -> None:
        for chunk in chunks:
            self.request.sink(chunk)

    # -- one sampled token ---------------------------------------------------------------------------

    def on_token(self, token: int, is_eog: bool) -> None:
        """Take the token sampled for this sequence: stream its text, decide whether to go on, and
        append what must be fed next (the token, plus ``</think>`` when the budget runs out)."""
        now = time.perf_counter()
        if self.n_out == 0:
            self.t_first = now
            if not self.t_prefill:
                self.t_prefill = now
        self.t_last = now
        if is_eog:
            self.finish = "stop"
            return
        self.n_out += 1
        self.emit(self.text.push_token(token))
        if self.text.stopped:
            self.finish = "stop"
            return
        feed = [token]
        if self._budget is not None and self.text.in_reasoning:
            self._n_reasoning += 1
            if self._n_reasoning >= self._budget and self.n_out < self.max_tokens:
                feed += self._inject(self._think_close)
                self._budget = None
        if self.n_out >= self.max_tokens or len(self.tokens) + self.extra_cells + len(feed) > self.n_ctx_seq:
            self.finish = "length"
            return
        self.tokens += feed

    def take(self, token: int, is_eog: bool) -> bool:
        """:meth:`on_token`, then whether the sequence goes on with exactly this token appended
        (not finished, nothing injected): only then may a drafted token after it be kept."""
        before = len(self.tokens)
        self.on_token(token, is_eog)
        return self.finish is None and len(self.tokens) == before + 1

    def _inject(self, tokens: list[int]) -> list[int]:
        """Force tokens into the output (the sampler and the text see them as if sampled)."""
        import llama_cpp.llama_cpp as L

        self.n_out += len(tokens)
        for injected in tokens:
            if self.sampler is not None:
                L.llama_sampler_accept(self.sampler, injected)
            self.emit(self.text.push_token(injected))
        return tokens

    def prefilled(self) -> None:
        """Its prompt is in the cache: from now on it generates, one token (plus drafts) a step."""
        self.prefilling = False
        if not self.t_prefill:
            self.t_prefill = time.perf_counter()

    def refeed(self) -> None:
        """Its slot lost the whole cache (a backend that cannot cut a tail): feed every token again."""
        self.prefilling = True

    # -- the end ------------------------------------------------------------------------------------

    def close(self, finish: FinishReason | None = None) -> None:
        """Flush held-back text and send the final chunk (finish reason, usage, timings)."""
        reason: FinishReason = finish or self.finish or "length"
        if self.t_prefill:
            self.emit(self.text.finish())
        usage = Usage(prompt_tokens=self.n_prompt, completion_tokens=self.n_out, cached_tokens=self.cached)
        self.request.sink(
            GenerationChunk(
                "",
                token_ids=tuple(self.text.pending_ids),
                finish_reason=reason,
                usage=usage,
                timings=self._timings(usage),
                embedding=self.embedding,
            )
        )
        self.release()

    def fail(self, exc: BaseException) -> None:
        self.request.sink(exc)
        self.release()

    def release(self) -> None:
        if self.sampler is not None:
            self._free_sampler(self.sampler)
            self.sampler = None
        for owner in self.request.spec.media_owners:
            owner.close()

    def _timings(self, usage: Usage) -> Timings:
        drafter = self.drafter
        drafted, accepted = (drafter.drafted, drafter.accepted) if drafter is not None else (0, 0)
        if not self.t_start:
            return Timings(queue_ms=self.queue_ms)
        t_prefill = self.t_prefill or self.t_start
        t_first = self.t_first or t_prefill
        prefill_s = t_prefill - self.t_start
        decode_s = self.t_last - t_first
        return Timings(
            ttft_ms=(t_first - self.t_start) * 1e3,
            prefill_tok_s=usage.prefilled_tokens / prefill_s if prefill_s > 0 else 0.0,
            decode_tok_s=(usage.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0,
            queue_ms=self.queue_ms,
            drafted_tokens=drafted,
            accepted_tokens=accepted,
        )
