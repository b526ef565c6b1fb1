"""A model served with a draft model: its answers are the ones without speculation, and /metrics
counts the drafted and accepted tokens (the Scheduler charges and loads the pair as one entry)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverutil import MODEL, chat_body, running_server

from edge_qwen.runtime import Model
from edge_qwen.scheduler import Scheduler
from edge_qwen.server import SchedulerProvider, ServerConfig

pytestmark = [pytest.mark.real, pytest.mark.slow]
CODE = "\n".join(f"def f{i}(x):\n    y = x * {i}\n    return y\n" for i in range(6))
EDIT = f"```python\n{CODE}```\nRename y to result and return the whole code."


@pytest.fixture(scope="module")
def served(real_gguf: Path) -> Iterator[tuple[str, Scheduler]]:
    scheduler = Scheduler("8GB")
    scheduler.add(MODEL, real_gguf, n_ctx=2048, parallel=2, n_threads=2, draft=str(real_gguf))
    provider = SchedulerProvider(scheduler)
    with running_server(provider, ServerConfig()) as url:
        yield url, scheduler
    provider.close()


def test_a_drafted_answer_is_the_plain_answer_and_metrics_count_it(served, real_gguf: Path) -> None:
    url, scheduler = served
    reply = httpx.post(url + "/v1/chat/completions", json=chat_body(EDIT, max_tokens=60), timeout=120).json()
    with Model.load(real_gguf, n_ctx=2048, parallel=1, n_threads=2) as plain:
        expected = plain.chat([{"role": "user", "content": EDIT}], temperature=0, max_tokens=60).text
    assert reply["choices"][0]["message"]["content"] == expected
    metrics = httpx.get(url + "/metrics").text
    drafted = [
        line for line in metrics.splitlines() if line.startswith("edge_qwen_speculative_drafted_tokens_total")
    ]
    accepted = [
        line
        for line in metrics.splitlines()
        if line.startswith("edge_qwen_speculative_accepted_tokens_total")
    ]
    assert drafted and float(drafted[0].split()[-1]) > 0
    assert accepted and 0 < float(accepted[0].split()[-1]) <= float(drafted[0].split()[-1])
    resident = scheduler.snapshot().models[0]
    assert resident.estimated_bytes > 2 * real_gguf.stat().st_size  # the draft is charged too
