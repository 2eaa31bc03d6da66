"""The bounded load: threads sending requests whose right answer `soak.oracle` knows.

Each thread owns a ``requests.Session`` (keep-alive, as a real client), picks a kind of caller by
weight, sends one request and records a `Request`. It stops by itself at the deadline or after
``max_requests`` in all, whichever comes first, and paces itself to ``rate`` requests per second.
"""

from __future__ import annotations

import collections
import itertools
import random
import threading
import time
from dataclasses import dataclass, field

import requests

from soak.oracle import ALLOW, DENY, Request

ZONES = "/api/v1/zones"


@dataclass(frozen=True)
class Caller:
    """A kind of request: its token, the path and method, and the answer with every cache fresh."""

    kind: str
    subject: str
    token: str
    method: str = "GET"
    path: str = ZONES
    truth: str = ALLOW
    allow_status: int = 200


@dataclass
class Load:
    base_url: str
    callers: dict[str, list[Caller]]
    weights: dict[str, float]
    deadline: float
    max_requests: int
    rate: float
    threads: int = 6
    timeout: float = 20.0
    reconnect_every: int = 50
    records: list[Request] = field(default_factory=list)
    fresh: collections.deque[Caller] = field(default_factory=lambda: collections.deque(maxlen=64))
    """Tokens minted during the run; each is used a few times, then dropped."""
    _count: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_fresh(self, caller: Caller, uses: int = 3) -> None:
        for _ in range(uses):
            self.fresh.append(caller)

    def _pick(self, rng: random.Random) -> Caller:
        kind = rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        if kind == "fresh":
            try:
                return self.fresh.popleft()
            except IndexError:
                kind = "valid"
        return rng.choice(self.callers[kind])

    def send(self, session: requests.Session, caller: Caller) -> Request:
        t0 = time.monotonic()
        status, error = 0, ""
        try:
            answer = session.request(
                caller.method,
                self.base_url + caller.path,
                headers={"Authorization": f"Bearer {caller.token}"},
                timeout=self.timeout,
            )
            status = answer.status_code
            if status >= 400:
                try:
                    error = str(answer.json().get("error", ""))
                except ValueError:
                    error = answer.text[:200]
        except requests.RequestException as e:
            error = type(e).__name__
        record = Request(
            caller.kind, caller.subject, caller.truth, caller.allow_status, t0, time.monotonic(), status, error
        )
        with self._lock:
            self.records.append(record)
        return record

    def _worker(self, seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311 - a traffic mix, not a secret
        session = requests.Session()
        interval = self.threads / self.rate
        next_at = time.monotonic()
        sent = 0
        while time.monotonic() < self.deadline and next(self._count) < self.max_requests:
            self.send(session, self._pick(rng))
            sent += 1
            if sent % self.reconnect_every == 0:  # a new connection now and then reaches either worker
                session.close()
                session = requests.Session()
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()
        session.close()

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(self.threads)]
        for t in threads:
            t.start()
        return threads


def deny(caller: Caller) -> Caller:
    return Caller(caller.kind, caller.subject, caller.token, caller.method, caller.path, DENY, caller.allow_status)
