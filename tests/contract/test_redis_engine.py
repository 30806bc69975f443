"""What only the Redis engine promises: outages, write refusals, lost replies, load,
several nodes, durability, key prefixes.

Every test runs against a real ``redis-server``; the ones that stop, kill, reconfigure or
inspect it get one of their own (``own_redis_server``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from renum_rt import protocol
from renum_rt.engines.base import AckRefused, Engine, EngineUnavailable, Event, Publication, Replay, Retention
from renum_rt.engines.turns import TurnGroup
from renum_rt.ids import parse_id
from tests.support.redis_server import RedisServer

from .conftest import Feed, LogRecords, LossyProxy, OpenEngine, eventually

TS = 1_700_000_000_000


def every_call(engine: Engine) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each method that needs the store (``ping`` answers False instead)."""
    return {
        "publish": lambda: engine.publish(["team:t1", "admin"], "n", {}, TS),
        "history": lambda: engine.history("team:t1", None, 10),
        "latest": lambda: engine.latest("execution:e1"),
        "ack": lambda: engine.ack("team:t1", "1-0"),  # after the publish above: not beyond the newest
        "cursor": lambda: engine.cursor("user:u1"),
        "control": lambda: engine.control({"type": "noop"}),
        "publish with a key": lambda: engine.publish(["team:t1"], "n", {}, TS, idempotency_key="k", ttl_s=60),
        "heartbeat": lambda: engine.heartbeat("n1", {}, 30),
        "nodes": lambda: engine.nodes(),
        "connection_opened": lambda: engine.connection_opened("n1", "u1", 5),
        "connection_closed": lambda: engine.connection_closed("n1", "u1"),
    }


async def healthy(engine: Engine) -> bool:
    return await engine.ping()


async def unhealthy(engine: Engine) -> bool:
    return not await engine.ping()


@pytest.mark.gen_test(timeout=20)
async def test_every_method_is_unavailable_while_redis_is_down_then_recovers(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine, engine_log: LogRecords
) -> None:
    engine = await open_engine("redis", Feed(), url=own_redis_server.url)
    calls = every_call(engine)
    for call in calls.values():
        await call()
    own_redis_server.stop()
    assert await engine.ping() is False
    for name, call in calls.items():
        with pytest.raises(EngineUnavailable):
            await call()
            pytest.fail(f"{name} did not raise EngineUnavailable")
    # each refusal was logged once, with its command and reason (never the data)
    logged = [line for line in engine_log.lines("engine unavailable") if line["command"] != "ping"]
    assert sorted(line["command"] for line in logged) == sorted(name.split()[0] for name in calls)
    assert all(line["level"] == "WARNING" and line["reason"] for line in logged)
    own_redis_server.start()
    await eventually(lambda: healthy(engine))  # ping probes at most once a second
    for call in calls.values():
        await call()


