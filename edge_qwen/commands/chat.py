"""``edge-qwen chat MODEL`` — interactive, streaming, multi-turn chat.

Commands: ``/reset`` forgets the conversation, ``/think`` and ``/no_think`` switch Qwen3 thinking,
``/image PATH`` and ``/audio PATH`` attach a file to the next message (the model needs ``--mmproj``),
``/exit`` (or Ctrl-D) quits. A refused image or clip is reported and the turn dropped; the chat goes
on. Ctrl-C while an answer is printing cancels that answer only; the
partial answer is kept in the history. Earlier turns stay in llama.cpp's KV cache, so each turn
only prefills the new message.
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
from .run import print_stream

HELP = "commands: /reset  /think  /no_think  /image PATH  /audio PATH  /exit"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_media_arguments(parser, files=False)
    add_sampling_arguments(parser)


def main(args: argparse.Namespace) -> dict[str, Any]:
    fill_mmproj(args)
    options = chat_options(args)
    history: list[dict[str, Any]] = list(system_messages(args.system))
    attached: list[dict[str, Any]] = []  # media parts for the next user message
    turns = 0
    with load_model(args) as model:
        _say(args, f"{model.path.name} loaded ({model.n_ctx} tokens of context). {HELP}")
        if (note := thinking_note(model, args.think)) is not None:
            _warn(f"warning: {note}")
        while True:
            line = _read(args)
            if line is None or line.strip() == "/exit":
                break
            command = line.strip()
            if command == "/reset":
                history = system_messages(args.system)
                model.reset()
                _say(args, "conversation reset")
                continue
            if command in ("/think", "/no_think"):
                note = thinking_note(model, command == "/think")
                if note is None:
                    options["enable_thinking"] = command == "/think"
                _say(args, note or f"thinking {'on' if options['enable_thinking'] else 'off'}")
                continue
            if not command:
                continue
            if command.split(maxsplit=1)[0] in ("/image", "/audio"):
                _attach(args, command, attached)
                continue
            history.append({"role": "user", "content": [*attached, {"type": "text", "text": line}]
                            if attached else line})  # fmt: skip
            attached = []
            try:
                history.append({"role": "assistant", "content": _answer(model, history, options, args)})
            except MediaError as exc:
                history.pop()
                _warn(f"error: {exc} (message not sent)")
                continue
            turns += 1
    return {"turns": turns}


def _attach(args: Any, command: str, attached: list[dict[str, Any]]) -> None:
    """``/image PATH`` / ``/audio PATH``: read the file now, send it with the next message."""
    kind, _, path = command.partition(" ")
    kind, path = kind[1:], path.strip().strip("'\"")
    if not path:
        _warn(f"usage: /{kind} PATH")
        return
    try:
        attached.append(media_part(kind, path, args.mmproj))
    except ConfigError as exc:
        _warn(f"error: {exc}")
        return
    _say(args, f"{kind} {path} attached to your next message")


def _answer(model: Any, history: list[dict[str, Any]], options: dict[str, Any], args: Any) -> str:
    stream = model.chat_stream(history, truncate=True, **options)
    try:
        if args.json:
            for _ in stream:
                pass
        else:
            print_stream(stream)
    except KeyboardInterrupt:
        stream.cancel()
        for _ in stream:  # drain until the worker confirms; the model stays usable
            pass
        _say(args, "\n[cancelled]")
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
