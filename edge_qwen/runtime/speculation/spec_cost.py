"""How many tokens a sequence should draft this step, from what a step costs on this machine.

Verifying ``k`` drafted tokens is not free everywhere: on a laptop CPU a batch of 9 tokens can cost
~5 one-token steps (the kernels turn compute-bound), while on a GPU it costs about one. So the step
loop measures itself. :class:`StepCost` fits ``time = a + b * tokens`` to its recent decode steps
(least squares with exponential forgetting, decode-sized batches only), and
:func:`best_draft_length` picks the ``k`` that maximises the expected tokens per unit of time:

* a sequence whose drafted tokens are each accepted with probability ``alpha`` (estimated from its
  own history, :meth:`~edge_qwen.runtime.speculation.speculative.Drafter.acceptance`) emits on average
  ``E(k) = (1 - alpha**(k + 1)) / (1 - alpha)`` tokens per step (its own token included);
* the step costs ``c0 = a + b * n`` without the draft (``n``: the step's other tokens) and
  ``c0 + (b + d) * k`` with it, ``d`` being a draft model's cost per drafted position (0 for lookup);
* the gain is ``E(k) * c0 / (c0 + (b + d) * k)``; below ``MIN_GAIN`` the sequence does not draft.

Until the fit has seen enough steps of different sizes it answers with the caller's ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_GAIN = 1.03  # drafting must promise at least this speed-up, or the step goes without it
MAX_FIT_TOKENS = 64  # prefill-sized batches follow another curve: leave them out of the fit
FORGET = 0.97  # weight kept by older observations at each new one (~30 steps of memory)


@dataclass
class StepCost:
    """Online fit of a decode step's seconds against its batch tokens."""

    w: float = 0.0
    sn: float = 0.0
    st: float = 0.0
    snn: float = 0.0
    snt: float = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        if not 0 < tokens <= MAX_FIT_TOKENS or seconds <= 0:
            return
        f = FORGET
        self.w = self.w * f + 1
        self.sn = self.sn * f + tokens
        self.st = self.st * f + seconds
        self.snn = self.snn * f + tokens * tokens
        self.snt = self.snt * f + tokens * seconds

    def fit(self) -> tuple[float, float] | None:
        """``(a, b)`` in seconds, or None while the steps seen do not pin them down."""
        if self.w < 4:
            return None
        spread = self.w * self.snn - self.sn * self.sn
        if spread <= 0.5 * self.w * self.w:  # batch sizes barely vary yet: the slope is unknown
            return None
        b = (self.w * self.snt - self.sn * self.st) / spread
        a = (self.st - b * self.sn) / self.w
        if a <= 0:
            return None
        return a, max(0.0, b)


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a step emits on average with ``k`` drafted, each accepted with ``alpha``."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def best_draft_length(
    alpha: float, k_max: int, n_base: int, cost: StepCost | None, draft_cost: float = 0.0
) -> int:
    """The draft length in ``0..k_max`` with the best expected speed (``k_max`` while ``cost`` is
    unknown; 0 when no length gains ``MIN_GAIN``)."""
    fitted = cost.fit() if cost is not None else None
    if k_max <= 0 or fitted is None:
        return max(0, k_max)
    a, b = fitted
    c0 = a + b * max(1, n_base)
    best_k, best_gain = 0, MIN_GAIN
    for k in range(1, k_max + 1):
        gain = expected_tokens(alpha, k) * c0 / (c0 + (b + draft_cost) * k)
        if gain > best_gain:
            best_k, best_gain = k, gain
    return best_k
