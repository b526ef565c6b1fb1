#!/usr/bin/env python3
"""Soak ``edge-qwen serve`` with hostile and careless clients, over HTTP on loopback only.

    python benchmarks/soak_server.py [--model GGUF | --url http://127.0.0.1:PORT] [--rounds N]
                                     [--concurrency 200] [--max-seconds 600] [--json]

Classes of input (each sent ``--rounds`` times, the burst once per round): malformed JSON, wrong
types, unknown fields, ``max_tokens`` far above the context, ``n > 1``, a huge ``logit_bias``, a
JSON schema built to explode a grammar, schemas whose grammars are costly to sample, stop strings
over the limits, idle and half-sent connections, clients that dribble their request a few bytes at a time,
clients that disconnect mid-stream, and a burst of ``--concurrency`` simultaneous connections.

It prints a table (JSON with ``--json``): per class the expected statuses (4xx/429/503; 200 where
the server may simply answer), what was seen, and the unexpected ones; then the server's RSS before,
after warm-up and after the soak, and its in-flight/queue counts once idle. Requirements (exit 1 if
any fails): no unexpected status (never a 5xx other than 503), nothing in flight or queued after,
RSS within 5 % of its post-warm-up level (not counting what the prompt cache holds: it fills up to
its budget by design, charged in the model's estimate). Without ``--url`` it starts its own server on a free
loopback port with the real model and stops it at the end; it stops by itself after
``--max-seconds`` in any case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MODEL_NAME = "soak"
DEFAULT_MODEL = Path.home() / ".cache" / "edge-qwen" / "assets" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SHORT = [{"role": "user", "content": "Reply with the single word OK."}]


@dataclass
class Target:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise SystemExit(f"refusing to soak {host}: loopback addresses only")
        return cls(host, parts.port or 80)


@dataclass
class Outcome:
    status: int | None  # None: we hung up on purpose, or the connection failed
    note: str = ""


# --- a tiny HTTP/1.1 client (raw sockets: dribbling and hanging up need control over the bytes) ---


def _request(
    method: str, path: str, body: bytes, target: Target, content_type: str = "application/json"
) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\nConnection: close\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def send(
    target: Target,
    raw: bytes,
    *,
    dribble: float = 0.0,
    hang_up_after_events: int | None = None,
    timeout: float = 120.0,
) -> Outcome:
    """Send ``raw`` (``dribble`` seconds between 8-byte pieces); read the status and the whole body,
    or hang up after that many SSE events."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), timeout)
    except OSError as exc:
        return Outcome(None, f"connect failed: {exc}")
    try:
        try:
            if dribble:
                for i in range(0, len(raw), 8):
                    writer.write(raw[i : i + 8])
                    await writer.drain()
                    await asyncio.sleep(dribble)
            else:
                writer.write(raw)
                await writer.drain()
        except OSError:  # the server answered (e.g. 413) and closed before we finished sending
            pass
        line = await asyncio.wait_for(reader.readline(), timeout)
        status = int(line.split()[1]) if line.startswith(b"HTTP/") else None
        if hang_up_after_events is not None and status == 200:
            seen = 0
            while seen < hang_up_after_events:
                chunk = await asyncio.wait_for(reader.readline(), timeout)
                if not chunk:
                    break
                seen += chunk.startswith(b"data: {")
            writer.transport.abort()  # a reset, as a killed client leaves it
            return Outcome(None, "hung up")
        await asyncio.wait_for(reader.read(), timeout)
        return Outcome(status)
    except ConnectionResetError:  # e.g. a 413 sent while the body was still arriving, then closed
        return Outcome(None, "reset")
    except (OSError, asyncio.IncompleteReadError) as exc:
        return Outcome(None, f"connection error: {exc}")
    except asyncio.TimeoutError:
        return Outcome(None, "timed out")
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def get_json(target: Target, path: str) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(_request("GET", path, b"", target))
    await writer.drain()
    data = await reader.read()
    writer.close()
    return dict(json.loads(data.partition(b"\r\n\r\n")[2] or b"{}"))


def chat(body: dict[str, Any], target: Target) -> bytes:
    return _request("POST", "/v1/chat/completions", json.dumps(body).encode(), target)


def base(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL_NAME, "messages": SHORT, "max_tokens": 4, "temperature": 0, **extra}


