"""Command-line options shared by ``run``, ``chat`` and ``tokenize``: loading a GGUF and sampling it."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="a .gguf file, or a registry name[:quant] already pulled (edge-qwen models lists them)"
    )
    parser.add_argument("--ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-tokens", type=int, default=None, help="most tokens to generate")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: model preset)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for reproducible answers")
    think = parser.add_mutually_exclusive_group()
    think.add_argument(
        "--think", dest="think", action="store_true", default=None, help="Qwen3: reason before answering"
    )
    think.add_argument("--no-think", dest="think", action="store_false", help="Qwen3: answer directly")
    parser.add_argument(
        "--thinking-budget",
        type=int,
        default=None,
        help="Qwen3: end the reasoning after this many tokens and answer",
    )


def load_model(args: argparse.Namespace) -> Any:
    from ..registry import resolve_model
    from ..runtime.model import Model

    return Model.load(resolve_model(args.model), n_ctx=args.ctx, n_threads=args.threads)


def chat_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of Model.chat from the parsed options (unset ones keep the model preset)."""
    return {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "enable_thinking": args.think,
        "thinking_budget": args.thinking_budget,
    }


def system_messages(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []
