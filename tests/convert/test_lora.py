"""A converted LoRA computes what PEFT computes: llama.cpp's logits with the GGUF adapter applied to
the converted base equal the independent numpy forward pass on merged weights ``W + scale · B·A``
(tests/numpy_reference.py), within the F32 tolerance used for ``convert`` (1e-4 × max |logit|).

Adapters are random PEFT folders (scripts/make_tiny_adapters.py) whose delta is about half the size
of each base weight, so a dropped pair, a wrong scale or a transposed half shows at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest
from numpy_reference import reference_logits, reference_logits_with_lora

from edge_qwen.adapters import adapter_bytes, apply_adapters, free_adapter, load_adapter
from edge_qwen.convert import convert
from edge_qwen.convert.lora import convert_lora
from edge_qwen.errors import AdapterBaseMismatchError, AdapterLoadError, GGUFFileError
from edge_qwen.logits import token_logits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from make_tiny_adapters import config_from_gguf, make_adapter  # noqa: E402
from make_tiny_checkpoints import make_checkpoint  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]

F32_TOLERANCE = 1e-4
F16_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def base_gguf(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``base_gguf(arch)``: the F32 GGUF of the tiny f32 checkpoint, converted once per module."""
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            out = tmp_path_factory.mktemp(f"base-{arch}")
            cache[arch] = convert(
                tiny_checkpoint(arch, dtype="f32"), out, outtype="f32", evaluate=False, quiet=True
            ).gguf
        return cache[arch]

    return get


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    scale = np.abs(expected).max()
    error = np.abs(actual - expected).max()
    assert error <= tolerance * scale, f"max error {error:.3g}, allowed {tolerance:g} x {scale:.3g}"
    # The greedy token agrees, except where the reference itself has a tie within the tolerance.
    picked = expected[np.arange(len(expected)), actual.argmax(axis=1)]
    flipped = np.flatnonzero(picked < expected.max(axis=1) - 2 * tolerance * scale)
    assert flipped.size == 0, f"greedy token differs beyond a near-tie at positions {flipped.tolist()}"


CASES: list[tuple[str, dict[str, Any]]] = [
    ("qwen2", {"r": 8, "lora_alpha": 16}),  # all seven projections, q/k/v with biases in the base
    ("qwen3", {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["q_proj", "v_proj"]}),
    ("qwen2", {"r": 16, "lora_alpha": 8, "fan_in_fan_out": True, "target_modules": ["o_proj", "down_proj"]}),
    (
        "qwen3",
        {
            "r": 6,
            "lora_alpha": 12,
            "target_modules": ["k_proj", "gate_proj", "up_proj"],
            "rank_pattern": {"model.layers.1.mlp.up_proj": 2},
            "alpha_pattern": {"gate_proj": 3.0},
        },
    ),
    ("qwen3moe", {"r": 4, "lora_alpha": 8}),  # per-expert pairs stacked like the base's experts
    ("qwen2moe", {"r": 4, "lora_alpha": 4, "target_modules": ["q_proj", "gate_proj", "down_proj"]}),
]


