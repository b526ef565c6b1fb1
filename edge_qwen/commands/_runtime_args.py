"""Command-line options shared by ``run``, ``chat`` and ``tokenize``: loading a GGUF (with its
projector for images and audio) and sampling it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._types import non_negative_int, positive_int


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="a .gguf file, or a registry name[:quant] already pulled (edge-qwen models lists them)"
    )
    parser.add_argument(
        "--ctx", type=positive_int, default=4096, help="context size in tokens (default 4096)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads (default: physical cores)"
    )
    parser.add_argument(
        "--lora", action="append", default=[], metavar="FILE[:SCALE]",
        help="apply a GGUF LoRA adapter (from edge-qwen convert-lora) at SCALE (default 1.0); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--draft", default=None, metavar="FILE",
        help="a smaller GGUF with the same tokenizer that drafts tokens (speculative decoding, same output)",
    )  # fmt: skip
    parser.add_argument(
        "--mtp", action="store_true",
        help="draft with the model's own multi-token-prediction head (Qwen3.5, Qwen3-Next GGUFs converted "
        "with it; speculative decoding, same output)",
    )  # fmt: skip
    add_rpc_argument(parser)


def add_rpc_argument(parser: argparse.ArgumentParser, *, per_model: bool = False) -> None:
    """``--rpc`` and ``--tensor-split``; ``per_model`` (serve): ``--rpc`` repeats as ``[MODEL=]...``."""
    workers = "RPC workers (machines running edge-qwen worker) whose devices take the model's layers"
    if per_model:
        parser.add_argument(
            "--rpc", action="append", default=[], metavar="[MODEL=]HOST:PORT[,HOST:PORT...]",
            help=f"{workers}; repeat it per model (MODEL may be left out with one model); the others "
            "stay on this machine",
        )  # fmt: skip
    else:
        parser.add_argument(
            "--rpc", default=None, metavar="HOST:PORT[,HOST:PORT...]",
            help=f"{workers}, split by their free memory",
        )  # fmt: skip
    parser.add_argument(
        "--tensor-split", default=None, metavar="SHARE,SHARE...",
        help="split the layers by these shares instead: this machine's GPUs first, then the --rpc workers",
    )  # fmt: skip


def add_media_arguments(parser: argparse.ArgumentParser, *, files: bool) -> None:
    """``--mmproj`` (the projector of a vision/audio model); with ``files``, ``--image`` / ``--audio``."""
    parser.add_argument(
        "--mmproj", default=None, metavar="FILE",
        help="the vision/audio projector GGUF (default: the one edge-qwen convert paired with the model)",
    )  # fmt: skip
    if files:
        parser.add_argument(
            "--image", action="append", default=[], metavar="FILE",
            help="an image file (PNG, JPEG, WebP, ...) to ask about; repeatable; needs the model's mmproj",
        )  # fmt: skip
        parser.add_argument(
            "--audio", action="append", default=[], metavar="FILE",
            help="an audio file (WAV or MP3) to ask about; repeatable; needs --mmproj",
        )  # fmt: skip


def fill_mmproj(args: argparse.Namespace) -> None:
    """Without ``--mmproj``, the projector ``convert`` paired with the model (its manifest names it)."""
    if getattr(args, "mmproj", None):
        return
    from ..registry import resolve_model
    from ..registry.store import partner_mmproj

    partner = partner_mmproj(resolve_model(args.model))
    args.mmproj = str(partner) if partner is not None else None


def media_part(kind: str, path: str, mmproj: str | None) -> dict[str, Any]:
    """A content part for an image or audio file (read now), refused with the way out when the
    model has no projector or the file cannot be read.

    Raises:
        ConfigError: no ``--mmproj``, or the file is missing or unreadable.
    """
    from ..errors import ConfigError

    if not mmproj:
        raise ConfigError(
            f"{kind} input needs the model's projector: pass --mmproj FILE (the mmproj GGUF that "
            "edge-qwen convert wrote next to the model)"
        )
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {kind} {path}: {exc.strerror or exc}; check the path") from None
    return {"type": kind, kind: data}


def user_content(prompt: str, images: list[str], audio: list[str], mmproj: str | None) -> Any:
    """The user message's content: the prompt alone, or the images and clips first, then the text."""
    parts = [media_part("image", p, mmproj) for p in images] + [media_part("audio", p, mmproj) for p in audio]
    return [*parts, {"type": "text", "text": prompt}] if parts else prompt


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="most tokens to generate")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: model preset)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for reproducible answers")
    think = parser.add_mutually_exclusive_group()
    think.add_argument(
        "--think", dest="think", action="store_true", default=None, help="Qwen3: reason before answering"
    )
    think.add_argument("--no-think", dest="think", action="store_false", help="Qwen3: answer directly")
    parser.add_argument(
        "--thinking-budget",
        type=non_negative_int,
        default=None,
        help="Qwen3: end the reasoning after this many tokens and answer",
    )
    parser.add_argument(
        "--lookup", action="store_true",
        help="speculative decoding by prompt lookup: draft from the prompt and answer so far (same output)",
    )  # fmt: skip


def parse_lora(spec: str) -> tuple[str, float]:
    """``FILE`` or ``FILE:SCALE`` (a trailing ``:number``; a path may hold colons itself)."""
    from ..errors import ConfigError

    path, sep, tail = spec.rpartition(":")
    if sep:
        try:
            return path, float(tail)
        except ValueError:
            pass
    if not spec:
        raise ConfigError("--lora needs a GGUF adapter file, optionally FILE:SCALE")
    return spec, 1.0


def lora_choice(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, float]]:
    """Adapters to load (name -> file) and the request's set (name -> scale), named after the files."""
    files: dict[str, str] = {}
    scales: dict[str, float] = {}
    for i, spec in enumerate(getattr(args, "lora", None) or []):
        path, scale = parse_lora(spec)
        name = f"lora{i}"
        files[name], scales[name] = path, scale
    return files, scales


def load_model(args: argparse.Namespace) -> Any:
    from ..registry import resolve_model
    from ..runtime.model import Model

    files, _ = lora_choice(args)
    draft = getattr(args, "draft", None)
    return Model.load(
        resolve_model(args.model), n_ctx=args.ctx, n_threads=args.threads, adapters=files,
        draft=resolve_model(draft) if draft else None, mmproj=getattr(args, "mmproj", None),
        mtp=getattr(args, "mtp", False), rpc=getattr(args, "rpc", None) or (),
        tensor_split=getattr(args, "tensor_split", None),
    )  # fmt: skip


def thinking_note(model: Any, wanted: bool | None) -> str | None:
    """What to tell a user who asked for thinking from a model without a thinking mode (None: fine)."""
    if wanted is None or model.thinks:
        return None
    flags = "--think and /think" if wanted else "--no-think and /no_think"
    return (
        f"{model.path.name} has no thinking mode (its chat template ignores enable_thinking): "
        f"{flags} change nothing; Qwen3 and later models have one"
    )


def chat_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of Model.chat from the parsed options (unset ones keep the model preset)."""
    _, scales = lora_choice(args)
    return {
        "adapters": scales or None,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "enable_thinking": args.think,
        "thinking_budget": args.thinking_budget,
        "speculative": "lookup" if getattr(args, "lookup", False) else None,
    }


def system_messages(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []
