"""The single-flight core on its own: what both caches inherit, with a cache of plain numbers.

The TokenReview cache (`test_review_cache.py`) and the decision cache (`test_authz.py`) pin the
behaviour users see; these pin the core's own contract with a subclass: what it hands `_lead`,
what it keeps, and that one slow key holds up no other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

import pytest

from flask_bindcar.errors import API_BAD_RESPONSE
from flask_bindcar.flight import CacheResult, Kept, SingleFlightCache


class Refused(Exception):
    def __init__(self, why: str, reason: str):
        super().__init__(why)
        self.why, self.reason = why, reason


class Numbers(SingleFlightCache[Callable[[], int], int, Refused]):
    """Keeps each answer 0.2 s fresh and 60 s stale; answers with the kept one when asked to."""

    def __init__(self, max_size: int = 10) -> None:
        super().__init__(max_size=max_size, wait_timeout=1, errors=Refused, failed=Refused, what="a number")
        self.handed: list[Kept[int] | None] = []

    def _lead(self, key: Hashable, question: Callable[[], int], kept: Kept[int] | None) -> tuple[int, CacheResult]:
        self.handed.append(kept)
        try:
            value = question()
        except Refused:
            if kept is None:
                raise
            return kept.value, "stale"
        now = time.monotonic()
        self.keep(key, value, now + 0.2, now + 60)
        return value, "miss"


def refuse() -> int:
    raise Refused("down", "api_unreachable")


def test_lead_is_handed_what_is_kept_past_its_freshness() -> None:
    cache = Numbers()
    assert cache.get_or_lead("a", lambda: 1) == (1, "miss")
    assert cache.get_or_lead("a", lambda: 2) == (1, "hit")
    time.sleep(0.25)
    assert cache.get_or_lead("a", refuse) == (1, "stale")
    assert cache.get_or_lead("a", lambda: 3) == (3, "miss")
    [nothing, stale, again] = cache.handed
    assert nothing is None and stale is not None and stale.value == 1 and again is not None


def test_an_error_is_never_kept_and_the_next_request_asks_again() -> None:
    cache, asked = Numbers(), []

    def failing() -> int:
        asked.append(1)
        raise Refused("down", "api_unreachable")

    for _ in range(2):
        with pytest.raises(Refused):
            cache.get_or_lead("a", failing)
    assert (len(asked), len(cache)) == (2, 0)
    with pytest.raises(Refused) as info:  # another class of error: the cache's own, with its type only
        cache.get_or_lead("a", lambda: 1 // 0)
    assert (info.value.why, info.value.reason) == ("ZeroDivisionError", API_BAD_RESPONSE)


def test_keep_forgets_the_least_recently_used_and_stale_defaults_to_fresh() -> None:
    cache = Numbers(max_size=2)
    now = time.monotonic()
    for key in "abc":
        cache.keep(key, ord(key), now + 60)
        if key == "b":
            assert cache.get_or_lead("a", refuse) == (ord("a"), "hit")  # a is the most recent now
    assert len(cache) == 2
    assert cache.get_or_lead("a", refuse) == (ord("a"), "hit")
    assert cache.get_or_lead("b", lambda: 0) == (0, "miss")  # b went
    cache.keep("d", 4, now - 1)  # no stale_until: gone once not fresh
    assert cache.get_or_lead("d", lambda: 5) == (5, "miss")
    assert cache.handed[-1] is None


def test_a_slow_key_holds_up_no_other() -> None:
    cache, started, release = Numbers(), threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        release.wait(5)
        return 1

    leader = threading.Thread(target=cache.get_or_lead, args=("slow", slow))
    leader.start()
    try:
        assert started.wait(5)
        begun = time.monotonic()
        assert cache.get_or_lead("quick", lambda: 2) == (2, "miss")
        assert time.monotonic() - begun < 0.5
    finally:
        release.set()
        leader.join(5)
    assert cache.get_or_lead("slow", lambda: 3) == (1, "hit")
