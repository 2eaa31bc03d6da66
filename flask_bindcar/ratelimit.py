"""A limit on failed authentication attempts per client address (``BIND_AUTH_FAILURE_LIMIT``).

Checked before anything else, so a client past its limit sends no TokenReview. Fixed windows per
address; the table of addresses is bounded (least recently failing evicted first), so a flood from
many addresses cannot grow memory without bound.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from flask_bindcar.errors import ConfigError

PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
MAX_CLIENTS = 65536


@dataclass(frozen=True)
class Limit:
    attempts: int
    period: float

    def __str__(self) -> str:
        return f"{self.attempts}/{self.period:g}s"


def parse_limit(name: str, raw: object) -> Limit:
    """``20/minute`` (also ``20/min``, ``20/m``, ``5/second``, ``100/hour``) -> `Limit`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+?)s?\s*", str(raw).lower())
    if not match or match.group(2) not in PERIODS or int(match.group(1)) < 1:
        raise ConfigError(f"{name}={raw!r} is not valid: expected attempts per period, such as 20/minute")
    return Limit(int(match.group(1)), PERIODS[match.group(2)])


class FailureLimiter:
    """Counts failures per client in fixed windows; a client at the limit waits for its window to end."""

    def __init__(self, limit: Limit, max_clients: int = MAX_CLIENTS):
        self.limit = limit
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._windows: OrderedDict[str, list[float]] = OrderedDict()  # client -> [window start, failures]

    def __len__(self) -> int:
        return len(self._windows)

    def retry_after(self, client: str | None) -> int | None:
        """Whole seconds until ``client`` may try again, or None when it may now."""
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(client or "")
            if window is None or window[1] < self.limit.attempts:
                return None
            left = window[0] + self.limit.period - now
        if left <= 0:
            return None
        return max(1, math.ceil(left))

    def record_failure(self, client: str | None) -> None:
        now = time.monotonic()
        key = client or ""
        with self._lock:
            window = self._windows.get(key)
            if window is None or now >= window[0] + self.limit.period:
                window = self._windows[key] = [now, 0.0]
            window[1] += 1
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_clients:
                self._windows.popitem(last=False)
