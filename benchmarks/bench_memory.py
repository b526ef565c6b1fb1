"""Estimate vs measured memory (not a test): llama.cpp's logged buffers and process RSS per grid
point, and peak RSS against the budget during a mixed two-model async load under the scheduler.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory.py [GGUF] [--out bench_memory.json]

Writes JSON and prints a markdown table for the README. Every RSS figure comes from a fresh
interpreter (``--child``), so earlier loads cannot pollute it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GGUF = Path.home() / ".cache/edge-qwen/assets/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MiB = 2**20
GRID = list(itertools.product([512, 2048, 8192, 32768], ["f16", "q8_0"], [128, 512]))
BUFFER = re.compile(r"(\w+)(?: model)? buffer size =\s+([\d.]+) MiB")


def child_measure(path: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Load, prefill one n_ubatch batch, report RSS growth and llama.cpp's buffer sizes (MiB)."""
    from edge_qwen import _llama
    from edge_qwen.runtime.model import Model
    from edge_qwen.scheduler.snapshot import process_rss

    _llama.init_backend()
    lines: list[str] = []
    before = process_rss()
    with _llama.capture_log(lambda _level, line: lines.append(line)):
        model = Model.load(path, **settings)
    n = min(settings["n_ubatch"], model.n_ctx - 8)
    model.generate([(i * 7919) % 150000 for i in range(n)], max_tokens=1, temperature=0)
    grown = process_rss() - before
    model.close()
    reported: dict[str, float] = {}
    for line in "".join(lines).splitlines():
        m = BUFFER.search(line)
        if m:
            kind = "model" if "model buffer" in line else m.group(1)
            reported[kind] = reported.get(kind, 0.0) + float(m.group(2))
    return {"rss_growth": grown, "reported_mib": reported}


def child_schedule(path: str, budget: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests/scheduler"))
    import _rss_probe

    return _rss_probe.sched(path, budget)


def run_child(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def grid_rows(path: Path) -> list[dict[str, Any]]:
    from edge_qwen.sizing.estimate import estimate_memory

    rows = []
    for n_ctx, kv, ubatch in GRID:
        settings = {"n_ctx": n_ctx, "cache_type_k": kv, "cache_type_v": kv, "n_ubatch": ubatch}
        est = estimate_memory(path, **settings)
        got = run_child("measure", str(path), json.dumps(settings))
        rep = got["reported_mib"]
        rows.append({
            "n_ctx": n_ctx, "kv": kv, "n_ubatch": ubatch,
            "weights_est": est.weights_bytes / MiB, "weights_llama": rep.get("model"),
            "kv_est": est.kv_bytes / MiB, "kv_llama": rep.get("KV"),
            "compute_est": est.compute_bytes / MiB, "compute_llama": rep.get("compute"),
            "output_est": est.output_bytes / MiB, "output_llama": rep.get("output"),
            "total_est": est.total_bytes / MiB, "rss_growth": got["rss_growth"] / MiB,
            "naive_file_plus_kv": (path.stat().st_size + est.kv_bytes) / MiB,
        })  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| n_ctx | KV | ubatch | weights est/llama | KV est/llama | compute est/llama | total est "
        "| RSS growth | err | file+KV err |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        err = (r["total_est"] - r["rss_growth"]) / r["rss_growth"] * 100
        naive = (r["naive_file_plus_kv"] - r["rss_growth"]) / r["rss_growth"] * 100
        lines.append(
            f"| {r['n_ctx']} | {r['kv']} | {r['n_ubatch']} | "
            f"{r['weights_est']:.1f}/{r['weights_llama']:.1f} | "
            f"{r['kv_est']:.2f}/{r['kv_llama']:.2f} | {r['compute_est']:.1f}/{r['compute_llama']:.1f} | "
            f"{r['total_est']:.1f} | {r['rss_growth']:.1f} | {err:+.1f}% | {naive:+.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, path, arg = sys.argv[2:5]
        out = child_measure(path, json.loads(arg)) if mode == "measure" else child_schedule(path, int(arg))
        print(json.dumps(out))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("gguf", nargs="?", default=str(DEFAULT_GGUF))
    parser.add_argument("--out", default="bench_memory.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from edge_qwen.sizing.estimate import estimate_memory

    path = Path(args.gguf)
    rows = grid_rows(path)
    budget = sum(estimate_memory(path, n_ctx=c).total_bytes for c in (4096, 8192)) + 10 * MiB
    sched = run_child("schedule", str(path), str(budget))
    peak = (sched["peak"] - sched["baseline"]) / MiB
    result = {
        "model": str(path),
        "grid": rows,
        "scheduler": {**sched, "peak_growth_mib": peak, "budget_mib": budget / MiB},
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(markdown(rows))
    print(f"\nscheduler: 3 models (n_ctx 2048/4096/8192), budget {budget / MiB:.0f} MiB, "
          f"peak RSS growth {peak:.0f} MiB, peak charged {sched['peak_charged'] / MiB:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
