"""Prompt-lookup speculative decoding: decode tok/s with and without it, acceptance, greedy outputs
compared, and llama-server's ``--spec-type ngram-simple`` on the same prompts as the anchor.

Workloads: a code edit (a ~150-line Python file and "rename one variable, return the whole file"),
plain chat, and a JSON answer that echoes a schema. Each runs greedy (temperature 0) on one sequence.

    python benchmarks/bench_spec.py [--model GGUF] [--max-tokens 160] [--runs 2] [--llama-server PATH]
        [--workloads code,chat,json] [--out bench_spec.json]

Prints one JSON object (also written to ``--out``). Decode tok/s is the engine's own figure
(``Timings.decode_tok_s``: completion tokens after the first over the time after the first), the
median of ``--runs``; llama-server's is its ``timings.predicted_per_second``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from edge_qwen.runtime import Model

DEFAULT_SERVER = Path.home() / ".cache/edge-qwen-backends/llama-tools/build/bin/llama-server"


def code_file(n_funcs: int = 16) -> str:
    """A ~150-line Python module whose accumulator variable is called ``x`` throughout."""
    parts = ['"""Inventory helpers."""', "", "import math", ""]
    for i in range(n_funcs):
        parts += [
            f"def summarize_{i}(items, scale={i + 1}):",
            f'    """Sum item {i} values times scale."""',
            "    x = 0",
            "    for item in items:",
            f"        if item.get('kind') == 'k{i}':",
            "            x += item['value'] * scale",
            "    x = math.floor(x)",
            "    return x",
            "",
        ]
    return "\n".join(parts)


WORKLOADS: dict[str, list[dict[str, str]]] = {
    "code": [
        {"role": "user", "content": "```python\n" + code_file() + "\n```\n"
         "Rename the variable x to total in every function and return the whole code."},
    ],
    "chat": [{"role": "user", "content": "Tell me a short story about a lighthouse keeper and a map."}],
    "json": [
        {"role": "user", "content": 'Fill in this JSON for a user named Ada, 36, from London, who likes '
         'chess and tea. Keep every key. Return only JSON.\n{"name": "", "age": 0, "city": "", "country": "",'
         ' "hobbies": [], "drinks": [], "email": "", "verified": false, "profile": {"bio": "", '
         '"languages": [], "timezone": ""}}'},
    ],
}  # fmt: skip


def run_engine(model: Model, messages: list[dict[str, str]], max_tokens: int, spec: Any) -> dict[str, Any]:
    model.reset()
    t0 = time.perf_counter()
    result = model.chat(messages, temperature=0, max_tokens=max_tokens, speculative=spec)
    wall = time.perf_counter() - t0
    t = result.timings
    return {"decode_tok_s": t.decode_tok_s, "wall_s": wall, "tokens": len(result.token_ids),
            "drafted": t.drafted_tokens, "accepted": t.accepted_tokens,
            "ids": list(result.token_ids)}  # fmt: skip


def run_server(server: Path, gguf: Path, workloads: list[str], max_tokens: int, runs: int,
               spec_type: str | None) -> dict[str, Any]:  # fmt: skip
    port = 18931
    cmd = [str(server), "-m", str(gguf), "--port", str(port), "-t", "2", "-c", "4096", "-np", "1",
           "--no-warmup", "--log-disable"]  # fmt: skip
    if spec_type:
        cmd += ["--spec-type", spec_type]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        out = {}
        for name in workloads:
            speeds, ids, n = [], [], 0
            for _ in range(runs):
                body = {"messages": WORKLOADS[name], "temperature": 0, "max_tokens": max_tokens,
                        "cache_prompt": False, "n_probs": 0}  # fmt: skip
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json.dumps(body).encode(),
                    {"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=600) as r:
                    reply = json.load(r)
                speeds.append(reply["timings"]["predicted_per_second"])
                ids = reply["choices"][0]["message"]["content"]
                n = reply["timings"].get("predicted_n", 0)
                draft = (reply["timings"].get("draft_n", 0), reply["timings"].get("draft_n_accepted", 0))
            out[name] = {"decode_tok_s": statistics.median(speeds), "tokens": n, "text": ids,
                         "drafted": draft[0], "accepted": draft[1]}  # fmt: skip
        return out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        type=Path,
        default=Path.home() / ".cache/edge-qwen/assets/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    )
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workloads", default="code,chat,json")
    ap.add_argument("--llama-server", type=Path, default=DEFAULT_SERVER)
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench_spec.json"))
    args = ap.parse_args()
    names = args.workloads.split(",")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor()}"
    report: dict[str, Any] = {"machine": machine, "model": args.model.name, "max_tokens": args.max_tokens,
                              "runs": args.runs, "engine": {}}  # fmt: skip
    with Model.load(args.model, n_ctx=4096, parallel=1, n_threads=2) as model:
        model.chat(WORKLOADS["chat"], temperature=0, max_tokens=8)  # warm-up
        for name in names:
            rows: dict[str, list[dict[str, Any]]] = {"off": [], "lookup": []}
            for _ in range(args.runs):
                for mode in rows:
                    rows[mode].append(run_engine(model, WORKLOADS[name], args.max_tokens, mode))
            off, on = rows["off"], rows["lookup"]
            base = statistics.median(r["decode_tok_s"] for r in off)
            spec = statistics.median(r["decode_tok_s"] for r in on)
            report["engine"][name] = {
                "off_tok_s": round(base, 1), "lookup_tok_s": round(spec, 1), "speedup": round(spec / base, 2),
                "tokens": on[0]["tokens"], "drafted": on[0]["drafted"], "accepted": on[0]["accepted"],
                "acceptance": round(on[0]["accepted"] / on[0]["drafted"], 3) if on[0]["drafted"] else None,
                "outputs_identical": all(r["ids"] == off[0]["ids"] for r in off + on),
            }  # fmt: skip
            print(name, report["engine"][name], flush=True)
    if not args.no_server and args.llama_server.exists():
        report["llama_server"] = {}
        for mode in (None, "ngram-simple"):
            got = run_server(args.llama_server, args.model, names, args.max_tokens, args.runs, mode)
            report["llama_server"][mode or "none"] = got
        none = report["llama_server"]["none"]
        for name in names:
            ngram = report["llama_server"]["ngram-simple"][name]
            ngram["speedup"] = round(ngram["decode_tok_s"] / none[name]["decode_tok_s"], 2)
            ngram["same_text_as_none"] = ngram["text"] == none[name]["text"]
    elif not args.no_server:
        report["llama_server"] = f"not at {args.llama_server}: scripts/build_llama_tools.sh llama-server"
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items()}, indent=2, default=str)[:6000])


if __name__ == "__main__":
    main()
