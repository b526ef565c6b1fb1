"""The real 0.5B Qwen GGUF behind the scheduler, for the server tests (loaded once per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the server tests need the 'server' extra (pip install -e .[test])")

from serverutil import MODEL  # noqa: E402

from edge_qwen.scheduler import Scheduler  # noqa: E402
from edge_qwen.server import SchedulerProvider  # noqa: E402


@pytest.fixture(scope="module")
def provider(real_gguf: Path) -> Iterator[SchedulerProvider]:
    """The real model behind the scheduler, loaded once per test module (small context, 1 thread)."""
    scheduler = Scheduler(None, max_queue=256, queue_timeout=300)
    scheduler.add(MODEL, real_gguf, n_ctx=512, n_threads=1)
    scheduler.load(MODEL)
    prov = SchedulerProvider(scheduler, max_waiting=160)
    yield prov
    prov.close()
