"""The bulkhead in front of the API server: a few calls in flight, a share per caller, a short wait.

Why not a plain semaphore: one bounded semaphore shared by every review let one authenticated
caller asking about unique paths (``BIND_AUTHZ=path``, so every SubjectAccessReview misses the
cache) hold all the slots, and everyone else's TokenReview was refused at once with a 401 that
read like a token problem. `Bulkhead` keeps the bound on calls in flight, and adds two things:

* a **share per key**: one key (the caller's username, for a SubjectAccessReview) holds at most
  ``per_key`` slots, by default half of them, so the other half is always there for the others;
  a TokenReview passes ``None``, no share, since the caller is not known before it;
* a **short wait**: a call that finds no slot (none free, or its key at its share) waits up to
  ``wait`` seconds before giving up, in arrival order, so a burst is served rather than refused.

Fairness: a slot that frees is handed to the oldest waiter whose key is below its share, never
left for whoever asks next, so a flooding caller's threads (which, looping, always ask next)
cannot overtake those already waiting; and a waiter whose key is at its share is passed over,
so it never takes a slot ahead of other keys. Only `threading` primitives are used (a lock, and
a lock per waiter as `threading.Condition` does), so gevent's monkey patching turns the waits
into greenlet switches; nothing polls. The waiters' locks are made when they wait, and the
bulkhead's own lock is held only for a few steps that never block, so a bulkhead made before
the patching (``gunicorn --preload``) works too.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

DEFAULT_WAIT = 0.25
"""Seconds a call waits for a slot before giving up. Short, because a waiting request holds its
worker thread just as one in flight does: with the API server hanging, every request that needs a
review ties up a thread this long before it is refused, while cache hits and health probes still
need threads. Long enough for the slots to turn over: a healthy in-cluster review takes 2-20 ms
(a dozen turnovers of every slot), and at 200 ms it still covers one, so a caller arriving at a
full bulkhead gets the next slot that frees. The caller should not wait longer than the review
itself may take: use ``min(DEFAULT_WAIT, review_timeout)``."""


def default_share(slots: int) -> int:
    """At most half the slots for one key (at least one): whatever one caller does, the others
    always find the other half, and one caller alone still gets more than one review at a time."""
    return max(1, slots // 2)


class _Waiter:
    """One call waiting for a slot: woken by the release that hands it one, or by its timeout."""

    __slots__ = ("granted", "key", "lock")

    def __init__(self, key: Hashable | None):
        self.key = key
        self.granted = False
        self.lock = threading.Lock()
        self.lock.acquire()


class Bulkhead:
    """At most ``slots`` calls in flight, at most ``per_key`` of them for one key.

    ``acquire(key)`` / ``release(key)`` (the same key) around the call, or ``with
    bulkhead.slot(key) as ok:``. ``key=None`` has no share of its own: it counts toward
    ``slots`` only. ``per_key`` defaults to `default_share`; ``per_key >= slots`` is one
    shared pool, as a plain semaphore (with the wait).

    Thread-safe. The uncontended path takes one lock and allocates nothing; a waiter allocates
    one lock, as `threading.Condition.wait` does.
    """

    def __init__(self, slots: int, per_key: int | None = None, wait: float = DEFAULT_WAIT):
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if per_key is None:
            per_key = default_share(slots)
        if per_key < 1:
            raise ValueError(f"per_key must be at least 1, got {per_key}")
        if not wait >= 0:  # NaN too
            raise ValueError(f"wait must be a number of seconds >= 0, got {wait}")
        self.slots = slots
        self.per_key = per_key
        self.wait = wait
        self._lock = threading.Lock()
        self._free = slots
        self._held: dict[Hashable, int] = {}
        """Slots held by each key holding any; None is never a key here."""
        self._waiters: deque[_Waiter] = deque()
        """Oldest first. Whenever a slot is free, none of them may take it (its key is at its share)."""

    def __repr__(self) -> str:
        return f"Bulkhead(slots={self.slots}, per_key={self.per_key}, wait={self.wait})"

    @property
    def inflight(self) -> int:
        """Slots held now, by every key and None."""
        return self.slots - self._free

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    def held(self, key: Hashable) -> int:
        """Slots ``key`` holds now."""
        return self._held.get(key, 0)

    def acquire(self, key: Hashable | None = None, timeout: float | None = None) -> bool:
        """Take a slot for ``key``, waiting up to ``timeout`` seconds (default `wait`) for one.

        True when the slot is taken: call `release` with the same key once the call is over.
        False when none came in time: the bulkhead is overloaded, which says nothing of the caller.
        """
        with self._lock:
            if self._free and (key is None or self._held.get(key, 0) < self.per_key):
                self._take(key)
                return True
            wait = self.wait if timeout is None else timeout
            if not wait > 0:
                return False
            waiter = _Waiter(key)
            self._waiters.append(waiter)
        try:
            waiter.lock.acquire(True, min(wait, threading.TIMEOUT_MAX))
        except BaseException:  # a killed greenlet, KeyboardInterrupt: leave no slot and no waiter behind
            with self._lock:
                if waiter.granted:
                    self._release(key)
                else:
                    self._waiters.remove(waiter)
            raise
        with self._lock:
            if waiter.granted:  # possibly handed over just as the wait timed out: it is ours all the same
                return True
            self._waiters.remove(waiter)
            return False

    def release(self, key: Hashable | None = None) -> None:
        """Give back a slot `acquire` took for ``key``; it goes to the oldest waiter that may have it.

        Raises `ValueError` when ``key`` holds none (as `threading.BoundedSemaphore` does).
        """
        with self._lock:
            self._release(key)

    @contextmanager
    def slot(self, key: Hashable | None = None, timeout: float | None = None) -> Iterator[bool]:
        """``with bulkhead.slot(key) as ok:``: `acquire`, and `release` on the way out when ``ok``."""
        ok = self.acquire(key, timeout)
        try:
            yield ok
        finally:
            if ok:
                self.release(key)

    def _take(self, key: Hashable | None) -> None:
        self._free -= 1
        if key is not None:
            self._held[key] = self._held.get(key, 0) + 1

    def _release(self, key: Hashable | None) -> None:
        if key is not None:
            held = self._held.get(key, 0)
            if held == 0:
                raise ValueError(f"{key!r} holds no slot of the bulkhead")
            if held == 1:
                del self._held[key]  # keeps the table as small as the keys in flight
            else:
                self._held[key] = held - 1
        elif self._free == self.slots:
            raise ValueError("the bulkhead has no slot in use")
        self._free += 1
        if self._waiters:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the one free slot to the oldest waiter whose key is below its share, if any.

        One release frees one slot and lowers one key's count, so at most one waiter becomes able
        to take a slot: one hand-over keeps the invariant of ``_waiters``.
        """
        per_key, held = self.per_key, self._held
        for i, waiter in enumerate(self._waiters):
            key = waiter.key
            if key is None or held.get(key, 0) < per_key:
                del self._waiters[i]
                self._take(key)
                waiter.granted = True
                waiter.lock.release()
                return
