"""Entries with no published GGUF: ``pull`` downloads the HF checkpoint and converts it locally,
after which the name resolves like any other cached model."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import gguf
import pytest

from edge_qwen.errors import ModelNotCachedError
from edge_qwen.registry import pull, remove, resolve_model
from edge_qwen.registry.catalog import parse_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_tiny_checkpoints import make_checkpoint  # noqa: E402

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
ENTRY = {
    "family": "qwen3",
    "architecture": "Qwen3ForCausalLM",
    "gguf_arch": "qwen3",
    "params_total": 12_000_000,
    "native_context": 4096,
    "max_context": None,
    "license": "apache-2.0",
    "tasks": ["chat"],
    "thinking": True,
    "sampling": {"thinking": "qwen3-thinking", "non_thinking": "qwen3-non-thinking"},
    "hf_checkpoint": "Qwen/Tiny-Qwen3-Checkpoint",
    "arch": {
        "layers": 2,
        "hidden": 64,
        "heads": 4,
        "kv_heads": 2,
        "head_dim": 32,
        "vocab": 151936,
        "tied_embeddings": True,
    },
    "gguf": {},
}


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qwen3_tokenizer_dir: Path):
    """A registry whose only entry has no GGUF, and its checkpoint in the (offline) hub cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path / "cache"))
    repo = Path(constants.HF_HUB_CACHE) / "models--Qwen--Tiny-Qwen3-Checkpoint"
    shutil.rmtree(repo, ignore_errors=True)
    make_checkpoint(repo / "snapshots" / COMMIT, arch="qwen3", tokenizer_dir=qwen3_tokenizer_dir)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return parse_registry({"schema": 1, "models": {"tiny-qwen3": ENTRY}})


def test_pull_converts_the_checkpoint_then_the_name_resolves(registry) -> None:
    with pytest.raises(ModelNotCachedError, match="edge-qwen pull tiny-qwen3:q8_0"):
        resolve_model("tiny-qwen3:q8_0", registry)

    result = pull("tiny-qwen3:q8_0", registry=registry, progress=False)

    assert result["source"] == "checkpoint" and result["downloaded"]
    path = resolve_model("tiny-qwen3:q8_0", registry)
    assert str(path) == result["path"]
    assert gguf.GGMLQuantizationType.Q8_0 in {t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert [p.name for p in path.parent.glob("*.gguf")] == [path.name], "the F16 intermediate is not kept"
    assert pull("tiny-qwen3:q8_0", registry=registry)["source"] == "cache"

    removed = remove("tiny-qwen3:q8_0", registry)["removed"]
    assert str(path) in removed and not path.exists()


def test_a_quant_nobody_makes_is_refused_before_anything_is_fetched(tmp_path: Path, monkeypatch) -> None:
    """`pull qwen3-0.6b:q2_k`: no Q2_K GGUF is published and edge-qwen's quantizer makes no Q2_K, so
    the answer names what is published and what can be made — before a checkpoint is downloaded."""
    from edge_qwen.errors import UnknownModelError
    from edge_qwen.registry import load_registry

    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path))
    with pytest.raises(UnknownModelError, match=r"no q2_k GGUF is published \(published: q8_0\)") as info:
        pull("qwen3-0.6b:q2_k", registry=load_registry(), progress=False)
    assert "q4_k_m" in str(info.value) and not any(tmp_path.iterdir())
