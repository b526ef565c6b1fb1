"""Speculative decoding (prompt lookup and a draft model): decode tok/s with and without it,
acceptance, greedy outputs compared, and llama-server from the same sdist as the anchor in the same run.

Workloads: a code edit (a ~150-line Python file and "rename one variable, return the whole file"),
plain chat, and a JSON answer that echoes a schema. Each runs greedy (temperature 0) on one sequence,
2 threads, every contender alone and one after another, same prompts and max_tokens.

Groups (``--modes``):
- ``lookup``: target ``--target`` (default: the real Qwen2.5-Coder-0.5B Q4_K_M); engine off vs
  ``speculative="lookup"``; llama-server with no speculation vs ``--spec-type ngram-simple``.
- ``draft``: target ``--target`` (default: an F16 GGUF dequantized from that Q4_K_M, made once and
  cached under ~/.cache/edge-qwen/bench/), draft ``--draft`` (default: the Q4_K_M); engine off vs
  ``speculative="draft"`` (its default k; ``draft_cold``: the same, first, with the draft model's
  cache holding another prompt, see OTHER_PROMPT) and, on ``--k-workload``, each k of ``--draft-k``;
  llama-server with no speculation vs ``-md DRAFT --spec-type draft-simple``.

    python benchmarks/bench_spec.py [--target GGUF] [--draft GGUF] [--modes lookup,draft]
        [--draft-k 3,4,6,8] [--k-workload code] [--max-tokens 160] [--runs 2]
        [--workloads code,chat,json] [--llama-server PATH] [--no-server] [--out bench_spec.json]

Prints one JSON object (machine: CPU model, cores, SIMD flags, load average) and writes it to
``--out``. Decode tok/s is the engine's own figure (``Timings.decode_tok_s``: completion tokens
after the first over the time after the first), the median of ``--runs``; llama-server's is its
``timings.predicted_per_second``. ``vs_off``/``vs_none`` are ratios to the same engine's run without
speculation on the same target; ``identical_to_off``/``identical_to_none`` compare greedy outputs
(token ids for the engine, text for llama-server).
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
ASSET_Q4 = Path.home() / ".cache/edge-qwen/assets/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
BENCH_DIR = Path.home() / ".cache/edge-qwen/bench"
F16_FROM_Q4 = BENCH_DIR / "qwen2.5-coder-0.5b-instruct-f16-from-q4km.gguf"


def ensure_f16(src: Path, dst: Path) -> Path:
    """An F16 GGUF dequantized from ``src`` (cached: made once, written to a temp name then renamed).

    Every metadata key is copied except ``general.file_type`` (set to MOSTLY_F16); quantized
    tensors become F16, F32/F16 ones are copied as they are. The weights are the quantized ones'
    values, so the pair (src drafting for dst) is a quantized model drafting for its F16 self."""
    if dst.exists():
        return dst
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch)
    skip = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE}
    for field in reader.fields.values():
        if field.name in skip or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    keep = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # numpy order
        if t.tensor_type in keep:
            dtype = np.float32 if t.tensor_type == gguf.GGMLQuantizationType.F32 else np.float16
        else:
            dtype = np.float16
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(t.name, shape, np.dtype(dtype), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if t.tensor_type in keep:
            data = np.asarray(t.data).reshape(shape)
        else:
            data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float16)
        writer.write_tensor_data(data)
    writer.close()
    os.replace(tmp, dst)
    return dst


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


# Answered (draft mode) before a "draft_cold" run: model.reset() empties the target's KV cache only,
# and the draft model keeps the prefix it shares with the next prompt, so without this every draft
# run after the first would find the prompt already in the draft's cache. The engine counts the
# draft's catch-up on the prompt in decode time; "draft_cold" shows that cost, "draft" and
# "draft_k*" (run after it, same prompt) are the draft's steady state, as in a multi-turn chat.
OTHER_PROMPT = [{"role": "user", "content": "Say hi."}]


def machine_info() -> dict[str, Any]:
    """CPU model, cores and the SIMD flags that decide llama.cpp's kernels (avx2/avx512/amx...)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and cpu in ("", platform.machine(), platform.processor()):
                cpu = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")  # fmt: skip
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(),
            "flags": [f for f in wanted if f in flags], "system": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def run_engine(model: Model, messages: list[dict[str, str]], max_tokens: int, spec: Any) -> dict[str, Any]:
    model.reset()
    t0 = time.perf_counter()
    result = model.chat(messages, temperature=0, max_tokens=max_tokens, speculative=spec)
    wall = time.perf_counter() - t0
    t = result.timings
    return {"decode_tok_s": t.decode_tok_s, "wall_s": wall, "tokens": len(result.token_ids),
            "drafted": t.drafted_tokens, "accepted": t.accepted_tokens,
            "ids": list(result.token_ids), "text": result.text}  # fmt: skip


