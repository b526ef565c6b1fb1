"""Fixtures for converter tests: tiny random Qwen checkpoints, generated once per session."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from make_tiny_checkpoints import make_checkpoint  # noqa: E402

TinyCheckpoint = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> TinyCheckpoint:
    """``tiny_checkpoint(arch, dtype="bf16", shards=1, tied=None) -> Path`` of a cached checkpoint folder.

    arch is one of qwen2 / qwen3 / qwen3moe / qwen2moe; ``tied=None`` keeps the family default
    (dense tied, MoE untied). Folders are shared by the whole session: treat them as read-only.
    """
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    cache: dict[tuple[str, str, int, bool | None], Path] = {}

    def make(arch: str, dtype: str = "bf16", shards: int = 1, tied: bool | None = None) -> Path:
        key = (arch, dtype, shards, tied)
        if key not in cache:
            tie = {None: "default", True: "tied", False: "untied"}[tied]
            cache[key] = make_checkpoint(
                root / f"{arch}-{dtype}-{shards}shard-{tie}",
                arch=arch,
                dtype=dtype,
                shards=shards,
                tied=tied,
                tokenizer_dir=qwen3_tokenizer_dir,
            )
        return cache[key]

    return make


SENTENCE = "The quick brown fox jumps over the lazy dog, then writes def fibonacci(n): in Python."


@pytest.fixture(scope="session")
def tokens(qwen3_tokenizer_dir: Path) -> list[int]:
    """16 real Qwen tokens of an ordinary sentence."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))
    ids = tokenizer.encode(SENTENCE, add_special_tokens=False).ids[:16]
    assert len(ids) == 16
    return ids


@pytest.fixture(scope="session")
def qwen35_tokens() -> list[int]:
    """16 real Qwen3.5 tokens of the same sentence."""
    from fetch_assets import fetch_qwen35_tokenizer
    from tokenizers import Tokenizer

    folder = fetch_qwen35_tokenizer(log=lambda msg: None)
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(SENTENCE, add_special_tokens=False).ids
    assert len(ids) >= 16
    return ids[:16]
