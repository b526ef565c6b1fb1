#!/usr/bin/env python3
"""edge-qwen's importance matrix against llama.cpp's own ``llama-imatrix``, and the files quantized
with it against ``llama-quantize --imatrix``, from the same llama.cpp.

    python benchmarks/anchor_imatrix.py [--model F16.gguf] [--tools DIR] [--quant q4_0]

Both tools read the same F16 GGUF and edge-qwen's shipped calibration text, in 512-token chunks. The
script prints one JSON object with:

* the tensors each tool collected, and the token counts;
* the largest relative difference between the two matrices' means, per tensor;
* the time each tool took;
* whether ``quantize(imatrix=…)`` and ``llama-quantize --imatrix`` wrote the same tensors, byte for
  byte, from llama-imatrix's matrix.

Build the tools with ``scripts/build_llama_tools.sh llama-imatrix llama-quantize``. The default
model is the benchmark's dithered F16 of the real 0.5B (``benchmarks/bench_quant_mix.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOOLS = Path.home() / ".cache/edge-qwen-backends/llama-tools/build/bin"
DEFAULT = Path.home() / ".cache/edge-qwen/bench-quant-mix/qwen2.5-coder-0.5b-dithered-f16.gguf"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT)
    parser.add_argument("--tools", type=Path, default=TOOLS)
    parser.add_argument("--quant", default="q4_0")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import gguf

    from edge_qwen.imatrix import CHUNK, compute_imatrix, data_path, load_imatrix
    from edge_qwen.quantize import quantize

    text = data_path("imatrix_calibration.txt")
    with tempfile.TemporaryDirectory() as tmp:
        theirs_path = Path(tmp) / "theirs.imatrix.gguf"
        started = time.perf_counter()
        subprocess.run(
            [str(args.tools / "llama-imatrix"), "-m", str(args.model), "-f", str(text),
             "-o", str(theirs_path), "-c", str(CHUNK), "-t", str(args.threads), "--no-ppl"],
            check=True, capture_output=True,
        )  # fmt: skip
        theirs_s = time.perf_counter() - started
        started = time.perf_counter()
        ours = compute_imatrix(args.model, threads=args.threads)
        ours_s = time.perf_counter() - started
        theirs, _ = load_imatrix(theirs_path)
        diffs = {
            n: float(np.abs(ours.means(n) - theirs.means(n)).max() / np.abs(theirs.means(n)).max())
            for n in sorted(set(ours.sums) & set(theirs.sums))
        }
        a, b = Path(tmp) / "ours.gguf", Path(tmp) / "theirs.gguf"
        quantize(
            args.model, args.quant, a, quiet=True, imatrix=theirs.quantizer_input(), threads=args.threads
        )
        subprocess.run(
            [str(args.tools / "llama-quantize"), "--imatrix", str(theirs_path), str(args.model), str(b),
             args.quant.upper(), str(args.threads)],
            check=True, capture_output=True,
        )  # fmt: skip
        ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
        tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
        different = [
            n for n in tb
            if n not in ta or ta[n].tensor_type != tb[n].tensor_type
            or not np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))
        ]  # fmt: skip
    worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    median = float(np.median(list(diffs.values())))
    print(json.dumps({
        "model": args.model.name,
        "tensors": {"ours": len(ours.sums), "llama_imatrix": len(theirs.sums), "both": len(diffs)},
        "tokens": {"ours": int(next(iter(ours.counts.values()))[0]),
                   "llama_imatrix": int(next(iter(theirs.counts.values()))[0])},
        "max_relative_difference": {"worst": worst, "median": median},
        "seconds": {"ours": round(ours_s, 1), "llama_imatrix": round(theirs_s, 1)},
        "same_matrix_quantized": {"quant": args.quant, "tensors": len(tb), "different": different},
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
