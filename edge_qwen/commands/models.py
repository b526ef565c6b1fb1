"""``edge-qwen models`` — the registry's models, their quants, and what is cached where.

JSON: ``{"models": [{name, family, params_total, params_active, native_context, max_context,
license, tasks, thinking, hf_checkpoint, quants: [{quant, repo, size_bytes, sha256_known,
pypi_mirror, cached, path, partial}]}]}``.
"""

from __future__ import annotations

import argparse
from typing import Any


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cached", action="store_true", help="only models with a cached quant")


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.2f} GB"


def main(args: argparse.Namespace) -> dict[str, Any]:
    from ..registry import list_models

    rows = list_models()
    if args.cached:
        rows = [r for r in rows if any(q["cached"] for q in r["quants"])]
    if not args.json:
        for row in rows:
            params = f"{row['params_total'] / 1e9:.1f}B" + (
                f" ({row['params_active'] / 1e9:.1f}B active)" if row["params_active"] else ""
            )
            print(f"{row['name']:<28} {params:<20} ctx {row['native_context']:<6} {row['license']:<13} "
                  f"{','.join(row['tasks'])}")  # fmt: skip
            for q in row["quants"]:
                where = (
                    f"cached: {q['path']}" if q["cached"] else ("partial download" if q["partial"] else "")
                )
                print(f"    {q['quant']:<8} {_size(q['size_bytes']):>10}  {where}")
            if not row["quants"]:
                print(f"    (no GGUF listed; `edge-qwen pull {row['name']}` converts {row['hf_checkpoint']})")
    return {"models": rows}
