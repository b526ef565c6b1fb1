"""The input side of ``edge-qwen chat``: slash commands, and line editing with history on a terminal.

On a terminal (stdin is a TTY) the stdlib ``readline`` module makes ``input()`` editable: arrow
keys, Ctrl-R reverse search, and the lines of earlier chats, kept in ``$EDGE_QWEN_CHAT_HISTORY``
(default ``$EDGE_QWEN_CACHE/chat_history``, i.e. ``~/.cache/edge-qwen/chat_history``; ``off`` keeps
no file). The file holds the last ``HISTORY_LINES`` lines, one per line, is private (mode 0600) and
is replaced atomically, merged with what another chat saved meanwhile. Piped input never imports
``readline`` (it would only add escape codes); where ``readline`` is missing (Windows) input stays
plain.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# name -> (usage, one line of help), in the order /help lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("/help", "list these commands"),
    "reset": ("/reset", "forget the conversation (the system prompt stays)"),
    "think": ("/think", "let the model think before answering (Qwen3 and later)"),
    "no_think": ("/no_think", "answer without thinking"),
    "image": ("/image PATH", "attach an image to your next message (needs --mmproj)"),
    "audio": ("/audio PATH", "attach an audio clip to your next message (needs --mmproj)"),
    "exit": ("/exit", "quit (Ctrl-D too)"),
}
HELP = "\n".join(
    [
        "commands:",
        *(f"  {usage:<13} {text}" for usage, text in COMMANDS.values()),
        f"  {'//TEXT':<13} send /TEXT as a message (a line like /word is a command)",
        "Ctrl-C stops an answer; on a terminal Up/Down and Ctrl-R recall earlier lines",
    ]
)

# A line is a command only when it starts (after blanks) with "/", lowercase letters or "_", then a
# blank or the end: "/reset", "/image cat.png", "/frobnicate" (unknown: answered, never sent). Other
# lines that start with a slash are text for the model: "/usr/bin is what?", "/Users/me", "/5 of
# them" look like paths and numbers, not like mistyped commands. "//word ..." sends "/word ...".
_COMMAND = re.compile(r"/([a-z_]+)(?:\s|\Z)")

HISTORY_ENV = "EDGE_QWEN_CHAT_HISTORY"
HISTORY_LINES = 1000


def parse_command(line: str) -> tuple[str, str] | None:
    """``(name, argument)`` when ``line`` is a slash command (known or not), else None."""
    text = line.strip()
    if (m := _COMMAND.match(text)) is None:
        return None
    return m.group(1), text[m.end() :].strip()


def message_text(line: str) -> str:
    """What a non-command line sends: as typed, but ``//word ...`` loses its escaping slash."""
    text = line.lstrip()
    return text[1:] if text.startswith("//") and _COMMAND.match(text[1:]) else line


def unknown_command(name: str) -> str:
    return f"unknown command /{name} (not sent to the model); /help lists the commands, //{name} sends it"


def history_path() -> Path | None:
    """Where the chat history lives; None when ``$EDGE_QWEN_CHAT_HISTORY`` is ``off``."""
    value = os.environ.get(HISTORY_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    from ..registry.sources import cache_root

    return cache_root() / "chat_history"


@contextlib.contextmanager
def line_editing(stdin: Any = None, warn: Callable[[str], None] | None = None) -> Iterator[None]:
    """While inside: ``input()`` edits lines and recalls history when ``stdin`` is a terminal."""
    readline = _import_readline() if _is_tty(sys.stdin if stdin is None else stdin) else None
    if readline is None:
        yield
        return
    path = history_path()
    for entry in _read_entries(path)[-HISTORY_LINES:] if path is not None else ():
        readline.add_history(entry)
    start = readline.get_current_history_length()
    try:
        yield
    finally:
        end = readline.get_current_history_length()
        typed = [readline.get_history_item(i) for i in range(start + 1, end + 1)]
        if path is not None and (typed := [t for t in typed if t]):
            try:
                _save(path, typed)
            except OSError as exc:
                (warn or _stderr)(f"warning: chat history not saved to {path}: {exc.strerror or exc}")


def _import_readline() -> Any:
    try:
        return importlib.import_module("readline")
    except ImportError:  # Windows, or a Python built without it: plain input()
        return None


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def _read_entries(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # none yet, or unreadable: start empty
        return []
    return [line for line in text.split("\n") if line]


def _save(path: Path, typed: list[str]) -> None:
    """Append this chat's lines to what the file holds now (another chat may have saved since this
    one began), keep the last ``HISTORY_LINES``, and replace the file atomically, private."""
    from .._atomic import atomic_path

    entries = (_read_entries(path) + [t.replace("\n", " ") for t in typed])[-HISTORY_LINES:]
    with atomic_path(path) as tmp:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            f.write("".join(f"{entry}\n" for entry in entries))


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)
