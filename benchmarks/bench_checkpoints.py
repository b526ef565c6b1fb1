#!/usr/bin/env python3
"""Multi-turn chat TTFT on a hybrid Qwen3.5 model: edge-qwen's state checkpoints against llama.cpp's
``llama-server --ctx-checkpoints`` (the same llama.cpp, built from the llama-cpp-python sdist), and
against edge-qwen with checkpoints off (``ctx_checkpoints=0``) as the full re-prefill baseline.

    python benchmarks/bench_checkpoints.py [--users 4] [--system-tokens 500] [--turns 5] \
        [--user-tokens 60] [--history-tokens 1500] [--reply-tokens 32] [--ctx 8192] [--threads 2] \
        [--checkpoints 4] [--llama-server PATH] [--model GGUF] [--out results.json]

What it measures. A Qwen3.5 layer stack is 3 Gated DeltaNet layers to 1 attention layer; a DeltaNet
layer keeps one recurrent state per sequence that cannot be cut back to a shared prefix, so a
cached conversation is only reusable up to a position whose state was saved (a checkpoint).
Without one, every turn of a chat prefills the whole conversation again. Here ``--users``
conversations share a ``--system-tokens`` system prompt; each turn appends the assistant reply the
model actually gave (greedy, at most ``--reply-tokens`` tokens) and a new user message of
``--user-tokens`` tokens of varied text. The first user message also carries a pasted document
sized so that the last turn's prompt is about ``--history-tokens`` tokens (0: no document). Users
are interleaved (user 0 turn 1, user 1 turn 1, ...), so the cache must hold every conversation at
once (``--users`` slots). Requests run one at a time: TTFT is prefill, not queueing.

Three configurations run one after another in this process, each after one short warm-up request:
``edge-qwen`` (``Model.load(..., parallel=users, ctx_checkpoints=--checkpoints)``, unified KV
cache of ``--ctx`` cells), ``llama-server`` (``-c ctx -np users --ctx-checkpoints --checkpoints``,
so ``ctx / users`` cells per slot, its other settings at their defaults: RAM prompt cache
``--cache-ram 8192``, ``--cache-idle-slots``; ``--server-args`` adds more) and
``edge-qwen-nockpt`` (``ctx_checkpoints=0``). TTFT is measured by the client for all three: from
the request to the first chunk of generated text (content or reasoning). Also recorded:
edge-qwen's own ``timings.ttft_ms`` and ``usage.cached_tokens``, llama-server's
``timings.prompt_ms``, ``prompt_n``, ``cache_n`` and counts of its checkpoint / slot-selection
log lines (it runs with ``-lv 4``). Per turn: median over users; ratios ``edge-qwen /
llama-server`` and ``edge-qwen-nockpt / edge-qwen`` (above 1: checkpoints help).

Timings on a shared machine: before each configuration the benchmark waits (``--idle-wait``) until
other processes leave the CPUs, and it reports the CPU seconds they used while it ran
(``cpu.other_processes_cpu_s``); a run where that is large is not a measurement.

Model: random weights with the real dimensions of Qwen3.5-0.8B (``QWEN35_08B``, text backbone, no
MTP head), written by ``scripts/make_tiny_hybrid.py`` and converted to Q4_K_M by edge-qwen's
converter, cached under ``~/.cache/edge-qwen/bench/``. The text means nothing; speed does not
depend on weight values. The GGUF has no chat template, so both sides render ChatML.

Prints one JSON document; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_server import Server, free_port  # noqa: E402

# Qwen3.5-0.8B's text backbone (Qwen3_5ForConditionalGeneration's text_config), from public
# copies of its config.json. Vocabulary: 248,320 (make_tiny_hybrid's Qwen3.5 default).
QWEN35_08B: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,  # layer_types: 3 linear_attention, 1 full_attention, x6
    "intermediate_size": 3584,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 16,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "max_position_embeddings": 262144,
    "tie_word_embeddings": True,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10],
        "mrope_interleaved": True,
    },
}
QUANT = "q4_k_m"
CONFIGS = ("edge-qwen", "llama-server", "edge-qwen-nockpt")

WORDS = (
    "river stone market engine garden winter silver window paper signal harbor forest lantern "
    "method budget kitchen planet theory ticket circuit village mirror canvas ladder orbit "
    "thunder pencil valley rocket museum copper basket meadow cotton island bridge compass "
    "shadow puzzle anchor desert velvet marble falcon castle rhythm summer coffee travel "
    "network battery harvest journey library feather crystal tunnel voyage spiral blanket "
    "elephant violin glacier prairie sandwich cathedral satellite umbrella keyboard volcano "
    "balance measure quickly slowly carefully bright quiet ancient modern simple complex "
    "useful gentle heavy narrow broad hidden open early late strange common rare famous "
    "explain compare describe imagine remember suggest improve collect observe consider"
).split()


# --- model ---------------------------------------------------------------------------------------


def model_key(mtp: bool = False) -> str:
    blob = json.dumps({"config": QWEN35_08B, "quant": QUANT, "mtp": mtp}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_model(log: Callable[[str], None], mtp: bool = False) -> Path:
    """The random Qwen3.5-0.8B-shaped Q4_K_M GGUF (``mtp``: with its MTP head), made once and
    cached (keyed on its config)."""
    from make_tiny_hybrid import make_hybrid

    from edge_qwen.convert import convert

    base = Path.home() / ".cache" / "edge-qwen" / "bench" / f"qwen35-0.8b-random-{model_key(mtp)}"
    stamp = base / "model.json"
    if stamp.is_file():
        path = Path(json.loads(stamp.read_text())["gguf"])
        if path.is_file():
            return path
    log(f"making a random Qwen3.5-0.8B-shaped checkpoint in {base}")
    ck = make_hybrid(
        base / "checkpoint", arch="qwen35", dtype="bf16", mtp=mtp, overwrite=True, **QWEN35_08B
    )
    log("converting to GGUF (f16, then q4_k_m)")
    result = convert(ck, base / "gguf", outtype="f16", quants=[QUANT], evaluate=False, quiet=True)
    path = Path(result.outputs[-1].path)
    shutil.rmtree(ck)  # the bf16 safetensors are no longer needed
    stamp.write_text(json.dumps({"gguf": str(path), "config": QWEN35_08B}, indent=2) + "\n")
    return path


# --- workload ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    system: str
    documents: list[str]  # per user, prepended to their first message ("" when none)
    questions: list[list[str]]  # [user][turn]


def text_of(tokenize: Callable[[str], list[int]], n_tokens: int, rng: random.Random, lead: str = "") -> str:
    """Varied English-looking text of about ``n_tokens`` tokens (checked with the tokenizer)."""
    words: list[str] = lead.split()
    while len(tokenize(" ".join(words))) < n_tokens:
        word = rng.choice(WORDS)
        words.append(word.capitalize() + "," if rng.random() < 0.08 else word)
        if rng.random() < 0.07:
            words[-1] += "."
    return " ".join(words)


def build_workload(tokenize: Callable[[str], list[int]], args: argparse.Namespace) -> Workload:
    rng = random.Random(args.seed)
    system = text_of(tokenize, args.system_tokens, rng, "You are a helpful assistant. Background notes:")
    questions = [
        [text_of(tokenize, args.user_tokens, rng, f"User {u}, question {t + 1}:") for t in range(args.turns)]
        for u in range(args.users)
    ]
    # Predicted last prompt without a document: ChatML adds ~5 tokens per message, a reply is at
    # most reply_tokens; the document makes up the rest of history_tokens.
    per_message = 5
    predicted = (
        args.system_tokens + per_message
        + args.turns * (args.user_tokens + per_message)
        + (args.turns - 1) * (args.reply_tokens + per_message) + 3
    )  # fmt: skip
    doc_tokens = max(0, args.history_tokens - predicted) if args.history_tokens else 0
    documents = [
        text_of(tokenize, doc_tokens, rng, f"Document for user {u}:") + "\n\n" if doc_tokens else ""
        for u in range(args.users)
    ]
    return Workload(system, documents, questions)


# --- one turn ------------------------------------------------------------------------------------


@dataclass
class Turn:
    ttft_ms: float  # client-side: request sent -> first generated text
    text: str
    prompt_tokens: int | None
    cached_tokens: int | None
    server_ms: float | None  # edge-qwen's timings.ttft_ms / llama-server's timings.prompt_ms


Chat = Callable[[list[dict[str, str]], int], Turn]


def ours_chat(model: Any) -> Chat:
    def chat(messages: list[dict[str, str]], max_tokens: int) -> Turn:
        t0 = time.perf_counter()
        ttft = None
        stream = model.chat_stream(messages, temperature=0, max_tokens=max_tokens)
        for chunk in stream:
            if ttft is None and chunk.text:
                ttft = (time.perf_counter() - t0) * 1e3
        total = (time.perf_counter() - t0) * 1e3
        result = stream.result
        return Turn(
            ttft_ms=ttft if ttft is not None else total,
            text=result.text,
            prompt_tokens=result.usage.prompt_tokens,
            cached_tokens=result.usage.cached_tokens,
            server_ms=result.timings.ttft_ms,
        )

    return chat


def server_chat(client: httpx.Client, url: str) -> Chat:
    def chat(messages: list[dict[str, str]], max_tokens: int) -> Turn:
        body = {
            "model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        t0 = time.perf_counter()
        ttft = None
        pieces: list[str] = []
        timings: dict[str, Any] = {}
        usage: dict[str, Any] = {}
        with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"llama-server: HTTP {response.status_code}: {response.text[:300]}")
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                timings = event.get("timings") or timings
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
                    if text and ttft is None:
                        ttft = (time.perf_counter() - t0) * 1e3
                    pieces.append(delta.get("content") or "")
        total = (time.perf_counter() - t0) * 1e3
        cache_n, prompt_n = timings.get("cache_n"), timings.get("prompt_n")
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is None and cache_n is not None and prompt_n is not None:
            prompt_tokens = cache_n + prompt_n
        return Turn(
            ttft_ms=ttft if ttft is not None else total,
            text="".join(pieces),
            prompt_tokens=prompt_tokens,
            cached_tokens=cache_n,
            server_ms=timings.get("prompt_ms"),
        )

    return chat


# --- the conversation loop -----------------------------------------------------------------------


def run_chats(chat: Chat, work: Workload, args: argparse.Namespace) -> tuple[list[list[Turn]], float]:
    """Warm up once, then every user's turns, interleaved; returns turns[t][u] and the wall time."""
    chat([{"role": "user", "content": "Warm-up: say hello in five words."}], 4)
    convs = [[{"role": "system", "content": work.system}] for _ in range(args.users)]
    turns: list[list[Turn]] = [[] for _ in range(args.turns)]
    t0 = time.perf_counter()
    for t in range(args.turns):
        for u in range(args.users):
            question = work.questions[u][t]
            convs[u].append({"role": "user", "content": (work.documents[u] if t == 0 else "") + question})
            turn = chat(convs[u], args.reply_tokens)
            convs[u].append({"role": "assistant", "content": turn.text})
            turns[t].append(turn)
    return turns, time.perf_counter() - t0


