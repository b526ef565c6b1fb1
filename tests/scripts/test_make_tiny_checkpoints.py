"""scripts/make_tiny_checkpoints.py writes valid, realistic Hugging Face checkpoints."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import make_tiny_checkpoints as mtc  # noqa: E402

pytestmark = pytest.mark.real  # copies the real tokenizer files


def parse_header(path: Path) -> tuple[dict, int]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), len(data) - 8 - n


def test_single_file_header_is_valid_safetensors(tmp_path: Path, qwen3_tokenizer_dir: Path) -> None:
    folder = mtc.make_checkpoint(
        tmp_path / "q2", arch="qwen2", dtype="bf16", tokenizer_dir=qwen3_tokenizer_dir
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    header, data_size = parse_header(folder / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    spans = sorted(tuple(info["data_offsets"]) for info in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == data_size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # contiguous, no overlap
    for info in header.values():
        assert info["dtype"] == "BF16"
        assert info["data_offsets"][1] - info["data_offsets"][0] == 2 * int(np.prod(info["shape"]))
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["torch_dtype"] == "bfloat16"
    assert config["tie_word_embeddings"] is True and "lm_head.weight" not in header
    assert header["model.embed_tokens.weight"]["shape"] == [151936, 64]
    assert header["model.layers.1.self_attn.k_proj.bias"]["shape"] == [32]


def test_sharded_index_covers_every_tensor_once(tmp_path: Path, qwen3_tokenizer_dir: Path) -> None:
    folder = mtc.make_checkpoint(
        tmp_path / "moe", arch="qwen2moe", dtype="f16", shards=3, tokenizer_dir=qwen3_tokenizer_dir
    )
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert sorted(set(index["weight_map"].values())) == files
    seen: dict[str, str] = {}
    total = 0
    for file in files:
        header, data_size = parse_header(folder / file)
        header.pop("__metadata__")
        assert header, f"{file} is empty"
        total += data_size
        for name in header:
            assert name not in seen
            seen[name] = file
    assert seen == index["weight_map"]
    assert index["metadata"]["total_size"] == total
    config = json.loads((folder / "config.json").read_text())
    assert "model.layers.0.mlp.shared_expert_gate.weight" in seen
    assert f"model.layers.1.mlp.experts.{config['num_experts'] - 1}.down_proj.weight" in seen
    assert "lm_head.weight" in seen  # MoE families are untied by default


def test_qwen3_layout(tmp_path: Path, qwen3_tokenizer_dir: Path) -> None:
    folder = mtc.make_checkpoint(
        tmp_path / "q3", arch="qwen3", dtype="f32", tokenizer_dir=qwen3_tokenizer_dir
    )
    tensors = mtc.read_checkpoint(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["head_dim"] * config["num_attention_heads"] != config["hidden_size"]
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 32, 64)
    assert tensors["model.layers.0.self_attn.q_norm.weight"].shape == (32,)
    assert not any(name.endswith(".bias") for name in tensors)


def test_bf16_round_trip_rounds_to_nearest_even() -> None:
    values = np.array([1.0, -2.5, 3.140625, 1.00390625, 1.01171875, 1e-30, 65504.0], dtype=np.float32)
    bits = mtc.f32_to_bf16_bits(values)
    back = mtc.bf16_bits_to_f32(bits)
    # 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0);
    # 1 + 3 * 2^-8 is halfway too and rounds up to 1 + 2^-6.
    np.testing.assert_array_equal(back[:5], [1.0, -2.5, 3.140625, 1.0, 1.015625])
    assert np.abs(back - values).max() <= np.abs(values).max() * 2**-8
    random = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    once = mtc.bf16_bits_to_f32(mtc.f32_to_bf16_bits(random))
    assert (np.abs(once - random) <= np.abs(random) * 2**-8).all()  # within half a bf16 step
    assert np.array_equal(mtc.bf16_bits_to_f32(mtc.f32_to_bf16_bits(once)), once)  # idempotent


def test_written_values_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(4, dtype=np.float32)}
    for dtype, atol in (("f32", 0.0), ("f16", 1e-3), ("bf16", 1e-2)):
        path = tmp_path / f"{dtype}.safetensors"
        mtc.write_safetensors(path, tensors, dtype)
        back = mtc.read_safetensors(path)
        for name, value in tensors.items():
            np.testing.assert_allclose(back[name], value, atol=atol, rtol=atol)


def test_same_seed_same_weights_and_atomic_refusal(tmp_path: Path, qwen3_tokenizer_dir: Path) -> None:
    a = mtc.make_checkpoint(tmp_path / "a", arch="qwen3moe", dtype="f32", tokenizer_dir=qwen3_tokenizer_dir)
    b = mtc.make_checkpoint(tmp_path / "b", arch="qwen3moe", dtype="f32", tokenizer_dir=qwen3_tokenizer_dir)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        mtc.make_checkpoint(a, arch="qwen2", tokenizer_dir=qwen3_tokenizer_dir)
    assert not list(tmp_path.glob(".*incomplete"))


def test_cli_sizes_a_benchmark_checkpoint(tmp_path: Path, qwen3_tokenizer_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(mtc, "default_tokenizer_dir", lambda: qwen3_tokenizer_dir)
    out = tmp_path / "bench"
    assert mtc.main([str(out), "--arch", "qwen2", "--dtype", "f16", "--hidden", "128", "--layers", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["torch_dtype"]) == (128, 3, "float16")
    header, _ = parse_header(out / "model.safetensors")
    assert "model.layers.2.mlp.down_proj.weight" in header
