"""Qwen2-VL and Qwen2.5-VL convert to a ``qwen2vl`` text GGUF + an mmproj GGUF that compute the
same model: llama.cpp's mtmd, on the converted pair, against an independent float64 numpy
forward pass (tests/numpy_reference_vision.py) of the Hugging Face checkpoint.

Tolerances, relative to the largest reference value:

* image embeddings, F32 mmproj: 2e-3 (observed 4.9e-4 Qwen2-VL, 5.7e-4 Qwen2.5-VL). Not float32
  rounding: llama.cpp's CPU GELU is the tanh approximation read from an F16 lookup table, where
  transformers' is erf-exact (erf vs tanh alone accounts for 5.7e-4 absolute here);
* logits of the text after the image, F32 pair: 2e-3 (observed 2.4e-4 to 3.4e-4); with mtmd's own
  image embeddings fed to the reference (the language model alone), 5e-4 (observed 7e-5 to 9e-5).
  That residual is llama.cpp's ``qwen2vl`` graph itself: the very same weights written as a
  ``qwen2`` GGUF match the reference to 3e-7, as ``qwen2vl`` to 9e-5, already at position 0;
* F16 / Q8_0 mmproj against the F32 one: 5e-3 / 3e-2 (observed 6e-4 to 9e-4 / 1.5e-2 to 1.8e-2).

The tiny checkpoints use rope_theta 10 (see scripts/make_tiny_multimodal.py), so the height and
width M-RoPE sections rotate fast enough that a wrong image position fails the logits test (checked).

The image is 168x112: a multiple of patch x merge (28) with at least clip's 8 tokens, so neither
mtmd nor the reference resizes it, and wider than 2.5-VL's 112-pixel window, so the windows differ
from full attention (checked).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import numpy_reference_vision as ref
import pytest
from _mtmd import decode_all, image_embeddings, loaded, relative_error

from edge_qwen import cli
from edge_qwen.convert import convert
from edge_qwen.errors import CheckpointError, MultimodalNotSupportedError
from edge_qwen.gguf_header import read_header

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from make_tiny_multimodal import make_multimodal_checkpoint, random_image  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]

ARCHS = ["qwen2vl", "qwen25vl"]
WIDTH, HEIGHT = 168, 112
EMBD_F32_TOLERANCE = 2e-3
LOGITS_TOLERANCE = 2e-3
LM_ONLY_TOLERANCE = 5e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vl")
    # Qwen2.5-VL in BF16, like the real releases (the reference widens the very same stored values)
    dtypes = {"qwen2vl": "f32", "qwen25vl": "bf16"}
    return {
        a: make_multimodal_checkpoint(root / a, arch=a, dtype=dtypes[a], tokenizer_dir=qwen3_tokenizer_dir)
        for a in ARCHS
    }


@pytest.fixture(scope="module")
def converted(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """{arch: convert(...).as_dict()} of F32 conversions."""
    out = tmp_path_factory.mktemp("vl-out")
    return {
        a: convert(c, out / a, outtype="f32", evaluate=False, quiet=True).as_dict()
        for a, c in checkpoints.items()
    }


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return random_image(WIDTH, HEIGHT)


# --- the files --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_pair_carries_what_llama_cpp_reads(arch: str, converted: dict[str, dict]) -> None:
    result = converted[arch]
    lm, mm = read_header(result["gguf"]), read_header(result["mmproj"]["path"])
    assert lm.architecture == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2VL]
    assert list(lm.arch_value(gguf.Keys.Rope.DIMENSION_SECTIONS)) == [2, 3, 3, 0]
    meta = mm.metadata
    assert mm.architecture == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ]
    assert meta[gguf.Keys.General.TYPE] == gguf.GGUFType.MMPROJ
    projector = {"qwen2vl": gguf.VisionProjectorType.QWEN2VL, "qwen25vl": gguf.VisionProjectorType.QWEN25VL}
    assert meta[gguf.Keys.Clip.PROJECTOR_TYPE] == projector[arch]
    assert meta[gguf.Keys.ClipVision.PATCH_SIZE] == 14
    assert meta[gguf.Keys.ClipVision.PROJECTION_DIM] == 64
    assert np.allclose(meta[gguf.Keys.ClipVision.IMAGE_MEAN], [0.48145466, 0.4578275, 0.40821073])
    if arch == "qwen25vl":
        assert meta[gguf.Keys.ClipVision.N_WA_PATTERN] == 2  # fullatt_block_indexes [1, 3]
        assert meta[gguf.Keys.ClipVision.USE_SILU] is True
    names = {t.name for t in mm.tensors}
    patch = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.V_ENC_EMBD_PATCH] + ".weight"
    assert {patch, patch + ".1", "v.blk.0.attn_q.weight", "v.blk.0.attn_k.bias", "mm.2.weight"} <= names
    assert not any(n.startswith("v.") for n in (t.name for t in lm.tensors))
    # the manifests link the pair
    assert result["outputs"][0]["mmproj"] == result["mmproj"]["path"]
    assert result["mmproj"]["model"] == result["gguf"]


# --- correctness ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_image_embeddings_match_reference(
    arch: str, checkpoints: dict[str, Path], converted: dict[str, dict], image: np.ndarray
) -> None:
    expected = ref.image_embeddings(checkpoints[arch], image)
    actual = image_embeddings(converted[arch], image)
    assert actual.shape == expected.shape == (WIDTH // 28 * (HEIGHT // 28), 64)
    error = relative_error(actual, expected)
    assert error <= EMBD_F32_TOLERANCE, f"max |mtmd - reference| / max |reference| = {error:.3g}"


def test_window_attention_is_really_exercised(
    checkpoints: dict[str, Path], converted: dict[str, dict], image: np.ndarray
) -> None:
    """Guard against a vacuous 2.5-VL comparison: full attention everywhere gives other embeddings."""
    windowed = ref.image_embeddings(checkpoints["qwen25vl"], image)
    full = ref.image_embeddings(checkpoints["qwen25vl"], image, full_attention=True)
    assert relative_error(full, windowed) > 20 * EMBD_F32_TOLERANCE
    assert relative_error(image_embeddings(converted["qwen25vl"], image), full) > 20 * EMBD_F32_TOLERANCE


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_after_image_match_reference(
    arch: str, checkpoints: dict[str, Path], converted: dict[str, dict], image: np.ndarray
) -> None:
    """Text, the image (M-RoPE: rows and columns as positions), then text: every logit of the last
    text chunk, which attends to the image."""
    result, folder = converted[arch], checkpoints[arch]
    with loaded(result["gguf"], result["mmproj"]["path"]) as (model, ctx, mtmd):
        with mtmd.tokenize(f"Look: {mtmd.marker} what is it?", [image]) as chunks:
            before, img, after = chunks
            assert (before.kind, img.kind, after.kind) == ("text", "image", "text")
            embd = mtmd.encode(img)
            n_past = mtmd.eval_chunk(ctx, before, 0)
            n_past = mtmd.eval_chunk(ctx, img, n_past)
            actual = decode_all(ctx, model, after.tokens, n_past)
            # mtmd's one-call path (what the runtime uses) agrees with the chunk-by-chunk one
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            assert mtmd.eval_chunks(ctx, chunks, 0, logits_last=True) == n_past + len(after.tokens)
            last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=actual.shape[1:])
            assert relative_error(last, actual[-1]) < 1e-5
    cols, rows = img.grid
    positions = ref.mrope_positions(len(before.tokens), (rows, cols), len(after.tokens))
    assert n_past == positions[:, : len(before.tokens) + img.n_tokens].max() + 1
    n_after = len(after.tokens)
    text_before, text_after = (
        ref.token_embeddings(folder, list(before.tokens)),
        ref.token_embeddings(folder, list(after.tokens)),
    )

    def logits(image_embd: np.ndarray) -> np.ndarray:
        x = np.concatenate([text_before, image_embd, text_after])
        return ref.lm_logits(folder, x, positions)[-n_after:]

    lm_only = relative_error(actual, logits(embd.astype(np.float64)))
    assert lm_only <= LM_ONLY_TOLERANCE, f"language model alone: {lm_only:.3g}"
    expected = logits(ref.image_embeddings(folder, image))
    error = relative_error(actual, expected)
    assert error <= LOGITS_TOLERANCE, f"max |llama.cpp - reference| / max |reference| = {error:.3g}"
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all()
    # the image and its 2-D positions matter to those logits (else the comparison proves nothing)
    blank = logits(np.zeros_like(embd, dtype=np.float64))
    assert relative_error(blank, expected) > 20 * LOGITS_TOLERANCE
    x = np.concatenate([text_before, ref.image_embeddings(folder, image), text_after])
    flat = np.tile(np.arange(x.shape[0]), (3, 1))  # image tokens numbered like text instead
    assert relative_error(ref.lm_logits(folder, x, flat)[-n_after:], expected) > 20 * LOGITS_TOLERANCE


@pytest.mark.parametrize(("width", "height"), [(112, 56), (168, 112), (84, 252)])
def test_image_token_count_matches_grid(width: int, height: int, converted: dict[str, dict]) -> None:
    result = converted["qwen2vl"]
    with loaded(result["gguf"], result["mmproj"]["path"]) as (_, _, mtmd):
        with mtmd.tokenize(f"a{mtmd.marker}b", [random_image(width, height)]) as chunks:
            (img,) = [c for c in chunks if c.kind == "image"]
            assert img.grid == (width // 28, height // 28)
            assert img.n_tokens == (width // 28) * (height // 28)
            assert img.n_pos == max(width, height) // 28  # M-RoPE: the next text starts after the longer side
            assert chunks[0].tokens[-1] == 151652 and chunks[-1].tokens[0] == 151653  # vision start / end


# --- types, quantized pairs -------------------------------------------------------------------


def test_quantized_model_gets_f16_mmproj_and_q8_stays_close(
    checkpoints: dict[str, Path], converted: dict[str, dict], image: np.ndarray, tmp_path: Path, capsys
) -> None:
    exact = image_embeddings(converted["qwen2vl"], image)
    f16 = convert(
        checkpoints["qwen2vl"], tmp_path / "f16", quants=["q8_0"], evaluate=False, quiet=True
    ).as_dict()
    assert f16["mmproj"]["quant_type"] == "F16"
    assert [o.get("mmproj") for o in f16["outputs"]] == [f16["mmproj"]["path"]] * 2  # F16 and Q8_0 LM
    assert (
        json.loads(Path(f16["outputs"][1]["path"] + ".json").read_text())["mmproj"] == f16["mmproj"]["path"]
    )
    assert relative_error(image_embeddings(f16, image), exact) <= 5e-3
    args = ["convert", str(checkpoints["qwen2vl"]), "-o", str(tmp_path / "q8"), "--mmproj-type", "q8_0"]
    assert cli.main([*args, "--no-eval", "--json"]) == 0
    q8 = json.loads(capsys.readouterr().out)
    assert q8["mmproj"]["quant_type"] == "Q8_0" and q8["mmproj"]["tensor_types"]["Q8_0"] > 0
    assert relative_error(image_embeddings(q8, image), exact) <= 3e-2


# --- refusals ---------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    """The checkpoint's small files copied, its weights linked."""
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            (dst / f.name).symlink_to(f)
        else:
            shutil.copyfile(f, dst / f.name)
    return dst


