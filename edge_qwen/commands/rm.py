"""``edge-qwen rm NAME[:QUANT]`` — delete a registry model's cached files (all quants for a bare name).

JSON keys: name, quants, removed (paths deleted; HF cache snapshot links and their blobs).
"""

from __future__ import annotations

import argparse
from typing import Any


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="NAME[:QUANT]", help="registry model, e.g. qwen3-4b:q4_k_m")


def main(args: argparse.Namespace) -> dict[str, Any]:
    from ..registry import remove

    result = remove(args.spec)
    if not args.json:
        if not result["removed"]:
            print(f"{result['name']}: nothing cached")
        for path in result["removed"]:
            print(f"removed {path}")
    return result
