"""Integrity on load: a pulled model whose file changed on disk is refused with the way out
(``pull --force``), and checking costs a stat on the hot path (re-hash only when size/mtime moved)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from fakehub import FakeHub, sha, tiny_registry

import edge_qwen.registry.sources as sources
import edge_qwen.registry.store as store
from edge_qwen import cli
from edge_qwen.errors import ModelFileChangedError
from edge_qwen.registry import pull, resolve_model


def corrupt(path: Path) -> None:
    """Flip one byte in the tensor data, keeping the size (as bit rot or a stray write would)."""
    real = path.resolve()
    data = bytearray(real.read_bytes())
    data[-10] ^= 0xFF
    real.write_bytes(bytes(data))


def cli_json(*argv: str) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main([*argv, "--json"])
    return code, json.loads(out.getvalue())


@pytest.mark.parametrize("registered_sha", [True, False], ids=["registry-sha256", "pull-time-sha256"])
def test_a_changed_file_is_refused_and_pull_force_fetches_it_again(
    fake_hub: FakeHub, tiny_bytes: bytes, registered_sha: bool
) -> None:
    registry = tiny_registry(sha(tiny_bytes) if registered_sha else None, len(tiny_bytes))
    path = Path(pull("tiny", source="hub", registry=registry, progress=False)["path"])
    assert resolve_model("tiny", registry) == path
    corrupt(path)
    with pytest.raises(ModelFileChangedError, match=r"`edge-qwen pull tiny:q4_k_m --force`"):
        resolve_model("tiny", registry)
    again = pull("tiny", source="hub", registry=registry, progress=False, force=True)
    assert again["downloaded"] and Path(again["path"]).read_bytes() == tiny_bytes
    assert resolve_model("tiny", registry) == path


def test_the_hot_path_hashes_only_when_size_or_mtime_changed(
    fake_hub: FakeHub, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tiny_registry(sha(tiny_bytes), len(tiny_bytes))
    path = Path(pull("tiny", source="hub", registry=registry, progress=False)["path"])
    hashed: list[Path] = []
    real_sha = sources.sha256_of
    monkeypatch.setattr(sources, "sha256_of", lambda p: hashed.append(p) or real_sha(p))
    for _ in range(3):
        resolve_model("tiny", registry)
    assert hashed == []  # unchanged: a stat and a 4-byte read, no hashing
    st = path.resolve().stat()
    os.utime(path.resolve(), ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched, same bytes
    resolve_model("tiny", registry)
    resolve_model("tiny", registry)
    assert len(hashed) == 1  # re-hashed once, found equal, remembered


def test_pull_verify_rehashes_and_reports(
    fake_hub: FakeHub, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tiny_registry(sha(tiny_bytes), len(tiny_bytes))
    monkeypatch.setattr(store, "load_registry", lambda path=None: registry)
    code, data = cli_json("pull", "tiny", "--verify")
    assert code == 2 and data["error"]["type"] == "ModelNotCachedError"
    path = Path(pull("tiny", source="hub", registry=registry, progress=False)["path"])
    code, data = cli_json("pull", "tiny", "--verify")
    assert code == 0 and data["verified"] and data["path"] == str(path)
    corrupt(path)
    code, data = cli_json("pull", "tiny", "--verify")
    assert code == 2 and data["error"]["type"] == "ModelFileChangedError"
    assert "pull tiny:q4_k_m --force" in data["error"]["message"]
    code, data = cli_json("run", "tiny", "hello")  # run (and serve) resolve through the same check
    assert code == 2 and data["error"]["type"] == "ModelFileChangedError"
