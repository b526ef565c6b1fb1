"""Draft-model speculation: a smaller model with the target's vocabulary proposes the next tokens.

The draft model has its own llama.cpp context with as many sequences as the target's, all stepped
on the same compute thread as the target (no second thread competing for the cores). Each draft
sequence mirrors one target slot: :meth:`DraftModel.propose` first brings every speculating
sequence's draft cache up to the target's tokens (keeping the common prefix, removing the rest with
``seq_rm``), then drafts greedily for all of them together: one draft decode per drafted position,
each carrying one token of every sequence still drafting. A sequence stops drafting at its limit,
at a token the draft gives less than ``p_min`` probability, or at a token the target's vocabulary
does not have. The target verifies the drafts (:mod:`~edge_qwen.runtime.speculation.speculative`).

A hybrid draft model (Qwen3.5) cannot cut its recurrent state back to the accepted tokens, so each
sequence's state is checkpointed where its catch-up ends, before it drafts: the next step goes
back there and feeds only what the target accepted since.

The draft is the argmax of the draft model (a point mass), so verifying by sampling the target and
comparing is the standard acceptance rule and the output distribution is the target's.

:func:`vocab_mismatch` is the compatibility check made when the pair is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from typing import Protocol

from .batcher import BatchEntry, Wanted
from .checkpoints import Checkpoint
from .slots import common_prefix

VOCAB_SLACK = 128  # llama.cpp's speculative check allows vocabularies this far apart in size
CHECK_FROM = 5  # the first ids may differ in special-token spelling between converters


class DraftDecoder(Protocol):
    """What drafting needs from the draft model's context (see :class:`~.decoder.NativeDecoder`)."""

    recurrent: bool

    def decode(self, entries: Seq[BatchEntry]) -> int: ...
    def top(self, row: int) -> tuple[int, float]: ...
    def seq_rm(self, seq_id: int, p0: int) -> bool: ...
    def seq_partial_state(self, seq_id: int) -> bytes | None: ...
    def load_partial_state(self, seq_id: int, state: bytes) -> bool: ...


