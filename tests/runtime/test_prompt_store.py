"""The prompt cache on disk: what is written comes back, and nothing that is not ours does."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edge_qwen.runtime.engine.checkpoints import Checkpoint
from edge_qwen.runtime.engine.prompt_cache import PromptCache, SavedPrompt
from edge_qwen.runtime.engine.prompt_store import SUFFIX, PromptStore, StoreKey, file_sha256

KEY = StoreKey("ab" * 32, "0.3.36;libllama.so:1:2;", "f16/f16/fa=None")


def store(tmp_path: Path, budget: int = 1 << 20, key: StoreKey = KEY) -> PromptStore:
    return PromptStore(tmp_path, key, budget)


def written(s: PromptStore, *entries: SavedPrompt) -> list[Path]:
    for entry in entries:
        s.put(entry)
    s.flush()
    return sorted(s.folder.glob("*" + SUFFIX))


def entry(n: int, fill: bytes = b"k", start: int = 100, **kw: object) -> SavedPrompt:
    return SavedPrompt(tuple(range(start, start + n)), (), fill * (10 * n), **kw)  # type: ignore[arg-type]


def test_what_is_written_is_read_back(tmp_path: Path) -> None:
    hybrid = entry(40, b"h", start=5000, checkpoints=(Checkpoint(16, b"s" * 7), Checkpoint(40, b"t" * 9)))
    written(store(tmp_path), entry(20), hybrid)
    back = {e.tokens: e for e in store(tmp_path).load(1 << 20)}
    assert back[entry(20).tokens].state == entry(20).state and back[entry(20).tokens].checkpoints is None
    assert back[hybrid.tokens].checkpoints == hybrid.checkpoints and back[hybrid.tokens].state == hybrid.state


def test_the_memory_cache_writes_what_it_keeps_and_starts_from_what_was_kept(tmp_path: Path) -> None:
    s = store(tmp_path)
    cache = PromptCache(1 << 20, on_save=s.put)
    assert cache.save(list(range(50)), (), lambda: b"x" * 500)
    assert cache.save(list(range(50)), (("sql", 1.0),), lambda: b"y" * 500)  # in memory only
    s.flush()
    again = PromptCache(1 << 20, entries=store(tmp_path).load(1 << 20))
    assert again.best(list(range(60)), (), 59)[1] == 50  # a LoRA cache was not written: only one back
    assert len(again.entries) == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-5],  # truncated
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # a flipped bit in the state
        lambda data: b"not json\n" + data,
        lambda data: b"\x00" * 64,
    ],
    ids=["truncated", "corrupt", "garbage-header", "not-ours"],
)
def test_a_damaged_file_is_skipped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: object
) -> None:
    (path,) = written(store(tmp_path), entry(30))
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, "edge_qwen.prompt_cache"):
        assert store(tmp_path).load(1 << 20) == []
    assert path.name in caplog.text and "skipped" in caplog.text


def test_a_file_written_for_another_model_or_build_is_never_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (path,) = written(store(tmp_path), entry(30))
    other = StoreKey("cd" * 32, KEY.build, KEY.cache_types)
    assert store(tmp_path, key=other).load(1 << 20) == []  # another folder: not even looked at
    foreign = store(tmp_path, key=other).folder
    foreign.mkdir(parents=True)
    (foreign / path.name).write_bytes(path.read_bytes())  # copied across by hand
    with caplog.at_level(logging.WARNING, "edge_qwen.prompt_cache"):
        assert store(tmp_path, key=other).load(1 << 20) == []
    assert "another model file or llama.cpp build" in caplog.text


def test_the_directory_keeps_to_its_budget_newest_first_and_drops_covered_prefixes(tmp_path: Path) -> None:
    s = store(tmp_path, budget=2000)  # files are their state plus a ~300-byte header
    a = SavedPrompt(tuple(range(0, 30)), (), b"a" * 300)
    b = SavedPrompt(tuple(range(1000, 1030)), (), b"b" * 300)
    longer_a = SavedPrompt(tuple(range(0, 40)), (), b"A" * 400)
    written(s, a, b, longer_a)
    assert {e.tokens for e in store(tmp_path).load(1 << 20)} == {b.tokens, longer_a.tokens}
    c = SavedPrompt(tuple(range(2000, 2040)), (), b"c" * 600)
    written(s, c)  # over 2000 bytes with the headers: the oldest (b) goes
    assert {e.tokens for e in store(tmp_path).load(1 << 20)} == {longer_a.tokens, c.tokens}
    assert [e.tokens for e in store(tmp_path).load(700)] == [c.tokens]  # the memory limit: newest first


def test_a_model_file_is_hashed_once(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 1000)
    records = tmp_path / "models"
    first = file_sha256(model, records)
    (record,) = records.iterdir()
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "sha256": "recorded"}))
    assert file_sha256(model, records) == "recorded"  # not hashed again
    model.write_bytes(b"GGUF" + b"\1" * 1000)
    assert file_sha256(model, records) not in ("recorded", first)  # changed: hashed again
