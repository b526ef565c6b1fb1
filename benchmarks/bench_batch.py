#!/usr/bin/env python3
"""Continuous-batching benchmark: aggregate decode speed of P sequences decoded together.

For each P in 1, 2, 4, 8, 16 the engine gets P requests at once (prompts of ``--pp`` tokens, ``--tg``
greedy tokens each) and ``llama-batched-bench`` from the same llama.cpp runs ``-npp PP -ntg TG
-npl P`` with the same context, batch, threads and KV layout — in the same run, each contender
alone in a fresh process. Reported per P: aggregate decode tok/s (tokens generated after every
sequence has its first token, over that time), per-sequence inter-token latency, and the ratio
engine / llama-batched-bench. Per P the two alternate ``--runs`` times (medians), so drift on a
shared machine hits both alike.

``--single-vs DIR`` compares single-stream decode (one request, ``--tg`` greedy tokens of a 128-token
prompt, median of 5, each contender in fresh processes, alternating) with another checkout of
edge-qwen, e.g. the engine before continuous batching: ``git worktree add /tmp/ref 9ecda5b``.

``--prefill-sweep`` measures the prefill budget instead: ``--streams`` sequences are generating when
a request with a long prompt arrives; for each ``prefill_chunk`` it reports that request's time to
first token and the running streams' inter-token latency meanwhile (mean and worst gap).

    tools=$(scripts/build_llama_tools.sh llama-batched-bench)
    python benchmarks/bench_batch.py --batched-bench "$tools/llama-batched-bench"
    python benchmarks/bench_batch.py --prefill-sweep

Prints one JSON object. Performance is never asserted here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

CODE = (ROOT / "edge_qwen" / "runtime" / "batcher.py").read_text()  # text to cut distinct prompts from


def machine() -> dict[str, Any]:
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")), platform.processor(),
    ) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    flags = set()
    if Path("/proc/cpuinfo").exists():
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("flags"):
                flags = set(ln.split(":", 1)[1].split())
                break
    simd = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c", "sse4_2"))
    return {"cpu": model, "cores": os.cpu_count(), "simd": simd, "python": platform.python_version()}


def prompts(model: Any, n: int, length: int) -> list[list[int]]:
    """n distinct plain-text prompts of exactly ``length`` tokens (code, so greedy rarely stops early)."""
    tokens = model.tokenize(CODE)
    stride = max(1, (len(tokens) - length) // max(1, n))
    return [tokens[i * stride : i * stride + length] for i in range(n)]


# -- the engine (in its own process) -----------------------------------------------------------------


def engine_run(path: Path, p: int, args: argparse.Namespace) -> dict[str, Any]:
    from edge_qwen.runtime import Model

    with Model.load(path, n_ctx=args.ctx, parallel=max(args.parallel), n_threads=args.threads,
                    kv_unified=args.kvu, n_batch=args.batch, n_ubatch=args.ubatch) as model:  # fmt: skip
        model.generate(prompts(model, 1, 16)[0], temperature=0, max_tokens=4)  # warm up
        model.reset()
        batch = prompts(model, p, args.pp)
        arrivals: list[list[tuple[float, int]]] = [[] for _ in range(p)]
        streams = [model.stream(pr, temperature=0, max_tokens=args.tg) for pr in batch]
        start = time.perf_counter()

        def consume(i: int) -> None:
            for chunk in streams[i]:
                if chunk.token_ids:
                    arrivals[i].append((time.perf_counter(), len(chunk.token_ids)))

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(p)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        firsts = [a[0][0] for a in arrivals if a]
        t0, t1 = max(firsts), max(a[-1][0] for a in arrivals if a)
        in_window = sum(n for a in arrivals for ts, n in a if t0 < ts <= t1)
        itl = [(a[-1][0] - a[0][0]) / max(1, sum(n for _, n in a) - 1) * 1e3 for a in arrivals if len(a) > 1]
        done = [s.result.usage.completion_tokens for s in streams]
        return {
            "P": p,
            "decode_tok_s": in_window / (t1 - t0) if t1 > t0 else 0.0,
            "itl_ms_median": statistics.median(itl) if itl else None,
            "prefill_s": t0 - start,
            "completion_tokens": done,
            "all_full_length": all(n == args.tg for n in done),
        }


def single_run(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Decode speed of one request on whatever edge_qwen is first on sys.path."""
    from edge_qwen.runtime import Model

    with Model.load(path, n_ctx=args.ctx, n_threads=args.threads) as model:
        prompt = prompts(model, 1, args.pp)[0]
        model.generate(prompt, temperature=0, max_tokens=4)
        model.reset()
        result = model.generate(prompt, temperature=0, max_tokens=args.tg)
        return {"decode_tok_s": result.timings.decode_tok_s, "tokens": result.usage.completion_tokens}


def single_vs(ref: Path, common: list[str], runs: int = 5) -> dict[str, Any]:
    speeds: dict[str, list[float]] = {"this": [], "reference": []}
    for _ in range(runs):
        for name, root in (("this", ROOT), ("reference", ref)):
            env = {**os.environ, "PYTHONPATH": str(root)}
            out = subprocess.run([sys.executable, __file__, *common, "--worker", "single"], env=env,
                                 capture_output=True, text=True, check=True, cwd=root)  # fmt: skip
            speeds[name].append(json.loads(out.stdout.strip().splitlines()[-1])["decode_tok_s"])
    this, reference = statistics.median(speeds["this"]), statistics.median(speeds["reference"])
    return {"this_tok_s": this, "reference_tok_s": reference, "ratio": this / reference, "runs": speeds}


