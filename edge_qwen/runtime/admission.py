"""Admission for the step loop: which waiting request goes into which free slot, and when.

FIFO: the head of the queue is admitted into the free slot whose cache shares the longest prefix
with its prompt (or borrows a longer one from another sequence with ``seq_cp``), once the unified
KV cache has room for its new cells (idle caches are dropped, least recently used first, to make
it). A prompt whose longest cached prefix was saved to host memory (:mod:`.prompt_cache`) gets it
written back into its slot; a slot's cache is saved there before it is cut or dropped. Requests
that need no slot — expired, cancelled while queued, a cache reset, a prompt longer
than the context — are settled here too. A mixin of :class:`~edge_qwen.runtime.batcher.BatchEngine`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

from ..errors import ContextOverflowError
from .prompt_cache import PromptCache, SavedPrompt
from .request import STARTED, AdapterSet, Request
from .results import GenerationChunk, Timings
from .sequence import Sequence
from .slots import Placement, Slot, choose_slot, idle_caches_to_drop, media_boundary, used_cells

if TYPE_CHECKING:
    from .batch_types import Decoder, SequenceFactory


class Admission:
    """The admission half of the step loop (its state lives in the engine)."""

    decoder: Decoder
    slots: list[Slot]
    waiting: deque[Request | Sequence]
    running: dict[int, Sequence]
    unified: bool
    n_ctx: int
    n_ctx_seq: int
    prompt_cache: PromptCache
    _make: SequenceFactory

    # the engine's KV bookkeeping (BatchEngine defines them)
    def _truncate(self, slot: Slot, keep: int) -> int:
        raise NotImplementedError

    def _clear(self, slot: Slot) -> None:
        raise NotImplementedError

    def drop_idle_caches(self, adapter: str | None = None) -> None:
        raise NotImplementedError

    def _admit(self) -> None:
        while self.waiting:
            item = self.waiting[0]
            if isinstance(item, Request) and self._settle_without_slot(item):
                self.waiting.popleft()
                continue
            key = item.key if isinstance(item, Sequence) else item.spec.adapters
            placement = choose_slot(self.slots, item.tokens, allow_copy=self.unified, key=key)
            if placement is None:
                return
            slot = placement.slot
            saved, n_saved = self._saved_prefix(item.tokens, key, placement)
            cached = max(placement.cached, n_saved)
            restore = len(saved.tokens) if saved is not None else 0
            if self.unified and not self._room_for(item.tokens, cached, slot, restore):
                return
            self.waiting.popleft()
            seq = item if isinstance(item, Sequence) else self._start(item)
            if seq is None:
                continue
            self._place(seq, placement, saved, n_saved)

    def _saved_prefix(
        self, prompt: Seq[int], key: AdapterSet, placement: Placement
    ) -> tuple[SavedPrompt | None, int]:
        """A prefix saved in host memory that is longer than what the slots offer (or None, 0)."""
        if not self.prompt_cache.entries:
            return None, 0
        saved, n = self.prompt_cache.best(prompt, key, len(prompt) - 1)
        n = media_boundary(prompt, n)
        return (saved, n) if saved is not None and n > placement.cached else (None, 0)

    def _settle_without_slot(self, request: Request) -> bool:
        """Requests that need no slot: expired, cancelled while queued, cache resets, too long."""
        if request.expired:
            return True
        if request.cancelled.is_set() or not request.tokens or len(request.tokens) >= self.n_ctx_seq:
            if not request.claim():
                return True
            queue_ms = (time.perf_counter() - request.submitted) * 1e3
            if request.cancelled.is_set():
                timings = Timings(queue_ms=queue_ms)
                request.sink(GenerationChunk("", finish_reason="cancelled", timings=timings))
            elif not request.tokens:
                self.drop_idle_caches()
                request.sink(GenerationChunk("", finish_reason="stop", timings=Timings(queue_ms=queue_ms)))
            else:
                request.sink(ContextOverflowError(len(request.tokens), self.n_ctx_seq))
            return True
        return False

    def _room_for(self, tokens: Seq[int], cached: int, slot: Slot, restore: int = 0) -> bool:
        """Make (by dropping idle caches) or find room for the prompt's new cells plus one; with
        ``restore``, for a saved cache of that many cells written into the emptied slot first."""
        if restore:
            freed, need = slot.own_cells, max(restore, len(tokens) + 1)
        else:
            freed, need = max(0, slot.own_cells - max(0, cached - slot.shared)), len(tokens) - cached + 1
        free = self.n_ctx - self._committed_cells() + freed
        drop = idle_caches_to_drop(self.slots, slot, need, free)
        if drop is None:
            return False
        for other in drop:
            self._evict(other)
        return True

    def _save(self, slot: Slot) -> None:
        """Copy the slot's cache to host memory (when the prompt cache wants it) before it is lost."""
        if not slot.media_cells and self.prompt_cache.worth_saving(slot.tokens, slot.key):
            self.prompt_cache.save(slot.tokens, slot.key, lambda: self.decoder.seq_state(slot.seq_id))

    def _evict(self, slot: Slot) -> None:
        """Drop the slot's cache (for room, or for another prompt), keeping a copy in the prompt cache."""
        self._save(slot)
        self._clear(slot)

    def _committed_cells(self) -> int:
        """Cells held by idle caches plus every running sequence's whole prompt-so-far (admitted
        prompts count before they are prefilled)."""
        running = sum(
            max(0, len(seq.tokens) - self.slots[i].shared) + seq.extra_cells
            for i, seq in self.running.items()
        )
        return running + used_cells([s for s in self.slots if not s.busy])

    def _start(self, request: Request) -> Sequence | None:
        if not request.claim():
            return None
        request.sink(STARTED)
        try:
            return self._make(request, self.n_ctx_seq)
        except Exception as exc:  # noqa: BLE001 - e.g. a grammar that does not parse: the caller's error
            request.sink(exc)
            return None

    def _place(
        self, seq: Sequence, placement: Placement, saved: SavedPrompt | None = None, n_saved: int = 0
    ) -> None:
        slot, reuse, donor = placement.slot, placement.reuse, placement.donor
        if saved is not None:
            self._evict(slot)
            reuse = 0
            if self.decoder.load_state(slot.seq_id, saved.state):
                slot.tokens, slot.key = list(saved.tokens), saved.key
                reuse = self._truncate(slot, n_saved)
                self.prompt_cache.used(saved, reuse)
        elif donor is not None:
            self._evict(slot)
            self.decoder.seq_cp(donor.seq_id, slot.seq_id, placement.donor_tokens)
            slot.tokens = list(seq.tokens[: placement.donor_tokens])
            slot.shared = placement.donor_tokens  # copied media cells are shared too: they cost nothing here
            reuse = placement.donor_tokens
        else:
            if len(slot.tokens) - reuse >= self.prompt_cache.min_tokens:
                self._save(slot)  # most of its cache is about to go
            reuse = self._truncate(slot, reuse)
        slot.key = seq.key
        slot.busy = True
        seq.prefilling = True
        seq.start(reuse)
        self.running[slot.seq_id] = seq
