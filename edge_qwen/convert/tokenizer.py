"""Qwen's byte-level BPE tokenizer -> GGUF tokenizer metadata.

Tokens and token types are built here from ``tokenizer.json`` (no transformers needed); merges,
bos/eos/pad ids, add_bos and the chat template come from gguf-py's ``SpecialVocab``, the same code
llama.cpp's converter uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from ..errors import TokenizerError

# The pre-tokenizer split regex -> llama.cpp's pre-tokenizer name (data, not branches).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3.5 / Qwen3.6 (248,320-token vocabulary): Qwen2's regex with combining marks (\p{M}) kept inside
# words, so Devanagari, Thai or Arabic vowel signs no longer split a word apart.
QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[str, str] = {QWEN2_SPLIT: "qwen2", QWEN35_SPLIT: "qwen35"}
TokenType = gguf.TokenType


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    pre: str
    special: gguf.SpecialVocab

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        self.special.add_to_gguf(writer, quiet=True)


def load_vocab(folder: Path, vocab_size: int) -> Vocab:
    """Read the tokenizer of a Qwen checkpoint, padded with unused tokens up to ``vocab_size``.

    Raises:
        TokenizerError: tokenizer.json missing, not byte-level BPE, unknown pre-tokenizer, or
            holding ids at or above config.json's ``vocab_size``.
    """
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"{folder}: no tokenizer.json; download the tokenizer files with the weights")
    tokens, types, pre = _tokens(path, vocab_size)
    # Parsed after ours is released: two parsed copies of tokenizer.json would double peak memory.
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise TokenizerError(f"{path}: no BPE merges; the tokenizer file is incomplete")
    return Vocab(tokens, types, pre, special)


def _tokens(path: Path, vocab_size: int) -> tuple[list[str], list[int], str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise TokenizerError(f"{path}: tokenizer model is {model.get('type')!r}; Qwen uses byte-level BPE")
    by_id: dict[int, tuple[str, int]] = {i: (tok, TokenType.NORMAL) for tok, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], _added_type(added))
    top = max(by_id)
    if top >= vocab_size:
        raise TokenizerError(
            f"{path}: token id {top} ({by_id[top][0]!r}) does not fit vocab_size {vocab_size} "
            "from config.json; the tokenizer and the weights belong to different models"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        tok, typ = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(tok)
        types.append(int(typ))
    return tokens, types, _pre_tokenizer(path, data)


def _added_type(added: dict) -> int:
    """Special added tokens, and ones that look special (``<|…|>``), are control tokens;
    the rest (``<think>``, ``<tool_call>`` …) are user-defined: matched as text, rendered as text."""
    content = added["content"]
    if added.get("special") or (content.startswith("<|") and content.endswith("|>")):
        return TokenType.CONTROL
    return TokenType.USER_DEFINED


def _pre_tokenizer(path: Path, data: dict) -> str:
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    for step in steps:
        regex = step.get("pattern", {}).get("Regex") if step.get("type") == "Split" else None
        if regex is not None:
            if regex in PRE_TOKENIZERS:
                return PRE_TOKENIZERS[regex]
            raise TokenizerError(
                f"{path}: unknown pre-tokenizer regex {regex[:60]!r}…; llama.cpp would split text "
                "differently from Hugging Face. Only Qwen2/Qwen3/Qwen3.5 tokenizers are supported."
            )
    raise TokenizerError(f"{path}: no Split pre-tokenizer found; not a Qwen2/Qwen3/Qwen3.5 tokenizer")
