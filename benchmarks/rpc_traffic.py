#!/usr/bin/env python3
"""What a model split over RPC workers sends over the network, per token.

    python benchmarks/rpc_traffic.py [--model GGUF] [--prompt 128] [--decode 64]

Two ``edge-qwen worker`` processes on loopback, each behind a counting TCP proxy. The main host
(this process) loads the model over the proxies, so every byte llama.cpp's RPC backend sends and
receives is counted. Each command is parsed from the stream (``[cmd u8][size u64][payload]``, the
reply ``[size u64][payload]`` for the commands that have one), so the counts are per command. Three
phases:

* ``load``: sending the weights.
* ``prefill``: a ``--prompt``-token prompt on an empty cache.
* ``decode``: per generated token, the difference between a ``--decode``-token answer and a
  1-token answer to the same prompt, divided by ``--decode - 1``.

A command with a reply makes the main host wait for it: that is a round trip. The per-token bytes
and round trips are what the network adds to a step. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rpc import stop, workers  # noqa: E402

# ggml-rpc.cpp's rpc_cmd order (protocol 7), and which commands the main host waits a reply for
COMMANDS = (
    "ALLOC_BUFFER GET_ALIGNMENT GET_MAX_SIZE BUFFER_GET_BASE FREE_BUFFER BUFFER_CLEAR SET_TENSOR "
    "SET_TENSOR_HASH GET_TENSOR COPY_TENSOR GRAPH_COMPUTE GET_DEVICE_MEMORY INIT_TENSOR GET_ALLOC_SIZE "
    "HELLO DEVICE_COUNT GRAPH_RECOMPUTE MEMSET_TENSOR"
).split()
COUNT = "Count from 1 to 1000, separated by commas: 1, 2, 3,"  # never ends early
REPLIES = {
    "ALLOC_BUFFER", "GET_ALIGNMENT", "GET_MAX_SIZE", "BUFFER_GET_BASE", "SET_TENSOR_HASH", "GET_TENSOR",
    "COPY_TENSOR", "GET_DEVICE_MEMORY", "GET_ALLOC_SIZE", "HELLO", "DEVICE_COUNT",
}  # fmt: skip


class CountingProxy:
    """Forwards one port to a worker, counting bytes each way and commands by name."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.up = 0  # bytes main -> worker
        self.down = 0  # bytes worker -> main
        self.commands: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"up": self.up, "down": self.down, "commands": dict(self.commands)}

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while head := _read(src, 9):
                cmd, size = struct.unpack("<BQ", head)
                dst.sendall(head)
                left = size
                while left:
                    chunk = src.recv(min(left, 1 << 20))
                    if not chunk:
                        return
                    dst.sendall(chunk)
                    left -= len(chunk)
                with self.lock:
                    self.up += 9 + size
                    self.commands[COMMANDS[cmd] if cmd < len(COMMANDS) else f"cmd{cmd}"] += 1
        except OSError:
            pass
        finally:
            _hang_up(src, dst)

    def _replies(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(1 << 20):
                dst.sendall(chunk)
                with self.lock:
                    self.down += len(chunk)
        except OSError:
            pass
        finally:
            _hang_up(src, dst)


def _hang_up(*socks: socket.socket) -> None:
    """End both sides (shutdown, not just close: the other thread may be blocked in recv on one)."""
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    commands = {k: v - before["commands"].get(k, 0) for k, v in after["commands"].items()}
    return {"up": after["up"] - before["up"], "down": after["down"] - before["down"], "commands": commands}


def report(d: dict[str, Any], per: float = 1.0) -> dict[str, Any]:
    commands = {k: round(v / per, 2) for k, v in d["commands"].items() if v}
    return {
        "bytes_up": round(d["up"] / per),
        "bytes_down": round(d["down"] / per),
        "round_trips": round(sum(v for k, v in commands.items() if k in REPLIES), 2),
        "commands": commands,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the real Qwen2.5-Coder-0.5B)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens (128)")
    parser.add_argument("--decode", type=int, default=64, help="tokens generated (64)")
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(ROOT / "scripts"))
        import fetch_assets

        args.model = str(fetch_assets.fetch_gguf(log=lambda _m: None))
    from edge_qwen.runtime import Model

    cmd = [sys.executable, "-m", "edge_qwen.cli", "worker", "--port", "{port}", "--threads", "1"]
    procs, endpoints = workers(cmd, 2)
    try:
        proxies = [CountingProxy(e) for e in endpoints]

        def counts() -> list[dict[str, Any]]:
            return [p.snapshot() for p in proxies]

        start = counts()
        rpc = [p.endpoint for p in proxies]
        with Model.load(args.model, n_ctx=1024, parallel=1, rpc=rpc, extra_buffers=False) as m:
            loaded = counts()
            prompt = m.tokenize(" ".join(f"word{i}" for i in range(4 * args.prompt)))[: args.prompt]
            m.generate(prompt[:8], temperature=0, max_tokens=2)  # warm-up: graphs reserved, not counted
            m.reset()
            before = counts()
            m.generate(prompt, temperature=0, max_tokens=1)
            prefilled = counts()
            m.reset()
            m.generate(COUNT, temperature=0, max_tokens=1)  # its graphs are built: not counted
            m.reset()
            warm = counts()
            m.generate(COUNT, temperature=0, max_tokens=1)
            one = counts()
            m.reset()
            r = m.generate(COUNT, temperature=0, repeat_penalty=1.0, max_tokens=args.decode)
            done = counts()
            n = r.usage.completion_tokens - 1  # the same prefill and first token, then n more
        decode = []
        for i in range(len(proxies)):
            longer, shorter = delta(done[i], one[i]), delta(one[i], warm[i])
            extra = {
                "up": longer["up"] - shorter["up"], "down": longer["down"] - shorter["down"],
                "commands": {k: v - shorter["commands"].get(k, 0) for k, v in longer["commands"].items()},
            }  # fmt: skip
            decode.append({"worker": endpoints[i], **report(extra, n)})
        print(json.dumps({
            "model": Path(args.model).name,
            "machine": {"cpu": _cpu(), "cores": _cores(), "python": platform.python_version()},
            "load": [report(delta(a, b)) for a, b in zip(loaded, start, strict=True)],
            "prefill": [report(delta(a, b)) for a, b in zip(prefilled, before, strict=True)],
            "prefill_tokens": len(prompt),
            "decode_per_token": decode,
            "decode_tokens": n,
        }, indent=1))  # fmt: skip
    finally:
        stop(procs)
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
