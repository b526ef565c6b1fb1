"""The prompt cache on the real Qwen2.5-Coder-0.5B: with one slot and three conversations, a
returning conversation's K/V comes back from host memory (llama_state_seq_get/set_data) and its
answer is token for token the one an empty cache gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_qwen.runtime import Model

pytestmark = [pytest.mark.real, pytest.mark.slow]

TOPICS = ["a lighthouse keeper", "a robot gardener", "a lost key"]


def story(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a two-line poem about {topic}, then explain it briefly."}]


def test_a_returning_conversation_is_restored_not_prefilled(real_gguf: Path) -> None:
    with Model.load(real_gguf, n_ctx=2048, parallel=1, n_threads=2, prompt_cache=32 << 20) as model:
        first = [model.chat(story(t), temperature=0, max_tokens=24) for t in TOPICS]
        usage = model.slot_usage()
        assert usage.prompt_cache_entries >= 2 and usage.prompt_cache_bytes > 0
        turn = [*story(TOPICS[0]), {"role": "assistant", "content": first[0].text},
                {"role": "user", "content": "Now make it rhyme."}]  # fmt: skip
        again = model.chat(turn, temperature=0, max_tokens=24)
        assert model.slot_usage().prompt_cache_restored == 1
        assert again.usage.cached_tokens >= first[0].usage.prompt_tokens  # the first turn was not prefilled
        model.reset()
        assert model.slot_usage().prompt_cache_entries == 0
        fresh = model.chat(turn, temperature=0, max_tokens=24)
    assert fresh.usage.cached_tokens == 0
    assert again.token_ids == fresh.token_ids  # the restored K/V is the K/V a prefill computes


SYSTEM = {"role": "system", "content": "You are a careful assistant for a desktop notes app. " * 12}


def test_a_restart_with_a_cache_directory_restores_the_conversation(real_gguf: Path, tmp_path: Path) -> None:
    """Close the model (the app quits), load it again with the same directory: the returning
    conversation is restored, not prefilled, and answers as a cold start does."""
    settings = {"n_ctx": 2048, "parallel": 1, "n_threads": 2, "prompt_cache_dir": tmp_path}
    with Model.load(real_gguf, **settings) as model:
        first = model.chat([SYSTEM, *story(TOPICS[0])], temperature=0, max_tokens=24)
    turn = [SYSTEM, *story(TOPICS[0]), {"role": "assistant", "content": first.text},
            {"role": "user", "content": "Now make it rhyme."}]  # fmt: skip
    with Model.load(real_gguf, **settings) as model:
        assert model.slot_usage().prompt_cache_entries == 1
        again = model.chat(turn, temperature=0, max_tokens=24)
    assert again.usage.cached_tokens >= 0.9 * first.usage.prompt_tokens
    with Model.load(real_gguf, n_ctx=2048, parallel=1, n_threads=2) as cold:
        fresh = cold.chat(turn, temperature=0, max_tokens=24)
    assert fresh.usage.cached_tokens == 0 and again.token_ids == fresh.token_ids
    for saved in tmp_path.rglob("*.eqpc"):  # a damaged file is skipped, not loaded
        saved.write_bytes(saved.read_bytes()[:-100])
    with Model.load(real_gguf, **settings) as model:
        assert model.slot_usage().prompt_cache_entries == 0
        assert model.chat(turn, temperature=0, max_tokens=24).token_ids == fresh.token_ids