def run_ours(path: Path, work: Workload, args: argparse.Namespace, checkpoints: int) -> dict[str, Any]:
    from edge_qwen.runtime import Model

    model = Model.load(
        path, n_ctx=args.ctx, parallel=args.users, n_threads=args.threads, n_threads_batch=args.threads,
        ctx_checkpoints=checkpoints,
    )  # fmt: skip
    try:
        turns, wall = run_chats(ours_chat(model), work, args)
    finally:
        model.close()
    return {"settings": {"ctx_checkpoints": checkpoints}, **summarize(turns, wall)}


def llama_server_cmd(args: argparse.Namespace, path: Path, port: int) -> list[str]:
    return [
        args.llama_server, "-m", str(path), "-a", "bench", "-c", str(args.ctx), "-np", str(args.users),
        "-t", str(args.threads), "-tb", str(args.threads), "--ctx-checkpoints", str(args.checkpoints),
        "--chat-template", "chatml", "-lv", "4",  # verbosity 4: the checkpoint trace lines are logged
        "--host", "127.0.0.1", "--port", str(port), *args.server_args,
    ]  # fmt: skip


def run_llama_server(path: Path, work: Workload, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    cmd = llama_server_cmd(args, path, port)
    server = Server("llama-server", cmd, {}, port)
    try:
        server.wait_ready()
        # a fresh connection per request: llama-server closes a streamed response's connection, and
        # a reused keep-alive one then fails with "Server disconnected without sending a response"
        with httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            turns, wall = run_chats(server_chat(client, server.url), work, args)
        server.check_alive()
        server_cpu = process_cpu_s(server.proc.pid)
    finally:
        server.stop()
    log_text = Path(server.log.name).read_text(errors="replace")
    events = {
        name: len(re.findall(pattern, log_text))
        for name, pattern in (
            ("checkpoints_created", r"created context checkpoint"),
            ("checkpoints_restored", r"restored context checkpoint"),
            ("checkpoints_erased", r"erased invalidated context checkpoint"),
            ("full_reprocessing", r"forcing full prompt re-processing"),
            ("slot_by_similarity", r"selected slot by LCP similarity"),
            ("slot_by_lru", r"selected slot by LRU"),
            ("prompt_cache_hits", r"found better prompt"),
        )
    }
    return {
        "command": cmd, "log": server.log.name, "log_events": events, "server_cpu_s": server_cpu,
        **summarize(turns, wall),
    }  # fmt: skip


# --- other processes on the machine ---------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_s() -> float:
    """CPU seconds all cores have been busy since boot (/proc/stat; 0 where there is none)."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS  # less idle and iowait


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat; 0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def wait_for_idle(limit_s: float, log: Callable[[str], None]) -> float:
    """Wait (up to ``limit_s``) until other processes use under a tenth of a core for 3 s in a row;
    returns the seconds waited. Timings taken while another job runs on the same cores mean little."""
    started = time.monotonic()
    told = False
    while True:
        b0, o0 = machine_busy_s(), own_cpu_s()
        time.sleep(1.0)
        if (machine_busy_s() - b0) - (own_cpu_s() - o0) < 0.1:
            quiet = 1
            while quiet < 3:
                b0, o0 = machine_busy_s(), own_cpu_s()
                time.sleep(1.0)
                if (machine_busy_s() - b0) - (own_cpu_s() - o0) >= 0.1:
                    break
                quiet += 1
            if quiet >= 3:
                return round(time.monotonic() - started, 1)
        if time.monotonic() - started > limit_s:
            log(f"  the machine is still busy after {limit_s:.0f} s; running anyway")
            return round(time.monotonic() - started, 1)
        if not told:
            log("  waiting for other processes to leave the CPUs ...")
            told = True


# --- report --------------------------------------------------------------------------------------


def summarize(turns: list[list[Turn]], wall: float) -> dict[str, Any]:
    per_turn = []
    for t, users in enumerate(turns):
        row: dict[str, Any] = {
            "turn": t + 1,
            "ttft_ms_median": round(statistics.median(x.ttft_ms for x in users), 1),
            "ttft_ms": [round(x.ttft_ms, 1) for x in users],
            "prompt_tokens": [x.prompt_tokens for x in users],
            "cached_tokens": [x.cached_tokens for x in users],
        }
        server = [x.server_ms for x in users if x.server_ms is not None]
        if server:
            row["server_ms_median"] = round(statistics.median(server), 1)
        per_turn.append(row)
    return {"wall_s": round(wall, 2), "per_turn": per_turn, "_replies": [[x.text for x in u] for u in turns]}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def comparisons(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ours, server, full = (results.get(name) for name in CONFIGS)
    rows = []
    for t in range(len(next(iter(results.values()))["per_turn"])):
        med = {name: r["per_turn"][t]["ttft_ms_median"] for name, r in results.items() if "per_turn" in r}
        row: dict[str, Any] = {"turn": t + 1, **{f"{n}_ttft_ms": v for n, v in med.items()}}
        if ours and server and "per_turn" in server:
            row["ours_over_llama_server"] = ratio(med["edge-qwen"], med["llama-server"])
        if ours and full:
            row["nockpt_over_ours"] = ratio(med["edge-qwen-nockpt"], med["edge-qwen"])
        rows.append(row)
    return rows


def same_replies(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How many replies each configuration shares with edge-qwen's (the conversations diverge
    where they differ, so the prompts of later turns differ too)."""
    base = results["edge-qwen"]["_replies"]
    out = {}
    for name, r in results.items():
        if name != "edge-qwen" and "_replies" in r:
            pairs = [
                (a, b)
                for ta, tb in zip(base, r["_replies"], strict=True)
                for a, b in zip(ta, tb, strict=True)
            ]
            out[name] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
    return out


def machine() -> dict[str, Any]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    name = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    flags_line = re.search(r"^Flags:\s*(.+)$", lscpu, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    return {
        "cpu": name.group(1).strip() if name else platform.processor(),
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "amx": bool(flags & {"amx_tile", "amx_int8", "amx_bf16"}),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def llama_server_path() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_llama_tools.sh"), "llama-server"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return str(Path(out.stdout.strip().splitlines()[-1]) / "llama-server")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    path = args.model or ensure_model(log)
    if "llama-server" in args.configs and not args.llama_server:
        log("building / locating llama-server (scripts/build_llama_tools.sh)")
        args.llama_server = llama_server_path()

    from edge_qwen.runtime import Model

    probe = Model.load(path, n_ctx=512, parallel=1, n_threads=args.threads)
    try:
        work = build_workload(lambda s: probe.vocab.tokenize(s), args)
    finally:
        probe.close()

    results: dict[str, dict[str, Any]] = {}
    for name in args.configs:
        waited = wait_for_idle(args.idle_wait, log)
        log(f"running {name} ...")
        t0, b0, o0 = time.perf_counter(), machine_busy_s(), own_cpu_s()
        if name == "llama-server":
            results[name] = run_llama_server(path, work, args)
        else:
            results[name] = run_ours(path, work, args, 0 if name == "edge-qwen-nockpt" else args.checkpoints)
        elapsed = time.perf_counter() - t0
        ours = own_cpu_s() - o0 + results[name].get("server_cpu_s", 0.0)
        other = max(0.0, machine_busy_s() - b0 - ours)
        results[name]["cpu"] = {
            "waited_for_idle_s": waited,
            "benchmark_cpu_s": round(ours, 1),
            "other_processes_cpu_s": round(other, 1),
            "other_processes_share": round(other / (elapsed * (os.cpu_count() or 1)), 3),
        }
        log(f"  {name}: {results[name]['wall_s']} s; other processes: {results[name]['cpu']}")

    report: dict[str, Any] = {
        "benchmark": "multi-turn chat TTFT on a hybrid model: state checkpoints",
        "note": (
            "random weights with Qwen3.5-0.8B's real dimensions: the text means nothing, "
            "speed does not depend on weight values; ChatML (the GGUF has no chat template)"
        ),
        "machine": machine(),
        "model": {
            "file": str(path),
            "file_mib": round(Path(path).stat().st_size / 2**20, 1),
            "quant": QUANT if args.model is None else "as given",
            "dims": QWEN35_08B if args.model is None else "as given",
            "vocab": 248320 if args.model is None else "as given",
            "layer_pattern": "3 Gated DeltaNet : 1 gated attention, x6 (layers 3, 7, ..., 23 attention)",
        },
        "workload": {
            "users": args.users,
            "turns": args.turns,
            "system_tokens": args.system_tokens,
            "user_tokens": args.user_tokens,
            "history_tokens_target": args.history_tokens,
            "reply_tokens_max": args.reply_tokens,
            "n_ctx": args.ctx,
            "threads": args.threads,
            "ctx_checkpoints": args.checkpoints,
            "order": "interleaved: user 0 turn 1, user 1 turn 1, ...",
            "sampling": "greedy (temperature 0)",
        },
        "ttft": "client-side, request -> first generated text; median over users",
        "ratios": comparisons(results),
        "replies_equal_to_edge_qwen": same_replies(results),
        "configs": {name: {k: v for k, v in r.items() if k != "_replies"} for name, r in results.items()},
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: random Qwen3.5-0.8B Q4_K_M)")
    parser.add_argument("--users", type=int, default=4, help="conversations, and slots (-np)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--system-tokens", type=int, default=500, help="shared system prompt")
    parser.add_argument("--user-tokens", type=int, default=60, help="each new user message")
    parser.add_argument(
        "--history-tokens", type=int, default=1500, help="last turn's prompt, padded by a first-turn document"
    )
    parser.add_argument("--reply-tokens", type=int, default=32, help="max_tokens of each reply")
    parser.add_argument(
        "--ctx", type=int, default=8192, help="KV cells (edge-qwen: shared; llama-server: ctx/users a slot)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoints", type=int, default=4, help="ctx_checkpoints / --ctx-checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="of the workload text")
    parser.add_argument("--configs", type=lambda s: s.split(","), default=list(CONFIGS))
    parser.add_argument("--llama-server", default=None, help="path (default: scripts/build_llama_tools.sh)")
    parser.add_argument(
        "--server-args", type=lambda s: s.split(), default=[], help="extra llama-server arguments"
    )
    parser.add_argument(
        "--idle-wait", type=float, default=300, help="longest wait for an idle machine before each config (s)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    unknown = set(args.configs) - set(CONFIGS)
    if unknown or "edge-qwen" not in args.configs:
        parser.error(f"--configs: edge-qwen and any of {', '.join(CONFIGS[1:])}")
    return args


if __name__ == "__main__":
    sys.exit(main())
