"""Admission for the step loop: which waiting request goes into which free slot, and when.

FIFO: the head of the queue is admitted into the free slot whose cache shares the longest prefix
with its prompt (or borrows a longer one from another sequence with ``seq_cp``), once the unified
KV cache has room for its new cells (idle caches are dropped, least recently used first, to make
it). Requests that need no slot — expired, cancelled while queued, a cache reset, a prompt longer
than the context — are settled here too. A mixin of :class:`~edge_qwen.runtime.batcher.BatchEngine`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

from ..errors import ContextOverflowError
from .request import STARTED, Request
from .results import GenerationChunk, Timings
from .sequence import Sequence
from .slots import Slot, choose_slot, idle_caches_to_drop, used_cells

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
            if self.unified and not self._room_for(item.tokens, placement.cached, slot):
                return
            self.waiting.popleft()
            seq = item if isinstance(item, Sequence) else self._start(item)
            if seq is None:
                continue
            self._place(seq, slot, placement.reuse, placement.donor, placement.donor_tokens)

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

    def _room_for(self, tokens: Seq[int], cached: int, slot: Slot) -> bool:
        """Make (by dropping idle caches) or find room for the prompt's new cells plus one."""
        freed_by_truncation = max(0, slot.own_cells - max(0, cached - slot.shared))
        free = self.n_ctx - self._committed_cells() + freed_by_truncation
        drop = idle_caches_to_drop(self.slots, slot, len(tokens) - cached + 1, free)
        if drop is None:
            return False
        for other in drop:
            self._clear(other)
        return True

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

    def _place(self, seq: Sequence, slot: Slot, reuse: int, donor: Slot | None, donor_tokens: int) -> None:
        if donor is not None:
            self._clear(slot)
            self.decoder.seq_cp(donor.seq_id, slot.seq_id, donor_tokens)
            slot.tokens = list(seq.tokens[:donor_tokens])
            slot.shared = donor_tokens  # copied media cells are shared too: they cost nothing here
            reuse = donor_tokens
        else:
            reuse = self._truncate(slot, reuse)
        slot.key = seq.key
        slot.busy = True
        seq.prefilling = True
        seq.start(reuse)
        self.running[slot.seq_id] = seq
