#!/usr/bin/env python3
"""edge-qwen's converter against llama.cpp's own ``convert_hf_to_gguf.py`` on the same tiny random
checkpoints of the current generation: every GGUF (language model and mmproj) compared key by key
and tensor by tensor (names, shapes, types, bytes).

    python benchmarks/anchor_convert.py --llama-cpp <sdist>/vendor/llama.cpp --reference-python PY

``PY`` is a Python with torch and transformers (llama.cpp's converter needs both). Prints one JSON
object per family and exits non-zero when a file differs in a way the report does not explain.
Keys that only describe the file (``general.*`` names, sizes and sources, the file type written by
each tool) are left out of the comparison; everything llama.cpp reads to build the graph is in it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

FAMILIES = ("qwen3vl", "qwen3vlmoe", "qwen35vl", "qwen35moevl")
# descriptive keys: names, provenance, sizes; not read by llama.cpp to build the model
SKIP_PREFIXES = ("general.",)
SKIP_KEYS = {"tokenizer.ggml.add_sep_token", "tokenizer.ggml.add_eos_token"}


def fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name.startswith(SKIP_PREFIXES) or name in SKIP_KEYS:
            continue
        value = field.contents()
        if isinstance(value, list) and len(value) > 64:  # token lists: compare a digest
            value = ("list", len(value), hash(tuple(map(str, value))))
        out[name] = value
    return out


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], np.ndarray]]:
    return {
        t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape), np.array(t.data))
        for t in gguf.GGUFReader(path).tensors
    }


# A known, explained difference: a Gated DeltaNet's ``ssm_a = -exp(A_log)`` is computed in float32 on
# both sides, by torch there and numpy here, whose exponentials differ in the last bit of some values.
EXP_ULP = 1e-6


def _explained(name: str, a: np.ndarray, b: np.ndarray) -> float | None:
    if not name.endswith("ssm_a") or a.dtype != np.float32:
        return None
    rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-30)))
    return rel if rel <= EXP_ULP else None


def compare(ours: Path, ref: Path) -> dict[str, Any]:
    fa, fb = fields(ours), fields(ref)
    ta, tb = tensors(ours), tensors(ref)
    differing_keys = {k: [_short(fa[k]), _short(fb[k])] for k in fa.keys() & fb.keys() if fa[k] != fb[k]}
    differing, explained = {}, {}
    for name in ta.keys() & tb.keys():
        a, b = ta[name], tb[name]
        if a[:2] != b[:2]:
            differing[name] = f"ours {a[0]} {a[1]}, llama.cpp {b[0]} {b[1]}"
        elif a[2].tobytes() != b[2].tobytes():
            rel = _explained(name, a[2], b[2])
            if rel is None:
                differing[name] = "same type and shape, other bytes"
            else:
                explained[name] = f"-exp(A_log): numpy's vs torch's float32 exp, max relative {rel:.2g}"
    return {
        "keys_only_ours": sorted(fa.keys() - fb.keys()),
        "keys_only_llama_cpp": sorted(fb.keys() - fa.keys()),
        "keys_differing": differing_keys,
        "tensors": len(ta),
        "tensors_only_ours": sorted(ta.keys() - tb.keys()),
        "tensors_only_llama_cpp": sorted(tb.keys() - ta.keys()),
        "tensors_differing": dict(sorted(differing.items())[:10]),
        "tensors_explained": dict(sorted(explained.items())),
        "identical": not (fa.keys() ^ fb.keys() or differing_keys or ta.keys() ^ tb.keys() or differing),
    }


def _short(value: Any) -> Any:
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def reference(args: argparse.Namespace, src: Path, out: Path, mmproj: bool) -> Path:
    script = args.llama_cpp / "convert_hf_to_gguf.py"
    env = dict(os.environ, PYTHONPATH=str(args.llama_cpp / "gguf-py"), NO_LOCAL_GGUF="")
    cmd = [args.reference_python, str(script), str(src), "--outtype", "f16", "--outfile", str(out)]
    if mmproj:
        cmd.append("--mmproj")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"llama.cpp's converter failed on {src}:\n{proc.stderr[-3000:]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="folder with convert_hf_to_gguf.py")
    parser.add_argument("--reference-python", required=True, help="python with torch + transformers")
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()

    from make_tiny_qwen3vl import make_qwen3vl_checkpoint

    from edge_qwen.convert import convert

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="anchor-") as tmp:
        for family in args.families.split(","):
            work = Path(tmp) / family
            src = make_qwen3vl_checkpoint(work / "ck", family, "bf16")
            ours = convert(src, work / "ours", outtype="f16", evaluate=False, quiet=True)
            assert ours.mmproj is not None
            ref_lm = reference(args, src, work / "ref-lm.gguf", mmproj=False)
            ref_mm = reference(args, src, work / "ref-mmproj.gguf", mmproj=True)
            results[family] = {
                "language_model": compare(ours.gguf, ref_lm),
                "mmproj": compare(Path(ours.mmproj.path), ref_mm),
            }
    print(json.dumps(results, indent=2, default=str))
    return 0 if all(r[k]["identical"] for r in results.values() for k in r) else 1


if __name__ == "__main__":
    sys.exit(main())
