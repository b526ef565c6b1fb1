"""The slot table of one context: every slot, the sequence running in it, and every change to what
a slot's sequence holds in the KV cache — cut back, cleared, evicted (saved to the prompt cache
first), restored from it, or given a copied prefix — and, on a hybrid model, the state
checkpoints those cuts go back to (:mod:`.checkpoints`). The step loop and its collaborators
(:mod:`.admission`, :mod:`.drafting`) change slots only through it, so the slot's token list and
llama.cpp's cells never disagree. Pure bookkeeping over a :class:`~.batch_types.Decoder`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from .batch_types import Decoder, DraftSource
from .checkpoints import PER_SLOT, Checkpoint, checkpoint_positions, keep_recent, latest
from .prompt_cache import PromptCache, SavedPrompt
from .sequence import Sequence
from .slots import Slot, media_boundary, used_cells


@dataclass
class CheckpointStats:
    taken: int = 0  # checkpoints written
    restored: int = 0  # cuts that went back to one
    bytes_taken: int = 0


class SlotTable:
    """The ``parallel`` slots of a context and the sequences bound to them. On a hybrid model
    (``decoder.recurrent``) each slot keeps up to ``checkpoints`` state checkpoints, taken where
    :func:`~.checkpoints.checkpoint_positions` says (message starts are the ``boundary`` token)."""

    def __init__(
        self,
        decoder: Decoder,
        parallel: int,
        prompt_cache: PromptCache,
        draft: DraftSource | None = None,
        *,
        checkpoints: int = PER_SLOT,
        boundary: int | None = None,
    ) -> None:
        self.decoder = decoder
        self.prompt_cache = prompt_cache
        self.draft = draft
        self.recurrent = bool(decoder.recurrent)
        self.per_slot = checkpoints if self.recurrent else 0
        self.boundary = boundary
        self.slots = [Slot(i, recurrent=self.recurrent) for i in range(parallel)]
        self.running: dict[int, Sequence] = {}  # seq_id -> the sequence generating in that slot
        self.wanted: dict[int, list[int]] = {}  # seq_id -> positions still to checkpoint
        self.checkpoint_stats = CheckpointStats()

    # -- binding sequences ---------------------------------------------------------------------------

    def bind(self, slot: Slot, seq: Sequence, reuse: int) -> None:
        """``seq`` runs in ``slot`` from now on, its first ``reuse`` tokens already cached there."""
        slot.key = seq.key
        slot.busy = True
        seq.start(reuse)
        self.running[slot.seq_id] = seq
        if self.per_slot:
            self.wanted[slot.seq_id] = checkpoint_positions(seq.tokens, self.boundary, after=reuse)

    def release(self, seq_id: int) -> Sequence:
        """The sequence leaves its slot (finished, failed or preempted); the slot keeps its cache."""
        seq = self.running.pop(seq_id)
        self.wanted.pop(seq_id, None)
        slot = self.slots[seq_id]
        slot.busy = False
        slot.last_used = time.monotonic()
        return seq

    def extend(self, slot: Slot, tokens: Iterable[int], now: float) -> None:
        """Tokens whose cells a decode (or a media evaluation) just wrote into the slot's sequence."""
        slot.tokens.extend(tokens)
        slot.last_used = now

    # -- checkpoints (hybrid models) -----------------------------------------------------------------

    def next_checkpoint(self, seq_id: int, pos: int) -> int | None:
        """The next position past ``pos`` where the sequence's prompt is to be checkpointed (a
        prefill chunk ends there), or None."""
        return next((p for p in self.wanted.get(seq_id, ()) if p > pos), None)

    def after_decode(self, slot: Slot) -> None:
        """The slot's sequence just reached ``len(slot.tokens)``: checkpoint it if that was wanted."""
        wanted = self.wanted.get(slot.seq_id)
        n = len(slot.tokens)
        if not wanted or n not in wanted:
            return
        wanted.remove(n)
        state = self.decoder.seq_partial_state(slot.seq_id)
        if state:
            slot.checkpoints = keep_recent(slot.checkpoints, Checkpoint(n, state), self.per_slot)
            self.checkpoint_stats.taken += 1
            self.checkpoint_stats.bytes_taken += len(state)

    @property
    def checkpoint_count(self) -> int:
        return sum(len(slot.checkpoints) for slot in self.slots)

    @property
    def checkpoint_bytes(self) -> int:
        """Host memory the slots' checkpoints hold now."""
        return sum(c.size for slot in self.slots for c in slot.checkpoints)

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
        if slot.recurrent:
            keep = self._back_to_checkpoint(slot, keep)
        elif not self.decoder.seq_rm(slot.seq_id, keep):
            self.decoder.seq_rm(slot.seq_id, 0)
            keep = 0
        self._cut(slot, keep)
        return keep

    def draft_limit(self, limit: int) -> int:
        """The longest draft a sequence may verify: a hybrid model's rejected tail must fit
        llama.cpp's recurrent snapshots, unless it has none (Qwen3-Next): then each verification
        saves the state before it (:meth:`before_verify`) and a rejection goes back there."""
        window = self.decoder.rollback_window
        return min(limit, window) if self.recurrent and window > 0 else limit

    def before_verify(self, slot: Slot) -> None:
        """The slot's sequence is about to verify a draft: on a hybrid model without recurrent
        snapshots, save its state so that a rejection can go back to it."""
        if slot.recurrent and self.decoder.rollback_window == 0 and slot.tokens:
            state = self.decoder.seq_partial_state(slot.seq_id)
            slot.before_verify = Checkpoint(len(slot.tokens), state) if state else None

    def verified(self, slot: Slot) -> None:
        """The verification step is settled: the state saved before it is not needed any more."""
        slot.before_verify = None

    def rollback(self, slot: Slot, keep: int) -> int:
        """Drop the rejected drafted tail of the slot's last decode, keeping ``keep`` tokens. A hybrid
        model rolls its recurrent state back with llama.cpp's snapshots of that decode (when the
        tail fits its window), else goes back to the state saved before the verification, or to a
        checkpoint; returns how many tokens it kept (the caller feeds the rest again)."""
        if not slot.recurrent:
            return self.truncate(slot, keep)
        rejected = len(slot.tokens) - keep
        if 0 < rejected <= self.decoder.rollback_window and self.decoder.seq_rm(slot.seq_id, keep):
            self._cut(slot, keep)
            return keep
        mark, slot.before_verify = slot.before_verify, None
        if mark is not None and mark.n_tokens <= keep:
            kept = self._restore(slot, mark)
            self._cut(slot, kept)
            return kept
        return self.truncate(slot, keep)

    def _back_to_checkpoint(self, slot: Slot, keep: int) -> int:
        """A hybrid sequence cut to the latest checkpoint at or before ``keep`` (its recurrent state
        restored, its K/V cut there); 0, the sequence emptied, without one."""
        checkpoint = latest(slot.checkpoints, keep)
        if checkpoint is not None:
            return self._restore(slot, checkpoint)
        self.decoder.seq_rm(slot.seq_id, 0)
        return 0

    def _restore(self, slot: Slot, checkpoint: Checkpoint) -> int:
        """Put the checkpoint's recurrent state back and cut the K/V there; 0 (the sequence emptied)
        when llama.cpp refuses either."""
        seq_id = slot.seq_id
        if checkpoint.n_tokens > 0 and self.decoder.load_partial_state(seq_id, checkpoint.state):
            if self.decoder.seq_rm(seq_id, checkpoint.n_tokens):
                self.checkpoint_stats.restored += 1
                return checkpoint.n_tokens
        self.decoder.seq_rm(seq_id, 0)
        return 0

    def _cut(self, slot: Slot, keep: int) -> None:
        del slot.tokens[keep:]
        slot.shared = min(slot.shared, keep)
        slot.forget_from(keep)

    def discard_unwritten(self, slot: Slot) -> None:
        """A decode (or media evaluation) into the slot failed: remove whatever it wrote past the
        slot's tokens. A hybrid's recurrent state may have moved on, so its cache goes."""
        if slot.recurrent:
            self.clear(slot)
        else:
            self.decoder.seq_rm(slot.seq_id, len(slot.tokens))

    def clear(self, slot: Slot) -> None:
        if slot.tokens:
            self.decoder.seq_rm(slot.seq_id, 0)
        slot.tokens = []
        slot.shared = 0
        slot.media_cells.clear()
        slot.checkpoints = []
        slot.before_verify = None

    def save(self, slot: Slot) -> None:
        """Copy the slot's cache to host memory (when the prompt cache wants it) before it is lost,
        with a hybrid's checkpoints."""
        if not slot.media_cells and self.prompt_cache.worth_saving(slot.tokens, slot.key):
            marks = slot.checkpoints if slot.recurrent else None
            self.prompt_cache.save(slot.tokens, slot.key, lambda: self.decoder.seq_state(slot.seq_id), marks)

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
        slot.checkpoints = list(saved.checkpoints or ())
        reuse = self.truncate(slot, n_saved)
        self.prompt_cache.used(saved, reuse)
        return reuse

    def copy_prefix(self, slot: Slot, donor: Slot, n_tokens: int, tokens: list[int]) -> int:
        """Replace the slot's cache by the donor's first ``n_tokens`` cells (``seq_cp``: they cost no
        cells, media ones included), on a hybrid model with the recurrent state of the donor's
        checkpoint there; returns how many tokens the slot then holds (``n_tokens``, or 0)."""
        self.evict(slot)
        if donor.tokens[:n_tokens] != tokens[:n_tokens]:  # the donor's cache went meanwhile
            return 0
        self.decoder.seq_cp(donor.seq_id, slot.seq_id, n_tokens)
        if slot.recurrent:
            checkpoint = latest(donor.checkpoints, n_tokens)
            if checkpoint is None or checkpoint.n_tokens != n_tokens:
                self.decoder.seq_rm(slot.seq_id, 0)
                return 0
            if not self._restore(slot, checkpoint):
                return 0
            slot.checkpoints = [c for c in donor.checkpoints if c.n_tokens <= n_tokens]
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
