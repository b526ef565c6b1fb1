#!/usr/bin/env python3
"""Server benchmark: ``edge-qwen serve`` against llama.cpp's ``llama-server`` (continuous batching,
``-np P``) and llama-cpp-python's own server, same GGUF, threads, context and slots.

    python benchmarks/bench_server.py [--model GGUF] [--threads 2] [--ctx 4096] [--parallel 8] \
        [--concurrency 1,4,8,16] [--requests 16] [--max-tokens 64] \
        [--llama-server "$(scripts/build_llama_tools.sh llama-server)/llama-server"] \
        [--lcp-extra-buffers auto|on|off] [--lcp-path DIR] [--out results.json]

Each server runs as a subprocess on 127.0.0.1 (a free port), gets one warm-up request, then for
every concurrency level ``c`` the same ``--requests`` streamed chat completions (distinct prompts,
greedy, ``max_tokens`` each) are sent by ``c`` concurrent clients. Per request: time to the first
content token (TTFT) and total latency; per level: wall time, requests/s, generated tokens/s
(aggregate), p50/p90/p99 of TTFT and latency, errors. edge-qwen and llama-server decode up to
``--parallel`` requests together in one context whose ``--ctx`` KV cells the slots share (unified
cache, ``-kvu``); llama-cpp-python's server runs one request at a time. llama-cpp-python's
server is started with ``--interrupt_requests false``: by default it
aborts the running stream whenever a new request arrives, so concurrent clients would get errors.

llama-cpp-python's server needs its ``[server]`` extra (fastapi, sse-starlette, starlette-context,
pydantic-settings); ``--lcp-path`` is prepended to its PYTHONPATH for those packages if they live
outside the venv. On CPUs with AMX, llama.cpp 0.3.36's extra (repacked) buffer types crash
``llama_decode`` on multi-token batches; edge-qwen turns them off there, and llama-cpp-python has
no setting for it, so ``--lcp-extra-buffers auto`` (default) starts its server through a launcher
that sets ``use_extra_bufts`` in ``llama_model_default_params`` the same way (``on`` = stock).

Prints one JSON object and a markdown table; ``--out`` also writes the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

TOPICS = (
    "a lighthouse keeper", "a robot gardener", "a lost key", "the first snow", "a chess match",
    "a night train", "an old map", "a quiet library", "a broken clock", "a desert well",
    "a paper boat", "a mountain pass", "a secret recipe", "a stray cat", "a summer storm", "a shipwreck",
)  # fmt: skip

LCP_LAUNCHER = """
import runpy, sys
import llama_cpp.llama_cpp as L
_default = L.llama_model_default_params
def _no_extra_bufts():
    params = _default()
    params.use_extra_bufts = {extra}
    return params
L.llama_model_default_params = _no_extra_bufts
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --- servers -------------------------------------------------------------------------------------


def edge_qwen_command(args: argparse.Namespace, port: int) -> tuple[list[str], dict[str, str]]:
    cmd = [
        sys.executable, "-m", "edge_qwen.cli", "serve", "--models", f"bench={args.model}",
        "--ctx", str(args.ctx), "--threads", str(args.threads), "--port", str(port), "--log-level", "warning",
        "--parallel", str(args.parallel), "--max-concurrency", str(max(64, 4 * max(args.concurrency))),
    ]  # fmt: skip
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return cmd, env


