"""Prometheus metrics, when ``prometheus-client`` is installed (the ``metrics`` extra).

Created once per process in the default registry, however many apps or middlewares are built, so
app factories and test suites never hit "Duplicated timeseries". Labels never carry a token or a
username.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_metrics: Metrics | None = None
_unavailable = False


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests: Any = Counter(
            "bindcar_auth_requests", "Authentication decisions by result and reason.", ["result", "reason"]
        )
        self.review_duration: Any = Histogram(
            "bindcar_tokenreview_duration_seconds",
            "Duration of TokenReview calls to the Kubernetes API server.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.cache: Any = Counter("bindcar_tokenreview_cache", "TokenReview cache lookups by outcome.", ["outcome"])
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
