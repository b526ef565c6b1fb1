"""Prometheus metrics of one server instance (``GET /metrics``), through ``prometheus_client``.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, so several servers (or tests)
in one process do not share counters. Queue depth, residency and memory are read from the model
provider's snapshot at scrape time rather than tracked twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..runtime.results import GenerationResult
from .provider import ServerSnapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOK_S_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 400)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _SnapshotCollector(Collector):
    """Gauges computed from the provider's snapshot when Prometheus scrapes."""

    def __init__(self, snapshot: Callable[[], ServerSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snap = self._snapshot()
        waiting = snap.queue_depth
        yield GaugeMetricFamily("edge_qwen_queue_depth", "Requests waiting for a model", value=waiting)
        resident = GaugeMetricFamily(
            "edge_qwen_model_resident", "1 when the model is loaded", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "edge_qwen_model_requests_in_flight", "Requests holding or awaiting the model", labels=["model"]
        )
        slots_busy = GaugeMetricFamily(
            "edge_qwen_model_slots_busy", "Sequence slots generating now", labels=["model"]
        )
        slots_total = GaugeMetricFamily(
            "edge_qwen_model_slots_total", "Sequence slots of the loaded context (parallel)", labels=["model"]
        )
        cache_bytes = GaugeMetricFamily(
            "edge_qwen_model_prompt_cache_bytes", "Host memory holding saved prompt caches", labels=["model"]
        )
        restored = CounterMetricFamily(
            "edge_qwen_model_prompt_cache_restored",
            "Prompts started from a saved prompt cache",
            labels=["model"],
        )
        for m in snap.models:
            cache_bytes.add_metric([m.name], m.slots.prompt_cache_bytes)
            restored.add_metric([m.name], m.slots.prompt_cache_restored)
            resident.add_metric([m.name], 1.0 if m.resident else 0.0)
            in_flight.add_metric([m.name], m.in_flight)
            slots_busy.add_metric([m.name], m.slots.slots_busy)
            slots_total.add_metric([m.name], m.slots.slots_total)
        yield resident
        yield in_flight
        yield slots_busy
        yield slots_total
        yield cache_bytes
        yield restored
        for key, value, help_text in (
            ("used_bytes", snap.memory.used_bytes, "Memory the scheduler accounts to resident models"),
            ("budget_bytes", snap.memory.budget_bytes, "Memory budget of the scheduler"),
        ):
            if value is not None:
                yield GaugeMetricFamily(f"edge_qwen_memory_{key}", help_text, value=value)


class ServerMetrics:
    """The counters and histograms the request handlers update."""

    def __init__(self, snapshot: Callable[[], ServerSnapshot]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edge_qwen_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "edge_qwen_request_duration_seconds",
            "Wall time of a request, until the last byte",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "edge_qwen_time_to_first_token_seconds",
            "From the model starting a request to its first token",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "edge_qwen_queue_wait_seconds",
            "Time a request waited for the model",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_rate = Histogram(
            "edge_qwen_decode_tokens_per_second",
            "Decode speed of a request",
            ["model"],
            buckets=_TOK_S_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("edge_qwen_prompt_tokens", "Prompt tokens", ["model"], registry=r)
        self.completion_tokens = Counter(
            "edge_qwen_completion_tokens", "Generated tokens", ["model"], registry=r
        )
        self.finished = Counter(
            "edge_qwen_generations", "Finished generations by finish reason", ["model", "reason"], registry=r
        )
        self.drafted_tokens = Counter(
            "edge_qwen_speculative_drafted_tokens",
            "Tokens drafted by speculative decoding",
            ["model"],
            registry=r,
        )
        self.accepted_tokens = Counter(
            "edge_qwen_speculative_accepted_tokens",
            "Drafted tokens the model accepted",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge("edge_qwen_requests_in_flight", "HTTP requests being served", registry=r)
        ProcessCollector(registry=r)
        r.register(_SnapshotCollector(snapshot))

    def observe_generation(self, model: str, result: GenerationResult) -> None:
        usage, timings = result.usage, result.timings
        self.prompt_tokens.labels(model).inc(usage.prompt_tokens)
        self.completion_tokens.labels(model).inc(usage.completion_tokens)
        self.finished.labels(model, result.finish_reason).inc()
        if timings.drafted_tokens:
            self.drafted_tokens.labels(model).inc(timings.drafted_tokens)
            self.accepted_tokens.labels(model).inc(timings.accepted_tokens)
        if timings.queue_ms > 0:
            self.queue_wait.labels(model).observe(timings.queue_ms / 1e3)
        if usage.completion_tokens > 0:
            self.ttft.labels(model).observe(timings.ttft_ms / 1e3)
        if usage.completion_tokens > 1 and timings.decode_tok_s > 0:
            self.decode_rate.labels(model).observe(timings.decode_tok_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
