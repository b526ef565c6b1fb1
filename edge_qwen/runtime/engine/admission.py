"""Admission for the step loop: which waiting request goes into which free slot, and when.

FIFO: the head of the queue is admitted into the free slot whose cache shares the longest prefix
with its prompt (or borrows a longer one from another sequence with ``seq_cp``), once the unified
KV cache has room for its new cells (idle caches are dropped, least recently used first, to make
it). A prompt whose longest cached prefix was saved to host memory (:mod:`.prompt_cache`) gets it
written back into its slot; a slot's cache is saved there before it is cut or dropped. Requests
that need no slot — expired, cancelled while queued, a cache reset, a prompt longer
than the context — are settled here too. The engine holds one :class:`Admission`; every slot change
goes through the engine's :class:`~.slot_table.SlotTable`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence as Seq

from ...errors import ContextOverflowError
from ..request import STARTED, AdapterSet, Request
from ..results import GenerationChunk, Timings
from .batch_types import SequenceFactory
from .prompt_cache import SavedPrompt
from .sequence import Sequence
from .slot_table import SlotTable
from .slots import Placement, Slot, choose_slot, idle_caches_to_drop, media_boundary


class Admission:
    """Moves requests from the queue into slots of one context's :class:`~.slot_table.SlotTable`."""

    def __init__(
        self, table: SlotTable, make_sequence: SequenceFactory, *, n_ctx: int, n_ctx_seq: int, unified: bool
    ) -> None:
        self.table = table
        self.make_sequence = make_sequence
        self.n_ctx = n_ctx
        self.n_ctx_seq = n_ctx_seq
        self.unified = unified

    def admit(self, waiting: deque[Request | Sequence]) -> None:
        """Admit from the head of ``waiting`` while a slot (and, unified, room) is there for it."""
        while waiting:
            item = waiting[0]
            if isinstance(item, Request) and self._settle_without_slot(item):
                waiting.popleft()
                continue
            key = item.key if isinstance(item, Sequence) else item.spec.adapters
            placement = choose_slot(self.table.slots, item.tokens, allow_copy=self.unified, key=key)
            if placement is None:
                return
            slot = placement.slot
            saved, n_saved = self._saved_prefix(item.tokens, key, placement)
            cached = max(placement.cached, n_saved)
            restore = len(saved.tokens) if saved is not None else 0
            donor = placement.donor if saved is None else None
            if self.unified and not self._room_for(item.tokens, cached, slot, restore, donor):
                return
            waiting.popleft()
            seq = item if isinstance(item, Sequence) else self._start(item)
            if seq is None:
                continue
            self._place(seq, placement, saved, n_saved)

    def _saved_prefix(
        self, prompt: Seq[int], key: AdapterSet, placement: Placement
    ) -> tuple[SavedPrompt | None, int]:
        """A prefix saved in host memory that is longer than what the slots offer (or None, 0)."""
        prompt_cache = self.table.prompt_cache
        if not prompt_cache.entries:
            return None, 0
        saved, n = prompt_cache.best(prompt, key, len(prompt) - 1)
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
                self.table.drop_idle()
                request.sink(GenerationChunk("", finish_reason="stop", timings=Timings(queue_ms=queue_ms)))
            else:
                request.sink(ContextOverflowError(len(request.tokens), self.n_ctx_seq))
            return True
        return False

    def _room_for(
        self, tokens: Seq[int], cached: int, slot: Slot, restore: int = 0, donor: Slot | None = None
    ) -> bool:
        """Make (by dropping idle caches, never the ``donor`` that lends the prefix) or find room for
        the prompt's new cells plus one; with ``restore``, for a saved cache of that many cells
        written into the emptied slot first."""
        if restore:
            freed, need = slot.own_cells, max(restore, len(tokens) + 1)
        else:
            freed, need = max(0, slot.own_cells - max(0, cached - slot.shared)), len(tokens) - cached + 1
        free = self.n_ctx - self.table.committed_cells() + freed
        drop = idle_caches_to_drop(self.table.slots, slot, need, free, also_keep=donor)
        if drop is None:
            return False
        for other in drop:
            self.table.evict(other)
        return True

    def _start(self, request: Request) -> Sequence | None:
        if not request.claim():
            return None
        request.sink(STARTED)
        try:
            return self.make_sequence(request, self.n_ctx_seq)
        except Exception as exc:  # noqa: BLE001 - e.g. a grammar that does not parse: the caller's error
            request.sink(exc)
            return None

    def _place(
        self, seq: Sequence, placement: Placement, saved: SavedPrompt | None = None, n_saved: int = 0
    ) -> None:
        slot, table = placement.slot, self.table
        if saved is not None:
            reuse = table.restore(slot, saved, n_saved)
        elif placement.donor is not None:
            reuse = table.copy_prefix(slot, placement.donor, placement.donor_tokens, seq.tokens)
        else:
            reuse = table.reuse(slot, placement.reuse)
        table.bind(slot, seq, reuse)
