"""``edge-qwen doctor`` — what this machine and this llama.cpp build can do, and what to change.

JSON keys (``--json``): ``llama_cpp`` {llama_cpp_python, system_info, features, backends, devices
[{name, description, type, backend, free_bytes, total_bytes}], gpu_offload, rpc, mmap, max_devices,
library_dir, error, has_amx, compiler} (or {load_error}), ``weights`` {extra_buffers, why, repack_in_build,
amx_in_build}, ``cpu`` {model, machine, logical_cores, physical_cores, simd, amx, compiler},
``memory`` {total_bytes, available_bytes, source}, ``hardware`` {gpus, nvcc}, ``versions``,
``cache`` {folders, models}, ``hub`` (reachable | unreachable | offline (by setting) | not checked),
``verdict`` (one line), ``suggestions`` [{level: warn | info, text}].
"""

from __future__ import annotations

import argparse
from typing import Any


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offline", action="store_true", help="do not check whether the hub is reachable")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds for the hub check (default 2)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    from ..doctor import format_report, gather

    report = gather(check_hub=not args.offline, hub_timeout=args.timeout)
    if not args.json:
        print(format_report(report))
    return report