# --- the classes of input ------------------------------------------------------------------------


# Schemas small in bytes whose grammars are huge. "deep" ones nest one group per repetition in the
# GBNF that llama-cpp-python's converter writes: llama.cpp's recursive grammar parser overflowed its
# stack on them (maxItems 20000 -> 19,999 nested groups -> SIGSEGV, the whole server died) until
# runtime/sampling.py began refusing grammars nested deeper than 1024 groups (commit b11de6c).
GRAMMAR_KINDS: dict[str, dict[str, Any]] = {
    "alternation": {"enum": [f"value-{i}-{'x' * 40}" for i in range(400)]},
    "quantifiers": {"type": "string", "pattern": "^((a|b|c){1,40}(d{2,30}){1,20})+$"},
    "wide_object": {"type": "object", "properties": {f"k{i}": {"type": "number"} for i in range(300)}},
    "deep_array": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 20_000},
    "deep_string": {"type": "string", "minLength": 1, "maxLength": 50_000},
}
DEEP_GRAMMARS = ("deep_array", "deep_string")
BAD_PATTERNS = ["^[(]{3}\\\\)$", "(", "a)", "[a-", "x{2,1}"]
# Schemas whose grammars are small but cost llama.cpp seconds to minutes a token (issue 25, row 1):
# runs of optional items, and thousands of alternatives alive at once. Refused before sampling.
COSTLY_SCHEMAS: list[dict[str, Any]] = [
    {"type": "string", "pattern": "^(a?){1000}$"},
    {"type": "string", "pattern": "^(a|b?){100}$"},
    {"enum": ["a" * 30 + str(i) for i in range(2000)]},
]


def _exploding_schema(rng: random.Random, kinds: list[str]) -> dict[str, Any]:
    """An object whose properties each take one or two of the ``kinds`` above."""
    props = {
        f"p{i}": {"anyOf": [GRAMMAR_KINDS[k] for k in rng.sample(kinds, min(2, len(kinds)))]}
        for i in range(6)
    }
    return {"type": "object", "properties": props, "required": list(props)}


@dataclass
class Case:
    name: str
    expected: frozenset[int | str]  # HTTP statuses, or "hung up" (we closed) / "reset" (the server did)
    run: Callable[[Target, random.Random], Awaitable[list[Outcome]]]
    seen: Counter[str] = field(default_factory=Counter)


def _one(
    make: Callable[[Target, random.Random], bytes], **kw: Any
) -> Callable[[Target, random.Random], Awaitable[list[Outcome]]]:
    async def run(target: Target, rng: random.Random) -> list[Outcome]:
        return [await send(target, make(target, rng), **kw)]

    return run


def _malformed(target: Target, rng: random.Random) -> bytes:
    good = json.dumps(base())
    broken = rng.choice(
        [good[: rng.randrange(1, len(good))], good.replace(":", "", 1), "{" * 5000, "\xff\xfe", "null"]
    )
    return _request("POST", "/v1/chat/completions", broken.encode("utf-8", "surrogateescape"), target)


def _wrong_types(target: Target, rng: random.Random) -> bytes:
    wrong = rng.choice(
        [
            {"messages": "hello"},
            {"max_tokens": "ten"},
            {"temperature": "hot"},
            {"messages": [{"role": 7}]},
            {"stream": {"yes": 1}},
            {"stop": 3},
            {"model": ["a"]},
            {"messages": [{"role": "user", "content": 5}]},
        ]
    )
    return chat({**base(), **wrong}, target)


def _unknown_fields(target: Target, rng: random.Random) -> bytes:
    return chat(
        base(**{f"x_unknown_{i}": rng.random() for i in range(20)}, user="soak", metadata={"a": 1}), target
    )


def _burst(size: int) -> Callable[[Target, random.Random], Awaitable[list[Outcome]]]:
    async def run(target: Target, rng: random.Random) -> list[Outcome]:
        body = chat(base(max_tokens=1), target)
        return list(await asyncio.gather(*(send(target, body) for _ in range(size))))

    return run


def _disconnects(n: int) -> Callable[[Target, random.Random], Awaitable[list[Outcome]]]:
    async def run(target: Target, rng: random.Random) -> list[Outcome]:
        body = chat(base(stream=True, max_tokens=64), target)
        hang = [send(target, body, hang_up_after_events=rng.randrange(0, 4)) for _ in range(n)]
        return list(await asyncio.gather(*hang))

    return run


