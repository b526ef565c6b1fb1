"""Qwen3-VL (and Qwen3-VL-MoE, experts packed as the release stores them) converts to a ``qwen3vl``
(``qwen3vlmoe``) text GGUF + a ``qwen3vl_merger`` mmproj that compute the same model as
transformers: llama.cpp's mtmd on the converted pair, against an independent float64 numpy forward
pass (tests/numpy_reference_qwen3vl.py) of the checkpoint. Qwen3.5's vision tower (the same tower
without DeepStack, beside the hybrid language model) is checked in test_qwen35_vision.py.

What the comparisons cover: the learned position table resized to the image (a 4x4 table, a 12x8
patch grid), the fused qkv, the merger's norm before the shuffle, the DeepStack mergers (their
embeddings appended to each image token's, then added after the first two language-model layers),
and interleaved M-RoPE over the image's rows and columns (rope base 10 so a wrong position shows).
Tolerances and why they are not float32 rounding: see test_vision.py (clip's GELU is the tanh form
read from an F16 table where the merger's is erf-exact).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import numpy_reference_qwen3vl as ref
import pytest
from _mtmd import decode_all, image_embeddings, loaded, relative_error
from numpy_reference_vision import mrope_positions, token_embeddings

from edge_qwen.convert import convert
from edge_qwen.errors import CheckpointError
from edge_qwen.gguf_header import read_header
from edge_qwen.gguf_info import gguf_info

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from make_tiny_qwen3vl import make_qwen3vl_checkpoint, random_image  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]

WIDTH, HEIGHT = 192, 128  # multiples of patch x merge (32): 6 x 4 merged tokens, not resized
EMBD_TOLERANCE = 2e-3
LOGITS_TOLERANCE = 2e-3
LM_ONLY_TOLERANCE = 5e-4
N_EMBD = 64


@pytest.fixture(scope="module", params=["qwen3vl", "qwen3vlmoe"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen3vl_checkpoint(tmp_path_factory.mktemp(request.param) / "ck", request.param, "bf16")


@pytest.fixture(scope="module")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("q3vl-out")
    return convert(checkpoint, out, outtype="f32", evaluate=False, quiet=True).as_dict()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return random_image(WIDTH, HEIGHT)


def test_pair_carries_what_llama_cpp_reads(converted: dict) -> None:
    lm, mm = read_header(converted["gguf"]), read_header(converted["mmproj"]["path"])
    moe = (
        "Moe"
        in json.loads((Path(converted["source"]["path"]) / "config.json").read_text())["architectures"][0]
    )
    assert (
        lm.architecture
        == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3VLMOE if moe else gguf.MODEL_ARCH.QWEN3VL]
    )
    if moe:  # the packed experts as llama.cpp's stacks: [E, ff, hidden] gate/up, [E, hidden, ff] down
        shapes = {t.name: tuple(t.shape) for t in lm.tensors}
        assert shapes["blk.0.ffn_gate_exps.weight"] == shapes["blk.0.ffn_up_exps.weight"] == (64, 32, 8)
        assert shapes["blk.0.ffn_down_exps.weight"] == (32, 64, 8)
    assert list(lm.arch_value(gguf.Keys.Rope.DIMENSION_SECTIONS)) == [3, 3, 2, 0]
    assert lm.arch_value(gguf.Keys.LLM.NUM_DEEPSTACK_LAYERS) == 2
    assert lm.arch_value(gguf.Keys.Rope.FREQ_BASE) == 10.0
    meta = mm.metadata
    assert meta[gguf.Keys.Clip.PROJECTOR_TYPE] == gguf.VisionProjectorType.QWEN3VL
    assert list(meta[gguf.Keys.ClipVision.IS_DEEPSTACK_LAYERS]) == [True, True, False]
    assert meta[gguf.Keys.ClipVision.IMAGE_SIZE] == 64  # the 4x4 position grid x patch 16
    assert meta[gguf.Keys.ClipVision.PATCH_SIZE] == 16
    assert meta[gguf.Keys.ClipVision.USE_GELU] is True
    names = {t.name for t in mm.tensors}
    assert {
        "v.patch_embd.weight", "v.patch_embd.weight.1", "v.patch_embd.bias", "v.position_embd.weight",
        "v.blk.0.attn_qkv.weight", "v.post_ln.weight", "mm.0.weight", "mm.2.bias",
        "v.deepstack.0.norm.weight", "v.deepstack.1.fc2.bias",
    } <= names  # fmt: skip
    assert not any(n.startswith("v.deepstack.2") for n in names)
    assert not any(t.name.startswith(("v.", "mm.")) for t in lm.tensors)
    # `edge-qwen info` says what each file is
    assert gguf_info(converted["gguf"])["vision"] == {"mrope_sections": [3, 3, 2, 0], "deepstack_layers": 2}
    projector = gguf_info(converted["mmproj"]["path"])["projector"]
    assert projector["type"] == "qwen3vl_merger" and projector["deepstack_layers"] == 2
    assert (projector["blocks"], projector["width"], projector["projection_dim"]) == (3, 64, N_EMBD)


def test_image_embeddings_match_reference(checkpoint: Path, converted: dict, image: np.ndarray) -> None:
    features = ref.image_features(checkpoint, image)
    actual = image_embeddings(converted, image)
    expected = features.concatenated()
    assert actual.shape == expected.shape == (WIDTH // 32 * (HEIGHT // 32), 3 * N_EMBD)
    error = relative_error(actual, expected)
    assert error <= EMBD_TOLERANCE, f"max |mtmd - reference| / max |reference| = {error:.3g}"
    for j, part in enumerate(features.deepstack):  # each DeepStack block in its place
        got = actual[:, (j + 1) * N_EMBD : (j + 2) * N_EMBD]
        assert relative_error(got, part) <= EMBD_TOLERANCE


def test_position_table_is_really_resized(checkpoint: Path, image: np.ndarray) -> None:
    """Guard against a vacuous comparison: the 4x4 table read without resizing gives other embeddings."""
    cfg, w = ref.load_checkpoint(checkpoint)
    table = w["visual.pos_embed.weight"]
    nearest = np.repeat(np.repeat(table.reshape(4, 4, -1), 3, axis=1), 2, axis=0)[:8, :12]
    resized = ref.position_table(table, (8, 12), 2).reshape(4, 6, 2, 2, -1).transpose(0, 2, 1, 3, 4)
    assert relative_error(nearest, resized.reshape(8, 12, -1)) > 0.05
    assert np.allclose(resized.reshape(8, 12, -1)[0, 0], table[0]) and np.allclose(
        resized.reshape(8, 12, -1)[-1, -1], table[-1]
    )  # corners aligned


def test_logits_after_image_match_reference(checkpoint: Path, converted: dict, image: np.ndarray) -> None:
    """Text, the image, text: every logit of the last chunk, which attends to the image and, through
    the DeepStack additions, to the tower's middle blocks."""
    with loaded(converted["gguf"], converted["mmproj"]["path"]) as (model, ctx, mtmd):
        with mtmd.tokenize(f"Look: {mtmd.marker} what is it?", [image]) as chunks:
            before, img, after = chunks
            assert (before.kind, img.kind, after.kind) == ("text", "image", "text")
            assert before.tokens[-1] == 151652 and after.tokens[0] == 151653  # vision start / end
            embd = mtmd.encode(img)
            n_past = mtmd.eval_chunk(ctx, before, 0)
            n_past = mtmd.eval_chunk(ctx, img, n_past)
            actual = decode_all(ctx, model, after.tokens, n_past)
    cols, rows = img.grid
    n_before, n_img, n_after = len(before.tokens), img.n_tokens, len(after.tokens)
    positions = mrope_positions(n_before, (rows, cols), n_after)
    visual = np.arange(n_before, n_before + n_img)
    text_before = token_embeddings(checkpoint, list(before.tokens))
    text_after = token_embeddings(checkpoint, list(after.tokens))

    def logits(main: np.ndarray, deepstack: list[np.ndarray] | None) -> np.ndarray:
        x = np.concatenate([text_before, main, text_after])
        return ref.lm_logits(checkpoint, x, positions, deepstack, visual)[-n_after:]

    mt = embd.astype(np.float64)
    lm_only = relative_error(
        actual, logits(mt[:, :N_EMBD], [mt[:, N_EMBD : 2 * N_EMBD], mt[:, 2 * N_EMBD :]])
    )
    assert lm_only <= LM_ONLY_TOLERANCE, f"language model alone: {lm_only:.3g}"
    features = ref.image_features(checkpoint, image)
    expected = logits(features.embeddings, features.deepstack)
    error = relative_error(actual, expected)
    assert error <= LOGITS_TOLERANCE, f"max |llama.cpp - reference| / max |reference| = {error:.3g}"
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all()
    # the DeepStack additions and the image's 2-D positions matter to those logits
    assert relative_error(logits(features.embeddings, None), expected) > 20 * LOGITS_TOLERANCE
    x = np.concatenate([text_before, features.embeddings, text_after])
    flat = np.tile(np.arange(x.shape[0]), (3, 1))
    flat_logits = ref.lm_logits(checkpoint, x, flat, features.deepstack, visual)[-n_after:]
    assert relative_error(flat_logits, expected) > 20 * LOGITS_TOLERANCE


