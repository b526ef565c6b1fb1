"""Loading, settings that cannot work, closing, and the request queue's timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_qwen.errors import ConfigError, ModelClosedError, ModelLoadError, QueueTimeoutError
from edge_qwen.runtime import Model

pytestmark = [pytest.mark.real]

HELLO = [{"role": "user", "content": "Say hello."}]


def test_missing_file_is_a_load_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError, match="nope.gguf"):
        Model.load(missing)


def test_a_file_that_is_not_gguf_is_a_load_error_with_llama_cpp_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(ModelLoadError) as caught:
        Model.load(bad)
    message = str(caught.value)
    assert "bad.gguf" in message and "llama.cpp gave no reason" not in message


def test_unknown_setting_is_a_config_error(real_gguf: Path) -> None:
    with pytest.raises(ConfigError, match="n_ctx"):
        Model.load(real_gguf, context_size=512)


def test_quantized_v_cache_without_flash_attention_is_refused(real_gguf: Path) -> None:
    with pytest.raises(ConfigError, match="flash"):
        Model.load(real_gguf, n_ctx=256, cache_type_v="q8_0", flash_attn=False)


def test_quantized_kv_cache_turns_flash_attention_on_and_generates(real_gguf: Path) -> None:
    with Model.load(real_gguf, n_ctx=256, n_threads=1, cache_type_k="q8_0", cache_type_v="q4_0") as model:
        result = model.chat(HELLO, temperature=0, max_tokens=4)
    assert result.usage.completion_tokens == 4 and result.text


def test_closed_model_refuses_new_requests(real_gguf: Path) -> None:
    model = Model.load(real_gguf, n_ctx=256, n_threads=1)
    model.close()
    model.close()  # idempotent
    assert model.closed
    with pytest.raises(ModelClosedError):
        model.chat(HELLO)


def test_waiting_longer_than_the_queue_timeout_raises(real_gguf: Path) -> None:
    # one sequence slot: the second request must wait for the first to finish
    with Model.load(real_gguf, n_ctx=256, n_threads=1, queue_timeout=0.05, parallel=1) as model:
        long_answer = [{"role": "user", "content": "Write a Python function to implement binary search."}]
        busy = model.chat_stream(long_answer, temperature=0, max_tokens=100)
        next(busy)  # the only slot is now generating for `busy`
        with pytest.raises(QueueTimeoutError, match="queue_timeout"):
            model.chat(HELLO, temperature=0, max_tokens=2)
        busy.cancel()
        assert list(busy)[-1].finish_reason == "cancelled"
        assert model.chat(HELLO, temperature=0, max_tokens=2).usage.completion_tokens == 2
