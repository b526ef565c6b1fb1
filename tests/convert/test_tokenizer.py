"""The converted tokenizer: same token ids as Hugging Face ``tokenizers``, same vocabulary and
special ids as the official Qwen GGUF, and the chat template carried over verbatim."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import llama_cpp
import pytest
from tokenizers import Tokenizer

from edge_qwen.convert import convert

CORPUS = [
    "Hello, world! How are you today?",
    "通义千问是阿里巴巴开发的大语言模型。它支持中文和英文。",
    "日本語のテキストも正しく分割されるべきです。カタカナとひらがな。",
    "Saya suka makan nasi lemak pada waktu pagi di Kuala Lumpur.",
    "مرحبا بالعالم، هذه جملة باللغة العربية.",
    "Emoji: 🙂🚀👩‍💻 and flags 🇲🇾🇨🇳",
    "def  f(x):\n\t\treturn   x**2  # odd   whitespace\n\n\n    \r\n",
    "Digits 1234567890 3.14159 and 1,000,000 and 2026-11-29",
    "  leading spaces and trailing   ",
    '<think>reasoning</think> and <tool_call>{"name": "f"}</tool_call>',
]


@pytest.fixture(scope="module")
def converted(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    src = tiny_checkpoint("qwen3", dtype="bf16")
    out = convert(src, tmp_path_factory.mktemp("tok"), evaluate=False, quiet=True)
    return src, out.gguf


def test_llama_cpp_tokenizes_like_hf_tokenizers(converted) -> None:
    src, path = converted
    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in CORPUS:
        ours = vocab.tokenize(text.encode(), add_bos=False, special=True)
        assert ours == hf.encode(text, add_special_tokens=False).ids, text


def test_vocabulary_matches_the_official_qwen_gguf(converted, real_gguf: Path) -> None:
    """Qwen3 and Qwen2.5 share the base vocabulary and the first 22 added tokens."""
    _, path = converted
    ours, real = gguf.GGUFReader(path), gguf.GGUFReader(real_gguf)

    def field(reader: gguf.GGUFReader, key: str):
        return reader.fields[key].contents()

    shared = 151665  # Qwen2.5's added tokens stop at <|file_sep|> = 151664
    tokens, types = gguf.Keys.Tokenizer.LIST, gguf.Keys.Tokenizer.TOKEN_TYPE
    assert field(ours, tokens)[:shared] == field(real, tokens)[:shared]
    assert field(ours, types)[:shared] == field(real, types)[:shared]
    assert field(ours, gguf.Keys.Tokenizer.MERGES) == field(real, gguf.Keys.Tokenizer.MERGES)
    for key in (
        gguf.Keys.Tokenizer.MODEL,
        gguf.Keys.Tokenizer.PRE,
        gguf.Keys.Tokenizer.BOS_ID,
        gguf.Keys.Tokenizer.EOS_ID,
        gguf.Keys.Tokenizer.PAD_ID,
        gguf.Keys.Tokenizer.ADD_BOS,
    ):
        assert field(ours, key) == field(real, key), key
    # Qwen3's extra tokens: <think> and friends are user-defined, the padding is unused.
    ours_tokens, ours_types = field(ours, tokens), field(ours, types)
    assert ours_tokens[151667] == "<think>" and ours_types[151667] == gguf.TokenType.USER_DEFINED
    assert ours_tokens[151669] == "[PAD151669]" and ours_types[151669] == gguf.TokenType.UNUSED


def test_chat_template_round_trip(converted) -> None:
    src, path = converted
    config = json.loads((src / "tokenizer_config.json").read_text())
    embedded = gguf.GGUFReader(path).fields[gguf.Keys.Tokenizer.CHAT_TEMPLATE].contents()
    assert embedded == config["chat_template"]
