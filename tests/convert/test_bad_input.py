"""Bad checkpoints fail with a specific error naming the problem, and leave no output behind."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from make_tiny_checkpoints import make_checkpoint

from edge_qwen import cli
from edge_qwen.convert import convert
from edge_qwen.convert import tensors as tensors_module
from edge_qwen.errors import (
    CheckpointError,
    SafetensorsError,
    ShapeMismatchError,
    TokenizerError,
    UnsupportedArchitectureError,
)


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path: Path) -> Path:
    """A private, writable copy of a tiny Qwen2 checkpoint to break."""
    return Path(shutil.copytree(tiny_checkpoint("qwen2", dtype="f16"), tmp_path / "ckpt"))


@pytest.fixture
def sharded(tiny_checkpoint, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint("qwen2", dtype="f16", shards=2), tmp_path / "ckpt"))


def convert_fails(src: Path, tmp_path: Path, error: type[Exception], match: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        convert(src, out, evaluate=False, quiet=True)
    assert not out.exists() or list(out.iterdir()) == [], "a failed conversion must leave nothing"


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_missing_config(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "config.json").unlink()
    convert_fails(checkpoint, tmp_path, CheckpointError, "no config.json")


def test_unsupported_architecture_names_the_supported_list(checkpoint: Path, tmp_path: Path) -> None:
    edit_config(checkpoint, architectures=["LlamaForCausalLM"])
    convert_fails(checkpoint, tmp_path, UnsupportedArchitectureError, "LlamaForCausalLM.*Qwen3MoeForCausalLM")


def test_truncated_safetensors(checkpoint: Path, tmp_path: Path) -> None:
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    convert_fails(checkpoint, tmp_path, SafetensorsError, "truncated")


def test_header_offsets_past_the_end(checkpoint: Path, tmp_path: Path) -> None:
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin + 10**9, end + 10**9]
    raw = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    convert_fails(checkpoint, tmp_path, SafetensorsError, "ends at byte")


def test_missing_shard(sharded: Path, tmp_path: Path) -> None:
    next(sharded.glob("model-00002-of-*.safetensors")).unlink()
    convert_fails(sharded, tmp_path, CheckpointError, "shard .* is missing")


def test_tensor_shape_not_matching_config(checkpoint: Path, tmp_path: Path) -> None:
    cfg = json.loads((checkpoint / "config.json").read_text())
    edit_config(checkpoint, intermediate_size=cfg["intermediate_size"] * 2)
    convert_fails(checkpoint, tmp_path, ShapeMismatchError, "config.json implies")


def test_tokenizer_larger_than_vocab_size(tmp_path: Path, qwen3_tokenizer_dir: Path) -> None:
    """config.json and the weights agree on 151,000 tokens, but the tokenizer has ids above them."""
    small = make_checkpoint(
        tmp_path / "ckpt", arch="qwen2", dtype="f16", tokenizer_dir=qwen3_tokenizer_dir, vocab_size=151000
    )
    convert_fails(small, tmp_path, TokenizerError, "does not fit vocab_size 151000")


def test_failure_while_writing_leaves_no_file(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    original = tensors_module.PlannedTensor.tofile

    def flaky(self, fout):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full (simulated)")
        original(self, fout)

    monkeypatch.setattr(tensors_module.PlannedTensor, "tofile", flaky)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        convert(checkpoint, out, evaluate=False, quiet=True)
    assert [p.name for p in out.iterdir()] == []


def test_cli_reports_errors_as_json(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (checkpoint / "config.json").unlink()
    code = cli.main(["convert", str(checkpoint), "-o", str(tmp_path / "out"), "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == 2
    assert error["type"] == "CheckpointError" and "config.json" in error["message"]


def test_not_a_folder_nor_repo_id(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a hub repo id"):
        convert(tmp_path / "nope" / "deeper", tmp_path / "out", evaluate=False)