def _edited(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    _copy(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_other_multimodal_architectures_are_named_not_supported(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    def omni(cfg: dict) -> None:
        cfg["architectures"] = ["Qwen3OmniMoeForConditionalGeneration"]

    folder = _edited(checkpoints["qwen2vl"], tmp_path / "omni", omni)
    with pytest.raises(
        MultimodalNotSupportedError, match="Qwen3OmniMoeForConditionalGeneration is not supported yet"
    ):
        convert(folder, tmp_path / "out", quiet=True)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c: c["vision_config"].update(window_size=56), "window_size"),
        (lambda c: c["vision_config"].update(fullatt_block_indexes=[0, 3]), "fullatt_block_indexes"),
        (lambda c: c["vision_config"].update(spatial_merge_size=4), "spatial_merge_size"),
        (lambda c: c["text_config"]["rope_scaling"].update(mrope_section=[2, 2, 2]), "mrope_section"),
    ],
)
def test_layouts_llama_cpp_cannot_run_are_refused_before_writing(
    edit,
    words: str,
    checkpoints: dict[str, Path],
    tmp_path: Path,  # noqa: ANN001
) -> None:
    folder = _edited(checkpoints["qwen25vl"], tmp_path / "ckpt", edit)
    with pytest.raises(CheckpointError, match=words):
        convert(folder, tmp_path / "out", quiet=True)
    assert not list((tmp_path / "out").glob("*.gguf"))


def test_missing_preprocessor_config_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(checkpoints["qwen2vl"], tmp_path / "no-pre")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        convert(folder, tmp_path / "out", quiet=True)
