"""The contract's reconnection schedule, exactly, with a fake random source."""

from __future__ import annotations

import dataclasses

import pytest

from renum_rt.client.backoff import Backoff, backoff_delay_ms


def test_schedule_without_jitter_doubles_from_base_up_to_max() -> None:
    delays = [backoff_delay_ms(n, jitter=False) for n in range(1, 10)]
    assert delays == [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]


def test_full_jitter_scales_the_capped_delay_by_rand() -> None:
    assert backoff_delay_ms(1, rand=lambda: 0.5) == 250
    assert backoff_delay_ms(3, rand=lambda: 0.25) == 500
    assert backoff_delay_ms(20, rand=lambda: 0.5) == 15000  # capped at max_ms first
    assert backoff_delay_ms(4, rand=lambda: 0.0) == 0


def test_rand_is_called_once_and_only_with_jitter() -> None:
    calls: list[int] = []

    def rand() -> float:
        calls.append(1)
        return 0.999

    assert backoff_delay_ms(2, rand=rand) == pytest.approx(999)
    assert calls == [1]
    assert backoff_delay_ms(2, jitter=False, rand=rand) == 1000
    assert calls == [1]


def test_custom_base_factor_and_max() -> None:
    delays = [backoff_delay_ms(n, base_ms=200, max_ms=2000, factor=3, jitter=False) for n in range(1, 5)]
    assert delays == [200, 600, 1800, 2000]


def test_huge_attempt_numbers_stay_at_max() -> None:
    assert backoff_delay_ms(5000, jitter=False) == 30000
    assert backoff_delay_ms(5000, factor=10.0, rand=lambda: 0.5) == 15000


def test_attempts_are_one_based() -> None:
    with pytest.raises(ValueError):
        backoff_delay_ms(0)


def test_backoff_policy_defaults_match_the_contract() -> None:
    policy = Backoff()
    assert (policy.attempts, policy.base_ms, policy.max_ms, policy.factor, policy.jitter) == (5, 500, 30000, 2.0, True)
    assert policy.delay_ms(2, rand=lambda: 0.5) == 500
    assert Backoff(jitter=False).delay_ms(6) == 16000


def test_backoff_policy_is_frozen_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Backoff().attempts = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        Backoff(factor=0.5)
    with pytest.raises(ValueError):
        Backoff(attempts=-1)
