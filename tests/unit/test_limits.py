"""Token buckets: exact arithmetic over times passed in by the caller."""

from __future__ import annotations

import pytest

from renum_rt.limits import KeyedBuckets, TokenBucket


def test_starts_full_and_refuses_when_empty() -> None:
    b = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.retry_after(0.0) == 0.5


def test_refill_is_exact() -> None:
    b = TokenBucket(rate=4.0, burst=2, now=10.0)
    assert b.take(10.0) and b.take(10.0) and not b.take(10.0)
    assert not b.take(10.125)  # half a token
    assert b.retry_after(10.125) == 0.125
    assert b.take(10.25)  # a whole token
    assert not b.take(10.25)
    assert b.retry_after(10.25) == 0.25


def test_refill_caps_at_burst() -> None:
    b = TokenBucket(rate=100.0, burst=3, now=0.0)
    for _ in range(3):
        b.take(0.0)
    assert b.retry_after(3600.0) == 0.0
    assert [b.take(3600.0) for _ in range(4)] == [True, True, True, False]


def test_retry_after_is_zero_when_a_token_is_there() -> None:
    b = TokenBucket(rate=1.0, burst=1, now=0.0)
    assert b.retry_after(0.0) == 0.0
    b.take(0.0)
    assert b.retry_after(0.0) == 1.0
    assert b.retry_after(0.75) == 0.25
    assert b.retry_after(1.0) == 0.0
    # retry_after does not take anything
    assert b.take(1.0) and not b.take(1.0)


def test_cost() -> None:
    b = TokenBucket(rate=1.0, burst=4, now=0.0)
    assert b.take(0.0, cost=3.0)
    assert not b.take(0.0, cost=2.0)
    assert b.retry_after(0.0, cost=2.0) == 1.0
    assert b.take(0.0, cost=1.0)  # a refused request took nothing


def test_clock_going_backwards_neither_refills_nor_breaks() -> None:
    b = TokenBucket(rate=1.0, burst=1, now=100.0)
    assert b.take(100.0)
    assert not b.take(50.0)
    assert b.retry_after(50.0) == 1.0
    assert not b.take(100.5)
    assert b.take(101.0)


def test_fractional_rate() -> None:
    b = TokenBucket(rate=0.5, burst=1, now=0.0)
    assert b.take(0.0)
    assert b.retry_after(0.0) == 2.0
    assert not b.take(1.0)
    assert b.take(2.0)


def test_keyed_buckets_are_independent() -> None:
    kb = KeyedBuckets(rate=2.0, burst=2)
    assert kb.take("a", 0.0) == 0.0
    assert kb.take("a", 0.0) == 0.0
    assert kb.take("a", 0.0) == 0.5
    # another key has its own full bucket
    assert kb.take("b", 0.0) == 0.0
    assert kb.take("b", 0.0) == 0.0
    assert kb.take("b", 0.25) == 0.25  # half a token back: a quarter second to wait
    # "a" is not affected by "b", and a new key created late starts full at its own time
    assert kb.take("a", 0.5) == 0.0
    assert kb.take("c", 0.5) == 0.0
    assert kb.take("c", 0.5) == 0.0
    assert kb.take("c", 0.5) == 0.5


@pytest.mark.parametrize("rate, burst", [(1.0, 1), (50.0, 100), (0.25, 3)])
def test_sustained_rate_matches_configuration(rate: float, burst: int) -> None:
    b = TokenBucket(rate, burst, now=0.0)
    served = sum(b.take(i / 64) for i in range(64 * 8))  # 8 seconds, 64 tries per second
    assert served == burst + int(rate * (8 - 1 / 64))
