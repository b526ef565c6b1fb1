"""``edge-qwen run MODEL PROMPT`` — one answer from a GGUF, through the model's chat template
(``PROMPT`` ``-`` reads it from standard input: ``git diff | edge-qwen run MODEL -``).

The prompt becomes a user message (after ``--system`` if given), after the ``--image`` / ``--audio``
files when there are any (they need the model's ``--mmproj``). ``--stream`` prints the answer as
it is generated (reasoning on stderr, dimmed into brackets, for Qwen3 thinking). JSON keys
(``--json``): text, reasoning, finish_reason, usage {prompt_tokens, completion_tokens,
cached_tokens}, timings {ttft_ms, prefill_tok_s, decode_tok_s, queue_ms}.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError
from ._runtime_args import (
    add_media_arguments,
    add_model_arguments,
    add_sampling_arguments,
    chat_options,
    fill_mmproj,
    load_model,
    system_messages,
    thinking_note,
    user_content,
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("prompt", help="the user message; - reads it from standard input")
    add_media_arguments(parser, files=True)
    add_sampling_arguments(parser)
    parser.add_argument("--stream", action="store_true", help="print the answer while it is generated")


def main(args: argparse.Namespace) -> dict[str, Any]:
    fill_mmproj(args)
    if args.prompt == "-":
        args.prompt = sys.stdin.read()
        if not args.prompt.strip():
            raise ConfigError("the prompt read from standard input is empty; pipe text into `run MODEL -`")
    content = user_content(args.prompt, args.image, args.audio, args.mmproj)  # before the model loads
    messages = system_messages(args.system) + [{"role": "user", "content": content}]
    with load_model(args) as model:
        if (note := thinking_note(model, args.think)) is not None:
            print(f"warning: {note}", file=sys.stderr)
        if args.stream and not args.json:
            stream = model.chat_stream(messages, **chat_options(args))
            print_stream(stream)
            result = stream.result
        else:
            result = model.chat(messages, **chat_options(args))
            if not args.json:
                if result.reasoning:
                    print(f"<think>\n{result.reasoning}\n</think>\n", file=sys.stderr)
                print(result.text)
    data = result.to_dict()
    data.pop("token_ids")
    return data


def print_stream(stream: Any) -> None:
    """Write chunks as they come: reasoning to stderr, the answer to stdout."""
    reasoning = False
    for chunk in stream:
        if chunk.kind == "reasoning" and chunk.text:
            if not reasoning:
                sys.stderr.write("<think>\n")
                reasoning = True
            sys.stderr.write(chunk.text)
            sys.stderr.flush()
            continue
        if reasoning and chunk.text:
            sys.stderr.write("\n</think>\n")
            reasoning = False
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    if reasoning:
        sys.stderr.write("\n</think>\n")
    sys.stdout.write("\n")
    sys.stdout.flush()
