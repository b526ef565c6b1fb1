"""The slot table of one context: every slot, the sequence running in it, and every change to what
a slot's sequence holds in the KV cache — cut back, cleared, evicted (saved to the prompt cache
first), restored from it, or given a copied prefix. The step loop and its collaborators
(:mod:`.admission`, :mod:`.drafting`) change slots only through it, so the slot's token list and
llama.cpp's cells never disagree. Pure bookkeeping over a :class:`~.batch_types.Decoder`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .batch_types import Decoder, DraftSource
from .prompt_cache import PromptCache, SavedPrompt
from .sequence import Sequence
from .slots import Slot, media_boundary, used_cells


class SlotTable:
    """The ``parallel`` slots of a context and the sequences bound to them."""

    def __init__(
        self, decoder: Decoder, parallel: int, prompt_cache: PromptCache, draft: DraftSource | None = None
    ) -> None:
        self.decoder = decoder
        self.prompt_cache = prompt_cache
        self.draft = draft
        self.slots = [Slot(i) for i in range(parallel)]
        self.running: dict[int, Sequence] = {}  # seq_id -> the sequence generating in that slot

    # -- binding sequences ---------------------------------------------------------------------------

    def bind(self, slot: Slot, seq: Sequence, reuse: int) -> None:
        """``seq`` runs in ``slot`` from now on, its first ``reuse`` tokens already cached there."""
        slot.key = seq.key
        slot.busy = True
        seq.start(reuse)
        self.running[slot.seq_id] = seq

    def release(self, seq_id: int) -> Sequence:
        """The sequence leaves its slot (finished, failed or preempted); the slot keeps its cache."""
        seq = self.running.pop(seq_id)
        slot = self.slots[seq_id]
        slot.busy = False
        slot.last_used = time.monotonic()
        return seq

    def extend(self, slot: Slot, tokens: Iterable[int], now: float) -> None:
        """Tokens whose cells a decode (or a media evaluation) just wrote into the slot's sequence."""
        slot.tokens.extend(tokens)
        slot.last_used = now

    def committed_cells(self) -> int:
        """Cells held by idle caches plus every running sequence's whole prompt-so-far (admitted
        prompts count before they are prefilled)."""
        running = sum(
            max(0, len(seq.tokens) - self.slots[i].shared) + seq.extra_cells
            for i, seq in self.running.items()
        )
        return running + used_cells([s for s in self.slots if not s.busy])

    # -- KV changes ------------------------------------------------------------------------------------

    def truncate(self, slot: Slot, keep: int) -> int:
        """Keep the slot's first ``keep`` tokens (fewer when that would cut a media span); returns
        how many it kept (0 when the backend could not cut there and the whole cache went)."""
        keep = media_boundary(slot.tokens, keep)
        if keep >= len(slot.tokens):
            return len(slot.tokens)
        if not self.decoder.seq_rm(slot.seq_id, keep):
            self.decoder.seq_rm(slot.seq_id, 0)
            keep = 0
        del slot.tokens[keep:]
        slot.shared = min(slot.shared, keep)
        slot.forget_from(keep)
        return keep

    def clear(self, slot: Slot) -> None:
        if slot.tokens:
            self.decoder.seq_rm(slot.seq_id, 0)
        slot.tokens = []
        slot.shared = 0
        slot.media_cells.clear()

    def save(self, slot: Slot) -> None:
        """Copy the slot's cache to host memory (when the prompt cache wants it) before it is lost."""
        if not slot.media_cells and self.prompt_cache.worth_saving(slot.tokens, slot.key):
            self.prompt_cache.save(slot.tokens, slot.key, lambda: self.decoder.seq_state(slot.seq_id))

    def evict(self, slot: Slot) -> None:
        """Drop the slot's cache (for room, or for another prompt), keeping a copy in the prompt cache."""
        self.save(slot)
        self.clear(slot)

    def restore(self, slot: Slot, saved: SavedPrompt, n_saved: int) -> int:
        """Write a saved cache back into the (evicted) slot and keep its first ``n_saved`` tokens;
        returns how many tokens the slot then holds (0 when llama.cpp refused the state)."""
        self.evict(slot)
        if not self.decoder.load_state(slot.seq_id, saved.state):
            return 0
        slot.tokens, slot.key = list(saved.tokens), saved.key
        reuse = self.truncate(slot, n_saved)
        self.prompt_cache.used(saved, reuse)
        return reuse

    def copy_prefix(self, slot: Slot, donor: Slot, n_tokens: int, tokens: list[int]) -> int:
        """Replace the slot's cache by the donor's first ``n_tokens`` cells (``seq_cp``: they cost no
        cells, media ones included); returns ``n_tokens``."""
        self.evict(slot)
        self.decoder.seq_cp(donor.seq_id, slot.seq_id, n_tokens)
        slot.tokens = tokens[:n_tokens]
        slot.shared = n_tokens
        return n_tokens

    def reuse(self, slot: Slot, keep: int) -> int:
        """Keep the slot's own first ``keep`` tokens for a new prompt (saving the cache first when
        most of it is about to go); returns how many it kept."""
        if len(slot.tokens) - keep >= self.prompt_cache.min_tokens:
            self.save(slot)
        return self.truncate(slot, keep)

    def drop_idle(self, adapter: str | None = None) -> None:
        """Forget idle caches and saved ones (only those computed with ``adapter``, when given)."""
        for slot in self.slots:
            if not slot.busy and (adapter is None or any(n == adapter for n, _ in slot.key)):
                self.clear(slot)
        self.prompt_cache.forget(adapter)
        if adapter is None and self.draft is not None:
            self.draft.forget(s.seq_id for s in self.slots if not s.busy)

    def evict_least_recent_idle(self) -> bool:
        """Drop the least recently used idle cache; False when there is none."""
        idle = [s for s in self.slots if not s.busy and s.tokens]
        if not idle:
            return False
        self.evict(min(idle, key=lambda s: s.last_used))
        return True
