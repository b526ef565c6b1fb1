"""How much did quantization hurt? Compare next-token distributions against a reference GGUF.

Why these numbers: top-1 agreement says how often greedy decoding would pick the same token;
the KL divergence KL(reference || candidate) measures how far the whole distribution moved
(llama.cpp's ``llama-perplexity --kl-divergence`` reports the same pair). Perplexity of each model
on the text is reported too, since it is free once the log-probabilities exist.

The text is ``edge_qwen/data/calibration.txt`` (English, Chinese, Malay, code, maths; ~560 tokens
with the Qwen tokenizer), tokenized by the *reference* model's own llama.cpp tokenizer, so every
model sees the same token ids. Logits come from :func:`edge_qwen.logits.token_logits`.

Reference points (0.5B Qwen, llama.cpp tools): Q8_0 ≈ 98–99 % top-1, Q4_K_M ≈ 95 %. Measured with
this module on the real Qwen2.5-Coder-0.5B Q4_K_M file re-quantized (so against a Q4_K_M
reference): Q8_0 98.2 % / KL 0.0015, Q6_K 97.7 % / 0.0019, Q4_K_M 95.4 % / 0.0064, Q4_0 84.2 % / 0.115.

``QualityResult.as_dict()`` keys (stable; also stored under ``"quality"`` in output manifests)::

    path                  str    candidate GGUF path
    reference             str    reference GGUF path
    label                 str    quant type from the candidate's manifest, else its file name
    size                  int    candidate file size, bytes
    n_tokens              int    tokens of text evaluated
    top1_pct              float  % of positions where both models' argmax agree
    mean_kl, p99_kl, max_kl      float  KL(reference || candidate) per position, nats
    perplexity            float  candidate's perplexity on the text
    reference_perplexity  float  reference's perplexity on the text
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._data import data_path
from .errors import GGUFFileError

DEFAULT_N_CTX = 1024
CALIBRATION_PATH = data_path("calibration.txt")
_CHUNK_ROWS = 64  # rows converted to float64 at a time: 64 x 151936 x 8 B ≈ 78 MB

PathLike = str | os.PathLike[str]


@dataclass
class QualityResult:
    """Quality of one candidate GGUF against the reference (fields: see module docstring)."""

    path: str
    reference: str
    label: str
    size: int
    n_tokens: int
    top1_pct: float
    mean_kl: float
    p99_kl: float
    max_kl: float
    perplexity: float
    reference_perplexity: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_text() -> str:
    """The built-in multilingual calibration text."""
    return CALIBRATION_PATH.read_text(encoding="utf-8")


# --- pure numpy metrics -------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class _Stats:
    """Per-position figures of one candidate, gathered chunk by chunk."""

    kl: np.ndarray
    same_top1: np.ndarray
    nll: np.ndarray  # candidate's -log p(next token), positions 0..n-2
    ref_nll: np.ndarray


def compare_logits(reference: np.ndarray, candidate: np.ndarray, tokens: Sequence[int]) -> dict[str, float]:
    """Top-1 agreement, KL(reference || candidate) and perplexities from two ``[n, vocab]`` arrays.

    Row ``i`` predicts ``tokens[i + 1]``; KL and top-1 use every row, perplexity the first n-1.
    """
    if reference.shape != candidate.shape:
        raise GGUFFileError(
            f"logit shapes differ ({reference.shape} vs {candidate.shape}): the models do not share a "
            "vocabulary; compare quantizations of the same model only"
        )
    stats = _stats(reference, candidate, np.asarray(tokens, dtype=np.int64))
    return _summary(stats)


def _stats(reference: np.ndarray, candidate: np.ndarray, tokens: np.ndarray) -> _Stats:
    n = reference.shape[0]
    kl, same, nll, ref_nll = [], [], [], []
    for start in range(0, n, _CHUNK_ROWS):
        rows = slice(start, min(n, start + _CHUNK_ROWS))
        lp_ref, lp_cand = log_softmax(reference[rows]), log_softmax(candidate[rows])
        kl.append((np.exp(lp_ref) * (lp_ref - lp_cand)).sum(axis=-1))
        same.append(lp_ref.argmax(axis=-1) == lp_cand.argmax(axis=-1))
        idx = np.arange(rows.start, rows.stop)
        keep = idx + 1 < n
        nxt = tokens[idx[keep] + 1]
        nll.append(-lp_cand[np.nonzero(keep)[0], nxt])
        ref_nll.append(-lp_ref[np.nonzero(keep)[0], nxt])
    return _Stats(np.concatenate(kl), np.concatenate(same), np.concatenate(nll), np.concatenate(ref_nll))


def _summary(s: _Stats) -> dict[str, float]:
    kl = np.maximum(s.kl, 0.0)  # rounding can make identical rows -1e-17
    return {
        "top1_pct": float(100.0 * s.same_top1.mean()),
        "mean_kl": float(kl.mean()),
        "p99_kl": float(np.percentile(kl, 99)),
        "max_kl": float(kl.max()),
        "perplexity": float(np.exp(s.nll.mean())) if s.nll.size else float("nan"),
        "reference_perplexity": float(np.exp(s.ref_nll.mean())) if s.ref_nll.size else float("nan"),
    }


# --- models -------------------------------------------------------------------------------------


def _label(path: Path) -> str:
    """Quant name from the manifest beside the file (see edge_qwen.quantize), else the file name."""
    manifest = path.with_name(path.name + ".json")
    try:
        quant = json.loads(manifest.read_text(encoding="utf-8")).get("quant_type")
    except (OSError, ValueError, AttributeError):
        quant = None
    return str(quant) if quant else path.name


def evaluate_quality(
    reference_gguf: PathLike,
    candidate_ggufs: PathLike | Iterable[PathLike],
    *,
    threads: int | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    text: str | None = None,
) -> list[QualityResult]:
    """Score each candidate against ``reference_gguf`` on ``text`` (default: the calibration text).

    The text is cut to ``n_ctx`` tokens. Models are loaded one at a time, so peak memory is one
    model plus two ``[tokens, vocab]`` float32 logit arrays.
    """
    from .logits import token_logits, tokenize

    ref = Path(reference_gguf)
    cands = (
        [Path(candidate_ggufs)]
        if isinstance(candidate_ggufs, (str, os.PathLike))
        else [Path(c) for c in candidate_ggufs]
    )
    tokens = tokenize(ref, calibration_text() if text is None else text)[:n_ctx]
    if len(tokens) < 2:
        raise ValueError("the evaluation text must be at least two tokens long; pass a longer text")
    ref_logits = token_logits(ref, tokens, n_ctx=len(tokens), threads=threads)
    results = []
    for cand in cands:
        # Recomputed even when cand is ref: comparing a file with itself checks determinism.
        cand_logits = token_logits(cand, tokens, n_ctx=len(tokens), threads=threads)
        figures = compare_logits(ref_logits, cand_logits, tokens)
        results.append(
            QualityResult(
                path=str(cand),
                reference=str(ref),
                label=_label(cand),
                size=cand.stat().st_size,
                n_tokens=len(tokens),
                **figures,
            )
        )
    return results


def format_table(results: Sequence[QualityResult]) -> str:
    """A plain-text table for humans, one row per candidate."""
    header = ("model", "size MiB", "top-1 %", "KL mean", "KL p99", "KL max", "PPL")
    rows = [
        (
            r.label,
            f"{r.size / 2**20:.1f}",
            f"{r.top1_pct:.2f}",
            f"{r.mean_kl:.5f}",
            f"{r.p99_kl:.4f}",
            f"{r.max_kl:.4f}",
            f"{r.perplexity:.3f}",
        )
        for r in results
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:  # first column left-aligned, numbers right-aligned
        aligned = [c.rjust(w) for c, w in zip(cells, widths, strict=True)]
        return "  ".join([cells[0].ljust(widths[0]), *aligned[1:]])

    lines = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    if results:
        r0 = results[0]
        lines.append(
            f"reference: {Path(r0.reference).name} (PPL {r0.reference_perplexity:.3f}), {r0.n_tokens} tokens"
        )
    return "\n".join(lines)
