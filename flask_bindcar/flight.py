"""Answers of the API server by key: one call at a time per key, kept for a while, the least used forgotten.

Both caches of flask-bindcar (TokenReview outcomes in `flask_bindcar.cache`, SubjectAccessReview
decisions in `flask_bindcar.authz`) have this one shape, as kube-apiserver's delegated
authentication and authorization caches do: a fresh answer is a hit; otherwise the first request
to ask leads one call, and every request asking the same question meanwhile waits for it (single
flight) and gets the leader's answer or error, the same object. Each is a `SingleFlightCache`
that says how to ask (``_lead``), what to keep and for how long; the waiting, the handing over
and the bounded LRU are here, written once. A subclass rather than a cache holding a core: a hit
is the warm path of every request, and it stays one call with no function made per request.

A waiter waits the call's own bound plus `FOLLOWER_GRACE`, so the leader's error, even its
timeout, reaches it before its own wait ends. A leader stopped without an `Exception` (a killed
greenlet) leaves its waiters "abandoned"; an exception nobody expected becomes the cache's outage
error, logged by type and stack only. Either way nothing is kept, and the flight is gone before
its waiters wake.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, Literal, TypeVar

from flask_bindcar.errors import API_BAD_RESPONSE, API_UNREACHABLE
from flask_bindcar.scrub import log_unexpected

CacheResult = Literal["hit", "miss", "shared", "stale"]
"""How a cache answered: kept and fresh, asked now, shared with another's call, or kept past its TTL."""

FOLLOWER_GRACE = 1.0
"""Seconds a request waiting on another's review waits past that review's own bound
(``wait_timeout``): the leader's answer or error, even a timeout, reaches the waiters before
their own wait ends, so every request that shared a review gets the same answer."""

Q = TypeVar("Q")
V = TypeVar("V")
E = TypeVar("E", bound=Exception)


class Kept(Generic[V]):
    """An answer in the store: fresh until ``fresh_until``, usable when the call fails until ``stale_until``."""

    __slots__ = ("fresh_until", "stale_until", "used", "value")

    def __init__(self, value: V, fresh_until: float, stale_until: float):
        self.value = value
        self.fresh_until = fresh_until
        self.stale_until = stale_until
        self.used = False
        """Read since the store last passed over it: it goes round once more before it is forgotten."""


class _Flight(Generic[V, E]):
    __slots__ = ("answer", "done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: tuple[V, CacheResult] | None = None
        """What the waiters get; still None when ``done``, with no error: the call was abandoned."""
        self.error: E | None = None


class SingleFlightCache(Generic[Q, V, E]):
    """A thread-safe TTL + LRU store of answers by key, with single flight for the answers it lacks.

    A subclass asks in `_lead` and keeps what it wants with `keep`. ``errors`` is its error class
    (its calls raise it, and it reaches the waiters as it is); ``failed(why, reason)`` builds one
    for a waiter that waited too long, an abandoned call or an unexpected exception (logged as
    ``unexpected ... in <what>``).
    """

    def __init__(
        self,
        *,
        max_size: int,
        wait_timeout: float,
        errors: type[E],
        failed: Callable[[str, str], E],
        what: str,
    ):
        """``wait_timeout`` is how long one call may take (``BIND_TOKEN_REVIEW_TIMEOUT``)."""
        self.max_size = max_size
        self.wait_timeout = wait_timeout
        self._errors = errors
        self._failed = failed
        self._what = what
        self._lock = threading.Lock()
        self._kept: dict[Hashable, Kept[V]] = {}
        """Oldest first (insertion order): evicted by second chance, a cheap least-recently-used."""
        self._flights: dict[Hashable, _Flight[V, E]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def _lead(self, key: Hashable, question: Q, kept: Kept[V] | None) -> tuple[V, CacheResult]:
        """Ask ``question`` once, for every request waiting on ``key``: the answer and ``"miss"``, or
        ``kept`` (what is kept past its freshness, if anything) and ``"stale"`` to answer with it."""
        raise NotImplementedError

    def fresh(self, key: Hashable) -> V | None:
        """The answer kept for ``key`` while it is fresh, else None: a hit, with no lock and nothing
        else to set up (`get_or_lead` asks for everything else)."""
        kept = self._kept.get(key)
        if kept is not None and time.monotonic() < kept.fresh_until:
            kept.used = True
            return kept.value
        return None

    def get_or_lead(self, key: Hashable, question: Q) -> tuple[V, CacheResult]:
        """The fresh answer kept for ``key``, or the answer of one `_lead` shared by all who ask now.

        Raises the call's error (the same one to every request that shared it), or ``failed``'s to
        a request that waited ``wait_timeout + FOLLOWER_GRACE`` seconds for another's call. Any
        other exception of the call becomes ``failed(<its type>, "api_bad_response")``, shared the
        same way: a bug in reading an answer is a refusal, never a 500, and never kept.
        """
        now = time.monotonic()
        kept = self._kept.get(key)  # a hit takes no lock: one dict read, and a flag set
        if kept is not None and now < kept.fresh_until:
            kept.used = True
            return kept.value, "hit"
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                if now < kept.fresh_until:
                    kept.used = True
                    return kept.value, "hit"
                if now >= kept.stale_until:
                    del self._kept[key]
                    kept = None
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            return self._follow(flight)
        try:
            value, result = self._lead(key, question, kept)
            flight.answer = value, "stale" if result == "stale" else "shared"
            return value, result
        except self._errors as e:
            flight.error = e
            raise
        except Exception as e:
            log_unexpected(self._what, e)
            flight.error = self._failed(type(e).__name__, API_BAD_RESPONSE)
            raise flight.error from None
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _follow(self, flight: _Flight[V, E]) -> tuple[V, CacheResult]:
        """What the leader of ``flight`` got, waited for at most the call's bound plus the grace."""
        wait = self.wait_timeout + FOLLOWER_GRACE
        if not flight.done.wait(wait):
            raise self._failed(f"no answer within {wait:g}s", API_UNREACHABLE)
        if flight.error is not None:
            raise flight.error
        if flight.answer is None:  # the leader was stopped by a BaseException (a killed greenlet)
            raise self._failed("the review was abandoned", API_UNREACHABLE)
        return flight.answer

    def keep(self, key: Hashable, value: V, fresh_until: float, stale_until: float | None = None) -> None:
        """Keep ``value`` for ``key``: fresh until ``fresh_until`` (`time.monotonic`), kept until
        ``stale_until`` (default: the same). Past ``max_size`` the oldest go, each read since it was
        kept given one more round (second chance)."""
        kept = Kept(value, fresh_until, fresh_until if stale_until is None else stale_until)
        with self._lock:
            store = self._kept
            store.pop(key, None)
            store[key] = kept
            while len(store) > self.max_size:  # the oldest goes, unless read since: then it goes round again
                oldest = next(iter(store))
                candidate = store.pop(oldest)
                if candidate.used and candidate is not kept:
                    candidate.used = False
                    store[oldest] = candidate
