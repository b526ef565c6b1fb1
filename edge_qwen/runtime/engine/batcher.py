"""Continuous batching: the step loop of one model's context.

Each :meth:`BatchEngine.step` admits waiting requests into free slots (FIFO; the slot with the
longest cached prefix), builds **one** batch — a token for every generating sequence, then prompt
chunks of sequences still prefilling, under a per-step prefill budget so a long prompt cannot stall
running streams — decodes it once, and hands every sequence the logits row it asked for. Only rows
where a token is sampled ask for logits.

Sequences with different LoRA adapter sets never share a decode step (llama.cpp applies adapters
per context): each step serves one adapter set, and the sets with work take turns.

The engine is composed, not inherited: a :class:`~.slot_table.SlotTable` owns the slots and every
change to their caches, an :class:`~.admission.Admission` moves queued requests into slots, and a
:class:`~.drafting.Drafting` adds speculative drafts to the batch and samples (and verifies) after
the decode. A sequence's drafted tokens ride in its entry.

When the unified KV cache runs out mid-generation, idle caches are dropped first, then the youngest
sequence is preempted: its cells are freed and it goes back to the head of the queue with every
token it has so far, to be re-prefilled, or restored from the prompt cache when it has one (its
sampler, text and counters live in its :class:`~edge_qwen.runtime.engine.sequence.Sequence`, so the
stream just pauses). A request whose prompt cannot fit even when the others finish was refused
before it was queued.

The engine talks to llama.cpp only through a :class:`Decoder`, so the scheduling logic is tested
with a fake one. It runs on the compute thread only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ...errors import GenerationError, ModelClosedError
from ..request import AdapterSet, Request
from ..speculation.spec_cost import StepCost
from .admission import Admission
from .batch_types import (
    BatchEntry,
    Decoder,
    DraftSource,
    EngineStats,
    MediaFeeder,
    SequenceFactory,
    Wanted,
)
from .checkpoints import PER_SLOT
from .drafting import Drafting
from .prompt_cache import PromptCache
from .sequence import Sequence
from .slot_table import SlotTable
from .slots import Slot

__all__ = ["BatchEngine", "BatchEntry", "Decoder", "DraftSource", "EngineStats", "MediaFeeder", "Wanted"]


class BatchEngine:
    """The queue and the step loop of one context, over its slot table."""

    def __init__(
        self,
        decoder: Decoder,
        make_sequence: SequenceFactory,
        *,
        parallel: int,
        n_ctx: int,
        n_batch: int,
        unified: bool = True,
        prefill_chunk: int = 128,
        name: str = "model",
        draft: DraftSource | None = None,
        media: MediaFeeder | None = None,
        cost: StepCost | None = None,
        prompt_cache: PromptCache | None = None,
        clock: Callable[[], float] = time.perf_counter,
        checkpoints: int = PER_SLOT,
        boundary: int | None = None,
        endpoints: frozenset[str] = frozenset(),
    ) -> None:
        self.decoder = decoder
        self.endpoints = endpoints  # the RPC workers its steps wait on
        self.lost: BaseException | None = None  # set when one of them died mid-computation
        self.media = media
        self._clock = clock
        self.n_ctx_seq = n_ctx if unified else n_ctx // parallel
        self.n_batch = n_batch
        self.prefill_chunk = max(1, prefill_chunk)
        self.name = name
        self.stats = EngineStats()
        cache = prompt_cache or PromptCache(0)
        self.table = SlotTable(decoder, parallel, cache, draft, checkpoints=checkpoints, boundary=boundary)
        self.admission = Admission(
            self.table, make_sequence, n_ctx=n_ctx, n_ctx_seq=self.n_ctx_seq, unified=unified
        )
        self.drafting = Drafting(
            self.table, draft=draft, cost=cost, n_ctx_seq=self.n_ctx_seq, stats=self.stats
        )
        self.waiting: deque[Request | Sequence] = deque()
        self.closed = False
        self._last_key: AdapterSet | None = None

    @property
    def slots(self) -> list[Slot]:
        return self.table.slots

    @property
    def running(self) -> dict[int, Sequence]:
        return self.table.running

    @property
    def prompt_cache(self) -> PromptCache:
        return self.table.prompt_cache

    # -- the queue (compute thread) -------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        if self.closed:
            request.sink(self.lost or ModelClosedError(f"{self.name} was closed before this request ran"))
            return
        self.waiting.append(request)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def slots_in_use(self) -> int:
        return len(self.running)

    # -- one step -------------------------------------------------------------------------------------

    def step(self) -> None:
        """Admit, build one batch, decode it, sample every sequence that asked for logits."""
        self._drop_cancelled()
        self.admission.admit(self.waiting)
        self._feed_media()
        if not self.running:
            return
        speculate = True
        while True:
            entries = self._plan(speculate)
            started = self._clock()
            rc = self.decoder.decode(entries)
            if rc == 0:
                self.drafting.observe_step(sum(len(e.tokens) for e in entries), self._clock() - started)
                break
            if rc == 1 and any(e.draft for e in entries):
                speculate = False  # no KV cells for the drafts: this step goes without them
                continue
            if rc == 1 and self._make_room():
                continue
            self._fail_batch(entries, rc)
            return
        self.stats.steps += 1
        if self.drafting.draft is not None:
            self.drafting.prefetch(entries)
        self._advance(entries)

    def _next_key(self) -> AdapterSet:
        """The adapter set this step serves: the sets with running sequences take turns."""
        keys = list(dict.fromkeys(seq.key for seq in self.running.values()))
        if len(keys) == 1 or self._last_key not in keys:
            return keys[0]
        return keys[(keys.index(self._last_key) + 1) % len(keys)]

    def _plan(self, speculate: bool = True) -> list[BatchEntry]:
        key = self._last_key = self._next_key()
        self.decoder.use_adapters(key)
        entries: list[BatchEntry] = []
        prefilling: list[tuple[int, Sequence, list[int]]] = []
        n_decode = 0
        for seq_id, seq in self.running.items():
            if seq.key != key:
                continue
            slot = self.slots[seq_id]
            pending = seq.tokens[len(slot.tokens) :]
            if seq.prefilling:
                prefilling.append((seq_id, seq, pending))
            else:
                entries.append(BatchEntry(seq_id, pending, len(slot.tokens), True))
                n_decode += len(pending)
        room = self.n_batch - n_decode
        if speculate:
            room -= self.drafting.add_drafts(entries, room, n_decode)
        budget = min(room, self.prefill_chunk) if n_decode else room
        for seq_id, seq, pending in prefilling:
            if budget <= 0:
                break
            pos = len(self.slots[seq_id].tokens)
            media_at = min((start for start in seq.media if start >= pos), default=None)
            stop = self.table.next_checkpoint(seq_id, pos)  # a hybrid's chunk ends where it checkpoints
            ends = [p - pos for p in (media_at, stop) if p is not None]
            chunk = pending[: min([budget, *ends])]
            if not chunk:
                continue  # an image or audio clip comes next: the next step feeds it
            budget -= len(chunk)
            entries.append(BatchEntry(seq_id, chunk, pos, len(chunk) == len(pending)))
        return entries

    def _feed_media(self) -> None:
        """Evaluate the image or audio chunk each prefilling sequence has reached (one per sequence and
        step, through mtmd, outside the step's batch): its cells join the slot like tokens."""
        for seq_id, seq in list(self.running.items()):
            slot = self.slots[seq_id]
            span = seq.media.get(len(slot.tokens)) if seq.prefilling else None
            if span is None:
                continue
            if self.media is None:
                self._end(seq_id, GenerationError("this model was loaded without a projector (mmproj)"))
                continue
            self.decoder.use_adapters(seq.key)
            self._last_key = None
            rc = self.media.eval_media(span, seq_id, len(slot.tokens))
            if rc == 1 and self._make_room():
                rc = self.media.eval_media(span, seq_id, len(slot.tokens)) if seq_id in self.running else 0
            if seq_id not in self.running:
                continue  # preempted to make room: it waits with its tokens
            if rc != 0:
                self.table.discard_unwritten(slot)
                detail = self.decoder.last_error() or "no details"
                why = f"evaluating the {span.kind} failed (code {rc}; llama.cpp: {detail})"
                advice = "the request was dropped and the model is still usable; a smaller image may help"
                self._end(seq_id, GenerationError(f"{why}; {advice}"))
                continue
            self.table.extend(slot, seq.tokens[span.start : span.start + span.n_pos], time.monotonic())
            slot.media_cells[span.start] = span.extra_cells
            self.stats.media_chunks += 1

    def _end(self, seq_id: int, exc: BaseException) -> None:
        """A running sequence fails with ``exc``; its slot is free again."""
        self.table.release(seq_id).fail(exc)

    def _advance(self, entries: list[BatchEntry]) -> None:
        now = time.monotonic()
        for entry in entries:
            slot = self.slots[entry.seq_id]
            self.table.extend(slot, entry.tokens, now)
            self.stats.decoded_tokens += len(entry.tokens)
            seq = self.running[entry.seq_id]
            if seq.prefilling:
                self.table.after_decode(slot)
            if not entry.logits:
                continue
            if seq.prefilling:
                seq.prefilled()
            if seq.request.spec.kind == "embed":  # its answer is the pooled output, not a token
                seq.embedding = self.decoder.seq_embedding(entry.seq_id)
                self._finish(entry.seq_id, "stop")
                continue
            self.drafting.take_tokens(seq, slot, entry)
            if seq.finish is not None:
                self._finish(entry.seq_id)

    # -- KV bookkeeping ----------------------------------------------------------------------------------

    def drop_idle_caches(self, adapter: str | None = None) -> None:
        """Forget idle caches and saved ones (only those computed with ``adapter``, when given)."""
        self.table.drop_idle(adapter)

    def uses_adapter(self, name: str) -> int:
        """How many running or waiting requests apply the adapter ``name``."""
        keys = [s.key for s in self.running.values()]
        keys += [w.key if isinstance(w, Sequence) else w.spec.adapters for w in self.waiting]
        return sum(any(n == name for n, _ in k) for k in keys)

    def _make_room(self) -> bool:
        """llama.cpp found no KV cells for the batch: drop an idle cache, else preempt the youngest."""
        if self.table.evict_least_recent_idle():
            return True
        if len(self.running) < 2:
            return False
        seq_id = max(self.running, key=lambda i: self.running[i].admitted_at)
        seq = self.table.release(seq_id)
        self.table.evict(self.slots[seq_id])  # with a prompt cache, its return is a restore, not a re-prefill
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1
        return True

    # -- endings --------------------------------------------------------------------------------------

    def _finish(self, seq_id: int, reason: Any = None) -> None:
        self.table.release(seq_id).close(reason)

    def _drop_cancelled(self) -> None:
        for seq_id in [i for i, s in self.running.items() if s.cancelled]:
            self._finish(seq_id, "cancelled")
        if any(isinstance(w, Sequence) and w.cancelled for w in self.waiting):
            for seq in [w for w in self.waiting if isinstance(w, Sequence) and w.cancelled]:
                self.waiting.remove(seq)
                seq.close("cancelled")

    def _fail_batch(self, entries: list[BatchEntry], rc: int) -> None:
        """A decode that failed: undo its partial writes, end its sequences, keep the context usable."""
        detail = self.decoder.last_error() or "no details"
        for entry in entries:
            seq_id = entry.seq_id
            if rc != 1:  # code 1 (no cells) writes nothing: the cache, a hybrid's state too, stays
                self.table.discard_unwritten(self.slots[seq_id])
            if seq_id not in self.running:
                continue
            if rc == 1:  # the single remaining sequence has no room to grow: the context is full
                self._finish(seq_id, "length")
                continue
            self._end(seq_id, GenerationError(
                f"llama_decode failed with code {rc}; the request was dropped and the model is still "
                f"usable. If it repeats, reload the model (llama.cpp: {detail})"
            ))  # fmt: skip

    def _fail_requests(self, exc: BaseException) -> None:
        while self.waiting:
            item = self.waiting.popleft()
            if isinstance(item, Sequence):
                item.fail(exc)
            elif item.claim():
                item.sink(exc)
        for seq_id in list(self.running):
            self.table.release(seq_id).fail(exc)

    def fail_all(self, exc: BaseException) -> None:
        """A step raised: every request gets the error, every cache is dropped (its state is unknown)."""
        self._fail_requests(exc)
        for slot in self.slots:
            self.table.clear(slot)
        if self.drafting.draft is not None:
            self.drafting.draft.forget()

    def abandon(self, exc: BaseException) -> None:
        """An RPC worker of this context died mid-step (the thread that stepped it will never come
        back): every request ends with ``exc``; nothing here touches llama.cpp again."""
        self.lost, self.closed = exc, True
        self._fail_requests(exc)

    def keep_slot_caches(self) -> None:
        """Copy every slot's cache into the prompt cache (before the context goes, to outlive it)."""
        for slot in self.table.slots:
            self.table.save(slot)

    def close(self) -> None:
        """End everything: queued requests fail with ModelClosedError, running ones are cancelled."""
        self.closed = True
        while self.waiting:
            item = self.waiting.popleft()
            if isinstance(item, Sequence):
                item.close("cancelled")
            elif not item.expired:
                item.sink(ModelClosedError(f"{self.name} was closed before this request ran"))
        for seq_id in list(self.running):
            self._finish(seq_id, "cancelled")
