"""Split a streamed Qwen answer into reasoning (``<think>…</think>``) and content, chunk by chunk.

Qwen3 writes its chain of thought between ``<think>`` and ``</think>`` before the answer. Its own
chat template parses a finished answer like this (see the assistant branch of the template)::

    reasoning = text.split("</think>")[0].rstrip("\\n").split("<think>")[-1].lstrip("\\n")
    content   = text.split("</think>")[-1].lstrip("\\n")

:class:`ReasoningSplitter` reproduces that result incrementally: tags never reach either stream,
newlines framing the reasoning are dropped, and the newlines that follow ``</think>`` are stripped
from the content. A tag split across chunks (``"</th"`` + ``"ink>"``) is held back until it is
decided, so the cost of :meth:`ReasoningSplitter.push` is proportional to the new text only.
"""

from __future__ import annotations

from typing import Literal

START_TAG = "<think>"
END_TAG = "</think>"

#: The text the engine injects (tokenized with parse_special=True) when a thinking budget is spent.
#:
#: Why this text: the Qwen3 technical report (section 4.3, "Thinking Budget") describes exactly this
#: mechanism — when the reasoning reaches the user's budget, halt it and insert the stop-thinking
#: instruction "Considering the limited time by the user, I have to give the solution based on the
#: thinking directly now." followed by ``</think>``; the model then answers from the reasoning it
#: has so far (the ability emerges from Qwen3's thinking-mode fusion training). The leading
#: ``"\\n\\n"`` starts the phrase on its own paragraph wherever the reasoning was cut, and the tail
#: ``"\\n</think>\\n\\n"`` is byte for byte how Qwen3's chat template closes a reasoning block, so the
#: model sees the framing it was trained on.
THINK_CLOSE = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the "
    "thinking directly now.\n</think>\n\n"
)

#: The bare closing frame, for callers that want to end reasoning without the instruction sentence.
THINK_CLOSE_MINIMAL = "\n</think>\n\n"

Kind = Literal["reasoning", "content"]


def template_thinks(template: str | None) -> bool:
    """Whether a chat template has a thinking mode that ``enable_thinking`` switches (Qwen3 and later
    templates read the variable; Qwen2.5's never mention it, so the flag changes nothing there)."""
    return template is not None and "enable_thinking" in template


def reasoning_state(text: str, start_tag: str = START_TAG, end_tag: str = END_TAG) -> bool:
    """True when ``text`` ends inside an open reasoning block (last ``start_tag`` after last ``end_tag``).

    Used on a rendered prompt: Qwen3's ``enable_thinking=False`` prompt ends with the closed block
    ``"<think>\\n\\n</think>\\n\\n"`` (False), while templates that pre-open the block end with
    ``"<think>\\n"`` (True) and the model then starts directly in reasoning.
    """
    start = text.rfind(start_tag)
    return start >= 0 and text.rfind(end_tag) < start


def _partial_tag_suffix(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``tags``."""
    longest = min(len(text), max(len(tag) for tag in tags) - 1)
    for size in range(longest, 0, -1):
        tail = text[-size:]
        if any(tag.startswith(tail) for tag in tags):
            return size
    return 0


class ReasoningSplitter:
    """Route streamed text to ``"reasoning"`` or ``"content"`` the way Qwen's template parses it.

    >>> splitter = ReasoningSplitter(thinking_open=False)
    >>> splitter.push("<think>\\nadd them\\n</th") + splitter.push("ink>\\n\\n2") + splitter.flush()
    [('reasoning', 'add them'), ('content', '2')]

    ``thinking_open`` says whether the prompt already opened the block (see
    :func:`reasoning_state`); otherwise the model's own ``<think>`` opens it. A stray start tag
    inside reasoning, or end tag inside content, is dropped rather than shown.
    """

    def __init__(self, thinking_open: bool, start_tag: str = START_TAG, end_tag: str = END_TAG) -> None:
        if not start_tag or not end_tag:
            raise ValueError("start_tag and end_tag must be non-empty strings")
        self._start_tag = start_tag
        self._end_tag = end_tag
        self._tags = (start_tag, end_tag)
        self._in_reasoning = thinking_open
        self._at_block_start = thinking_open  # strip "\n" opening reasoning / content after </think>
        self._held_tag = ""  # a suffix that may be the start of a tag
        self._held_newlines = 0  # reasoning's trailing "\n" run: dropped if </think> follows

    @property
    def in_reasoning(self) -> bool:
        """True while the stream is inside a reasoning block (for a thinking budget counter)."""
        return self._in_reasoning

    def push(self, text: str) -> list[tuple[Kind, str]]:
        """Feed newly generated text; return the pieces that are now decided, in order."""
        out: list[tuple[Kind, str]] = []
        buffer = self._held_tag + text
        self._held_tag = ""
        position = 0
        while True:
            found, tag = self._next_tag(buffer, position)
            if found < 0:
                break
            self._emit(buffer[position:found], out)
            self._switch(tag)
            position = found + len(tag)
        rest = buffer[position:]
        keep = _partial_tag_suffix(rest, self._tags)
        self._emit(rest[: len(rest) - keep], out)
        self._held_tag = rest[len(rest) - keep :]
        return out

    def flush(self) -> list[tuple[Kind, str]]:
        """End of generation: release held text (an unfinished tag is just text after all)."""
        out: list[tuple[Kind, str]] = []
        held, self._held_tag = self._held_tag, ""
        self._emit(held, out)
        self._held_newlines = 0  # trailing newlines of reasoning are stripped, as Qwen does
        return out

    def _next_tag(self, buffer: str, position: int) -> tuple[int, str]:
        """Earliest occurrence of either tag at or after ``position`` (-1 when none)."""
        best, best_tag = -1, ""
        for tag in self._tags:
            index = buffer.find(tag, position)
            if index >= 0 and (best < 0 or index < best):
                best, best_tag = index, tag
        return best, best_tag

    def _switch(self, tag: str) -> None:
        """Apply a complete tag: open or close reasoning; a redundant tag only disappears."""
        opening = tag == self._start_tag
        if opening == self._in_reasoning:
            return
        self._in_reasoning = opening
        self._at_block_start = True
        self._held_newlines = 0

    def _emit(self, piece: str, out: list[tuple[Kind, str]]) -> None:
        """Append ``piece`` to the current stream, applying Qwen's newline stripping."""
        if not piece:
            return
        if self._at_block_start:
            piece = piece.lstrip("\n")
            if not piece:
                return
            self._at_block_start = False
        kind: Kind = "reasoning" if self._in_reasoning else "content"
        if self._in_reasoning:
            body = piece.rstrip("\n")
            if not body:  # only newlines so far: they may turn out to be reasoning's trailing frame
                self._held_newlines += len(piece)
                return
            piece, self._held_newlines = "\n" * self._held_newlines + body, len(piece) - len(body)
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + piece)
        else:
            out.append((kind, piece))
