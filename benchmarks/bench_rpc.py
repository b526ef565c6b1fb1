#!/usr/bin/env python3
"""RPC benchmark: a model split across two workers on loopback, edge-qwen against llama.cpp's own.

    python benchmarks/bench_rpc.py [--model GGUF] [--tools DIR] [--runs 3] [--worker-threads 1]

Same run, same machine, same GGUF (default: the real Qwen2.5-Coder-0.5B Q4_K_M):

* ``edge_qwen``: two ``edge-qwen worker`` processes, and ``Model.load(..., rpc=[...])`` as the main
  host (in a subprocess: registering workers is for good). Prefill = a 128-token prompt on an empty
  cache (the engine's ``prefill_tok_s``), decode = a 32-token greedy answer (``decode_tok_s``).
* ``llama_cpp``: two ``ggml-rpc-server`` processes and ``llama-bench --rpc … -ngl 99 -p 128 -n 32``,
  both from the same llama.cpp (scripts/build_llama_tools.sh llama-bench ggml-rpc-server).

Both sides compute with plain CPU kernels on the workers (an RPC worker does not repack weights),
and every layer is on the workers. Prints one JSON object: medians, ratios, the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAIN = r"""
import json, sys
from edge_qwen.runtime import Model
path, rpc, runs, threads = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
DECODE = "Count from 1 to 1000, separated by commas: 1, 2, 3,"  # as bench_runtime: never ends early
with Model.load(path, n_ctx=1024, parallel=1, rpc=rpc, extra_buffers=False, n_threads=threads) as m:
    prompt = m.tokenize(" ".join(f"word{i}" for i in range(200)))[:128]
    m.generate(prompt, temperature=0, max_tokens=4)
    out = {"prefill_tok_s": [], "decode_tok_s": []}
    for _ in range(runs):
        m.reset()
        out["prefill_tok_s"].append(m.generate(prompt, temperature=0, max_tokens=1).timings.prefill_tok_s)
        m.reset()
        r = m.generate(DECODE, temperature=0, repeat_penalty=1.0, max_tokens=32)
        assert r.usage.completion_tokens == 32, r.usage
        out["decode_tok_s"].append(r.timings.decode_tok_s)
print(json.dumps(out))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    sys.path.insert(0, str(ROOT))
    from edge_qwen.rpc import probe

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker on port {port} exited with {proc.returncode}")
        if probe(f"127.0.0.1:{port}", timeout=1).reachable:
            return
        time.sleep(0.2)
    raise SystemExit(f"worker on port {port} did not come up")


def workers(cmd: list[str], n: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    procs, endpoints = [], []
    for _ in range(n):
        port = free_port()
        argv = [cmd[0], *[c.format(port=port) for c in cmd[1:]]]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_up(port, proc)
        procs.append(proc)
        endpoints.append(f"127.0.0.1:{port}")
    return procs, endpoints


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def ours(args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "edge_qwen.cli",
        "worker",
        "--port",
        "{port}",
        "--threads",
        str(args.worker_threads),
    ]
    procs, endpoints = workers(cmd, 2)
    try:
        out = subprocess.run(
            [sys.executable, "-c", MAIN, str(args.model), ",".join(endpoints), str(args.runs),
             str(args.main_threads)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    finally:
        stop(procs)
    runs = json.loads(out.strip().splitlines()[-1])
    return {k: statistics.median(v) for k, v in runs.items()}


def theirs(args: argparse.Namespace) -> dict[str, float]:
    server = str(args.tools / "ggml-rpc-server")
    procs, endpoints = workers([server, "-p", "{port}", "-t", str(args.worker_threads)], 2)
    try:
        cmd = [str(args.tools / "llama-bench"), "-m", str(args.model), "--rpc", ",".join(endpoints),
               "-ngl", "99", "-p", "128", "-n", "32", "-r", str(args.runs), "-o", "json",
               "-t", str(args.main_threads)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    finally:
        stop(procs)
    results = {}
    for row in json.loads(out):
        results["prefill_tok_s" if row.get("n_prompt") else "decode_tok_s"] = float(row["avg_ts"])
    return results


def machine() -> dict[str, Any]:
    model, flags = platform.processor(), []
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = sorted(f for f in line.split(":")[1].split() if f.startswith(("avx", "amx")))
                break
    return {"cpu": model, "cores": os.cpu_count(), "cpu_flags": flags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = Path.home() / ".cache/edge-qwen/assets/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    default_tools = Path.home() / ".cache/edge-qwen-backends/llama-tools/build/bin"
    parser.add_argument("--model", type=Path, default=default_model)
    parser.add_argument("--tools", type=Path, default=default_tools, help="llama-bench + ggml-rpc-server")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker-threads", type=int, default=1)
    parser.add_argument(
        "--main-threads", type=int, default=os.cpu_count() or 1, help="the main host's threads"
    )
    args = parser.parse_args()
    a, b = ours(args), theirs(args)
    report = {
        "model": str(args.model),
        "workers": 2,
        "worker_threads": args.worker_threads,
        "main_threads": args.main_threads,
        "machine": machine(),
        "edge_qwen": a,
        "llama_cpp": b,
        "ratios": {k: a[k] / b[k] for k in a if k in b},
        "goal": {"ratio_ge": 0.95},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
