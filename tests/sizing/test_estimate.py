"""The estimator against llama.cpp itself (its logged buffer sizes) and against process RSS."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from edge_qwen import _llama
from edge_qwen.gguf_header import read_header
from edge_qwen.runtime.model import Model
from edge_qwen.sizing.estimate import estimate_memory, host_cpu_features, kv_cache_bytes, model_shape

MiB = 2**20
TOLERANCE = 0.03  # the newcomer issue's bar: within 3 % of llama.cpp and of RSS growth
BUFFER = re.compile(r"(\w+)(?: model)? buffer size =\s+([\d.]+) MiB")
# llama.cpp log name -> estimate field
COMPONENTS = {
    "model": "weights_bytes",
    "KV": "kv_bytes",
    "compute": "compute_bytes",
    "output": "output_bytes",
}
GRID = list(itertools.product([512, 2048, 8192, 32768], ["f16", "q8_0"], [128, 512]))


def reported_buffers(path: Path, **settings: object) -> dict[str, float]:
    """MiB per buffer kind as llama.cpp logs it while loading (CPU_Mapped model, KV, compute, output)."""
    sizes: dict[str, float] = {}
    lines: list[str] = []
    with _llama.capture_log(lambda _level, line: lines.append(line)):
        Model.load(path, **settings).close()
    for line in "".join(lines).splitlines():
        match = BUFFER.search(line)
        if match:
            kind = "model" if "model buffer" in line else match.group(1)
            sizes[kind] = sizes.get(kind, 0.0) + float(match.group(2))
    return sizes


def test_header_matches_the_gguf(real_gguf: Path) -> None:
    shape = model_shape(read_header(real_gguf))
    assert (shape.architecture, shape.n_layer, shape.n_embd, shape.n_head) == ("qwen2", 24, 896, 14)
    assert shape.n_head_kv == (2,) * 24 and shape.key_length == shape.value_length == 64
    assert (shape.n_vocab, shape.n_ctx_train) == (151936, 32768)


def test_kv_cache_is_exact_for_quantized_blocks(real_gguf: Path) -> None:
    shape = model_shape(read_header(real_gguf))
    layers = range(shape.n_layer)
    assert kv_cache_bytes(shape, 2048, "f16", "f16", layers) == 24 * 2048 * 2 * (64 + 64) * 2
    assert kv_cache_bytes(shape, 2048, "q8_0", "q8_0", layers) == 24 * 2048 * 2 * 128 * 34 // 32
    assert kv_cache_bytes(shape, 2048, "q4_0", "q4_0", layers) == 24 * 2048 * 2 * 128 * 18 // 32


def test_every_component_within_3_percent_of_llama_cpp(real_gguf: Path) -> None:
    table = []
    for n_ctx, kv, ubatch in GRID:
        settings = {"n_ctx": n_ctx, "cache_type_k": kv, "cache_type_v": kv, "n_ubatch": ubatch}
        reported = reported_buffers(real_gguf, **settings)
        est = estimate_memory(real_gguf, **settings).to_dict()
        for kind, field in COMPONENTS.items():
            ours = est[field] / MiB
            table.append((n_ctx, kv, ubatch, kind, ours, reported[kind]))
    off = [row for row in table if abs(row[4] - row[5]) > TOLERANCE * row[5]]
    assert not off, json.dumps(off)


def test_flash_attention_off_grows_compute_with_context(real_gguf: Path) -> None:
    settings = {"n_ctx": 32768, "flash_attn": False, "n_ubatch": 512}
    reported = reported_buffers(real_gguf, **settings)["compute"]
    est = estimate_memory(real_gguf, **settings).compute_bytes / MiB
    assert reported > 900  # the n_ctx x n_ubatch x n_head score matrix dominates
    assert est == pytest.approx(reported, rel=TOLERANCE)


@pytest.mark.parametrize(
    ("n_ctx", "kv", "ubatch"),
    [(2048, "f16", 512), (16384, "f16", 512), (32768, "q8_0", 128), (512, "f16", 128)],
)
def test_total_within_3_percent_of_rss_growth(
    real_gguf: Path, probe, n_ctx: int, kv: str, ubatch: int
) -> None:
    settings = {"n_ctx": n_ctx, "cache_type_k": kv, "cache_type_v": kv, "n_ubatch": ubatch}
    measured = probe("load", str(real_gguf), json.dumps(settings))["rss_growth"]
    est = estimate_memory(real_gguf, **settings)
    assert est.total_bytes == pytest.approx(measured, rel=TOLERANCE)
    # "file size + KV cache" (the naive pre-flight) misses the tokenizer tables and activations
    assert est.total_bytes > real_gguf.stat().st_size + est.kv_bytes


@pytest.fixture(scope="module")
def q4k_heavy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Qwen2 whose rows are 1024 wide (multiples of 256, unlike the 0.5B's 896) with a real
    Qwen's 151,936-token vocabulary, quantized to Q4_K_M: most matrices are Q4_K, which AVX2/AVX-512
    CPUs repack into CPU_REPACK (the tied output as a repacked copy of the embedding) — the case
    the estimate got 32 % low on an AMX Xeon."""
    import sys

    import numpy as np

    from edge_qwen.quantize import quantize

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ggufgen import write_tiny_qwen2

    folder = tmp_path_factory.mktemp("q4k")
    f16 = write_tiny_qwen2(folder / "f16.gguf", n_embd=1024, n_ff=2816, n_layer=8, n_head=16,
                           n_head_kv=2, dtype=np.float16, n_vocab=151936)  # fmt: skip
    # (its token embedding is Q8_0, so the quantizer must be told a requantize is fine)
    return Path(quantize(f16, "Q4_K_M", folder / "q4_k_m.gguf", quiet=True, allow_requantize=True).path)


