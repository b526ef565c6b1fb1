"""StreamingDetokenizer: whole characters only, never stalls, same text as decoding all bytes at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from edge_qwen.runtime.text.detokenizer import StreamingDetokenizer


def byte_tokens(text: str) -> tuple[list[int], Callable[[int], bytes]]:
    """The worst case for streaming: one token per byte (ids are the byte values)."""
    return list(text.encode("utf-8")), lambda token: bytes([token])


def stream(detok: StreamingDetokenizer, tokens: list[int]) -> list[str]:
    return [detok.add_token(token) for token in tokens] + [detok.finalize()]


@pytest.mark.parametrize("text", ["こんにちは", "a ,b", "3 3", "\n", "emoji 🦙🎉 mixed ü"])
def test_byte_by_byte_stream_emits_only_whole_characters(text: str) -> None:
    tokens, to_bytes = byte_tokens(text)
    detok = StreamingDetokenizer(to_bytes)
    pieces = stream(detok, tokens)
    assert "".join(pieces) == text
    assert detok.text == text
    assert "\ufffd" not in detok.text
    assert all(piece.encode("utf-8").decode("utf-8") == piece for piece in pieces)


def test_a_four_byte_emoji_appears_at_its_last_byte() -> None:
    tokens, to_bytes = byte_tokens("🦙")
    detok = StreamingDetokenizer(to_bytes)
    assert [detok.add_token(token) for token in tokens] == ["", "", "", "🦙"]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"\xff", b"ok"],  # a byte that never starts a character
        [b"\xe3\x81", b"a"],  # a 3-byte character cut short, then ASCII
        [b"\xe3", b"\x81", b"\xe3", b"\x81\x93"],  # truncated char followed by a whole one
        [b"\xf0\x9f", b"\xa6"],  # stream ends inside a character
        [b"\x80\x80abc"],  # stray continuation bytes
    ],
)
def test_invalid_bytes_become_replacement_characters_without_stalling(chunks: list[bytes]) -> None:
    detok = StreamingDetokenizer(chunks.__getitem__)
    pieces = stream(detok, list(range(len(chunks))))
    expected = b"".join(chunks).decode("utf-8", errors="replace")
    assert "".join(pieces) == expected
    assert "\ufffd" in expected
    assert len(detok.pending_bytes) == 0


def test_invalid_lead_byte_is_replaced_immediately() -> None:
    detok = StreamingDetokenizer({0: b"\xff", 1: b"a"}.__getitem__)
    assert detok.add_token(0) == "\ufffd"
    assert detok.add_token(1) == "a"


def test_small_lookahead_gives_up_on_long_waits() -> None:
    detok = StreamingDetokenizer({0: b"\xf0\x9f\xa6"}.__getitem__, max_lookahead=2)
    assert detok.add_token(0) == "\ufffd"
    assert detok.pending_bytes == b""


def test_reset_starts_a_fresh_stream() -> None:
    detok = StreamingDetokenizer({0: b"\xe3\x81", 1: b"hi"}.__getitem__)
    detok.add_token(0)
    detok.reset()
    assert detok.add_token(1) == "hi"
    assert detok.text == "hi"


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode, the byte-level alphabet of Qwen's BPE vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


@pytest.mark.real
def test_real_qwen3_tokens_stream_to_the_same_text(qwen3_tokenizer_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))
    decoder = _byte_decoder()

    def to_bytes(token: int) -> bytes:
        return bytes(decoder[char] for char in tokenizer.id_to_token(token))

    text = "こんにちは、世界! 🦙 emoji 👩‍👩‍👧 and code: a ,b 3 3\n\tdone"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert any(len(to_bytes(token).decode("utf-8", errors="ignore")) == 0 for token in ids), (
        "expected at least one token that holds only part of a character"
    )
    detok = StreamingDetokenizer(to_bytes)
    pieces = stream(detok, ids)
    assert "".join(pieces) == text == tokenizer.decode(ids)
    assert "\ufffd" not in detok.text