def summarize(rows: list[dict[str, Any]], off: list[dict[str, Any]]) -> dict[str, Any]:
    """Median tok/s, ratio to the same engine's no-speculation median, acceptance (all runs pooled)
    and whether every run's greedy token ids equal the first no-speculation run's."""
    base = statistics.median(r["decode_tok_s"] for r in off)
    tok_s = statistics.median(r["decode_tok_s"] for r in rows)
    drafted, accepted = sum(r["drafted"] for r in rows), sum(r["accepted"] for r in rows)
    return {"tok_s": round(tok_s, 2), "vs_off": round(tok_s / base, 2) if base else None,
            "tokens": rows[0]["tokens"], "drafted": drafted // len(rows), "accepted": accepted // len(rows),
            "acceptance": round(accepted / drafted, 3) if drafted else None,
            "identical_to_off": all(r["ids"] == off[0]["ids"] for r in rows + off),
            "wall_s": round(statistics.median(r["wall_s"] for r in rows), 1),
            "runs_tok_s": [round(r["decode_tok_s"], 2) for r in rows]}  # fmt: skip


def run_server(server: Path, gguf: Path, workloads: list[str], max_tokens: int, runs: int,
               extra: list[str]) -> dict[str, Any]:  # fmt: skip
    """One llama-server (2 threads, one slot, no prompt cache) answering every workload ``runs``
    times; ``extra`` are its speculation flags. Decode tok/s is ``timings.predicted_per_second``."""
    port = 18931
    cmd = [str(server), "-m", str(gguf), "--port", str(port), "-t", "2", "-c", "4096", "-np", "1",
           "--no-warmup", "--log-disable", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(480):
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {proc.returncode}: {' '.join(cmd)}\n"
                                   f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")  # fmt: skip
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        out = {}
        for name in workloads:
            speeds, texts, n, draft = [], [], 0, (0, 0)
            for _ in range(runs):
                body = {"messages": WORKLOADS[name], "temperature": 0, "max_tokens": max_tokens,
                        "cache_prompt": False, "n_probs": 0}  # fmt: skip
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json.dumps(body).encode(),
                    {"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=900) as r:
                    reply = json.load(r)
                speeds.append(reply["timings"]["predicted_per_second"])
                texts.append(reply["choices"][0]["message"]["content"])
                n = reply["timings"].get("predicted_n", 0)
                draft = (reply["timings"].get("draft_n", 0), reply["timings"].get("draft_n_accepted", 0))
            out[name] = {"tok_s": round(statistics.median(speeds), 2), "tokens": n,
                         "runs_tok_s": [round(x, 2) for x in speeds],
                         "drafted": draft[0], "accepted": draft[1],
                         "acceptance": round(draft[1] / draft[0], 3) if draft[0] else None,
                         "texts": texts}  # fmt: skip
        return out
    finally:
        if proc.stderr:
            proc.stderr.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--target",
        "--model",
        type=Path,
        default=None,
        dest="target",
        help="target GGUF (default: the Q4_K_M for lookup, its F16 dequantization for draft)",
    )
    ap.add_argument(
        "--draft",
        type=Path,
        default=ASSET_Q4,
        help="draft GGUF for the draft-model runs (default: the real Q4_K_M)",
    )
    ap.add_argument("--modes", default="lookup,draft", help="which speculation groups to run")
    ap.add_argument("--draft-k", default="3,4,6,8", help="k values for draft mode on --k-workload")
    ap.add_argument("--k-workload", default="code")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workloads", default="code,chat,json")
    ap.add_argument("--llama-server", type=Path, default=DEFAULT_SERVER)
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench_spec.json"))
    args = ap.parse_args()
    names = args.workloads.split(",")
    modes = args.modes.split(",")
    ks = [int(k) for k in args.draft_k.split(",") if k]
    t_start = time.perf_counter()
    lookup_target = args.target or ASSET_Q4
    draft_target = args.target or ensure_f16(ASSET_Q4, F16_FROM_Q4)
    report: dict[str, Any] = {
        "machine": machine_info(), "max_tokens": args.max_tokens, "runs": args.runs, "threads": 2,
        "greedy": True, "workloads": names,
        "lookup_pair": {"target": lookup_target.name} if "lookup" in modes else None,
        "draft_pair": {"target": draft_target.name, "draft": args.draft.name} if "draft" in modes else None,
        "engine": {}, "llama_server": {},
    }  # fmt: skip

    def log(what: str, row: Any) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {what}: {json.dumps(row)}", flush=True)

    offs: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (group, workload) -> engine off runs
    groups = []
    if "lookup" in modes:
        groups.append(("lookup", lookup_target, None))
    if "draft" in modes:
        groups.append(("draft", draft_target, args.draft))
    for group, target, draft in groups:
        res: dict[str, Any] = report["engine"].setdefault(group, {})
        with Model.load(target, draft=draft, n_ctx=4096, parallel=1, n_threads=2) as model:
            model.chat(WORKLOADS["chat"], temperature=0, max_tokens=8, speculative="off")  # warm-up
            for name in names:
                contenders: dict[str, Any] = {"off": "off", group: group}
                if group == "draft":  # first, with the draft's cache holding another prompt
                    contenders = {"off": "off", "draft_cold": "draft", "draft": "draft"}
                if group == "draft" and name == args.k_workload:
                    contenders.update({f"draft_k{k}": {"mode": "draft", "k": k} for k in ks})
                rows: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
                for _ in range(args.runs):
                    for c, spec in contenders.items():  # each contender alone, one after another
                        if c == "draft_cold":
                            model.reset()
                            model.chat(OTHER_PROMPT, temperature=0, max_tokens=4, speculative="draft")
                        rows[c].append(run_engine(model, WORKLOADS[name], args.max_tokens, spec))
                off = rows["off"]
                offs[(group, name)] = off
                res[name] = {c: summarize(r, off) for c, r in rows.items()}
                res[name]["off"].pop("identical_to_off")
                log(f"engine {group} {name}", res[name])

    if not args.no_server and args.llama_server.exists():
        plan: list[tuple[str, Path, list[str]]] = []
        if "lookup" in modes:
            plan += [("lookup:none", lookup_target, []), ("lookup:ngram-simple", lookup_target,
                     ["--spec-type", "ngram-simple"])]  # fmt: skip
        if "draft" in modes:
            plan += [("draft:none", draft_target, []), ("draft:draft-simple", draft_target,
                     ["-md", str(args.draft), "--spec-type", "draft-simple"])]  # fmt: skip
        got: dict[str, dict[str, Any]] = {}
        for key, target, extra in plan:
            group, mode = key.split(":")
            if mode == "none" and group == "draft" and lookup_target == draft_target and "lookup:none" in got:
                got[key] = got["lookup:none"]
            else:
                got[key] = run_server(args.llama_server, target, names, args.max_tokens, args.runs, extra)
            log(
                f"llama-server {key} ({target.name} {' '.join(extra)})",
                {n: {k: v for k, v in r.items() if k != "texts"} for n, r in got[key].items()},
            )
        for key, rows in got.items():
            group, mode = key.split(":")
            none = got[f"{group}:none"]
            out = report["llama_server"].setdefault(group, {})
            for name, r in rows.items():
                row = {k: v for k, v in r.items() if k != "texts"}
                row["vs_none"] = round(r["tok_s"] / none[name]["tok_s"], 2) if none[name]["tok_s"] else None
                first = none[name]["texts"][0]
                row["identical_to_none"] = all(t == first for t in r["texts"] + none[name]["texts"])
                if mode == "none":
                    for k in ("vs_none", "identical_to_none", "drafted", "accepted", "acceptance"):
                        del row[k]
                    row["same_text_as_engine_off"] = r["texts"][0] == offs[(group, name)][0]["text"]
                out.setdefault(name, {})[mode] = row
        report["llama_server_flags"] = {k: extra for k, _, extra in plan}
        report["llama_server_bin"] = str(args.llama_server)
    elif not args.no_server:
        report["llama_server"] = f"not at {args.llama_server}: scripts/build_llama_tools.sh llama-server"
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
