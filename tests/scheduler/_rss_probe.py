"""Run in a fresh interpreter (clean RSS): measure what the estimator predicts.

``python _rss_probe.py load GGUF JSON_SETTINGS`` -> prints JSON {"rss_growth": bytes}: process RSS
growth from before Model.load to after one prefill batch of n_ubatch tokens.
``python _rss_probe.py sched GGUF BUDGET`` -> prints JSON {"baseline", "peak", "samples", "budget"}:
RSS sampled every 5 ms during a mixed async load of three models under the scheduler.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

from edge_qwen import _llama
from edge_qwen.runtime.model import Model
from edge_qwen.scheduler import Scheduler
from edge_qwen.scheduler.snapshot import process_rss


def load(path: str, settings: dict) -> dict:
    _llama.init_backend()
    before = process_rss()
    model = Model.load(path, **settings)
    n = min(settings.get("n_ubatch", 512), model.n_ctx - 8)
    vocab = model.vocab.n_tokens
    model.generate([(i * 7919) % vocab for i in range(n)], max_tokens=1, temperature=0)
    grown = process_rss() - before
    model.close()
    return {"rss_growth": grown}


def sched(path: str, budget: int) -> dict:
    _llama.init_backend()
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(process_rss())
            time.sleep(0.005)

    baseline = process_rss()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    scheduler = Scheduler(budget=budget)
    for name, ctx in (("a", 2048), ("b", 4096), ("c", 8192)):
        scheduler.add(name, path, n_ctx=ctx)

    async def run() -> list[str]:
        jobs = [scheduler.agenerate(name, "def fib(n):", max_tokens=4, temperature=0) for name in "abcabca"]
        return [r.text for r in await asyncio.gather(*jobs)]

    texts = asyncio.run(run())
    snap = scheduler.snapshot()
    scheduler.close()
    stop.set()
    sampler.join()
    return {
        "baseline": baseline, "peak": max(samples), "samples": len(samples), "budget": budget,
        "texts": texts, "peak_charged": snap.peak_used_bytes,
        "loads": {m.name: m.loads for m in snap.models},
    }  # fmt: skip


if __name__ == "__main__":
    mode, gguf_path, arg = sys.argv[1:4]
    out = load(gguf_path, json.loads(arg)) if mode == "load" else sched(gguf_path, int(arg))
    print(json.dumps(out))
