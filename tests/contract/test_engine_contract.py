"""The engine contract: one suite, run against every engine (see ``conftest.engine``):
memory, and Redis as one primary, through Sentinel and as a 3-primary cluster.

What a gateway node may rely on whichever engine it runs on. Fan-out is awaited, never
assumed synchronous: the memory engine calls listeners at once, Redis via pub/sub. A
node listens to a channel before it expects its events (a cluster sends only those).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from renum_rt import protocol
from renum_rt.engines.base import AckRefused, Engine, Event, Publication, Replay
from renum_rt.ids import is_valid_id, parse_id

from .conftest import Feed, eventually

TS = 1_700_000_000_000


async def publish_many(engine: Engine, channel: str, count: int) -> list[str]:
    return [(await engine.publish([channel], "n", {"i": i}, TS + i))[channel] for i in range(count)]


async def listen(engine: Engine, *channels: str) -> None:
    """What a node does before it expects a channel's events (a cluster sends it only those)."""
    for channel in channels:
        await engine.listen(channel)


def per_channel(events: Sequence[tuple[Any, ...]]) -> dict[str, list[tuple[Any, ...]]]:
    """Events by channel, in the order they came: fan-out keeps each channel's order, and
    a cluster's shards carry different channels at their own pace."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for event in events:
        out.setdefault(event[0], []).append(event)
    return out


@pytest.mark.gen_test
async def test_publish_returns_one_id_per_channel(io_loop: object, engine: Engine) -> None:
    ids = await engine.publish(["user:u1", "team:t1", "execution:e1"], "team.updated", {"team_id": "t1"}, TS)
    assert sorted(ids) == ["execution:e1", "team:t1", "user:u1"]
    assert all(is_valid_id(event_id) for event_id in ids.values())


@pytest.mark.gen_test
async def test_ids_are_ordered_per_channel(io_loop: object, engine: Engine) -> None:
    a, b = [], []
    for i in range(30):
        ids = await engine.publish(["team:a", "team:b"] if i % 3 else ["team:a"], "n", {}, TS)
        a.append(ids["team:a"])
        if "team:b" in ids:
            b.append(ids["team:b"])
    for channel_ids in (a, b):
        keys = [parse_id(event_id) for event_id in channel_ids]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)


@pytest.mark.gen_test
async def test_history_after_since_is_exclusive_and_oldest_first(io_loop: object, engine: Engine) -> None:
    ids = await publish_many(engine, "team:t1", 5)
    replay = await engine.history("team:t1", ids[1], 100)
    assert replay.complete
    assert replay.events == [Event("team:t1", ids[i], TS + i, "n", {"i": i}) for i in range(2, 5)]
    everything = await engine.history("team:t1", None, 100)
    assert [e.id for e in everything.events] == ids and everything.complete
    assert await engine.history("team:t1", ids[-1], 100) == Replay([], True)


@pytest.mark.gen_test
async def test_history_limit_keeps_the_last_events_and_is_incomplete(io_loop: object, engine: Engine) -> None:
    ids = await publish_many(engine, "team:t1", 5)
    replay = await engine.history("team:t1", ids[0], 2)
    assert [e.id for e in replay.events] == ids[3:] and not replay.complete
    replay = await engine.history("team:t1", None, 2)
    assert [e.id for e in replay.events] == ids[3:] and not replay.complete
    replay = await engine.history("team:t1", ids[2], 2)
    assert [e.id for e in replay.events] == ids[3:] and replay.complete


@pytest.mark.gen_test
@pytest.mark.retention(max_len=3)
async def test_retention_by_length(io_loop: object, engine: Engine) -> None:
    ids = await publish_many(engine, "user:u1", 5)
    everything = await engine.history("user:u1", None, 100)
    assert [e.id for e in everything.events] == ids[2:] and everything.complete
    dropped_after = await engine.history("user:u1", ids[0], 100)
    assert [e.id for e in dropped_after.events] == ids[2:] and not dropped_after.complete
    last_dropped = await engine.history("user:u1", ids[1], 100)
    assert [e.id for e in last_dropped.events] == ids[2:] and last_dropped.complete


@pytest.mark.gen_test(timeout=15)
@pytest.mark.retention(max_age_s=2)
async def test_retention_by_age(io_loop: object, engine: Engine) -> None:
    start = time.monotonic()
    old = await publish_many(engine, "team:t1", 2)
    await asyncio.sleep(1)  # time must pass: "new" is younger than "old" by a second
    new = (await engine.publish(["team:t1"], "n", {}, TS))["team:t1"]

    async def only_new_left() -> bool:
        return [e.id for e in (await engine.history("team:t1", None, 100)).events] == [new]

    await eventually(only_new_left, timeout=3)
    assert time.monotonic() - start < 2.8, "too slow to observe the window where only 'new' is retained"
    assert not (await engine.history("team:t1", old[0], 100)).complete
    assert await engine.history("team:t1", old[1], 100) == Replay([Event("team:t1", new, TS, "n", {})], True)

    async def nothing_left() -> bool:
        return not (await engine.history("team:t1", None, 100)).events

    await eventually(nothing_left, timeout=3)
    assert not (await engine.history("team:t1", old[1], 100)).complete


@pytest.mark.gen_test
async def test_latest_state_only_for_execution_channels(io_loop: object, engine: Engine) -> None:
    await engine.publish(["execution:e1", "team:t1"], "execution.status", {"status": "queued"}, TS)
    ids = await engine.publish(["execution:e1", "team:t1"], "execution.status", {"status": "running"}, TS + 1)
    assert await engine.latest("execution:e1") == Event(
        "execution:e1", ids["execution:e1"], TS + 1, "execution.status", {"status": "running"}
    )
    assert await engine.latest("team:t1") is None
    assert await engine.latest("execution:never") is None


@pytest.mark.gen_test
async def test_admin_channel_is_live_only(io_loop: object, engine: Engine, feed: Feed) -> None:
    await engine.listen("admin")
    first = (await engine.publish(["admin"], "stats", {"connections": 1}, TS))["admin"]
    second = (await engine.publish(["admin"], "stats", {"connections": 2}, TS))["admin"]
    assert is_valid_id(first) and parse_id(first) < parse_id(second)
    await feed.wait_for(lambda: len(feed.events) == 2)
    assert [event_id for _, event_id, _ in feed.events] == [first, second]
    assert (await engine.history("admin", None, 100)).events == []


@pytest.mark.gen_test
async def test_ack_cursor_never_moves_backwards(io_loop: object, engine: Engine) -> None:
    ids = await publish_many(engine, "user:u1", 5)
    assert await engine.cursor("user:u1") is None
    assert await engine.ack("user:u1", ids[2]) == ids[2]
    assert await engine.ack("user:u1", ids[0]) == ids[2]
    assert await engine.cursor("user:u1") == ids[2]
    assert await engine.ack("user:u1", ids[4]) == ids[4]
    assert await engine.cursor("user:u1") == ids[4]
    assert await engine.cursor("user:u2") is None


@pytest.mark.gen_test
async def test_control_messages_reach_the_listener(io_loop: object, engine: Engine, feed: Feed) -> None:
    message = {"type": "disconnect", "user_id": "u1", "code": 4009}
    await engine.control(message)
    await feed.wait_for(lambda: len(feed.controls) == 1)
    assert feed.controls == [message]


@pytest.mark.gen_test
async def test_fan_out_hands_over_the_encoded_event_frame(io_loop: object, engine: Engine, feed: Feed) -> None:
    data: dict[str, Any] = {"title": "Olá / ünïcode ✓", "nested": {"list": [1, 2.5, None, True]}, "quote": "\"\n"}
    await listen(engine, "user:u1", "team:t1")
    first = await engine.publish(["user:u1", "team:t1"], "notification.created", data, TS)
    second = await engine.publish(["user:u1"], "notification.updated", {"ids": ["x"]}, TS + 1)
    sent: list[tuple[str, str, int, str, dict[str, Any]]] = [
        ("user:u1", first["user:u1"], TS, "notification.created", data),
        ("team:t1", first["team:t1"], TS, "notification.created", data),
        ("user:u1", second["user:u1"], TS + 1, "notification.updated", {"ids": ["x"]}),
    ]
    expected = [(c, i, protocol.event_frame(c, i, ts, name, d)) for c, i, ts, name, d in sent]
    await feed.wait_for(lambda: len(feed.events) == 3)
    assert per_channel(feed.events) == per_channel(expected)


@pytest.mark.gen_test
async def test_concurrent_acks_newest_wins_and_only_an_ack_past_the_newest_event_is_refused(
    io_loop: object, engine: Engine
) -> None:
    ids = await publish_many(engine, "user:u1", 4)
    beyond = f"{parse_id(ids[-1])[0] + 60_000}-0"
    answers = await asyncio.gather(engine.ack("user:u1", ids[1]), engine.ack("user:u1", ids[3]),
                                   engine.ack("user:u1", beyond), engine.ack("user:u1", ids[0]),
                                   return_exceptions=True)
    assert isinstance(answers[2], AckRefused)
    for acked, answer in zip([ids[1], ids[3], None, ids[0]], answers, strict=True):
        if acked is not None:  # the cursor after the move: at least this ack, at most the newest one
            assert isinstance(answer, str) and parse_id(acked) <= parse_id(answer) <= parse_id(ids[3]), answer
    assert await engine.cursor("user:u1") == ids[3]


@pytest.mark.gen_test
async def test_a_publish_with_an_idempotency_key_is_stored_once(io_loop: object, engine: Engine, feed: Feed) -> None:
    await listen(engine, "user:u1", "team:t1")
    first = await engine.publish(["user:u1", "team:t1"], "n", {"i": 1}, TS, idempotency_key="k1", ttl_s=60)
    # a retry (even with another event) gets the first ids and stores nothing
    again = await engine.publish(["user:u1", "team:t1"], "other", {"i": 2}, TS + 1, idempotency_key="k1", ttl_s=60)
    assert again == first
    other = await engine.publish(["user:u1"], "n", {"i": 3}, TS + 2, idempotency_key="k2", ttl_s=60)
    assert [e.id for e in (await engine.history("user:u1", None, 10)).events] == [first["user:u1"], other["user:u1"]]
    await feed.wait_for(lambda: len(feed.events) >= 3)  # the last publish's fan-out comes after any earlier one
    assert per_channel([(c, i) for c, i, _ in feed.events]) == {"user:u1": [("user:u1", first["user:u1"]),
                                                                            ("user:u1", other["user:u1"])],
                                                                "team:t1": [("team:t1", first["team:t1"])]}


@pytest.mark.gen_test
async def test_concurrent_publishes_with_one_key_store_once_and_none_waits(io_loop: object, engine: Engine) -> None:
    # no "in progress" state: every request with the key gets the same answer, none a refusal
    answers = await asyncio.gather(*(engine.publish(["team:t1"], "n", {"i": i}, TS, idempotency_key="k", ttl_s=60)
                                     for i in range(5)))
    assert all(answer == answers[0] for answer in answers)
    assert [e.id for e in (await engine.history("team:t1", None, 10)).events] == [answers[0]["team:t1"]]


@pytest.mark.gen_test
async def test_publishes_and_a_batch_of_one_loop_turn_are_each_answered_in_order(
    io_loop: object, engine: Engine, feed: Feed
) -> None:
    # on Redis these are one script call (group commit); every engine answers each
    # caller with its own ids, in the order the calls were made
    await listen(engine, "user:u1", "team:t1")
    batch = [Publication(["team:t1"], "b", {"i": i}, TS, idempotency_key="k" if i != 1 else None, ttl_s=60)
             for i in range(3)]  # the first and last items share a key: stored once
    answers = await asyncio.gather(*(engine.publish(["team:t1", "user:u1"], "n", {"i": i}, TS) for i in range(5)),
                                   engine.publish_batch(batch),
                                   engine.publish(["team:t1"], "n", {"i": 5}, TS))
    singles, batched, last = answers[:5], answers[5], answers[6]
    assert isinstance(batched, list) and batched[0] == batched[2] and batched[1] != batched[0]
    expected = [a["team:t1"] for a in singles] + [batched[0]["team:t1"], batched[1]["team:t1"], last["team:t1"]]
    keys = [parse_id(i) for i in expected]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert [e.id for e in (await engine.history("team:t1", None, 20)).events] == expected
    assert [e.id for e in (await engine.history("user:u1", None, 20)).events] == [a["user:u1"] for a in singles]
    await feed.wait_for(lambda: len(feed.events) >= 13)
    assert [i for c, i, _ in feed.events if c == "team:t1"] == expected  # live order is stored order
    assert await engine.publish_batch([]) == []


@pytest.mark.gen_test(timeout=10)
async def test_an_idempotency_key_publishes_again_once_its_answer_expired(io_loop: object, engine: Engine) -> None:
    first = await engine.publish(["team:t1"], "n", {}, TS, idempotency_key="k", ttl_s=1)

    async def published_again() -> bool:
        return await engine.publish(["team:t1"], "n", {}, TS, idempotency_key="k", ttl_s=1) != first

    await eventually(published_again, timeout=3, interval=0.1)
    assert len((await engine.history("team:t1", None, 10)).events) == 2


@pytest.mark.gen_test(timeout=10)
async def test_nodes_expire_without_heartbeat(io_loop: object, engine: Engine) -> None:
    await engine.heartbeat("n1", {"node": "n1", "connections": 3}, ttl_s=1)
    await engine.heartbeat("n2", {"node": "n2", "connections": 5}, ttl_s=30)
    await engine.heartbeat("n2", {"node": "n2", "connections": 6}, ttl_s=30)
    assert sorted((await engine.nodes()), key=lambda s: s["node"]) == [
        {"node": "n1", "connections": 3},
        {"node": "n2", "connections": 6},
    ]

    async def only_n2() -> bool:
        return await engine.nodes() == [{"node": "n2", "connections": 6}]

    await eventually(only_n2, timeout=3)


@pytest.mark.gen_test
async def test_connection_limit_per_user(io_loop: object, engine: Engine) -> None:
    await engine.heartbeat("n1", {"node": "n1"}, ttl_s=30)  # a gateway's first step at start
    assert await engine.connection_opened("n1", "u1", 2)
    assert await engine.connection_opened("n1", "u1", 2)
    assert not await engine.connection_opened("n1", "u1", 2)
    assert await engine.connection_opened("n1", "u2", 2)
    await engine.connection_closed("n1", "u1")
    assert await engine.connection_opened("n1", "u1", 2)
    assert not await engine.connection_opened("n1", "u1", 2)
    for _ in range(2):
        await engine.connection_closed("n1", "u1")
    assert await engine.connection_opened("n1", "u1", 1)
