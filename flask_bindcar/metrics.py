"""Prometheus metrics, when ``prometheus-client`` is installed (the ``metrics`` extra).

Created once per process in the default registry, however many apps or middlewares are built, so
app factories and test suites never hit "Duplicated timeseries". Labels never carry a token or a
username.

The two counters bumped on every request are sharded per thread: an increment is a dictionary
update of the calling thread's own shard, with no lock, and a scrape sums the shards. The
histogram and the gauge, touched only when a TokenReview is sent, are prometheus-client's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_metrics: Metrics | None = None
_unavailable = False


class ShardedCounter:
    """A labelled counter whose increments take no lock: each thread counts in its own shard."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._local = threading.local()
        self._shards: list[dict[tuple[str, ...], int]] = []
        self._shards_lock = threading.Lock()

    def inc(self, *labels: str) -> None:
        try:
            shard: dict[tuple[str, ...], int] = self._local.shard
        except AttributeError:
            shard = self._local.shard = {}
            with self._shards_lock:
                self._shards.append(shard)
        shard[labels] = shard.get(labels, 0) + 1

    def values(self) -> dict[tuple[str, ...], int]:
        totals: dict[tuple[str, ...], int] = {}
        with self._shards_lock:
            shards = list(self._shards)
        for shard in shards:
            for labels, n in list(shard.items()):
                totals[labels] = totals.get(labels, 0) + n
        return totals


class _ShardedCollector:
    def __init__(self, counters: list[ShardedCounter]):
        self.counters = counters

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        for counter in self.counters:
            family = CounterMetricFamily(counter.name, counter.documentation, labels=list(counter.labelnames))
            for labels, n in sorted(counter.values().items()):
                family.add_metric(list(labels), n)
            yield family

    def describe(self) -> Iterator[Any]:
        return iter(())


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import REGISTRY, Gauge, Histogram

        self.requests = ShardedCounter(
            "bindcar_auth_requests", "Authentication decisions by result and reason.", ("result", "reason")
        )
        self.cache = ShardedCounter("bindcar_tokenreview_cache", "TokenReview cache lookups by outcome.", ("outcome",))
        REGISTRY.register(_ShardedCollector([self.requests, self.cache]))
        self.review_duration: Any = Histogram(
            "bindcar_tokenreview_duration_seconds",
            "Duration of TokenReview calls to the Kubernetes API server.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.inflight: Any = Gauge("bindcar_tokenreview_inflight", "TokenReview calls in flight.")


def get_metrics() -> Metrics | None:
    """The process's metrics, or None without prometheus-client."""
    global _metrics, _unavailable
    if _metrics is not None or _unavailable:
        return _metrics
    with _lock:
        if _metrics is None and not _unavailable:
            try:
                _metrics = Metrics()
            except ImportError:
                _unavailable = True
    return _metrics
