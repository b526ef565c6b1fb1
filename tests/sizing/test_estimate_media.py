"""The mmproj memory estimate against what llama.cpp's clip really allocates for the tiny models.

clip logs its weights (``model size``) and, at warmup, the compute buffer it reserved for its
warmup input: for Qwen2-VL a 46x46-token image (1288x1288 pixels), for Qwen2-Audio one 30 s
chunk (3000 mel frames). The estimate for those same inputs must agree within 1 %.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import llama_cpp
import pytest

from edge_qwen import _llama
from edge_qwen.gguf_header import read_header
from edge_qwen.mtmd_native import Mtmd
from edge_qwen.sizing.estimate_media import (
    QWEN_VL_MAX_TOKENS,
    audio_compute_bytes,
    mmproj_memory,
    vision_compute_bytes,
)

pytestmark = [pytest.mark.real, pytest.mark.slow]

MIB = 2**20
WARMUP_IMAGE_TOKENS = 46 * 46  # clip.cpp: set_warmup_n_tokens(46*46) for Qwen-VL


@pytest.fixture(scope="module")
def pairs(
    tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path
) -> dict[str, tuple[Path, Path]]:
    """{arch: (text GGUF, mmproj GGUF)} of tiny converted Qwen2-VL and Qwen2-Audio."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from make_tiny_multimodal import make_multimodal_checkpoint

    from edge_qwen.convert import convert

    root = tmp_path_factory.mktemp("tiny-mm")
    out = {}
    for arch in ("qwen2vl", "qwen2audio"):
        hf = make_multimodal_checkpoint(root / arch, arch=arch, tokenizer_dir=qwen3_tokenizer_dir)
        done = convert(hf, root / f"{arch}-gguf", outtype="f32", evaluate=False, quiet=True).as_dict()
        out[arch] = (Path(done["gguf"]), Path(done["mmproj"]["path"]))
    return out


def clip_log(text_gguf: Path, mmproj: Path, *, flash_attn: bool = False) -> dict[str, float]:
    """MiB clip reports for its weights and its warmup compute buffer (CPU)."""
    _llama.init_backend()
    model = llama_cpp.llama_model_load_from_file(
        str(text_gguf).encode(), llama_cpp.llama_model_default_params()
    )
    lines: list[str] = []
    try:
        with _llama.capture_log(lambda _level, line: lines.append(line)):
            Mtmd(mmproj, model, threads=2, warmup=True, flash_attn=flash_attn).close()
    finally:
        llama_cpp.llama_model_free(model)
    text = "".join(lines)
    return {
        "weights": float(re.search(r"model size:\s+([\d.]+) MiB", text).group(1)),  # type: ignore[union-attr]
        "compute": float(re.search(r"compute buffer size =\s+([\d.]+) MiB", text).group(1)),  # type: ignore[union-attr]
    }


def test_vision_estimate_matches_clips_allocation(pairs: dict[str, tuple[Path, ...]]) -> None:
    text_gguf, mmproj = pairs["qwen2vl"]
    logged = clip_log(text_gguf, mmproj)
    header = read_header(mmproj)
    assert vision_compute_bytes(header, WARMUP_IMAGE_TOKENS) / MIB == pytest.approx(
        logged["compute"], rel=0.01
    )
    estimate = mmproj_memory(mmproj)
    assert estimate.weights_bytes / MIB == pytest.approx(logged["weights"], abs=0.01)
    assert estimate.max_media_tokens == QWEN_VL_MAX_TOKENS
    # the largest image: 4096 tokens = 16384 patches, so the 4 heads' scores alone are 4 GiB
    assert estimate.compute_bytes > 4 * 16384**2 * 4
    assert estimate.embd_bytes == 4096 * 64 * 4  # the tiny language model's hidden size is 64
    # with flash attention (what the runtime uses unless flash_attn=False) the scores never exist
    flash = clip_log(text_gguf, mmproj, flash_attn=True)["compute"]
    assert vision_compute_bytes(header, WARMUP_IMAGE_TOKENS, flash_attn=True) / MIB == pytest.approx(
        flash, rel=0.1
    )
    assert mmproj_memory(mmproj, flash_attn=True).compute_bytes < estimate.compute_bytes / 50
    small = mmproj_memory(mmproj, max_image_tokens=256)
    assert small.max_media_tokens == 256 and small.compute_bytes < estimate.compute_bytes / 100


def test_audio_estimate_matches_clips_allocation(pairs: dict[str, tuple[Path, ...]]) -> None:
    text_gguf, mmproj = pairs["qwen2audio"]
    logged = clip_log(text_gguf, mmproj)
    assert audio_compute_bytes(read_header(mmproj)) / MIB == pytest.approx(logged["compute"], rel=0.01)
    estimate = mmproj_memory(mmproj)
    assert estimate.weights_bytes / MIB == pytest.approx(logged["weights"], abs=0.01)
    assert estimate.max_media_tokens == 750  # one 30 s chunk
    assert mmproj_memory(mmproj, max_audio_seconds=60).max_media_tokens == 1500
