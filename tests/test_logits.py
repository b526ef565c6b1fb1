"""edge_qwen.logits on the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_qwen.errors import ContextOverflowError, GGUFFileError
from edge_qwen.logits import token_logits, tokenize

pytestmark = pytest.mark.real

IM_START, IM_END = 151644, 151645
CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful coding assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite a Python function that returns the n-th Fibonacci number.<|im_end|>\n"
    "<|im_start|>assistant\ndef fibonacci(n):\n"
)


@pytest.fixture(scope="module")
def chat_tokens(real_gguf: Path) -> list[int]:
    return tokenize(real_gguf, CHAT_PROMPT, parse_special=True)


@pytest.fixture(scope="module")
def chat_logits(real_gguf: Path, chat_tokens: list[int]) -> np.ndarray:
    return token_logits(real_gguf, chat_tokens, threads=2)


def test_tokenize_parses_chat_markers_only_when_asked(real_gguf: Path, chat_tokens: list[int]) -> None:
    assert chat_tokens[0] == IM_START
    assert chat_tokens.count(IM_END) == 2
    literal = tokenize(real_gguf, "<|im_start|>", parse_special=False)
    assert IM_START not in literal and len(literal) > 1


def test_tokenize_matches_the_reference_tokenizer(real_gguf: Path, qwen3_tokenizer_dir: Path) -> None:
    from tokenizers import Tokenizer

    text = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)  # 日本語"
    reference = Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))
    assert tokenize(real_gguf, text) == reference.encode(text, add_special_tokens=False).ids


def test_one_finite_row_of_vocabulary_logits_per_token(
    chat_tokens: list[int], chat_logits: np.ndarray
) -> None:
    assert chat_logits.shape == (len(chat_tokens), 151936)
    assert chat_logits.dtype == np.float32
    assert np.isfinite(chat_logits).all()
    assert chat_logits.std(axis=1).min() > 0.5  # real distributions, not a constant row


def test_greedy_continuation_of_a_function_header_is_its_indented_body(
    real_gguf: Path, chat_logits: np.ndarray, qwen3_tokenizer_dir: Path
) -> None:
    from tokenizers import Tokenizer

    decode = Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json")).decode
    last = chat_logits[-1].astype(np.float64)
    probs = np.exp(last - last.max())
    probs /= probs.sum()
    top = int(last.argmax())
    piece = decode([top])
    assert piece and piece.isspace(), f"expected indentation after 'def fibonacci(n):\\n', got {piece!r}"
    assert probs[top] > 0.5


def test_rows_are_the_same_whatever_the_position_of_the_batch_split(
    real_gguf: Path, chat_tokens: list[int], chat_logits: np.ndarray
) -> None:
    """Decoding in several batches continues from the KV cache: the greedy choices are unchanged."""
    split = token_logits(real_gguf, chat_tokens, threads=2, n_batch=16)
    assert (split.argmax(axis=1) == chat_logits.argmax(axis=1)).all()
    # Different batch sizes pick different quantized mat-mul kernels, so the values differ slightly.
    np.testing.assert_allclose(split, chat_logits, atol=1.0)


def test_errors_name_the_problem(real_gguf: Path, tmp_path: Path) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(GGUFFileError, match="not a GGUF file"):
        token_logits(not_gguf, [1, 2, 3])
    with pytest.raises(GGUFFileError, match="does not exist"):
        token_logits(tmp_path / "missing.gguf", [1])
    with pytest.raises(ContextOverflowError):
        token_logits(real_gguf, list(range(100)), n_ctx=64)
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        token_logits(real_gguf, [1, 10_000_000])
