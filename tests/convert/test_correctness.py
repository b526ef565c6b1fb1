"""The converter computes the same model: llama.cpp's logits on the converted GGUF against an
independent float64 numpy forward pass (tests/numpy_reference.py) of the Hugging Face checkpoint.

Every architecture, tied and untied heads, BF16/F16/F32 sources, sharded checkpoints, F32 and F16
GGUFs. Tolerances are relative to the largest reference logit:

* F32 GGUF: 1e-4 (observed ~5e-7: only float32 vs float64 rounding differs, the reference reads
  the very same stored values);
* F16 GGUF: 1e-2 (observed ~1e-3: every weight is rounded to half precision).

The greedy (top-1) token must agree at every position in both cases.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy_reference import reference_logits, router_margins

from edge_qwen.convert import convert
from edge_qwen.errors import CheckpointError
from edge_qwen.logits import token_logits

pytestmark = [pytest.mark.real, pytest.mark.slow]

F32_TOLERANCE = 1e-4
F16_TOLERANCE = 1e-2


def converted(checkpoint: Path, outtype: str, tmp_path: Path) -> Path:
    result = convert(checkpoint, tmp_path / "out", outtype=outtype, quants=[], evaluate=False, quiet=True)
    assert result.gguf.is_file()
    return result.gguf


def assert_same_logits(checkpoint: Path, gguf: Path, tokens: list[int], tolerance: float) -> None:
    expected = reference_logits(checkpoint, tokens)
    actual = token_logits(gguf, tokens, threads=2)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    error = np.abs(actual - expected).max()
    worst = tuple(int(i) for i in np.unravel_index(np.abs(actual - expected).argmax(), actual.shape))
    assert error <= tolerance * scale, (
        f"max |llama.cpp - reference| = {error:.3g} at (position, token) {worst}, "
        f"allowed {tolerance:g} x max |logit| {scale:.3g}"
    )
    mismatched = np.flatnonzero(actual.argmax(axis=1) != expected.argmax(axis=1))
    assert mismatched.size == 0, f"greedy token differs at positions {mismatched.tolist()}"


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "qwen3moe", "qwen2moe"])
def test_f32_gguf_matches_reference(arch: str, tiny_checkpoint, tokens: list[int], tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(arch, dtype="f32")
    assert_same_logits(checkpoint, converted(checkpoint, "f32", tmp_path), tokens, F32_TOLERANCE)


@pytest.mark.parametrize(
    ("arch", "dtype", "shards", "tied"),
    [
        ("qwen2", "bf16", 1, False),  # separate lm_head.weight
        ("qwen3", "bf16", 3, True),  # sharded, tied, head_dim != hidden / heads
        ("qwen2moe", "bf16", 2, None),  # shared expert behind its sigmoid gate
        ("qwen2", "f16", 1, None),  # half-precision source
    ],
)
def test_source_layouts_convert_exactly(
    arch: str, dtype: str, shards: int, tied: bool | None, tiny_checkpoint, tokens: list[int], tmp_path: Path
) -> None:
    checkpoint = tiny_checkpoint(arch, dtype=dtype, shards=shards, tied=tied)
    assert_same_logits(checkpoint, converted(checkpoint, "f32", tmp_path), tokens, F32_TOLERANCE)


@pytest.mark.parametrize("arch", ["qwen3", "qwen3moe"])
def test_f16_gguf_stays_close(arch: str, tiny_checkpoint, tokens: list[int], tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(arch, dtype="bf16")
    assert_same_logits(checkpoint, converted(checkpoint, "f16", tmp_path), tokens, F16_TOLERANCE)


def test_moe_routing_is_not_decided_by_rounding(tiny_checkpoint, tokens: list[int]) -> None:
    """The MoE comparisons above are meaningful: no token sits on a top-k tie that float32 could flip."""
    for arch in ("qwen3moe", "qwen2moe"):
        assert router_margins(tiny_checkpoint(arch, dtype="bf16"), tokens).min() > 1e-5


def test_reference_depends_on_every_block(tiny_checkpoint, tokens: list[int], tmp_path: Path) -> None:
    """Guard against a vacuous comparison: the tiny model's layers really change the logits."""
    checkpoint = tiny_checkpoint("qwen2", dtype="f32")
    full = reference_logits(checkpoint, tokens)
    shallow = tmp_path / "shallow"
    shutil.copytree(checkpoint, shallow)
    config = json.loads((shallow / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (shallow / "config.json").write_text(json.dumps(config))
    assert np.abs(reference_logits(shallow, tokens) - full).max() > 0.1 * np.abs(full).max()


def test_moe_config_without_norm_topk_prob_is_not_silently_misread(
    tiny_checkpoint, tokens: list[int], tmp_path: Path
) -> None:
    """transformers reads a missing ``norm_topk_prob`` as False for Qwen3-MoE and Qwen2-MoE alike.

    llama.cpp's qwen3moe graph always renormalizes, so such a checkpoint must either be refused or
    (if a converter could express it) convert to the same logits; never convert to a different model.
    """
    checkpoint = tmp_path / "no-norm-key"
    shutil.copytree(tiny_checkpoint("qwen3moe", dtype="f32"), checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    del config["norm_topk_prob"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    try:
        gguf = converted(checkpoint, "f32", tmp_path)
    except CheckpointError as refused:
        assert "norm_topk_prob" in str(refused)
        return
    assert_same_logits(checkpoint, gguf, tokens, F32_TOLERANCE)
