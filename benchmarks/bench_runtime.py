#!/usr/bin/env python3
"""Runtime benchmark: decode and prefill speed of edge-qwen's engine against the same llama.cpp.

    python benchmarks/bench_runtime.py [--model GGUF] [--threads N] [--runs 3] \
        [--llama-bench PATH] [--out results.json]

Measured on one GGUF with the same threads and batch sizes, runs interleaved (the machines this
runs on are often shared, so drift hits every contender alike), medians of ``--runs``:

* ``engine``: edge-qwen's full request path (queue, worker, sampler, detokenizer). Decode = the
  engine's own ``decode_tok_s`` over a 128-token greedy answer; prefill = a 512-token prompt on an
  empty KV cache; TTFT = caller-side time from ``stream()`` to the first chunk.
* ``raw``: bare ``llama_decode`` calls through ctypes, no sampling — what llama-bench measures,
  used as the reference when no ``llama-bench`` binary is around.
* ``llama_cpp_python``: ``llama_cpp.Llama.generate`` / ``Llama.eval`` on the same file.
* ``llama_bench``: ``llama-bench -p 512 -n 128`` when a binary is on PATH or given.

Prints one JSON object (machine info, medians, ratios); ``--out`` also writes it to a file.

``--contention K`` measures decode only, solo and then beside K busy processes (one spinning
Python each): ``llama-bench -t N`` and ``-t 1`` (bare ``llama_decode`` without a binary) and the
engine, as ratios to solo. scripts/build_llama_tools.sh builds llama-bench from the same llama.cpp.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import llama_cpp.llama_cpp as L  # noqa: E402

from edge_qwen import _llama  # noqa: E402
from edge_qwen.runtime import Model  # noqa: E402

DECODE_PROMPT = "Count from 1 to 1000, separated by commas: 1, 2, 3,"
INTERESTING_FLAGS = (
    "avx",
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "fma",
    "f16c",
    "amx_int8",
    "amx_bf16",
    "amx_tile",
    "neon",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
)


CONTENDERS = ("engine", "engine_two_models", "raw", "llama_cpp_python")


def main() -> None:
    args = _parse()
    if args.only:  # one contender, one run, in this fresh process: print its metrics
        print(json.dumps(_measure(args, args.only)))
        return
    threads = args.threads or _llama.physical_cores()
    if args.contention:
        _report(args, _contention(args, threads))
        return
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in CONTENDERS}
    for _ in range(args.runs):  # interleaved, so drift on a shared machine hits every contender
        for name in CONTENDERS:
            for metric, value in _measure_in_subprocess(args, name, threads).items():
                samples[name].setdefault(metric, []).append(value)
    medians = {n: {m: statistics.median(v) for m, v in ms.items()} for n, ms in samples.items()}
    bench = _llama_bench(args, threads)
    if bench:
        medians["llama_bench"] = bench
    report = {
        "model": str(args.model),
        "threads": threads,
        "machine": _machine(),
        "medians": medians,
        "samples": samples,
        "ratios": _ratios(medians),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from edge_qwen._atomic import write_json

        write_json(args.out, report)


def _measure_in_subprocess(
    args: argparse.Namespace, name: str, threads: int, metric: str | None = None
) -> dict[str, float]:
    """Each contender runs alone in a fresh process. Two llama.cpp users in one process (two
    OpenMP thread teams on few cores) slow each other down: libgomp throttles its spin-waits once
    it manages more threads than there are CPUs, which costs ~35% decode speed here."""
    cmd = [
        sys.executable,
        __file__,
        "--only",
        name,
        "--model",
        str(args.model),
        "--threads",
        str(threads),
        "--decode-tokens",
        str(args.decode_tokens),
        "--prompt-tokens",
        str(args.prompt_tokens),
        *(["--metric", metric] if metric else []),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _measure(args: argparse.Namespace, name: str) -> dict[str, float]:
    threads = args.threads or _llama.physical_cores()
    if name == "llama_cpp_python":
        llama = _llama_cpp_python(args.model, threads)
        prompt = llama.tokenize(
            " ".join(f"word{i}" for i in range(args.prompt_tokens)).encode(), add_bos=False
        )
        metrics = _llama_runs(llama, prompt[: args.prompt_tokens], args.decode_tokens)
    else:
        governed = name == "engine_governed"  # no thread count given: the governor follows the load
        model = Model.load(args.model, n_ctx=2048, n_threads=None if governed else threads, n_batch=2048,
                           n_ubatch=512)  # fmt: skip
        prompt = _prompt_tokens(model, args.prompt_tokens)
        if name == "engine_two_models":  # a second resident model that has computed too
            other = Model.load(args.model, n_ctx=2048, n_threads=threads, n_batch=2048, n_ubatch=512)
            _engine_warmup(other, prompt)
        if name.startswith("engine"):
            _engine_warmup(model, prompt)
            metrics = _engine_runs(model, prompt, args.decode_tokens)
        else:
            metrics = _raw_runs(model, prompt, args.decode_tokens)
    return {metric: run() for metric, run in metrics.items() if args.metric in (None, metric)}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: fetched Qwen2.5-Coder-0.5B)")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--llama-bench", default=None, help="path of a llama-bench binary (default: PATH)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", choices=(*CONTENDERS, "engine_governed"), help=argparse.SUPPRESS)
    parser.add_argument("--metric", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--contention", type=int, default=0, metavar="K",
        help="decode speed with K competing busy processes, as ratios to solo (llama-bench, engine)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3 (medians)")
    if args.model is None:
        import fetch_assets

        args.model = fetch_assets.fetch_gguf(log=lambda msg: None)
    return args


def _prompt_tokens(model: Model, n: int) -> list[int]:
    text = " ".join(f"word{i}" for i in range(n))
    tokens = model.tokenize(text)[:n]
    assert len(tokens) == n, "the filler text is too short"
    return tokens


# --- contenders --------------------------------------------------------------------------------


def _engine_warmup(model: Model, prompt: list[int]) -> None:
    model.reset()
    model.generate(prompt, temperature=0, max_tokens=4)


def _engine_runs(model: Model, prompt: list[int], n_decode: int) -> dict[str, Callable[[], float]]:
    def decode() -> float:
        # greedy without repeat penalty: the same work per token as llama-bench plus our loop
        model.reset()
        result = model.generate(DECODE_PROMPT, temperature=0, repeat_penalty=1.0, max_tokens=n_decode)
        if result.usage.completion_tokens != n_decode:
            raise RuntimeError(f"the decode prompt ended after {result.usage.completion_tokens} tokens")
        return result.timings.decode_tok_s

    def prefill() -> float:
        model.reset()
        return model.generate(prompt, temperature=0, max_tokens=1).timings.prefill_tok_s

    def ttft_ms() -> float:
        model.reset()
        start = time.perf_counter()
        stream = model.stream(prompt, temperature=0, max_tokens=1)
        next(iter(stream))
        elapsed = (time.perf_counter() - start) * 1e3
        list(stream)
        return elapsed

    return {"decode_tok_s": decode, "prefill_tok_s": prefill, "ttft_ms": ttft_ms}


def _raw_runs(model: Model, prompt: list[int], n_decode: int) -> dict[str, Callable[[], float]]:
    """Bare llama_decode on the engine's own context, like llama-bench (no sampling, no Python layers)."""
    from edge_qwen.runtime.engine.batcher import BatchEntry

    decoder = model._decoder  # the compute thread is idle between runs; nothing else touches the context

    def feed(tokens: list[int], pos: int) -> None:
        for start in range(0, len(tokens), model.n_batch):
            chunk = tokens[start : start + model.n_batch]
            decoder.decode([BatchEntry(0, chunk, pos + start, True)])

    def decode() -> float:
        model.reset()
        decoder.seq_rm(0, 0)
        feed(prompt[:1], 0)
        start = time.perf_counter()
        for i in range(n_decode):
            feed([prompt[1 + i % 100]], 1 + i)
        return n_decode / (time.perf_counter() - start)

    def prefill() -> float:
        model.reset()
        decoder.seq_rm(0, 0)
        start = time.perf_counter()
        feed(prompt, 0)
        return len(prompt) / (time.perf_counter() - start)

    def pure_prefill_ms() -> float:
        return len(prompt) / prefill() * 1e3

    return {"decode_tok_s": decode, "prefill_tok_s": prefill, "prefill_ms": pure_prefill_ms}


