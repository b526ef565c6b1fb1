"""Hybrid Qwen checkpoints (Qwen3.5, Qwen3.5-MoE, Qwen3-Next) convert to GGUFs that compute the
model: llama.cpp's logits on the converted file against tests/numpy_reference_hybrid.py, an
independent float64 forward pass written from transformers' model definitions (validated against
transformers 5.25 to ~1e-6 relative). The tiny checkpoints have 3 Gated DeltaNet layers and one
gated-attention layer, 2 key heads for 4 value heads (so the value-head regrouping matters), real
vocabularies, and an MTP head.

Measured here (F32 GGUFs, 16 tokens): max |Δlogit| / max |logit| 2.6e-5 (Qwen3.5), 3.9e-5
(Qwen3.5-MoE), 8e-6 (Qwen3-Next) — ggml's f32 delta-rule kernels against float64.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from numpy_reference_hybrid import reference_logits

from edge_qwen import cli
from edge_qwen.convert import convert
from edge_qwen.errors import CheckpointError, ShapeMismatchError
from edge_qwen.gguf_info import gguf_info
from edge_qwen.logits import token_logits

pytestmark = [pytest.mark.real]

F32_TOLERANCE = 1e-4
# F16: measured 2.3e-2 here, and llama.cpp's own converter's F16 file of the same checkpoint gives
# bit-identical logits: ggml rounds the activations to f16 for f16 matmuls, and the L2-normalised
# delta rule passes that on more than a dense block does (dense: ~1e-3).
F16_TOLERANCE = 5e-2


def converted(checkpoint: Path, tmp_path: Path, outtype: str = "f32", **options) -> Path:
    result = convert(checkpoint, tmp_path / "out", outtype=outtype, evaluate=False, quiet=True, **options)
    return result.gguf


def assert_same_logits(checkpoint: Path, model: Path, tokens: list[int], tolerance: float) -> None:
    expected = reference_logits(checkpoint, tokens)
    actual = token_logits(model, tokens, threads=2)
    scale = np.abs(expected).max()
    error = np.abs(actual - expected).max()
    assert error <= tolerance * scale, (
        f"max |llama.cpp - reference| {error:.3g}, allowed {tolerance} x {scale:.3g}"
    )
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all(), "greedy tokens differ"


def tokens_for(arch: str, qwen35_tokens: list[int], tokens: list[int]) -> list[int]:
    return tokens if arch == "qwen3next" else qwen35_tokens  # Qwen3-Next keeps the Qwen3 vocabulary


def metadata(model: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(model)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith(("GGUF.", "tokenizer."))}


def tensor_names(model: Path) -> set[str]:
    return {t.name for t in gguf.GGUFReader(model).tensors}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "dtype", "fused"),
    [
        ("qwen35", "f32", False),
        ("qwen35moe", "f32", False),  # experts saved one by one, as transformers does
        ("qwen35moe", "bf16", True),  # fused gate_up_proj (E, 2F, D), as the hub releases are
        ("qwen3next", "f32", False),  # fused in_proj_qkvz / in_proj_ba, a transformers 4 config
    ],
)
def test_f32_gguf_matches_reference(
    arch: str, dtype: str, fused: bool, tiny_hybrid, qwen35_tokens, tokens, tmp_path: Path
) -> None:
    checkpoint = tiny_hybrid(arch, dtype=dtype, fused_experts=fused)
    model = converted(checkpoint, tmp_path)
    assert_same_logits(checkpoint, model, tokens_for(arch, qwen35_tokens, tokens), F32_TOLERANCE)


@pytest.mark.slow
def test_f16_gguf_stays_close(tiny_hybrid, qwen35_tokens, tmp_path: Path) -> None:
    checkpoint = tiny_hybrid("qwen35", dtype="bf16")
    assert_same_logits(checkpoint, converted(checkpoint, tmp_path, "f16"), qwen35_tokens, F16_TOLERANCE)


def test_hybrid_metadata_is_what_llama_cpp_reads(tiny_hybrid, tmp_path: Path) -> None:
    model = converted(tiny_hybrid("qwen35"), tmp_path)
    meta = metadata(model)
    assert meta["general.architecture"] == "qwen35"
    assert meta["qwen35.block_count"] == 5  # 4 trunk layers + the MTP block
    assert meta["qwen35.nextn_predict_layers"] == 1
    assert meta["qwen35.attention.recurrent_layers"] == [True, True, True, False, False]
    assert meta["qwen35.full_attention_interval"] == 4
    assert meta["qwen35.rope.dimension_count"] == 8  # head_dim 32 x partial_rotary_factor 0.25
    assert meta["qwen35.rope.dimension_sections"] == [2, 1, 1, 0]
    assert meta["qwen35.rope.freq_base"] == 10000000.0
    assert (meta["qwen35.ssm.conv_kernel"], meta["qwen35.ssm.state_size"]) == (4, 16)
    assert (meta["qwen35.ssm.group_count"], meta["qwen35.ssm.time_step_rank"]) == (2, 4)
    assert meta["qwen35.ssm.inner_size"] == 64
    assert meta["qwen35.attention.key_length"] == 32
    names = tensor_names(model)
    assert {"blk.0.ssm_a", "blk.0.ssm_dt.bias", "blk.0.ssm_conv1d.weight", "blk.0.attn_qkv.weight"} <= names
    assert {"blk.3.attn_q.weight", "blk.3.attn_gate.weight"} & names == {"blk.3.attn_q.weight"}
    assert {"blk.4.nextn.eh_proj.weight", "blk.4.nextn.enorm.weight", "blk.4.nextn.hnorm.weight"} <= names
    info = gguf_info(model)
    assert info["hybrid"] == {"recurrent_layers": 3, "attention_layers": 1, "mtp_layers": 1}


def test_transforms_follow_llama_cpp(tiny_hybrid, tmp_path: Path) -> None:
    """A = -exp(A_log) with value heads regrouped from grouped-by-key to tiled, 1 + w norms, a
    plain gated norm, the conv kernel squeezed to (channels, kernel)."""
    from make_tiny_checkpoints import read_checkpoint

    checkpoint = tiny_hybrid("qwen35")
    source = read_checkpoint(checkpoint)
    model = gguf.GGUFReader(converted(checkpoint, tmp_path))
    out = {t.name: np.array(t.data) for t in model.tensors}
    a_log = source["model.layers.0.linear_attn.A_log"]  # 4 value heads: key head 0 owns 0, 1
    np.testing.assert_allclose(out["blk.0.ssm_a"], -np.exp(a_log[[0, 2, 1, 3]]), rtol=1e-6)
    np.testing.assert_allclose(
        out["blk.0.attn_norm.weight"], 1 + source["model.layers.0.input_layernorm.weight"]
    )
    np.testing.assert_array_equal(
        out["blk.0.ssm_norm.weight"], source["model.layers.0.linear_attn.norm.weight"]
    )
    conv = source["model.layers.0.linear_attn.conv1d.weight"][:, 0, :]
    assert out["blk.0.ssm_conv1d.weight"].shape == conv.shape
    np.testing.assert_array_equal(out["blk.0.ssm_conv1d.weight"][:64], conv[:64])  # q, k channels unchanged


def test_no_mtp_drops_the_head_and_computes_the_same(tiny_hybrid, qwen35_tokens, tmp_path: Path) -> None:
    checkpoint = tiny_hybrid("qwen35")
    model = converted(checkpoint, tmp_path, mtp="drop")
    meta = metadata(model)
    assert meta["qwen35.block_count"] == 4 and "qwen35.nextn_predict_layers" not in meta
    assert not any(name.startswith("blk.4.") for name in tensor_names(model))
    assert_same_logits(checkpoint, model, qwen35_tokens[:6], F32_TOLERANCE)


def test_mtp_only_writes_the_head_alone(tiny_hybrid, tmp_path: Path) -> None:
    model = converted(tiny_hybrid("qwen35moe"), tmp_path, mtp="only")
    assert model.name == "0-mtp-f32.gguf" or model.name.endswith("-mtp-f32.gguf")
    names = tensor_names(model)
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.4.nextn.eh_proj.weight"} <= names
    assert "blk.4.ffn_gate_exps.weight" in names and "blk.4.ffn_gate_inp_shexp.weight" in names
    assert not any(n.startswith(("blk.0.", "blk.1.", "blk.2.", "blk.3.")) for n in names)
    assert metadata(model)["qwen35moe.nextn_predict_layers"] == 1


def test_cli_flags_choose_the_mtp_mode(
    tiny_hybrid, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tiny_hybrid("qwen35")
    argv = ["convert", str(src), "-o", str(tmp_path / "o"), "--outtype", "f32", "--no-eval", "--json"]
    assert cli.main([*argv, "--no-mtp"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert metadata(Path(out["gguf"]))["qwen35.block_count"] == 4
    assert cli.main([*argv, "--mtp-only"]) == 0
    assert json.loads(capsys.readouterr().out)["gguf"].endswith("-mtp-f32.gguf")


# --- bad input: refused with the key and the way out, nothing written --------------------------


@pytest.fixture
def writable(tiny_hybrid, tmp_path: Path):
    def copy(arch: str = "qwen35", **kwargs) -> Path:
        return Path(shutil.copytree(tiny_hybrid(arch, **kwargs), tmp_path / "ckpt"))

    return copy


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def convert_fails(src: Path, tmp_path: Path, error: type[Exception], match: str, **options) -> None:
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        convert(src, out, outtype="f32", evaluate=False, quiet=True, **options)
    assert not out.exists() or list(out.iterdir()) == [], "a failed conversion must leave nothing"


def test_layer_types_of_the_wrong_length(writable, tmp_path: Path) -> None:
    src = writable()
    edit_config(src, layer_types=["linear_attention", "full_attention"])
    convert_fails(src, tmp_path, CheckpointError, "layer_types has 2 entries but num_hidden_layers is 4")


def test_layer_types_that_disagree_with_the_weights(writable, tmp_path: Path) -> None:
    src = writable()
    edit_config(src, layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention"])
    convert_fails(src, tmp_path, CheckpointError, "layer 0 is 'full_attention'.*fix layer_types")


def test_unknown_layer_kind(writable, tmp_path: Path) -> None:
    src = writable()
    edit_config(src, layer_types=["mamba", "linear_attention", "linear_attention", "full_attention"])
    convert_fails(src, tmp_path, CheckpointError, r"layer_types names \['mamba'\]")


def test_declared_mtp_head_missing(writable, tmp_path: Path) -> None:
    src = writable(mtp=False)
    edit_config(src, mtp_num_hidden_layers=1)
    convert_fails(src, tmp_path, CheckpointError, "mtp_num_hidden_layers=1.*--no-mtp")
    assert convert(src, tmp_path / "ok", outtype="f32", evaluate=False, quiet=True, mtp="drop").gguf.is_file()


def test_mtp_only_without_a_head(writable, tmp_path: Path) -> None:
    convert_fails(writable(mtp=False), tmp_path, CheckpointError, "no MTP head", mtp="only")


def test_head_sizes_llama_cpp_cannot_run(writable, tmp_path: Path) -> None:
    src = writable()
    edit_config(src, linear_value_head_dim=32)
    convert_fails(src, tmp_path, CheckpointError, "linear_key_head_dim=16 != linear_value_head_dim=32")


def test_rope_sections_that_miss_the_rotary_width(writable, tmp_path: Path) -> None:
    src = writable()
    cfg = json.loads((src / "config.json").read_text())
    edit_config(src, rope_parameters={**cfg["rope_parameters"], "mrope_section": [11, 11, 10]})
    convert_fails(src, tmp_path, CheckpointError, r"mrope_section \[11, 11, 10\].*\(4\)")


def test_weights_of_another_head_layout(writable, tmp_path: Path) -> None:
    src = writable()
    edit_config(src, linear_num_value_heads=2)
    convert_fails(src, tmp_path, ShapeMismatchError, "in_proj_qkv.weight: shape")


def test_cli_reports_json(writable, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = writable()
    edit_config(src, layer_types=["linear_attention"])
    code = cli.main(["convert", str(src), "-o", str(tmp_path / "o"), "--no-eval", "--json"])
    assert code != 0
    error = json.loads(capsys.readouterr().out)["error"]
    assert "layer_types" in error["message"]


def test_omni_checkpoints_are_refused_with_the_way_out(writable, tmp_path: Path) -> None:
    """Qwen3.5's vision checkpoints convert (tests/convert/test_qwen35_vision.py); Qwen3-Omni not yet."""
    from edge_qwen.errors import MultimodalNotSupportedError

    src = writable()
    edit_config(src, architectures=["Qwen3OmniMoeForConditionalGeneration"])
    convert_fails(src, tmp_path, MultimodalNotSupportedError, "not supported yet.*convert_hf_to_gguf")