def test_transformers_5_layout_converts_to_the_same_files(converted: dict, tmp_path: Path) -> None:
    v5 = make_qwen3vl_checkpoint(tmp_path / "v5", "qwen3vl", "bf16", layout="v5")
    assert "rope_parameters" in json.loads((v5 / "config.json").read_text())["text_config"]
    result = convert(v5, tmp_path / "out", outtype="f32", evaluate=False, quiet=True).as_dict()
    for key in ("gguf",):
        a, b = read_header(converted[key]), read_header(result[key])
        for k in (
            gguf.Keys.Rope.FREQ_BASE,
            gguf.Keys.Rope.DIMENSION_SECTIONS,
            gguf.Keys.LLM.NUM_DEEPSTACK_LAYERS,
        ):
            assert a.arch_value(k) == b.arch_value(k)
    assert result["outputs"][0]["sha256"] != ""  # written
    a_mm, b_mm = read_header(converted["mmproj"]["path"]), read_header(result["mmproj"]["path"])
    assert [t.name for t in a_mm.tensors] == [t.name for t in b_mm.tensors]


def _edited(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copyfile(f, dst / f.name)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c: c["text_config"]["rope_scaling"].update(mrope_interleaved=False), "mrope_interleaved"),
        (lambda c: c["vision_config"].update(deepstack_visual_indexes=[1, 0]), "not increasing"),
        (lambda c: c["vision_config"].update(deepstack_visual_indexes=[0, 7]), "deepstack_visual_indexes"),
        (lambda c: c["vision_config"].update(num_position_embeddings=15), "square"),
        (lambda c: c["vision_config"].update(hidden_act="silu"), "hidden_act"),
        (lambda c: c["text_config"].pop("rope_theta"), "rope_theta"),
    ],
)
def test_layouts_llama_cpp_cannot_run_are_refused_before_writing(
    edit,
    words: str,
    checkpoint: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    folder = _edited(checkpoint, tmp_path / "ckpt", edit)
    with pytest.raises(CheckpointError, match=words):
        convert(folder, tmp_path / "out", quiet=True)
    assert not list((tmp_path / "out").glob("*.gguf"))
