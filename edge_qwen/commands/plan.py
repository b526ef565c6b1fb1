"""``edge-qwen plan MODEL.gguf`` — will it fit? The memory breakdown from the header alone.

JSON keys (``--json``): ``model``, ``device`` (profile name or "this machine"), ``budget_bytes``,
``settings`` {n_ctx, cache_type, parallel, n_ubatch, flash_attn}, ``estimate`` (every
MemoryEstimate field, bytes: weights, repack, kv, compute (llama.cpp's reserve),
compute_resident, output, overhead, total, committed, device), ``fits`` (bool),
``largest_context`` (int | null, at this KV type), ``largest_context_by_kv`` {kv type: int | null}.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..gguf_header import read_header
from ..settings import ModelSettings
from ..sizing.device import device_profile, resolve_budget, system_memory
from ..sizing.estimate import estimate, host_cpu_features, largest_context, model_shape
from ._types import positive_int

MiB = 2**20
KV_CHOICES = ("f16", "q8_0", "q4_0")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a .gguf model file")
    parser.add_argument(
        "--ctx", type=positive_int, default=4096,
        help="KV cells of the context, shared by the parallel sequences (default 4096)",
    )  # fmt: skip
    parser.add_argument("--kv", choices=KV_CHOICES, default="f16", help="KV cache type (default f16)")
    parser.add_argument(
        "--parallel", type=positive_int, default=ModelSettings.parallel,
        help=f"sequences decoded together (default {ModelSettings.parallel}); they share the --ctx cells",
    )  # fmt: skip
    parser.add_argument(
        "--ubatch", type=positive_int, default=512, help="physical batch size n_ubatch (default 512)"
    )
    parser.add_argument(
        "--lora", action="append", default=[], metavar="FILE",
        help="a GGUF LoRA adapter loaded next to the model (counted in the total); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--mtp",
        action="store_true",
        help="count the MTP head a Qwen3.5 / Qwen3-Next model drafts with (run --mtp)",
    )
    parser.add_argument(
        "--device-memory", metavar="SIZE",
        help="free GPU memory (e.g. 8GiB): how many layers offload, and the host/device split",
    )  # fmt: skip
    from ._runtime_args import add_rpc_argument

    add_rpc_argument(parser)  # --rpc and --tensor-split: the split plan shows per worker
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--budget", help="memory budget, e.g. 3.5GB or 3000MiB (default: available minus headroom)"
    )
    where.add_argument(
        "--device", help="plan for a device profile (edge_qwen/data/devices.yaml), e.g. raspberry-pi-4-4gb"
    )


def _shape(model: str) -> Any:
    """A GGUF path or pulled registry name: its header; a registry name not pulled yet: models.yaml."""
    from ..errors import ModelNotCachedError
    from ..registry import lookup, resolve_model
    from ..registry.fit import registry_shape

    try:
        return model_shape(read_header(resolve_model(model)))
    except ModelNotCachedError:
        entry, src = lookup(model)
        return registry_shape(entry, src.quant)


def main(args: argparse.Namespace) -> dict[str, Any]:
    shape = _shape(args.model)
    settings = ModelSettings(
        n_ctx=args.ctx, n_ubatch=args.ubatch, cache_type_k=args.kv, cache_type_v=args.kv, n_gpu_layers=0,
        parallel=args.parallel, mtp=args.mtp,
        adapters=tuple((f"lora{i}", path) for i, path in enumerate(args.lora)),
    )  # fmt: skip
    if args.device:
        profile = device_profile(args.device)
        budget, features, device = profile.budget_bytes, profile.cpu_features, profile.name
    else:
        budget, features, device = (
            resolve_budget(args.budget, system_memory()),
            host_cpu_features(),
            "this machine",
        )
    est = estimate(shape, settings, parallel=args.parallel, cpu_features=features)
    by_kv = {
        kv: largest_context(
            shape, dataclasses.replace(settings, cache_type_k=kv, cache_type_v=kv),
            budget, parallel=args.parallel, cpu_features=features,
        )
        for kv in KV_CHOICES
    }  # fmt: skip
    result = {
        "model": str(args.model),
        "device": device,
        "budget_bytes": budget,
        "settings": {
            "n_ctx": est.n_ctx, "cache_type": args.kv, "parallel": args.parallel,
            "n_ubatch": est.n_ubatch, "flash_attn": est.flash_attn,
        },
        "estimate": est.to_dict(),
        "fits": est.total_bytes <= budget,
        "largest_context": by_kv[args.kv],
        "largest_context_by_kv": by_kv,
        "native_context": shape.n_ctx_train,
        "warnings": _context_warnings(args.ctx, shape.n_ctx_train),
    }  # fmt: skip
    if getattr(args, "device_memory", None):
        from ..sizing.device import parse_size
        from ..sizing.offload import offload_split

        device_memory = parse_size(args.device_memory)
        result["offload"] = offload_split(
            shape, settings, device_memory, cpu_features=features, parallel=args.parallel
        )
    if getattr(args, "rpc", None):
        from ..rpc import parse_endpoints, require_workers
        from ..settings import parse_tensor_split
        from ..sizing.rpc_split import rpc_split

        statuses = require_workers(parse_endpoints(args.rpc))
        workers = [(s.endpoint, s.free_bytes) for s in statuses]
        shares = parse_tensor_split(args.tensor_split) if args.tensor_split else None
        result["rpc"] = rpc_split(shape, settings, workers, parallel=args.parallel, shares=shares)
        on_workers = dataclasses.replace(settings, n_gpu_layers=-1)  # what --rpc loads
        host = estimate(shape, on_workers, parallel=args.parallel, cpu_features=features, gpu=True)
        result["rpc"]["host_bytes"] = host.total_bytes
        result["rpc"]["host_fits"] = host.total_bytes <= budget
    if not args.json:
        print(format_plan(result))
    return result


def _context_warnings(n_ctx: int, native: int) -> list[str]:
    """A context past what the model was trained for fits in memory but not in the model's head."""
    if not native or n_ctx <= native:
        return []
    return [
        f"--ctx {n_ctx} is above the model's native context of {native} tokens: past it the model "
        f"degrades unless the GGUF was converted with YaRN rope scaling (edge-qwen convert --ctx {n_ctx})"
    ]


