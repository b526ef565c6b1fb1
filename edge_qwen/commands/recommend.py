"""``edge-qwen recommend`` — the most capable registry model and quant that fits, and why.

Fit is judged by the scheduler's memory estimator at ``--ctx`` against a device profile
(``--device``), a budget (``--budget``) or this machine's available memory. JSON keys: target,
budget_bytes, task, n_ctx, choice / runner_up / next_larger ({name, quant, spec, estimate_bytes,
fits, effective_params, license, decode_tok_s, prefill_tok_s} or null), min_tok_s, speed_basis,
reasons (list of sentences), fitting, considered. Speeds are estimates (:mod:`edge_qwen.sizing.speed`).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..registry.catalog import TASKS
from ._types import positive_float, positive_int


def configure_parser(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--device", help="device profile, e.g. raspberry-pi-4-4gb (see edge_qwen/data/devices.yaml)"
    )
    where.add_argument("--budget", help="memory budget, e.g. 3.5GB or 3000MiB")
    parser.add_argument("--task", choices=TASKS, default=None, help="what the model is for (default: any)")
    parser.add_argument(
        "--ctx", type=positive_int, default=4096, help="context length it must hold (default 4096)"
    )
    parser.add_argument(
        "--min-speed", type=positive_float, default=None, metavar="TOK_S",
        help="slowest acceptable decode, tokens/s (default per task: 5, reasoning 8, math 3)",
    )  # fmt: skip


def main(args: argparse.Namespace) -> dict[str, Any]:
    from ..registry import load_registry
    from ..registry.fit import resolve_target, scheduler_estimator
    from ..registry.recommend import recommend

    target = resolve_target(args.device, args.budget)
    result = recommend(
        load_registry(), scheduler_estimator(target.cpu_features), target.budget_bytes,
        task=args.task, n_ctx=args.ctx, target=target.label, speed=target.throughput,
        min_tok_s=args.min_speed,
    )  # fmt: skip
    if not args.json:
        print(f"{result['choice']['spec']}   (for {target.label}, {args.ctx}-token context)")
        for reason in result["reasons"]:
            print(f"  - {reason}")
        print(f"  pull it: edge-qwen pull {result['choice']['spec']}")
    return result
