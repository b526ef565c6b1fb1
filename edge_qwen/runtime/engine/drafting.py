"""The speculative half of the step loop: drafts appended to the batch, verified after it.

A generating sequence with a drafter (prompt lookup, or the draft model of
:mod:`~edge_qwen.runtime.engine.draft`, which drafts for all its sequences together before the step's
decode) appends its drafted tokens to its entry and asks for logits at each of them; how many it
drafts comes from the measured step cost (:mod:`~edge_qwen.runtime.speculation.spec_cost`). After the decode
the target's tokens are taken one by one while they match, and the rejected tail is removed from
the KV cache (``seq_rm``) and from the slot's token list in the same step, through the engine's
:class:`~.slot_table.SlotTable`. Sampling goes through here too (a token is a draft of none): the
engine holds one :class:`Drafting` whether or not anything drafts.
"""

from __future__ import annotations

from ..speculation.spec_cost import StepCost, best_draft_length
from ..speculation.speculative import verify
from .batch_types import BatchEntry, DraftSource, EngineStats, Wanted
from .sequence import Sequence
from .slot_table import SlotTable
from .slots import Slot


class Drafting:
    """Drafts for the step's batch and verification after its decode, for one context."""

    def __init__(
        self,
        table: SlotTable,
        *,
        draft: DraftSource | None,
        cost: StepCost | None,
        n_ctx_seq: int,
        stats: EngineStats,
    ) -> None:
        self.table = table
        self.draft = draft  # the draft model, when one is loaded
        self.cost = cost  # measured step cost: how long drafts should be (None: as the drafter says)
        self.n_ctx_seq = n_ctx_seq
        self.stats = stats

    def observe_step(self, n_tokens: int, seconds: float) -> None:
        """A decode of ``n_tokens`` took ``seconds``: the step cost draft lengths are chosen by."""
        if self.cost is not None:
            self.cost.observe(n_tokens, seconds)

    def prefetch(self, entries: list[BatchEntry]) -> None:
        """The draft model reads the prompt chunks the target just prefilled, before their first
        token is sampled: its cost lands in the time to first token, not as a stall after it."""
        assert self.draft is not None
        self.draft.observe(entries)
        reading = {}
        for e in entries:
            seq = self.table.running[e.seq_id]
            if seq.prefilling and seq.drafter is not None and seq.drafter.uses_model:
                reading[e.seq_id] = seq.tokens[: e.pos + len(e.tokens)]
        if reading:
            self.draft.prefetch(reading)

    def add_drafts(self, entries: list[BatchEntry], room: int, n_decode: int = 1) -> int:
        """Append the drafts of speculating sequences to their entries (within ``room`` batch
        tokens, max_tokens and the sequence's context); returns how many tokens they add. Prompt
        lookup drafts each sequence alone; the draft model drafts all of its sequences together."""
        added = 0
        wanted: dict[int, Wanted] = {}
        p_min: dict[int, float] = {}
        for entry in entries:
            seq = self.table.running[entry.seq_id]
            drafter = seq.drafter
            if drafter is None:
                continue
            limit = min(room - added, seq.max_tokens - seq.n_out - 1,
                        self.n_ctx_seq - len(seq.tokens) - 1)  # fmt: skip
            limit = self.table.draft_limit(limit)  # a hybrid's rejected tail must be undoable
            if self.cost is not None and drafter.config.adaptive:  # what this machine's step cost pays for
                model_drafts = drafter.uses_model and self.draft is not None
                draft_cost = self.draft.position_cost if model_drafts and self.draft else 0.0
                limit = best_draft_length(drafter.acceptance(), min(limit, drafter.k_now), n_decode,
                                          self.cost, draft_cost)  # fmt: skip
            if drafter.uses_model:
                n = drafter.limit(limit) if self.draft is not None else 0
                if n > 0:
                    wanted[entry.seq_id], p_min[entry.seq_id] = (seq.tokens, n), drafter.config.p_min
                    added += n  # reserved until the draft model says how many it drafted
                continue
            draft = drafter.propose(seq.tokens, limit)
            if draft:
                self._attach(entry, draft)
                added += len(draft)
        if wanted and self.draft is not None:
            added -= sum(n for _tokens, n in wanted.values())
            drafts = self.draft.propose(wanted, p_min)
            for entry in entries:
                drafted = drafts.get(entry.seq_id, [])
                if drafted:
                    self._attach(entry, drafted)
                    added += len(drafted)
        return added

    def _attach(self, entry: BatchEntry, draft: list[int]) -> None:
        self.table.before_verify(self.table.slots[entry.seq_id])
        entry.tokens = [*entry.tokens, *draft]
        entry.draft = draft

    def take_tokens(self, seq: Sequence, slot: Slot, entry: BatchEntry) -> None:
        """Sample at the entry's logits rows and hand the tokens to the sequence, one by one, while
        they confirm the draft; then drop the rejected drafted tokens from the KV cache."""
        decoder = self.table.decoder
        rows = entry.rows or [entry.row]

        def take(token: int) -> bool:
            return seq.take(token, decoder.is_eog(token))

        kept = verify(entry.draft, lambda j: decoder.sample(seq.sampler, rows[j]), take)
        if seq.drafter is None:
            return
        seq.drafter.observe(len(entry.draft), kept)
        if not entry.draft:
            return
        self.stats.drafted_tokens += len(entry.draft)
        self.stats.accepted_tokens += kept
        rejected = len(entry.draft) - kept
        if rejected:
            keep = len(slot.tokens) - rejected
            if self.table.rollback(slot, keep) < keep:  # the backend could not remove just the tail
                seq.refeed()  # what it lost is fed again
        self.table.verified(slot)