@pytest.mark.gen_test(timeout=20)
async def test_pubsub_resubscribes_and_resyncs_after_interruptions(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    feed = Feed()
    engine = await open_engine("redis", feed, url=own_redis_server.url)
    assert feed.resyncs == 0
    seen = (await engine.publish(["team:t0"], "n", {}, TS))["team:t0"]
    await feed.wait_for(lambda: len(feed.events) == 1)
    with redis.Redis(port=own_redis_server.port, socket_timeout=2) as admin:
        assert admin.client_kill_filter(_type="pubsub") == 1  # a dropped connection, Redis still up
        missed = admin.xadd(f"{engine._prefix}s:team:quiet", {"n": "n", "d": "{}", "t": TS}).decode()
    await feed.wait_for(lambda: feed.resyncs == 1)
    # the mark says from where to re-read: after what the feed delivered, before what it missed
    assert parse_id(seen) <= parse_id(feed.resync_marks[0]) <= parse_id(missed)
    own_redis_server.stop()  # an outage
    own_redis_server.start()
    await feed.wait_for(lambda: feed.resyncs == 2, timeout=8)
    ids = await engine.publish(["team:t1"], "n", {}, TS)
    await feed.wait_for(lambda: len(feed.events) == 2)
    frame = protocol.event_frame("team:t1", ids["team:t1"], TS, "n", {})
    assert feed.events[1:] == [("team:t1", ids["team:t1"], frame)]


@pytest.mark.gen_test(timeout=20)
async def test_start_while_redis_is_down(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    own_redis_server.stop()
    feed = Feed()
    engine = await open_engine("redis", feed, url=own_redis_server.url)
    assert await engine.ping() is False
    with pytest.raises(EngineUnavailable):
        await engine.publish(["team:t1"], "n", {}, TS)
    own_redis_server.start()
    # the node was live since start without a feed: it hears about it like after an outage
    await feed.wait_for(lambda: feed.resyncs == 1, timeout=8)
    await engine.control({"type": "hello"})
    await feed.wait_for(lambda: feed.controls == [{"type": "hello"}])


@pytest.mark.gen_test(timeout=10)
async def test_two_nodes_share_events_control_and_counts(
    io_loop: object, redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    feed_a, feed_b = Feed(), Feed()
    a = await open_engine("redis", feed_a, url=redis_server.url)
    b = await open_engine("redis", feed_b, url=redis_server.url)

    ids = await a.publish(["team:t1", "user:u1"], "team.updated", {"team_id": "t1"}, TS)
    expected = [(c, ids[c], protocol.event_frame(c, ids[c], TS, "team.updated", {"team_id": "t1"})) for c in ids]
    await b.control({"type": "disconnect", "user_id": "u1"})
    for feed in (feed_a, feed_b):
        await feed.wait_for(lambda feed=feed: len(feed.events) == 2 and len(feed.controls) == 1)
        assert feed.events == expected
        assert feed.controls == [{"type": "disconnect", "user_id": "u1"}]
    stored = Event("team:t1", ids["team:t1"], TS, "team.updated", {"team_id": "t1"})
    assert (await b.history("team:t1", None, 10)).events == [stored]

    await a.heartbeat("na", {"node": "na"}, 30)
    await b.heartbeat("nb", {"node": "nb"}, 30)
    assert sorted(s["node"] for s in await a.nodes()) == ["na", "nb"]
    assert await a.connection_opened("na", "u1", 2)
    assert await b.connection_opened("nb", "u1", 2)
    assert not await a.connection_opened("na", "u1", 2)
    await b.connection_closed("nb", "u1")
    assert await a.connection_opened("na", "u1", 2)


@pytest.mark.gen_test(timeout=20)
async def test_data_survives_a_redis_crash(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    before = await open_engine("redis", Feed(), url=own_redis_server.url)
    ids = [await before.publish(["user:u1", "execution:e1"], "n", {"i": i}, TS + i) for i in range(3)]
    await before.ack("user:u1", ids[1]["user:u1"])
    kept = await before.publish(["user:u1"], "n", {"i": 3}, TS, idempotency_key="k1", ttl_s=600)
    history = await before.history("user:u1", None, 10)
    latest = await before.latest("execution:e1")

    own_redis_server.kill()  # SIGKILL: only what the AOF holds survives
    own_redis_server.start()

    after = await open_engine("redis", Feed(), url=own_redis_server.url)
    for engine in (before, after):  # the old engine recovers; a restarted process finds the data
        assert await engine.history("user:u1", None, 10) == history
        assert await engine.history("user:u1", ids[0]["user:u1"], 10) == Replay(history.events[1:], True)
        assert await engine.latest("execution:e1") == latest
        assert await engine.cursor("user:u1") == ids[1]["user:u1"]
        assert await engine.publish(["user:u1"], "n", {}, TS, idempotency_key="k1", ttl_s=600) == kept
    new = await after.publish(["user:u1"], "n", {}, TS)
    assert parse_id(new["user:u1"]) > parse_id(kept["user:u1"])


@pytest.mark.gen_test(timeout=10)
async def test_connections_of_a_dead_node_stop_counting(
    io_loop: object, redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    engine = await open_engine("redis", Feed(), url=redis_server.url)
    await engine.heartbeat("dying", {"node": "dying"}, ttl_s=1)
    await engine.heartbeat("alive", {"node": "alive"}, ttl_s=30)
    assert await engine.connection_opened("dying", "u1", 2)
    assert await engine.connection_opened("dying", "u1", 2)
    assert not await engine.connection_opened("alive", "u1", 2)

    async def dying_is_gone() -> bool:
        return [s["node"] for s in await engine.nodes()] == ["alive"]

    await eventually(dying_is_gone, timeout=3)
    assert await engine.connection_opened("alive", "u1", 2)
    assert await engine.connection_opened("alive", "u1", 2)
    assert not await engine.connection_opened("alive", "u1", 2)


@pytest.mark.gen_test(timeout=10)
async def test_key_prefixes_isolate_deployments(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    feed_a, feed_b = Feed(), Feed()
    url = own_redis_server.url
    a = await open_engine("redis", feed_a, Retention(max_len=10, max_age_s=60), url=url, prefix="one:")
    b = await open_engine("redis", feed_b, Retention(max_len=10, max_age_s=60), url=url, prefix="two:")

    ids = await a.publish(["team:t1", "execution:e1", "user:u1", "admin"], "n", {}, TS, idempotency_key="k1")
    await a.ack("user:u1", ids["user:u1"])
    await a.control({"type": "hello"})
    await a.heartbeat("n1", {"node": "n1"}, 30)
    assert await a.connection_opened("n1", "u1", 1)

    assert await b.history("team:t1", None, 10) == Replay([], True)
    assert await b.latest("execution:e1") is None
    assert await b.cursor("user:u1") is None
    assert await b.nodes() == []
    await b.heartbeat("n1", {"node": "n1"}, 30)
    assert await b.connection_opened("n1", "u1", 1)
    own = await b.publish(["team:t1"], "n", {}, TS, idempotency_key="k1")  # a's key is not b's
    assert [e.id for e in (await b.history("team:t1", None, 10)).events] == [own["team:t1"]]
    # b's own event arrives after anything of a's that Redis would have delivered to b
    await feed_b.wait_for(lambda: len(feed_b.events) >= 1)
    assert [event_id for _, event_id, _ in feed_b.events] == [own["team:t1"]] and feed_b.controls == []
    await feed_a.wait_for(lambda: len(feed_a.events) == 4 and len(feed_a.controls) == 1)

    with redis.Redis(port=own_redis_server.port, socket_timeout=2) as raw:
        keys = sorted(key.decode() for key in raw.keys("*"))
        channels = sorted(channel.decode() for channel in raw.pubsub_channels())
    assert keys and all(key.startswith(("one:", "two:")) for key in keys), keys
    assert channels == ["one:control", "one:fanout", "two:control", "two:fanout"]


@pytest.mark.gen_test(timeout=10)
async def test_a_lost_reply_never_stores_a_publish_twice(
    io_loop: object, lossy_proxy: LossyProxy, open_engine: OpenEngine, engine_log: LogRecords
) -> None:
    engine = await open_engine("redis", Feed(), url=lossy_proxy.url)
    first = await engine.publish(["team:t1"], "n", {"try": 0}, TS)  # loads the script, pools a connection

    lossy_proxy.lose_reply_to(b"EVALSHA")
    with pytest.raises(EngineUnavailable):  # Redis stored it, but the answer never came back ...
        await engine.publish(["team:t1"], "n", {"try": 1}, TS)
    stored = [e.id for e in (await engine.history("team:t1", None, 10)).events]
    assert len(stored) == 2  # ... and without a key it was not sent again
    assert [line["command"] for line in engine_log.lines("engine unavailable")] == ["publish"]

    lossy_proxy.lose_reply_to(b"EVALSHA")
    ids = await engine.publish(["team:t1"], "n", {"try": 2}, TS, idempotency_key="k")
    # with a key, the engine sent it again and got the ids of the copy Redis stored
    assert [e.id for e in (await engine.history("team:t1", None, 10)).events] == [*stored, ids["team:t1"]]
    assert lossy_proxy.lost == 2 and stored[0] == first["team:t1"]


@pytest.mark.gen_test(timeout=10)
async def test_a_lost_reply_to_a_group_never_stores_a_keyed_publish_twice(
    io_loop: object, lossy_proxy: LossyProxy, open_engine: OpenEngine
) -> None:
    engine = await open_engine("redis", Feed(), url=lossy_proxy.url)
    await engine.publish(["team:t1"], "n", {}, TS)  # loads the script, pools a connection
    lossy_proxy.lose_reply_to(b"EVALSHA")
    # every member keyed: the group is sent again, and each gets the ids of the copy Redis stored
    keyed = await asyncio.gather(*(engine.publish(["team:t1"], "n", {"i": i}, TS, idempotency_key=f"k{i}")
                                   for i in range(3)))
    stored = [e.id for e in (await engine.history("team:t1", None, 10)).events]
    assert stored[1:] == [ids["team:t1"] for ids in keyed]
    lossy_proxy.lose_reply_to(b"EVALSHA")
    # one member without a key: the group is not sent again, every member is unavailable
    mixed = await asyncio.gather(engine.publish(["team:t1"], "n", {}, TS, idempotency_key="k9"),
                                 engine.publish(["team:t1"], "n", {}, TS), return_exceptions=True)
    assert all(isinstance(answer, EngineUnavailable) for answer in mixed)
    assert len((await engine.history("team:t1", None, 10)).events) == len(stored) + 2  # stored once each
    retried = await engine.publish(["team:t1"], "n", {}, TS, idempotency_key="k9")  # the keyed one, safely
    assert len((await engine.history("team:t1", None, 10)).events) == len(stored) + 2
    assert retried["team:t1"] == (await engine.history("team:t1", None, 10)).events[-2].id
    assert lossy_proxy.lost == 2


@pytest.mark.gen_test(timeout=10)
async def test_reads_and_acks_are_tried_again_after_a_lost_connection(
    io_loop: object, lossy_proxy: LossyProxy, open_engine: OpenEngine
) -> None:
    engine = await open_engine("redis", Feed(), url=lossy_proxy.url)
    ids = await engine.publish(["user:u1", "execution:e1"], "n", {}, TS)
    await engine.ack("user:u1", ids["user:u1"])
    for command, call in [(b"EVALSHA", lambda: engine.history("user:u1", None, 10)),
                          (b"GET", lambda: engine.cursor("user:u1")),
                          (b"HGETALL", lambda: engine.latest("execution:e1")),
                          (b"EVALSHA", lambda: engine.ack("user:u1", ids["user:u1"]))]:
        lossy_proxy.lose_reply_to(command)
        assert await call(), command
    assert lossy_proxy.lost == 4


@pytest.mark.gen_test(timeout=20)
async def test_a_burst_waits_for_a_bounded_pool_instead_of_failing(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    engine = await open_engine("redis", Feed(), url=own_redis_server.url, pool_size=4)
    users = [f"user:u{i}" for i in range(500)]
    ids = await engine.publish(users, "n", {}, TS)
    # 500 users acking 3 events each, and 500 replays, all at once
    answers = await asyncio.gather(*(engine.ack(user, ids[user]) for user in users for _ in range(3)),
                                   *(engine.history(user, None, 10) for user in users), return_exceptions=True)
    failures = [answer for answer in answers if isinstance(answer, Exception)]
    assert not failures, f"{len(failures)} of {len(answers)} failed, e.g. {failures[0]!r}"
    with redis.Redis(port=own_redis_server.port, socket_timeout=2) as admin:
        assert admin.info("clients")["connected_clients"] <= 4 + 1  # the pool (pub/sub included), and this one


@pytest.mark.gen_test(timeout=10)
async def test_concurrent_acks_of_a_channel_are_one_script_call(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    engine = await open_engine("redis", Feed(), url=own_redis_server.url)
    ids = [(await engine.publish(["user:u1"], "n", {"i": i}, TS))["user:u1"] for i in range(20)]
    await engine.ack("user:u1", ids[0])  # the script is loaded
    beyond = f"{parse_id(ids[-1])[0] + 60_000}-0"

    def script_calls() -> int:
        with redis.Redis(port=own_redis_server.port, socket_timeout=2) as admin:
            return int(admin.info("commandstats")["cmdstat_evalsha"]["calls"])

    before = script_calls()
    answers = await asyncio.gather(*(engine.ack("user:u1", i) for i in reversed(ids)), engine.ack("user:u1", beyond),
                                   return_exceptions=True)
    assert script_calls() - before == 1
    assert answers[:-1] == [ids[-1]] * len(ids)  # the newest wins, for every caller
    assert isinstance(answers[-1], AckRefused)  # and only the ack past the newest event is refused
    assert await engine.cursor("user:u1") == ids[-1]
    # the acks of several channels in one turn: one script call per channel, each its own answer
    other = (await engine.publish(["user:u2"], "n", {}, TS))["user:u2"]
    before = script_calls()
    answers = await asyncio.gather(engine.ack("user:u1", ids[-2]), engine.ack("user:u2", other),
                                   engine.ack("user:u2", beyond), return_exceptions=True)
    assert script_calls() - before == 2
    assert answers[:2] == [ids[-1], other] and isinstance(answers[2], AckRefused)


def evalsha_calls(server: RedisServer) -> int:
    with redis.Redis(port=server.port, socket_timeout=2) as admin:
        return int(admin.info("commandstats")["cmdstat_evalsha"]["calls"])


@pytest.mark.gen_test(timeout=10)
async def test_publishes_and_batches_of_one_loop_turn_are_one_script_call(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    engine = await open_engine("redis", Feed(), url=own_redis_server.url)
    await engine.publish(["team:t1"], "n", {}, TS)  # the script is loaded
    before = evalsha_calls(own_redis_server)
    answers = await asyncio.gather(
        *(engine.publish(["team:t1", "admin"], "n", {"i": i}, TS, idempotency_key=f"k{i}", ttl_s=60)
          for i in range(20)),
        engine.publish_batch([Publication(["team:t1"], "b", {"i": i}, TS) for i in range(50)]))
    assert evalsha_calls(own_redis_server) - before == 1
    ids = [a["team:t1"] for a in answers[:20]] + [a["team:t1"] for a in answers[20]]  # type: ignore[index]
    assert [e.id for e in (await engine.history("team:t1", None, 100)).events][1:] == ids
    before = evalsha_calls(own_redis_server)
    retried = await asyncio.gather(*(engine.publish(["team:t1"], "n", {}, TS, idempotency_key=f"k{i}", ttl_s=60)
                                     for i in range(20)))
    assert retried == answers[:20] and evalsha_calls(own_redis_server) - before == 1


@pytest.mark.gen_test
async def test_a_turn_group_answers_each_caller_or_fails_every_one(io_loop: object) -> None:
    runs: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        runs.append(items)
        if 0 in items:
            raise EngineUnavailable("down")
        return [2 * i for i in items]

    group: TurnGroup[int, int] = TurnGroup(double)
    assert await asyncio.gather(group.submit([1, 2]), group.submit([]), group.submit([3])) == [[2, 4], [], [6]]
    assert runs == [[1, 2, 3]]
    answers = await asyncio.gather(group.submit([4]), group.submit([0, 5]), return_exceptions=True)
    assert runs[1:] == [[4, 0, 5]] and all(isinstance(a, EngineUnavailable) for a in answers)
    assert await group.submit([7]) == [14]  # the next turn is a group of its own


@pytest.mark.gen_test(timeout=30)
async def test_a_failing_group_fails_every_publish_in_it_and_stores_nothing(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    engine = await open_engine("redis", Feed(), url=own_redis_server.url)
    await engine.publish(["team:t1"], "n", {}, TS)
    with redis.Redis(port=own_redis_server.port, socket_timeout=5) as admin:
        admin.config_set("maxmemory", 1)
        try:
            answers = await asyncio.gather(
                *(engine.publish(["team:t1"], "n", {"i": i}, TS, idempotency_key=f"k{i}" if i % 2 else None)
                  for i in range(10)),
                engine.publish_batch([Publication(["team:t1"], "b", {}, TS)] * 3), return_exceptions=True)
        finally:
            admin.config_set("maxmemory", 0)
        assert all(isinstance(a, EngineUnavailable) for a in answers), answers
        assert admin.xlen(f"{engine._prefix}s:team:t1") == 1  # type: ignore[attr-defined]


@pytest.mark.gen_test(timeout=30)
async def test_a_redis_that_refuses_writes_is_unavailable_and_unhealthy(
    io_loop: object, own_redis_server: RedisServer, open_engine: OpenEngine, engine_log: LogRecords
) -> None:
    engine = await open_engine("redis", Feed(), url=own_redis_server.url)
    stored = await engine.publish(["user:u1", "admin"], "n", {}, TS)
    stream = f"{engine._prefix}s:user:u1"
    primary = RedisServer()
    primary.start()
    admin = redis.Redis(port=own_redis_server.port, socket_timeout=5)
    try:
        for refuse, allow, code in [
            (lambda: admin.config_set("maxmemory", 1), lambda: admin.config_set("maxmemory", 0), "OOM"),
            (lambda: admin.replicaof("127.0.0.1", primary.port), lambda: admin.replicaof("NO", "ONE"), "READONLY"),
        ]:
            count = admin.xlen(stream)
            refuse()
            await eventually(lambda: unhealthy(engine))
            with pytest.raises(EngineUnavailable, match=code):
                await engine.publish(["user:u1", "admin"], "n", {}, TS)
            with pytest.raises(EngineUnavailable, match=code):
                await engine.ack("user:u1", stored["user:u1"])
            assert {line["command"] for line in engine_log.lines("engine unavailable")} >= {"publish", "ack", "ping"}
            assert admin.xlen(stream) <= count  # nothing stored (a replica ends up with its primary's data)
            allow()
            await eventually(lambda: healthy(engine))
            stored = await engine.publish(["user:u1", "admin"], "n", {}, TS)
            assert await engine.ack("user:u1", stored["user:u1"]) == stored["user:u1"]
    finally:
        admin.close()
        primary.cleanup()


@pytest.mark.gen_test(timeout=20)
async def test_wait_replicas_answers_a_publish_once_a_replica_has_it(
    io_loop: object, redis_sentinel: Any, open_engine: OpenEngine, prefix: str
) -> None:
    engine = await open_engine("redis", Feed(), url=redis_sentinel.url, wait_replicas=1, wait_timeout_ms=5000)
    ids = await asyncio.gather(*(engine.publish([f"team:t{i % 3}"], "n", {}, TS) for i in range(20)))
    with redis.Redis(port=redis_sentinel.replica.port, socket_timeout=2) as replica:
        for answer in ids:  # each answered publish is on the replica already, not just on its way
            ((channel, event_id),) = answer.items()
            assert replica.xrange(f"{prefix}s:{channel}", event_id, event_id), (channel, event_id)


@pytest.mark.gen_test(timeout=20)
async def test_wait_replicas_refuses_a_publish_no_replica_confirmed(
    io_loop: object, redis_server: RedisServer, open_engine: OpenEngine, engine_log: LogRecords
) -> None:
    engine = await open_engine("redis", Feed(), url=redis_server.url, wait_replicas=1, wait_timeout_ms=50)
    with pytest.raises(EngineUnavailable):  # a Redis without replicas: not promised
        await engine.publish(["team:t1"], "n", {}, TS, idempotency_key="k", ttl_s=60)
    (line,) = engine_log.lines("engine unavailable")
    assert line["command"] == "wait" and "0 of 1 replicas" in line["reason"]


@pytest.mark.gen_test(timeout=10)
async def test_the_publishes_of_one_loop_turn_reach_every_node_as_one_message(
    io_loop: object, redis_server: RedisServer, open_engine: OpenEngine
) -> None:
    feed_a, feed_b = Feed(), Feed()
    a = await open_engine("redis", feed_a, url=redis_server.url)
    b = await open_engine("redis", feed_b, url=redis_server.url)
    batch = [Publication(["team:t1", "user:u1"], "n", {"i": i, "text": "two\nlines"}, TS) for i in range(5)]
    answers = await asyncio.gather(a.publish_batch(batch), a.publish(["team:t2"], "n", {}, TS))
    expected = [(c, ids[c]) for ids in [*answers[0], answers[1]] for c in ids]
    await feed_b.wait_for(lambda: len(feed_b.events) == 11)
    assert [(c, i) for c, i, _ in feed_b.events] == expected  # in stored order
    assert feed_b.events[0][2] == protocol.event_frame("team:t1", expected[0][1], TS, "n", batch[0].data)
    assert b.feed_messages == 1  # the whole group: one pub/sub message to parse, not six
