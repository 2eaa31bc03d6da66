"""`Bulkhead`: the bound on calls in flight, each caller's share of it, the short wait, fairness.

Threads are synchronised by the bulkhead's own state (``waiting``, ``held``) and by Events, never
by sleeping and hoping. The last tests play the issue's scenario (one caller flooding with 12
threads against a 200 ms API while 10 others make one call each) on the bulkhead alone, with a
fake remote call, and the same under gevent.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import pytest

from flask_bindcar.bulkhead import DEFAULT_WAIT, Bulkhead, default_share

ROOT = Path(__file__).resolve().parent.parent


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (at most 5 s) for the other threads to reach a state; a test set-up step, not an assert."""
    deadline = time.monotonic() + 5
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never reached: {what}")
        time.sleep(0.001)


class Attempt:
    """``bulkhead.acquire(key, timeout)`` in a thread of its own."""

    def __init__(self, bulkhead: Bulkhead, key: Hashable | None, timeout: float | None = None):
        self.result: bool | None = None
        self._thread = threading.Thread(target=self._run, args=(bulkhead, key, timeout), daemon=True)
        self._thread.start()

    def _run(self, bulkhead: Bulkhead, key: Hashable | None, timeout: float | None) -> None:
        self.result = bulkhead.acquire(key, timeout)

    def outcome(self) -> bool | None:
        """What acquire returned, once it has (None if it is still waiting 5 s on)."""
        self._thread.join(5)
        return self.result


def queued(bulkhead: Bulkhead, key: Hashable | None, waiting: int) -> Attempt:
    """An attempt for ``key``, once it waits in line behind ``waiting - 1`` others."""
    attempt = Attempt(bulkhead, key)
    until(lambda: bulkhead.waiting == waiting, f"{waiting} waiting")
    return attempt


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("slots", "share"), [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (8, 4)])
def test_the_default_share_is_half_the_slots_and_at_least_one(slots: int, share: int) -> None:
    assert default_share(slots) == share
    assert Bulkhead(slots).per_key == share


