"""The importance matrix, computed in-process: the first layer's entry is exactly the mean square of
the normed embeddings (computed here with numpy from the GGUF's own tensors), experts count the
tokens routed to them, the file is llama.cpp's format and is reused while model and text are
unchanged, and the quantizer rounds by it. Tiny random Qwen3.5 / Qwen3.5-MoE GGUFs with the real
vocabulary. (benchmarks/anchor_imatrix.py compares it to llama-imatrix on the real 0.5B.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge_qwen import imatrix
from edge_qwen.cli import main
from edge_qwen.errors import QuantizeError
from edge_qwen.logits import tokenize
from edge_qwen.quantize import quantize

CHUNK = 64


def tensor(reader: gguf.GGUFReader, name: str) -> np.ndarray:
    (found,) = [t for t in reader.tensors if t.name == name]
    return np.asarray(found.data, dtype=np.float64)


def test_the_first_layer_sees_the_normed_embeddings(hybrid_gguf: Callable[..., Path]) -> None:
    model = hybrid_gguf("qwen35")
    result = imatrix.compute_imatrix(model, chunk_size=CHUNK, max_chunks=2)
    reader = gguf.GGUFReader(model)
    eps = float(reader.get_field("qwen35.attention.layer_norm_rms_epsilon").contents())
    tokens = tokenize(model, imatrix.calibration_text())[: 2 * CHUNK]
    x = tensor(reader, "token_embd.weight")[tokens]
    normed = (
        x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps) * tensor(reader, "blk.0.attn_norm.weight")
    )
    expected = np.mean(normed**2, axis=0)
    # every projection reading the first norm's output has this importance (here the linear
    # attention's fused qkv and its gate)
    readers = [n for n in result.sums if n.startswith("blk.0.") and result.means(n).size == expected.size]
    assert {"blk.0.attn_qkv.weight", "blk.0.attn_gate.weight"} <= set(readers)
    for name in readers[:2]:
        assert result.counts[name].tolist() == [2 * CHUNK]
        np.testing.assert_allclose(result.means(name), expected, rtol=2e-4, atol=1e-7)
    assert result.chunks == 2


def test_experts_count_the_tokens_routed_to_them(hybrid_gguf: Callable[..., Path]) -> None:
    model = hybrid_gguf("qwen35moe")
    result = imatrix.compute_imatrix(model, chunk_size=CHUNK, max_chunks=2)
    reader = gguf.GGUFReader(model)
    n_expert = int(reader.get_field("qwen35moe.expert_count").contents())
    top_k = int(reader.get_field("qwen35moe.expert_used_count").contents())
    experts = [n for n in result.sums if "_exps." in n]
    assert experts and all(result.sums[n].shape[0] == n_expert for n in experts)
    for name in experts:
        assert int(result.counts[name].sum()) == 2 * CHUNK * top_k  # every token, once per chosen expert
    gate = next(n for n in experts if "gate_exps" in n)
    seen = result.counts[gate] > 0
    assert (
        seen.any() and (result.means(gate).reshape(n_expert, -1)[~seen] == 1).all()
    )  # unseen: no preference


def test_it_is_llama_cpp_s_format_beside_the_model_and_reused_until_something_changes(
    hybrid_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    model = tmp_path / "tiny.gguf"
    shutil.copy(hybrid_gguf("qwen35"), model)
    path, first, reused = imatrix.ensure_imatrix(model, chunk_size=CHUNK, max_chunks=1)
    assert path == tmp_path / "tiny.imatrix.gguf" and not reused
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.type").contents() == "imatrix"
    assert reader.get_field("imatrix.chunk_size").contents() == CHUNK
    assert {t.name for t in reader.tensors} >= {
        "blk.0.attn_qkv.weight.in_sum2",
        "blk.0.attn_qkv.weight.counts",
    }
    again, second, reused = imatrix.ensure_imatrix(model, chunk_size=CHUNK, max_chunks=1)
    assert reused and again == path
    assert all(np.array_equal(first.means(n), second.means(n)) for n in first.sums)
    path.write_bytes(b"GGUF" + b"\0" * 20)  # a truncated file is recomputed, never read
    assert not imatrix.ensure_imatrix(model, chunk_size=CHUNK, max_chunks=1)[2]
    with model.open("r+b") as f:  # another model under the same name: recomputed
        f.seek(-4, 2)
        f.write(b"\1\2\3\4")
    assert not imatrix.ensure_imatrix(model, chunk_size=CHUNK, max_chunks=1)[2]


def test_the_quantizer_rounds_by_it_and_the_manifest_says_so(
    hybrid_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    model = hybrid_gguf("qwen35")
    weights = imatrix.compute_imatrix(model, chunk_size=CHUNK, max_chunks=2).quantizer_input()
    plain = quantize(model, "q4_0", tmp_path / "plain.gguf", quiet=True)
    weighted = quantize(
        model, "q4_0", tmp_path / "weighted.gguf", quiet=True, imatrix=weights, imatrix_source={"chunks": 2}
    )
    assert plain.sha256 != weighted.sha256
    manifest = json.loads(weighted.manifest_path.read_text())
    assert manifest["imatrix"] == {"chunks": 2} and "imatrix" not in json.loads(
        plain.manifest_path.read_text()
    )
    name = next(iter(weights))
    with pytest.raises(QuantizeError, match=f"{name}.*NaN or infinite"):
        quantize(
            model,
            "q4_0",
            tmp_path / "bad.gguf",
            quiet=True,
            imatrix={**weights, name: weights[name] * np.nan},
        )
    assert not (tmp_path / "bad.gguf").exists()


@pytest.mark.slow
def test_the_command_computes_it_once_then_reuses_it(
    hybrid_gguf: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "tiny.gguf"
    shutil.copy(hybrid_gguf("qwen35"), model)
    for reused in (False, True):
        assert (
            main(["quantize", str(model), "-q", "q4_0", "--imatrix", "--json", "-o", str(tmp_path / "out")])
            == 0
        )
        out = json.loads(capsys.readouterr().out)
        assert out["imatrix"]["reused"] is reused and out["imatrix"]["path"] == str(
            tmp_path / "tiny.imatrix.gguf"
        )
    given = main(
        ["quantize", str(model), "-q", "q4_0", "--imatrix", str(tmp_path / "tiny.imatrix.gguf"), "--json"]
    )
    assert given == 0 and json.loads(capsys.readouterr().out)["imatrix"]["chunks"] >= 1
