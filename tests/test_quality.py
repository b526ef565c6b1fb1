"""The quality report: how far a quantized GGUF's next-token distributions drift from a reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_qwen.errors import GGUFFileError
from edge_qwen.logits import tokenize
from edge_qwen.manifest import read_manifest, update_manifest
from edge_qwen.quality import (
    QualityResult,
    calibration_text,
    compare_logits,
    evaluate_quality,
    format_table,
    log_softmax,
)
from edge_qwen.quantize import quantize

# --- the metrics on small arrays ----------------------------------------------------------------


def test_identical_logits_agree_fully_with_zero_kl() -> None:
    logits = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    m = compare_logits(logits, logits.copy(), [0, 1, 2, 3, 4])
    assert m["top1_pct"] == 100.0
    assert m["mean_kl"] == m["max_kl"] == 0.0
    assert m["perplexity"] == m["reference_perplexity"]


def test_kl_and_top1_on_a_two_token_vocabulary() -> None:
    p = np.log(np.array([[0.9, 0.1], [0.5, 0.5]], dtype=np.float32))
    q = np.log(np.array([[0.6, 0.4], [0.2, 0.8]], dtype=np.float32))
    m = compare_logits(p, q, [0, 1])
    kl_row0 = 0.9 * np.log(0.9 / 0.6) + 0.1 * np.log(0.1 / 0.4)
    kl_row1 = 0.5 * np.log(0.5 / 0.2) + 0.5 * np.log(0.5 / 0.8)
    assert m["mean_kl"] == pytest.approx((kl_row0 + kl_row1) / 2, rel=1e-6)
    assert m["max_kl"] == pytest.approx(max(kl_row0, kl_row1), rel=1e-6)
    assert m["top1_pct"] == 50.0  # row 0 agrees (token 0); row 1 is a tie -> argmax 0 vs 1
    assert m["perplexity"] == pytest.approx(1 / 0.4, rel=1e-6)  # row 0 predicts token 1


def test_log_softmax_is_stable_for_huge_logits() -> None:
    lp = log_softmax(np.array([[1e4, 1e4 - 1.0, -1e4]], dtype=np.float32))
    assert np.isfinite(lp).all()
    assert np.exp(lp).sum() == pytest.approx(1.0)


def test_calibration_text_mixes_languages_code_and_maths(real_gguf: Path) -> None:
    text = calibration_text()
    for sample in ("harbour", "机器学习", "Selamat pagi", "def merge_sorted", "3x + 7 = 22", "SELECT"):
        assert sample in text
    assert 400 <= len(tokenize(real_gguf, text)) <= 650


# --- the real model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(real_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[QualityResult]]:
    """Real Q4_K_M file vs itself and vs its Q4_0 re-quantization, in one evaluation.

    The first 256 calibration tokens keep the three forward passes short on a small machine.
    """
    out_dir = tmp_path_factory.mktemp("q4_0")
    q4_0 = quantize(real_gguf, "q4_0", out_dir=out_dir, threads=2, allow_requantize=True, quiet=True)
    yield evaluate_quality(real_gguf, [real_gguf, q4_0.path], threads=2, n_ctx=256)
    q4_0.path.unlink()


def test_a_model_against_itself_is_identical(report: list[QualityResult]) -> None:
    same = report[0]
    assert same.top1_pct == 100.0
    assert same.mean_kl == pytest.approx(0.0, abs=1e-6)
    assert same.perplexity == pytest.approx(same.reference_perplexity)
    assert same.n_tokens == 256


def test_requantizing_to_q4_0_costs_some_agreement(report: list[QualityResult]) -> None:
    q4 = report[1]
    assert q4.label == "Q4_0"  # read from the manifest beside the file
    assert 50.0 < q4.top1_pct < 99.9
    assert 0.001 < q4.mean_kl < 1.0
    assert q4.mean_kl <= q4.p99_kl <= q4.max_kl
    assert q4.perplexity > q4.reference_perplexity * 0.95  # re-quantizing does not make it better


def test_quality_goes_into_the_manifest_and_the_table(report: list[QualityResult]) -> None:
    q4 = report[1]
    update_manifest(q4.path, quality=q4.as_dict())
    quality = read_manifest(q4.path).quality
    assert quality is not None and quality["top1_pct"] == q4.top1_pct
    table = format_table(report)
    assert "top-1 %" in table and "Q4_0" in table and f"{q4.top1_pct:.2f}" in table


def test_models_with_different_vocabularies_cannot_be_compared() -> None:
    with pytest.raises(GGUFFileError, match="vocabulary"):
        compare_logits(np.zeros((3, 10), np.float32), np.zeros((3, 12), np.float32), [0, 1, 2])
