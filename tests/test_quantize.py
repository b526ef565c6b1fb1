"""Quantizing GGUF files in-process with llama.cpp, refusing to re-quantize unless asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from edge_qwen import cli
from edge_qwen.errors import GGUFFileError, QuantizeError, RequantizeRefusedError
from edge_qwen.logits import token_logits, tokenize
from edge_qwen.manifest import read_manifest, write_manifest
from edge_qwen.quantize import (
    QUANT_TYPES,
    QuantizeResult,
    default_output_name,
    parse_quant_list,
    quant_type,
    quantize,
)

PROMPT = "def fibonacci(n):\n    "


@pytest.fixture(scope="module")
def q8_0(real_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuantizeResult]:
    """The real Q4_K_M file re-quantized to Q8_0 (done once for this module, 645 MiB, removed after)."""
    out_dir = tmp_path_factory.mktemp("q8_0")
    result = quantize(real_gguf, "q8_0", out_dir=out_dir, threads=2, allow_requantize=True, quiet=True)
    yield result
    result.path.unlink()


# --- the type table -----------------------------------------------------------------------------


def test_type_names_are_case_insensitive_and_map_to_llama_cpp_ftypes() -> None:
    assert quant_type("q4_k_m") is quant_type("Q4_K_M") is QUANT_TYPES["Q4_K_M"]
    for row in QUANT_TYPES.values():
        assert int(row.ftype) == getattr(llama_cpp, f"LLAMA_FTYPE_{row.ftype.name}")
    assert QUANT_TYPES["Q8_0"].bits_per_weight == 8.5
    assert [q.name for q in parse_quant_list("q4_k_m, Q8_0,q4_k_m")] == ["Q4_K_M", "Q8_0"]


def test_unknown_type_names_the_choices() -> None:
    with pytest.raises(QuantizeError, match="Q4_K_M"):
        quant_type("q3_xl")


def test_default_output_name_drops_the_precision_suffix() -> None:
    assert default_output_name("out/qwen2.5-0.5b-f16.gguf", "q4_k_m") == "qwen2.5-0.5b-Q4_K_M.gguf"
    assert default_output_name("Qwen3-0.6B-BF16.gguf", "q8_0") == "Qwen3-0.6B-Q8_0.gguf"
    assert default_output_name("model.gguf", "q6_k") == "model-Q6_K.gguf"


# --- refusing and validating --------------------------------------------------------------------


def test_already_quantized_input_is_refused_and_nothing_is_written(real_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(RequantizeRefusedError) as err:
        quantize(real_gguf, "q4_0", out_dir=tmp_path, quiet=True)
    message = str(err.value)
    assert "--allow-requantize" in message and "allow_requantize=True" in message
    assert "MOSTLY_Q4_K_M" in message and "worse" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [0, 20, 3_000_000, 10_000_000])
def test_truncated_input_raises_gguf_file_error_and_writes_nothing(
    real_gguf: Path, tmp_path: Path, size: int
) -> None:
    cut = tmp_path / "in" / "cut.gguf"
    cut.parent.mkdir()
    with real_gguf.open("rb") as fh:
        cut.write_bytes(fh.read(size))
    out_dir = tmp_path / "out"
    with pytest.raises(GGUFFileError):
        quantize(cut, "q8_0", out_dir=out_dir, allow_requantize=True, quiet=True)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_llama_cpp_failure_is_a_quantize_error_quoting_its_log_and_leaves_nothing(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny-f32.gguf"
    writer = gguf.GGUFWriter(tiny, "not_a_real_arch")  # valid GGUF, architecture llama.cpp lacks
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tensor("token_embd.weight", np.zeros((8, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out_dir = tmp_path / "out"
    with pytest.raises(QuantizeError, match="unknown model architecture: 'not_a_real_arch'"):
        quantize(tiny, "q8_0", out_dir=out_dir, quiet=True)
    assert list(out_dir.iterdir()) == []  # the temporary output was removed


def test_output_may_not_overwrite_the_input(real_gguf: Path) -> None:
    with pytest.raises(QuantizeError, match="overwrite the input"):
        quantize(real_gguf, "q8_0", real_gguf, allow_requantize=True, quiet=True)


# --- a real re-quantization ---------------------------------------------------------------------


def test_requantized_q8_0_has_q8_0_weights_and_a_manifest(q8_0: QuantizeResult, real_gguf: Path) -> None:
    assert q8_0.path.name == "qwen2.5-coder-0.5b-instruct-q4_k_m-Q8_0.gguf"
    assert q8_0.requantized and q8_0.quant_type == "Q8_0"
    assert q8_0.size == q8_0.path.stat().st_size > real_gguf.stat().st_size  # 8.5 bpw > Q4_K_M's mix
    assert [p.name for p in q8_0.path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files
    manifest = read_manifest(q8_0.path)
    assert manifest.sha256 == q8_0.sha256 and len(manifest.sha256) == 64
    assert manifest.quant_type == "Q8_0" and manifest.size == q8_0.size
    assert manifest.source == str(real_gguf.resolve())
    assert set(manifest.tools) == {"edge_qwen", "llama_cpp_python", "gguf"}
    assert manifest.tools["llama_cpp_python"] == llama_cpp.__version__
    assert manifest.elapsed_s and manifest.elapsed_s > 0 and manifest.quality is None


def test_requantized_q8_0_loads_and_predicts_like_the_original(q8_0: QuantizeResult, real_gguf: Path) -> None:
    tokens = tokenize(real_gguf, PROMPT)
    original = token_logits(real_gguf, tokens, threads=2)
    requantized = token_logits(q8_0.path, tokens, threads=2)
    assert requantized.shape == (len(tokens), 151936)
    assert np.isfinite(requantized).all()
    assert requantized[-1].argmax() == original[-1].argmax()  # same greedy next token


def test_write_manifest_accepts_extra_fields_and_a_source_dict(q8_0: QuantizeResult) -> None:
    data = write_manifest(
        q8_0.path,
        quant_type="Q8_0",
        source={"repo_id": "Qwen/Qwen2.5-Coder-0.5B-Instruct"},
        sha256=q8_0.sha256,
        reference="parent.gguf",
    )
    assert read_manifest(q8_0.path) == data
    assert data.source == {"repo_id": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}
    assert data.extra["reference"] == "parent.gguf"


# --- the command line ---------------------------------------------------------------------------


def _run_json(argv: list[str]) -> tuple[int, dict]:
    out = StringIO()
    with redirect_stdout(out):
        code = cli.main(argv)
    return code, json.loads(out.getvalue())


def test_cli_refusal_is_a_json_error(real_gguf: Path, tmp_path: Path) -> None:
    code, data = _run_json(["quantize", str(real_gguf), "-q", "q8_0", "-o", str(tmp_path), "--json"])
    assert code == 2
    assert data["error"]["type"] == "RequantizeRefusedError"
    assert "--allow-requantize" in data["error"]["message"]


def test_cli_json_lists_each_output_with_the_documented_keys(real_gguf: Path, tmp_path: Path) -> None:
    code, data = _run_json(
        [
            "quantize",
            str(real_gguf),
            "-q",
            "Q8_0",
            "-o",
            str(tmp_path),
            "--allow-requantize",
            "--threads",
            "2",
            "--json",
        ]
    )
    assert code == 0
    assert set(data) == {"input", "outputs", "evaluated", "imatrix"} and data["evaluated"] is False
    assert data["imatrix"] is None  # no --imatrix
    (out,) = data["outputs"]
    assert set(out) == {
        "path",
        "quant_type",
        "source",
        "size",
        "sha256",
        "elapsed_s",
        "manifest_path",
        "requantized",
        "quality",
    }
    assert Path(out["path"]).is_file() and Path(out["manifest_path"]).is_file()
    Path(out["path"]).unlink()  # 645 MiB; pytest keeps tmp folders of recent runs


def test_a_projector_is_refused_with_the_way_out(tiny_vl_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """llama.cpp's quantizer takes language models only (on an mmproj some types abort it)."""
    _, mmproj = tiny_vl_pair
    with pytest.raises(QuantizeError, match="projector .*--mmproj-type q8_0"):
        quantize(mmproj, "iq4_nl", tmp_path / "p.gguf", quiet=True)
    assert not (tmp_path / "p.gguf").exists()
