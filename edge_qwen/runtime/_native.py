"""Thin, typed helpers over llama-cpp-python's low-level ctypes API (``llama_cpp.llama_cpp``).

Only this module and :mod:`edge_qwen.runtime.model` touch raw llama.cpp pointers. The high-level
``llama_cpp.Llama`` class is deliberately not used: it sizes buffers from the *requested* n_ctx
(llama.cpp pads it to 256), parses control tokens out of user text in its chat path, and its
generate loop is slower than llama-bench.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp.llama_cpp as L

CTX_PAD = 256  # llama.cpp rounds n_ctx up to a multiple of this

# KV cache type names -> ggml type ids (tables, not branches)
CACHE_TYPES: dict[str, int] = {
    "f32": L.GGML_TYPE_F32,
    "f16": L.GGML_TYPE_F16,
    "q8_0": L.GGML_TYPE_Q8_0,
    "q5_1": L.GGML_TYPE_Q5_1,
    "q5_0": L.GGML_TYPE_Q5_0,
    "q4_1": L.GGML_TYPE_Q4_1,
    "q4_0": L.GGML_TYPE_Q4_0,
}
QUANTIZED_CACHE_TYPES = frozenset({"q8_0", "q5_1", "q5_0", "q4_1", "q4_0"})

FLASH_ATTN: dict[bool | None, int] = {
    None: L.LLAMA_FLASH_ATTN_TYPE_AUTO,
    True: L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    False: L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}

# (use_mmap, use_mlock) -> llama_load_mode
LOAD_MODES: dict[tuple[bool, bool], int] = {
    (False, False): L.LLAMA_LOAD_MODE_NONE,
    (True, False): L.LLAMA_LOAD_MODE_MMAP,
    (False, True): L.LLAMA_LOAD_MODE_MLOCK,
    (True, True): L.LLAMA_LOAD_MODE_MMAP_MLOCK,
}

# --- process state and machine facts live in edge_qwen._llama (one owner of llama.cpp's log) ---


def pad_ctx(n_ctx: int) -> int:
    """Round n_ctx up to the multiple of 256 llama.cpp will allocate anyway."""
    return max(CTX_PAD, -(-n_ctx // CTX_PAD) * CTX_PAD)


# --- vocabulary -------------------------------------------------------------------------------


def tokenize(vocab: Any, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    """Tokenize UTF-8 text; ``parse_special=False`` keeps ``<|im_start|>`` typed by a user as plain text."""
    data = text.encode("utf-8")
    capacity = len(data) + 8
    while True:
        out = (L.llama_token * capacity)()
        n = L.llama_tokenize(vocab, data, len(data), out, capacity, add_special, parse_special)
        if n >= 0:
            return list(out[:n])
        if n == -(2**31):
            raise ValueError("text is too long to tokenize")
        capacity = -n


class PieceCache:
    """token id -> raw bytes of its piece (control tokens render as nothing unless ``special``)."""

    def __init__(self, vocab: Any, *, special: bool) -> None:
        self._vocab = vocab
        self._special = special
        self._cache: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        piece = self._cache.get(token)
        if piece is None:
            piece = self._cache[token] = self._lookup(token)
        return piece

    def _lookup(self, token: int) -> bytes:
        # a fresh buffer per miss: the worker and caller threads may look pieces up concurrently
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, self._special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, self._special)
        return buf.raw[: max(n, 0)]


def longest_piece(vocab: Any) -> int:
    """The most bytes any one token of ``vocab`` spells (control tokens included)."""
    buf = ctypes.create_string_buffer(256)
    longest = 1
    for token in range(L.llama_vocab_n_tokens(vocab)):
        n = L.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
        longest = max(longest, -n if n < 0 else n)  # negative: the piece needs -n bytes
    return longest


def control_tokens(vocab: Any) -> dict[int, str]:
    """Every CONTROL-type token of the vocabulary, id -> text (what a chat template may inject)."""
    piece = PieceCache(vocab, special=True)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    return {
        token: piece(token).decode("utf-8", "replace")
        for token in range(n_vocab)
        if L.llama_vocab_get_attr(vocab, token) & L.LLAMA_TOKEN_ATTR_CONTROL
    }


# --- metadata ----------------------------------------------------------------------------------


def _read_str(fn: Any, *args: Any) -> str | None:
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = fn(*args, buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", "replace")
        size = n + 1


def meta_value(model: Any, key: str) -> str | None:
    """One GGUF metadata value as text (``None`` when the key is absent)."""
    return _read_str(L.llama_model_meta_val_str, model, key.encode("utf-8"))


def metadata(model: Any) -> dict[str, str]:
    """All scalar GGUF metadata as text (arrays are summarised by llama.cpp)."""
    out: dict[str, str] = {}
    for i in range(L.llama_model_meta_count(model)):
        key = _read_str(L.llama_model_meta_key_by_index, model, i)
        value = _read_str(L.llama_model_meta_val_str_by_index, model, i)
        if key is not None and value is not None:
            out[key] = value
    return out


# --- batches --------------------------------------------------------------------------------


class Batch:
    """A reusable single-sequence llama_batch sized from the context's real n_batch."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = L.llama_batch_init(capacity, 0, 1)
        for i in range(capacity):
            self.raw.n_seq_id[i] = 1
            self.raw.seq_id[i][0] = 0
            self.raw.logits[i] = 0
        self._last_logit = 0

    def fill(self, tokens: Sequence[int], start_pos: int) -> None:
        """Load tokens at consecutive positions; only the last one asks for logits."""
        raw = self.raw
        raw.logits[self._last_logit] = 0
        n = len(tokens)
        for i, token in enumerate(tokens):
            raw.token[i] = token
            raw.pos[i] = start_pos + i
        raw.logits[n - 1] = 1
        raw.n_tokens = n
        self._last_logit = n - 1

    def free(self) -> None:
        if self.raw is not None:
            L.llama_batch_free(self.raw)
            self.raw = None
