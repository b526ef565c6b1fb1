"""The vocabulary side of a loaded model: tokenize, pieces, the chat template, metadata.

:class:`~edge_qwen.runtime.model.Model` holds one :class:`Vocabulary`; everything here runs on the
caller's thread and only reads the (immutable) vocabulary and metadata of the llama.cpp model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import llama_cpp.llama_cpp as L

from . import _native
from .text.chat_template import RenderedPrompt, render_chat

Message = Mapping[str, Any]


class Vocabulary:
    """The tokenizer and chat template of a loaded llama.cpp model (``check_open`` raises once the
    model that owns them is closed)."""

    def __init__(self, model: Any, check_open: Callable[[], None]) -> None:
        self._model = model
        self._vocab = L.llama_model_get_vocab(model)
        self._check_open = check_open
        self.chat_template: str | None = _native.meta_value(model, "tokenizer.chat_template")
        self.piece = _native.PieceCache(self._vocab, special=False)  # a token's bytes, specials as ""
        self._special_piece = _native.PieceCache(self._vocab, special=True)
        self._control: dict[int, str] | None = None
        self._longest_piece: int | None = None

    @property
    def native(self) -> Any:
        """The ``llama_vocab`` pointer (for the decoder and the samplers)."""
        return self._vocab

    @property
    def n_tokens(self) -> int:
        return int(L.llama_vocab_n_tokens(self._vocab))

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``parse_special=False`` treats ``<|im_start|>`` in it as plain text."""
        self._check_open()
        return _native.tokenize(self._vocab, text, add_special=add_special, parse_special=parse_special)

    def special_token(self, text: str) -> int | None:
        """The id of the control token spelled ``text`` (``<|im_start|>``), or None without one."""
        ids = self.tokenize(text, parse_special=True)
        return ids[0] if len(ids) == 1 and ids[0] in self.control_tokens else None

    def token_piece(self, token: int, *, special: bool = True) -> bytes:
        """Raw bytes of one token (a piece may be part of a UTF-8 character)."""
        return (self._special_piece if special else self.piece)(token)

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return b"".join(self.token_piece(t, special=special) for t in tokens).decode("utf-8", "replace")

    def fewest_tokens(self, text: str) -> int:
        """A lower bound on the tokens ``text`` becomes, without tokenizing it: every token spells at most
        the longest piece in the vocabulary, and every character is at least one byte. A prompt that
        cannot fit is refused at this cost instead of after tokenizing (100 MB took 28 s and 6.5 GB)."""
        if self._longest_piece is None:
            self._check_open()  # the vocabulary is the model's: freed with it
            self._longest_piece = _native.longest_piece(self._vocab)
        return -(-len(text) // self._longest_piece)

    @property
    def control_tokens(self) -> dict[int, str]:
        """id -> text of every CONTROL token (only these may come out of a chat template as specials)."""
        if self._control is None:
            self._control = _native.control_tokens(self._vocab)
        return self._control

    @property
    def metadata(self) -> dict[str, str]:
        return _native.metadata(self._model)

    def render(
        self,
        messages: Sequence[Message],
        *,
        enable_thinking: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> RenderedPrompt:
        """Render a conversation with the GGUF's own chat template (ChatML when it has none)."""
        kwargs: dict[str, Any] = {}
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        if tools:
            kwargs["tools"] = list(tools)
        return render_chat(
            [dict(m) for m in messages],
            template=self.chat_template,
            special_tokens=self.control_tokens.values(),
            bos_token=self._special_token_text(L.llama_vocab_bos(self._vocab)),
            eos_token=self._special_token_text(L.llama_vocab_eos(self._vocab)),
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )

    def prompt_tokens(self, rendered: RenderedPrompt) -> list[int]:
        """Tokenize each rendered segment with its own parse_special flag (user text stays text)."""
        tokens: list[int] = []
        for text, parse_special in rendered.segments:
            tokens += self.tokenize(text, parse_special=parse_special)
        bos = L.llama_vocab_bos(self._vocab)
        if L.llama_vocab_get_add_bos(self._vocab) and bos >= 0 and (not tokens or tokens[0] != bos):
            tokens.insert(0, bos)
        return tokens

    def _special_token_text(self, token: int) -> str:
        return self.token_piece(token).decode("utf-8", "replace") if token >= 0 else ""