def _mib(n: int) -> str:
    return f"{n / MiB:>9,.1f} MiB"


def format_plan(plan: dict[str, Any]) -> str:
    est, s = plan["estimate"], plan["settings"]
    rows = [
        ("weights", est["weights_bytes"], f"of which {est['repack_bytes'] / MiB:,.1f} MiB repacked"),
        ("KV cache", est["kv_bytes"],
         f"n_ctx {s['n_ctx']} shared by {s['parallel']} sequences (~{s['n_ctx'] // s['parallel']} each when "
         f"all are busy), {s['cache_type']}"),
        ("recurrent", est["recurrent_bytes"],
         f"fixed state of the recurrent layers for {s['parallel']} sequences (and their rollback "
         "snapshots), whatever the context"),
        ("checkpts", est["checkpoint_bytes"], "host copies of that state for prefix reuse (ctx_checkpoints)"),
        ("mtp", est["mtp_weights_bytes"] + est["mtp_kv_bytes"], "the MTP head's layer and its K/V (--mtp)"),
        ("output", est["output_bytes"], f"logits rows of {s['parallel']} sequences"),
        ("compute", est["compute_resident_bytes"], f"of {est['compute_bytes'] / MiB:,.1f} MiB reserved"),
        ("overhead", est["overhead_bytes"], "tokenizer tables, context"),
        ("adapters", est["adapter_bytes"], "LoRA adapters"),
    ]  # fmt: skip
    lines = [f"{plan['model']} on {plan['device']} (budget {plan['budget_bytes'] / MiB:,.0f} MiB)"]
    shown = [row for row in rows if row[1] or row[0] not in ("adapters", "recurrent", "checkpts", "mtp")]
    lines += [f"  {name:<9}{_mib(value)}   {note}" for name, value, note in shown]
    lines.append(
        f"  {'total':<9}{_mib(est['total_bytes'])}   committed {est['committed_bytes'] / MiB:,.1f} MiB"
    )
    verdict = "fits" if plan["fits"] else "does NOT fit"
    lines.append(f"{verdict} the budget")
    ctx = ", ".join(f"{kv}: {n if n else 'none'}" for kv, n in plan["largest_context_by_kv"].items())
    lines.append(f"largest context that fits — {ctx}")
    if "offload" in plan:
        from ..sizing.offload import format_offload

        lines.append(format_offload(plan["offload"]))
    if "rpc" in plan:
        from ..sizing.rpc_split import format_rpc_split

        lines.append(format_rpc_split(plan["rpc"]))
    lines += [f"warning: {w}" for w in plan["warnings"]]
    return "\n".join(lines)