def _dribblers(n: int, delay: float) -> Callable[[Target, random.Random], Awaitable[list[Outcome]]]:
    async def run(target: Target, rng: random.Random) -> list[Outcome]:
        body = chat(base(max_tokens=1), target)
        return list(await asyncio.gather(*(send(target, body, dribble=delay) for _ in range(n))))

    return run


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _long_stops(target: Target, rng: random.Random) -> bytes:
    stop = rng.choice([["a" * 90_000], [f"stop-{i}" for i in range(17)], ["b" * 513]])
    return chat(base(stop=stop), target)


def _idle_connections(n: int, wait: float) -> Callable[[Target, random.Random], Awaitable[list[Outcome]]]:
    """``n`` clients that connect and send nothing, or half a request line, and wait: the server must
    close each within ``wait`` seconds (its header deadline) instead of holding the socket for good."""

    async def one(target: Target, partial: bytes) -> Outcome:
        try:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        except OSError as exc:
            return Outcome(None, f"connect failed: {exc}")
        try:
            writer.write(partial)
            await writer.drain()
            await asyncio.wait_for(reader.read(), wait)
            return Outcome(None, "closed by the server")
        except ConnectionResetError:
            return Outcome(None, "closed by the server")
        except asyncio.TimeoutError:
            return Outcome(None, "still open")
        finally:
            writer.close()

    async def run(target: Target, rng: random.Random) -> list[Outcome]:
        partials = [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "]
        return list(await asyncio.gather(*(one(target, partials[i % 2]) for i in range(n))))

    return run


def cases(concurrency: int, dribble_delay: float, grammar_kinds: list[str]) -> list[Case]:
    bad = frozenset({400, 413, 422})
    busy = frozenset({429, 503})
    return [
        Case("malformed_json", bad, _one(_malformed)),
        Case("wrong_types", bad, _one(_wrong_types)),
        Case("unknown_fields", frozenset({200}) | busy, _one(_unknown_fields)),
        Case(
            "max_tokens_above_context",
            frozenset({200, 400}) | busy,
            _one(lambda t, r: chat(base(max_tokens=10**9, stop=["\n", "."]), t)),
        ),
        Case("n_greater_than_1", frozenset({400}), _one(lambda t, r: chat(base(n=r.randrange(2, 64)), t))),
        Case(
            "huge_logit_bias",  # 40k entries fit the 1 MB body limit; 120k do not (413, then a reset)
            frozenset({200, 400, 413, "reset"}) | busy,
            _one(
                lambda t, r: chat(
                    base(logit_bias={str(i): -100 for i in range(r.choice([40_000, 120_000]))}), t
                )
            ),
        ),
        Case(
            "grammar_explosion",
            frozenset({200, 400, 413}) | busy,
            _one(
                lambda t, r: chat(
                    base(
                        response_format={
                            "type": "json_schema",
                            "json_schema": {"name": "x", "schema": _exploding_schema(r, grammar_kinds)},
                        }
                    ),
                    t,
                )
            ),
        ),
        Case(
            "invalid_schema",  # patterns llama-cpp-python's schema converter cannot translate
            frozenset({400}),
            _one(
                lambda t, r: chat(
                    base(
                        response_format={
                            "type": "json_schema",
                            "json_schema": {
                                "name": "x",
                                "schema": {"type": "string", "pattern": r.choice(BAD_PATTERNS)},
                            },
                        }
                    ),
                    t,
                )
            ),
        ),
        Case(
            "costly_grammar",
            frozenset({400}),
            _one(lambda t, r: chat(base(response_format=_schema(r.choice(COSTLY_SCHEMAS))), t)),
        ),
        Case("long_stop_strings", frozenset({400, 413}), _one(_long_stops)),
        Case("idle_connections", frozenset({"closed by the server"}), _idle_connections(40, 20.0)),
        Case("slow_dribbling_clients", frozenset({200, 400, 408}) | busy, _dribblers(4, dribble_delay)),
        Case("disconnect_mid_stream", frozenset({"hung up"}) | busy, _disconnects(6)),
        Case(f"concurrent_{concurrency}", frozenset({200}) | busy, _burst(concurrency)),
    ]


# --- the server and its memory -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def own_server(
    model: Path, max_concurrency: int, startup_s: float = 180
) -> Iterator[tuple[Target, subprocess.Popen[str]]]:
    """``edge-qwen serve`` on a free loopback port (1 thread, small context); stopped on exit."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "edge_qwen.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--models",
        f"{MODEL_NAME}={model}",
        "--ctx",
        "2048",
        "--threads",
        "1",
        "--log-level",
        "warning",
        "--max-concurrency",
        str(max_concurrency),
        "--queue-timeout",
        "120",
        "--drain-timeout",
        "5",
    ]
    # stderr to a file: llama.cpp prints every grammar it cannot parse there (megabytes per request)
    log = open(os.environ.get("SOAK_SERVER_LOG", os.devnull), "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    target = Target("127.0.0.1", port)
    deadline = time.monotonic() + startup_s
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"the server exited during start-up ({proc.returncode}); set SOAK_SERVER_LOG"
                )
            with contextlib.suppress(OSError, ValueError):
                if asyncio.run(get_json(target, "/health")).get("status") == "ok":
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start in time")
            time.sleep(0.2)
        yield target, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _busy(health: dict[str, Any]) -> int:
    slots = sum(
        int(m.get("slots_busy", 0) or 0) + int(m.get("waiting", 0) or 0) for m in health.get("models", [])
    )
    return int(health.get("requests_in_flight", 0) or 0) + int(health.get("queue_depth", 0) or 0) + slots


async def idle(target: Target, timeout: float = 60) -> dict[str, Any]:
    """/health once nothing is in flight, queued or holding a slot (or the last answer after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            health = await get_json(target, "/health")
        except OSError:
            return {"status": "unreachable"}
        if _busy(health) == 0 or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.1)


