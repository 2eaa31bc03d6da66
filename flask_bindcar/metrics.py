"""Prometheus metrics, when ``prometheus-client`` is installed (the ``metrics`` extra).

Created once per process in the default registry, however many apps or middlewares are built, so
app factories and test suites never hit "Duplicated timeseries". Labels never carry a token or a
username.

The two counters bumped on every request are sharded per thread: an increment is a dictionary
update of the calling thread's own shard, with no lock, and a scrape sums the shards. A shard lives
only as long as its thread (or greenlet, under gevent, where ``threading.local`` is per greenlet):
when it ends, its counts are folded into one total, so memory and scrape time follow the threads
alive now, not every thread or connection ever served. The histogram and the gauge, touched only
when a TokenReview is sent, are prometheus-client's own.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

_lock = threading.Lock()
_metrics: Metrics | None = None
_unavailable = False


class _Owner:
    """Lives in a thread's (or greenlet's) local storage; its death says the shard is finished."""

    __slots__ = ("__weakref__",)


class ShardedCounter:
    """A labelled counter whose increments take no lock: each thread counts in its own shard.

    Each shard is registered with a weak reference to an `_Owner` kept beside it in the thread's
    local storage. When the thread or greenlet ends, its local storage goes and the weak reference's
    callback queues the shard's key, nothing more (it may run in any thread, at any allocation, so
    it takes no lock). Under the lock, the next new shard or scrape folds finished shards into
    ``_retired``. Counts are never lost nor counted twice: a shard is either in ``_shards`` or
    folded, and only the lock holder moves it.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._local = threading.local()
        self._shards: dict[int, dict[tuple[str, ...], int]] = {}
        self._owners: dict[int, weakref.ref[_Owner]] = {}
        self._finished: deque[int] = deque()
        self._retired: dict[tuple[str, ...], int] = {}
        self._ids = itertools.count()
        self._shards_lock = threading.Lock()

    def inc(self, *labels: str) -> None:
        try:
            shard: dict[tuple[str, ...], int] = self._local.shard
        except AttributeError:
            shard = self._new_shard()
        shard[labels] = shard.get(labels, 0) + 1

    def _new_shard(self) -> dict[tuple[str, ...], int]:
        shard: dict[tuple[str, ...], int] = {}
        owner = _Owner()
        finished = self._finished
        with self._shards_lock:
            self._fold_finished()
            key = next(self._ids)
            self._shards[key] = shard
            self._owners[key] = weakref.ref(owner, lambda _ref: finished.append(key))
        self._local.owner = owner
        self._local.shard = shard
        return shard

    def _fold_finished(self) -> None:
        """Fold the counts of finished threads into ``_retired``; the caller holds the lock."""
        while self._finished:
            key = self._finished.popleft()
            self._owners.pop(key, None)
            for labels, n in self._shards.pop(key, {}).items():
                self._retired[labels] = self._retired.get(labels, 0) + n

    def shard_count(self) -> int:
        """Shards not yet folded: about the number of threads (or greenlets) that counted and live."""
        with self._shards_lock:
            self._fold_finished()
            return len(self._shards)

    def values(self) -> dict[tuple[str, ...], int]:
        with self._shards_lock:
            self._fold_finished()
            totals = dict(self._retired)
            shards = list(self._shards.values())
        for shard in shards:
            for labels, n in list(shard.items()):
                totals[labels] = totals.get(labels, 0) + n
        return totals


class _ShardedCollector:
    def __init__(self, counters: list[ShardedCounter], admitted: ShardedCounter, requests: str, cache: str):
        self.counters = counters
        self.admitted = admitted
        self.merged: dict[str, Callable[[tuple[str, ...]], tuple[str, ...]]] = {
            requests: lambda labels: ("allow", "ok"),
            cache: lambda labels: labels,
        }
        """The counters `admitted` is part of, and its labels there (see `Metrics.admitted`)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        admitted = self.admitted.values()
        for counter in self.counters:
            family = CounterMetricFamily(counter.name, counter.documentation, labels=list(counter.labelnames))
            values = counter.values()
            relabel = self.merged.get(counter.name)
            if relabel is not None:
                for labels, n in admitted.items():
                    values[relabel(labels)] = values.get(relabel(labels), 0) + n
            for labels, n in sorted(values.items()):
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
        self.admitted = ShardedCounter("bindcar_admitted", "", ("outcome",))
        """A request admitted by authentication after a cache lookup, by the lookup's outcome: one
        increment on the warm path where there would be two, reported (never under its own name) as
        an ``allow``/``ok`` of `requests` and a lookup of `cache`."""
        self.authorization = ShardedCounter(
            "bindcar_authorization", "Authorization (SubjectAccessReview) decisions by result.", ("result",)
        )
        self.cluster_requests = ShardedCounter(
            "flask_bindcar_cluster_requests",
            "Decisions about tokens of each trusted cluster (BIND_CLUSTERS_FILE): authentication allow or deny, "
            "RBAC forbidden or unavailable.",
            ("cluster", "result"),
        )
        """Counted only with ``BIND_CLUSTERS_FILE``; ``cluster`` is a configured name, never a token's word."""
        REGISTRY.register(
            _ShardedCollector(
                [self.requests, self.cache, self.authorization, self.cluster_requests],
                self.admitted,
                requests=self.requests.name,
                cache=self.cache.name,
            )
        )
        self.review_duration: Any = Histogram(
            "bindcar_tokenreview_duration_seconds",
            "Duration of TokenReview calls to the Kubernetes API server.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.inflight: Any = Gauge("bindcar_tokenreview_inflight", "TokenReview calls in flight.")
        self.access_review_duration: Any = Histogram(
            "bindcar_subjectaccessreview_duration_seconds",
            "Duration of SubjectAccessReview calls to the Kubernetes API server.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


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