class DraftModel:
    """Greedy drafts for up to ``parallel`` sequences from a draft context (compute thread only).

    ``n_vocab`` is the target's vocabulary size (a drafted id must exist there); ``n_batch`` the most
    tokens a generating step's catch-up feeds, ``max_batch`` (the draft context's batch size) the
    most a prefilling step's does (:meth:`prefetch`)."""

    def __init__(
        self, decoder: DraftDecoder, *, parallel: int, n_batch: int, n_vocab: int,
        max_batch: int | None = None, clock: Callable[[], float] = time.perf_counter,
    ) -> None:  # fmt: skip
        self.decoder = decoder
        self.n_batch = n_batch
        self.max_batch = max(n_batch, max_batch or n_batch)
        self.n_vocab = n_vocab
        self.cached: list[list[int]] = [[] for _ in range(parallel)]
        self.marks: dict[int, Checkpoint] = {}  # hybrid draft: each sequence's state before it drafted
        self.decodes = 0
        self._clock = clock
        self._position_s = 0.0  # running mean seconds of one drafting decode

    @property
    def position_cost(self) -> float:
        """Seconds one drafted position costs (a draft decode of one token per drafting sequence)."""
        return self._position_s

    def propose(self, wanted: Mapping[int, Wanted], p_min: Mapping[int, float]) -> dict[int, list[int]]:
        """Drafts for ``{seq_id: (tokens so far, most tokens to draft)}``; a sequence with nothing
        confident enough to draft is left out. Never raises for a full or failing draft context:
        drafting is then skipped (the target goes on without a draft)."""
        wanted = {s: (t, n) for s, (t, n) in wanted.items() if n > 0 and t}
        if not wanted:
            return {}
        rows = self._catch_up({s: t for s, (t, _n) in wanted.items()}, self.n_batch)
        drafts: dict[int, list[int]] = {s: [] for s in rows}
        active = dict(rows)
        while active:
            entries = []
            for seq_id, row in active.items():
                token, prob = self.decoder.top(row)
                draft = drafts[seq_id]
                if prob < p_min.get(seq_id, 0.0) or token >= self.n_vocab:
                    continue
                draft.append(token)
                if len(draft) < wanted[seq_id][1]:
                    entries.append(BatchEntry(seq_id, [token], len(self.cached[seq_id]), True))
            if not entries:
                break
            started = self._clock()
            if self._decode(entries) != 0:
                break
            elapsed = self._clock() - started
            self._position_s = elapsed if not self._position_s else 0.8 * self._position_s + 0.2 * elapsed
            active = {e.seq_id: e.row for e in entries}
        return {s: d for s, d in drafts.items() if d}

    def observe(self, entries: Seq[BatchEntry]) -> None:
        """Nothing to take from the target's decode: the draft reads token ids (:meth:`prefetch`)."""

    def prefetch(self, histories: Mapping[int, Seq[int]]) -> None:
        """Read the prompt chunks the target has just prefilled, in the same step (no draft yet), so
        that drafting starts without a long catch-up when the first token comes."""
        self._catch_up({s: t for s, t in histories.items() if t}, self.max_batch)

    def _catch_up(self, histories: Mapping[int, Seq[int]], budget: int) -> dict[int, int]:
        """Feed each sequence's tokens the draft cache lacks (at least its last one, whose logits
        start the draft), at most ``budget`` tokens in all, in one decode: a long prompt catches
        up over several steps instead of stalling one. Returns the logits row of every sequence
        brought up to date (only those draft this step)."""
        entries: list[BatchEntry] = []
        room = budget
        for seq_id, tokens in histories.items():
            cached = self.cached[seq_id]
            self._truncate(seq_id, min(common_prefix(cached, tokens), len(tokens) - 1))
            if room <= 0:
                continue
            chunk = list(tokens[len(cached) : len(cached) + room])
            room -= len(chunk)
            entries.append(BatchEntry(seq_id, chunk, len(cached), len(cached) + len(chunk) == len(tokens)))
        if self._decode(entries) != 0:
            return {}
        if self.decoder.recurrent:
            for e in entries:
                state = self.decoder.seq_partial_state(e.seq_id)
                if state:
                    self.marks[e.seq_id] = Checkpoint(len(self.cached[e.seq_id]), state)
        return {e.seq_id: e.row for e in entries if e.logits}

    def _decode(self, entries: list[BatchEntry]) -> int:
        rc = self.decoder.decode(entries)
        self.decodes += 1
        if rc == 0:
            for entry in entries:
                self.cached[entry.seq_id].extend(entry.tokens)
            return 0
        for entry in entries:  # undo whatever part of the batch llama.cpp wrote
            if self.decoder.recurrent and rc != 1:  # its state may have moved on: start it afresh
                self.decoder.seq_rm(entry.seq_id, 0)
                self.cached[entry.seq_id].clear()
                self.marks.pop(entry.seq_id, None)
            else:
                self.decoder.seq_rm(entry.seq_id, len(self.cached[entry.seq_id]))
        if rc == 1:  # no cells: forget the caches of sequences not in this batch, for next time
            busy = {e.seq_id for e in entries}
            for seq_id in range(len(self.cached)):
                if seq_id not in busy:
                    self._truncate(seq_id, 0)
        return rc

    def _truncate(self, seq_id: int, keep: int) -> None:
        cached = self.cached[seq_id]
        if keep >= len(cached):
            return
        if self.decoder.recurrent:
            keep = self._back_to_mark(seq_id, keep)
        elif not self.decoder.seq_rm(seq_id, keep):
            self.decoder.seq_rm(seq_id, 0)
            keep = 0
        del cached[keep:]

    def _back_to_mark(self, seq_id: int, keep: int) -> int:
        """A hybrid draft sequence cut to its mark at or before ``keep`` (0 without one)."""
        mark = self.marks.pop(seq_id, None)
        if mark is not None and 0 < mark.n_tokens <= keep:
            loaded = self.decoder.load_partial_state(seq_id, mark.state)
            if loaded and self.decoder.seq_rm(seq_id, mark.n_tokens):
                return mark.n_tokens
        self.decoder.seq_rm(seq_id, 0)
        return 0

    def forget(self, seq_ids: Iterable[int] | None = None) -> None:
        """Drop the draft caches of ``seq_ids`` (all: after the target's state became unknown)."""
        for seq_id in range(len(self.cached)) if seq_ids is None else seq_ids:
            self._truncate(seq_id, 0)


def vocab_mismatch(
    target_n: int, draft_n: int, text: Callable[[str, int], bytes], special: Mapping[str, tuple[int, int]]
) -> str | None:
    """Why a draft model cannot draft for a target (None when it can): vocabulary sizes further apart
    than llama.cpp allows, different special tokens (``{"bos": (target id, draft id)}``), or a token
    id spelled differently (``text(which, id)``, which is "target" or "draft")."""
    if abs(target_n - draft_n) > VOCAB_SLACK:
        return f"the vocabularies differ in size ({target_n} tokens against the draft's {draft_n})"
    for name, (a, b) in special.items():
        if a != b:
            return f"the {name} token differs (id {a} in the target, {b} in the draft)"
    for i in range(CHECK_FROM, min(target_n, draft_n)):
        ours, theirs = text("target", i), text("draft", i)
        if ours != theirs:
            spelled = ours.decode(errors="replace"), theirs.decode(errors="replace")
            return f"token {i} is {spelled[0]!r} in the target but {spelled[1]!r} in the draft"
    return None
