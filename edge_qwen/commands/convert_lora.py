"""``edge-qwen convert-lora ADAPTER -o OUTDIR [--base BASE] [--outtype f32|f16|bf16|q8_0] [--revision REV]``

JSON keys (``--json``): ``gguf`` (the adapter GGUF), ``source`` {path, repo_id, revision}, ``base``
{path, architecture}, ``architecture``, ``rank``, ``alpha``, ``use_rslora``, ``scale`` (PEFT's
alpha / r or alpha / √r), ``manifest`` (the ``<gguf>.json`` written beside it: size, sha256, …).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..convert.lora import LORA_OUTTYPES, convert_lora


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "adapter", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or hub repo id"
    )
    parser.add_argument("-o", "--outdir", required=True, help="output folder")
    parser.add_argument(
        "--base",
        help="base checkpoint folder (config.json is enough) or its GGUF; "
        "default: the adapter's base_model_name_or_path if it is local or in the HF cache",
    )
    parser.add_argument(
        "--outtype", default="f16", choices=list(LORA_OUTTYPES), help="type of the LoRA pairs"
    )
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) of the adapter")


def main(args: argparse.Namespace) -> dict[str, Any]:
    result = convert_lora(
        args.adapter, args.outdir, base=args.base, outtype=args.outtype, revision=args.revision
    ).as_dict()
    if not args.json:
        m = result["manifest"]
        print(
            f"{m['quant_type']:>5}  {m['size'] / 2**20:7.2f} MiB  {result['gguf']}\n"
            f"       {result['architecture']} LoRA, r={result['rank']}, alpha={result['alpha']:g}"
            f"{' (rsLoRA)' if result['use_rslora'] else ''}, scale {result['scale']:.4g}, "
            f"{m['lora']['n_pairs']} pairs on {', '.join(m['lora']['targets'])}"
        )
    return result
