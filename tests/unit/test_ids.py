"""Event ids: "<ms>-<seq>", ordered numerically, monotonic whatever the clock does."""

from __future__ import annotations

from typing import Any

import pytest

from renum_rt.ids import format_id, is_valid_id, next_id, parse_id


@pytest.mark.parametrize(
    "event_id, key",
    [("0-0", (0, 0)), ("1700000000000-0", (1700000000000, 0)), ("1700000000000-42", (1700000000000, 42)),
     ("9999999999999999999-9999999999999999999", (10**19 - 1, 10**19 - 1))],
)
def test_parse_and_format_round_trip(event_id: str, key: tuple[int, int]) -> None:
    assert parse_id(event_id) == key
    assert format_id(key) == event_id
    assert is_valid_id(event_id)


@pytest.mark.parametrize("event_id", ["18446744073709551616-0", "0-18446744073709551616", "99999999999999999999999-0"])
def test_ids_past_what_redis_accepts_are_refused(event_id: str) -> None:
    assert not is_valid_id(event_id)
    with pytest.raises(ValueError):
        parse_id(event_id)


def test_order_is_numeric_not_lexicographic() -> None:
    ids = ["9-0", "10-0", "10-2", "10-10", "100-1"]
    assert sorted(ids, key=parse_id) == ids
    assert sorted(ids) != ids


@pytest.mark.parametrize(
    "event_id",
    ["", "-", "1", "1-", "-1", "a-0", "1-a", "1-2-3", "-1-0", "1--1", "+1-0", " 1-0", "1-0 ", "1.5-0", "1-0x1",
     "0x1-0", "1_000-0", "1" * 30 + "-" + "1" * 30],
)
def test_invalid_ids(event_id: str) -> None:
    with pytest.raises(ValueError):
        parse_id(event_id)
    assert not is_valid_id(event_id)


@pytest.mark.parametrize("value", [None, 1, 1.5, b"1-0", ["1-0"], (1, 0)])
def test_non_strings_are_not_ids(value: Any) -> None:
    assert not is_valid_id(value)


@pytest.mark.parametrize("event_id", ["\u0661\u0662-0", "1-\u0660", "\uff11-0"])
def test_non_ascii_digits_are_not_ids(event_id: str) -> None:
    assert not is_valid_id(event_id)


def test_superscript_digits_are_refused_with_value_error() -> None:
    # "²".isdigit() is True but int("²") fails: still a ValueError, never another exception
    with pytest.raises(ValueError):
        parse_id("\u00b2-0")
    assert not is_valid_id("\u00b2-0")


def test_next_id_moves_with_the_clock() -> None:
    assert next_id((0, 0), 1000) == (1000, 0)
    assert next_id((1000, 5), 1001) == (1001, 0)


def test_next_id_same_millisecond_increments_sequence() -> None:
    assert next_id((1000, 0), 1000) == (1000, 1)
    assert next_id((1000, 41), 1000) == (1000, 42)


def test_next_id_is_monotonic_when_the_clock_goes_backwards() -> None:
    key = (0, 0)
    seen = []
    for now_ms in [1000, 1000, 1005, 990, 500, 1005, 1006, 1, 1006, 2000]:
        key = next_id(key, now_ms)
        seen.append(key)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[3] == (1005, 1) and seen[4] == (1005, 2) and seen[5] == (1005, 3)
    assert seen[6] == (1006, 0) and seen[7] == (1006, 1)
    ids = [format_id(k) for k in seen]
    assert [parse_id(i) for i in ids] == seen
