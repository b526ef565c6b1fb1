"""Qwen2-Audio converts to a ``qwen2`` text GGUF + an audio mmproj GGUF that compute the same model:
llama.cpp's mtmd, on the converted pair, against an independent float64 numpy forward pass
(tests/numpy_reference_audio.py: Whisper log-mel features, audio tower, projector) of the Hugging
Face checkpoint, then the language model over text + audio embeddings + text.

Tolerances, relative to the largest reference value:

* audio embeddings, F32 mmproj: 1e-3 (observed 9.7e-5). ggml's conv1d runs through an F16 im2col
  and llama.cpp keeps the conv kernels in F16, so the log-mel input and first layers are rounded;
* logits after the audio: 1e-3 (observed 1.0e-4, the embedding difference carried through); with
  mtmd's own embeddings fed to the reference (the language model alone), 1e-5 (observed 4.9e-7).

The clip is 10 s: mtmd, like the reference, zero-pads it to one 30-second window of 750 tokens.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import numpy_reference_audio as ref_audio
import numpy_reference_vision as ref
import pytest
from _mtmd import decode_all, loaded, relative_error

from edge_qwen.convert import convert
from edge_qwen.errors import CheckpointError
from edge_qwen.gguf_header import read_header

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from make_tiny_multimodal import make_multimodal_checkpoint, random_audio  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]

EMBD_TOLERANCE = 1e-3
LOGITS_TOLERANCE = 1e-3
LM_ONLY_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("tiny-audio")
    return make_multimodal_checkpoint(
        root / "qwen2audio", arch="qwen2audio", tokenizer_dir=qwen3_tokenizer_dir
    )


@pytest.fixture(scope="module")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("audio-out")
    return convert(checkpoint, out, outtype="f32", evaluate=False, quiet=True).as_dict()


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return random_audio(10.0)


def test_pair_carries_what_llama_cpp_reads(converted: dict) -> None:
    lm, mm = read_header(converted["gguf"]), read_header(converted["mmproj"]["path"])
    assert lm.architecture == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2]
    assert lm.arch_value(gguf.Keys.Rope.FREQ_BASE) == 10000.0  # text_config leaves it to Qwen2's default
    assert not any(t.name.startswith(("a.", "mm.")) for t in lm.tensors)
    meta = mm.metadata
    assert mm.architecture == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ]
    assert meta[gguf.Keys.ClipAudio.NUM_MEL_BINS] == 128
    assert meta[gguf.Keys.ClipAudio.PROJECTION_DIM] == 64
    assert meta[gguf.Keys.Clip.PROJECTOR_TYPE] == gguf.VisionProjectorType.QWEN2A
    tensors = {t.name: t for t in mm.tensors}
    conv = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.A_ENC_CONV1D].format(bid=1)
    assert tensors[conv + ".weight"].type_name == "F16"
    assert tensors[conv + ".bias"].shape == (1, 64)  # a column, as ggml adds it
    assert tensors[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.A_ENC_EMBD_POS] + ".weight"].shape == (64, 1500)
    assert converted["outputs"][0]["mmproj"] == converted["mmproj"]["path"]
    assert converted["mmproj"]["model"] == converted["gguf"]


def test_audio_embeddings_and_logits_after_audio_match_reference(
    checkpoint: Path, converted: dict, clip: np.ndarray
) -> None:
    with loaded(converted["gguf"], converted["mmproj"]["path"]) as (model, ctx, mtmd):
        assert mtmd.supports_audio and mtmd.sample_rate == 16000 and not mtmd.uses_mrope
        with mtmd.tokenize(f"Listen: {mtmd.marker} What is it?", [clip]) as chunks:
            before, audio, after = chunks
            assert (before.kind, audio.kind, after.kind) == ("text", "audio", "text")
            assert audio.n_tokens == audio.n_pos == 750  # 3000 frames / conv stride 2 / avg pool 2
            embd = mtmd.encode(audio)
            n_past = mtmd.eval_chunk(ctx, before, 0)
            n_past = mtmd.eval_chunk(ctx, audio, n_past)
            actual = decode_all(ctx, model, after.tokens, n_past)
    expected_embd = ref_audio.audio_embeddings(checkpoint, clip)
    error = relative_error(embd, expected_embd)
    assert error <= EMBD_TOLERANCE, (
        f"audio embeddings: max |mtmd - reference| / max |reference| = {error:.3g}"
    )
    # the clip matters: another one gives other embeddings
    other = ref_audio.audio_embeddings(checkpoint, random_audio(10.0, seed=1) * 0.5)
    assert relative_error(other, expected_embd) > 20 * EMBD_TOLERANCE

    n = len(before.tokens) + audio.n_tokens + len(after.tokens)
    positions = np.tile(np.arange(n), (3, 1))  # plain Qwen2: audio tokens take consecutive positions
    text_before = ref.token_embeddings(checkpoint, list(before.tokens))
    text_after = ref.token_embeddings(checkpoint, list(after.tokens))

    def logits(audio_embd: np.ndarray) -> np.ndarray:
        x = np.concatenate([text_before, audio_embd, text_after])
        return ref.lm_logits(checkpoint, x, positions, n_last=len(after.tokens))

    lm_only = relative_error(actual, logits(embd.astype(np.float64)))
    assert lm_only <= LM_ONLY_TOLERANCE, f"language model alone: {lm_only:.3g}"
    expected = logits(expected_embd)
    error = relative_error(actual, expected)
    assert error <= LOGITS_TOLERANCE, f"logits after the audio: {error:.3g}"
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert relative_error(logits(np.zeros_like(expected_embd)), expected) > 20 * LOGITS_TOLERANCE


def test_encoder_llama_cpp_does_not_have_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in checkpoint.iterdir():
        (folder / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copyfile(f, folder / f.name)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["audio_config"]["max_source_positions"] = 3000
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="max_source_positions"):
        convert(folder, tmp_path / "out", quiet=True)
    assert not list((tmp_path / "out").glob("*.gguf"))