def test_defaults() -> None:
    bulkhead = Bulkhead(4)
    assert (bulkhead.slots, bulkhead.per_key, bulkhead.wait) == (4, 2, DEFAULT_WAIT)
    assert DEFAULT_WAIT == 0.25
    assert repr(bulkhead) == "Bulkhead(slots=4, per_key=2, wait=0.25)"
    assert (bulkhead.inflight, bulkhead.waiting) == (0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "slots must be at least 1, got 0"),
        ((4, 0), "per_key must be at least 1, got 0"),
        ((4, 2, -1.0), "wait must be a number of seconds >= 0, got -1.0"),
        ((4, 2, math.nan), "wait must be a number of seconds >= 0, got nan"),
    ],
)
def test_settings_that_cannot_work_are_refused(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Bulkhead(*args)  # type: ignore[arg-type]
    assert str(caught.value) == message


# -- the bounds -------------------------------------------------------------------------------


def test_at_most_slots_calls_in_flight() -> None:
    bulkhead = Bulkhead(3, per_key=3)
    assert [bulkhead.acquire(k) for k in ("a", "b", None)] == [True, True, True]
    assert bulkhead.acquire("c", timeout=0) is False
    assert (bulkhead.inflight, bulkhead.waiting) == (3, 0)  # timeout=0 never queues
    bulkhead.release("b")
    assert bulkhead.acquire("c", timeout=0) is True
    assert bulkhead.inflight == 3


def test_at_most_per_key_calls_in_flight_for_one_key() -> None:
    bulkhead = Bulkhead(4, per_key=2)
    assert [bulkhead.acquire("a") for _ in range(2)] == [True, True]
    assert bulkhead.acquire("a", timeout=0) is False  # two slots are free, but not for "a"
    assert bulkhead.acquire("b", timeout=0) is True
    assert (bulkhead.held("a"), bulkhead.held("b"), bulkhead.inflight) == (2, 1, 3)
    bulkhead.release("a")
    assert bulkhead.acquire("a", timeout=0) is True
    assert (bulkhead.held("a"), bulkhead.inflight) == (2, 3)


def test_the_none_key_has_no_share_of_its_own() -> None:
    bulkhead = Bulkhead(4, per_key=1)
    assert [bulkhead.acquire(None) for _ in range(4)] == [True, True, True, True]
    assert bulkhead.acquire(None, timeout=0) is False
    assert (bulkhead.held(None), bulkhead.inflight) == (0, 4)
    bulkhead.release(None)
    assert bulkhead.acquire("a", timeout=0) is True  # None holds nothing of "a"'s share
    assert (bulkhead.held("a"), bulkhead.inflight) == (1, 4)


def test_per_key_at_or_above_slots_is_one_shared_pool() -> None:
    bulkhead = Bulkhead(2, per_key=5)
    assert [bulkhead.acquire("a", timeout=0) for _ in range(3)] == [True, True, False]
    assert bulkhead.held("a") == 2


def test_releasing_what_is_not_held_raises_and_changes_nothing() -> None:
    bulkhead = Bulkhead(2)
    with pytest.raises(ValueError) as caught:
        bulkhead.release()
    assert str(caught.value) == "the bulkhead has no slot in use"
    assert bulkhead.acquire("a") is True
    with pytest.raises(ValueError) as caught:
        bulkhead.release("b")
    assert str(caught.value) == "'b' holds no slot of the bulkhead"
    assert (bulkhead.held("a"), bulkhead.held("b"), bulkhead.inflight) == (1, 0, 1)


def test_the_slot_context_releases_on_an_exception() -> None:
    bulkhead = Bulkhead(2)
    with pytest.raises(RuntimeError), bulkhead.slot("a") as ok:
        assert ok is True
        assert bulkhead.held("a") == 1
        raise RuntimeError("the call failed")
    assert (bulkhead.held("a"), bulkhead.inflight) == (0, 0)


def test_a_refused_slot_context_releases_nothing() -> None:
    bulkhead = Bulkhead(1)
    assert bulkhead.acquire("a") is True
    with bulkhead.slot("b", timeout=0) as ok:
        assert ok is False
    assert (bulkhead.held("a"), bulkhead.inflight) == (1, 1)


# -- the wait ---------------------------------------------------------------------------------


def test_a_waiter_gets_a_slot_released_within_its_wait() -> None:
    bulkhead = Bulkhead(1, wait=5)
    assert bulkhead.acquire("a") is True
    attempt = queued(bulkhead, "b", 1)
    assert attempt.result is None  # waiting, not refused at once
    bulkhead.release("a")
    assert attempt.outcome() is True
    assert (bulkhead.held("b"), bulkhead.inflight, bulkhead.waiting) == (1, 1, 0)


def test_a_waiter_gives_up_after_its_wait_and_leaves_nothing_behind() -> None:
    bulkhead = Bulkhead(1, wait=0.05)
    assert bulkhead.acquire("a") is True
    assert Attempt(bulkhead, "b").outcome() is False
    assert (bulkhead.held("b"), bulkhead.inflight, bulkhead.waiting) == (0, 1, 0)
    bulkhead.release("a")
    assert bulkhead.acquire("b", timeout=0) is True  # the given-up waiter took nothing with it


def test_waiters_are_served_in_arrival_order() -> None:
    bulkhead = Bulkhead(1, wait=5)
    assert bulkhead.acquire("a") is True
    first = queued(bulkhead, "b", 1)
    second = queued(bulkhead, "c", 2)
    bulkhead.release("a")
    assert first.outcome() is True
    assert (second.result, bulkhead.waiting) == (None, 1)
    bulkhead.release("b")
    assert second.outcome() is True
    assert (bulkhead.held("c"), bulkhead.waiting) == (1, 0)


def test_a_freed_slot_goes_to_the_waiter_not_to_whoever_asks_next() -> None:
    """A flooding thread asks again right after its release: the slot is already the waiter's."""
    bulkhead = Bulkhead(1, wait=5)
    assert bulkhead.acquire("flood") is True
    waiter = queued(bulkhead, "other", 1)
    bulkhead.release("flood")
    assert bulkhead.acquire("flood", timeout=0) is False
    assert waiter.outcome() is True
    assert (bulkhead.held("other"), bulkhead.held("flood")) == (1, 0)


def test_a_key_at_its_share_does_not_take_a_freed_slot_ahead_of_other_keys() -> None:
    bulkhead = Bulkhead(4, per_key=2, wait=5)
    assert [bulkhead.acquire(k) for k in ("a", "a", "b", "b")] == [True] * 4
    a_waiter = queued(bulkhead, "a", 1)  # first in line, but "a" holds its share
    c_waiter = queued(bulkhead, "c", 2)
    bulkhead.release("b")
    assert c_waiter.outcome() is True  # the freed slot passes over "a"
    assert (a_waiter.result, bulkhead.waiting, bulkhead.held("a"), bulkhead.held("c")) == (None, 1, 2, 1)
    bulkhead.release("b")  # a free slot now, and still none for "a"
    assert (a_waiter.result, bulkhead.waiting, bulkhead.inflight) == (None, 1, 3)
    bulkhead.release("a")  # "a" below its share: its waiter gets the slot
    assert a_waiter.outcome() is True
    assert (bulkhead.held("a"), bulkhead.inflight, bulkhead.waiting) == (2, 3, 0)


# -- the scenario ---------------------------------------------------------------------

FLOOD_THREADS = 12
OTHERS = 10
API_LATENCY = 0.2


class Flood:
    """One caller ("flood") asking with 12 threads, each call held by ``api_call(stop)`` until it
    returns; ``stop`` is set by `end`. The fake stands for the remote API, not for project code."""

    def __init__(self, bulkhead: Bulkhead, api_call: Callable[[threading.Event], object]):
        self.bulkhead = bulkhead
        self.api_call = api_call
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.peak_flood = 0
        self.peak_total = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(FLOOD_THREADS)]
        for t in self.threads:
            t.start()

    def observe(self) -> None:
        """Note what is in flight, from a thread holding a slot."""
        with self._lock:
            self.peak_flood = max(self.peak_flood, self.bulkhead.held("flood"))
            self.peak_total = max(self.peak_total, self.bulkhead.inflight)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.bulkhead.slot("flood") as ok:
                if ok:
                    self.observe()
                    self.api_call(self.stop)

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


