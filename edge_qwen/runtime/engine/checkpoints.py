"""State checkpoints: how a hybrid model (Qwen3.5, Qwen3-Next) reuses a cached prefix.

An attention layer's K/V can be cut back to any position (``llama_memory_seq_rm``); a recurrent
layer (Gated DeltaNet) keeps one fixed-size state per sequence, the summary of *every* token so
far, and cannot. So on a hybrid model a cache is only reusable up to a position whose recurrent
state was saved when the sequence passed it: a :class:`Checkpoint`, the bytes of
``llama_state_seq_get_data_ext(..., LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)`` (the recurrent layers'
state alone, kilobytes to tens of megabytes; the attention K/V stays in the cache). A new prompt
restores the latest checkpoint at or before its common prefix, the attention K/V is cut there, and
only the rest is prefilled. llama.cpp's server does the same with ``--ctx-checkpoints``.

Where a prompt is checkpointed (:func:`checkpoint_positions`): at the start of its first message
after the system prompt (another user, the same system prompt), at the start of its last user
message (the same history, an edited or regenerated question) and at its end (the next chat
turn, even when the template re-renders the reply it follows, as Qwen3's drops ``<think>``). Each
slot keeps a few (``per_slot``, :func:`keep_recent`). Pure logic: the state bytes come from the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PER_SLOT = 4  # checkpoints a slot keeps (llama-server: --ctx-checkpoints)


@dataclass(frozen=True)
class Checkpoint:
    """The recurrent state of a sequence after its first ``n_tokens`` tokens."""

    n_tokens: int
    state: bytes

    @property
    def size(self) -> int:
        return len(self.state)


def reusable_prefix(n: int, n_cached: int, checkpoints: Sequence[Checkpoint], *, live: bool = True) -> int:
    """How many of a hybrid cache's ``n_cached`` tokens a prompt sharing ``n`` of them can reuse:
    all ``n`` when that is the whole cache and its state is ``live`` (it simply continues), else
    the latest checkpoint at or before ``n`` (0 without one)."""
    if live and n >= n_cached:
        return n_cached
    return max((c.n_tokens for c in checkpoints if c.n_tokens <= n), default=0)


def latest(checkpoints: Sequence[Checkpoint], n: int) -> Checkpoint | None:
    """The checkpoint to restore for a cut at ``n`` tokens (the latest at or before it)."""
    best = [c for c in checkpoints if c.n_tokens <= n]
    return max(best, key=lambda c: c.n_tokens) if best else None


def checkpoint_positions(tokens: Sequence[int], boundary: int | None, after: int = 0) -> list[int]:
    """Where to checkpoint a prompt of ``tokens``, past the ``after`` tokens already cached: the
    start of its first message after the system prompt, the start of its last user message (message
    starts are the ``boundary`` token, ``<|im_start|>``), and its end. Ascending, never at 0: each
    serves a different next prompt (another question, an edited one, the next turn), however short
    the question between them."""
    n = len(tokens)
    wanted = {n}
    if boundary is not None:
        starts = [i for i, t in enumerate(tokens) if t == boundary and i > 0]
        if starts:
            wanted.add(starts[0])
        if len(starts) >= 2:
            wanted.add(starts[-2])  # the last one opens the reply ("<|im_start|>assistant\n")
    return sorted(p for p in wanted if p > after)


def keep_recent(checkpoints: Sequence[Checkpoint], new: Checkpoint, per_slot: int) -> list[Checkpoint]:
    """``checkpoints`` (ascending) with ``new`` added, replacing one at the same position; beyond
    ``per_slot`` the second earliest goes: the earliest (the end of a system prompt, shared by
    every conversation) and the latest (the previous turn) are the ones prompts come back for."""
    kept = sorted([c for c in checkpoints if c.n_tokens != new.n_tokens] + [new], key=lambda c: c.n_tokens)
    while len(kept) > max(0, per_slot):
        del kept[1 if len(kept) > 1 and per_slot > 1 else 0]
    return kept