def prefill_sweep_run(path: Path, chunk: int, args: argparse.Namespace) -> dict[str, Any]:
    from edge_qwen.runtime import Model

    with Model.load(path, n_ctx=args.ctx, parallel=args.streams + 1, n_threads=args.threads,
                    prefill_chunk=chunk) as model:  # fmt: skip
        model.generate(prompts(model, 1, 16)[0], temperature=0, max_tokens=4)
        model.reset()
        running = [model.stream(pr, temperature=0, max_tokens=400) for pr in prompts(model, args.streams, 64)]
        gaps: list[list[float]] = [[] for _ in running]
        stop = threading.Event()

        def consume(i: int) -> None:
            last = None
            for _chunk in running[i]:
                now = time.perf_counter()
                if last is not None and not stop.is_set():
                    gaps[i].append(now - last)
                last = now

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(running))]
        for t in threads:
            t.start()
        time.sleep(3.0)  # let them reach steady decode
        for g in gaps:
            g.clear()
        long_prompt = prompts(model, 1, args.long_prompt)[0]
        t_submit = time.perf_counter()
        late = model.stream(long_prompt, temperature=0, max_tokens=2)
        next(iter(late))
        ttft = time.perf_counter() - t_submit
        stop.set()
        during = [x for g in gaps for x in g]
        list(late)
        for s in running:
            s.cancel()
        for t in threads:
            t.join()
        return {
            "prefill_chunk": chunk,
            "ttft_ms": ttft * 1e3,
            "itl_ms_mean": statistics.mean(during) * 1e3 if during else None,
            "itl_ms_max": max(during) * 1e3 if during else None,
        }


# -- llama-batched-bench -------------------------------------------------------------------------


def batched_bench(
    binary: str, path: Path, args: argparse.Namespace, npl: list[int]
) -> dict[int, dict[str, Any]]:
    cmd = [binary, "-m", str(path), "-c", str(args.ctx), "-b", str(args.batch), "-ub", str(args.ubatch),
           "-npp", str(args.pp), "-ntg", str(args.tg), "-npl", ",".join(map(str, npl)),
           "-t", str(args.threads), "-tb", str(args.threads), "--output-format", "jsonl"]  # fmt: skip
    if args.kvu:
        cmd.append("-kvu")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = [json.loads(ln) for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("{")]
    return {int(r["pl"]): {"decode_tok_s": r["speed_tg"], "prefill_tok_s": r["speed_pp"]} for r in rows}


def in_subprocess(argv: list[str]) -> Any:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: the real 0.5B asset)")
    parser.add_argument("--batched-bench", default=None, help="path of llama-batched-bench")
    parser.add_argument("--parallel", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    parser.add_argument("--pp", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per P (medians)")
    parser.add_argument("--tg", type=int, default=64)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--ubatch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--kvu",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="unified KV cache (the engine's default; -kvu for llama-batched-bench)",
    )
    parser.add_argument("--prefill-sweep", action="store_true")
    parser.add_argument("--single-vs", type=Path, default=None, metavar="DIR")
    parser.add_argument(
        "--chunks", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128, 256, 512, 2048]
    )
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--long-prompt", type=int, default=1024)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--value", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        import fetch_assets

        args.model = fetch_assets.fetch_gguf(log=lambda msg: None)
    if args.worker == "engine":
        print(json.dumps(engine_run(args.model, args.value, args)))
        return
    if args.worker == "single":
        print(json.dumps(single_run(args.model, args)))
        return
    if args.worker == "sweep":
        print(json.dumps(prefill_sweep_run(args.model, args.value, args)))
        return
    common = ["--model", str(args.model), "--pp", str(args.pp), "--tg", str(args.tg), "--ctx", str(args.ctx),
              "--batch", str(args.batch), "--ubatch", str(args.ubatch), "--threads", str(args.threads),
              "--parallel", ",".join(map(str, args.parallel)), "--kvu" if args.kvu else "--no-kvu",
              "--streams", str(args.streams), "--long-prompt", str(args.long_prompt)]  # fmt: skip
    report: dict[str, Any] = {"machine": machine(), "model": args.model.name, "threads": args.threads}
    if args.single_vs:
        report["single_stream"] = single_vs(args.single_vs, common)
        print(json.dumps(report, indent=2))
        return
    if args.prefill_sweep:
        report["prefill_sweep"] = [
            in_subprocess([*common, "--worker", "sweep", "--value", str(c)]) for c in args.chunks
        ]
        print(json.dumps(report, indent=2))
        return
    rows = []
    for p in args.parallel:  # per P, the two contenders alternate run by run: drift hits both alike
        ours_runs, peer_runs = [], []
        for _ in range(args.runs):
            if args.batched_bench:
                peer_runs.append(batched_bench(args.batched_bench, args.model, args, [p])[p]["decode_tok_s"])
            ours_runs.append(in_subprocess([*common, "--worker", "engine", "--value", str(p)]))
        ours = min(ours_runs, key=lambda r: abs(r["decode_tok_s"] - statistics.median(
            x["decode_tok_s"] for x in ours_runs)))  # the median run, whole  # fmt: skip
        peer = statistics.median(peer_runs) if peer_runs else None
        ours["runs_decode_tok_s"] = [r["decode_tok_s"] for r in ours_runs]
        ours["llama_batched_bench_decode_tok_s"] = peer
        ours["llama_batched_bench_runs"] = peer_runs
        ours["ratio"] = ours["decode_tok_s"] / peer if peer else None
        rows.append(ours)
    report.update({"pp": args.pp, "tg": args.tg, "kv_unified": args.kvu, "rows": rows})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