@pytest.mark.parametrize(("per_key", "flood_holds", "another_gets_a_slot"), [(4, 4, False), (2, 2, True)])
def test_a_flooding_caller_holds_at_most_its_share(per_key: int, flood_holds: int, another_gets_a_slot: bool) -> None:
    """The remote calls never return here: what the flood can hold is all it holds. With the old
    share (all four slots) nothing is left for anyone; with half, two are."""
    bulkhead = Bulkhead(4, per_key=per_key, wait=5)
    answer = threading.Event()
    flood = Flood(bulkhead, lambda _stop: answer.wait())
    try:
        until(lambda: bulkhead.waiting == FLOOD_THREADS - flood_holds, "the flood's other threads waiting")
        assert (bulkhead.held("flood"), bulkhead.inflight) == (flood_holds, flood_holds)
        assert bulkhead.acquire("other", timeout=0) is another_gets_a_slot
    finally:
        answer.set()
        flood.end()
    assert flood.peak_flood == flood_holds


def test_one_caller_flooding_leaves_every_other_caller_a_slot() -> None:
    """The issue: 12 threads of one caller against a 200 ms API, 10 other callers making one call
    each, one after another, with the default share (2 of 4) and wait. All 10 are served, and the
    flood never holds more than its 2 slots."""
    bulkhead = Bulkhead(4)
    flood = Flood(bulkhead, lambda stop: stop.wait(API_LATENCY))  # ended early by flood.end()
    served: list[bool] = []
    try:
        until(lambda: bulkhead.held("flood") == 2 and bulkhead.waiting >= FLOOD_THREADS - 4, "the flood at its share")
        for i in range(OTHERS):
            key = f"caller-{i}"
            ok = bulkhead.acquire(key)
            served.append(ok)
            if ok:
                try:
                    flood.observe()
                    flood.stop.wait(API_LATENCY)  # its own call to the API
                finally:
                    bulkhead.release(key)
    finally:
        flood.end()
    assert served.count(True) == OTHERS
    assert (flood.peak_flood, flood.peak_total) == (2, 3)  # the flood's 2, and one other caller's
    assert (bulkhead.inflight, bulkhead.waiting) == (0, 0)


GEVENT_SCRIPT = """
from flask_bindcar.bulkhead import Bulkhead

early = Bulkhead(1, wait=5)  # made before patching, as under gunicorn --preload

from gevent import monkey

monkey.patch_all()

import threading

import gevent

bulkhead = Bulkhead(2, per_key=1, wait=5)
answer = threading.Event()
order = []


def call(key):
    with bulkhead.slot(key) as ok:
        order.append((key, ok))
        if ok:
            answer.wait()


first = [gevent.spawn(call, "a"), gevent.spawn(call, "b")]
gevent.idle()
then = [gevent.spawn(call, "a"), gevent.spawn(call, "c")]
gevent.idle()
killed = gevent.spawn(call, "d")
gevent.idle()
print(bulkhead.inflight, bulkhead.waiting)
killed.kill()
print(bulkhead.waiting)
answer.set()
gevent.joinall(first + then)
print(order, bulkhead.inflight, bulkhead.waiting)
short = Bulkhead(1, wait=0.01)
short.acquire("a")
print(gevent.spawn(short.acquire, "b").get(), short.waiting)
early.acquire("a")
waiter = gevent.spawn(early.acquire, "b")
gevent.idle()
early.release("a")
print(waiter.get(), early.held("b"))
"""


def test_under_gevent_waits_are_greenlet_switches() -> None:
    """Monkey patched, the waits are gevent's: greenlets wait, are handed slots in order, give up,
    and a killed waiter leaves nothing behind; a bulkhead made before patching works too."""
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    ).stdout.splitlines()
    assert out == [
        "2 3",
        "2",
        "[('a', True), ('b', True), ('a', True), ('c', True)] 0 0",
        "False 0",
        "True 1",
    ]
