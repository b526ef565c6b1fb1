"""``edge-qwen chat MODEL`` — interactive, streaming, multi-turn chat.

Commands: ``/reset`` forgets the conversation, ``/think`` and ``/no_think`` switch Qwen3 thinking,
``/exit`` (or Ctrl-D) quits. Ctrl-C while an answer is printing cancels that answer only; the
partial answer is kept in the history. Earlier turns stay in llama.cpp's KV cache, so each turn
only prefills the new message.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._runtime_args import (
    add_model_arguments,
    add_sampling_arguments,
    chat_options,
    load_model,
    system_messages,
)
from .run import print_stream

HELP = "commands: /reset  /think  /no_think  /exit"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_sampling_arguments(parser)


def main(args: argparse.Namespace) -> dict[str, Any]:
    options = chat_options(args)
    history = system_messages(args.system)
    turns = 0
    with load_model(args) as model:
        _say(args, f"{model.path.name} loaded ({model.n_ctx} tokens of context). {HELP}")
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
                options["enable_thinking"] = command == "/think"
                _say(args, f"thinking {'on' if options['enable_thinking'] else 'off'}")
                continue
            if not command:
                continue
            history.append({"role": "user", "content": line})
            history.append({"role": "assistant", "content": _answer(model, history, options, args)})
            turns += 1
    return {"turns": turns}


def _answer(model: Any, history: list[dict[str, str]], options: dict[str, Any], args: Any) -> str:
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
