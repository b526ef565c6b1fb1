"""``edge-qwen convert SRC -o OUTDIR [-q q4_k_m,q8_0] [--outtype f16|bf16|f32] [--revision REV]``
``[--ctx N] [--no-eval] [--no-mtp | --mtp-only]``

JSON keys (``--json``): ``gguf`` (unquantized output path), ``source`` {path, repo_id, revision},
``architecture``, ``n_params``, ``outputs`` (one manifest per file, unquantized first: path, size,
sha256, quant_type, source, tool versions, ``quality`` {top1_pct, mean_kl, …} for quantized files).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..convert import convert
from ..convert.mmproj import MMPROJ_TYPES
from ..convert.tensors import OUTTYPES
from ._types import positive_int


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint folder, or a hub repo id such as Qwen/Qwen2.5-0.5B-Instruct")
    parser.add_argument("-o", "--outdir", required=True, help="output folder")
    parser.add_argument("-q", "--quants", default="", help="comma-separated quant types, e.g. q4_k_m,q8_0")
    parser.add_argument("--outtype", default="f16", choices=sorted(OUTTYPES), help="unquantized output type")
    parser.add_argument(
        "--mmproj-type",
        choices=sorted(MMPROJ_TYPES),
        help="Qwen-VL / Qwen2-Audio: type of the projector GGUF (default f16; f32 with --outtype f32)",
    )
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) to pin")
    parser.add_argument(
        "--ctx", type=positive_int, help="target context; above the native one writes YaRN rope scaling"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the quality report")
    mtp = parser.add_mutually_exclusive_group()
    mtp.add_argument(
        "--no-mtp",
        dest="mtp",
        action="store_const",
        const="drop",
        default="keep",
        help="Qwen3.5 / Qwen3-Next: leave the multi-token-prediction head out (kept by default)",
    )
    mtp.add_argument(
        "--mtp-only",
        dest="mtp",
        action="store_const",
        const="only",
        help="write the MTP head alone, as a small GGUF for drafting (…-mtp-<type>.gguf)",
    )
    parser.add_argument("--threads", type=positive_int, help="threads for quantization and evaluation")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> dict[str, Any]:
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    result = convert(
        args.src,
        args.outdir,
        quants=quants,
        outtype=args.outtype,
        revision=args.revision,
        ctx=args.ctx,
        evaluate=not args.no_eval,
        threads=args.threads,
        quiet=args.quiet or args.json,
        mmproj_type=args.mmproj_type,
        mtp=args.mtp,
    ).as_dict()
    if not args.json:
        for out in result["outputs"] + [m for m in [result.get("mmproj")] if m]:
            print(f"{out['quant_type']:>7}  {out['size'] / 2**20:9.1f} MiB  {out['path']}")
        rated = [out["quality"] for out in result["outputs"] if out.get("quality")]
        if rated:
            from ..quality import QualityResult, format_table

            print("\nquality vs " + result["gguf"])
            print(format_table([QualityResult(**q) for q in rated]))
    return result
