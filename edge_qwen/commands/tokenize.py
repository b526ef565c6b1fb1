"""``edge-qwen tokenize MODEL (--text T | --chat messages.json)`` — what the model will actually see.

``--chat`` takes a JSON file with a list of ``{"role", "content"}`` messages (or an object with a
``messages`` list) and renders it with the GGUF's chat template, tokenizing each segment with its
own parse_special flag exactly like ``run``/``chat`` do, so control tokens typed inside a message
stay plain text. JSON keys (``--json``): prompt (the rendered text), tokens [{id, piece}],
n_tokens, thinking_open.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="path of a .gguf model file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="plain text, tokenized as-is (no template, no special parsing)")
    source.add_argument("--chat", type=Path, help="JSON file with the chat messages")
    parser.add_argument(
        "--no-generation-prompt",
        action="store_true",
        help="do not append the assistant header after the messages",
    )
    parser.add_argument("--think", dest="think", action="store_true", default=None)
    parser.add_argument("--no-think", dest="think", action="store_false")


def main(args: argparse.Namespace) -> dict[str, Any]:
    from ..registry import resolve_model
    from ..runtime.model import Model
    from ..runtime.text.chat_template import render_plain

    with Model.load(resolve_model(args.model), n_ctx=256) as model:
        if args.text is not None:
            rendered = render_plain(args.text)
        else:
            rendered = model.render(
                _messages(args.chat),
                enable_thinking=args.think,
                add_generation_prompt=not args.no_generation_prompt,
            )
        ids = model.prompt_tokens(rendered)
        tokens = [{"id": t, "piece": model.token_piece(t).decode("utf-8", "replace")} for t in ids]
    data = {
        "prompt": rendered.text,
        "tokens": tokens,
        "n_tokens": len(ids),
        "thinking_open": rendered.thinking_open,
    }
    if not args.json:
        print(rendered.text)
        print(f"--- {len(ids)} tokens")
        for token in tokens:
            print(f"{token['id']:>8}  {token['piece']!r}")
    return data


def _messages(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read chat messages from {path}: {exc}; pass a JSON list of messages"
        ) from None
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ConfigError(
            f"{path} must hold a JSON list of {{'role', 'content'}} objects (or {{'messages': [...]}})"
        )
    return messages
