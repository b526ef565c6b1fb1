#!/usr/bin/env python3
"""Quantization at equal size: edge-qwen's searched mix against llama.cpp's standard types.

    python benchmarks/bench_quant_mix.py [--reference F16.gguf] [--out DIR] [--png FILE]

The reference is unquantized-like: the real Qwen2.5-Coder-0.5B Q4_K_M, dequantized and dithered
off its grid (benchmarks/dithered_reference.py says why). Against it, on the quality report's
held-out text (edge_qwen/data/calibration.txt; the search never sees it):

* llama.cpp's standard types Q3_K_M, Q4_0, Q4_K_S, Q4_K_M, Q5_K_M, without and with an importance
  matrix. The matrix is edge-qwen's, which matches llama-imatrix to within 1%, and llama.cpp's own
  quantizer gives byte-identical tensors from either.
* edge-qwen's ``quantize --target-size`` at the byte size of each standard type.

Prints one JSON object: size and mean KL of every file, the ratios the issue asks for, the search's
time, and the machine. ``--png`` draws the size–KL curve (it needs matplotlib, which edge-qwen does
not depend on: ``.venv/bin/pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STANDARD = ("q3_k_m", "q4_0", "q4_k_s", "q4_k_m", "q5_k_m")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/edge-qwen/bench-quant-mix")
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from edge_qwen import quant_mix
    from edge_qwen.imatrix import ensure_imatrix
    from edge_qwen.quality import evaluate_quality
    from edge_qwen.quant_search import search
    from edge_qwen.quantize import quantize

    ref = args.reference
    if ref is None:
        import fetch_assets
        from dithered_reference import dither

        ref = args.out / "qwen2.5-coder-0.5b-dithered-f16.gguf"
        if not ref.exists():
            dither(fetch_assets.fetch_gguf(log=lambda _m: None), ref)
    _, matrix, _ = ensure_imatrix(ref)
    weights = matrix.quantizer_input()
    files: dict[str, Path] = {}
    for q in STANDARD:
        for imx in (False, True):
            path = args.out / f"std-{q}{'-imatrix' if imx else ''}.gguf"
            if not path.exists():
                quantize(ref, q, path, quiet=True, imatrix=weights if imx else None)
            files[f"{q}{' + imatrix' if imx else ''}"] = path
    started = time.perf_counter()
    measured = quant_mix.measure(ref, weights)
    measure_s = time.perf_counter() - started
    search_s = {}
    for q in STANDARD:
        target = files[q].stat().st_size
        t = time.perf_counter()
        found = search(ref, target, args.out / f"mix-{q}-size.gguf", quiet=True, measured=measured)
        search_s[q] = round(time.perf_counter() - t + measure_s, 1)
        files[f"mix at {q} size"] = found.result.path
    scores = evaluate_quality(ref, list(files.values()))
    rows = {
        label: {"bytes": s.size, "mean_kl": s.mean_kl, "top1_pct": s.top1_pct}
        for label, s in zip(files, scores, strict=True)
    }
    kl = {k: v["mean_kl"] for k, v in rows.items()}
    out = {
        "reference": ref.name,
        "eval_tokens": scores[0].n_tokens,
        "rows": rows,
        "ratios": {
            "mix / q4_k_m at q4_k_m size": kl["mix at q4_k_m size"] / kl["q4_k_m"],
            "mix / (q4_0 + imatrix) at q4_0 size": kl["mix at q4_0 size"] / kl["q4_0 + imatrix"],
        },
        "search_s_each_incl_measure": search_s,
        "machine": {
            "cpu": _cpu(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
    }
    print(json.dumps(out, indent=1))
    if args.png:
        _plot(rows, args.png)
    return 0


def _plot(rows: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for kind, marker, pick in (
        ("llama.cpp standard", "o", lambda k: "+" not in k and not k.startswith("mix")),
        ("llama.cpp standard + imatrix", "s", lambda k: "+ imatrix" in k),
        ("edge-qwen mix (search)", "*", lambda k: k.startswith("mix")),
    ):
        pts = sorted((v["bytes"] / 2**20, v["mean_kl"]) for k, v in rows.items() if pick(k))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=kind)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL vs reference (held-out text)")
    ax.set_title("Qwen2.5-Coder-0.5B (dithered F16 reference)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
