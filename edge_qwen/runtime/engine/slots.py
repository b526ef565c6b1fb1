"""Sequence slots of one llama.cpp context and the pure decisions about them.

A context holds ``parallel`` sequences (llama.cpp ``n_seq_max``). Each :class:`Slot` remembers
exactly which tokens' K/V sit in its sequence, so a new request can pick the free slot whose cache
shares the longest prefix with its prompt (llama.cpp's server does the same: prompt-similarity slot
selection), and can borrow a longer prefix from any other sequence with ``llama_memory_seq_cp``.

What ``n_ctx`` means: the context's **total** KV cells. With the unified cache (the default, as in
llama.cpp's server when it picks the slot count itself) all sequences draw on those cells, so one
request may use up to ``n_ctx`` while the others are short; copying a prefix costs no cells. With a
split cache each sequence owns ``n_ctx / parallel`` cells. Nothing here touches llama.cpp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..request import AdapterSet
from .checkpoints import Checkpoint, reusable_prefix


@dataclass
class Slot:
    """One sequence id of the context and the tokens whose K/V it holds, in position order."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    shared: int = 0  # leading tokens whose cells were copied from another sequence (cost no cells)
    busy: bool = False
    last_used: float = 0.0
    key: AdapterSet = ()  # the LoRA adapter set its K/V were computed under (() = the base model)
    media_cells: dict[int, int] = field(default_factory=dict)  # media span start -> cells past its positions
    # a hybrid model's slot (recurrent layers): its cache is reusable only up to a checkpoint
    recurrent: bool = False
    checkpoints: list[Checkpoint] = field(default_factory=list)  # ascending positions
    before_verify: Checkpoint | None = None  # the state a verification step may have to undo

    def reusable(self, n: int, live: bool = True) -> int:
        """How many cached tokens a prompt sharing ``n`` of them can reuse: ``n`` on an attention
        model, else a checkpoint's position (or the whole cache, continued, when ``live``)."""
        if not self.recurrent:
            return n
        return reusable_prefix(n, len(self.tokens), self.checkpoints, live=live)

    @property
    def own_cells(self) -> int:
        return max(0, len(self.tokens) - self.shared) + sum(self.media_cells.values())

    def forget_from(self, keep: int) -> None:
        """Drop the bookkeeping of media spans at or after token ``keep``, and the checkpoints past it."""
        for start in [s for s in self.media_cells if s >= keep]:
            del self.media_cells[start]
        self.checkpoints = [c for c in self.checkpoints if c.n_tokens <= keep]
        if self.before_verify is not None and self.before_verify.n_tokens > keep:
            self.before_verify = None


def media_boundary(tokens: Sequence[int], keep: int) -> int:
    """``keep`` moved back to the start of the media span it falls inside (unchanged elsewhere).
    A media span is a run of one negative placeholder id (:mod:`~edge_qwen.runtime.media.multimodal`);
    all of an image's cells carry its first position, so a cache is never cut inside one."""
    while 0 < keep < len(tokens) and tokens[keep] < 0 and tokens[keep - 1] == tokens[keep]:
        keep -= 1
    return keep


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Placement:
    """Where a prompt goes: its slot, how many leading tokens that slot already holds (``reuse``),
    and optionally another sequence to copy a longer prefix from (``donor``, ``donor_tokens``)."""

    slot: Slot
    reuse: int
    donor: Slot | None = None
    donor_tokens: int = 0

    @property
    def cached(self) -> int:
        return max(self.reuse, self.donor_tokens)


def choose_slot(
    slots: Sequence[Slot], prompt: Sequence[int], *, allow_copy: bool, key: AdapterSet = ()
) -> Placement | None:
    """The free slot for ``prompt``: longest cached prefix first; among equals, an empty slot, then the
    least recently used (its cache is the least likely to be wanted again). None when all are busy.

    At least one prompt token is always left to evaluate (its logits give the first output token).
    With ``allow_copy`` (unified KV cache) a longer prefix held by any other sequence, busy or not,
    is borrowed instead of recomputed, and a prompt that shares only part of a free slot's cache
    goes to an empty slot (else, when it shares at most half of that cache, one used less recently)
    with that part borrowed, so the other conversation stays cached. Only caches computed under
    the same adapter set (``key``) count: K/V computed with LoRA A must never be reused for B. On
    a hybrid model only a prefix ending at a checkpoint counts (:meth:`Slot.reusable`; a donor's
    live state is not lent).
    """
    free = [s for s in slots if not s.busy]
    if not free or not prompt:
        return None
    limit = len(prompt) - 1

    def cached(s: Slot, live: bool = True) -> int:
        if s.key != key:
            return 0
        return s.reusable(media_boundary(prompt, min(common_prefix(s.tokens, prompt), limit)), live)

    def score(s: Slot) -> tuple[int, int, float]:
        return (cached(s), -len(s.tokens), -s.last_used)

    slot = max(free, key=score)
    reuse = cached(slot)
    others = [s for s in free if s is not slot]
    victim = min(others, key=lambda s: (bool(s.tokens), s.last_used), default=None)
    if allow_copy and victim is not None and 0 < reuse < len(slot.tokens):
        # an empty slot always; an older one only when the prompt shares at most half of this
        # conversation (another user), not when it regenerates, edits or re-renders its own turn
        if not victim.tokens or (victim.last_used < slot.last_used and 2 * reuse <= len(slot.tokens)):
            # the best slot holds another conversation past the shared prefix: keep it cached, and
            # take an empty slot (else the least recently used one), borrowing the prefix
            slot, reuse = victim, 0
    if allow_copy:
        donors = [(cached(s, live=False), s) for s in slots if s is not slot]
        best = max(donors, key=lambda d: d[0], default=(0, None))
        if best[1] is not None and best[0] > reuse:
            return Placement(slot, reuse, best[1], best[0])
    return Placement(slot, reuse)


def used_cells(slots: Sequence[Slot]) -> int:
    """KV cells the slots hold (an estimate when copied prefixes outlive their donor; llama.cpp's
    "no KV slot" answer is the backstop)."""
    return sum(s.own_cells for s in slots)


def idle_caches_to_drop(
    slots: Sequence[Slot], keep: Slot, need: int, free: int, also_keep: Slot | None = None
) -> list[Slot] | None:
    """Idle slots whose caches to drop (least recently used first) so ``need`` cells fit in ``free``;
    None when even dropping every idle cache is not enough (the request must wait)."""
    if need <= free:
        return []
    chosen: list[Slot] = []
    idle = [s for s in slots if not s.busy and s is not keep and s is not also_keep and s.tokens]
    for s in sorted(idle, key=lambda s: s.last_used):
        chosen.append(s)
        free += s.own_cells
        if need <= free:
            return chosen
    return None
