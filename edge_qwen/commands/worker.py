"""``edge-qwen worker`` — serve this machine's CPU to other machines through llama.cpp's RPC backend.

A main host then runs ``edge-qwen run|chat|serve MODEL --rpc HOST:PORT[,…]`` and the model's layers
are split across the workers' devices. The protocol has no authentication: the worker binds to
127.0.0.1 unless ``--host`` names another address *and* ``--allow-remote`` is given (then a warning
names the risk and the safe set-ups). Ctrl-C or SIGTERM stops it.

JSON keys (``--json``, printed once serving has stopped): ``endpoint``, ``threads``, ``devices``
[{name, description, free_bytes, total_bytes}], ``warning`` (or null), ``stopped_by``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from typing import Any

from ..errors import RpcError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from ..rpc import DEFAULT_PORT

    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    parser.add_argument("--cache", default=None, help="folder where received tensors are cached by hash")
    parser.add_argument(
        "--allow-remote", action="store_true", help="serve on a non-loopback address (no authentication!)"
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    from .. import _llama
    from ..backends import list_devices
    from ..rpc import check_bind, parse_endpoint, serve

    if not 0 < args.port < 65536:
        raise RpcError(f"--port {args.port} is not a TCP port (1-65535)")
    host, port = parse_endpoint(
        f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    )
    warning = check_bind(host, args.allow_remote)
    threads = args.threads or _llama.physical_cores()
    if threads <= 0:
        raise RpcError("--threads must be positive")
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    cpu = [d for d in list_devices()[1] if d.type == "cpu"][:1]  # what serve() exposes
    if warning:
        print(warning, file=sys.stderr)
    if not args.json:
        print(f"edge-qwen worker on {endpoint}, {threads} threads; serving:", file=sys.stderr)
        for d in cpu:
            print(f"  {d.name}: {d.description} ({d.free_bytes / 2**30:.1f} GiB free)", file=sys.stderr)
        print(f"main hosts use it with: --rpc {endpoint}   (Ctrl-C stops it)", file=sys.stderr)
    stopped = _serve_until_signal(lambda: serve(endpoint, threads=threads, cache_dir=args.cache))
    return {
        "endpoint": endpoint,
        "threads": threads,
        "devices": [dataclasses.asdict(d) for d in cpu],
        "warning": warning,
        "stopped_by": stopped,
    }


def _serve_until_signal(run: Any) -> str:
    """``run`` (which blocks while serving) on a daemon thread; returns the signal that stopped it.

    Raises:
        RpcError: the server stopped by itself (it could not listen: the port is taken).
    """
    done = threading.Event()
    got: list[str] = []

    def stop(signum: int, _frame: Any) -> None:
        got.append(signal.Signals(signum).name)
        done.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def serving() -> None:
        run()
        done.set()

    thread = threading.Thread(target=serving, name="rpc-server", daemon=True)
    try:
        thread.start()
        done.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not got:
        raise RpcError(
            "the RPC server stopped at once: the address is in use or cannot be bound "
            "(see the message above); pick another --port or --host"
        )
    return got[0]
