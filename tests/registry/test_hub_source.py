"""The hub source through the real huggingface_hub client against a local server with the hub's
URL layout: verified downloads into the HF cache, resume after an interrupted transfer, checksum
mismatches rejected and removed, and offline behaviour."""

from __future__ import annotations

import pytest
from fakehub import COMMIT, FILENAME, REPO, FakeHub, sha, tiny_registry

from edge_qwen.errors import ChecksumError, ModelNotCachedError
from edge_qwen.registry import pull, remove, resolve_model
from edge_qwen.registry.sources import find_cached, hf_cache_dir


def test_pull_downloads_into_the_hf_cache_and_resolves_by_name(fake_hub: FakeHub, tiny_bytes: bytes) -> None:
    registry = tiny_registry(sha(tiny_bytes), len(tiny_bytes))
    result = pull("tiny", source="hub", registry=registry, progress=False)
    assert result["downloaded"] and result["source"] == "hub"
    path = resolve_model("tiny:q4_k_m", registry)
    assert str(path) == result["path"]
    assert path.read_bytes() == tiny_bytes
    # huggingface_hub's layout: models--org--name/snapshots/<commit>/<file> -> ../../blobs/<etag>
    assert path == hf_cache_dir() / "models--edge-qwen-test--Tiny-GGUF" / "snapshots" / COMMIT / FILENAME
    assert path.is_symlink()
    again = pull("tiny", source="hub", registry=registry, progress=False)
    assert again["source"] == "cache" and not again["downloaded"]


def test_an_interrupted_download_resumes_with_a_range_request(
    fake_hub: FakeHub, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # 10 MiB by default
    cut = 1_000_000
    fake_hub.cut_first_get_at = cut
    registry = tiny_registry(sha(tiny_bytes), len(tiny_bytes))
    path = pull("tiny", source="hub", registry=registry, progress=False)["path"]
    gets = [r for r in fake_hub.requests if r[0] == "GET"]
    assert gets[0][2] is None  # the first transfer asked for everything and was cut
    assert len(gets) == 2
    resumed_at = int(gets[1][2].removeprefix("bytes=").removesuffix("-"))  # continued, not restarted
    assert cut - 64 * 1024 < resumed_at <= cut
    assert open(path, "rb").read() == tiny_bytes


def test_a_checksum_mismatch_is_rejected_and_nothing_is_left_to_use(
    fake_hub: FakeHub, tiny_bytes: bytes
) -> None:
    registry = tiny_registry("0" * 64, len(tiny_bytes))
    with pytest.raises(ChecksumError, match="sha256"):
        pull("tiny", source="hub", registry=registry, progress=False)
    src = registry.get("tiny").source("q4_k_m")
    assert find_cached(src) is None
    assert not list((hf_cache_dir() / "models--edge-qwen-test--Tiny-GGUF" / "blobs").glob("*"))
    with pytest.raises(ModelNotCachedError, match="edge-qwen pull tiny:q4_k_m"):
        resolve_model("tiny", registry)


def test_a_wrong_size_is_rejected_even_without_a_sha256(fake_hub: FakeHub, tiny_bytes: bytes) -> None:
    registry = tiny_registry(None, len(tiny_bytes) + 1)
    with pytest.raises(ChecksumError, match="bytes, the registry says"):
        pull("tiny", source="hub", registry=registry, progress=False)


def test_offline_a_cached_model_works_and_a_missing_one_fails_fast(
    fake_hub: FakeHub, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tiny_registry(sha(tiny_bytes), len(tiny_bytes))
    pull("tiny", source="hub", registry=registry, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub.requests.clear()
    assert resolve_model("tiny", registry).read_bytes() == tiny_bytes
    assert pull("tiny", source="hub", registry=registry)["source"] == "cache"
    remove("tiny", registry)
    with pytest.raises(ModelNotCachedError, match=r"tiny:q4_k_m .*offline.*edge-qwen pull tiny:q4_k_m"):
        pull("tiny", source="hub", registry=registry, progress=False)
    assert fake_hub.requests == []  # nothing went to the network


def test_rm_deletes_the_snapshot_link_and_blob(fake_hub: FakeHub, tiny_bytes: bytes) -> None:
    registry = tiny_registry(sha(tiny_bytes), len(tiny_bytes))
    path = pull("tiny", source="hub", registry=registry, progress=False)["path"]
    removed = remove("tiny:q4_k_m", registry)["removed"]
    assert path in removed and len(removed) == 2  # link + blob
    assert find_cached(registry.get("tiny").source(None)) is None
    assert REPO  # the repo folder may stay; only the file's data is gone
