"""``quantize --target-size`` / ``--target-bpw``: the best per-tensor mix that fits, end to end.

The steps (each in its own module) are:

1. The importance matrix, from :mod:`edge_qwen.imatrix` (computed once and kept beside the model).
2. Each tensor's options, from :func:`edge_qwen.quant_mix.measure`.
3. One mix per proxy weighting, from :func:`~edge_qwen.quant_mix.choose`.
4. Each distinct mix is quantized and scored by KL on the search's calibration text (the importance
   matrix's text). The least-KL file is kept.
5. If llama.cpp's file came out larger than the target, the budget shrinks by the excess and the
   mix is chosen again, so the result never exceeds the target.
6. The quality report (:mod:`edge_qwen.quality`) is computed on the held-out text and written into
   the manifest, with the mix, the calibration and what the search tried.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import quant_mix
from .errors import QuantizeError
from .imatrix import calibration_text, ensure_imatrix
from .logits import token_logits, tokenize
from .manifest import update_manifest
from .quality import compare_logits, evaluate_quality
from .quantize import QuantizeResult, check_quantizable, quantize

MIX_KEY = "edge_qwen.quant_mix"  # in the GGUF: what the mix is (``info`` shows it)
SEARCH_TOKENS = 512  # calibration tokens each candidate mix is scored on
BASE = "q8_0"  # the ftype handed to llama.cpp; every searched tensor is overridden


@dataclass(frozen=True)
class SearchResult:
    result: QuantizeResult
    mix: quant_mix.Mix
    tried: list[dict[str, Any]]
    quality: dict[str, Any]
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.result.as_dict(), "mix": self.mix.counts(), "weighting": self.mix.weighting,
            "tried": self.tried, "quality": self.quality, "search_s": round(self.elapsed_s, 1),
        }  # fmt: skip


def target_bytes(model: str | os.PathLike[str], size: int | None, bpw: float | None) -> int:
    """The byte target from ``--target-size`` or ``--target-bpw`` (bits per weight of the model)."""
    if (size is None) == (bpw is None):
        raise QuantizeError("give one target: --target-size SIZE or --target-bpw BITS")
    if size is not None:
        return size
    return int(quant_mix.model_params(model) * float(bpw or 0) / 8)


def search(
    model: str | os.PathLike[str],
    target: int,
    out_path: str | os.PathLike[str] | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    quiet: bool = False,
    measured: tuple[list[quant_mix.TensorStats], int] | None = None,
) -> SearchResult:
    """Quantize ``model`` (F16/BF16/F32) into the least-KL mix of at most ``target`` bytes.
    ``measured``: :func:`quant_mix.measure`'s answer for this model and imatrix, when already known
    (several targets for one model)."""
    started = time.perf_counter()
    src = Path(model)
    check_quantizable(src, "a searched mix")  # before minutes of work: a projector, a quantized input
    say = _say(quiet)
    say("importance matrix …")
    im_path, matrix, reused = ensure_imatrix(src, threads=threads)
    weights = matrix.quantizer_input()
    if measured is None:
        say(f"measuring each tensor's error for {len(quant_mix.CANDIDATES)} types …")
        measured = quant_mix.measure(src, weights)
    stats, fixed = measured
    final = Path(out_path) if out_path else Path(out_dir or src.parent) / quant_mix.output_name(src, target)
    final.parent.mkdir(parents=True, exist_ok=True)
    tokens = tokenize(src, calibration_text())[:SEARCH_TOKENS]
    reference = token_logits(src, tokens, threads=threads)
    source = {"path": str(im_path), "chunks": matrix.chunks, "dataset": matrix.dataset, "reused": reused}
    budget = quant_mix.weights_budget(target, fixed, len(stats))
    tried: list[dict[str, Any]] = []
    for _attempt in range(3):
        mixes = _distinct(stats, budget)
        best: tuple[float, quant_mix.Mix] | None = None
        for mix in mixes:
            fd, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".trial", dir=final.parent)
            os.close(fd)
            trial = Path(name)
            try:
                quantize(src, BASE, trial, quiet=True, threads=threads, imatrix=weights,
                         overrides=quant_mix.tensor_overrides(mix),
                         metadata={MIX_KEY: describe(mix)})  # fmt: skip  # the final file's bytes
                size = trial.stat().st_size
                kl = compare_logits(reference, token_logits(trial, tokens, threads=threads), tokens)[
                    "mean_kl"
                ]
            finally:
                trial.unlink(missing_ok=True)
                Path(f"{trial}.json").unlink(missing_ok=True)
            tried.append({"weighting": mix.weighting, "bytes": size, "search_kl": kl, "mix": mix.counts()})
            say(f"  {mix.weighting}: {size / 2**20:.1f} MiB, KL {kl:.5f} on the search text")
            if size <= target and (best is None or kl < best[0]):
                best = (kl, mix)
        if best is not None:
            break
        over = min(t["bytes"] for t in tried[-len(mixes) :]) - target
        budget -= over + 4096  # llama.cpp wrote more than predicted: ask for that much less
    else:
        raise QuantizeError(f"no mix of {src.name} came out within {target} bytes; give a larger target")
    mix = best[1]
    result = quantize(
        src, BASE, final, quiet=quiet, threads=threads, imatrix=weights, imatrix_source=source, label="MIX",
        metadata={MIX_KEY: describe(mix)},
        overrides=quant_mix.tensor_overrides(mix),
        extra_manifest={
            "mix": {"types": mix.types, "counts": mix.counts(), "weighting": mix.weighting,
                    "target_bytes": target, "predicted_loss": mix.loss},
            "search": {"tried": tried, "calibration": "imatrix_calibration.txt", "tokens": len(tokens)},
        },
    )  # fmt: skip
    if result.size > target:  # the trial of this very mix fitted; never hand out a larger file
        result.path.unlink()
        result.manifest_path.unlink(missing_ok=True)
        raise QuantizeError(f"the mix came out at {result.size} bytes, over the {target} asked for")
    say("quality on the held-out text …")
    quality = evaluate_quality(src, [result.path], threads=threads)[0].as_dict()
    update_manifest(result.path, quality=quality)
    return SearchResult(result, mix, tried, quality, time.perf_counter() - started)


def describe(mix: quant_mix.Mix) -> str:
    """One line for the GGUF and ``info``: ``searched per-tensor mix: Q5_0 x133, Q6_K x12``."""
    return ("searched per-tensor mix: " + ", ".join(f"{t} x{n}" for t, n in mix.counts().items()))[:127]


def _distinct(stats: list[quant_mix.TensorStats], budget: int) -> list[quant_mix.Mix]:
    try:
        mixes = [quant_mix.choose(stats, budget, w, label) for label, w in quant_mix.WEIGHTINGS]
    except ValueError as exc:
        raise QuantizeError(f"{exc}: the target is too small for this model; give a larger one") from exc
    seen: dict[tuple[tuple[str, str], ...], quant_mix.Mix] = {}
    for mix in mixes:
        seen.setdefault(tuple(mix.types.items()), mix)
    return list(seen.values())


def _say(quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return say
