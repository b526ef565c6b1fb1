#!/usr/bin/env python3
"""Conversion benchmark: wall time, peak RSS and MB/s of ``edge-qwen convert`` (F16 output), and the
same for llama.cpp's ``convert_hf_to_gguf.py`` on the same input when it is available, as ratios.

    python benchmarks/bench_convert.py [--checkpoint DIR] [--runs 3] \
        [--llama-cpp DIR_WITH_convert_hf_to_gguf.py --reference-python PYTHON_WITH_TORCH]

Without ``--checkpoint`` a random-weight checkpoint is generated with the real tokenizer:
``--family qwen2`` (default) a Qwen2 of a few hundred MB (BF16, scripts/make_tiny_checkpoints.py);
``--family qwen35`` a Qwen3.5 with Qwen3.5-0.8B's real dimensions (24 layers, 3 Gated DeltaNet : 1
gated attention, hidden 1024, vocabulary 248,320, the MTP head; 1.5 GB BF16, scripts/make_tiny_hybrid.py).
Each run is a fresh process; peak RSS is that process's ru_maxrss. Prints one JSON object:
medians, machine, and (when the reference ran) ratios plus whether every tensor's F16 bytes are
identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

# Runs CMD as a child and reports its wall time and peak RSS (KiB) as JSON on the last line.
MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
if proc.returncode:
    sys.exit(proc.stderr[-2000:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "peak_rss_mib": peak}))
"""


# Qwen3.5-0.8B's text_config (public copies of its config.json; see models.yaml)
QWEN35_08B = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "intermediate_size": 3584,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 16,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10],
        "mrope_interleaved": True,
    },
}


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, object]:
    flags: list[str] = []
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "f16c", "fma", "asimddp", "neon")
                flags = sorted(f for f in line.split(":")[1].split() if f in wanted)
                break
    return {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu_flags": flags,
        "python": platform.python_version(),
    }


def median_runs(cmd: list[str], runs: int, out: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    results = []
    for _ in range(runs):
        for f in out.glob("*.gguf"):
            f.unlink()
        results.append(measure(cmd, env))
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def tensor_bytes_equal(a: Path, b: Path) -> dict[str, object]:
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    differing = [
        n
        for n in ta
        if n not in tb
        or ta[n].tensor_type != tb[n].tensor_type
        or not np.array_equal(np.asarray(ta[n].data).view(np.uint8), np.asarray(tb[n].data).view(np.uint8))
    ]
    return {
        "tensors": len(ta),
        "only_in_reference": sorted(set(tb) - set(ta)),
        "differing": differing[:10],
        "identical": not differing and set(ta) == set(tb),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: generate one)")
    parser.add_argument("--family", choices=("qwen2", "qwen35"), default="qwen2", help="what to generate")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=768, help="generated checkpoint hidden size")
    parser.add_argument("--layers", type=int, default=6, help="generated checkpoint layers")
    parser.add_argument("--llama-cpp", type=Path, help="folder holding llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument(
        "--reference-python", default=sys.executable, help="python with torch for the reference"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        work = Path(tmp)
        src = args.checkpoint
        if src is None and args.family == "qwen35":
            from make_tiny_hybrid import make_hybrid

            src = make_hybrid(work / "ckpt", "qwen35", "bf16", **QWEN35_08B)
        if src is None:
            from make_tiny_checkpoints import make_checkpoint

            src = make_checkpoint(
                work / "ckpt",
                arch="qwen2",
                dtype="bf16",
                tied=False,
                hidden_size=args.hidden,
                num_hidden_layers=args.layers,
                intermediate_size=args.hidden * 11 // 2,
                num_attention_heads=args.hidden // 64,
                num_key_value_heads=2,
            )
        size_mb = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e6
        ours_out = work / "ours"
        ours_out.mkdir()
        ours_cmd = [
            sys.executable,
            "-m",
            "edge_qwen.cli",
            "convert",
            str(src),
            "-o",
            str(ours_out),
            "--outtype",
            "f16",
            "--no-eval",
            "--quiet",
        ]
        ours = median_runs(ours_cmd, args.runs, ours_out)
        ours["mb_per_s"] = size_mb / ours["wall_s"]
        report: dict[str, object] = {
            "checkpoint": str(src),
            "checkpoint_mb": round(size_mb, 1),
            "runs": args.runs,
            "machine": machine(),
            "edge_qwen": ours,
        }
        script = args.llama_cpp / "convert_hf_to_gguf.py" if args.llama_cpp else None
        if script is not None and script.is_file():
            ref_out = work / "ref"
            ref_out.mkdir()
            ref_file = ref_out / "ref-f16.gguf"
            env = dict(os.environ, PYTHONPATH=str(args.llama_cpp / "gguf-py"), NO_LOCAL_GGUF="")
            ref_cmd = [
                args.reference_python,
                str(script),
                str(src),
                "--outtype",
                "f16",
                "--outfile",
                str(ref_file),
            ]
            ref = median_runs(ref_cmd, args.runs, ref_out, env)
            ref["mb_per_s"] = size_mb / ref["wall_s"]
            ours_file = next(ours_out.glob("*.gguf"), None)
            if ours_file is None:  # median_runs deletes between runs; produce one for the comparison
                measure(ours_cmd)
                ours_file = next(ours_out.glob("*.gguf"))
            report["llama_cpp_convert"] = ref
            report["ratios"] = {
                "peak_rss": ours["peak_rss_mib"] / ref["peak_rss_mib"],
                "wall_time": ours["wall_s"] / ref["wall_s"],
            }
            report["goal"] = {"peak_rss_le": 0.3, "wall_time_le": 0.6}
            report["f16_tensor_data"] = tensor_bytes_equal(ours_file, ref_file)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
