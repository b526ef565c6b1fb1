"""A host-memory prompt cache: K/V of caches the slots had to give up, kept for a later prompt.

A context has ``parallel`` slots, and each keeps the K/V of its last request, so a follow-up turn
or a shared system prompt is not computed again (:mod:`~edge_qwen.runtime.engine.slots`). With more
conversations than slots (a desktop app's chat, autocomplete and summaries; a server's clients)
a slot's cache is overwritten by another conversation and the next turn of the first one starts
from scratch. Before a slot's cache is cut or dropped, its sequence state
(``llama_state_seq_get_data``: its cells' K/V) is copied here, up to a byte budget, least recently
used first out; a new prompt whose longest cached prefix lives here rather than in a slot has it
written back into its slot (``llama_state_seq_set_data``) instead of prefilled. llama.cpp's
server does the same with its ``--cache-ram``.

Only text caches are kept (a span of image or audio cells is left out), each under the adapter set
its K/V were computed with. A hybrid model's entry keeps its slot's state checkpoints with it
(:mod:`.checkpoints`): it can be cut back only to one of them. Pure bookkeeping: the state bytes
come from the decoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..request import AdapterSet
from .checkpoints import Checkpoint, reusable_prefix
from .slots import common_prefix

MIN_TOKENS = 16  # fewer tokens are cheaper to prefill again than to keep


@dataclass
class SavedPrompt:
    """One sequence's cells, as llama.cpp wrote them, and the tokens they hold; on a hybrid model
    (``checkpoints`` not None) also the recurrent states it can be cut back to."""

    tokens: tuple[int, ...]
    key: AdapterSet
    state: bytes
    last_used: float = field(default_factory=time.monotonic)
    checkpoints: tuple[Checkpoint, ...] | None = None

    @property
    def size(self) -> int:
        return len(self.state) + sum(c.size for c in self.checkpoints or ())

    def reusable(self, n: int) -> int:
        """How many of its tokens a prompt sharing ``n`` of them can start from."""
        return n if self.checkpoints is None else reusable_prefix(n, len(self.tokens), self.checkpoints)

    def covers(self, tokens: tuple[int, ...]) -> bool:
        """Whether a prompt of exactly ``tokens`` could start from it with all of them."""
        n = len(tokens)
        return self.tokens[:n] == tokens and self.reusable(n) == n


@dataclass
class PromptCacheStats:
    saved: int = 0  # caches copied in
    restored: int = 0  # prompts that started from a saved cache
    restored_tokens: int = 0  # tokens those prompts did not prefill
    evicted: int = 0  # saved caches dropped for room


class PromptCache:
    """Saved sequence states under a byte budget (0: off)."""

    def __init__(
        self,
        budget_bytes: int,
        min_tokens: int = MIN_TOKENS,
        *,
        entries: Sequence[SavedPrompt] = (),
        on_save: Callable[[SavedPrompt], None] | None = None,
    ) -> None:
        """``entries`` start the cache (read back from disk); ``on_save`` sees each one kept (to write it)."""
        self.budget = max(0, int(budget_bytes))
        self.min_tokens = min_tokens
        self.entries: list[SavedPrompt] = list(entries)
        self.on_save = on_save
        self.stats = PromptCacheStats()

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    @property
    def used_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def holds(self, tokens: Sequence[int], key: AdapterSet) -> bool:
        """Whether a saved cache already covers ``tokens`` (they are a prefix of its tokens)."""
        wanted = tuple(tokens)
        return any(e.key == key and e.covers(wanted) for e in self.entries)

    def worth_saving(self, tokens: Sequence[int], key: AdapterSet) -> bool:
        """A text cache long enough to matter, and not already held."""
        if not self.enabled or len(tokens) < self.min_tokens or any(t < 0 for t in tokens):
            return False
        return not self.holds(tokens, key)

    def save(
        self,
        tokens: Sequence[int],
        key: AdapterSet,
        read_state: Callable[[], bytes | None],
        checkpoints: Sequence[Checkpoint] | None = None,
    ) -> bool:
        """Keep the state ``read_state`` returns for ``tokens`` (when worth it and it fits the budget),
        with a hybrid model's ``checkpoints``; saved caches it covers are replaced, the least
        recently used make room."""
        if not self.worth_saving(tokens, key):
            return False
        state = read_state()
        if not state:
            return False
        marks = None if checkpoints is None else tuple(checkpoints)
        entry = SavedPrompt(tuple(tokens), key, state, checkpoints=marks)
        if entry.size > self.budget:
            return False
        self.entries = [e for e in self.entries if not (e.key == key and entry.covers(e.tokens))]
        while self.entries and self.used_bytes + entry.size > self.budget:
            self.entries.remove(min(self.entries, key=lambda e: e.last_used))
            self.stats.evicted += 1
        self.entries.append(entry)
        self.stats.saved += 1
        if self.on_save is not None:
            self.on_save(entry)
        return True

    def best(self, prompt: Sequence[int], key: AdapterSet, limit: int) -> tuple[SavedPrompt | None, int]:
        """The saved cache sharing the longest prefix with ``prompt`` (at most ``limit`` tokens), and
        that length; (None, 0) when none shares any."""
        best: SavedPrompt | None = None
        n_best = 0
        for entry in self.entries:
            if entry.key != key:
                continue
            n = entry.reusable(min(common_prefix(entry.tokens, prompt), limit))
            if n > n_best:
                best, n_best = entry, n
        return best, n_best

    def used(self, entry: SavedPrompt, n_tokens: int) -> None:
        entry.last_used = time.monotonic()
        self.stats.restored += 1
        self.stats.restored_tokens += n_tokens

    def forget(self, adapter: str | None = None) -> None:
        """Drop every saved cache (only those computed with ``adapter``, when given)."""
        if adapter is None:
            self.entries.clear()
        else:
            self.entries = [e for e in self.entries if all(n != adapter for n, _ in e.key)]
