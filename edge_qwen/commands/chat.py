"""``edge-qwen chat MODEL`` — interactive, streaming, multi-turn chat.

Commands (``/help`` lists them): ``/reset`` forgets the conversation, ``/think`` and ``/no_think``
switch Qwen3 thinking, ``/image PATH`` and ``/audio PATH`` attach a file to the next message (the
model needs ``--mmproj``), ``/exit`` (or Ctrl-D) quits. An unknown ``/word`` is answered, not sent;
``chat_input`` says which lines are commands. On a terminal, lines are edited with readline and
recalled from earlier chats. A refused image or clip is reported and the turn dropped; the chat goes
on. Ctrl-C while an answer is printing cancels that answer only; the partial answer is kept in the
history. Earlier turns stay in llama.cpp's KV cache, so each turn only prefills the new message.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError, MediaError
from ._runtime_args import (
    add_media_arguments,
    add_model_arguments,
    add_sampling_arguments,
    chat_options,
    fill_mmproj,
    load_model,
    media_part,
    system_messages,
    thinking_note,
)
from .chat_input import COMMANDS, HELP, line_editing, message_text, parse_command, unknown_command
from .run import print_stream


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_media_arguments(parser, files=False)
    add_sampling_arguments(parser)


def main(args: argparse.Namespace) -> dict[str, Any]:
    fill_mmproj(args)
    with load_model(args) as model:
        chat = Chat(model, args)
        _say(args, f"{model.path.name} loaded ({model.n_ctx} tokens of context). /help lists the commands")
        if (note := thinking_note(model, args.think)) is not None:
            _warn(f"warning: {note}")
        with line_editing():
            while (line := _read(args)) is not None and chat.handle(line):
                pass
    return {"turns": chat.turns}


class Chat:
    """One conversation: the messages so far, the options, and what each typed line does."""

    def __init__(self, model: Any, args: Any) -> None:
        self.model, self.args = model, args
        self.options = chat_options(args)
        self.history: list[dict[str, Any]] = list(system_messages(args.system))
        self.attached: list[dict[str, Any]] = []  # media parts for the next user message
        self.turns = 0

    def handle(self, line: str) -> bool:
        """Act on one input line: a command, or a message for the model. False: the chat ends."""
        command = parse_command(line)
        if command is None:
            if line.strip():
                self._send(message_text(line))
            return True
        name, argument = command
        if name not in COMMANDS:
            _warn(unknown_command(name))
        elif name in ("image", "audio"):
            self._attach(name, argument)
        elif argument:
            _warn(f"usage: {COMMANDS[name][0]} (it takes no argument)")
        elif name == "exit":
            return False
        elif name == "help":
            print(HELP, file=sys.stderr)  # asked for, so shown under --json too (stdout keeps the JSON)
        elif name == "reset":
            self.history = system_messages(self.args.system)
            self.model.reset()
            _say(self.args, "conversation reset")
        else:
            self._think(name == "think")
        return True

    def _think(self, on: bool) -> None:
        if (note := thinking_note(self.model, on)) is not None:
            _warn(f"warning: {note}")  # like the one at the start, also under --json
            return
        self.options["enable_thinking"] = on
        _say(self.args, f"thinking {'on' if on else 'off'}")

    def _attach(self, kind: str, path: str) -> None:
        """``/image PATH`` / ``/audio PATH``: read the file now, send it with the next message."""
        path = path.strip("'\"")
        if not path:
            _warn(f"usage: /{kind} PATH")
            return
        try:
            self.attached.append(media_part(kind, path, self.args.mmproj))
        except ConfigError as exc:
            _warn(f"error: {exc}")
            return
        _say(self.args, f"{kind} {path} attached to your next message")

    def _send(self, text: str) -> None:
        content = [*self.attached, {"type": "text", "text": text}] if self.attached else text
        self.history.append({"role": "user", "content": content})
        self.attached = []
        try:
            self.history.append({"role": "assistant", "content": self._answer()})
        except MediaError as exc:
            self.history.pop()
            _warn(f"error: {exc} (message not sent)")
            return
        self.turns += 1

    def _answer(self) -> str:
        stream = self.model.chat_stream(self.history, truncate=True, **self.options)
        try:
            if self.args.json:
                for _ in stream:
                    pass
            else:
                print_stream(stream)
        except KeyboardInterrupt:
            stream.cancel()
            for _ in stream:  # drain until the worker confirms; the model stays usable
                pass
            _say(self.args, "\n[cancelled]")
        return stream.result.text


def _read(args: Any) -> str | None:
    try:
        return input("" if args.json else "> ")
    except EOFError:
        return None
    except KeyboardInterrupt:
        _say(args, "")
        return ""


def _say(args: Any, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr)


def _warn(text: str) -> None:
    """A problem the chat survives: on stderr, also under --json (stdout keeps its one object)."""
    print(text, file=sys.stderr)