@pytest.mark.slow
def test_a_q4_k_heavy_file_is_estimated_within_3_percent(q4k_heavy: Path, probe) -> None:
    settings = {"n_ctx": 2048, "cache_type_k": "f16", "cache_type_v": "f16", "n_ubatch": 512}
    lines: list[str] = []
    with _llama.capture_log(lambda _level, line: lines.append(line)):
        Model.load(q4k_heavy, **settings).close()
    repacked = sum(float(m.group(1)) for m in re.finditer(r"CPU_REPACK model buffer size =\s+([\d.]+) MiB",
                                                         "".join(lines)))  # fmt: skip
    est = estimate_memory(q4k_heavy, **settings)
    assert est.repack_bytes / MiB == pytest.approx(repacked, rel=TOLERANCE, abs=0.01)
    if _llama.default_extra_buffers() and not _llama.build_has_amx() and "avx2" in host_cpu_features():
        assert repacked > 30  # MiB: the Q4_K matrices really are copied (an estimate of 0 failed here)
    measured = probe("load", str(q4k_heavy), json.dumps(settings))["rss_growth"]
    assert est.total_bytes == pytest.approx(measured, rel=TOLERANCE)


def test_repacking_moves_weights_into_a_second_buffer(real_gguf: Path) -> None:
    plain = estimate_memory(real_gguf, cpu_features=frozenset({"neon"}), extra_buffers=True)
    pi5 = estimate_memory(real_gguf, cpu_features=frozenset({"neon", "dotprod"}), extra_buffers=True)
    off = estimate_memory(real_gguf, cpu_features=frozenset({"neon", "dotprod"}), extra_buffers=False)
    assert plain.repack_bytes == 0  # Cortex-A72: no dotprod, nothing to repack
    assert pi5.repack_bytes > 100 * MiB  # Q8_0 output and Q4_K/Q6_K matrices on A76
    assert pi5.weights_bytes > off.weights_bytes  # repacked tensors inside the mapped span stay resident


def test_amx_repack_matches_llama_cpp(real_gguf: Path) -> None:
    """Where the build has AMX kernels, extra buffers put repacked weights in an AMX buffer; loading only.
    (An AMX CPU whose llama.cpp was built with -mno-amx-int8 repacks into CPU_REPACK: the grid above.)"""
    if not _llama.build_has_amx():
        pytest.skip("needs a llama.cpp build with AMX kernels (an AMX CPU and clang or GCC >= 13)")
    reported = reported_buffers(real_gguf, n_ctx=512, extra_buffers=True)
    est = estimate_memory(real_gguf, n_ctx=512, extra_buffers=True)
    assert est.weights_bytes / MiB == pytest.approx(reported["model"], rel=TOLERANCE)


def test_a_draft_model_is_charged_with_its_target(real_gguf: Path) -> None:
    """One entry, one estimate: the draft's weights, its own KV cache for the target's cells (and
    sequences) and its compute buffer are added to the target's."""
    from edge_qwen.settings import ModelSettings, draft_settings

    settings = ModelSettings(n_ctx=2048, parallel=2, draft=str(real_gguf))
    alone = estimate_memory(real_gguf, n_ctx=2048, parallel=2)
    paired = estimate_memory(real_gguf, settings)
    draft = estimate_memory(real_gguf, draft_settings(settings))
    assert draft.kv_bytes == alone.kv_bytes  # the same cells in the draft's own cache
    assert paired.draft_bytes == draft.total_bytes
    assert paired.total_bytes == alone.total_bytes + draft.total_bytes


def test_a_projector_is_charged_with_its_language_model(tmp_path: Path, qwen3_tokenizer_dir: Path) -> None:
    """mmproj weights plus the encoder's compute buffer for the largest image (with flash attention
    unless the model turns it off); the image's cells are part of n_ctx already."""
    import sys

    from edge_qwen.convert import convert
    from edge_qwen.settings import ModelSettings
    from edge_qwen.sizing.estimate_media import mmproj_memory

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from make_tiny_multimodal import make_multimodal_checkpoint

    ck = make_multimodal_checkpoint(
        tmp_path / "ck", arch="qwen2vl", dtype="f32", tokenizer_dir=qwen3_tokenizer_dir
    )
    pair = convert(ck, tmp_path / "out", outtype="f16", evaluate=False, quiet=True).as_dict()
    text, mmproj = Path(pair["gguf"]), pair["mmproj"]["path"]
    for flash in (None, False):
        alone = estimate_memory(text, ModelSettings(n_ctx=1024, flash_attn=flash))
        paired = estimate_memory(text, ModelSettings(n_ctx=1024, mmproj=mmproj, flash_attn=flash))
        assert paired.media_bytes == mmproj_memory(mmproj, flash_attn=flash is not False).total_bytes
        assert paired.total_bytes == alone.total_bytes + paired.media_bytes
