"""Qwen3.5 checkpoints are natively multimodal (``Qwen3_5ForConditionalGeneration`` and
``Qwen3_5MoeForConditionalGeneration``): the hybrid language model becomes a ``qwen35`` or
``qwen35moe`` GGUF (its MTP head kept) and the vision tower, Qwen3-VL's without DeepStack, a
``qwen3vl_merger`` mmproj. llama.cpp's mtmd on the pair against the float64 references
(tests/numpy_reference_qwen3vl.py for the tower, tests/numpy_reference_hybrid.py for the Gated
DeltaNet + gated attention model with interleaved M-RoPE over the image's rows and columns).
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import numpy_reference_hybrid as hybrid_ref
import numpy_reference_qwen3vl as ref
import pytest
from _mtmd import decode_all, loaded, relative_error
from numpy_reference_vision import mrope_positions, token_embeddings

from edge_qwen.convert import convert
from edge_qwen.gguf_header import read_header

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from make_tiny_qwen3vl import make_qwen3vl_checkpoint, random_image  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]

WIDTH, HEIGHT = 128, 96  # 4 x 3 merged tokens
EMBD_TOLERANCE = 2e-3
# The language model alone (fed mtmd's own embeddings) matches to 1.3e-6; the image embeddings to
# 5.4e-4 (clip's tanh GELU, see test_vision.py), and the tiny hybrids carry that into the logits
# 6-10x: observed 3.5e-3 (Qwen3.5) and 5.8e-3 (Qwen3.5-MoE) for the pair.
LOGITS_TOLERANCE = 1e-2
LM_ONLY_TOLERANCE = 5e-5


@pytest.fixture(scope="module", params=["qwen35vl", "qwen35moevl"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen3vl_checkpoint(tmp_path_factory.mktemp(request.param) / "ck", request.param, "bf16")


@pytest.fixture(scope="module")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("q35vl-out")
    return convert(checkpoint, out, outtype="f32", evaluate=False, quiet=True).as_dict()


def test_pair_is_a_hybrid_with_its_head_and_a_projector_without_deepstack(converted: dict) -> None:
    lm, mm = read_header(converted["gguf"]), read_header(converted["mmproj"]["path"])
    assert lm.architecture in (
        gguf.MODEL_ARCH_NAMES[a] for a in (gguf.MODEL_ARCH.QWEN35, gguf.MODEL_ARCH.QWEN35MOE)
    )
    assert lm.arch_value(gguf.Keys.LLM.NEXTN_PREDICT_LAYERS) == 1  # the MTP head is kept
    assert list(lm.arch_value(gguf.Keys.Rope.DIMENSION_SECTIONS)) == [2, 1, 1, 0]
    assert mm.metadata[gguf.Keys.Clip.PROJECTOR_TYPE] == gguf.VisionProjectorType.QWEN3VL
    assert not any(mm.metadata[gguf.Keys.ClipVision.IS_DEEPSTACK_LAYERS])  # written, all False
    assert not any(t.name.startswith("v.deepstack") for t in mm.tensors)
    assert not any(t.name.startswith(("v.", "mm.")) for t in lm.tensors)


def test_image_then_text_logits_match_reference(checkpoint: Path, converted: dict) -> None:
    image = random_image(WIDTH, HEIGHT, seed=3)
    with loaded(converted["gguf"], converted["mmproj"]["path"]) as (model, ctx, mtmd):
        with mtmd.tokenize(f"Look: {mtmd.marker} what is it?", [image]) as chunks:
            before, img, after = chunks
            assert before.tokens[-1] == 248053 and after.tokens[0] == 248054  # Qwen3.5's vision start / end
            embd = mtmd.encode(img)
            n_past = mtmd.eval_chunk(ctx, before, 0)
            n_past = mtmd.eval_chunk(ctx, img, n_past)
            actual = decode_all(ctx, model, after.tokens, n_past)
    features = ref.image_features(checkpoint, image)
    assert features.deepstack == []
    assert embd.shape == features.embeddings.shape == (12, 64)
    error = relative_error(embd, features.embeddings)
    assert error <= EMBD_TOLERANCE, f"image embeddings: {error:.3g}"
    cols, rows = img.grid
    positions = mrope_positions(len(before.tokens), (rows, cols), len(after.tokens))
    text = [token_embeddings(checkpoint, list(c.tokens)) for c in (before, after)]

    def logits(image_rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        x = np.concatenate([text[0], image_rows, text[1]])
        return hybrid_ref.logits_from_embeddings(checkpoint, x, pos)[-len(after.tokens) :]

    lm_only = relative_error(actual, logits(embd.astype(np.float64), positions))
    assert lm_only <= LM_ONLY_TOLERANCE, f"language model alone: {lm_only:.3g}"
    expected = logits(features.embeddings, positions)
    error = relative_error(actual, expected)
    assert error <= LOGITS_TOLERANCE, f"max |llama.cpp - reference| / max |reference| = {error:.3g}"
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all()
    # the image and its 2-D positions matter to those logits (one attention layer in four reads the
    # positions, so they are checked against the language model alone, the sharper comparison)
    assert (
        relative_error(logits(np.zeros_like(embd, dtype=np.float64), positions), actual)
        > 20 * LOGITS_TOLERANCE
    )
    flat = np.tile(np.arange(positions.shape[1]), (3, 1))
    assert relative_error(logits(embd.astype(np.float64), flat), actual) > 20 * LM_ONLY_TOLERANCE


def test_mtp_only_writes_no_projector(checkpoint: Path, tmp_path: Path) -> None:
    result = convert(checkpoint, tmp_path, outtype="f32", evaluate=False, quiet=True, mtp="only").as_dict()
    assert result["mmproj"] is None and "-mtp-" in Path(result["gguf"]).name
    assert not list(tmp_path.glob("mmproj-*"))
