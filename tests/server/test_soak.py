"""A short soak of a real ``edge-qwen serve`` over HTTP (benchmarks/soak_server.py, one round):
every hostile or careless class of client gets a 4xx/429/503 or an answer, never a 500; nothing
is left in flight, queued or holding a slot; RSS stays within 5 % of its post-warm-up level."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import soak_server  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(real_gguf: Path) -> Iterator[tuple[soak_server.Target, object]]:
    with soak_server.own_server(real_gguf, max_concurrency=16) as (target, proc):
        yield target, proc


def test_a_short_soak_sees_no_unexpected_status_and_frees_everything(server: tuple) -> None:
    target, proc = server
    report = asyncio.run(
        soak_server.soak(
            target, proc.pid, rounds=1, concurrency=200, max_seconds=40, dribble_delay=0.02, seed=14,
            grammar_kinds=list(soak_server.GRAMMAR_KINDS), warmup_rounds=1,
        )
    )  # fmt: skip
    assert proc.poll() is None, "the server died"
    bad = [row for row in report["classes"] if row["unexpected"]]
    assert not bad, json.dumps(bad)
    assert (
        report["in_flight_after"] == 0
        and report["queue_depth_after"] == 0
        and report["slots_busy_after"] == 0
    )
    assert abs(report["rss_growth_pct"]) <= 5.0, report
    seen = {row["class"]: row["seen"] for row in report["classes"]}
    assert seen["n_greater_than_1"] == {"400": 1} and seen["malformed_json"] == {"400": 1}
    assert set(seen["concurrent_200"]) <= {"200", "429", "503"} and "200" in seen["concurrent_200"]


@pytest.mark.parametrize("pattern", ["(", "^[(]{3}\\\\)$"])
def test_an_unsupported_schema_pattern_is_a_400(server: tuple, pattern: str) -> None:
    target, proc = server
    schema = {"type": "string", "pattern": pattern}
    body = soak_server.base(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )
    assert proc.poll() is None
    outcome = asyncio.run(soak_server.send(target, soak_server.chat(body, target), timeout=60))
    assert outcome.status == 400


# Last: before runtime/sampling.py refused deep grammars (b11de6c) this killed the server (SIGSEGV).
def test_a_schema_that_nests_too_deep_is_refused_and_the_server_lives(server: tuple) -> None:
    target, proc = server
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 20_000}
    body = soak_server.base(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )
    outcome = asyncio.run(soak_server.send(target, soak_server.chat(body, target), timeout=60))
    assert proc.poll() is None, f"the server died (exit status {proc.poll()})"
    assert outcome.status == 400  # a 90-byte schema nesting 19,999 groups: refused, not parsed
