"""``edge-qwen quantize IN.gguf (-q q4_k_m[,q8_0…] | --target-size SIZE | --target-bpw BITS) [-o DIR]``
``[--imatrix [FILE]] [--threads N] [--allow-requantize] [--eval] [--quiet] [--json]``

``--target-size`` / ``--target-bpw`` search each tensor's type for the least loss in that many
bytes (:mod:`edge_qwen.quant_search`): one file, never larger, with its quality report and mix in
the manifest.

Quantizes in-process with llama.cpp (see :mod:`edge_qwen.quantize`); each output gets a manifest
``<output>.json``. ``--imatrix`` weighs the rounding by an importance matrix: computed in-process
on the shipped calibration text and kept beside the input as ``IN.imatrix.gguf`` (reused while the
input and the text are unchanged; see :mod:`edge_qwen.imatrix`), or read from ``FILE`` (also one
made by ``llama-imatrix``). ``--eval`` scores every output against the input (top-1 agreement, KL, PPL;
see :mod:`edge_qwen.quality`) and adds the figures to its manifest.

JSON keys (``--json``)::

    input      str         the input GGUF
    outputs    [ {path, quant_type, source, size, sha256, elapsed_s, manifest_path, requantized,
                  quality: null | {path, reference, label, size, n_tokens, top1_pct, mean_kl,
                                   p99_kl, max_kl, perplexity, reference_perplexity}} ]
    evaluated  bool        whether --eval ran
    imatrix    null | {path, chunks, chunk_size, dataset, reused}

With ``--target-size``/``--target-bpw``: one output, whose ``quant_type`` is ``MIX``, with
``mix`` ({type: tensors}), ``weighting``, ``tried`` ([{weighting, bytes, search_kl, mix}]),
``quality`` (always measured) and ``search_s``; and ``target_bytes`` at the top.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError
from ..manifest import update_manifest
from ..quantize import QUANT_TYPES, parse_quant_list, quantize
from ._types import positive_float, positive_int


def configure_parser(parser: argparse.ArgumentParser) -> None:
    types = ", ".join(f"{q.name} ({q.bits_per_weight:g} bpw)" for q in QUANT_TYPES.values())
    parser.add_argument("input", help="GGUF file to quantize (ideally the F16/BF16 original)")
    parser.add_argument("-q", "--quants", help=f"comma-separated types: {types}")
    parser.add_argument(
        "--target-size", default=None, metavar="SIZE",
        help="instead of -q: the best per-tensor mix of at most SIZE (bytes, or 469MiB, 0.5GB)",
    )  # fmt: skip
    parser.add_argument(
        "--target-bpw", type=positive_float, default=None, metavar="BITS",
        help="instead of -q: the best per-tensor mix of at most BITS bits per weight (e.g. 4.5)",
    )  # fmt: skip
    parser.add_argument("-o", "--outdir", help="output folder (default: next to the input)")
    parser.add_argument(
        "--threads", type=positive_int, help="quantizer/evaluation threads (default: all cores)"
    )
    parser.add_argument(
        "--allow-requantize",
        action="store_true",
        help="accept an already-quantized input (quality suffers: rounding errors compound)",
    )
    parser.add_argument(
        "--imatrix", nargs="?", const="auto", default=None, metavar="FILE",
        help="weigh the rounding by an importance matrix: computed on the built-in calibration text "
        "and kept beside the input (reused), or read from FILE; helps most below 5 bits per weight",
    )  # fmt: skip
    parser.add_argument("--eval", action="store_true", help="report top-1 agreement and KL vs the input")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> dict[str, Any]:
    quiet = args.quiet or args.json
    targeted = args.target_size is not None or args.target_bpw is not None
    if bool(args.quants) == targeted:
        raise ConfigError("give either -q TYPES or a target (--target-size SIZE or --target-bpw BITS)")
    if targeted:
        return _search(args, quiet)
    rows = parse_quant_list(args.quants)  # fail on a bad name before any work
    weights, source = _imatrix(args, quiet) if args.imatrix else (None, None)
    results = [
        quantize(
            args.input,
            q.name,
            out_dir=args.outdir,
            threads=args.threads,
            allow_requantize=args.allow_requantize,
            quiet=quiet,
            imatrix=weights,
            imatrix_source=source,
        )
        for q in rows
    ]
    outputs = [dict(r.as_dict(), quality=None) for r in results]
    if not args.json:
        _print_outputs(outputs)
    if args.eval:
        _evaluate(args, outputs, quiet)
    return {"input": args.input, "outputs": outputs, "evaluated": bool(args.eval), "imatrix": source}


def _search(args: argparse.Namespace, quiet: bool) -> dict[str, Any]:
    from ..quant_search import search, target_bytes
    from ..sizing.device import parse_size

    size = parse_size(args.target_size) if args.target_size is not None else None
    if args.imatrix not in (None, "auto"):
        raise ConfigError(
            "--target-size/--target-bpw compute their own importance matrix; drop --imatrix FILE"
        )
    target = target_bytes(args.input, size, args.target_bpw)
    found = search(args.input, target, out_dir=args.outdir, threads=args.threads, quiet=quiet)
    out = found.as_dict()
    if not args.json:
        q = found.quality
        size_mib, took = out["size"] / 2**20, found.elapsed_s
        print(f"{out['quant_type']:>7}  {size_mib:9.1f} MiB  {took:6.1f} s  {out['path']}")
        print(f"  types: {', '.join(f'{k} x{v}' for k, v in found.mix.counts().items())}")
        print(f"  vs the input on held-out text: KL {q['mean_kl']:.5f}, top-1 {q['top1_pct']:.1f}%")
    return {"input": args.input, "outputs": [out], "evaluated": True, "imatrix": None, "target_bytes": target}


def _imatrix(args: argparse.Namespace, quiet: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The importance matrix ``--imatrix`` names (computed or reused beside the input, or a file)."""
    from ..imatrix import ensure_imatrix, load_imatrix

    def progress(done: int, total: int) -> None:
        if not quiet:
            end = "\n" if done == total else ""
            print(f"\rimportance matrix: chunk {done}/{total}", end=end, file=sys.stderr, flush=True)

    if args.imatrix == "auto":
        path, matrix, reused = ensure_imatrix(args.input, progress=progress, threads=args.threads)
    else:
        (matrix, _keys), path, reused = load_imatrix(args.imatrix), args.imatrix, True
    source = {
        "path": str(path), "chunks": matrix.chunks, "chunk_size": matrix.chunk_size,
        "dataset": matrix.dataset, "reused": reused,
    }  # fmt: skip
    if not quiet and reused:
        print(f"importance matrix: {path} ({matrix.chunks} chunks)", file=sys.stderr)
    return matrix.quantizer_input(), source


def _evaluate(args: argparse.Namespace, outputs: list[dict[str, Any]], quiet: bool) -> None:
    """Score every output against the input and record the figures in its manifest."""
    from ..quality import evaluate_quality, format_table

    if not quiet:
        print(f"evaluating {len(outputs)} output(s) against {args.input} …", file=sys.stderr)
    scores = evaluate_quality(args.input, [o["path"] for o in outputs], threads=args.threads)
    for out, score in zip(outputs, scores, strict=True):
        out["quality"] = score.as_dict()
        update_manifest(out["path"], quality=out["quality"])
    if not args.json:
        print()
        print(format_table(scores))


def _print_outputs(outputs: list[dict[str, Any]]) -> None:
    for o in outputs:
        note = "  (re-quantized)" if o["requantized"] else ""
        size = o["size"] / 2**20
        print(f"{o['quant_type']:>7}  {size:9.1f} MiB  {o['elapsed_s']:6.1f} s  {o['path']}{note}")
