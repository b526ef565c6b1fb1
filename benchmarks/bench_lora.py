"""LoRA adapters at run time (not a test): switch cost, decode speed with an adapter, memory.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_lora.py [BASE.gguf] [--rank 16] [--out bench_lora.json]

Three random rank-r PEFT adapters on all seven projections of the base (by default the real
Qwen2.5-Coder-0.5B Q4_K_M) are made with scripts/make_tiny_adapters.py, converted with
``convert_lora(--base BASE.gguf)`` and driven through :mod:`edge_qwen.adapters` on bare
``llama_decode`` (no engine), so the figures are llama.cpp's own costs:

* ``switch_ms``: ``apply_adapters`` to another adapter plus the first one-token decode after it,
  minus a steady-state one-token decode (llama.cpp rebuilds its graph after a change);
* ``decode_tok_s``: one-token decodes (after a 32-token prompt) with no adapter, one adapter, three;
* memory: base file + 3 adapters' tensor bytes against 3 merged models (3 × the base file), and the
  RSS a process gains loading the 3 adapters onto the loaded base.

Goals from issue 11: adapter decode >= 0.9x the base; base + 3 adapters <= 0.4x three merged models.

Measured 2026-12-01 on the shared 2-core EPYC under load (load average 6-8, so absolute speeds are
low and noisy; ratios come from interleaved runs), real 0.5B Q4_K_M base, rank 16 on all seven
projections, ``--threads 1 --runs 2 --decode 32``:

| adapters | decode vs base: 1 adapter / 3 | switch | base + 3 vs 3 merged |
|---|---|---|---|
| F16 (16.8 MiB each) | 0.82x / 0.66x (0.74x / 0.66x in a 3-run repeat) | 12-15 ms | 0.369 |
| F32 (33.6 MiB each) | 0.91x / 0.86x | 27 ms | 0.405 |

llama.cpp converts the activations to F16 for every F16 pair (14 extra mat-muls per layer), which
costs more than the F32 pairs' extra bytes at this size. ``apply_adapters`` itself takes ~0.13 ms;
the switch cost is the graph rebuild on the next decode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
DEFAULT_GGUF = Path.home() / ".cache/edge-qwen/assets/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MiB = 2**20


def make_adapters(base: Path, workdir: Path, rank: int, count: int, outtype: str) -> list[Path]:
    from make_tiny_adapters import config_from_gguf, make_adapter

    from edge_qwen.convert.lora import convert_lora

    shapes = workdir / "base-config"
    shapes.mkdir()
    (shapes / "config.json").write_text(json.dumps(config_from_gguf(base)))
    files = []
    for i in range(count):
        folder = make_adapter(workdir / f"adapter{i}", shapes, seed=i + 1, r=rank, lora_alpha=2 * rank)
        files.append(convert_lora(folder, workdir / "out", base=base, outtype=outtype).gguf)
    return files


@contextlib.contextmanager
def loaded(path: Path, threads: int) -> Iterator[tuple[Any, Any, Any]]:
    from edge_qwen import _llama

    _llama.init_backend()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = _llama.default_extra_buffers()
    model = llama_cpp.llama_model_load_from_file(os.fsencode(path), mp)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 512, 512, 512, 1
    cp.n_threads = cp.n_threads_batch = threads
    cp.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, cp)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    try:
        yield model, ctx, batch
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def decode(ctx: Any, batch: Any, tokens: list[int], pos: int) -> None:
    batch.n_tokens = len(tokens)
    for i, token in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos + i, 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = i == len(tokens) - 1
    if llama_cpp.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")


PROMPT = [(i * 7919) % 150000 for i in range(32)]


def decode_tok_s(ctx: Any, batch: Any, n: int) -> float:
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    decode(ctx, batch, PROMPT, 0)
    start = time.perf_counter()
    for i in range(n):
        decode(ctx, batch, [PROMPT[i % 32]], 32 + i)
    return n / (time.perf_counter() - start)


def one_token_ms(ctx: Any, batch: Any, pos: int) -> float:
    start = time.perf_counter()
    decode(ctx, batch, [PROMPT[pos % 32]], pos)
    return (time.perf_counter() - start) * 1e3


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(base: Path, files: list[Path], threads: int, runs: int, n_decode: int) -> dict[str, Any]:
    from edge_qwen.adapters import adapter_bytes, apply_adapters, free_adapter, load_adapter

    with loaded(base, threads) as (model, ctx, batch):
        before = rss()
        adapters = [load_adapter(model, f) for f in files]
        rss_adapters = rss() - before
        try:
            sets: dict[str, list[tuple[Any, float]]] = {
                "base": [],
                "one_adapter": [(adapters[0], 1.0)],
                "three_adapters": [(a, 1.0) for a in adapters],
            }
            speed: dict[str, list[float]] = {name: [] for name in sets}
            for _ in range(runs):
                for name, chosen in sets.items():
                    apply_adapters(ctx, chosen)
                    speed[name].append(decode_tok_s(ctx, batch, n_decode))
            switch_ms, apply_ms, steady_ms = [], [], []
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            decode(ctx, batch, PROMPT, 0)
            pos = 32
            for i in range(20):
                steady_ms.append(one_token_ms(ctx, batch, pos))
                start = time.perf_counter()
                apply_adapters(ctx, [(adapters[(i + 1) % len(adapters)], 1.0)])
                apply_ms.append((time.perf_counter() - start) * 1e3)
                switch_ms.append(apply_ms[-1] + one_token_ms(ctx, batch, pos + 1))
                pos += 2
            apply_adapters(ctx, [])
        finally:
            for a in adapters:
                free_adapter(a)
    med = statistics.median
    steady = med(steady_ms)
    tok_s = {name: round(med(v), 2) for name, v in speed.items()}
    base_bytes = base.stat().st_size
    lora_bytes = [adapter_bytes(f) for f in files]
    return {
        "decode_tok_s": tok_s,
        "decode_ratio_one_adapter": round(tok_s["one_adapter"] / tok_s["base"], 3),
        "decode_ratio_three_adapters": round(tok_s["three_adapters"] / tok_s["base"], 3),
        "switch_ms": round(med(switch_ms) - steady, 3),
        "apply_call_ms": round(med(apply_ms), 4),
        "steady_token_ms": round(steady, 3),
        "adapter_mib": [round(b / MiB, 2) for b in lora_bytes],
        "adapter_rss_mib": round(rss_adapters / MiB, 1),
        "base_file_mib": round(base_bytes / MiB, 1),
        "base_plus_3_vs_3_merged": round((base_bytes + sum(lora_bytes)) / (3 * base_bytes), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="?", type=Path, default=DEFAULT_GGUF, help="base model GGUF")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--outtype", default="f16", help="adapter type (f32, f16, bf16, q8_0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--decode", type=int, default=64, help="tokens per decode measurement")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_adapters(args.gguf, Path(tmp), args.rank, 3, args.outtype)
        result = {
            "base": str(args.gguf),
            "rank": args.rank,
            "outtype": args.outtype,
            "threads": args.threads,
            **measure(args.gguf, files, args.threads, args.runs, args.decode),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
