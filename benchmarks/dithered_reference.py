#!/usr/bin/env python3
"""An unquantized-like F16 reference from a quantized GGUF, for quantization benchmarks.

    python benchmarks/dithered_reference.py QUANTIZED.gguf OUT-F16.gguf [--seed 0]

No machine here reaches the real F16/BF16 weights; the real model is available only as a Q4_K_M
GGUF. Dequantizing it gives weights that sit exactly on the Q4_K_M grid, and a benchmark on those
is rigged: re-quantizing a tensor to the type it came from reproduces it exactly, so a search that
finds those types looks lossless. Real weights are continuous; their rounding error is spread
over about ±step/2 around each grid point.

This script therefore dequantizes every quantized tensor to F16 (with llama.cpp's quantizer) and
then adds uniform noise of ±step/2 to every weight. The step is estimated per run of 16 weights (the
smallest scale block of the K-quants) as the smallest gap between their distinct values, and the
noise comes from a fixed seed. The result is a coherent model off every grid, perturbed about as
much again as the Q4_K_M rounding perturbed the original. Quality figures measured against it are
relative to it: they compare recipes with one another, not with the original model.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BLOCK = 16


def block_steps(values: np.ndarray) -> np.ndarray:
    """The grid step of each run of BLOCK values (rows of ``values``): the smallest positive gap."""
    ordered = np.sort(values, axis=1)
    gaps = np.diff(ordered, axis=1)
    gaps[gaps <= 0] = np.inf
    step = gaps.min(axis=1)
    step[~np.isfinite(step)] = 0.0  # all equal: nothing to dither
    return step


def dither(source: Path, out: Path, seed: int = 0) -> Path:
    from edge_qwen.quantize import quantize

    tmp = out.with_name(out.name + ".f16")
    quantize(source, "f16", tmp, allow_requantize=True, quiet=True)
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(source).tensors}
    rng = np.random.default_rng(seed)
    reader = gguf.GGUFReader(tmp, "r+")
    for tensor in reader.tensors:
        if kinds.get(tensor.name) in (QT.F32, QT.F16, QT.BF16, None) or tensor.tensor_type != QT.F16:
            continue
        data = tensor.data.reshape(-1)  # a writable memory map of the F16 values
        for start in range(0, data.size, 1 << 22):
            part = data[start : start + (1 << 22)]
            blocks = part.astype(np.float32).reshape(-1, BLOCK)
            step = block_steps(blocks)[:, None]
            noisy = blocks + rng.uniform(-0.5, 0.5, blocks.shape).astype(np.float32) * step
            part[:] = noisy.reshape(-1).astype(np.float16)
    del reader
    shutil.move(tmp, out)
    Path(str(tmp) + ".json").unlink(missing_ok=True)  # the intermediate file's manifest
    return out


QT = gguf.GGMLQuantizationType


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(dither(args.source, args.out, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