@pytest.mark.parametrize(("arch", "fields"), CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_adapter_logits_match_the_merged_reference(
    arch: str, fields: dict[str, Any], tiny_checkpoint, base_gguf, tokens: list[int], tmp_path: Path
) -> None:
    checkpoint = tiny_checkpoint(arch, dtype="f32")
    adapter = make_adapter(tmp_path / "adapter", checkpoint, **fields)
    lora = convert_lora(adapter, tmp_path / "out", outtype="f32").gguf
    expected = reference_logits_with_lora(checkpoint, adapter, tokens)
    assert_close(
        token_logits(base_gguf(arch), tokens, threads=2, adapters=[(lora, 1.0)]), expected, F32_TOLERANCE
    )
    # Not vacuous: the adapter moves the logits far beyond the tolerance.
    base = reference_logits(checkpoint, tokens)
    assert np.abs(expected - base).max() > 100 * F32_TOLERANCE * np.abs(base).max()


def test_experts_the_adapter_leaves_alone_stay_the_base(
    tiny_checkpoint, base_gguf, tokens: list[int], tmp_path: Path
) -> None:
    """Pairs for a few experts only: the others get zero pairs in the stacked tensor."""
    from make_tiny_checkpoints import read_safetensors, write_safetensors

    checkpoint = tiny_checkpoint("qwen3moe", dtype="f32")
    adapter = make_adapter(tmp_path / "adapter", checkpoint, target_modules=["gate_proj", "down_proj"])
    weights = read_safetensors(adapter / "adapter_model.safetensors")
    keep = {k: v for k, v in weights.items() if ".experts.0." in k or ".experts.5." in k}
    assert 0 < len(keep) < len(weights)
    write_safetensors(adapter / "adapter_model.safetensors", keep, "f32")
    lora = convert_lora(adapter, tmp_path / "out", outtype="f32").gguf
    expected = reference_logits_with_lora(checkpoint, adapter, tokens)
    actual = token_logits(base_gguf("qwen3moe"), tokens, threads=2, adapters=[(lora, 1.0)])
    assert_close(actual, expected, F32_TOLERANCE)
    base = reference_logits(checkpoint, tokens)
    assert np.abs(expected - base).max() > 100 * F32_TOLERANCE * np.abs(base).max()


def test_runtime_scale_multiplies_the_adapter_and_zero_is_the_base(
    tiny_checkpoint, base_gguf, tokens: list[int], tmp_path: Path
) -> None:
    checkpoint = tiny_checkpoint("qwen2", dtype="f32")
    adapter = make_adapter(tmp_path / "adapter", checkpoint, r=8, lora_alpha=32)
    lora = convert_lora(adapter, tmp_path / "out", outtype="f32").gguf
    base = token_logits(base_gguf("qwen2"), tokens, threads=2)
    np.testing.assert_array_equal(
        token_logits(base_gguf("qwen2"), tokens, threads=2, adapters=[(lora, 0.0)]), base
    )
    half = token_logits(base_gguf("qwen2"), tokens, threads=2, adapters=[(lora, 0.5)])
    assert_close(half, reference_logits_with_lora(checkpoint, adapter, tokens, scale=0.5), F32_TOLERANCE)


# Q8_0 pairs make llama.cpp quantize the activations to 8 bits too; a whole Q8_0 model of this size
# is off by ~3% of max |logit| (measured: 0.136 of 4.19), and a Q8_0 adapter on the F32 base by ~3%.
@pytest.mark.parametrize(
    ("outtype", "tolerance"), [("f16", F16_TOLERANCE), ("bf16", F16_TOLERANCE), ("q8_0", 5e-2)]
)
def test_compact_adapter_types_stay_close(
    outtype: str, tolerance: float, tiny_checkpoint, base_gguf, tokens: list[int], tmp_path: Path
) -> None:
    checkpoint = tiny_checkpoint("qwen3", dtype="f32")
    adapter = make_adapter(tmp_path / "adapter", checkpoint, r=32, lora_alpha=32)  # r = 32: Q8_0 for A and B
    lora = convert_lora(adapter, tmp_path / "out", outtype=outtype).gguf
    expected = reference_logits_with_lora(checkpoint, adapter, tokens)
    assert_close(
        token_logits(base_gguf("qwen3"), tokens, threads=2, adapters=[(lora, 1.0)]), expected, tolerance
    )


def test_base_as_gguf_gives_the_identical_adapter(tiny_checkpoint, base_gguf, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint("qwen3", dtype="f32")
    adapter = make_adapter(tmp_path / "adapter", checkpoint, r=4, lora_alpha=8)
    from_folder = convert_lora(adapter, tmp_path / "a", base=checkpoint, outtype="f16")
    from_gguf = convert_lora(adapter, tmp_path / "b", base=base_gguf("qwen3"), outtype="f16")
    assert from_gguf.manifest.sha256 == from_folder.manifest.sha256


def test_primitives_hot_swap_on_one_context_and_refuse_foreign_adapters(
    tiny_checkpoint, base_gguf, qwen3_tokenizer_dir: Path, tokens: list[int], tmp_path: Path
) -> None:
    """base -> A -> B -> base -> A on one loaded model equals fresh loads; wrong adapters fail clearly."""
    from edge_qwen import logits as L
    from edge_qwen._llama import capture_log

    checkpoint = tiny_checkpoint("qwen2", dtype="f32")
    files = [
        convert_lora(
            make_adapter(tmp_path / name, checkpoint, seed=seed), tmp_path / "out", outtype="f32"
        ).gguf
        for name, seed in (("a", 1), ("b", 2))
    ]
    fresh = {f: token_logits(base_gguf("qwen2"), tokens, threads=2, adapters=[(f, 1.0)]) for f in files}
    fresh[None] = token_logits(base_gguf("qwen2"), tokens, threads=2)
    assert 0 < adapter_bytes(files[0]) < files[0].stat().st_size

    other = make_checkpoint(
        tmp_path / "other", arch="qwen2", dtype="f32", tokenizer_dir=qwen3_tokenizer_dir, intermediate_size=96
    )
    foreign = convert_lora(make_adapter(tmp_path / "c", other), tmp_path / "out", outtype="f32").gguf
    qwen3 = tiny_checkpoint("qwen3", dtype="f32")
    wrong_arch = convert_lora(make_adapter(tmp_path / "d", qwen3), tmp_path / "out", outtype="f32").gguf

    with capture_log() as log, L.loaded_model(base_gguf("qwen2"), log) as model:
        adapters = {f: load_adapter(model, f) for f in files}
        try:
            with pytest.raises(
                AdapterBaseMismatchError, match="'qwen3' models but the loaded model is 'qwen2'"
            ):
                load_adapter(model, wrong_arch)
            with pytest.raises(AdapterLoadError, match="incorrect shape"):
                load_adapter(model, foreign)
            with pytest.raises(GGUFFileError, match="not a GGUF LoRA adapter"):
                load_adapter(model, base_gguf("qwen2"))
            with (
                L.measuring_context(model, log, n_ctx=len(tokens), n_batch=len(tokens), threads=2) as ctx,
                L.token_batch(len(tokens)) as batch,
            ):
                for which in (None, files[0], files[1], None, files[0]):
                    apply_adapters(ctx, [] if which is None else [(adapters[which], 1.0)])
                    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                    L.fill_batch(batch, tokens, 0)
                    assert llama_cpp.llama_decode(ctx, batch) == 0
                    rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=fresh[None].shape)
                    np.testing.assert_array_equal(rows, fresh[which])
                apply_adapters(ctx, [])
        finally:
            for adapter in adapters.values():
                free_adapter(adapter)
                free_adapter(adapter)  # idempotent


def test_adapter_for_the_real_quantized_base(real_gguf: Path, tmp_path: Path) -> None:
    """Against the real Qwen2.5-Coder-0.5B Q4_K_M: the GGUF header alone is a base (same file as from
    config.json), llama.cpp loads the pairs onto the quantized weights, and they change the output."""
    import json

    shapes = tmp_path / "config-only"
    shapes.mkdir()
    (shapes / "config.json").write_text(json.dumps(config_from_gguf(real_gguf)))
    adapter = make_adapter(
        tmp_path / "adapter", shapes, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
    )
    lora = convert_lora(adapter, tmp_path / "a", base=real_gguf, outtype="f16")
    assert lora.manifest.sha256 == convert_lora(adapter, tmp_path / "b", base=shapes).manifest.sha256
    assert lora.manifest.extra["lora"]["n_pairs"] == 2 * 24

    prompt = [151644, 872, 198, 750, 75698, 1445, 982]  # <|im_start|> and six ordinary ids
    base = token_logits(real_gguf, prompt, threads=2)
    tuned = token_logits(real_gguf, prompt, threads=2, adapters=[(lora.gguf, 1.0)])
    assert np.isfinite(tuned).all() and np.abs(tuned - base).max() > 1.0


def test_an_adapter_with_nan_or_infinite_weights_is_refused(
    tiny_checkpoint, base_gguf, tmp_path: Path
) -> None:
    """It would load, then every answer would be garbage: refused, naming the tensor."""
    import shutil

    import gguf

    from edge_qwen import logits as L
    from edge_qwen._llama import capture_log

    good = convert_lora(make_adapter(tmp_path / "a", tiny_checkpoint("qwen2", dtype="f32")), tmp_path / "out",
                        outtype="f32").gguf  # fmt: skip
    bad = tmp_path / "bad.gguf"
    shutil.copy(good, bad)
    reader = gguf.GGUFReader(bad, "r+")
    victim = reader.tensors[1]
    victim.data.reshape(-1)[3] = np.inf
    del reader
    with capture_log() as log, L.loaded_model(base_gguf("qwen2"), log) as model:
        with pytest.raises(AdapterLoadError, match=f"{victim.name} holds NaN or infinite values"):
            load_adapter(model, bad)
        free_adapter(load_adapter(model, good))  # the intact one still loads
