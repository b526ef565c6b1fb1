#!/usr/bin/env python3
"""The cost of MTP drafting's mechanics on a Qwen3.5-0.8B-shaped model: edge-qwen against
``llama-server --spec-type draft-mtp`` (the same llama.cpp), same run, as ratios.

    python benchmarks/bench_mtp.py [--k 1,2,3] [--tokens 64] [--runs 3] [--threads 2] \
        [--llama-server PATH] [--out results.json]

Random weights (benchmarks/bench_checkpoints.py makes the model, here with its MTP head): the head's
drafts are almost never accepted, so acceptance means nothing and is not the point. What is
measured is what a drafted token costs: with k drafts and none accepted, every generated token is
one step of a k+1-token verification batch, k MTP decodes and a rollback of the recurrent state,
against a one-token step without drafting. ``overhead_ms_per_draft`` = (step time with k drafts -
step time without) / drafted tokens per step, from the decode rate (1 token per step when nothing
is accepted; with acceptances the step count is tokens - accepted). Both sides draft greedily with
no probability floor (``p_min`` 0, llama-server's ``--spec-draft-p-min 0``) and up to k tokens
(edge-qwen: ``adaptive: False``, no pause; llama-server: ``--spec-draft-n-max k --spec-draft-n-min
k``). edge-qwen's drafter still halves a draft after a miss, so with nothing accepted it drafts one
token a step whatever k is (``drafts_per_step`` says what each side really drafted).

No real Qwen3.5 weights are reachable from this machine: the acceptance a real model gets (and so
whether MTP pays) cannot be measured here; the overhead can, and it is independent of the weights.
Prints one JSON document; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_checkpoints import ensure_model, llama_server_path, machine, wait_for_idle  # noqa: E402
from bench_server import Server, free_port  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def per_step_ms(tokens: int, accepted: int, seconds: float) -> float:
    """Milliseconds one decode step took: each step emits one token plus the drafts it accepted."""
    steps = max(1, tokens - accepted)
    return seconds * 1e3 / steps


def run_ours(path: Path, ks: Sequence[int], args: argparse.Namespace) -> dict[str, Any]:
    from edge_qwen.runtime import Model

    out: dict[str, Any] = {}
    messages = [{"role": "user", "content": PROMPT}]
    with Model.load(path, n_ctx=2048, parallel=1, n_threads=args.threads, mtp=True) as model:
        model.chat(messages, temperature=0, max_tokens=8, speculative="off")  # warm-up
        for k in [0, *ks]:
            spec = {"mode": "mtp", "k": k, "adaptive": False, "p_min": 0.0, "max_pause": 0} if k else "off"
            rows = []
            for _ in range(args.runs):
                model.reset()
                r = model.chat(messages, temperature=0, max_tokens=args.tokens, speculative=spec)
                n = r.usage.completion_tokens
                decode_s = (n - 1) / r.timings.decode_tok_s if r.timings.decode_tok_s else 0.0
                rows.append({
                    "tokens": n, "drafted": r.timings.drafted_tokens, "accepted": r.timings.accepted_tokens,
                    "step_ms": per_step_ms(n - 1, r.timings.accepted_tokens, decode_s),
                })  # fmt: skip
            out[str(k)] = summarize(rows)
    return out


def run_llama_server(
    path: Path, ks: Sequence[int], args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    binary = args.llama_server or llama_server_path()
    out: dict[str, Any] = {}
    for k in [0, *ks]:
        port = free_port()
        cmd = [binary, "-m", str(path), "-c", "2048", "-np", "1", "-t", str(args.threads),
               "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
        if k:
            cmd += ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(k), "--spec-draft-n-min", str(k),
                    "--spec-draft-p-min", "0"]  # fmt: skip
        server = Server(f"llama-server-k{k}", cmd, {}, port)
        try:
            server.wait_ready()
            body = {"prompt": f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n",
                    "n_predict": 8, "temperature": 0, "cache_prompt": False}  # fmt: skip
            httpx.post(server.url + "/completion", json=body, timeout=600)  # warm-up
            rows = []
            for _ in range(args.runs):
                body["n_predict"] = args.tokens
                data = httpx.post(server.url + "/completion", json=body, timeout=600).json()
                t = data.get("timings", {})
                n = int(t.get("predicted_n", 0))
                accepted = int(t.get("draft_n_accepted", 0) or 0)
                seconds = float(t.get("predicted_ms", 0.0)) / 1e3
                rows.append({"tokens": n, "drafted": int(t.get("draft_n", 0) or 0), "accepted": accepted,
                             "step_ms": per_step_ms(n, accepted, seconds)})  # fmt: skip
            out[str(k)] = summarize(rows)
        except (RuntimeError, httpx.HTTPError) as exc:
            log(f"llama-server k={k}: {exc}")
            out[str(k)] = {"error": str(exc)}
        finally:
            server.stop()
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    steps = sum(max(1, r["tokens"] - r["accepted"]) for r in rows)
    return {
        "step_ms_median": round(statistics.median(r["step_ms"] for r in rows), 3),
        "drafts_per_step": round(sum(r["drafted"] for r in rows) / steps, 3),
        "tokens": [r["tokens"] for r in rows],
        "drafted": [r["drafted"] for r in rows],
        "accepted": [r["accepted"] for r in rows],
    }


def overheads(result: dict[str, Any]) -> dict[str, float | None]:
    base = result.get("0", {}).get("step_ms_median")
    out: dict[str, float | None] = {}
    for k, row in result.items():
        if k != "0" and base and row.get("drafts_per_step"):
            out[k] = round((row["step_ms_median"] - base) / row["drafts_per_step"], 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    path = Path(args.model) if args.model else ensure_model(log, mtp=True)
    started = time.monotonic()
    waited = wait_for_idle(120, log)
    ours = run_ours(path, args.k, args)
    waited += wait_for_idle(120, log)
    theirs = run_llama_server(path, args.k, args, log)
    theirs_over = overheads(theirs)
    ours_over = {}
    for k, v in overheads(ours).items():
        other = theirs_over.get(k)
        ours_over[k] = round(v / other, 3) if v is not None and other else None
    report = {
        "benchmark": "mtp-overhead",
        "machine": machine(),
        "model": {"path": str(path), "size_bytes": path.stat().st_size,
                  "weights": "random (Qwen3.5-0.8B dimensions, MTP head kept), Q4_K_M"},  # fmt: skip
        "note": "random weights: acceptance means nothing; a drafted token's cost does not depend on them",
        "tokens": args.tokens, "runs": args.runs, "threads": args.threads,
        "edge_qwen": ours, "llama_server": theirs,
        "overhead_ms_per_draft": {"edge_qwen": overheads(ours), "llama_server": overheads(theirs)},
        "edge_qwen_over_llama_server": ours_over,
        "step_ms_without_drafts": {"edge_qwen": ours["0"]["step_ms_median"],
                                   "llama_server": theirs.get("0", {}).get("step_ms_median")},  # fmt: skip
        "idle_wait_s": waited, "wall_s": round(time.monotonic() - started, 1),
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="a Qwen3.5 GGUF with its MTP head (default: made here)")
    parser.add_argument("--llama-server", default=None, help="path of llama-server (same llama.cpp)")
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
