"""Prometheus metrics for ``GET /metrics``.

One registry per daemon (no global state): latency histograms are fed as tokens happen (the
runners call :class:`Metrics` as their latency observer), and everything else (requests,
tokens, slots, queue depth, cache hits, memory) is read from the live snapshots at scrape time,
so the numbers in ``/metrics``, ``/stats`` and the responses always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1)

# (snapshot key, metric name, help, kind)
_MODEL_SERIES = [
    ("requests", "requests", "Requests admitted to the model", "counter"),
    ("prompt_tokens", "prompt_tokens", "Prompt tokens of admitted requests", "counter"),
    ("prompt_tokens_evaluated", "prompt_tokens_evaluated", "Prompt tokens computed", "counter"),
    ("cached_tokens", "cached_tokens", "Prompt tokens reused from the KV cache", "counter"),
    ("generated_tokens", "generated_tokens", "Tokens generated", "counter"),
    ("errors", "request_errors", "Requests that failed", "counter"),
    ("cancelled", "requests_cancelled", "Requests cancelled (client hung up)", "counter"),
    ("busy_rejections", "busy_rejections", "Requests refused with busy (queue full)", "counter"),
    ("context_shifts", "context_shifts", "Context shifts", "counter"),
    ("restarts", "runner_restarts", "Runner process restarts after a crash", "counter"),
    ("slots", "slots", "Parallel sequences of the model's context", "gauge"),
    ("slots_busy", "slots_busy", "Slots running a request", "gauge"),
    ("queue_depth", "queue_depth", "Requests waiting for a slot", "gauge"),
    (
        "memory_estimated_bytes",
        "model_memory_estimated_bytes",
        "Bytes the model was estimated to hold (GGUF header)",
        "gauge",
    ),
    (
        "memory_measured_bytes",
        "model_memory_measured_bytes",
        "RSS growth measured when the model loaded",
        "gauge",
    ),
]


class Metrics:
    """The daemon's registry. ``snapshot`` returns ``/stats``' body (models and cache)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._ttft = Histogram(
            "edgeinfer_time_to_first_token_seconds",
            "Time from admission to the first generated token",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self._itl = Histogram(
            "edgeinfer_inter_token_seconds",
            "Time between consecutive generated tokens of one request",
            ["model"],
            buckets=_ITL_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(namespace="edgeinfer", registry=self.registry)

    def ttft(self, model: str, seconds: float) -> None:
        self._ttft.labels(model).observe(seconds)

    def inter_token(self, model: str, seconds: float) -> None:
        self._itl.labels(model).observe(seconds)

    def watch(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Export ``snapshot()`` (the ``/stats`` body) at every scrape."""
        self.registry.register(_SnapshotCollector(snapshot))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        models: dict[str, Any] = snap.get("models", {})
        yield from _model_metrics(models)
        cache = snap.get("cache")
        if cache:
            yield from _cache_metrics(cache)
        memory = snap.get("memory")
        if memory:
            yield from _memory_metrics(memory)
        config = snap.get("config")
        if config:
            ok = GaugeMetricFamily("edgeinfer_config_ok", "0 while the last reload failed")
            ok.add_metric([], 1.0 if config.get("ok") else 0.0)
            yield ok


def _memory_metrics(memory: dict[str, Any]) -> Iterator[Metric]:
    """The pool's budget and what loaded (and draining) models hold against it."""
    for key, name, doc in (
        ("budget_bytes", "memory_budget_bytes", "RAM budget for models (absent: unlimited)"),
        ("used_bytes", "memory_used_bytes", "RAM accounted to loaded and draining models"),
        ("vram_budget_bytes", "vram_budget_bytes", "VRAM budget (absent: unchecked)"),
        ("used_vram_bytes", "vram_used_bytes", "VRAM accounted to loaded models"),
    ):
        if memory.get(key) is not None:
            gauge = GaugeMetricFamily(f"edgeinfer_{name}", doc)
            gauge.add_metric([], float(memory[key]))
            yield gauge


def _model_metrics(models: dict[str, Any]) -> Iterator[Metric]:
    ready = GaugeMetricFamily("edgeinfer_model_ready", "1 if the model serves", labels=["model"])
    for name, m in models.items():
        ready.add_metric([name], 1.0 if m.get("status") == "ready" else 0.0)
    yield ready
    for key, name, doc, kind in _MODEL_SERIES:
        family: CounterMetricFamily | GaugeMetricFamily = (
            CounterMetricFamily(f"edgeinfer_{name}", doc, labels=["model"])
            if kind == "counter"
            else GaugeMetricFamily(f"edgeinfer_{name}", doc, labels=["model"])
        )
        for model, m in models.items():
            if key in m:
                family.add_metric([model], float(m[key]))
        yield family


def _cache_metrics(cache: dict[str, Any]) -> Iterator[Metric]:
    hits = CounterMetricFamily("edgeinfer_cache_hits", "Cache hits", labels=["layer"])
    misses = CounterMetricFamily("edgeinfer_cache_misses", "Cache misses", labels=["layer"])
    saved = CounterMetricFamily(
        "edgeinfer_cache_tokens_saved", "Tokens not generated (measured)", labels=["layer", "kind"]
    )
    for layer, row in (cache.get("layers") or {}).items():
        hits.add_metric([layer], float(row["hits"]))
        misses.add_metric([layer], float(row["misses"]))
        for kind in ("prompt", "completion"):
            saved.add_metric([layer, kind], float(row["measured"][f"{kind}_tokens_saved"]))
    entries = GaugeMetricFamily("edgeinfer_cache_entries", "Entries in the response cache")
    entries.add_metric([], float((cache.get("store") or {}).get("entries", 0)))
    yield from (hits, misses, saved, entries)