def _llama_cpp_python(path: Path, threads: int) -> Any:
    """llama_cpp.Llama on the same file, with extra buffer types only where the engine uses them
    (not in GCC 12 builds with AMX kernels, whose multi-token batches crash: _llama)."""
    import llama_cpp

    if not _llama.default_extra_buffers():
        original = L.llama_model_default_params

        def without_extra_buffers() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = without_extra_buffers
        llama_cpp.llama.llama_cpp.llama_model_default_params = without_extra_buffers  # type: ignore[attr-defined]
    return llama_cpp.Llama(
        str(path),
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def _llama_runs(llama: Any, prompt: list[int], n_decode: int) -> dict[str, Callable[[], float]]:
    decode_prompt = llama.tokenize(DECODE_PROMPT.encode(), add_bos=False)

    def decode() -> float:
        llama.reset()
        stamps = []
        for _token in llama.generate(decode_prompt, temp=0.0, reset=True):
            stamps.append(time.perf_counter())
            if len(stamps) == n_decode:
                break
        return (n_decode - 1) / (stamps[-1] - stamps[0])

    def prefill() -> float:
        llama.reset()  # eval() then drops the KV cache from position 0 on
        start = time.perf_counter()
        llama.eval(prompt)
        return len(prompt) / (time.perf_counter() - start)

    return {"decode_tok_s": decode, "prefill_tok_s": prefill}


def _llama_bench(args: argparse.Namespace, threads: int) -> dict[str, float] | None:
    binary = args.llama_bench or shutil.which("llama-bench")
    if not binary:
        return None
    cmd = [
        binary,
        "-m",
        str(args.model),
        "-t",
        str(threads),
        "-p",
        str(args.prompt_tokens),
        "-n",
        str(args.decode_tokens),
        "-r",
        str(args.runs),
        "-o",
        "json",
        # Same weight layout as the engine: no repacking where edge-qwen turns it off (AMX CPUs).
        "--repack",
        "1" if _llama.default_extra_buffers() else "0",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    results: dict[str, float] = {}
    for row in json.loads(out):
        key = "prefill_tok_s" if row.get("n_prompt") else "decode_tok_s"
        results[key] = float(row["avg_ts"])
    return results


# --- contention: a desktop app shares the CPU -----------------------------------------------------


@contextlib.contextmanager
def _busy(k: int) -> Iterator[None]:
    """K competing processes, each spinning on one core (what a busy app or a build looks like)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]
    try:
        time.sleep(0.5)  # let them get scheduled before measuring
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _decode_speeds(args: argparse.Namespace, threads: int) -> dict[str, float]:
    """Median decode tok/s: llama-bench (or bare llama_decode) with N and 1 threads, and the engine."""
    binary = args.llama_bench or shutil.which("llama-bench")
    speeds: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for n in sorted({threads, 1}, reverse=True):
            if binary:
                speeds.setdefault(f"llama_bench_t{n}", []).append(_llama_bench_decode(args, binary, n))
            else:
                raw = _measure_in_subprocess(args, "raw", n, "decode_tok_s")["decode_tok_s"]
                speeds.setdefault(f"raw_t{n}", []).append(raw)
        for name in ("engine", "engine_governed"):  # --threads N pinned, and the default
            engine = _measure_in_subprocess(args, name, threads, "decode_tok_s")["decode_tok_s"]
            speeds.setdefault(name, []).append(engine)
    return {name: statistics.median(values) for name, values in speeds.items()}


def _llama_bench_decode(args: argparse.Namespace, binary: str, threads: int) -> float:
    cmd = [binary, "-m", str(args.model), "-t", str(threads), "-p", "0", "-n", str(args.decode_tokens),
           "-r", "1", "-o", "json", "--repack", "1" if _llama.default_extra_buffers() else "0"]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def _contention(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """Solo, then with ``--contention`` busy processes: decode speeds and their ratios to solo.
    ``engine`` is pinned to ``--threads``; ``engine_governed`` is loaded without a thread count, as
    ``edge-qwen run``/``serve`` do by default, so the load-aware governor picks it.
    Goals (issue 13): the engine keeps >= 0.65x of its solo speed with one competitor, and load-aware
    threads cost nothing alone (>= 0.98x of the pinned count)."""
    solo = _decode_speeds(args, threads)
    reference = next(name for name in solo if name.endswith(f"_t{threads}"))
    with _busy(args.contention):
        loaded = _decode_speeds(args, threads)
    return {
        "model": str(args.model),
        "threads": threads,
        "contention": args.contention,
        "machine": _machine(),
        "solo_decode_tok_s": solo,
        "loaded_decode_tok_s": loaded,
        "ratio_to_solo": {name: round(loaded[name] / solo[name], 3) for name in solo},
        "engine_solo_vs_reference_solo": round(solo["engine"] / solo[reference], 3),
        "governed_solo_vs_pinned_solo": round(solo["engine_governed"] / solo["engine"], 3),
    }


def _report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    print(json.dumps(report, indent=2))
    if args.out:
        from edge_qwen._atomic import write_json

        write_json(args.out, report)


# --- report ------------------------------------------------------------------------------------


def _ratios(medians: dict[str, dict[str, float]]) -> dict[str, float]:
    reference = "llama_bench" if "llama_bench" in medians else "raw"
    engine = medians["engine"]
    out = {
        f"decode_vs_{reference}": engine["decode_tok_s"] / medians[reference]["decode_tok_s"],
        f"prefill_vs_{reference}": engine["prefill_tok_s"] / medians[reference]["prefill_tok_s"],
        "decode_vs_llama_cpp_python": engine["decode_tok_s"] / medians["llama_cpp_python"]["decode_tok_s"],
        "prefill_vs_llama_cpp_python": engine["prefill_tok_s"] / medians["llama_cpp_python"]["prefill_tok_s"],
        "ttft_overhead_ms": engine["ttft_ms"] - medians["raw"]["prefill_ms"],
        "two_models_decode_vs_one": medians["engine_two_models"]["decode_tok_s"] / engine["decode_tok_s"],
    }
    return {k: round(v, 4) for k, v in out.items()}


def _machine() -> dict[str, Any]:
    flags = _llama.cpu_flags()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _llama.physical_cores(),
        "cpu_flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
        "llama_cpp_python": _version(),
        "llama_cpp_system_info": L.llama_print_system_info().decode(errors="replace").strip(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version() -> str:
    import llama_cpp

    return str(getattr(llama_cpp, "__version__", "?"))


if __name__ == "__main__":
    main()