def llama_cpp_command(args: argparse.Namespace, port: int) -> tuple[list[str], dict[str, str]]:
    from edge_qwen import _llama

    extra = {"auto": _llama.default_extra_buffers(), "on": True, "off": False}[args.lcp_extra_buffers]
    server_args = [
        "--model", str(args.model), "--model_alias", "bench", "--n_ctx", str(args.ctx),
        "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
        "--host", "127.0.0.1", "--port", str(port), "--verbose", "false",
        "--interrupt_requests", "false",  # its default aborts a running stream when another request comes
    ]  # fmt: skip
    if extra:
        cmd = [sys.executable, "-m", "llama_cpp.server", *server_args]
    else:
        cmd = [sys.executable, "-c", LCP_LAUNCHER.format(extra=extra), *server_args]
    paths = [args.lcp_path, os.environ.get("PYTHONPATH")]
    return cmd, {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def llama_server_command(args: argparse.Namespace, port: int) -> tuple[list[str], dict[str, str]]:
    if not args.llama_server:
        raise SystemExit("--llama-server PATH is needed (scripts/build_llama_tools.sh llama-server)")
    cmd = [
        args.llama_server, "-m", str(args.model), "-a", "bench", "-c", str(args.ctx),
        "-np", str(args.parallel),
        "-kvu", "-t", str(args.threads), "-tb", str(args.threads), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return cmd, {}


class Server:
    """A server subprocess on a free loopback port; its stderr goes to a temp log."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log: {self.log.name}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not come up in {timeout}s; log: {self.log.name}")

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            raise RuntimeError(f"{self.name} died during the run ({how}); log: {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- load ----------------------------------------------------------------------------------------


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    pieces = 0
    usage_tokens = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return {"error": f"HTTP {response.status_code}: {response.text[:200]}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage_tokens = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    pieces += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    return {"ttft_s": ttft or latency, "latency_s": latency, "tokens": usage_tokens or pieces}


async def run_level(url: str, concurrency: int, n_requests: int, max_tokens: int) -> dict[str, Any]:
    prompts = [f"Write a short story about {TOPICS[i % len(TOPICS)]}." for i in range(n_requests)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results: list[dict[str, Any]] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            try:
                results.append(await one_request(client, url, prompt, max_tokens))
            except httpx.HTTPError as exc:
                results.append({"error": repr(exc)})

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    ttft = [r["ttft_s"] * 1e3 for r in ok]
    lat = [r["latency_s"] * 1e3 for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": n_requests,
        "errors": len(results) - len(ok),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 3),
        "output_tok_s": round(tokens / wall, 2),
        "tokens": tokens,
    }
    for name, values in (("ttft_ms", ttft), ("latency_ms", lat)):
        if values:
            out[name] = {f"p{q}": round(percentile(values, q), 1) for q in (50, 90, 99)}
    if len(results) != len(ok):
        out["first_error"] = next(r["error"] for r in results if "error" in r)
    return out


def bench_server(name: str, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    try:
        server.wait_ready()
        levels = []
        for concurrency, n in [(1, 1)] + [(c, args.requests) for c in args.concurrency]:  # warm-up first
            level = asyncio.run(run_level(server.url, concurrency, n, args.max_tokens))
            server.check_alive()
            levels.append(level)
        return {"levels": levels[1:]}
    except Exception as exc:  # noqa: BLE001 - a crashed contender is a result, not the end of the run
        server.stop()
        return {"error": str(exc), "log_tail": Path(server.log.name).read_text(errors="replace")[-2000:]}
    finally:
        server.stop()


# --- report --------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    rows = [
        "| server | clients | req/s | gen tok/s | TTFT p50/p90/p99 ms | latency p50/p90/p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["servers"].items():
        if "error" in result:
            rows.append(f"| {name} | – | – | – | crashed: {result['error'][:60]} | – | – |")
            continue
        for lv in result["levels"]:
            t, lat = lv.get("ttft_ms", {}), lv.get("latency_ms", {})
            ttft = " / ".join(f"{t.get(p, 0):.0f}" for p in ("p50", "p90", "p99"))
            latency = " / ".join(f"{lat.get(p, 0):.0f}" for p in ("p50", "p90", "p99"))
            rows.append(
                f"| {name} | {lv['concurrency']} | {lv['requests_per_s']:.2f} | {lv['output_tok_s']:.1f} | "
                f"{ttft} | {latency} | {lv['errors']} |"
            )
    return "\n".join(rows)


def main() -> None:
    args = _parse()
    if args.model is None:
        import fetch_assets

        args.model = fetch_assets.fetch_gguf(log=lambda msg: None)
    contenders = {
        "edge-qwen": edge_qwen_command,
        "llama-server": llama_server_command,
        "llama-cpp-python": llama_cpp_command,
    }
    report: dict[str, Any] = {
        "model": Path(args.model).name,
        "threads": args.threads,
        "n_ctx": args.ctx,
        "parallel": args.parallel,
        "max_tokens": args.max_tokens,
        "requests_per_level": args.requests,
        "lcp_extra_buffers": args.lcp_extra_buffers,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "servers": {},
    }
    for name in args.servers:
        port = free_port()
        cmd, env = contenders[name](args, port)
        print(f"benchmarking {name} ...", file=sys.stderr)
        report["servers"][name] = bench_server(name, Server(name, cmd, env, port), args)
    print(json.dumps(report, indent=2))
    print("\n" + markdown(report))
    if args.out:
        from edge_qwen._atomic import write_json

        write_json(args.out, report)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: fetched Qwen2.5-Coder-0.5B)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=4096, help="KV cells per server, shared by its slots")
    parser.add_argument("--parallel", type=int, default=8, help="slots (sequences decoded together)")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16]
    )
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--servers", type=lambda s: s.split(","), default=["edge-qwen", "llama-server", "llama-cpp-python"]
    )
    parser.add_argument("--llama-server", default=None, help="path of llama-server (same llama.cpp)")
    parser.add_argument("--lcp-extra-buffers", choices=["auto", "on", "off"], default="auto")
    parser.add_argument(
        "--lcp-path", default=None, help="extra PYTHONPATH with llama-cpp-python's [server] deps"
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


if __name__ == "__main__":
    main()
