"""Model choice as code: the most capable registry model and quant that fits, with the reasoning.

The rules (the seed's model-selection guide):

1. Only models that do the task (``tasks`` in models.yaml) and whose context reaches ``n_ctx``
   (native, or with YaRN where the card offers it) are candidates; only quants with a GGUF listed,
   or for a current-generation entry listed by checkpoint, the quant ``pull`` converts it to.
2. A candidate fits when the memory estimate at ``n_ctx`` is within the budget.
3. When the target's speed is known (a device profile, or this machine), a candidate must also be
   usable: its estimated decode speed (:mod:`edge_qwen.sizing.speed`) reaches the task's floor
   (:data:`SPEED_FLOORS`, or ``min_tok_s``). A model that fits but would answer at 1 tok/s is no
   recommendation; when nothing reaches the floor, the fastest that fits is chosen, and said so.
4. Among those, the current generation (:data:`CURRENT`: Qwen3.5, Qwen3-VL) first — what users
   pick today, and a newer model of the same size answers better — then more capability:
   effective parameters — a dense model's
   parameters, a MoE's geometric mean of total and active (a common rule of thumb for the dense
   size it performs like: Qwen3-30B-A3B ≈ 10B) — so a bigger model at 4 bits beats a smaller one
   at 8 bits; then the task specialist (Coder for code, Math for math); then the newer family;
   then the higher-precision quant of the same model.

The estimator and the speed model are passed in (``fit.Estimator``, a ``Throughput``), so the
selection is testable with a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ModelTooLargeError
from ..sizing.speed import Throughput
from .catalog import ModelEntry, Registry
from .fit import Estimator, bits_per_weight, token_cost

GENERATION = {
    "qwen2.5": 2.5, "qwen2.5-coder": 2.5, "qwen2.5-math": 2.5, "qwen3": 3.0, "qwen3-vl": 3.0, "qwen3.5": 3.5,
}  # fmt: skip
# Families of the current generation: preferred to older ones whenever one fits (rule 4).
CURRENT = frozenset({"qwen3.5", "qwen3-vl"})
# decode tok/s below which a model is not worth recommending for the task (reasoning writes long
# chains of thought before its answer, so it needs more; maths answers are short)
SPEED_FLOORS: dict[str | None, float] = {
    None: 5.0, "chat": 5.0, "code": 5.0, "multilingual": 5.0, "math": 3.0, "reasoning": 8.0,
}


def effective_params(entry: ModelEntry) -> float:
    if entry.params_active is None:
        return float(entry.params_total)
    return math.sqrt(entry.params_total * entry.params_active)


def _specialist(entry: ModelEntry, task: str | None) -> bool:
    return task is not None and entry.tasks == (task,)


@dataclass(frozen=True)
class Candidate:
    name: str
    quant: str
    estimate_bytes: int
    fits: bool
    entry: ModelEntry
    decode_tok_s: float | None = None  # estimated, on the target (None: speed not judged)
    prefill_tok_s: float | None = None

    def key(self, task: str | None) -> tuple[bool, float, bool, float, float]:
        return (
            self.entry.family in CURRENT,
            effective_params(self.entry),
            _specialist(self.entry, task),
            GENERATION.get(self.entry.family, 0.0),
            bits_per_weight(self.quant),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "quant": self.quant,
            "spec": f"{self.name}:{self.quant}",
            "estimate_bytes": self.estimate_bytes,
            "fits": self.fits,
            "effective_params": int(effective_params(self.entry)),
            "license": self.entry.license,
            "decode_tok_s": None if self.decode_tok_s is None else round(self.decode_tok_s, 1),
            "prefill_tok_s": None if self.prefill_tok_s is None else round(self.prefill_tok_s, 1),
        }


def candidates(
    registry: Registry,
    estimate: Estimator,
    budget: int,
    task: str | None,
    n_ctx: int,
    speed: Throughput | None = None,
) -> list[Candidate]:
    out = []
    for entry in registry:
        if task is not None and task not in entry.tasks:
            continue
        if n_ctx > (entry.max_context or entry.native_context):
            continue
        for quant in entry.gguf or _convertible(entry):
            need = estimate(entry, quant, n_ctx)
            decode = prefill = None
            if speed is not None:
                read, flops = token_cost(entry, quant)
                decode, prefill = speed.decode_tok_s(read, flops), speed.prefill_tok_s(flops)
            out.append(Candidate(entry.name, quant, need, need <= budget, entry, decode, prefill))
    return out


def _convertible(entry: ModelEntry) -> tuple[str, ...]:
    """A current-generation entry listed by its checkpoint alone (no GGUF whose hash could be
    confirmed): the quant ``pull`` converts it to. Older entries without a GGUF stay out, as before."""
    from .store import CHECKPOINT_QUANT

    return (CHECKPOINT_QUANT,) if entry.hf_checkpoint and entry.family in CURRENT else ()


def recommend(
    registry: Registry,
    estimate: Estimator,
    budget: int,
    *,
    task: str | None = None,
    n_ctx: int = 4096,
    target: str = "",
    speed: Throughput | None = None,
    min_tok_s: float | None = None,
) -> dict[str, Any]:
    """The best fitting (and, with ``speed``, usable) candidate, the runner-up and why."""
    found = candidates(registry, estimate, budget, task, n_ctx, speed)
    floor = SPEED_FLOORS.get(task, SPEED_FLOORS[None]) if min_tok_s is None else min_tok_s
    fits = [c for c in found if c.fits]
    usable = [c for c in fits if c.decode_tok_s is None or c.decode_tok_s >= floor]
    fitting = sorted(usable, key=lambda c: c.key(task), reverse=True)
    too_slow = not fitting and bool(fits)
    if too_slow:  # nothing reaches the floor: the fastest that fits, and the reasons say so
        fitting = sorted(fits, key=lambda c: (c.decode_tok_s or 0.0, c.key(task)), reverse=True)
    if not fitting:
        smallest = min(found, key=lambda c: c.estimate_bytes, default=None)
        need = (
            f"; the smallest, {smallest.name}:{smallest.quant}, needs {_gb(smallest.estimate_bytes)}"
            if smallest
            else ""
        )
        raise ModelTooLargeError(
            f"no {task or 'registry'} model fits {_gb(budget)} at a {n_ctx}-token context{need}. "
            "Lower --ctx, raise --budget, or pick a larger --device."
        )
    best = fitting[0]
    runner = next((c for c in fitting[1:] if c.name != best.name), None)
    bigger = sorted(
        (c for c in found if not c.fits and c.key(task) > best.key(task)), key=lambda c: c.estimate_bytes
    )
    slower = sorted(
        (c for c in fits if c not in usable and c.key(task) > best.key(task)),
        key=lambda c: c.key(task),
        reverse=True,
    )
    judged = speed is not None and not too_slow
    reasons = _reasons(best, runner, bigger[0] if bigger else None, budget, task, judged)
    reasons += _speed_reasons(best, slower[0] if slower else None, floor, too_slow, speed)
    return {
        "target": target,
        "budget_bytes": budget,
        "task": task,
        "n_ctx": n_ctx,
        "min_tok_s": floor if speed is not None else None,
        "speed_basis": speed.basis if speed is not None else None,
        "choice": best.to_dict(),
        "runner_up": runner.to_dict() if runner else None,
        "next_larger": bigger[0].to_dict() if bigger else None,
        "reasons": reasons,
        "fitting": len(fitting),
        "considered": len(found),
    }


def _speed_reasons(
    best: Candidate, slower: Candidate | None, floor: float, too_slow: bool, speed: Throughput | None
) -> list[str]:
    if speed is None or best.decode_tok_s is None:
        return []
    out = [
        f"estimated speed there: ~{best.decode_tok_s:.1f} tok/s decode, ~{best.prefill_tok_s or 0:.0f} tok/s "
        f"prompt ({speed.basis})"
    ]
    if too_slow:
        out.append(f"nothing that fits reaches {floor:g} tok/s: this is the fastest that fits")
    elif slower is not None and slower.decode_tok_s is not None:
        out.append(
            f"{slower.name}:{slower.quant} also fits but would decode at ~{slower.decode_tok_s:.1f} tok/s, "
            f"under the {floor:g} tok/s floor (--min-speed changes it)"
        )
    return out


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _reasons(
    best: Candidate,
    runner: Candidate | None,
    bigger: Candidate | None,
    budget: int,
    task: str | None,
    speed_judged: bool = False,
) -> list[str]:
    e = best.entry
    size = (
        f"{effective_params(e) / 1e9:.1f}B effective parameters"
        if e.is_moe
        else f"{e.params_total / 1e9:.1f}B parameters"
    )
    out = [
        f"{best.name}:{best.quant} needs ~{_gb(best.estimate_bytes)} of {_gb(budget)} "
        f"({_gb(budget - best.estimate_bytes)} to spare); {size}, the most capable that fits"
        + (" at a usable speed" if speed_judged else "")
        + (f" for {task}" if task else "")
    ]
    if e.family in CURRENT:
        out.append(f"{e.family} is the current Qwen generation: preferred to older families that fit")
    if runner is not None:
        why = "fewer effective parameters"
        if e.family in CURRENT and runner.entry.family not in CURRENT:
            why = "an older generation"
        elif effective_params(runner.entry) == effective_params(e):
            why = (
                "same size, but not the task specialist"
                if _specialist(e, task)
                else "same size, older family or coarser quant"
            )
        out.append(f"runner-up {runner.name}:{runner.quant} (~{_gb(runner.estimate_bytes)}): {why}")
    if bigger is not None:
        out.append(
            f"next larger: {bigger.name}:{bigger.quant} needs ~{_gb(bigger.estimate_bytes)}, over budget"
        )
    if e.license != "apache-2.0":
        out.append(f"licence: {e.license} (not Apache-2.0); check its terms before shipping it")
    return out