# --- the soak --------------------------------------------------------------------------------------


async def soak(
    target: Target,
    pid: int | None,
    rounds: int,
    concurrency: int,
    max_seconds: float,
    dribble_delay: float,
    seed: int,
    verbose: bool = False,
    grammar_kinds: list[str] | None = None,
    skip: tuple[str, ...] = (),
    warmup_rounds: int = 2,
) -> dict[str, Any]:
    rng = random.Random(seed)

    async def rss() -> int:  # the server's own figure (HTTP only); /proc when we started it
        if pid:
            return rss_of(pid)
        try:
            return int((await get_json(target, "/health")).get("memory", {}).get("process_rss_bytes", 0))
        except OSError:
            return 0

    async def cached() -> int:  # bytes the prompt caches hold: budgeted memory, not a leak
        try:
            models = (await get_json(target, "/health")).get("models", [])
        except OSError:
            return 0
        return sum(int(m.get("prompt_cache_bytes", 0) or 0) for m in models)

    before = await rss()
    table = [
        c
        for c in cases(concurrency, dribble_delay, grammar_kinds or list(GRAMMAR_KINDS))
        if c.name not in skip
    ]
    for _ in range(warmup_rounds):  # not counted: the buffers, pools, caches and malloc arenas grow
        for case in table:
            await case.run(target, rng)
    await idle(target)
    warm, warm_cache = await rss(), await cached()
    stop_at = time.monotonic() + max_seconds
    done_rounds = 0
    for _ in range(rounds):
        order = list(table)
        rng.shuffle(order)
        for case in order:
            if time.monotonic() > stop_at:
                break
            started = time.monotonic()
            outcomes = await case.run(target, rng)
            if verbose:
                print(f"{case.name}: {len(outcomes)} in {time.monotonic() - started:.1f} s", file=sys.stderr)
            for outcome in outcomes:
                key = str(outcome.status) if outcome.status is not None else outcome.note
                if outcome.status is None and outcome.note not in case.expected:
                    key = f"no answer ({outcome.note})"
                case.seen[key] += 1
        done_rounds += 1
        if time.monotonic() > stop_at:
            break
    health = await idle(target)
    after, after_cache = await rss(), await cached()
    rows = []
    for case in table:
        expected = {str(s) for s in case.expected}
        unexpected = sum(n for k, n in case.seen.items() if k not in expected)
        rows.append(
            {
                "class": case.name,
                "expected": sorted(expected),
                "seen": dict(case.seen),
                "unexpected": unexpected,
            }
        )
    # the prompt cache fills up to its budget by design (charged in the model's estimate): not counted
    growth = ((after - after_cache) - (warm - warm_cache)) / warm * 100 if warm else 0.0
    report = {
        "rounds": done_rounds,
        "classes": rows,
        "rss_before_bytes": before,
        "rss_after_warmup_bytes": warm,
        "rss_after_bytes": after,
        "prompt_cache_bytes_after_warmup": warm_cache,
        "prompt_cache_bytes_after": after_cache,
        "rss_growth_pct": round(growth, 2),
        "in_flight_after": health.get("requests_in_flight"),
        "queue_depth_after": health.get("queue_depth"),
        "slots_busy_after": sum(int(m.get("slots_busy", 0) or 0) for m in health.get("models", [])),
        "server_status_after": health.get("status"),
    }
    report["ok"] = (
        all(r["unexpected"] == 0 for r in rows)
        and not report["in_flight_after"]
        and not report["queue_depth_after"]
        and not report["slots_busy_after"]
        and report["server_status_after"] == "ok"
        and abs(growth) <= 5.0
    )
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'class':<28} {'expected':<26} {'seen':<40} unexpected"]
    for r in report["classes"]:
        seen = ", ".join(f"{k}×{v}" for k, v in sorted(r["seen"].items()))
        lines.append(f"{r['class']:<28} {','.join(r['expected']):<26} {seen:<40} {r['unexpected']}")
    start, warm, after = (
        report[k] / 2**20 for k in ("rss_before_bytes", "rss_after_warmup_bytes", "rss_after_bytes")
    )
    lines.append(
        f"RSS: {start:.0f} MiB at start, {warm:.0f} after warm-up, {after:.0f} after "
        f"({report['rss_growth_pct']:+.2f} % not counting the prompt cache's "
        f"{report['prompt_cache_bytes_after'] / 2**20:.0f} MiB); "
        f"in flight after: {report['in_flight_after']}, "
        f"queued: {report['queue_depth_after']}; {'OK' if report['ok'] else 'FAILED'}"
    )
    return "\n".join(lines)


