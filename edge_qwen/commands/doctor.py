"""``edge-qwen doctor`` — what this machine and this llama.cpp build can do, and what to change.

JSON keys (``--json``): ``llama_cpp`` {llama_cpp_python, system_info, features, backends, devices
[{name, description, type, backend, free_bytes, total_bytes}], gpu_offload, rpc, mmap, max_devices,
library_dir, error, has_amx, compiler} (or {load_error}), ``weights`` {extra_buffers, why, repack_in_build,
amx_in_build}, ``cpu`` {model, machine, logical_cores, physical_cores, simd, amx, compiler},
``memory`` {total_bytes, available_bytes, source}, ``hardware`` {gpus, nvcc}, ``versions``,
``cache`` {folders, models}, ``hub`` (reachable | unreachable | offline (by setting) | not checked),
``verdict`` (one line), ``suggestions`` [{level: warn | info, text}]; with ``--rpc``,
``rpc_workers`` [{endpoint, reachable, version, devices [{index, free_bytes, total_bytes}],
free_bytes, latency_ms, error}].
"""

from __future__ import annotations

import argparse
from typing import Any


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offline", action="store_true", help="do not check whether the hub is reachable")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds for the hub check (default 2)")
    parser.add_argument(
        "--rpc", default=None, metavar="HOST:PORT[,HOST:PORT...]",
        help="also check these RPC workers: reachable, protocol version, devices and free memory, latency",
    )  # fmt: skip


def main(args: argparse.Namespace) -> dict[str, Any]:
    from ..doctor import format_report, gather

    report = gather(check_hub=not args.offline, hub_timeout=args.timeout)
    if args.rpc:
        _check_workers(report, args.rpc)
    if not args.json:
        print(format_report(report))
        for w in report.get("rpc_workers", []):
            print(_worker_line(w))
    return report


def _check_workers(report: dict[str, Any], spec: str) -> None:
    from ..rpc import parse_endpoints, probe

    statuses = [probe(e) for e in parse_endpoints(spec)]
    report["rpc_workers"] = [s.to_dict() for s in statuses]
    bad = [s for s in statuses if not s.reachable]
    if not report["llama_cpp"].get("rpc"):
        report["suggestions"].append(
            {"level": "warn", "text": "this build has no RPC backend: re-run scripts/setup.sh"}
        )
    for s in bad:
        report["suggestions"].append({"level": "warn", "text": f"RPC worker {s.endpoint}: {s.error}"})
    if bad:
        report["verdict"] += f"; {len(bad)} of {len(statuses)} RPC worker(s) unreachable"
    else:
        free = sum(s.free_bytes for s in statuses) / 2**30
        report["verdict"] += f"; {len(statuses)} RPC worker(s) ready ({free:.1f} GiB free)"


def _worker_line(w: dict[str, Any]) -> str:
    if not w["reachable"]:
        return f"rpc {w['endpoint']}: unreachable: {w['error']}"
    free = w["free_bytes"] / 2**30
    return (
        f"rpc {w['endpoint']}: protocol {w['version']}, {len(w['devices'])} device(s), {free:.1f} GiB free, "
        f"{w['latency_ms']} ms round trip"
    )
