"""Speculative decoding: draft tokens cheaply, verify them in the step's batch, keep what the target
model would have produced anyway.

Three drafters propose: prompt lookup (below), a draft model (:mod:`~edge_qwen.runtime.engine.draft`, a
smaller model with the same vocabulary proposing its greedy continuation) and the model's own MTP
head (:mod:`~edge_qwen.runtime.engine.mtp`, Qwen3.5 and Qwen3-Next). All drafts are deterministic
given the history (a point mass q), so the acceptance argument below holds for each.

Drafting (:class:`LookupDrafter`): the last ``n`` tokens of the sequence (prompt plus output so far)
are looked up among their earlier occurrences, and the up to ``k`` tokens that followed the latest
one are the draft. Code edits, quoting answers and JSON that echoes a schema repeat long runs of
their input, so the model's next tokens are often exactly those.

Verification (:func:`verify`): the batch carries ``[last token, d1..dk]`` with logits at every
position. The target's token at position j is drawn with the sequence's own sampler (argmax for
greedy, or the request's llama.cpp chain) and taken; if it equals ``d(j+1)`` the next position is
valid too, otherwise verification stops there. For a deterministic draft (a point mass q on ``d``)
this is exactly the speculative-sampling rule: the target's draw equals ``d`` with probability
``p(d)`` (the acceptance probability min(1, p/q)), and otherwise it is distributed as p with ``d`` removed and
renormalised (max(0, p − q) normalised). So every emitted token has the target's distribution; the
sampler chain (grammar, penalties, seeded RNG) advances once per emitted token, as without
speculation, and at temperature 0 the output is the non-speculative one.

Back-off: a sequence whose drafts miss drafts fewer tokens, then pauses drafting for a growing
number of steps, so text that does not repeat pays almost nothing.

Pure logic, no llama.cpp: the step loop (:mod:`~edge_qwen.runtime.engine.batcher`) does the batching and
the KV rollback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from ...errors import ConfigError

MODES = ("lookup", "draft", "mtp", "off")
DRAFT_K = 6  # draft-model default: each drafted token costs a draft decode, unlike a lookup
MTP_K = 3  # one MTP block predicts one token ahead; chained further its drafts fade


@dataclass(frozen=True)
class SpecConfig:
    """How one request speculates. ``n``: longest n-gram matched (shorter ones down to ``n_min`` are
    tried when it finds nothing); ``k``: most tokens drafted per step. ``max_pause``: the longest
    drafting pause (steps) after consecutive misses. ``p_min`` (draft model only): drafting stops
    before the first token the draft model gives less than this probability. ``adaptive``: draft
    only as many tokens as the measured step cost says will pay (:mod:`.spec_cost`); False drafts
    up to ``k`` whatever it costs."""

    mode: str = "lookup"
    n: int = 3
    n_min: int = 2
    k: int = 10
    max_pause: int = 32
    p_min: float = 0.6
    adaptive: bool = True

    @property
    def enabled(self) -> bool:
        return self.mode in ("lookup", "draft", "mtp")


LOOKUP = SpecConfig()
DRAFT = SpecConfig(mode="draft", k=DRAFT_K)
MTP = SpecConfig(mode="mtp", k=MTP_K)
OFF = SpecConfig(mode="off")


def spec_config(value: Any) -> SpecConfig | None:
    """A request's ``speculative=`` value: None (the model's default), ``"lookup"``/``"draft"``/
    ``"off"``, True/False (lookup/off), a dict of :class:`SpecConfig` fields, or a SpecConfig.

    Raises:
        ConfigError: an unknown mode or key, or sizes out of range.
    """
    if value is None or isinstance(value, SpecConfig):
        return value
    if isinstance(value, bool):
        return LOOKUP if value else OFF
    if isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"speculative= takes 'lookup', 'draft', 'mtp', 'off' or a dict like "
                          f"{{'mode': 'lookup', 'k': 8}}, not {type(value).__name__}")  # fmt: skip
    names = {f.name for f in fields(SpecConfig)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"unknown speculative option(s) {unknown}; known: {sorted(names)}")
    mode = value.get("mode", "lookup")
    if mode not in MODES:
        raise ConfigError(f"speculative mode {mode!r} is not one of {MODES}")
    config = replace({"draft": DRAFT, "mtp": MTP}.get(mode, LOOKUP), **value)
    if not (1 <= config.n_min <= config.n) or config.k < 1 or config.max_pause < 0:
        raise ConfigError(f"speculative sizes need 1 <= n_min <= n and k >= 1 (got n={config.n}, "
                          f"n_min={config.n_min}, k={config.k})")  # fmt: skip
    if not 0.0 <= config.p_min < 1.0:
        raise ConfigError(f"speculative p_min must be in [0, 1), got {config.p_min}")
    return config


class Drafter:
    """One sequence's drafting state: how many tokens to draft now (``k_now``), the pause after
    misses (:meth:`observe`), and the counts of drafted and accepted tokens. A draft-model
    sequence uses it as is (the engine asks the draft model); prompt lookup extends it."""

    def __init__(self, config: SpecConfig) -> None:
        self.config = config
        self.k_now = config.k
        self.pause = 0
        self._misses = 0
        self.drafted = 0
        self.accepted = 0
        self.rejections = 0  # drafts cut short by a token the model did not confirm

    def acceptance(self) -> float:
        """The chance that a drafted token is accepted, from this sequence's history (a geometric
        model: each draft runs until its first rejection). The prior: even for prompt lookup, 0.8
        for a draft model of the same family (they agree on most tokens)."""
        hits, misses = (4, 1) if self.uses_model else (1, 1)
        return (self.accepted + hits) / (self.accepted + self.rejections + hits + misses)

    @property
    def uses_model(self) -> bool:
        """Whether the engine's draft source (a draft model, or the MTP head) drafts for it."""
        return self.config.mode in ("draft", "mtp")

    def limit(self, room: int) -> int:
        """Tokens to draft this step, at most ``room`` (0 while paused)."""
        return 0 if self.pause > 0 else max(0, min(self.k_now, room))

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        """A draft from the sequence's own history ([] for a draft-model sequence: the engine drafts
        those together)."""
        return []

    def observe(self, drafted: int, accepted: int) -> None:
        """One step's outcome (``drafted == 0``: a step without a draft, which counts down a pause).

        A full hit doubles the draft length (up to ``k``); a partial one sizes the next draft to
        what was accepted plus one; a miss halves it and, from the second miss in a row, pauses
        drafting for 2, 4, 8 … steps (up to ``max_pause``)."""
        if drafted == 0:
            self.pause = max(0, self.pause - 1)
            return
        self.drafted += drafted
        self.accepted += accepted
        self.rejections += accepted < drafted
        if accepted == drafted:
            self.k_now = min(self.config.k, self.k_now * 2)
            self._misses = 0
        elif accepted > 0:
            self.k_now = max(1, min(self.config.k, accepted + 1))
            self._misses = 0
        else:
            self.k_now = max(1, self.k_now // 2)
            self._misses += 1
            if self._misses >= 2:
                self.pause = min(self.config.max_pause, 2 ** (self._misses - 1))


class LookupDrafter(Drafter):
    """Prompt-lookup drafts for one sequence.

    An index per n-gram size maps each n-gram to the position right after its latest occurrence;
    it is extended incrementally, so a step costs a dict lookup per size, not a scan.
    """

    def __init__(self, config: SpecConfig) -> None:
        super().__init__(config)
        self._sizes = range(config.n, config.n_min - 1, -1)
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self._sizes}
        self._seen = 0

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        """Up to ``min(k_now, limit)`` tokens that followed the latest earlier occurrence of the
        longest matching suffix of ``tokens``; [] while paused or when nothing matches."""
        if self.pause > 0 or limit <= 0:
            return []
        self._extend(tokens)
        for n in self._sizes:
            if len(tokens) <= n:
                continue
            at = self._index[n].get(tuple(tokens[-n:]))
            if at is not None:
                draft = list(tokens[at : at + min(self.k_now, limit)])
                cut = next((i for i, t in enumerate(draft) if t < 0), len(draft))  # media placeholders
                return draft[:cut]
        return []

    def _extend(self, tokens: Sequence[int]) -> None:
        for i in range(max(self._seen, 1), len(tokens)):
            for n in self._sizes:
                if i >= n:
                    self._index[n][tuple(tokens[i - n : i])] = i
        self._seen = len(tokens)


def make_drafter(config: SpecConfig | None) -> Drafter | None:
    """The drafter for a request's resolved config (None: no speculation)."""
    if config is None or not config.enabled:
        return None
    return LookupDrafter(config) if config.mode == "lookup" else Drafter(config)


def verify(draft: Sequence[int], sample: Callable[[int], int], take: Callable[[int], bool]) -> int:
    """Walk the verified positions: ``sample(j)`` is the target's token after ``d1..dj``, ``take``
    hands it to the sequence and says whether it goes on unchanged (False: it finished, or it now
    needs other tokens fed, like an injected ``</think>``). Returns how many drafted tokens stay in
    the KV cache: those that matched the target and were followed by another taken token."""
    for j in range(len(draft) + 1):
        token = sample(j)
        if not take(token) or j == len(draft) or token != draft[j]:
            return j
    return len(draft)  # pragma: no cover - the loop always returns