def run_soak(
    model: Path | None, url: str | None = None, *, max_concurrency: int = 64, **options: Any
) -> dict[str, Any]:
    """Soak ``url``, or a server of ``model`` started here (then ``server_exit_code`` says whether
    it survived: None while it runs). ``options`` are :func:`soak`'s keyword arguments."""
    if url:
        report = asyncio.run(soak(Target.parse(url), None, **options))
    else:
        assert model is not None
        with own_server(model, max_concurrency) as (target, proc):
            report = asyncio.run(soak(target, proc.pid, **options))
            report["server_exit_code"] = proc.poll()
            report["ok"] = report["ok"] and proc.poll() is None
    report["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="GGUF to serve (default: the real 0.5B)"
    )
    where.add_argument(
        "--url", help="soak a running server instead (loopback only; its model must be 'soak')"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup-rounds", type=int, default=2,
        help="rounds of every class before the RSS baseline (measured: the server's RSS grew 70 MiB over "
        "its first 10 rounds, mostly the first 2, and 11 MiB over the next 30: allocator high-water marks)",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--max-concurrency", type=int, default=64, help="the server's admission limit")
    parser.add_argument("--dribble-delay", type=float, default=0.05, help="seconds between 8-byte pieces")
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument(
        "--no-deep-grammars",
        action="store_true",
        help=f"leave out the schemas known to crash llama.cpp's grammar parser ({', '.join(DEEP_GRAMMARS)})",
    )
    parser.add_argument("--skip", action="append", default=[], metavar="CLASS", help="leave out a class")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="one progress line per class on stderr")
    args = parser.parse_args(argv)
    kinds = [k for k in GRAMMAR_KINDS if not (args.no_deep_grammars and k in DEEP_GRAMMARS)]
    report = run_soak(
        None if args.url else args.model,
        args.url,
        max_concurrency=args.max_concurrency,
        rounds=args.rounds,
        concurrency=args.concurrency,
        max_seconds=args.max_seconds,
        dribble_delay=args.dribble_delay,
        seed=args.seed,
        verbose=args.verbose,
        grammar_kinds=kinds,
        skip=tuple(args.skip),
        warmup_rounds=args.warmup_rounds,
    )
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
